"""``circuitflow-serve``: serve a graph folder with the offline viewer until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from .build import FRONTEND_DIR_ENV, FrontendError
from .server import DEFAULT_HOST, DEFAULT_MAX_SAVE_BYTES, DEFAULT_PORT, serve_graphs

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``circuitflow-serve --graph_dir results/graphs --port 8041``: serve until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="circuitflow-serve",
        description="Serve circuit-tracer attribution graphs with an offline copy of its viewer.",
    )
    parser.add_argument("--graph_dir", "--graph-dir", default="results/graphs",
                        help="folder with <slug>.json and graph-metadata.json "
                             "(default: results/graphs)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"default {DEFAULT_PORT}; 0 = any free port")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--frontend_dir", "--frontend-dir", default=None,
                        help="folder with package.json and node_modules/ (default: "
                             f"${FRONTEND_DIR_ENV}, else the checkout's frontend/, else ./frontend)")
    parser.add_argument("--viewer_dir", "--viewer-dir", default=None,
                        help="build the viewer here and keep it (default: a temporary folder)")
    parser.add_argument("--allow_save", "--allow-save", action="store_true",
                        help="let the viewer's Save button write qParams into <slug>.json")
    parser.add_argument("--max_save_bytes", "--max-save-bytes", type=int, default=DEFAULT_MAX_SAVE_BYTES,
                        help=f"largest save body accepted (default {DEFAULT_MAX_SAVE_BYTES})")
    parser.add_argument("--allowed_host", "--allowed-host", action="append", default=[],
                        help="another host name the viewer may be opened by (repeatable); loopback "
                             "names and IP addresses are always allowed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        server = serve_graphs(args.graph_dir, port=args.port, host=args.host,
                              frontend_vendor_dir=args.frontend_dir, viewer_dir=args.viewer_dir,
                              allow_save=args.allow_save, max_save_bytes=args.max_save_bytes,
                              allowed_hosts=args.allowed_host)
    except (FrontendError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"circuitflow-serve: error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM (kill, process managers) stops like Ctrl-C, so the temporary viewer is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"Serving {server.graph_dir} at {server.url}  (Ctrl-C stops)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
