"""prepare_dataset: stream a text corpus, split it, tokenize it into fixed-length windows.

Sources (`dataset.source`): a local ``.jsonl`` / ``.parquet`` / ``.txt`` file (``.gz``, ``.xz``
and ``.bz2`` compression is read transparently for jsonl and txt), or a Hugging Face hub
dataset id (``hf:org/name``, read with ``datasets`` streaming; a local folder that
``datasets.load_dataset`` understands works the same way, ``hf:/path/to/folder``). Every
source is read record by record (parquet: batch by batch), never whole. Each record has a
text field and an optional domain field, or a chat (`dataset.chat_field`: an OpenAI-style
``messages`` list of ``{role, content}`` or a ShareGPT-style ``conversations`` list of
``{from, value}``), which is rendered with the tokenizer's chat template.

Output per split (``train.parquet``, ``validation.parquet``), one row per window:

=========  ==================  ==========================================================
column     type                meaning
=========  ==================  ==========================================================
seq        int32               window index within the split (after seeded shuffling)
domain     string              domain of the documents packed into the window
tokens     list<int32>         ``context_length`` token ids; position 0 is BOS
docs       list<int32>         source record index of each token (-1 for BOS/separators)
=========  ==================  ==========================================================

Documents are packed per domain, separated by EOS, cut into windows of
``context_length - 1`` tokens, and each window is prefixed with BOS: circuit-tracer zeroes
position 0 of every prompt, so position 0 is never used for training either.

A record's split depends on its text alone (`is_validation`, a content hash), never on the
reading order. Records pass through a seeded shuffle buffer of `dataset.shuffle_buffer`
records, so memory is bounded by the buffer, whatever the size of the corpus:

- when the whole source fits in the buffer, each split is packed in source order and its
  windows are shuffled with the seed and cut to the token budget (every window of the split
  is equally likely to be chosen), then written in row groups of `WINDOW_BLOCK`;
- otherwise a record leaves the buffer at a seeded random slot each time a new one comes in,
  and is tokenized and packed as it leaves; each split's windows are shuffled (with the seed)
  in blocks of `WINDOW_BLOCK` and written block by block, and reading stops as soon as both
  splits hold their token budgets (`dataset.train_tokens`, `dataset.validation_tokens`).

Both modes are deterministic for a given seed and source. Readers of a split (`iter_windows`)
hold one row group at a time. Before anything is written, the splits that have a token budget
are checked against the free space of their filesystem (`require_free_space`).
"""

from __future__ import annotations

import bisect
import bz2
import contextlib
import gzip
import hashlib
import io
import json
import logging
import lzma
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from circuitflow.config import PrepareDatasetSettings
from circuitflow.data.prompts import ChatError, chat_messages, render_chat
from circuitflow.io import atomic_path, sha256_file, write_json
from circuitflow.model.facts import read_model_facts

log = logging.getLogger("circuitflow.data")

WINDOW_SCHEMA = pa.schema([
    ("seq", pa.int32()),
    ("domain", pa.string()),
    ("tokens", pa.list_(pa.int32())),
    ("docs", pa.list_(pa.int32())),
])


HUB_PREFIX = "hf:"  # dataset.source 'hf:<dataset id>' names a Hugging Face hub dataset
CHAT_AUTO = "auto"  # dataset.chat_field: look for these fields, in this order
CHAT_FIELDS = ("messages", "conversations")
PARQUET_BATCH_ROWS = 1024  # rows per read from a local parquet file
TOKENIZE_BATCH = 256  # records tokenized per tokenizer call
WINDOW_BLOCK = 4096  # windows shuffled and written together when streaming (one row group)
TEXT_CHUNK = 1 << 20  # characters per read of a .txt source


def local_source_files(source: str) -> list[str]:
    """The files a dataset source reads from disk (none for a hub dataset)."""
    return [] if source.startswith(HUB_PREFIX) else [source]


class DatasetError(ValueError):
    """The configured dataset cannot be read or is unusable."""


