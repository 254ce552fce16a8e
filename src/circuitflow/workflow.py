"""Helpers that the Snakefile calls at parse time (kept here so they are testable)."""

from __future__ import annotations

import json
from pathlib import Path

from circuitflow.model import ModelSourceError, count_layers, read_model_config, resolve_source
from circuitflow.prompts import discover_prompts


def model_folder(config: dict) -> str:
    return f"resources/models/{config['model']['name']}"


def resolve_layers(config: dict) -> list[int]:
    """`activations.layers: all` becomes every layer of the model, read without loading weights."""
    wanted = config["activations"]["layers"]
    n_layers = config["model"].get("n_layers")
    if n_layers is None:
        materialized = Path(model_folder(config)) / "config.json"
        if materialized.is_file():
            n_layers = count_layers(json.loads(materialized.read_text()))
        else:
            source = resolve_source(config["model"]["source"], config["model"].get("revision"))
            n_layers = count_layers(read_model_config(source))
    if wanted == "all":
        return list(range(n_layers))
    bad = [layer for layer in wanted if not 0 <= layer < n_layers]
    if bad:
        raise ModelSourceError(f"activations.layers {bad} out of range: the model has {n_layers} layers")
    return sorted(set(wanted))


def prompt_origins(config: dict) -> dict[str, str]:
    attribution = config["attribution"]
    return discover_prompts(attribution.get("prompts_dir"), attribution.get("prompts"))


def resolve_feature_layers(config: dict, transcoder_layers: list[int]) -> list[int]:
    """`features.layers`, each of which must have a transcoder (a layer of `activations.layers`)."""
    from circuitflow.features import FeatureRequestError

    wanted = config["features"]["layers"]
    if wanted == "all":
        return list(transcoder_layers)
    missing = sorted(set(wanted) - set(transcoder_layers))
    if missing:
        raise FeatureRequestError(
            f"features.layers {missing} have no transcoder: transcoders are trained for "
            f"activations.layers {transcoder_layers}")
    return sorted(set(wanted))


def collect_settings(config: dict, layers: list[int]) -> dict:
    """The `CollectSettings` fields taken from the config (a plain dict for Snakemake params)."""
    return {**config["features"], "layers": list(layers), "n_neurons": config["neurons"]["n_per_layer"],
            "seed": config["seed"], "model_dtype": config["model"]["dtype"]}
