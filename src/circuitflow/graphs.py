"""graphs: assemble per-prompt graphs into one folder that circuit-tracer's server reads.

``results/graphs/`` holds ``{slug}.json`` for every prompt, ``graph-metadata.json`` (the index
the frontend lists) and ``graph-scores.json`` (replacement/completeness scores and target
logits per prompt). Serve it with
``circuit-tracer start-server --graph_file_dir results/graphs --port 8041``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from circuitflow.io import atomic_path, read_json, write_json

log = logging.getLogger("circuitflow.graphs")


def assemble_graphs(graphs: dict[str, str], metadata: dict[str, str], scores: dict[str, str],
                    out_dir: str | Path) -> list[str]:
    """Copy (hard-link when possible) each slug's graph into `out_dir` with merged indexes."""
    slugs = sorted(graphs)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for slug in slugs:
            target = tmp / f"{slug}.json"
            try:
                os.link(graphs[slug], target)
            except OSError:
                shutil.copyfile(graphs[slug], target)
        write_json(tmp / "graph-metadata.json", {"graphs": [read_json(metadata[s]) for s in slugs]})
        write_json(tmp / "graph-scores.json", {s: read_json(scores[s]) for s in slugs})
    log.info("assembled %d graphs into %s: %s", len(slugs), out_dir, ", ".join(slugs))
    return slugs
