"""transcoder.source: explain a published circuit-tracer set instead of training transcoders.

``hf://owner/repo[@revision]`` is downloaded once by rule download_transcoder_set into
``resources/transcoders/<owner>/<repo>/<revision>/`` (a resumable ``huggingface_hub`` snapshot,
with the commit it resolved to in ``<revision>.download.json``); a local folder is read where
it is. Files a set's ``transcoders:`` list names in *other* repos (GemmaScope's point at Google's)
are downloaded beside it, under ``external/<owner>/<repo>/<path>``.

`read_published_set` reads the set's ``config.yaml`` and the shapes in its files' headers
(nothing is loaded), `check_against_model` refuses a set that does not fit the model, and rule
import_transcoder_set writes ``results/<run>/transcoders/config.yaml``: a circuitflow set config
whose ``source:`` block says where the files are. Every later job loads the set through
circuit-tracer's own loaders (`load_published_set`: ``hf_utils.load_transcoders`` for a
per-layer set, ``load_clt`` for a cross-layer one), after `require_memory` has compared the
estimated size with the job's ``resources.mem_mb``. circuit-tracer 0.5.0 reads a TopK set as
ReLU, so ``activation: topk`` gets circuitflow's `ReluTopK` (the one exception).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

from circuitflow.config import ConfigError, ImportTranscoderSetSettings
from circuitflow.io import atomic_path, read_json, tensor_shapes, write_json
from circuitflow.model.facts import ModelFacts, read_model_facts
from circuitflow.model.hooks import INPUT_HOOKS, OUTPUT_HOOKS
from circuitflow.model.source import HUB_ID, resolve_source

log = logging.getLogger("circuitflow.transcoders")

HF_SCHEME = "hf://"
DOWNLOAD_ROOT = Path("resources/transcoders")
PER_LAYER, CROSS_LAYER = "transcoder_set", "cross_layer_transcoder"  # circuit-tracer's model_kind values
MEMORY_ENV = "CIRCUITFLOW_JOB_MEM_MB"  # set by circuitflow.logs.start_job from the rule's resources
RULE_ENV = "CIRCUITFLOW_JOB_RULE"
LAYER_FILE = re.compile(r"^layer_(\d+)\.(safetensors|npz)$")
ENCODER_FILE = re.compile(r"^W_enc_(\d+)\.safetensors$")


class PublishedSetError(ValueError):
    """A published set cannot be found, read, or does not fit the model; names both values."""


# --------------------------------------------------------------------------- where the set is


@dataclass(frozen=True)
class SetSource:
    """What transcoder.source names: a hub repo (downloaded into `folder`) or a local folder."""

    uri: str
    folder: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def on_hub(self) -> bool:
        return self.repo_id is not None

    @property
    def receipt(self) -> Path:
        """What download_transcoder_set writes last: the commit and every file it fetched."""
        return self.folder.with_name(self.folder.name + ".download.json")

    @property
    def display(self) -> str:
        return f"{self.repo_id}@{self.revision}" if self.on_hub else str(self.folder)


def parse_set_source(source: str) -> SetSource:
    """`transcoder.source` -> where its files are (for a hub repo: where they will be)."""
    if source.startswith(HF_SCHEME):
        repo_id, _, revision = source[len(HF_SCHEME):].partition("@")
        if not HUB_ID.match(repo_id):
            raise ConfigError(f"transcoder.source {source!r}: {repo_id!r} is not a hub repo; write "
                              "hf://owner/name or hf://owner/name@revision")
        revision = revision or "main"
        return SetSource(source, DOWNLOAD_ROOT / repo_id / revision.replace("/", "--"), repo_id, revision)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"transcoder.source {source!r} is neither hf://owner/name[@revision] nor an existing "
                          "folder holding a circuit-tracer config.yaml")
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"transcoder.source folder {folder} has no config.yaml: a circuit-tracer set folder holds "
                          "one (model_kind, feature_input_hook, feature_output_hook, the layer files)")
    return SetSource(source, folder.resolve())


def _split_hf_uri(uri: str) -> tuple[str, str, str | None]:
    """hf://owner/name/path/in/repo[?revision=r] -> (repo id, path, revision)."""
    parts = urlsplit(uri)
    path = (parts.netloc + parts.path).strip("/").split("/")
    revision = parse_qs(parts.query).get("revision", [None])[0]
    return "/".join(path[:2]), "/".join(path[2:]), revision