@dataclass(frozen=True)
class Record:
    index: int
    text: str
    domain: str
    chat: bool = False  # rendered with the chat template: its special tokens are meant


# --------------------------------------------------------------------------- reading


def _open_text(path: Path) -> io.TextIOBase:
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".xz", ".bz2")]
    return suffixes[-1] if suffixes else ""


def iter_rows(settings: PrepareDatasetSettings) -> Iterator[dict]:
    """The raw rows (dicts) of the source, in source order, one at a time."""
    source = settings.source
    if source.startswith(HUB_PREFIX):
        return hub_rows(settings)
    path = Path(source)
    if not path.is_file():
        raise DatasetError(f"dataset.source {source!r}: no such file (and not 'hf:<dataset id>')")
    kind = _base_suffix(path)
    if kind not in (".jsonl", ".parquet", ".txt"):
        raise DatasetError(
            f"dataset.source {source!r}: unsupported file type {kind!r} "
            "(expected .jsonl, .parquet or .txt, optionally .gz/.xz/.bz2)")
    if kind == ".parquet" and path.suffix != ".parquet":
        raise DatasetError(f"dataset.source {source!r}: a compressed parquet file cannot be streamed; "
                           "decompress it (parquet compresses its own pages)")
    reader = {".jsonl": _read_jsonl, ".parquet": _read_parquet, ".txt": _read_txt}[kind]
    return _guarded(reader(path, settings), source)


def _guarded(rows: Iterator[dict], source: str) -> Iterator[dict]:
    """`rows`, with the read errors that surface mid-stream turned into one clear line."""
    try:
        yield from rows
    except UnicodeDecodeError as error:
        raise DatasetError(f"dataset.source {source!r} is not UTF-8 text ({error.reason} at byte "
                           f"{error.start} of a block); convert it to UTF-8") from None
    except (EOFError, OSError, lzma.LZMAError, pa.ArrowException) as error:  # truncated archives, bad parquet
        raise DatasetError(f"dataset.source {source!r} cannot be read ({error})") from None


def _read_jsonl(path: Path, settings: PrepareDatasetSettings) -> Iterator[dict]:
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DatasetError(f"{path}: line {line_no} is not valid JSON ({error})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}: line {line_no} is a JSON {type(row).__name__}, not an object "
                                   "with a text field (one JSON object per line)")
            yield row


def _read_parquet(path: Path, settings: PrepareDatasetSettings) -> Iterator[dict]:
    """Row group by row group, reading only the columns a record needs (all of them when the
    text column is missing, so that the error can list them)."""
    handle = pq.ParquetFile(path)
    names = handle.schema_arrow.names
    chat = _chat_candidates(settings.chat_field)
    wanted = [settings.text_field, *chat]
    columns = None
    if any(name in names for name in wanted):
        columns = [name for name in dict.fromkeys([*wanted, settings.domain_field]) if name and name in names]
    for batch in handle.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        yield from batch.to_pylist()


def _read_txt(path: Path, settings: PrepareDatasetSettings) -> Iterator[dict]:
    """A plain text file: one record per blank-line separated paragraph, domain = file stem.

    Read in chunks and cut exactly where ``text.split("\\n\\n")`` would cut."""
    domain = path.name.split(".")[0]
    field_name = settings.domain_field or "domain"
    pending = ""
    with _open_text(path) as handle:
        while chunk := handle.read(TEXT_CHUNK):
            pending += chunk
            *blocks, pending = pending.split("\n\n")
            for block in blocks:
                if block.strip():
                    yield {settings.text_field: block, field_name: domain}
    if pending.strip():
        yield {settings.text_field: pending, field_name: domain}


