"""Read the metrics files that the report plots into plain lists and dicts.

Every reader checks the fields it uses, so a malformed file fails with one line naming the file
and the field (ReportInputError), not with a KeyError deep inside a plotting call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitflow.io import keyed


class ReportInputError(ValueError):
    """A metrics file the report reads is missing, not JSON, or lacks a field; the message names it."""


_MISSING = object()


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


class _File:
    """One JSON file and typed access to its fields, each failure naming the file and the field."""

    def __init__(self, path: str | Path, what: str):
        self.path = str(path)
        try:
            self.data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReportInputError(f"{what} {self.path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ReportInputError(f"{what} {self.path} is not JSON ({error})") from None
        if not isinstance(self.data, dict):
            raise ReportInputError(f"{what} {self.path} holds a JSON {_json_type(self.data)}, not an object")

    def fail(self, problem: str):
        raise ReportInputError(f"{self.path}: {problem}")

    def get(self, record: Any, key: str, where: str, type_name: str, default: Any = _MISSING) -> Any:
        """record[key] checked to be `type_name`: number, number?, int, str, str?, list, dict (? allows null)."""
        if not isinstance(record, dict):
            self.fail(f"{where} is a JSON {_json_type(record)}, not an object")
        if key not in record:
            if default is not _MISSING:
                return default
            self.fail(f"{where} has no field {key!r}")
        value, optional = record[key], type_name.endswith("?")
        if value is None and optional:
            return None
        base = type_name.rstrip("?")
        ok = {
            "number": isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "str": isinstance(value, str),
            "list": isinstance(value, list),
            "dict": isinstance(value, dict),
        }[base]
        if not ok:
            wanted = "finite number" if base == "number" else base
            self.fail(f"{where}.{key} is {json.dumps(value)[:60]}, not a {wanted}")
        return float(value) if base == "number" else value


def read_fidelity(path: str | Path) -> dict:
    """evaluate_transcoders' fidelity.json: per-layer validation FVU, L0, dead/dense fractions and
    loss recovered, and the row for every layer replaced at once."""
    f = _File(path, "fidelity file")
    rows = f.get(f.data, "layers", "the file", "list")
    if not rows:
        f.fail("'layers' is empty")
    columns = {"layer": [], "fvu": [], "l0": [], "dead_fraction": [], "dense_fraction": [], "loss_recovered": []}
    for i, row in enumerate(rows):
        where = f"layers[{i}]"
        columns["layer"].append(f.get(row, "layer", where, "int"))
        for key in ("fvu", "l0", "dead_fraction", "dense_fraction"):
            columns[key].append(f.get(row, key, where, "number"))
        columns["loss_recovered"].append(f.get(row, "loss_recovered", where, "number?"))
    overall = f.get(f.data, "all_layers", "the file", "dict")
    return {**columns, "rows": rows, "all_layers": overall,
            "all_layers_loss_recovered": f.get(overall, "loss_recovered", "all_layers", "number?"),
            "mean_fvu": f.get(overall, "fvu", "all_layers", "number"),
            "windows": f.get(f.data, "windows", "the file", "int"),
            "dense_threshold": f.get(f.data, "dense_fraction_threshold", "the file", "number"),
            "kind": f.get(f.data, "kind", "the file", "str"),
            "n_features": f.get(f.data, "n_features", "the file", "int")}


def _curve(f: _File, metrics: dict, label: str, layer: int | None) -> dict:
    points = f.get(metrics, "curve", "the file", "list")
    if not points:
        f.fail("'curve' is empty")
    steps, fvu, dead, resampled = [], [], [], []
    for i, point in enumerate(points):
        where = f"curve[{i}]"
        steps.append(f.get(point, "step", where, "int"))
        fvu.append(f.get(point, "fvu", where, "number"))
        dead.append(f.get(point, "dead", where, "int"))
        if f.get(point, "resampled", where, "int", default=0):
            resampled.append(steps[-1])
    return {"label": label, "layer": layer, "step": steps, "fvu": fvu, "dead": dead, "resampled_steps": resampled}


def read_training_curves(paths: Sequence[str | Path], layers: Sequence[int], kind: str) -> list[dict]:
    """The training loss curves: one per layer (`layer_<l>.metrics.json`), or the one curve of a
    cross-layer transcoder (`clt.metrics.json`, whose loss is the mean over its layers)."""
    if kind == "clt":
        if len(paths) != 1:
            raise ReportInputError(f"a cross-layer transcoder has one metrics file, not {len(paths)}: {list(paths)}")
        f = _File(paths[0], "transcoder metrics file")
        return [_curve(f, f.data, "cross-layer transcoder (mean over layers)", None)]
    curves = []
    for layer, path in keyed(layers, paths, "transcoder metrics files").items():
        f = _File(path, "transcoder metrics file")
        found = f.get(f.data, "layer", "the file", "int")
        if found != layer:
            f.fail(f"holds layer {found}, but the workflow lists it for layer {layer}")
        curves.append(_curve(f, f.data, f"layer {layer}", layer))
    return curves


def read_activation_frequencies(path: str | Path) -> dict:
    """collect_features'/collect_neurons' feature_metadata.json: each collected unit's activation
    frequency on the validation tokens, by layer, and the dead count per layer."""
    f = _File(path, "feature metadata file")
    by_layer: dict[int, list[float]] = {}
    for i, record in enumerate(f.get(f.data, "features", "the file", "list")):
        layer = f.get(record, "layer", f"features[{i}]", "int")
        by_layer.setdefault(layer, []).append(f.get(record, "activation_freq", f"features[{i}]", "number"))
    dead = f.get(f.data, "dead_features_per_layer", "the file", "dict", default={})
    dead_per_layer = {}
    for key in dead:
        if not str(key).lstrip("-").isdigit():
            f.fail(f"dead_features_per_layer has the key {key!r}, not a layer number")
        dead_per_layer[int(key)] = f.get(dead, key, "dead_features_per_layer", "int")
    return {"kind": f.get(f.data, "kind", "the file", "str"),
            "total_tokens": f.get(f.data, "total_tokens", "the file", "int"),
            "by_layer": dict(sorted(by_layer.items())), "dead_per_layer": dict(sorted(dead_per_layer.items()))}


def read_graph_scores(paths: Sequence[str | Path]) -> list[dict]:
    """attribute_prompt's <slug>.scores.json: replacement and completeness per prompt, with the
    expected target and the graph's size."""
    rows = []
    for path in paths:
        f = _File(path, "graph scores file")
        expected = f.get(f.data, "expected_target", "the file", "dict?", default=None)
        targets = f.get(f.data, "target_logits", "the file", "list", default=[])
        top = targets[0] if targets else None
        rows.append({
            "slug": f.get(f.data, "slug", "the file", "str", default=Path(path).name.split(".")[0]),
            "prompt": f.get(f.data, "prompt", "the file", "str", default=""),
            "replacement_score": f.get(f.data, "replacement_score", "the file", "number"),
            "completeness_score": f.get(f.data, "completeness_score", "the file", "number"),
            "top_target": f.get(top, "token", "target_logits[0]", "str") if top is not None else None,
            "top_probability": f.get(top, "probability", "target_logits[0]", "number") if top is not None else None,
            "expected_target": f.get(expected, "token", "expected_target", "str") if expected else None,
            "expected_rank": f.get(expected, "rank", "expected_target", "int?", default=None) if expected else None,
            "active_features": f.get(f.data, "active_features", "the file", "int?", default=None),
            "selected_features": f.get(f.data, "selected_features", "the file", "int?", default=None),
        })
    return rows


