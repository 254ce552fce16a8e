"""assemble_graphs: assemble per-prompt graphs into one folder that circuit-tracer's server reads.

``results/graphs/`` holds ``{slug}.json`` for every prompt, ``graph-metadata.json`` (the index
the frontend lists), ``graph-scores.json`` (replacement/completeness scores and target logits
per prompt) and ``features/<cantor id>.json`` for every feature node of those graphs. Graphs
carry ``scan: ./data/features``, which circuit-tracer 0.5.0's frontend resolves to
``/data/features/<id>.json``, served from ``<graph dir>/features/``. Serve it with
``circuit-tracer start-server --graph_file_dir results/graphs --port 8041``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from circuitflow.features.ids import cantor_unpair
from circuitflow.features.pack import PackError, load_feature_file
from circuitflow.io import atomic_path, keyed, read_json, write_json

log = logging.getLogger("circuitflow.attribution")

FEATURE_NODE = "cross layer transcoder"  # circuit-tracer's feature_type for PLT and CLT nodes


class GraphFolderError(ValueError):
    """A graph or feature file to be published is unreadable; the message names it."""


def read_graph(graph_path: str | Path) -> tuple[set[int], bytes]:
    """The Cantor ids of a graph JSON's feature nodes, and the bytes they were parsed from."""
    raw = Path(graph_path).read_bytes()
    try:
        graph = json.loads(raw.decode("utf-8"))
        return {int(node["feature"]) for node in graph["nodes"] if node.get("feature_type") == FEATURE_NODE}, raw
    except (ValueError, KeyError, TypeError) as error:  # UnicodeDecodeError is a ValueError
        raise GraphFolderError(
            f"graph {graph_path} is not a circuit-tracer graph ({type(error).__name__}: {error}); "
            f"rerun attribute_prompt with --forcerun {graph_path}") from None


def _publish_feature(source: Path, destination: Path) -> None:
    """Write the bytes of one example file that were checked as pack_features checks them (a
    copy, not a link, so a later write to the source cannot change what the viewer serves)."""
    layer, feature = cantor_unpair(int(source.stem))
    try:
        _, raw = load_feature_file(source, str(source), layer, feature)
    except PackError as error:
        raise GraphFolderError(f"{error}; rerun collect_features (--forcerun {source.parent})") from None
    destination.write_bytes(raw)


def assemble_graphs(slugs: Sequence[str], graphs: Sequence[str | Path], metadata: Sequence[str | Path],
                    scores: Sequence[str | Path], feature_dir: str | Path | None, out_dir: str | Path) -> dict:
    """Copy each slug's graph and its features' example files into `out_dir`, each checked first
    (`graphs`, `metadata` and `scores` in the order of `slugs`)."""
    graphs, metadata, scores = (keyed(slugs, paths, what) for paths, what in (
        (graphs, "graphs"), (metadata, "graph metadata files"), (scores, "score files")))
    slugs = sorted(graphs)
    needed: set[int] = set()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for slug in slugs:
            feature_ids, raw = read_graph(graphs[slug])
            needed |= feature_ids
            (tmp / f"{slug}.json").write_bytes(raw)
        write_json(tmp / "graph-metadata.json", {"graphs": [read_json(metadata[s]) for s in slugs]})
        write_json(tmp / "graph-scores.json", {s: read_json(scores[s]) for s in slugs})
        missing = []
        if feature_dir is not None:
            (tmp / "features").mkdir()
            for feature_id in sorted(needed):
                source = Path(feature_dir) / f"{feature_id}.json"
                if source.is_file():
                    _publish_feature(source, tmp / "features" / source.name)
                else:
                    missing.append(feature_id)
    if missing:
        # A feature can fire on a prompt but never on the validation split: it has no examples.
        log.warning("%d of %d graph features never fired on the validation split and have no "
                    "example file: %s", len(missing), len(needed), missing[:20])
    log.info("assembled %d graphs with %d feature files into %s: %s", len(slugs),
             len(needed) - len(missing), out_dir, ", ".join(slugs))
    return {"graphs": slugs, "features": len(needed) - len(missing), "features_without_examples": missing}
