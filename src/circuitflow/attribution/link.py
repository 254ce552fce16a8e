"""results/graphs/: the default target, a folder of links into one run's graphs.

Every run keeps its graphs in ``results/<run>/graphs/``, so two configs never overwrite each
other's. ``snakemake results/graphs/`` (the README's command) fills a real folder with one
relative symlink per entry of the run's graph folder: the viewer and circuit-tracer's server
read it like the original, and Snakemake's timestamp stays out of the run's own folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from circuitflow.io import atomic_path

log = logging.getLogger(__name__)


def link_graphs(*, graphs: str | Path, link: str | Path) -> list[str]:
    """Replace `link` with a folder whose entries link to those of `graphs`; return their names."""
    graphs, link = Path(graphs), Path(link)
    names = sorted(entry.name for entry in graphs.iterdir() if not entry.name.startswith("."))
    with atomic_path(link) as tmp:
        tmp.mkdir()
        for name in names:
            # relative to the link folder, so a moved or copied results/ keeps working
            os.symlink(os.path.relpath(graphs / name, link), tmp / name)
    log.info("%s links the %d entries of %s", link, len(names), graphs)
    return names