def external_path(folder: Path, uri: str) -> Path:
    """Where a file of another repo that a set's `transcoders:` list names is kept."""
    repo_id, path, _ = _split_hf_uri(uri)
    return folder / "external" / repo_id / path


def _resolve_entry(folder: Path, entry: str, own_repo: str | None) -> Path:
    """A `transcoders:` entry as a local path: hf:// files of the set's own repo sit in the
    folder, those of other repos under external/; plain paths are relative to the folder."""
    if entry.startswith(HF_SCHEME):
        repo_id, path, _ = _split_hf_uri(entry)
        inside = folder / path
        if repo_id == own_repo or (own_repo is None and inside.is_file()):
            return inside
        return external_path(folder, entry)
    path = Path(entry).expanduser()
    return path if path.is_absolute() else folder / path


# --------------------------------------------------------------------------- reading a set


@dataclass(frozen=True)
class PublishedSet:
    """A circuit-tracer set's config.yaml and what its files' headers say (nothing loaded)."""

    origin: str  # transcoder.source, for messages
    folder: Path
    raw: dict
    kind: str
    files: dict[int, Path]  # per-layer: layer -> weights; cross-layer: layer -> W_enc_<i>
    decoder_files: dict[int, Path] = field(default_factory=dict)  # cross-layer: layer -> W_dec_<i>
    d_model: int | None = None
    n_features: int | None = None
    activation: str | None = None
    k: int | None = None
    skip_connection: bool = False
    tensor_bytes: dict[str, int] = field(default_factory=dict)  # encoders/decoders/other/largest_decoder at float32

    @property
    def n_layers(self) -> int:
        return len(self.files)

    @property
    def model_name(self) -> str | None:
        return self.raw.get("model_name")

    @property
    def feature_input_hook(self) -> str:
        return self.raw["feature_input_hook"]

    @property
    def feature_output_hook(self) -> str:
        return self.raw["feature_output_hook"]

    @property
    def scan(self) -> str | None:
        scan = self.raw.get("scan")
        return scan if isinstance(scan, str) else None


