"""compare_explanations: the headline table of the interp stage — transcoder features vs MLP
neurons, each with its LLM explanation and with the non-LLM one, scored by the same judge on
the same kind of snippets. Each unit ("features" or "neurons") has its own scores and
classifications; the rows of summary.json name it in their "kind" field."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from circuitflow.io import atomic_path, keyed, read_json, write_json

log = logging.getLogger("circuitflow.interp")

UNIT_NAMES = {"features": "transcoder features", "neurons": "MLP neurons"}
SOURCE_NAMES = {"llm": "LLM explanation", "trivial": "top tokens + logits (no LLM)"}


def _cell(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def compare_explanations(*, units: Sequence[str], scores: Sequence[str | Path],
                         classifications: Sequence[str | Path], out_summary: str | Path, out_table: str | Path) -> dict:
    scores = keyed(units, scores, "score files")
    classifications = keyed(units, classifications, "classification files")
    rows, shares, judges = [], {}, set()
    for unit in units:
        scored = read_json(scores[unit])
        judges.add(scored["metadata"]["model"])
        overall = scored["summary"]["overall"]
        for source in ("llm", "trivial"):
            detection = overall[source]["detection"]
            fuzzing = overall[source].get("fuzzing")
            rows.append({"kind": unit, "explanation": source, "n_features": detection["n_features"],
                         "n_judgements": detection["n"],
                         "detection_balanced_accuracy": detection["balanced_accuracy"],
                         "detection_mean_feature_balanced_accuracy": detection["mean_feature_balanced_accuracy"],
                         "detection_precision": detection["precision"], "detection_recall": detection["recall"],
                         "detection_f1": detection["f1"], "detection_auroc": detection["auroc"],
                         "fuzzing_balanced_accuracy": fuzzing["balanced_accuracy"] if fuzzing else None,
                         "fuzzing_auroc": fuzzing["auroc"] if fuzzing else None})
        classified = read_json(classifications[unit])
        judges.add(classified["metadata"]["model"])
        shares[unit] = classified["shares"]["overall"]
    summary = {"judge": sorted(judges), "rows": rows, "category_shares": shares}
    lines = [f"Judge: {', '.join(sorted(judges))}. Detection and fuzzing pool every yes/no judgement "
             "(balanced accuracy: 0.5 is chance); 'per feature' is the mean of per-feature balanced accuracies.", "",
             "| features | explanation | n | detection bal. acc. | per feature | precision | recall | F1 | AUROC "
             "| fuzzing bal. acc. | fuzzing AUROC |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {UNIT_NAMES.get(r['kind'], r['kind'])} | {SOURCE_NAMES[r['explanation']]} | {r['n_features']} "
                     f"| {_cell(r['detection_balanced_accuracy'])} | {_cell(r['detection_mean_feature_balanced_accuracy'])} "
                     f"| {_cell(r['detection_precision'])} | {_cell(r['detection_recall'])} | {_cell(r['detection_f1'])} "
                     f"| {_cell(r['detection_auroc'])} | {_cell(r['fuzzing_balanced_accuracy'])} "
                     f"| {_cell(r['fuzzing_auroc'])} |")
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
