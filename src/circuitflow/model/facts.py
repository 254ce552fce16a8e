"""The one reader of a model's architecture facts (layer count, width, context), torch-free.

Every stage that needs ``d_model``, the number of layers or the context length of a
materialized model asks `read_model_facts`, so the keys of different architectures' configs
(``num_hidden_layers`` vs ``n_layer``, ``max_position_embeddings`` vs ``n_positions``) are
known in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
WIDTH_KEYS = ("hidden_size", "n_embd", "d_model")
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


class ModelSourceError(ValueError):
    """The configured model source cannot be found, read or loaded."""


@dataclass(frozen=True)
class ModelFacts:
    n_layers: int
    d_model: int | None
    context_length: int | None  # positions the model accepts; None when the config does not say
    architecture: str | None


def _first(config: dict, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if config.get(key) is not None:
            return int(config[key])
    return None


def model_facts(config: dict, origin: str) -> ModelFacts:
    """Facts from a Hugging Face `config.json` dict; `origin` names it in errors."""
    n_layers = _first(config, LAYER_KEYS)
    if n_layers is None:
        raise ModelSourceError(
            f"{origin} has no layer count (looked for {', '.join(LAYER_KEYS)}); set `model.n_layers` "
            "in the config or use a model whose config.json states it")
    architectures = config.get("architectures") or [config.get("model_type")]
    return ModelFacts(n_layers, _first(config, WIDTH_KEYS), _first(config, CONTEXT_KEYS), architectures[0])


def read_model_facts(model_dir: str | Path) -> ModelFacts:
    """Facts of a materialized model folder (its `config.json`)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelSourceError(f"{path} does not exist: is {model_dir} a materialized model folder?") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelSourceError(f"{path} is not valid JSON ({error}); rerun prepare_model") from None
    return model_facts(config, str(path))
