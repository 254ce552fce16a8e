"""Loading a materialized model folder (model in eval mode, tokenizer)."""

from __future__ import annotations

from pathlib import Path

from circuitflow.model.facts import ModelSourceError


def load_model(model_dir: str | Path, dtype: str = "float32"):
    """Load a materialized folder (model in eval mode, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "provenance.json").is_file():
        raise ModelSourceError(f"{model_dir} is not a materialized model folder (no provenance.json)")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval()
    return model, load_tokenizer(model_dir)


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(model_dir))
