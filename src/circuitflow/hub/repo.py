"""stage_hub_repo: the run laid out as the Hugging Face repo circuit-tracer expects, in a local folder.

Layout (paths inside the repo)::

    README.md                        model card (YAML metadata + measured figures)
    config.yaml                      circuit-tracer's set config: model_name = the base model's hub
                                     id, scan = the repo id, transcoders = hf:// URIs (per-layer sets)
    layer_<l>.safetensors            per-layer transcoders (+ layer_<l>.architecture.json), or
    W_enc_<i>.safetensors, W_dec_<i>.safetensors, clt.architecture.json   a cross-layer transcoder
    features/index.json.gz, features/layer_<l>.bin    packed feature examples (the frontend reads these)
    feature_metadata.json            per-feature frequencies and activation ranges
    interp/feature_classifications.json, interp/autointerp.json, interp/scores.json   (when published)
    graphs/<slug>.json, graphs/graph-metadata.json, graphs/graph-scores.json   graphs whose scan is the repo
    metrics/fidelity.json, metrics/fidelity.csv, metrics/training/<file>.metrics.json
    dataset/summary.json             the corpus, its sha256 and the token counts of each split

The folder is byte-reproducible from its inputs (no timestamps), so an unchanged run stages an
unchanged folder and `upload_to_hub` finds nothing to commit. What the repo's JSON and YAML
say goes through `shareable`: paths under the working directory become relative to it, other
local paths their file names, and credentials or internal hosts in URLs (the judge's
`llm.base_url`) are dropped. A file copied as-is that still holds one is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from circuitflow.config import StageHubRepoSettings
from circuitflow.hub.model_card import render_model_card
from circuitflow.hub.shareable import leaks, shareable
from circuitflow.io import atomic_path, read_json, relative_paths, write_json
from circuitflow.transcoders.sets import TranscoderSetError, read_transcoder_set

log = logging.getLogger("circuitflow.hub")

SNAKEMAKE_MARKER = ".snakemake_timestamp"  # Snakemake's mark in a directory output; not published


class HubRepoError(ValueError):
    """An input of the repo is missing or unreadable; the message names it and the fix."""


def hf_uri(repo_id: str, path: str, revision: str) -> str:
    """circuit-tracer's file reference: hf://owner/name/path, with ?revision= off main."""
    return f"hf://{repo_id}/{path}" + ("" if revision == "main" else f"?revision={revision}")


def _read(path: str | Path, what: str, rule: str) -> Any:
    try:
        return read_json(path)
    except FileNotFoundError:
        raise HubRepoError(f"{what} {path} does not exist; run {rule} first") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise HubRepoError(f"{what} {path} is not valid JSON ({error}); rerun {rule} "
                           f"(snakemake --forcerun {rule})") from None


