"""Serve a folder of circuit-tracer attribution graphs with a viewer that works offline.

circuit-tracer 0.5.0's viewer (``circuit_tracer/frontend/assets``) loads its libraries from
public CDNs (transformer-circuits.pub and unpkg.com), so a browser without internet shows an
empty page. This package builds a copy of those packaged assets whose HTML pages load pinned
npm copies of the libraries instead (``frontend/package.json``, installed into
``frontend/node_modules`` by ``npm ci --prefix frontend``), and serves it together with a
graph folder:

- ``build``: ``build_viewer`` writes the offline viewer (``CDN_REPLACEMENTS`` says what
  replaces each CDN script);
- ``server``: ``serve_graphs`` serves it with the graph folder (``/data/``, ``/graph_data/``
  with HEAD, Range and If-Modified-Since; opt-in ``POST /save_graph/<slug>``);
- ``cli``: the ``circuitflow-serve`` command.

Only the standard library is used; circuit-tracer's assets are located without importing
circuit-tracer (which would import torch).

Usage::

    from circuitflow.viewer import serve_graphs
    server = serve_graphs("results/graphs", port=0)   # port 0: any free port
    print(server.url)                                  # http://127.0.0.1:<port>/index.html
    server.stop()

or ``circuitflow-serve --graph_dir results/graphs --port 8041``.
"""

from .build import CDN_REPLACEMENTS, FrontendError, build_viewer, default_frontend_dir
from .cli import main
from .server import GraphServer, parse_range, serve_graphs

__all__ = [
    "CDN_REPLACEMENTS",
    "FrontendError",
    "GraphServer",
    "build_viewer",
    "default_frontend_dir",
    "main",
    "parse_range",
    "serve_graphs",
]
