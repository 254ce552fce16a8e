"""prepare_dataset: read a text corpus, split it, tokenize it into fixed-length windows.

Sources (`dataset.source`): a local ``.jsonl`` / ``.parquet`` / ``.txt`` file (``.gz``, ``.xz``
and ``.bz2`` compression is read transparently for jsonl and txt), or a Hugging Face hub
dataset id (``hf:org/name``). Each record has a text field and an optional domain field.

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
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from circuitflow.config import PrepareDatasetSettings
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


def _open_text(path: Path) -> io.TextIOBase:
    opener = {".gz": gzip.open, ".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".xz", ".bz2")]
    return suffixes[-1] if suffixes else ""


def read_records(settings: PrepareDatasetSettings) -> list[Record]:
    """Every non-empty record of the source, in source order."""
    source = settings.source
    if source.startswith(HUB_PREFIX):
        rows = _read_hub(settings)
    else:
        path = Path(source)
        if not path.is_file():
            raise DatasetError(f"dataset.source {source!r}: no such file (and not 'hf:<dataset id>')")
        kind = _base_suffix(path)
        if kind not in (".jsonl", ".parquet", ".txt"):
            raise DatasetError(
                f"dataset.source {source!r}: unsupported file type {kind!r} "
                "(expected .jsonl, .parquet or .txt, optionally .gz/.xz/.bz2)")
        try:
            if kind == ".jsonl":
                rows = _read_jsonl(path)
            elif kind == ".parquet":
                rows = pq.read_table(path).to_pylist()
            else:
                rows = _read_txt(path, settings)
        except UnicodeDecodeError as error:
            raise DatasetError(f"dataset.source {source!r} is not UTF-8 text ({error.reason} at byte "
                               f"{error.start} of a block); convert it to UTF-8") from None
        except (EOFError, OSError, lzma.LZMAError, pa.ArrowException) as error:  # truncated archives, bad parquet
            raise DatasetError(f"dataset.source {source!r} cannot be read ({error})") from None
    records = []
    for i, row in enumerate(rows):
        if settings.text_field not in row:
            raise DatasetError(
                f"dataset.source {source!r}: record {i} has no text field {settings.text_field!r} "
                f"(fields: {sorted(row)}); set dataset.text_field")
        text = row[settings.text_field]
        if not isinstance(text, str) or not text.strip():
            continue
        domain = row.get(settings.domain_field) if settings.domain_field else None
        records.append(Record(i, text, str(domain) if domain is not None else "unknown"))
    if not records:
        raise DatasetError(f"dataset.source {source!r}: no non-empty text records")
    return records


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
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
            rows.append(row)
    return rows


def _read_txt(path: Path, settings: PrepareDatasetSettings) -> list[dict]:
    """A plain text file: one record per blank-line separated paragraph, domain = file stem."""
    with _open_text(path) as handle:
        text = handle.read()
    domain = path.name.split(".")[0]
    field = settings.domain_field or "domain"
    return [{settings.text_field: block, field: domain}
            for block in text.split("\n\n") if block.strip()]


def _read_hub(settings: PrepareDatasetSettings) -> list[dict]:
    try:
        import datasets
    except ImportError as error:
        raise DatasetError("hub datasets need the `datasets` package: pip install datasets") from error
    name = settings.source[len(HUB_PREFIX):]
    try:
        data = datasets.load_dataset(name, settings.hub_config, split=settings.hub_split)
    except Exception as error:
        raise DatasetError(f"dataset.source {settings.source!r}: cannot load it ({error})") from error
    return list(data)


def usable_positions(context_length: int) -> int:
    """Positions of a window that carry data: all but position 0, the BOS that circuit-tracer
    zeroes (so it is never cached, trained on, collected or attributed)."""
    return context_length - 1


def is_validation(record: Record, fraction: float) -> bool:
    """Deterministic split by content hash: independent of record order and of the machine."""
    digest = hashlib.sha256(record.text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def pack_windows(records: list[Record], tokenizer, context_length: int) -> list[dict]:
    """Pack records per domain into windows of `context_length` tokens starting with BOS."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    sep = tokenizer.eos_token_id
    if bos is None:
        raise DatasetError("the tokenizer has neither a BOS nor an EOS token to start windows with")
    body = usable_positions(context_length)
    by_domain: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_domain[record.domain].append(record)
    windows = []
    for domain in sorted(by_domain):
        group = by_domain[domain]
        encoded = tokenizer([r.text for r in group], add_special_tokens=False)["input_ids"]
        tokens: list[int] = []
        docs: list[int] = []
        for record, ids in zip(group, encoded):
            tokens.extend(ids)
            docs.extend([record.index] * len(ids))
            if sep is not None:
                tokens.append(sep)
                docs.append(-1)
        for start in range(0, len(tokens) - body + 1, body):
            windows.append({
                "domain": domain,
                "tokens": [bos] + tokens[start:start + body],
                "docs": [-1] + docs[start:start + body],
            })
    return windows


