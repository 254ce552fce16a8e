"""compare_explanations: the headline table of the interp stage, written to be cited.

Transcoder features vs MLP neurons, each scored by the same judge on the same kind of held-out
snippets with three explanations: the LLM's, the token label (top activating tokens and top
logits, no LLM) and the shuffled-explanation control (another feature's LLM explanation, which
should score near chance). Each figure is pooled over every judgement of every scored unit and
carries the 95 % hierarchical-bootstrap interval that score_explanations put beside it
(uncertainty.bootstrap_intervals). summary.json holds the same rows, machine-readable: each
names its unit in "unit" (and, for older readers, "kind") and its explanation in "explanation".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from circuitflow.io import atomic_path, keyed, read_json, write_json

log = logging.getLogger("circuitflow.interp")

UNIT_NAMES = {"features": "transcoder features", "neurons": "MLP neurons"}
UNIT_ORDER = ("features", "neurons")
SOURCE_NAMES = {"llm": "LLM explanation", "trivial": "token label (top tokens + logits, no LLM)",
                "shuffled": "shuffled-explanation control"}
SOURCE_ORDER = ("llm", "trivial", "shuffled")
BINARY_METHODS = ("detection", "fuzzing")
BINARY_METRICS = ("balanced_accuracy", "mean_feature_balanced_accuracy", "precision", "recall", "f1", "auroc")
INTERVAL_METRICS = ("balanced_accuracy", "f1", "auroc")  # the metrics score_explanations gives intervals for
NOTE = ("Shuffled-explanation control: each unit scored with another unit's LLM explanation; near 0.5 says the "
        "scorer is not fooled by a fluent but wrong explanation. [lo, hi]: 95 % hierarchical bootstrap interval "
        "(resampling units, then the snippets judged for each); a value without one had fewer than 2 units or "
        "comes from a score file without intervals. n/a: not scored (method off, or a score file from before it "
        "existed).")


def _cell(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_interval(value, interval) -> str:
    if value is None or not interval:
        return _cell(value)
    return f"{_cell(value)} [{_cell(interval[0])}, {_cell(interval[1])}]"


def _overall(path: str) -> tuple[str, dict]:
    """The judge's name and the pooled figures (summary.overall) of one score file."""
    scored = read_json(path)
    try:
        return scored["metadata"]["model"], scored["summary"]["overall"]
    except (KeyError, TypeError):
        raise ValueError(f"score file {path} has no metadata.model or summary.overall: pass the scores.json "
                         "that score_explanations wrote (rerun it if the file is from elsewhere)") from None


def _row(unit: str, source: str, overall: dict) -> dict:
    """One table row; every figure is None where the score file lacks its source or method."""
    scored = overall.get(source) or {}
    row = {"unit": unit, "kind": unit, "explanation": source, "scored": bool(scored)}
    present = [scored[m] for m in (*BINARY_METHODS, "embedding") if isinstance(scored.get(m), dict)]
    # 0, not None, for a source the file lacks: the report's reader wants a count in every row
    row["n_features"] = next((m["n_features"] for m in present if m.get("n_features") is not None), 0)
    row["n_judgements"] = (scored.get("detection") or {}).get("n")
    for method in BINARY_METHODS:
        pooled = scored.get(method) or {}
        interval = pooled.get("interval") or {}
        for metric in BINARY_METRICS:
            row[f"{method}_{metric}"] = pooled.get(metric)
        for metric in INTERVAL_METRICS:
            row[f"{method}_{metric}_interval"] = interval.get(metric)
    embedding = scored.get("embedding") or {}
    row["embedding_auroc"] = embedding.get("auroc")
    row["embedding_auroc_interval"] = (embedding.get("interval") or {}).get("auroc")
    return row


def compare_explanations(*, units: Sequence[str], scores: Sequence[str | Path],
                         classifications: Sequence[str | Path], out_summary: str | Path, out_table: str | Path) -> dict:
    """Rows in the order: LLM explanation, token label, shuffled control; within each, transcoder
    features then MLP neurons (then any other unit, as given)."""
    scores = keyed(units, scores, "score files")
    classifications = keyed(units, classifications, "classification files")
    ordered = [u for u in UNIT_ORDER if u in scores] + [u for u in units if u not in UNIT_ORDER]
    overall, shares, judges = {}, {}, set()
    for unit in ordered:
        judge, overall[unit] = _overall(scores[unit])
        judges.add(judge)
        classified = read_json(classifications[unit])
        judges.add(classified["metadata"]["model"])
        shares[unit] = classified["shares"]["overall"]
    rows = [_row(unit, source, overall[unit]) for source in SOURCE_ORDER for unit in ordered]
    summary = {"judge": sorted(judges), "rows": rows, "category_shares": shares}
    lines = [f"Judge: {', '.join(sorted(judges))}. Detection and fuzzing pool every yes/no judgement on held-out "
             "snippets (balanced accuracy and AUROC: 0.5 is chance); embedding AUROC: how well the explanation's "
             "embedding similarity separates activating from non-activating snippets.", "",
             "| units | explanation | n features | detection bal. acc. [95 % CI] | detection F1 | detection AUROC "
             "| fuzzing bal. acc. | embedding AUROC [95 % CI] |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {UNIT_NAMES.get(r['unit'], r['unit'])} | {SOURCE_NAMES[r['explanation']]} "
                     f"| {r['n_features'] if r['scored'] else 'n/a'} "
                     f"| {with_interval(r['detection_balanced_accuracy'], r['detection_balanced_accuracy_interval'])} "
                     f"| {_cell(r['detection_f1'])} | {_cell(r['detection_auroc'])} "
                     f"| {_cell(r['fuzzing_balanced_accuracy'])} "
                     f"| {with_interval(r['embedding_auroc'], r['embedding_auroc_interval'])} |")
    lines += ["", NOTE]
    categories = sorted({c for s in shares.values() for c in s})
    lines += ["", "| category share | " + " | ".join(categories) + " |",
              "|---|" + "---:|" * len(categories)]
    for unit, share in shares.items():
        lines.append(f"| {UNIT_NAMES.get(unit, unit)} | " + " | ".join(f"{share.get(c, 0):.0%}" for c in categories)
                     + " |")
    write_json(out_summary, summary)
    with atomic_path(out_table) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log.info("scores table:\n%s", "\n".join(lines))
    return summary
