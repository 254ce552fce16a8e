"""A second run that explains the first run's set through transcoder.source (a local folder or
the stand-in hub): no caching, training or fidelity job, and the same attribution graphs."""

from __future__ import annotations

import json
from pathlib import Path

from ..conftest import write_config
from .test_workflow import job_counts, snakemake

SLUGS = ("france-capital", "genesis")
TRAINING_RULES = {"cache_activations", "train_transcoders", "train_cross_layer_transcoder", "write_transcoder_set",
                  "evaluate_transcoders"}


def graph_signature(graph_file: Path) -> dict:
    """What two runs of the same set must share: node ids, kinds, positions, influence and
    activation, and every edge with its weight (labels and timings aside)."""
    graph = json.loads(graph_file.read_text())
    nodes = sorted((n["node_id"], n["feature"], n["layer"], n["ctx_idx"], n["feature_type"],
                    round(n.get("influence") or 0.0, 4), round(n.get("activation") or 0.0, 4)) for n in graph["nodes"])
    links = sorted((link["source"], link["target"], round(link["weight"], 4)) for link in graph["links"])
    return {"nodes": nodes, "links": links, "tokens": graph["metadata"]["prompt_tokens"]}


def run_imported(workdir: Path, base_config: dict, source: str, run: str, targets: tuple[str, ...] = (),
                 env: dict | None = None) -> dict[str, int]:
    """Run the same config with transcoder.source set; return the job counts after checking that
    no job trained or cached anything and that the graphs equal the first run's."""
    config = {**base_config, "run": run, "transcoder": {"source": source}}
    write_config(workdir / f"{run}.yaml", config)
    graph_files = [f"results/{run}/attribution/{slug}.json" for slug in SLUGS]
    plan = job_counts(snakemake(workdir, "-n", *graph_files, "features", *targets, "--configfile", f"{run}.yaml",
                                env=env).stdout)
    assert not TRAINING_RULES & set(plan), plan
    everything = job_counts(snakemake(workdir, "-n", "--configfile", f"{run}.yaml", env=env).stdout)  # `all`
    assert everything["plot_run_report"] == 1 and not TRAINING_RULES & set(everything), everything
    counts = job_counts(snakemake(workdir, "--cores", "2", *graph_files, "features", *targets,
                                  "--configfile", f"{run}.yaml", env=env, timeout=1500).stdout)
    assert counts["import_transcoder_set"] == 1 and not TRAINING_RULES & set(counts), counts
    first, second = workdir / "results" / base_config["run"], workdir / "results" / run
    for slug in SLUGS:
        assert graph_signature(second / f"attribution/{slug}.json") == graph_signature(first / f"attribution/{slug}.json")
        ours, theirs = (json.loads((folder / f"attribution/{slug}.scores.json").read_text()) for folder in (second, first))
        for key in ("replacement_score", "completeness_score"):
            assert abs(ours[key] - theirs[key]) < 1e-5, (slug, key, ours[key], theirs[key])
    for name in ("feature_metadata.json",):
        ours, theirs = (json.loads((folder / "features" / name).read_text()) for folder in (second, first))
        assert ours.keys() == theirs.keys()
    assert (second / "features/packed/index.json.gz").is_file()
    return counts