def hub_rows(settings: PrepareDatasetSettings) -> Iterator[dict]:
    """A hub dataset (or a local folder `datasets` can load), streamed with `datasets`."""
    try:
        import datasets
    except ImportError as error:
        raise DatasetError("hub datasets need the `datasets` package: pip install datasets") from error
    name = settings.source[len(HUB_PREFIX):]
    try:
        data = datasets.load_dataset(name, settings.hub_config, split=settings.hub_split, streaming=True)
    except Exception as error:
        raise DatasetError(f"dataset.source {settings.source!r}: cannot load it ({error})") from error
    return _guarded(streamed_rows(data, settings.seed), settings.source)


def streamed_rows(data, seed: int) -> Iterator[dict]:
    """The rows of a streaming `datasets.IterableDataset`, its shards (files) in a seeded order:
    a hub dataset is often sorted (by crawl, by source) across its files, and the shuffle buffer
    only mixes what it holds."""
    n = data.num_shards
    order = list(range(n))
    random.Random(f"{seed}-shards").shuffle(order)
    for index in order:
        yield from (data.shard(num_shards=n, index=index) if n > 1 else data)


def _chat_candidates(chat_field: str | None) -> tuple[str, ...]:
    if chat_field is None:
        return ()
    return CHAT_FIELDS if chat_field == CHAT_AUTO else (chat_field,)


def iter_records(settings: PrepareDatasetSettings, tokenizer=None) -> Iterator[Record]:
    """The non-empty records of the source, in source order, streamed.

    A record holding a chat (`dataset.chat_field`) is rendered with the tokenizer's chat
    template; any other record is read from `dataset.text_field`."""
    source = settings.source
    candidates = _chat_candidates(settings.chat_field)
    explicit = settings.chat_field not in (None, CHAT_AUTO)
    for i, row in enumerate(iter_rows(settings)):
        chat_name = next((name for name in candidates if isinstance(row.get(name), list)), None)
        if explicit and chat_name is None:
            raise DatasetError(
                f"dataset.source {source!r}: record {i} has no chat list in field {settings.chat_field!r} "
                f"(fields: {sorted(row)}); set dataset.chat_field (auto, a field name, or null for text_field)")
        if chat_name is not None:
            text = _render_record(row[chat_name], chat_name, i, tokenizer, settings)
        else:
            if settings.text_field not in row:
                raise DatasetError(
                    f"dataset.source {source!r}: record {i} has no text field {settings.text_field!r} "
                    f"(fields: {sorted(row)}); set dataset.text_field")
            text = row[settings.text_field]
        if not isinstance(text, str) or not text.strip():
            continue
        domain = row.get(settings.domain_field) if settings.domain_field else None
        yield Record(i, text, str(domain) if domain is not None else "unknown", chat=chat_name is not None)


def _render_record(value: list, name: str, index: int, tokenizer, settings: PrepareDatasetSettings) -> str:
    where = f"dataset.source {settings.source!r}: record {index} field {name!r}"
    if tokenizer is None:
        raise DatasetError(f"{where} is a chat, which needs the model's tokenizer to render "
                           "(read it through prepare_dataset)")
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            f"{where} is a chat but the model's tokenizer has no chat template; use a model whose "
            f"tokenizer has one, or set dataset.chat_field: null to read dataset.text_field "
            f"({settings.text_field!r}) instead")
    try:
        messages = chat_messages(value)
        return render_chat(tokenizer, messages) if messages else ""
    except ChatError as error:
        raise DatasetError(f"{where}: {error}") from None


def read_records(settings: PrepareDatasetSettings, tokenizer=None) -> list[Record]:
    """Every non-empty record of the source, in source order (the whole source: for small
    sources and checks; `prepare_dataset` streams)."""
    with contextlib.closing(iter_records(settings, tokenizer)) as records:
        found = list(records)
    if not found:
        raise DatasetError(f"dataset.source {settings.source!r}: no non-empty text records")
    return found


# --------------------------------------------------------------------------- splitting, packing


def usable_positions(context_length: int) -> int:
    """Positions of a window that carry data: all but position 0, the BOS that circuit-tracer
    zeroes (so it is never cached, trained on, collected or attributed)."""
    return context_length - 1


