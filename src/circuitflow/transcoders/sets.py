"""write_transcoder_set: the set's ``config.yaml``, with explicit layer numbers, and its reader.

The file follows circuit-tracer's ``transcoder_set`` config (``model_kind``, hook names,
``scan``), and adds what circuitflow's readers use::

    layers:          # layer number -> weights file, relative to config.yaml (explicit, any subset)
      3: layer_3.safetensors
      5: layer_5.safetensors
    transcoders:     # circuit-tracer's positional list (index = layer), absolute paths as
      - /abs/.../layer_0.safetensors    # for model_name; only for a complete set
      ...

plus ``activation``, ``k``, ``d_model``, ``n_features`` and ``skip_connection``, the
architecture that every layer shares (each layer's ``.architecture.json`` is checked
against it and against its tensors' shapes before the file is written).

A cross-layer transcoder's config has ``model_kind: cross_layer_transcoder`` (circuit-tracer's
key for ``load_clt``, which reads the folder beside it) and ``layers:`` naming each layer's
encoder file; its decoder files ``W_dec_<i>.safetensors`` sit beside them
(`circuitflow.transcoders.cross_layer`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from circuitflow.config import TranscoderArchitecture, WriteTranscoderSetSettings
from circuitflow.io import atomic_path, keyed
from circuitflow.model.facts import read_model_facts
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT
from circuitflow.transcoders import cross_layer
from circuitflow.transcoders.single_layer import TranscoderFileError, check_transcoder_file

ARCHITECTURE_KEYS = ("activation", "k", "n_features", "skip_connection")
PER_LAYER, CROSS_LAYER = "transcoder_set", cross_layer.KIND  # circuit-tracer's model_kind values


class TranscoderSetError(ValueError):
    """A transcoder set is inconsistent, incomplete for a use, or unreadable; names the file."""


@dataclass(frozen=True)
class TranscoderSetConfig:
    path: Path
    model_name: str
    layers: dict[int, Path]  # layer -> absolute weights path
    architecture: TranscoderArchitecture
    d_model: int
    scan: str
    feature_input_hook: str
    feature_output_hook: str
    kind: str = PER_LAYER
    source: dict | None = None  # an imported set (transcoder.source): where its files are, how to load them

    @property
    def imported(self) -> bool:
        return self.source is not None

    @property
    def loader_settings(self) -> dict:
        """What circuit-tracer's loaders need of an imported set (`imported.load_published_set`)."""
        return {**(self.source or {}), "layers": {layer: str(path) for layer, path in self.layers.items()},
                "feature_input_hook": self.feature_input_hook, "feature_output_hook": self.feature_output_hook}

    @property
    def cross_layer(self) -> bool:
        return self.kind == CROSS_LAYER

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def n_features(self) -> int:
        return self.architecture.n_features

    def require_layers(self, wanted, what: str) -> None:
        """Fail, naming the missing layers, unless every layer of `wanted` has a transcoder."""
        missing = sorted(set(wanted) - set(self.layers))
        if missing:
            raise TranscoderSetError(
                f"{what} needs transcoders for layer(s) {missing}, but {self.path} has them for layers "
                f"{sorted(self.layers)} only; add those layers to activations.layers")