def _shares(f: _File, shares: Any, where: str) -> dict[str, float]:
    if not isinstance(shares, dict):
        f.fail(f"{where} is not an object of category shares")
    return {category: f.get(shares, category, where, "number") for category in shares}


def read_classifications(units: Sequence[str], paths: Sequence[str | Path]) -> dict[str, dict]:
    """classify_features' feature_classifications.json per unit (features, neurons): the category
    shares, overall and per layer, and how many units were classified."""
    out = {}
    for unit, path in keyed(units, paths, "classification files").items():
        f = _File(path, "classification file")
        shares = f.get(f.data, "shares", "the file", "dict")
        per_layer = f.get(shares, "per_layer", "shares", "dict", default={})
        if not all(str(layer).isdigit() for layer in per_layer):
            f.fail(f"shares.per_layer has keys {sorted(per_layer)}, not layer numbers")
        out[unit] = {"n": f.get(shares, "n", "shares", "int"),
                     "overall": _shares(f, f.get(shares, "overall", "shares", "dict"), "shares.overall"),
                     "per_layer": {str(layer): _shares(f, value, f"shares.per_layer.{layer}")
                                   for layer, value in sorted(per_layer.items(), key=lambda kv: int(kv[0]))}}
    return out


def read_detection_scores(units: Sequence[str], paths: Sequence[str | Path]) -> dict[str, dict]:
    """score_explanations' scores.json per unit (features, neurons): each unit's detection balanced
    accuracy and AUROC, for the LLM explanation and for the non-LLM one (a unit without a score is
    left out)."""
    out = {}
    for unit, path in keyed(units, paths, "score files").items():
        f = _File(path, "score file")
        values: dict[str, dict[str, list[float]]] = {}
        for i, record in enumerate(f.get(f.data, "features", "the file", "list")):
            scores = f.get(record, "scores", f"features[{i}]", "dict")
            for source in ("llm", "trivial"):
                entry = scores.get(source)
                detection = entry.get("detection") if isinstance(entry, dict) else None
                if detection is None:  # e.g. no LLM explanation for this unit
                    continue
                where = f"features[{i}].scores.{source}.detection"
                kept = values.setdefault(source, {"balanced_accuracy": [], "auroc": []})
                for metric in ("balanced_accuracy", "auroc"):
                    value = f.get(detection, metric, where, "number?", default=None)
                    if value is not None:
                        kept[metric].append(value)
        out[unit] = values
    return out


def read_interp_summary(path: str | Path) -> dict:
    """compare_explanations' summary.json: the headline table's rows and the category shares."""
    f = _File(path, "interp summary file")
    rows = f.get(f.data, "rows", "the file", "list")
    for i, row in enumerate(rows):
        for key in ("kind", "explanation"):  # "kind": the row's unit (features, neurons)
            f.get(row, key, f"rows[{i}]", "str")
        f.get(row, "n_features", f"rows[{i}]", "int")
    return {"judge": f.get(f.data, "judge", "the file", "list"), "rows": rows,
            "category_shares": f.get(f.data, "category_shares", "the file", "dict", default={})}
