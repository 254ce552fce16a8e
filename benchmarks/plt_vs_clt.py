"""Per-layer transcoders against a cross-layer transcoder, on the same prompts: graph scores,
error nodes, fidelity and training cost, side by side, from two finished runs.

    python benchmarks/plt_vs_clt.py results/smollm2-135m results/smollm2-135m-clt

Each argument is a run folder (``results/<run>``) holding ``attribution/<slug>.json`` and
``.scores.json`` for the prompts, ``transcoders/fidelity.json`` and the training metrics. Per
prompt: replacement and completeness (circuit-tracer's ``compute_graph_scores`` on the whole
graph), and in the pruned graph file (the nodes above ``attribution.node_threshold``) the
number of error nodes, feature nodes and all nodes; where the error influence sits (early, middle and
late layers, from ``error_influence_by_layer``). Then fidelity (validation FVU, the
loss recovered and KL with every MLP replaced) and training (parameters, seconds). Prints
markdown tables; ``--json`` prints the figures instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ERROR_TYPE = "mlp reconstruction error"
FEATURE_TYPE = "cross layer transcoder"  # circuit-tracer's node type for every transcoder feature


def graph_figures(run: Path) -> dict[str, dict]:
    out = {}
    for scores_file in sorted((run / "attribution").glob("*.scores.json")):
        slug = scores_file.name.removesuffix(".scores.json")
        scores = json.loads(scores_file.read_text())
        nodes = json.loads((run / "attribution" / f"{slug}.json").read_text())["nodes"]
        out[slug] = {"replacement": scores["replacement_score"], "completeness": scores["completeness_score"],
                     "error_nodes": sum(n["feature_type"] == ERROR_TYPE for n in nodes),
                     "feature_nodes": sum(n["feature_type"] == FEATURE_TYPE for n in nodes), "nodes": len(nodes),
                     "error_by_layer": scores.get("error_influence_by_layer")}
    return out


def error_table(figures: dict, names: list[str], slugs: list[str]) -> str:
    """Each graph's error influence (its share of token + error influence; they add up to
    1 - replacement) in the first, middle and last third of the layers, and the layer that
    holds the most. Graphs attributed before the breakdown was recorded are left out."""
    lines = ["| prompt | run | error share: early / middle / late layers | largest: layer (share) |", "|---|---|---|---|"]
    for slug in slugs:
        for name, f in zip(names, figures.values()):
            shares = f["graphs"][slug]["error_by_layer"]
            if not shares:
                continue
            n = len(shares)
            thirds = [sum(shares[i * n // 3:(i + 1) * n // 3]) for i in range(3)]
            top = max(range(n), key=shares.__getitem__)
            lines.append(f"| {slug} | {name} | {thirds[0]:.3f} / {thirds[1]:.3f} / {thirds[2]:.3f} | "
                         f"{top} ({shares[top]:.3f}) |")
    return "\n".join(lines) + "\n"


def training_figures(run: Path) -> dict:
    folder = run / "transcoders"
    clt = folder / "clt.metrics.json"
    if clt.is_file():
        metrics = json.loads(clt.read_text())
        return {"kind": "clt", "parameters": metrics["parameters"], "train_seconds": metrics["seconds"],
                "seconds_per_step": metrics["seconds_per_step"], "peak_rss_gb": metrics["peak_rss_gb"],
                "jobs": 1}
    layers = [json.loads(p.read_text()) for p in sorted(folder.glob("layer_*.metrics.json"))]
    d_model, n, skip = _shape(folder)
    per_layer = 2 * n * d_model + n + d_model + (d_model * d_model if skip else 0)  # W_enc, W_dec, biases, W_skip
    return {"kind": "plt", "parameters": per_layer * len(layers), "train_seconds": sum(m["seconds"] for m in layers),
            "seconds_per_step": sum(m["seconds"] / m["steps"] for m in layers), "peak_rss_gb": None,
            "jobs": len(layers)}


def _shape(folder: Path) -> tuple[int, int, bool]:
    import yaml

    config = yaml.safe_load((folder / "config.yaml").read_text())
    return int(config["d_model"]), int(config["n_features"]), bool(config["skip_connection"])


def fidelity_figures(run: Path) -> dict | None:
    """From ``transcoders/fidelity.json``; None for a run that did not evaluate its set."""
    path = run / "transcoders" / "fidelity.json"
    if not path.is_file():
        return None
    fidelity = json.loads(path.read_text())
    overall = fidelity["all_layers"]
    return {"mean_fvu": fidelity["mean_fvu"], "mean_l0": overall["l0"], "max_dead": fidelity["max_dead_fraction"],
            "loss_recovered_all": overall["loss_recovered"], "kl_all": overall["kl_spliced"],
            "top1_all": overall["top1_agreement"], "n_features": fidelity["n_features"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {str(run): {"graphs": graph_figures(run), "fidelity": fidelity_figures(run),
                          "training": training_figures(run)} for run in args.runs}
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    names = [Path(run).name for run in figures]
    slugs = sorted(set.intersection(*(set(f["graphs"]) for f in figures.values())))
    print("| prompt | " + " | ".join(f"{n}: replacement / completeness / error nodes / feature nodes" for n in names)
          + " |")
    print("|---|" + "---|" * len(names))
    for slug in slugs:
        cells = [f"{g['replacement']:.3f} / {g['completeness']:.3f} / {g['error_nodes']} / {g['feature_nodes']}"
                 for g in (f["graphs"][slug] for f in figures.values())]
        print(f"| {slug} | " + " | ".join(cells) + " |")
    print()
    print(error_table(figures, names, slugs))
    print("| run | kind | features per layer | mean FVU | mean L0 | max dead | loss recovered (all) | KL (all) | "
          "top-1 (all) | parameters | training s | s per step | jobs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, f in zip(names, figures.values()):
        fid, tr = f["fidelity"], f["training"]
        quality = (f"{fid['n_features']} | {fid['mean_fvu']:.3f} | {fid['mean_l0']:.1f} | {fid['max_dead']:.3f} | "
                   f"{fid['loss_recovered_all']:.3f} | {fid['kl_all']:.3f} | {fid['top1_all']:.3f}" if fid
                   else "not evaluated | | | | | |")
        print(f"| {name} | {tr['kind']} | {quality} | {tr['parameters'] / 1e6:.1f}M | {tr['train_seconds']:.0f} | "
              f"{tr['seconds_per_step']:.2f} | {tr['jobs']} |")


if __name__ == "__main__":
    main()