def _place(source: str | Path, target: Path) -> None:
    """A hard link where the file system allows (weights can be GBs), else a copy. Inputs are
    only ever replaced by rename, never rewritten in place, so a link keeps the staged bytes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".md", ".csv", ".txt")


def _refuse_leaks(copied: Sequence[Path], root: Path) -> None:
    """Files published as-is (graphs, architectures, the fidelity table) are not rewritten by
    `shareable`: refuse one that would publish a local path or a private URL."""
    for path in copied:
        if path.suffix in TEXT_SUFFIXES:
            found = leaks(path.read_text(encoding="utf-8", errors="replace"), root)
            if found:
                raise HubRepoError(f"{path} would publish {found}; remove that from it (or from what it is made "
                                   "of) and rerun stage_hub_repo")


def hub_set_config(raw: dict, repo_id: str, revision: str, base_model: str) -> dict:
    """The set's config.yaml as published: circuit-tracer's `load_transcoder_from_hub` reads it
    from the repo, and its CLI reads `model_name`."""
    config = {**raw, "model_name": base_model, "scan": repo_id if revision == "main" else f"{repo_id}@{revision}"}
    if "transcoders" in config:  # a complete per-layer set: one hf:// URI per layer, in layer order
        config["transcoders"] = [hf_uri(repo_id, str(config["layers"][layer]), revision)
                                 for layer in sorted(config["layers"])]
    return config


def imported_hub_config(raw: dict, repo_id: str, revision: str, base_model: str, uploaded: bool) -> tuple[dict, dict]:
    """An imported set (transcoder.source) as published: circuit-tracer's keys, the source it
    came from (credited, pinned to the downloaded commit), and where the weights are: this repo
    when uploaded, else the source repo's own files (a per-layer set from the hub). Returns the
    config and {name in this repo: local file} of the weights to upload."""
    source = raw["source"]
    config = {key: raw[key] for key in ("model_kind", "feature_input_hook", "feature_output_hook")}
    config.update(model_name=base_model, scan=repo_id if revision == "main" else f"{repo_id}@{revision}")
    # the architecture as circuitflow read it (circuit-tracer reads activation and k for TopK)
    config.update({key: raw.get(key) for key in ("activation", "k", "d_model", "n_features", "skip_connection")})
    config["source"] = {key: source.get(key) for key in ("uri", "repo_id", "revision", "commit", "model_name")}
    layers = {int(layer): Path(path) for layer, path in raw["layers"].items()}
    config["layers"] = {layer: path.name for layer, path in sorted(layers.items())}
    files: dict[str, Path] = {}
    if uploaded:
        if raw["model_kind"] == "cross_layer_transcoder":
            decoders = {int(layer): Path(path) for layer, path in source["decoders"].items()}
            files = {p.name: p for p in [*layers.values(), *decoders.values()]}
        else:
            files = {f"layer_{layer}{path.suffix}": path for layer, path in sorted(layers.items())}
            config["layers"] = {layer: f"layer_{layer}{path.suffix}" for layer, path in sorted(layers.items())}
            config["transcoders"] = [hf_uri(repo_id, name, revision) for name in files]
    elif source.get("repo_id") and raw["model_kind"] != "cross_layer_transcoder":
        folder = Path(source["folder"])
        uris = []
        for _, path in sorted(layers.items()):
            inside = path.relative_to(folder).as_posix()
            if inside.startswith("external/"):  # a file of another repo the source set points at
                uris.append("hf://" + inside.removeprefix("external/"))
            else:
                uris.append(f"hf://{source['repo_id']}/{inside}?revision={source['commit']}")
        config["transcoders"] = uris
    return config, files


def stage_hub_repo(*, transcoder_set: str | Path, weights: Sequence[str | Path], architectures: Sequence[str | Path],
                   training_metrics: Sequence[str | Path], fidelity: str | Path | None,
                   fidelity_table: str | Path | None,
                   packed: str | Path, feature_metadata: str | Path, dataset_summary: str | Path,
                   out_dir: str | Path, settings: StageHubRepoSettings, graphs: str | Path | None = None,
                   interp: Sequence[str | Path] = ()) -> dict:
    """Lay out the repo in `out_dir` (replaced atomically) and return what it holds."""
    if settings.repo_id is None or settings.base_model is None:
        raise HubRepoError("stage_hub_repo needs hub.repo_id and a base model (hub.base_model)")
    root = Path.cwd()
    try:
        read_transcoder_set(transcoder_set)  # every weights file checked against the config
    except TranscoderSetError as error:
        raise HubRepoError(str(error)) from None
    raw_set = yaml.safe_load(Path(transcoder_set).read_text(encoding="utf-8"))
    fidelity_data = None if fidelity is None else {
        **shareable(_read(fidelity, "fidelity file", "evaluate_transcoders"), root), "transcoder_set": "config.yaml"}
    dataset = shareable(_read(dataset_summary, "dataset summary", "prepare_dataset"), root)
    metadata = shareable(_read(feature_metadata, "feature metadata", "collect_features"), root)
    training = {Path(p).name: shareable(_read(p, "training metrics", "the transcoder's training rule"), root)
                for p in training_metrics}
    packed = Path(packed)
    if not (packed / "index.json.gz").is_file():
        raise HubRepoError(f"packed features {packed} have no index.json.gz; rerun pack_features "
                           f"(snakemake --forcerun {packed})")
    graph_scores = None
    if graphs is not None:
        graph_scores = shareable(_read(Path(graphs) / "graph-scores.json", "graph scores", "assemble_hub_graphs"),
                                 root)
    interp_data = {Path(p).name: shareable(_read(p, "interp file", "the judge's rules (target interp)"), root)
                   for p in interp}
    settings = dataclasses.replace(settings, model_source=relative_paths(settings.model_source, root))
    _refuse_leaks([*map(Path, architectures), *([] if fidelity_table is None else [Path(fidelity_table)]),
                   *([] if graphs is None else sorted(Path(graphs).glob("*.json")))], root)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for path in [*map(Path, weights), *map(Path, architectures)]:
            _place(path, tmp / Path(path).name)
        if "source" in raw_set:  # an imported set: credited, its weights uploaded only when asked
            set_config, imported = imported_hub_config(raw_set, settings.repo_id, settings.revision,
                                                       settings.base_model, settings.upload_imported_weights)
            for name, path in imported.items():
                _place(path, tmp / name)
        else:
            set_config = hub_set_config(raw_set, settings.repo_id, settings.revision, settings.base_model)
        set_config = shareable(set_config, root)  # an imported set's source may be a local folder
        (tmp / "config.yaml").write_text(yaml.safe_dump(set_config, sort_keys=False), encoding="utf-8")
        for path in sorted(packed.iterdir()):
            if path.is_file() and path.name != SNAKEMAKE_MARKER:
                _place(path, tmp / "features" / path.name)
        write_json(tmp / "feature_metadata.json", metadata)
        if fidelity_data is not None:
            write_json(tmp / "metrics" / "fidelity.json", fidelity_data)
            _place(fidelity_table, tmp / "metrics" / "fidelity.csv")
        for name, data in training.items():
            write_json(tmp / "metrics" / "training" / name, data)
        write_json(tmp / "dataset" / "summary.json", dataset)
        for name, data in interp_data.items():
            write_json(tmp / "interp" / name, data)
        if graphs is not None:
            for path in sorted(Path(graphs).glob("*.json")):
                _place(path, tmp / "graphs" / path.name)
        card = render_model_card(settings=settings, set_config=set_config, fidelity=fidelity_data, dataset=dataset,
                                 training=training, feature_metadata=metadata, graph_scores=graph_scores,
                                 interp=interp_data)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    log.info("staged %d files for %s in %s (%.1f MB)", len(files), settings.repo_id, out_dir,
             sum((Path(out_dir) / f).stat().st_size for f in files) / 1e6)
    return {"repo_id": settings.repo_id, "files": files}
