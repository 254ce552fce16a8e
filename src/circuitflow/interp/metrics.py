"""Detection and fuzzing metrics, delphi-style: class-balanced accuracy, precision, recall,
F1, and AUROC when the judge gave probabilities (from its yes/no logprobs)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None with one class."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def binary_metrics(labels: Sequence[bool], predictions: Sequence[bool | None],
                   probabilities: Sequence[float | None] | None = None) -> dict:
    """An unparsed answer (None) counts as "no" and is counted."""
    said = [bool(p) for p in predictions]
    tp = sum(y and p for y, p in zip(labels, said))
    fp = sum((not y) and p for y, p in zip(labels, said))
    tn = sum((not y) and (not p) for y, p in zip(labels, said))
    fn = sum(y and (not p) for y, p in zip(labels, said))
    tpr = tp / (tp + fn) if tp + fn else None
    tnr = tn / (tn + fp) if tn + fp else None
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tpr if tpr is not None else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    balanced = (tpr + tnr) / 2 if tpr is not None and tnr is not None else None
    result = {"n": len(labels), "n_positive": tp + fn, "n_negative": tn + fp,
              "tp": tp, "fp": fp, "tn": tn, "fn": fn,
              "balanced_accuracy": balanced, "accuracy": (tp + tn) / len(labels) if labels else None,
              "precision": precision, "recall": recall, "f1": f1,
              "n_unparsed": sum(p is None for p in predictions), "auroc": None}
    if probabilities is not None and labels and all(p is not None and math.isfinite(p) for p in probabilities):
        result["auroc"] = auroc(labels, probabilities)
    return result


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