def is_validation(record: Record, fraction: float) -> bool:
    """Deterministic split by content hash: independent of record order and of the machine."""
    digest = hashlib.sha256(record.text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _window_tokens(tokenizer) -> tuple[int, int | None]:
    """(BOS that starts every window, separator between documents or None)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise DatasetError("the tokenizer has neither a BOS nor an EOS token to start windows with")
    return bos, tokenizer.eos_token_id


def _encode(tokenizer, records: list[Record]) -> list[list[int]]:
    """Each record's token ids. Plain text stays text: a special token's string inside it
    ("<|im_end|>" in a scraped page) is tokenized like other text, never read as the control
    token; a rendered chat keeps the special tokens its template wrote."""
    ids: list[list[int] | None] = [None] * len(records)
    for chat in (False, True):
        picked = [i for i, record in enumerate(records) if record.chat == chat]
        if picked:
            encoded = tokenizer([records[i].text for i in picked], add_special_tokens=False,
                                split_special_tokens=not chat)["input_ids"]
            for i, record_ids in zip(picked, encoded):
                ids[i] = record_ids
    return ids


class _Packer:
    """Per-domain token streams cut into windows as soon as they hold one (memory: less than
    one window per domain)."""

    def __init__(self, bos: int, sep: int | None, body: int):
        self.bos, self.sep, self.body = bos, sep, body
        self.tokens: dict[str, list[int]] = defaultdict(list)
        self.docs: dict[str, list[int]] = defaultdict(list)

    def add(self, records: list[Record], encoded: list[list[int]]) -> Iterator[dict]:
        for record, ids in zip(records, encoded):
            tokens, docs = self.tokens[record.domain], self.docs[record.domain]
            tokens.extend(ids)
            docs.extend([record.index] * len(ids))
            if self.sep is not None:
                tokens.append(self.sep)
                docs.append(-1)
            if len(tokens) >= self.body:
                n = len(tokens) // self.body * self.body
                for start in range(0, n, self.body):
                    yield {"domain": record.domain,
                           "tokens": [self.bos] + tokens[start:start + self.body],
                           "docs": [-1] + docs[start:start + self.body]}
                del tokens[:n], docs[:n]


def _whole_split_windows(records: list[Record], tokenizer, context_length: int, budget: int | None,
                         rng: random.Random) -> Iterator[dict]:
    """The source fits in the buffer: pack the split in source order, shuffle its windows with
    `rng` and keep the budget's worth. The split is held as int32 arrays and each kept window
    is materialized only when it is consumed."""
    bos, sep = _window_tokens(tokenizer)
    body = usable_positions(context_length)
    by_domain: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_domain[record.domain].append(record)
    streams: list[tuple[str, np.ndarray, np.ndarray]] = []
    for domain in sorted(by_domain):
        group = by_domain[domain]
        tokens, docs = [], []
        for start in range(0, len(group), TOKENIZE_BATCH):
            chunk = group[start:start + TOKENIZE_BATCH]
            for record, ids in zip(chunk, _encode(tokenizer, chunk)):
                extra = [] if sep is None else [sep]
                tokens.append(np.asarray(ids + extra, dtype=np.int32))
                docs.append(np.full(len(ids) + len(extra), record.index, dtype=np.int32))
                if extra:
                    docs[-1][-1] = -1
        if tokens:
            streams.append((domain, np.concatenate(tokens), np.concatenate(docs)))
    counts = [len(tokens) // body for _, tokens, _ in streams]
    starts = np.cumsum([0, *counts]).tolist()
    order = list(range(starts[-1]))
    rng.shuffle(order)  # the same permutation as shuffling the window list itself
    if budget is not None:
        order = order[: -(-budget // body)]
    for index in order:
        which = bisect.bisect_right(starts, index) - 1
        domain, tokens, docs = streams[which]
        offset = (index - starts[which]) * body
        yield {"domain": domain,
               "tokens": [bos] + tokens[offset:offset + body].tolist(),
               "docs": [-1] + docs[offset:offset + body].tolist()}


# --------------------------------------------------------------------------- streaming


class ShuffleBuffer:
    """A seeded shuffle buffer: holds up to `size` records; once full, each new record takes
    the slot of a random held one, which leaves. `drain` empties it in a seeded random order."""

    def __init__(self, size: int, rng: random.Random):
        self.size, self.rng = size, rng
        self.held: list[Record] = []
        self.overflowed = False

    def push(self, record: Record) -> Record | None:
        if len(self.held) < self.size:
            self.held.append(record)
            return None
        self.overflowed = True
        slot = self.rng.randrange(self.size)
        leaving, self.held[slot] = self.held[slot], record
        return leaving

    def drain(self) -> Iterator[Record]:
        self.rng.shuffle(self.held)
        while self.held:
            yield self.held.pop()


@dataclass
class _SplitOutput:
    """One split being written: windows wait for a block, shuffled and written together."""

    name: str
    path: Path
    budget_windows: int | None
    rng: random.Random
    packer: _Packer
    block: list[dict] = field(default_factory=list)
    domains: Counter = field(default_factory=Counter)
    records: int = 0
    written: int = 0
    writer: pq.ParquetWriter | None = None

    @property
    def full(self) -> bool:
        return self.budget_windows is not None and self.written + len(self.block) >= self.budget_windows

    def pack(self, record: Record, ids: list[int]) -> None:
        if self.full:
            return
        self.records += 1
        for window in self.packer.add([record], [ids]):
            if self.full:
                break
            self.block.append(window)
            if len(self.block) >= WINDOW_BLOCK:
                self.write_block()

    def write_block(self) -> None:
        self.rng.shuffle(self.block)
        self.write(self.block)
        self.block = []

    def write(self, windows: list[dict]) -> None:
        if not windows:
            return
        for window in windows:
            window["seq"] = self.written
            self.written += 1
        self.domains.update(w["domain"] for w in windows)
        table = pa.Table.from_pylist(windows, schema=WINDOW_SCHEMA)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, WINDOW_SCHEMA)
        self.writer.write_table(table, row_group_size=len(windows))

    def write_whole(self, windows: Iterator[dict]) -> None:
        """The windows in the order given, in row groups of `WINDOW_BLOCK` (so neither this job
        nor a reader of the split holds more than a block of them)."""
        block = []
        for window in windows:
            block.append(window)
            if len(block) >= WINDOW_BLOCK:
                self.write(block)
                block = []
        self.write(block)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class _Router:
    """Sends each record leaving the buffer to its split (by content), tokenizing them in
    batches; records of a split that is already full are dropped untokenized."""

    def __init__(self, splits: dict[str, _SplitOutput], fraction: float, tokenizer):
        self.splits, self.fraction, self.tokenizer = splits, fraction, tokenizer
        self.pending: list[tuple[_SplitOutput, Record]] = []

    @property
    def full(self) -> bool:
        return all(split.full for split in self.splits.values())

    def add(self, record: Record) -> None:
        split = self.splits["validation" if is_validation(record, self.fraction) else "train"]
        if not split.full:
            self.pending.append((split, record))
            if len(self.pending) >= TOKENIZE_BATCH:
                self.flush()

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for (split, record), ids in zip(pending, _encode(self.tokenizer, [r for _, r in pending])):
            split.pack(record, ids)


def prepare_dataset(*, model_dir: str | Path, out_train: str | Path, out_validation: str | Path,
                    out_summary: str | Path, settings: PrepareDatasetSettings, free_bytes: int | None = None) -> dict:
    """Stream, split, tokenize and write both splits plus a JSON summary (refused before anything
    is written when the budgeted splits would not fit in the free space: `require_free_space`)."""
    from circuitflow.model.loading import load_tokenizer

    max_positions = read_model_facts(model_dir).context_length
    if max_positions and settings.context_length > max_positions:
        raise DatasetError(
            f"dataset.context_length {settings.context_length} exceeds the model's context "
            f"({max_positions} positions)")
    tokenizer = load_tokenizer(model_dir)
    bos, sep = _window_tokens(tokenizer)
    body = usable_positions(settings.context_length)
    budgets = {"train": settings.train_tokens, "validation": settings.validation_tokens}
    _require_split_space(settings, {"train": out_train, "validation": out_validation}, free_bytes)
    buffer = ShuffleBuffer(settings.shuffle_buffer, random.Random(f"{settings.seed}-shuffle"))
    read = 0
    exhausted = True
    with contextlib.ExitStack() as stack:
        splits = {
            name: _SplitOutput(name, stack.enter_context(atomic_path(out)),
                               None if budgets[name] is None else -(-budgets[name] // body),
                               random.Random(f"{settings.seed}-{name}"), _Packer(bos, sep, body))
            for name, out in (("train", out_train), ("validation", out_validation))
        }
        for split in splits.values():
            stack.callback(split.close)  # runs before the atomic paths are moved into place

        router = _Router(splits, settings.validation_fraction, tokenizer)
        records = stack.enter_context(contextlib.closing(iter_records(settings, tokenizer)))
        for record in records:
            read += 1
            leaving = buffer.push(record)
            if leaving is not None:
                router.add(leaving)
                if router.full:
                    exhausted = False
                    break
        if buffer.overflowed:
            for record in buffer.drain():
                if router.full:
                    break
                router.add(record)
            router.flush()
            for split in splits.values():
                split.write_block()
        else:  # the whole source fits in the buffer
            held: dict[str, list[Record]] = {"train": [], "validation": []}
            for record in buffer.held:
                held["validation" if is_validation(record, settings.validation_fraction) else "train"].append(record)
            buffer.held.clear()
            for name, split in splits.items():
                split.records = len(held[name])
                split.write_whole(_whole_split_windows(held.pop(name), tokenizer, settings.context_length,
                                                       budgets[name], split.rng))
        if read == 0:
            raise DatasetError(f"dataset.source {settings.source!r}: no non-empty text records")
        for name, split in splits.items():
            if not split.written:
                raise DatasetError(
                    f"the {name} split has no complete window of {settings.context_length} tokens; "
                    "use more text, a smaller dataset.context_length or another validation_fraction")
    log.info("%d records read (%s source): %d train, %d validation", read,
             "whole" if exhausted else "part of the", splits["train"].records, splits["validation"].records)

    summary = {
        "source": settings.source,
        "source_sha256": sha256_file(settings.source) if Path(settings.source).is_file() else None,
        "context_length": settings.context_length,
        "seed": settings.seed,
        "records": read,
        "splits": {},
    }
    for name, out in (("train", out_train), ("validation", out_validation)):
        split = splits[name]
        summary["splits"][name] = {
            "windows": split.written,
            "tokens": split.written * body,
            "tokens_per_domain": {d: n * body for d, n in sorted(split.domains.items())},
            "sha256": sha256_file(out),
        }
        log.info("%s: %d windows (%s)", name, split.written, dict(sorted(split.domains.items())))
    write_json(out_summary, summary)
    return summary


def _require_split_space(settings: PrepareDatasetSettings, outputs: dict[str, str | Path],
                         free_bytes: int | None) -> None:
    body = usable_positions(settings.context_length)
    needs = {}
    for name, path in outputs.items():
        budget = getattr(settings, f"{name}_tokens")
        if budget is None:  # the whole source: its size is known only once it is read
            log.info("%s split: no token budget, so its size follows the source (not checked in advance)", name)
        else:
            needs[path] = split_bytes(-(-budget // body), settings.context_length)
    require_free_space(needs, "prepare_dataset", "dataset.train_tokens or dataset.validation_tokens", free_bytes)


def read_windows(path: str | Path) -> pa.Table:
    """Read a split written by `prepare_dataset`."""
    try:
        return pq.read_table(path, schema=WINDOW_SCHEMA)
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetError(f"dataset split {path} is unreadable: {error}") from error


def _open_split(path: str | Path) -> pq.ParquetFile:
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DatasetError(f"dataset split {path} is unreadable: {error}") from error
    schema = handle.schema_arrow
    wrong = [f.name for f in WINDOW_SCHEMA if f.name not in schema.names or schema.field(f.name).type != f.type]
    if wrong:
        expected = ", ".join(f"{f.name}: {f.type}" for f in WINDOW_SCHEMA)
        raise DatasetError(f"dataset split {path}: columns {wrong} are missing or not of the types "
                           f"prepare_dataset writes ({expected}); prepare it again")
    return handle


def split_shape(path: str | Path) -> tuple[int, int]:
    """(windows, context length) of a split written by `prepare_dataset`, read from its footer and
    first window."""
    handle = _open_split(path)
    first = next(handle.iter_batches(batch_size=1, columns=["tokens"]), None)
    if first is None or not first.num_rows:
        raise DatasetError(f"dataset split {path} holds no windows; prepare it again with more text")
    return handle.metadata.num_rows, len(first.column(0)[0])


def iter_windows(path: str | Path, batch_windows: int, context_length: int
                 ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(seq, tokens, docs) of `batch_windows` windows at a time, tokens and docs as
    [windows, context_length] int32 arrays: memory is bounded by one row group of the split,
    however long the split is."""
    handle = _open_split(path)
    for batch in handle.iter_batches(batch_size=batch_windows, columns=["seq", "tokens", "docs"]):
        yield (batch.column("seq").to_numpy(), _rectangular(batch.column("tokens"), context_length, path),
               _rectangular(batch.column("docs"), context_length, path))


def _rectangular(column: pa.ListArray, context_length: int, path) -> np.ndarray:
    values = column.flatten()
    if column.null_count or len(values) != len(column) * context_length or \
            not pc.all(pc.equal(pc.list_value_length(column), context_length)).as_py():
        raise DatasetError(f"dataset split {path}: its windows are not all {context_length} tokens long; "
                           "prepare it again")
    return values.to_numpy().reshape(len(column), context_length)


# --------------------------------------------------------------------------- disk space


class DiskSpaceError(ValueError):
    """A job's outputs would not fit in the free space of the filesystem they go to."""


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing_folder(path: Path) -> Path:
    """The output's folder, or its nearest existing ancestor (outputs' folders are made on write)."""
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    return folder


def require_free_space(needs: dict[str | Path, int], what: str, lower: str, free_bytes: int | None = None) -> None:
    """Refuse, before anything is written, outputs (path -> estimated bytes) that do not fit in the
    free space of their filesystem. `free_bytes` stands in for what the filesystem reports."""
    per_filesystem: dict[int, list] = {}
    for path, size in needs.items():
        folder = _existing_folder(Path(path))
        per_filesystem.setdefault(folder.stat().st_dev, [folder, 0])[1] += size
    for folder, needed in per_filesystem.values():
        free = shutil.disk_usage(folder).free if free_bytes is None else free_bytes
        if needed > free:
            raise DiskSpaceError(f"{what} would write about {human_bytes(needed)} to {folder}, which has "
                                 f"{human_bytes(free)} free; lower {lower}, or make room there")
        log.info("%s: about %s to write to %s (%s free)", what, human_bytes(needed), folder, human_bytes(free))


SPLIT_WINDOW_BYTES = 64  # per window beyond its token ids and doc indices: seq, domain, list levels
SPLIT_FILE_BYTES = 64 << 10  # footer and row group metadata of a split file


def split_bytes(windows: int, context_length: int) -> int:
    """Upper bound of the size of a split file of `windows` windows: tokens and docs as plain int32
    (parquet's encodings usually make docs much smaller)."""
    blocks = -(-windows // WINDOW_BLOCK)
    return windows * (8 * context_length + SPLIT_WINDOW_BYTES) + blocks * 1024 + SPLIT_FILE_BYTES
