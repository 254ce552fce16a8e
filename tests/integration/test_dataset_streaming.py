"""prepare_dataset at research scale: every source streamed through a seeded shuffle buffer,
reading stops once the token budgets are filled, chats rendered with the chat template, and
chat prompt files."""

from __future__ import annotations

import json
import random
import shutil
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.data import dataset
from circuitflow.data.dataset import (DatasetError, DiskSpaceError, Record, human_bytes, is_validation, prepare_dataset,
                                      read_records, split_bytes)
from circuitflow.data.prompts import PromptError, discover_prompts, read_prompt_text, tokenize_prompt
from circuitflow.io import read_json

WORDS = ("river stone lantern orbit copper meadow signal harbor quiet velvet engine maple "
         "thunder paper violet garden silver canyon pocket ember").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct records of 20-60 words over three domains."""
    rng = random.Random(seed)
    return [{"id": f"r{i}", "domain": ("alpha", "beta", "gamma")[i % 3],
             "text": f"Record {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))}
            for i in range(n)]


def write_jsonl(path, rows, tail: str = "") -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.write(tail)


def run(model_dir, folder, settings, **options) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return prepare_dataset(model_dir=model_dir, out_train=folder / "train.parquet",
                           out_validation=folder / "validation.parquet", out_summary=folder / "summary.json",
                           settings=settings, **options)


def windows(folder, split: str = "train") -> list[dict]:
    return pq.read_table(folder / f"{split}.parquet").to_pylist()


def test_reading_stops_once_the_budgets_are_filled(tmp_path, tiny_model_dir):
    """The last line is not JSON: a reader that went on to the end of the file would fail."""
    corpus = tmp_path / "big.jsonl"
    write_jsonl(corpus, synthetic_rows(20_000), tail="{not json\n")
    settings = DatasetSettings(source=str(corpus), context_length=32, train_tokens=620, validation_tokens=155,
                               validation_fraction=0.2, shuffle_buffer=200)
    summary = run(tiny_model_dir, tmp_path / "a", settings)
    assert summary["records"] < 2_000  # of 20,000: the buffer, a few tokenizer batches, the validation share
    assert (summary["splits"]["train"]["windows"], summary["splits"]["train"]["tokens"]) == (20, 620)
    assert summary["splits"]["validation"]["windows"] == 5
    train = windows(tmp_path / "a")
    assert [w["seq"] for w in train] == list(range(20))
    assert all(len(w["tokens"]) == 32 and w["tokens"][0] == 1 and w["docs"][0] == -1 for w in train)
    # the split of every document follows its content, whatever the reading order
    rows = synthetic_rows(20_000)
    for split, flag in (("train", False), ("validation", True)):
        docs = {d for w in windows(tmp_path / "a", split) for d in w["docs"] if d >= 0}
        assert docs and all(is_validation(Record(d, rows[d]["text"], "x"), 0.2) == flag for d in docs)
    # same seed, same bytes; another seed, other windows
    again = run(tiny_model_dir, tmp_path / "b", settings)
    assert again["splits"] == summary["splits"]
    other = run(tiny_model_dir, tmp_path / "c", DatasetSettings(**{**settings.__dict__, "seed": 1}))
    assert other["splits"]["train"]["sha256"] != summary["splits"]["train"]["sha256"]
    # a shuffled stream: the documents are scattered over the buffer, not a run of the file
    docs = sorted({d for w in train for d in w["docs"] if d >= 0})
    assert docs[-1] - docs[0] > 3 * len(docs)
    # without a budget the reader goes to the end, and meets the bad line
    with pytest.raises(DatasetError, match=r"big.jsonl: line 20001 is not valid JSON"):
        run(tiny_model_dir, tmp_path / "d", DatasetSettings(**{**settings.__dict__, "train_tokens": None}))
    assert not list((tmp_path / "d").iterdir())  # no half-written split


def test_buffer_of_one_keeps_source_order(tmp_path, tiny_model_dir):
    corpus = tmp_path / "c.jsonl"
    rows = synthetic_rows(3_000)
    write_jsonl(corpus, rows)
    run(tiny_model_dir, tmp_path / "o", DatasetSettings(source=str(corpus), context_length=32, train_tokens=310,
                                                       validation_tokens=31, shuffle_buffer=1))
    docs = sorted({d for w in windows(tmp_path / "o") for d in w["docs"] if d >= 0})
    assert docs[0] == 0 and docs[-1] < 60  # only the head of the file was needed


def test_whole_source_in_the_buffer_shuffles_all_windows_of_each_split(tmp_path, tiny_model_dir):
    """The default corpus fits in the default buffer: windows are a seeded draw over the whole
    split (packed per domain in source order), as before streaming."""
    from circuitflow.model.loading import load_tokenizer

    corpus = tmp_path / "c.jsonl"
    rows = synthetic_rows(600)
    write_jsonl(corpus, rows)
    settings = DatasetSettings(source=str(corpus), context_length=24, train_tokens=460, validation_tokens=92, seed=3)
    assert settings.shuffle_buffer > 600
    summary = run(tiny_model_dir, tmp_path / "w", settings)
    assert summary["records"] == 600
    tokenizer = load_tokenizer(tiny_model_dir)
    for split, budget in (("train", 460), ("validation", 92)):
        expected = []
        by_domain = defaultdict(list)
        for record in read_records(settings):
            if is_validation(record, settings.validation_fraction) == (split == "validation"):
                by_domain[record.domain].append(record)
        for domain in sorted(by_domain):
            tokens, docs = [], []
            for record in by_domain[domain]:
                ids = tokenizer(record.text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                tokens += ids
                docs += [record.index] * (len(ids) - 1) + [-1]
            expected += [{"domain": domain, "tokens": [1] + tokens[s:s + 23], "docs": [-1] + docs[s:s + 23]}
                         for s in range(0, len(tokens) - 22, 23)]
        random.Random(f"3-{split}").shuffle(expected)
        expected = [{"seq": i, **w} for i, w in enumerate(expected[: -(-budget // 23)])]
        assert windows(tmp_path / "w", split) == expected


def test_whole_source_split_is_written_a_block_at_a_time(tmp_path, tiny_model_dir, monkeypatch):
    """Row groups of WINDOW_BLOCK windows, so that neither this job nor cache_activations, which
    reads the split a row group at a time, holds the whole split (it was one row group)."""
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, synthetic_rows(600))
    settings = DatasetSettings(source=str(corpus), context_length=24, train_tokens=460, validation_tokens=92, seed=3)
    whole = run(tiny_model_dir, tmp_path / "whole", settings)
    monkeypatch.setattr(dataset, "WINDOW_BLOCK", 6)
    blocks = run(tiny_model_dir, tmp_path / "blocks", settings)
    assert pq.ParquetFile(tmp_path / "blocks" / "train.parquet").metadata.num_row_groups == 4  # 20 windows
    assert windows(tmp_path / "blocks") == windows(tmp_path / "whole")
    assert blocks["splits"]["train"]["tokens_per_domain"] == whole["splits"]["train"]["tokens_per_domain"]


def test_splits_that_do_not_fit_are_refused_before_any_write(tmp_path, tiny_model_dir):
    corpus = tmp_path / "c.jsonl"
    write_jsonl(corpus, synthetic_rows(3_000))
    settings = DatasetSettings(source=str(corpus), context_length=32, train_tokens=3100, validation_tokens=310,
                               shuffle_buffer=200)
    estimate = split_bytes(100, 32) + split_bytes(10, 32)
    with pytest.raises(DiskSpaceError, match=(
            rf"^prepare_dataset would write about {human_bytes(estimate)} to .*, which has "
            rf"{human_bytes(estimate - 1)} free; lower dataset.train_tokens or dataset.validation_tokens, "
            r"or make room there$")):
        run(tiny_model_dir, tmp_path / "out", settings, free_bytes=estimate - 1)
    assert not list((tmp_path / "out").iterdir())
    # by default the filesystem's real free space is checked; the estimate bounds what is written
    run(tiny_model_dir, tmp_path / "out", settings)
    written = sum((tmp_path / "out" / f"{split}.parquet").stat().st_size for split in ("train", "validation"))
    assert written <= estimate
    # a split without a budget is as large as the source: nothing to check in advance
    run(tiny_model_dir, tmp_path / "all", DatasetSettings(**{**settings.__dict__, "validation_tokens": None}),
        free_bytes=split_bytes(100, 32))


def test_local_parquet_and_the_hub_branch_stream_the_same_records(tmp_path, tiny_model_dir):
    rows = synthetic_rows(4_000)
    jsonl = tmp_path / "c.jsonl"
    write_jsonl(jsonl, rows)
    folder = tmp_path / "hubish"
    folder.mkdir()
    table = pa.Table.from_pylist([{**row, "extra": [1, 2]} for row in rows])
    pq.write_table(table, folder / "part-0.parquet", row_group_size=300)
    common = dict(context_length=32, train_tokens=930, validation_tokens=155, shuffle_buffer=500, seed=7)
    summaries = {}
    for name, source in (("jsonl", jsonl), ("parquet", folder / "part-0.parquet"), ("hub", f"hf:{folder}")):
        summaries[name] = run(tiny_model_dir, tmp_path / name, DatasetSettings(source=str(source), **common))
        assert summaries[name]["records"] < 1_500
    for name in ("parquet", "hub"):  # one file, one shard: the same stream, the same windows
        assert summaries[name]["splits"] == summaries["jsonl"]["splits"]
    assert summaries["hub"]["source_sha256"] is None
    # several shards (files): read in a seeded order, deterministically; with a buffer of one
    # record the windows are the head of the stream, so they show which shard came first
    for i in range(4):
        pq.write_table(table.slice(i * 1000, 1000), folder / f"part-{i}.parquet", row_group_size=300)
    heads = set()
    for seed in range(6):
        settings = DatasetSettings(source=f"hf:{folder}", **{**common, "seed": seed, "shuffle_buffer": 1})
        one = run(tiny_model_dir, tmp_path / f"s{seed}a", settings)
        assert run(tiny_model_dir, tmp_path / f"s{seed}b", settings)["splits"] == one["splits"]
        heads.add(frozenset(tuple(w["tokens"]) for w in windows(tmp_path / f"s{seed}a")))
    assert len(heads) > 1
    with pytest.raises(DatasetError, match=r"dataset.source 'hf:.*missing': cannot load it"):
        run(tiny_model_dir, tmp_path / "x", DatasetSettings(source=f"hf:{tmp_path / 'missing'}", **common))


def test_txt_source_is_cut_like_split_on_blank_lines(tmp_path):
    rng = random.Random(0)
    text = "".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) + rng.choice(["\n\n", "\n\n\n", "\n"])
                   for _ in range(30_000))  # over 1 MB: several read chunks
    path = tmp_path / "notes.txt"
    path.write_text(text, encoding="utf-8")
    assert len(text) > 1 << 20
    records = read_records(DatasetSettings(source=str(path)))
    assert [r.text for r in records] == [b for b in text.split("\n\n") if b.strip()]


def chat_rows() -> list[dict]:
    rows = []
    for i in range(40):
        rows.append({"domain": "chat", "messages": [
            {"role": "user", "content": f"Question {i}: name a color."},
            {"role": "assistant", "content": f"Answer {i}: " + " ".join(WORDS[i % 7:i % 7 + 12])}]})
        rows.append({"domain": "sharegpt", "conversations": [
            {"from": "human", "value": f"Tell me about item {i}."},
            {"from": "gpt", "value": "It is " + " ".join(WORDS[i % 5:i % 5 + 10])}]})
        rows.append({"domain": "plain", "text": f"Plain record {i} " + " ".join(WORDS[:15])})
    return rows


def test_chat_records_are_rendered_with_the_chat_template(tmp_path, tiny_model_dir, smollm2_tokenizer):
    corpus = tmp_path / "chat.jsonl"
    rows = chat_rows()
    write_jsonl(corpus, rows)
    settings = DatasetSettings(source=str(corpus), context_length=32, validation_fraction=0.1)
    records = read_records(settings, smollm2_tokenizer)
    assert records[0].text == smollm2_tokenizer.apply_chat_template(rows[0]["messages"], tokenize=False)
    assert records[0].text.startswith("<|im_start|>system\n") and "<|im_start|>user\nQuestion 0" in records[0].text
    sharegpt = [{"role": {"human": "user", "gpt": "assistant"}[m["from"]], "content": m["value"]}
                for m in rows[1]["conversations"]]
    assert records[1].text == smollm2_tokenizer.apply_chat_template(sharegpt, tokenize=False)
    assert records[2].text == rows[2]["text"]
    summary = run(tiny_model_dir, tmp_path / "o", settings)
    assert set(summary["splits"]["train"]["tokens_per_domain"]) == {"chat", "sharegpt", "plain"}
    chat_window = next(w for w in windows(tmp_path / "o") if w["domain"] == "chat")
    assert "<|im_start|>" in smollm2_tokenizer.decode(chat_window["tokens"][1:])
    # the same records through Arrow (every row gets every key, null where absent): parquet, hub branch
    folder = tmp_path / "chat-parquet"
    folder.mkdir()
    keys = ("domain", "messages", "conversations", "text")
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows]), folder / "chat.parquet")
    for source in (folder / "chat.parquet", f"hf:{folder}"):
        assert read_records(DatasetSettings(source=str(source)), smollm2_tokenizer) == records
    # chat_field: null reads text_field only; a named field must be in every record
    with pytest.raises(DatasetError, match=r"record 0 has no text field 'text'"):
        read_records(DatasetSettings(source=str(corpus), chat_field=None), smollm2_tokenizer)
    with pytest.raises(DatasetError, match=r"record 1 has no chat list in field 'messages'.*set dataset.chat_field"):
        read_records(DatasetSettings(source=str(corpus), chat_field="messages"), smollm2_tokenizer)


def test_chat_errors_name_the_record_and_the_fix(tmp_path, tiny_model_dir):
    corpus = tmp_path / "chat.jsonl"
    write_jsonl(corpus, chat_rows())
    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(DatasetError, match=r"record 0 field 'messages' is a chat but the model's tokenizer has no "
                                           r"chat template; .*dataset.chat_field: null"):
        run(no_template, tmp_path / "o", DatasetSettings(source=str(corpus), context_length=32))
    assert not (tmp_path / "o" / "train.parquet").exists()
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"text": "fine"}, {"messages": [{"role": "user", "content": "hi"}, {"speaker": "x"}]}])
    with pytest.raises(DatasetError, match=r"record 1 field 'messages': message 1 has neither role/content nor "
                                           r"from/value \(keys: \['speaker'\]\)"):
        run(tiny_model_dir, tmp_path / "p", DatasetSettings(source=str(bad), context_length=32))
    with pytest.raises(DatasetError, match=r"record 1 field 'messages' is a chat, which needs the model's tokenizer"):
        read_records(DatasetSettings(source=str(bad)))


def test_bad_sources_are_named(tmp_path, tiny_model_dir):
    packed = tmp_path / "c.parquet.gz"
    packed.write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"c.parquet.gz': a compressed parquet file cannot be streamed; decompress"):
        read_records(DatasetSettings(source=str(packed)))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DatasetError, match=r"broken.parquet' cannot be read"):
        read_records(DatasetSettings(source=str(broken)))
    empty = tmp_path / "empty.jsonl"
    write_jsonl(empty, [{"text": "  "}, {"messages": []}])
    with pytest.raises(DatasetError, match=r"empty.jsonl': no non-empty text records"):
        run(tiny_model_dir, tmp_path / "o", DatasetSettings(source=str(empty), context_length=32))


def test_chat_prompt_files(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "prompts"
    folder.mkdir()
    conversation = [{"role": "user", "content": "What is the capital of France?"},
                    {"role": "assistant", "content": "The capital of France is Paris"}]
    (folder / "france-chat.json").write_text(json.dumps({"messages": conversation}) + "\n")
    (folder / "ask.json").write_text(json.dumps(conversation[:1]))
    (folder / "plain.txt").write_text("The capital of France is Paris\n")
    found = discover_prompts(str(folder), None)
    assert list(found) == ["ask", "france-chat", "plain"]

    prompt = tokenize_prompt("france-chat", found["france-chat"], read_prompt_text(found["france-chat"]),
                             smollm2_tokenizer, True, 2048)
    assert prompt.target_token == " Paris"
    assert prompt.text == smollm2_tokenizer.apply_chat_template(conversation, tokenize=False,
                                                                continue_final_message=True)
    decoded = smollm2_tokenizer.decode(prompt.input_ids)
    assert decoded.startswith("<|im_start|>system\n") and decoded.endswith(
        "<|im_start|>assistant\nThe capital of France is")
    assert prompt.input_ids.count(smollm2_tokenizer.bos_token_id) == 3  # the template's own, no extra BOS

    with pytest.raises(PromptError, match=r"ask.json ends with a 'user' message; with "
                                          r"attribution.drop_last_token_as_target the last message must be"):
        tokenize_prompt("ask", found["ask"], read_prompt_text(found["ask"]), smollm2_tokenizer, True, 2048)
    open_reply = tokenize_prompt("ask", found["ask"], read_prompt_text(found["ask"]), smollm2_tokenizer, False, 2048)
    assert open_reply.target_id is None and smollm2_tokenizer.decode(open_reply.input_ids).endswith(
        "<|im_start|>assistant\n")

    (folder / "plain.json").write_text("[]")
    with pytest.raises(PromptError, match=r"plain.txt: prompt name 'plain' is also used by .*plain.json"):
        discover_prompts(str(folder), None)
    (folder / "plain.json").unlink()
    for name, content, message in (
        ("broken.json", "{", r"broken.json is not valid JSON .*write \{\"messages\""),
        ("nomessages.json", '{"turns": []}', r"nomessages.json has no 'messages' \(keys: \['turns'\]\)"),
        ("badturn.json", '[{"role": "user"}, 3]',
         r"badturn.json: 'messages' message 1 is not an object with role and content \(int\)"),
        ("empty.json", '{"messages": []}', r"empty.json is empty"),
    ):
        (folder / name).write_text(content)
        with pytest.raises(PromptError, match=message):
            tokenize_prompt("x", str(folder / name), read_prompt_text(str(folder / name)), smollm2_tokenizer,
                            True, 2048)


def test_chat_prompt_needs_a_chat_template(tmp_path, tiny_model_dir):
    from circuitflow.model.loading import load_tokenizer

    no_template = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, no_template)
    (no_template / "chat_template.jinja").unlink()
    tokenizer = load_tokenizer(no_template)
    prompt = tmp_path / "q.json"
    prompt.write_text('[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]')
    with pytest.raises(PromptError, match=r"q.json is a chat but the model's tokenizer has no chat template; "
                                          r"write the prompt as plain text in q.txt instead"):
        tokenize_prompt("q", str(prompt), read_prompt_text(str(prompt)), tokenizer, True, 2048)
    tokenizer.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(PromptError, match=r"q.json: the chat template rejects it \(Conversation roles must"):
        tokenize_prompt("q", str(prompt), read_prompt_text(str(prompt)), tokenizer, True, 2048)


def test_special_token_strings_in_text_stay_text(smollm2_tokenizer, tmp_path):
    """"<|im_end|>" written inside a corpus record or a text prompt is tokenized as text, never
    as the control token; a chat's rendered template keeps its real special tokens."""
    from circuitflow.data.dataset import Record, _encode

    end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = "Close the tag <|im_end|> and go on"
    chat = smollm2_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    plain_ids, chat_ids = _encode(smollm2_tokenizer, [Record(0, text, "web"), Record(1, chat, "chat", chat=True)])
    assert end not in plain_ids and "<|im_end|>" in smollm2_tokenizer.decode(plain_ids)
    assert end in chat_ids
    (tmp_path / "tag.txt").write_text(text + " now")
    prompt = tokenize_prompt("tag", str(tmp_path / "tag.txt"), read_prompt_text(str(tmp_path / "tag.txt")),
                             smollm2_tokenizer, True, 2048)
    assert end not in prompt.input_ids and prompt.target_token == " now"