def write_transcoder_set(*, model_dir: str | Path, out_config: str | Path, settings: WriteTranscoderSetSettings,
                         weights: Sequence[str | Path] = (), trained: Sequence[str | Path] = (),
                         architectures: Sequence[str | Path] = (), metrics: Sequence[str | Path] = ()) -> dict:
    """Check every layer's files against the model and each other, then write `config.yaml`.

    `trained` is what the training rules wrote: for a plt the training jobs' folders, whose
    files are first linked to `weights`, `architectures` and `metrics` (each in the order of
    `settings.layers`); for a clt its files beside `out_config`. A plt whose `weights` are
    already in place passes no `trained`."""
    out_config = Path(out_config)
    if settings.kind == "plt" and trained:
        place_trained_files(trained, [*weights, *architectures, *metrics])
    facts = read_model_facts(model_dir)
    if settings.kind == "clt":
        # a CLT's files are found beside config.yaml, where circuit-tracer's load_clt reads them
        files = trained or weights
        elsewhere = sorted(str(w) for w in files if Path(w).resolve().parent != out_config.resolve().parent)
        if elsewhere:
            raise TranscoderSetError(f"cross-layer transcoder files {elsewhere} are not in {out_config.parent}, "
                                     "where the set's config.yaml and circuit-tracer's load_clt expect them")
        return _write_cross_layer_set(model_dir, facts, out_config, settings)
    weights = keyed(settings.layers, weights, "transcoder weights files")
    try:
        records = {layer: check_transcoder_file(weights[layer], layer, facts.d_model) for layer in sorted(weights)}
    except TranscoderFileError as error:
        raise TranscoderSetError(str(error)) from None
    first_layer = min(records)
    shared = {key: records[first_layer][key] for key in ARCHITECTURE_KEYS}
    for layer, record in records.items():
        differing = {key: record[key] for key in ARCHITECTURE_KEYS if record[key] != shared[key]}
        if differing:
            raise TranscoderSetError(
                f"layer {layer}'s transcoder has {differing} but layer {first_layer}'s has "
                f"{ {key: shared[key] for key in differing} }; retrain with one transcoder config")
    relative = {layer: str(Path(weights[layer]).resolve().relative_to(out_config.parent.resolve()))
                for layer in sorted(weights)}
    config = {
        "model_kind": "transcoder_set",
        "model_name": str(Path(model_dir).resolve()),
        "feature_input_hook": HOOK_IN,
        "feature_output_hook": HOOK_OUT,
        "activation": shared["activation"],
        "k": shared["k"] if shared["activation"] == "topk" else None,
        "d_model": facts.d_model,
        "n_features": shared["n_features"],
        "skip_connection": shared["skip_connection"],
        "scan": settings.scan,
        "layers": relative,
    }
    if sorted(relative) == list(range(facts.n_layers)):
        # circuit-tracer opens these paths as given (from the working directory), so they are
        # absolute, like model_name: its own `load_transcoders(config)` then works from anywhere.
        config["transcoders"] = [str(Path(weights[layer]).resolve()) for layer in sorted(relative)]
    with atomic_path(out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config


def place_trained_files(training_dirs: Sequence[str | Path], targets: Sequence[str | Path]) -> None:
    """Link (or, across filesystems, copy) each target's namesake from the training folder that
    holds it; a target no folder holds is an error naming the folders. A link shares its
    file's modification time, so it is set to now: Snakemake must see the target as newer than
    the training folder (whose time is the end of its job), or it would redo this every run."""
    found = {path.name: path for folder in map(Path, training_dirs) for path in folder.iterdir()}
    for target in map(Path, targets):
        source = found.get(target.name)
        if source is None:
            raise TranscoderSetError(f"{target.name} is in none of the training folders {sorted(map(str, training_dirs))}; "
                                     f"retrain them (snakemake --forcerun {' '.join(map(str, training_dirs))})")
        with atomic_path(target) as tmp:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
            os.utime(tmp)


def _write_cross_layer_set(model_dir, facts, out_config: Path, settings: WriteTranscoderSetSettings) -> dict:
    try:
        record = cross_layer.check_cross_layer_files(out_config.parent, facts.d_model)
    except cross_layer.CrossLayerFileError as error:
        raise TranscoderSetError(str(error)) from None
    if list(range(record["n_layers"])) != list(settings.layers):
        raise TranscoderSetError(f"the cross-layer transcoder in {out_config.parent} covers layers "
                                 f"0..{record['n_layers'] - 1}, but activations.layers is {list(settings.layers)}; "
                                 "retrain it (snakemake --forcerun train_cross_layer_transcoder)")
    config = {
        "model_kind": CROSS_LAYER,
        "model_name": str(Path(model_dir).resolve()),
        "feature_input_hook": HOOK_IN,
        "feature_output_hook": HOOK_OUT,
        **{key: record[key] for key in ("activation", "k", "d_model", "n_features", "skip_connection",
                                        "n_layers", "clt_id")},
        "scan": settings.scan,
        "layers": {layer: cross_layer.encoder_file("", layer).name for layer in range(record["n_layers"])},
    }
    with atomic_path(out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return config


def read_transcoder_set(config_path: str | Path) -> TranscoderSetConfig:
    """Parse a set `config.yaml` written by `write_transcoder_set`."""
    path = Path(config_path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        layers = {int(layer): path.parent / relative for layer, relative in config["layers"].items()}
        architecture = TranscoderArchitecture(
            activation=config["activation"], n_features=int(config["n_features"]),
            skip_connection=bool(config["skip_connection"]),
            **({"k": int(config["k"])} if config.get("k") is not None else {}))
        parsed = TranscoderSetConfig(path, config["model_name"], layers, architecture, int(config["d_model"]),
                                     config["scan"], config["feature_input_hook"], config["feature_output_hook"],
                                     config.get("model_kind", PER_LAYER), config.get("source"))
    except FileNotFoundError:
        raise TranscoderSetError(f"transcoder set {path} does not exist") from None
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise TranscoderSetError(
            f"transcoder set {path} is not a circuitflow set config ({type(error).__name__}: {error}); "
            "rerun write_transcoder_set") from None
    if parsed.imported:
        _check_imported_files(parsed)
    elif parsed.cross_layer:
        _check_cross_layer_files(parsed, config)
    else:
        _check_layer_files(parsed)
    return parsed


def _check_imported_files(config: TranscoderSetConfig) -> None:
    """An imported set's files are where import_transcoder_set found them (not moved or deleted)."""
    decoders = {int(layer): Path(path) for layer, path in (config.source.get("decoders") or {}).items()}
    for layer, path in [*config.layers.items(), *decoders.items()]:
        if not path.is_file():
            raise TranscoderSetError(f"transcoder set {config.path} imports {path} for layer {layer}, but that file "
                                     f"no longer exists; restore {config.source.get('uri')} or rerun "
                                     "import_transcoder_set")


def _check_cross_layer_files(config: TranscoderSetConfig, raw: dict) -> None:
    try:
        record = cross_layer.check_cross_layer_files(config.folder, config.d_model)
    except cross_layer.CrossLayerFileError as error:
        raise TranscoderSetError(f"transcoder set {config.path}: {error}") from None
    if record["clt_id"] != raw.get("clt_id") or sorted(config.layers) != list(range(record["n_layers"])):
        raise TranscoderSetError(f"transcoder set {config.path} does not describe the cross-layer transcoder beside "
                                 "it (another training run); rerun write_transcoder_set")


def _check_layer_files(config: TranscoderSetConfig) -> None:
    """Each listed file exists, is the layer it is listed under, has the shapes the set's sizes
    imply (`check_transcoder_file`, from the safetensors header) and the set's activation."""
    for layer, weights in config.layers.items():
        if not weights.is_file():
            raise TranscoderSetError(f"transcoder set {config.path} lists {weights} for layer {layer}, but that "
                                     "file does not exist; retrain that layer or rerun write_transcoder_set")
        try:
            record = check_transcoder_file(weights, layer, config.d_model)
        except TranscoderFileError as error:
            raise TranscoderSetError(f"transcoder set {config.path}: {error}") from None
        if record["activation"] != config.architecture.activation:
            raise TranscoderSetError(
                f"transcoder set {config.path} says activation {config.architecture.activation!r}, but {weights.name} "
                f"is {record['activation']!r}; rerun write_transcoder_set")
