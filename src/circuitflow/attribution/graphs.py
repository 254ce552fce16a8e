"""assemble_graphs: assemble per-prompt graphs into one folder that circuit-tracer's server reads.

``results/graphs/`` holds ``{slug}.json`` for every prompt, ``graph-metadata.json`` (the index
the frontend lists), ``graph-scores.json`` (replacement/completeness scores and target logits
per prompt) and ``features/<cantor id>.json`` for every feature node of those graphs. Feature nodes are
labelled (`clerp`) with their explanation and each feature file gets ``explanation``,
``category`` and its scores (`circuitflow.interp.labels`). Graphs
carry ``scan: ./data/features``, which circuit-tracer 0.5.0's frontend resolves to
``/data/features/<id>.json``, served from ``<graph dir>/features/``. Serve it with
``circuit-tracer start-server --graph_file_dir results/graphs --port 8041``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from circuitflow.features.ids import FEATURE_NODE, cantor_unpair, feature_file
from circuitflow.features.pack import PackError, load_feature_file
from circuitflow.interp.labels import FeatureLabels, node_label
from circuitflow.io import atomic_path, keyed, read_json, relative_paths, write_json

log = logging.getLogger("circuitflow.attribution")



class GraphFolderError(ValueError):
    """A graph or feature file to be published is unreadable; the message names it."""


def read_graph(graph_path: str | Path) -> tuple[set[int], dict]:
    """The Cantor ids of a graph JSON's feature nodes, and the graph."""
    raw = Path(graph_path).read_bytes()
    try:
        graph = json.loads(raw.decode("utf-8"))
        return {int(node["feature"]) for node in graph["nodes"] if node.get("feature_type") == FEATURE_NODE}, graph
    except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
        raise GraphFolderError(
            f"graph {graph_path} is not a circuit-tracer graph ({type(error).__name__}: {error}); "
            f"rerun attribute_prompt with --forcerun {graph_path}") from None


def _checked_feature(source: Path) -> dict:
    """One example file, checked as pack_features checks it (what is published is a labelled
    copy, not a link, so a later write to the source cannot change what the viewer serves)."""
    layer, feature = cantor_unpair(int(source.stem))
    try:
        data, _ = load_feature_file(source, str(source), layer, feature)
    except PackError as error:
        raise GraphFolderError(f"{error}; rerun collect_features (--forcerun {source.parent})") from None
    return data


def assemble_graphs(*, slugs: Sequence[str], graphs: Sequence[str | Path], metadata: Sequence[str | Path],
                    scores: Sequence[str | Path], feature_dir: str | Path | None, out_dir: str | Path,
                    explanations: str | Path | None = None, classifications: str | Path | None = None,
                    feature_scores: str | Path | None = None) -> dict:
    """Copy each slug's graph and its features' example files into `out_dir`, each checked first
    (`graphs`, `metadata` and `scores` in the order of `slugs`), labelling feature nodes from
    explain_features, classify_features and score_explanations' outputs (each optional)."""
    graphs, metadata, scores = (keyed(slugs, paths, what) for paths, what in (
        (graphs, "graphs"), (metadata, "graph metadata files"), (scores, "score files")))
    labels = FeatureLabels.load(explanations, classifications, feature_scores)
    slugs = sorted(graphs)
    loaded = {slug: read_graph(graphs[slug]) for slug in slugs}
    needed: set[int] = set().union(*(ids for ids, _ in loaded.values()))
    features: dict[int, dict] = {}
    missing = []
    for feature_id in sorted(needed):
        source = feature_file(feature_dir, feature_id) if feature_dir is not None else None
        if source is not None and source.is_file():
            data = _checked_feature(source)
            features[feature_id] = {**data, **labels.fields(feature_id, data)}
        else:
            missing.append(feature_id)
    counts = {"llm": 0, "trivial": 0}
    for feature in features.values():
        counts[feature["explanation_source"]] += 1
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for slug in slugs:
            graph = loaded[slug][1]
            for node in graph["nodes"]:
                feature = features.get(int(node["feature"])) if node.get("feature_type") == FEATURE_NODE else None
                if feature is not None:
                    node["clerp"] = node_label(feature)
            write_json(tmp / f"{slug}.json", graph, indent=None)
        write_json(tmp / "graph-metadata.json", {"graphs": [read_json(metadata[s]) for s in slugs]})
        write_json(tmp / "graph-scores.json", {s: read_json(scores[s]) for s in slugs})
        if feature_dir is not None:
            (tmp / "features").mkdir()
            for feature_id, data in features.items():
                (tmp / "features" / f"{feature_id}.json").write_text(
                    json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    if missing:
        # A feature can fire on a prompt but never on the validation split: it has no examples.
        log.warning("%d of %d graph features never fired on the validation split and have no "
                    "example file: %s", len(missing), len(needed), missing[:20])
    log.info("assembled %d graphs with %d feature files into %s: %s; node labels: %d LLM explanations, "
             "%d non-LLM", len(slugs), len(features), out_dir, ", ".join(slugs), counts["llm"], counts["trivial"])
    return {"graphs": slugs, "features": len(features), "features_without_examples": missing, "labels": counts}


def assemble_hub_graphs(*, graph_dir: str | Path, out_dir: str | Path, scan: str | None) -> dict:
    """The graphs of `graph_dir` with `scan` set to a hub repo ('owner/name[@revision]'), for
    sharing: circuit-tracer's frontend then loads feature examples from that repo's packed
    `features/` instead of a local folder, so the copy holds no feature files. Paths under the
    working directory (the prompts' files) become relative."""
    if not scan:
        raise GraphFolderError("assemble_hub_graphs needs hub.repo_id (the repo the graphs' features are read from)")
    graph_dir = Path(graph_dir)
    slugs = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for path in sorted(graph_dir.glob("*.json")):
            if path.name in ("graph-metadata.json", "graph-scores.json"):
                write_json(tmp / path.name, relative_paths(read_json(path), Path.cwd()))
                continue
            _, graph = read_graph(path)
            graph["metadata"]["scan"] = scan
            write_json(tmp / path.name, relative_paths(graph, Path.cwd()), indent=None)
            slugs.append(path.stem)
    log.info("%d graphs with scan %s in %s: %s", len(slugs), scan, out_dir, ", ".join(slugs))
    return {"graphs": slugs, "scan": scan}
