"""The report's tables as small self-contained HTML pages (the Snakemake report shows an HTML
result in a frame; a CSV or markdown file would only be offered as a download)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

from circuitflow.interp.compare import NOTE, SOURCE_NAMES, UNIT_NAMES, with_interval
from circuitflow.io import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; font-size: 14px; margin: 1em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 600; border-top: 2px solid #999; }
p.note { color: #555; max-width: 60em; }
"""



def cell(value, digits: int = 3) -> str:
    """How a value is shown: numbers to `digits` places, missing values as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(columns: Sequence[str], rows: Sequence[Sequence], total_rows: int = 0) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="total"' if i >= len(rows) - total_rows else ""
        cells = "".join(f'<td class="num">{html.escape(cell(v))}</td>' if isinstance(v, (int, float))
                        and not isinstance(v, bool) else f"<td>{html.escape(cell(v))}</td>" for v in row)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def write_page(out: str | Path, title: str, parts: Sequence[str]) -> None:
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h2>{html.escape(title)}</h2>{''.join(parts)}</body></html>\n")
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")


def fidelity_table(fidelity: dict, out: str | Path) -> dict:
    columns = ["layer", "FVU", "L0", "dead", "dense", "CE clean", "CE spliced", "CE ablated", "loss recovered",
               "KL spliced", "top-1 agreement"]
    keys = ["layer", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced", "ce_ablated",
            "loss_recovered", "kl_spliced", "top1_agreement"]
    rows = [[row.get(k) for k in keys] for row in [*fidelity["rows"], fidelity["all_layers"]]]
    note = ("<p class='note'>On held-out validation windows. FVU, L0 and dead/dense fractions of each layer's "
            "transcoder; next-token cross-entropy with that MLP replaced by its transcoder (spliced) or "
            "zero-ablated; loss recovered = (CE ablated - CE spliced) / (CE ablated - CE clean). The last row "
            "replaces every MLP at once.</p>")
    write_page(out, "Transcoder fidelity per layer", [note, _table(columns, rows, total_rows=1)])
    return {"columns": keys, "rows": rows}


def graph_scores_table(rows: list[dict], out: str | Path) -> dict:
    columns = ["prompt", "text", "replacement", "completeness", "top target (p)", "expected target (rank)",
               "active features", "selected features"]
    table = []
    for r in rows:
        top = f"{r['top_target']!r} ({r['top_probability']:.3g})" if r["top_target"] is not None else None
        expected = (f"{r['expected_target']!r} ({r['expected_rank']})" if r["expected_target"] is not None
                    else None)
        table.append([r["slug"], r["prompt"], r["replacement_score"], r["completeness_score"], top, expected,
                      r["active_features"], r["selected_features"]])
    note = ("<p class='note'>circuit-tracer's scores of each pruned graph: the share of the logit attribution "
            "that reaches the tokens through features rather than error nodes (replacement), and the share of "
            "each node's input explained by features (completeness).</p>")
    write_page(out, "Attribution graph scores", [note, _table(columns, table)])
    return {"columns": columns, "rows": table}


def interp_scores_table(summary: dict, out: str | Path) -> dict:
    """The headline table of compare_explanations (interp/scores_table.md), as HTML."""
    columns = ["units", "explanation", "n", "detection bal. acc. [95 % CI]", "per feature", "F1", "AUROC",
               "fuzzing bal. acc.", "embedding AUROC [95 % CI]"]
    rows = [[UNIT_NAMES.get(r["kind"], r["kind"]), SOURCE_NAMES.get(r["explanation"], r["explanation"]),
             r["n_features"],
             with_interval(r.get("detection_balanced_accuracy"), r.get("detection_balanced_accuracy_interval")),
             r.get("detection_mean_feature_balanced_accuracy"), r.get("detection_f1"), r.get("detection_auroc"),
             r.get("fuzzing_balanced_accuracy"),
             with_interval(r.get("embedding_auroc"), r.get("embedding_auroc_interval"))] for r in summary["rows"]]
    shares = summary["category_shares"]
    categories = sorted({c for share in shares.values() for c in share})
    share_rows = [[UNIT_NAMES.get(unit, unit), *[f"{share.get(c, 0.0):.0%}" for c in categories]]
                  for unit, share in shares.items()]
    note = (f"<p class='note'>Judge: {html.escape(', '.join(map(str, summary['judge'])))}. Detection and fuzzing "
            "pool every yes/no judgement on held-out positives and verified-zero negatives (balanced accuracy "
            "0.5 is chance); 'per feature' is the mean of per-unit balanced accuracies; embedding AUROC needs no "
            f"chat model. {html.escape(NOTE)}</p>")
    write_page(out, "Explanation scores: transcoder features vs MLP neurons",
               [note, _table(columns, rows), "<h3>Category shares</h3>",
                _table(["units", *categories], share_rows)])
    return {"columns": columns, "rows": rows, "category_shares": {"columns": categories, "rows": share_rows}}