def _read_config(path: Path, origin: str) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PublishedSetError(f"transcoder.source {origin}: {path} does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PublishedSetError(f"transcoder.source {origin}: {path} is not YAML ({error})") from None
    if not isinstance(raw, dict):
        raise PublishedSetError(f"transcoder.source {origin}: {path} is not a circuit-tracer set config (a mapping)")
    kind = raw.get("model_kind")
    if kind not in (PER_LAYER, CROSS_LAYER):
        raise PublishedSetError(f"transcoder.source {origin}: model_kind {kind!r} in {path} is not one circuit-tracer "
                                f"loads ({PER_LAYER!r} or {CROSS_LAYER!r})")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(raw.get(key), str):
            raise PublishedSetError(f"transcoder.source {origin}: {path} has no {key} (circuit-tracer needs the hook "
                                    "names, e.g. mlp.hook_in / mlp.hook_out)")
    if raw["feature_input_hook"] not in INPUT_HOOKS or raw["feature_output_hook"] not in OUTPUT_HOOKS:
        raise PublishedSetError(
            f"transcoder.source {origin}: hooks {raw['feature_input_hook']} -> {raw['feature_output_hook']} are not "
            f"supported; circuitflow reads a transcoder's input at {', '.join(INPUT_HOOKS)} and its output at "
            f"{', '.join(OUTPUT_HOOKS)}")
    if raw.get("k") is not None and not isinstance(raw.get("k"), int):
        raise PublishedSetError(f"transcoder.source {origin}: k {raw['k']!r} in {path} is not an integer")
    return raw


def _layer_files(folder: Path, raw: dict, origin: str, own_repo: str | None, names: list[str]) -> dict[int, Path]:
    """Per-layer files: the `transcoders:` list (index = layer), else layer_<i>.safetensors."""
    if "transcoders" in raw:
        entries = raw["transcoders"]
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise PublishedSetError(f"transcoder.source {origin}: `transcoders` in config.yaml must be a list of paths")
        return {layer: _resolve_entry(folder, entry, own_repo) for layer, entry in enumerate(entries)}
    found = {int(m.group(1)): folder / name for name in names if (m := LAYER_FILE.match(Path(name).name))
             and "/" not in name}
    if not found:
        raise PublishedSetError(f"transcoder.source {origin}: no `transcoders` list in config.yaml and no "
                                "layer_<i>.safetensors files beside it")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise PublishedSetError(f"transcoder.source {origin}: layer file(s) "
                                f"{', '.join(f'layer_{m}.safetensors' for m in missing)} missing (the set has files "
                                f"for layers {sorted(found)}; circuit-tracer numbers them 0..n-1)")
    return dict(sorted(found.items()))


def _encoder_files(folder: Path, origin: str, names: list[str]) -> tuple[dict[int, Path], dict[int, Path]]:
    found = {int(m.group(1)) for name in names if (m := ENCODER_FILE.match(name))}
    if not found:
        raise PublishedSetError(f"transcoder.source {origin}: a cross_layer_transcoder set needs W_enc_<i>.safetensors "
                                "and W_dec_<i>.safetensors files beside config.yaml; there are none")
    n_layers = max(found) + 1
    missing = [f"W_enc_{i}.safetensors" for i in range(n_layers) if i not in found]
    missing += [f"W_dec_{i}.safetensors" for i in range(n_layers) if f"W_dec_{i}.safetensors" not in names]
    if missing:
        raise PublishedSetError(f"transcoder.source {origin}: cross-layer file(s) {', '.join(missing)} missing "
                                f"(load_clt reads W_enc_<i> and W_dec_<i> for i = 0..{n_layers - 1})")
    return ({i: folder / f"W_enc_{i}.safetensors" for i in range(n_layers)},
            {i: folder / f"W_dec_{i}.safetensors" for i in range(n_layers)})


def _numel(shape: list[int]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n


def read_published_set(folder: str | Path, origin: str, own_repo: str | None = None) -> PublishedSet:
    """Read and check a local set folder (a download or the user's own): config, files, shapes."""
    folder = Path(folder)
    raw = _read_config(folder / "config.yaml", origin)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    if raw["model_kind"] == CROSS_LAYER:
        files, decoders = _encoder_files(folder, origin, names)
    else:
        files, decoders = _layer_files(folder, raw, origin, own_repo, names), {}
    for layer, path in [*files.items(), *decoders.items()]:
        if not path.is_file():
            raise PublishedSetError(f"transcoder.source {origin}: the file for layer {layer}, {path}, does not exist "
                                    "(a missing layer file; download the set again or fix config.yaml)")
    # circuit-tracer reads GemmaScope's .npz files whole: lazy options do not apply to them
    sizes = {"encoders": 0, "decoders": 0, "other": 0, "largest_decoder": 0,
             "eager_only": int(any(path.suffix == ".npz" for path in files.values()))}
    widths: set[tuple[int, int]] = set()
    thresholds, skips = set(), set()
    for layer, path in files.items():
        try:
            shapes = tensor_shapes(path)
        except Exception as error:  # a truncated or foreign file: name it
            raise PublishedSetError(f"transcoder.source {origin}: cannot read the tensors of {path} ({error})") from None
        suffix = f"_{layer}" if raw["model_kind"] == CROSS_LAYER else ""
        b_enc, b_dec = shapes.get(f"b_enc{suffix}"), shapes.get(f"b_dec{suffix}")
        if b_enc is None or b_dec is None:
            raise PublishedSetError(f"transcoder.source {origin}: {path} has no b_enc{suffix}/b_dec{suffix} tensors "
                                    f"(found {sorted(shapes)[:8]}); not a circuit-tracer transcoder file")
        widths.add((b_dec[-1], b_enc[-1]))
        thresholds.add(any("threshold" in key for key in shapes))
        skips.add(any(key.lower().endswith("skip") or "skip_connection" in key for key in shapes))
        for key, shape in shapes.items():
            part = ("encoders" if key.lower().startswith("w_enc") else
                    "decoders" if key.lower().startswith("w_dec") else "other")
            sizes[part] += 4 * _numel(shape)
            if part == "decoders":
                sizes["largest_decoder"] = max(sizes["largest_decoder"], 4 * _numel(shape))
    for layer, path in decoders.items():
        shape = tensor_shapes(path).get(f"W_dec_{layer}")
        if shape is None:
            raise PublishedSetError(f"transcoder.source {origin}: {path} has no W_dec_{layer} tensor")
        sizes["decoders"] += 4 * _numel(shape)
        sizes["largest_decoder"] = max(sizes["largest_decoder"], 4 * _numel(shape))
    if len(widths) != 1:
        raise PublishedSetError(f"transcoder.source {origin}: layers disagree on (d_model, features): {sorted(widths)}")
    d_model, n_features = widths.pop()
    activation = str(raw.get("activation", "")).lower()
    if activation != "topk":
        activation = "jumprelu" if True in thresholds else "relu"
    return PublishedSet(origin, folder, raw, raw["model_kind"], files, decoders, d_model, n_features, activation,
                        raw.get("k") if activation == "topk" else None, True in skips, sizes)


def probe_hub_set(source: SetSource) -> PublishedSet:
    """Before the download (parse time): the repo and revision exist, its config.yaml, and the
    layer count from its file list. Sizes are checked once the files are here."""
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision)
        config_path = Path(hf_hub_download(source.repo_id, "config.yaml", revision=info.sha))
    except Exception as error:  # not found, no such revision, offline, gated: one line each
        raise PublishedSetError(_hub_failure(source, error)) from None
    raw = _read_config(config_path, source.uri)
    names = [s.rfilename for s in info.siblings or []]
    if raw["model_kind"] == CROSS_LAYER:
        files, decoders = _encoder_files(source.folder, source.uri, names)
    elif "transcoders" in raw:
        files, decoders = _layer_files(source.folder, raw, source.uri, source.repo_id, []), {}
    else:
        files, decoders = _layer_files(source.folder, raw, source.uri, source.repo_id, names), {}
    return PublishedSet(source.uri, source.folder, raw, raw["model_kind"], files, decoders)


def _hub_failure(source: SetSource, error: Exception) -> str:
    name = type(error).__name__
    if name == "RepositoryNotFoundError":
        what = f"the hub has no repo {source.repo_id!r} (or it is private and no token was given)"
    elif name == "RevisionNotFoundError":
        what = f"repo {source.repo_id!r} has no revision {source.revision!r}"
    elif name == "EntryNotFoundError":
        what = f"repo {source.repo_id!r}@{source.revision} has no config.yaml (not a circuit-tracer set)"
    else:
        what = f"cannot reach it ({name}: {str(error).splitlines()[0] if str(error) else ''})"
    return f"transcoder.source {source.uri}: {what}"


def published_set(source: SetSource) -> PublishedSet:
    """The set as far as it can be known now: read from disk when it is here (a local folder, or
    a finished download), else probed on the hub."""
    if not source.on_hub:
        return read_published_set(source.folder, source.uri)
    if source.receipt.is_file():
        return read_published_set(source.folder, source.uri, source.repo_id)
    return probe_hub_set(source)


# --------------------------------------------------------------------------- fitting the model


def model_source_for(configured: str | None, published: PublishedSet) -> str:
    """model.source, or the set's model_name when model.source is null."""
    if configured is not None:
        return configured
    if not published.model_name:
        raise ConfigError(f"model.source is null and the set {published.origin} names no model_name; set "
                          "model.source to the model the transcoders were trained on")
    return published.model_name


def check_model_name(published: PublishedSet, model_source: str, allow_mismatch: bool) -> str | None:
    """A set made for another model: an error (or, with allow_model_mismatch, the warning it
    returns). Only two hub ids can be compared; a local copy is checked by its sizes."""
    name = published.model_name
    source = model_source.removeprefix("hf:")
    if not name or not HUB_ID.match(str(name)) or not HUB_ID.match(source) or Path(source).exists():
        return None
    if name.lower() == source.lower():
        return None
    message = (f"transcoder.source {published.origin} was made for model_name {name!r}, but model.source is "
               f"{model_source!r}")
    if not allow_mismatch:
        raise ConfigError(f"{message}; set model.source: null to use the set's model, or "
                          "transcoder.allow_model_mismatch: true for a fine-tune or copy of it")
    return message


def check_against_model(published: PublishedSet, facts: ModelFacts | None, model_source: str) -> None:
    """Layer count and d_model of the set against the model's (both named in the message)."""
    if facts is None:
        return
    if published.n_layers != facts.n_layers:
        raise ConfigError(f"transcoder.source {published.origin} has {published.n_layers} layers but model.source "
                          f"{model_source} has {facts.n_layers}; use the set made for this model")
    if published.d_model is not None and facts.d_model is not None and published.d_model != facts.d_model:
        raise ConfigError(f"transcoder.source {published.origin} has d_model {published.d_model} but model.source "
                          f"{model_source} has d_model {facts.d_model}; use the set made for this model")


# --------------------------------------------------------------------------- rules


def download_transcoder_set(*, source_uri: str, out_receipt: str | Path) -> dict:
    """Rule download_transcoder_set: resolve the revision to a commit, snapshot the repo at that
    commit into resources/transcoders/ (huggingface_hub resumes a killed download), fetch the
    files its config.yaml names in other repos, then write the receipt."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    source = parse_set_source(source_uri)
    try:
        info = HfApi().model_info(source.repo_id, revision=source.revision)
    except Exception as error:
        raise PublishedSetError(_hub_failure(source, error)) from None
    log.info("%s resolves to commit %s; downloading into %s", source.display, info.sha, source.folder)
    snapshot_download(source.repo_id, revision=info.sha, local_dir=source.folder)
    raw = _read_config(source.folder / "config.yaml", source.uri)
    external = [e for e in raw.get("transcoders") or [] if isinstance(e, str) and e.startswith(HF_SCHEME)
                and _split_hf_uri(e)[0] != source.repo_id]
    for index, entry in enumerate(external):
        repo_id, path, revision = _split_hf_uri(entry)
        target = external_path(source.folder, entry)
        log.info("external file %d/%d: %s", index + 1, len(external), entry)
        hf_hub_download(repo_id, path, revision=revision, local_dir=target.parents[len(Path(path).parts) - 1])
    files = sorted(str(p.relative_to(source.folder)) for p in source.folder.rglob("*")
                   if p.is_file() and ".cache" not in p.relative_to(source.folder).parts)
    receipt = {"source": source.uri, "repo_id": source.repo_id, "revision": source.revision, "commit": info.sha,
               "folder": str(source.folder),
               "files": {name: (source.folder / name).stat().st_size for name in files}}
    write_json(out_receipt, receipt)
    log.info("downloaded %d files (%.1f MB)", len(files), sum(receipt["files"].values()) / 1e6)
    return receipt


def import_transcoder_set(*, model_dir: str | Path, out_config: str | Path, settings: ImportTranscoderSetSettings,
                          receipt: str | Path | None = None) -> dict:
    """Rule import_transcoder_set: check the set against the materialized model and write the
    run's set config (circuitflow's keys, plus `source:` for circuit-tracer's loaders)."""
    source = parse_set_source(settings.source)
    commit = read_json(receipt)["commit"] if receipt else None
    published = read_published_set(source.folder, source.uri, source.repo_id)
    facts = read_model_facts(model_dir)
    check_against_model(published, facts, settings.model_source)
    k = published.k
    if published.activation == "topk" and k is None:
        k = settings.k
        log.warning("%s says activation topk but gives no k: using transcoder.k %d (set it to the k the set was "
                    "trained with; facebook/crv-8b-instruct-transcoders uses 128)", source.display, k)
    warning = check_model_name(published, settings.model_source, settings.allow_model_mismatch)
    if warning:
        log.warning("%s (transcoder.allow_model_mismatch is true)", warning)
    cross = published.kind == CROSS_LAYER
    config = {
        "model_kind": published.kind,
        "model_name": str(Path(model_dir).resolve()),
        "feature_input_hook": published.feature_input_hook,
        "feature_output_hook": published.feature_output_hook,
        "activation": published.activation,
        "k": k,
        "d_model": published.d_model,
        "n_features": published.n_features,
        "skip_connection": published.skip_connection,
        "scan": settings.scan,
        "layers": {layer: str(path.resolve()) for layer, path in published.files.items()},
        "source": {
            "uri": source.uri, "repo_id": source.repo_id, "revision": source.revision, "commit": commit,
            "folder": str(source.folder.resolve()), "model_name": published.model_name, "scan": published.scan,
            "lazy_encoder": settings.lazy_encoder, "lazy_decoder": settings.lazy_decoder,
            "tensor_bytes": published.tensor_bytes,
            **({"decoders": {layer: str(p.resolve()) for layer, p in published.decoder_files.items()}} if cross else {}),
        },
    }
    if cross:
        config["n_layers"] = published.n_layers
    with atomic_path(out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    log.info("imported %s: %s, %d layers, %d features per layer, d_model %d, %s%s", source.display, published.kind,
             published.n_layers, published.n_features, published.d_model, published.activation,
             f" (k {k})" if k else "")
    return config


# --------------------------------------------------------------------------- loading


def estimate_memory_mb(tensor_bytes: dict, lazy_encoder: bool, lazy_decoder: bool) -> dict[str, float]:
    """What loading the set holds in memory at float32, by part (MB): biases and thresholds
    always; encoders and decoders unless lazy (a lazy decoder is read one layer at a time)."""
    mb = 1 / 2**20
    if tensor_bytes.get("eager_only"):
        lazy_encoder = lazy_decoder = False
    parts = {"other": tensor_bytes.get("other", 0) * mb,
             "encoders": 0.0 if lazy_encoder else tensor_bytes.get("encoders", 0) * mb,
             "decoders": (tensor_bytes.get("largest_decoder", 0) if lazy_decoder
                          else tensor_bytes.get("decoders", 0)) * mb}
    parts["total"] = sum(parts.values())
    return parts


def require_memory(source: dict, what: str) -> None:
    """Refuse, before loading, a set whose estimate exceeds the job's resources.mem_mb."""
    limit = os.environ.get(MEMORY_ENV)
    if not limit:
        return
    estimate = estimate_memory_mb(source.get("tensor_bytes", {}), source.get("lazy_encoder", False),
                                  source.get("lazy_decoder", True))
    rule = os.environ.get(RULE_ENV, "this rule")
    if estimate["total"] > float(limit):
        knobs = [name for name, lazy in (("transcoder.lazy_decoder", source.get("lazy_decoder")),
                                         ("transcoder.lazy_encoder", source.get("lazy_encoder"))) if not lazy]
        lower = f"set {' and '.join(f'{k}: true' for k in knobs)}, or " if knobs else ""
        raise PublishedSetError(
            f"{what}: the set {source.get('uri')} needs about {estimate['total']:,.0f} MB at float32 (encoders "
            f"{estimate['encoders']:,.0f}, decoders {estimate['decoders']:,.0f}), more than resources.mem_mb "
            f"{float(limit):,.0f} of rule {rule}; {lower}give the rule more memory "
            f"(--set-resources {rule}:mem_mb=...)")
    log.info("loading %s: about %.0f MB at float32 (limit %s MB)", source.get("uri"), estimate["total"], limit)


def load_published_set(source: dict, kind: str, activation: str, k: int | None, device="cpu", dtype=None):
    """circuit-tracer's TranscoderSet or CrossLayerTranscoder for an imported set, loaded by its
    own loaders (lazy options from the set config); TopK gets `ReluTopK`."""
    import torch

    dtype = dtype or torch.float32
    device = torch.device(device)
    require_memory(source, "loading the transcoders")
    lazy = {"lazy_encoder": bool(source.get("lazy_encoder")), "lazy_decoder": bool(source.get("lazy_decoder", True))}
    hooks = {"feature_input_hook": source["feature_input_hook"], "feature_output_hook": source["feature_output_hook"]}
    if kind == CROSS_LAYER:
        from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

        return load_clt(source["folder"], scan=source.get("scan"), device=device, dtype=dtype, **hooks, **lazy)
    from circuit_tracer.utils.hf_utils import load_transcoders

    # repo_id keeps circuit-tracer's own choice of reader for GemmaScope files
    config = {"model_kind": PER_LAYER, "transcoders": [source["layers"][layer] for layer in sorted(source["layers"])],
              "scan": source.get("scan"), "repo_id": source.get("repo_id") or "", **hooks}
    transcoders = load_transcoders(config, device=device, dtype=dtype, **lazy)
    if activation == "topk":
        from circuitflow.transcoders.single_layer import ReluTopK

        for transcoder in transcoders:
            transcoder.activation_function = ReluTopK(k)
    return transcoders
