"""prepare_model: materialize any model source into one plain safetensors Hugging Face folder.

Every later rule loads only the materialized folder, so no stage touches the hub at run time.
Sources are described in `circuitflow.model.source`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from circuitflow.config import PrepareModelSettings
from circuitflow.io import atomic_path, sha256_file, sha256_tree, write_json
from circuitflow.model.facts import ModelSourceError, model_facts
from circuitflow.model.source import resolve_source

log = logging.getLogger("circuitflow.model")


def prepare_model(*, out_dir: str | Path, settings: PrepareModelSettings) -> dict:
    """Load `settings.source` with transformers and save it as a plain safetensors folder.

    Writes `<out_dir>/provenance.json` (source, hashes of source and output files). The folder
    appears only when complete (atomic rename).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source_spec, dtype = settings.source, settings.dtype
    source = resolve_source(source_spec, settings.revision)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype}
    if source.kind == "gguf":
        kwargs["gguf_file"] = source.gguf_file
        source_hashes = {source.gguf_file: sha256_file(source.gguf_path)}
    elif source.kind == "local":
        source_hashes = sha256_tree(source.location)
    else:
        kwargs["revision"] = source.revision
        source_hashes = {}
    log.info("loading %s model from %s", source.kind, source.gguf_path or source.location)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **{
            k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")})
        model = AutoModelForCausalLM.from_pretrained(source.location, **kwargs)
    except OSError as error:
        raise ModelSourceError(f"cannot load model source {source_spec!r}: {error}") from error

    if source.kind == "gguf":
        # A GGUF-loaded model refuses save_pretrained; rebuild it from its de-quantized weights.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(model)(config).to(torch_dtype)
        plain.load_state_dict(model.state_dict())
        model = plain
    if source.kind == "hub":
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source.location, revision=source.revision,
                                     allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"])
        source_hashes = sha256_tree(snapshot)

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        stray = tmp / "tokenizer.model"
        # A GGUF tokenizer "saves" its vocab file as a copy of the whole GGUF; the fast
        # tokenizer.json holds everything needed, so drop the duplicate weights.
        if stray.is_file() and stray.read_bytes()[:4] == b"GGUF":
            stray.unlink()
            _drop_vocab_file_reference(tmp / "tokenizer_config.json")
        _add_head_dim(tmp / "config.json")
        provenance = {
            "source": source_spec,
            "kind": source.kind,
            "location": source.location,
            "gguf_file": source.gguf_file,
            "revision": source.revision,
            "dtype": dtype,
            "architecture": type(model).__name__,
            "source_sha256": source_hashes,
            "files_sha256": sha256_tree(tmp),
            "versions": _versions(),
        }
        write_json(tmp / "provenance.json", provenance)
    log.info("materialized %s (%s, %d layers) into %s", source_spec, type(model).__name__,
             model_facts(model.config.to_dict(), source_spec).n_layers, out_dir)
    return provenance


def _add_head_dim(config_json: Path) -> None:
    """Write the attention head width into config.json when the config leaves it implicit.

    Qwen2's config has no ``head_dim`` (transformers derives hidden_size / num_attention_heads),
    but circuit-tracer's nnsight backend reads ``config.head_dim`` (``KeyError: 'head_dim'``);
    the value written is the one transformers uses, so the model is unchanged.
    """
    config = json.loads(config_json.read_text(encoding="utf-8"))
    if config.get("head_dim") is not None or not config.get("hidden_size") or not config.get("num_attention_heads"):
        return
    config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    config_json.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("added head_dim %d to config.json (circuit-tracer reads it)", config["head_dim"])


def _drop_vocab_file_reference(tokenizer_config: Path) -> None:
    if tokenizer_config.is_file():
        data = json.loads(tokenizer_config.read_text())
        if data.pop("vocab_file", None) is not None:
            tokenizer_config.write_text(json.dumps(data, indent=2))


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