def _select(windows: list[dict], max_tokens: int | None, context_length: int, rng: random.Random) -> list[dict]:
    rng.shuffle(windows)
    if max_tokens is not None:
        windows = windows[: -(-max_tokens // usable_positions(context_length))]
    for seq, window in enumerate(windows):
        window["seq"] = seq
    return windows


def prepare_dataset(model_dir: str | Path, out_train: str | Path, out_validation: str | Path,
                    out_summary: str | Path, settings: PrepareDatasetSettings) -> dict:
    """Read, split, tokenize and write both splits plus a JSON summary."""
    from circuitflow.model.loading import load_tokenizer

    max_positions = read_model_facts(model_dir).context_length
    if max_positions and settings.context_length > max_positions:
        raise DatasetError(
            f"dataset.context_length {settings.context_length} exceeds the model's context "
            f"({max_positions} positions)")
    tokenizer = load_tokenizer(model_dir)
    records = read_records(settings)
    validation = [r for r in records if is_validation(r, settings.validation_fraction)]
    train = [r for r in records if not is_validation(r, settings.validation_fraction)]
    log.info("%d records: %d train, %d validation", len(records), len(train), len(validation))

    summary = {
        "source": settings.source,
        "source_sha256": sha256_file(settings.source) if Path(settings.source).is_file() else None,
        "context_length": settings.context_length,
        "seed": settings.seed,
        "records": len(records),
        "splits": {},
    }
    for name, split, budget, out in (
        ("train", train, settings.train_tokens, out_train),
        ("validation", validation, settings.validation_tokens, out_validation),
    ):
        windows = pack_windows(split, tokenizer, settings.context_length)
        windows = _select(windows, budget, settings.context_length, random.Random(f"{settings.seed}-{name}"))
        if not windows:
            raise DatasetError(
                f"the {name} split has no complete window of {settings.context_length} tokens; "
                "use more text, a smaller dataset.context_length or another validation_fraction")
        table = pa.Table.from_pylist(windows, schema=WINDOW_SCHEMA)
        with atomic_path(out) as tmp:
            pq.write_table(table, tmp)
        domains = Counter(w["domain"] for w in windows)
        summary["splits"][name] = {
            "windows": len(windows),
            "tokens": len(windows) * usable_positions(settings.context_length),
            "tokens_per_domain": {d: n * usable_positions(settings.context_length)
                                  for d, n in sorted(domains.items())},
            "sha256": sha256_file(out),
        }
        log.info("%s: %d windows (%s)", name, len(windows), dict(sorted(domains.items())))
    write_json(out_summary, summary)
    return summary


def read_windows(path: str | Path) -> pa.Table:
    """Read a split written by `prepare_dataset`."""
    try:
        return pq.read_table(path, schema=WINDOW_SCHEMA)
    except (pa.ArrowInvalid, OSError) as error:
        raise DatasetError(f"dataset split {path} is unreadable: {error}") from error
