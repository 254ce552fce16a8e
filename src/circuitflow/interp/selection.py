"""select_features: which features (or neurons) the LLM judge classifies, explains and scores.

Two sources, merged: a seeded sample of `n_per_layer` live features per layer of `sample_layers` (every `interp.layer_step`-th layer) (the seed's
selection, without its bugs: a numpy generator seeded per layer, so adding a layer does not
reshuffle the others), and, for transcoder features, the feature nodes of the attribution
graphs, most influential first. circuit-tracer's node `influence` is the cumulative share of
influence at which the node enters the pruned graph, so a *smaller* value means a more
important node; a feature is ranked by its smallest value over all its nodes and graphs.

A feature with too few examples for the judge is skipped and counted, never an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from circuitflow.config import SelectFeaturesSettings
from circuitflow.features.ids import FEATURE_NODE, feature_file
from circuitflow.interp.examples import TOP_GROUP, groups
from circuitflow.io import read_json, write_json

log = logging.getLogger("circuitflow.interp")



def graph_feature_ranking(graphs: Sequence[str | Path]) -> list[tuple[int, float]]:
    """(cantor id, smallest cumulative influence) of every feature node, most influential first."""
    best: dict[int, float] = {}
    for path in graphs:
        for node in json.loads(Path(path).read_text(encoding="utf-8"))["nodes"]:
            if node.get("feature_type") == FEATURE_NODE:
                feature_id, influence = int(node["feature"]), float(node.get("influence") or 1.0)
                best[feature_id] = min(influence, best.get(feature_id, influence))
    return sorted(best.items(), key=lambda item: (item[1], item[0]))


def _usable(feature: dict | None, settings: SelectFeaturesSettings) -> str | None:
    """Why a feature cannot be judged (None when it can)."""
    if feature is None:
        return "no example file (it never fired on the validation split)"
    found = groups(feature)
    n_top = len(found.get(TOP_GROUP, []))
    if n_top < settings.min_explainer_examples:
        return f"{n_top} top examples (< interp.min_explainer_examples {settings.min_explainer_examples})"
    held_out = sum(len(v) for k, v in found.items() if k != TOP_GROUP)
    if held_out == 0:
        return "no held-out examples to score with"
    return None


def select_features(*, feature_dir: str | Path, metadata: str | Path, graphs: Sequence[str | Path],
                    out_selection: str | Path, settings: SelectFeaturesSettings) -> dict:
    """Write `out_selection`: the chosen features with why each was chosen, and what was skipped."""
    feature_dir = Path(feature_dir)
    meta = read_json(metadata)
    by_layer: dict[int, list[dict]] = {}
    for entry in meta["features"]:
        by_layer.setdefault(int(entry["layer"]), []).append(entry)
    entries = {int(e["cantor_id"]): e for e in meta["features"]}

    def load(feature_id: int) -> dict | None:
        path = feature_file(feature_dir, feature_id)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    chosen: dict[int, dict] = {}
    skipped: list[dict] = []

    def consider(feature_id: int, reason: str, **extra) -> bool:
        if feature_id in chosen:
            chosen[feature_id]["selected_by"].append(reason)
            chosen[feature_id].update(extra)
            return True
        why = _usable(load(feature_id), settings)
        entry = entries.get(feature_id)
        if why is not None or entry is None:
            skipped.append({"cantor_id": feature_id, "selected_by": reason, "reason": why or "not in the metadata"})
            return False
        chosen[feature_id] = {"layer": int(entry["layer"]), "feature": int(entry["feature"]), "cantor_id": feature_id,
                              "activation_freq": float(entry["activation_freq"]), "selected_by": [reason], **extra}
        return True

    for layer in sorted(set(by_layer) & set(settings.sample_layers)):
        live = sorted((e for e in by_layer[layer] if e["activation_freq"] >= settings.min_frequency),
                      key=lambda e: e["feature"])
        order = np.random.default_rng([settings.seed, layer]).permutation(len(live))
        taken = 0
        for index in order:  # draw until n_per_layer usable ones (skips are counted)
            if taken == settings.n_per_layer:
                break
            taken += consider(int(live[index]["cantor_id"]), "sample")
    ranking = graph_feature_ranking(graphs)
    taken = 0
    for feature_id, influence in ranking:
        if taken == settings.max_graph_features:
            break
        taken += consider(feature_id, "graph", graph_influence=influence)
    features = sorted(chosen.values(), key=lambda f: (f["layer"], f["feature"]))
    result = {"kind": meta.get("kind"), "n_selected": len(features),
              "n_sampled": sum("sample" in f["selected_by"] for f in features),
              "n_graph": sum("graph" in f["selected_by"] for f in features),
              "graph_feature_nodes": len(ranking), "n_skipped": len(skipped),
              # every graph feature, most influential first: scoring gives each token label an embedding score
              "graph_features": [feature_id for feature_id, _ in ranking],
              "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
              "features": features, "skipped": skipped}
    write_json(out_selection, result)
    log.info("selected %d %s features (%d sampled, %d graph nodes of %d); skipped %d with too few examples",
             len(features), meta.get("kind"), result["n_sampled"], result["n_graph"], len(ranking), len(skipped))
    return result


def load_selection(path: str | Path, feature_dir: str | Path) -> list[tuple[dict, dict]]:
    """(selection entry, per-feature JSON) for every selected feature."""
    feature_dir = Path(feature_dir)
    return [(entry, json.loads(feature_file(feature_dir, entry["cantor_id"]).read_text(encoding="utf-8")))
            for entry in read_json(path)["features"]]
