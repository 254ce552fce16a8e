"""Serve a folder of attribution graphs together with the offline viewer (``build_viewer``).

Routes::

    /index.html?slug=<slug>      the viewer (circuit-tracer's assets, CDN scripts replaced)
    /vendor/...                  the vendored scripts, copied from frontend/node_modules + shims
    /data/<rel>, /graph_data/<rel>
                                 files of the graph folder (``<slug>.json``,
                                 ``graph-metadata.json``, ``features/<cantor_id>.json``,
                                 ``index.json.gz``, ``layer_{L}.bin``, ...), like circuit-tracer's
                                 server, plus HEAD, Range requests (206 Partial Content) and
                                 Last-Modified / If-Modified-Since
    POST /save_graph/<slug>      writes the UI's ``qParams`` into ``<slug>.json``; only with
                                 ``allow_save=True`` (``--allow_save``), since the graph folder is
                                 normally a Snakemake output
"""

from __future__ import annotations

import email.utils
import gzip
import http.server
import json
import logging
import os
import posixpath
import re
import shutil
import socket
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from .build import build_viewer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "GraphServer", "parse_range", "serve_graphs"]

logger = logging.getLogger("circuitflow.viewer")

DEFAULT_PORT = 8041
DEFAULT_HOST = "127.0.0.1"
# Large JSON files are sent gzip-compressed when the client accepts it (as circuit-tracer does).
GZIP_MIN_BYTES = 1024**2
MAX_SAVE_BYTES = 64 * 1024**2

_MIME = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".gz": "application/gzip",
    ".bin": "application/octet-stream",
    ".npy": "application/octet-stream",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".cjs": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


_BYTES_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)
# Every file is shorter than 10**19 bytes (at most 2**63 - 1), so a position of more digits is
# past the end of any file; such digits never go to int() (which refuses over 4,300 digits).
_POSITION_DIGITS = 19
_PAST_ANY_FILE = 10**_POSITION_DIGITS


def _digits_key(digits: str) -> tuple[int, str]:
    """Orders decimal digit strings by value without converting them."""
    digits = digits.lstrip("0")
    return len(digits), digits


def _position(digits: str) -> int:
    """A byte position or suffix length from a Range header, capped at ``_PAST_ANY_FILE``."""
    n_digits, digits = _digits_key(digits)
    return int(digits or "0") if n_digits <= _POSITION_DIGITS else _PAST_ANY_FILE


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """One ``bytes=`` range -> ``(start, end)`` inclusive, ``None`` (send the whole file), or
    ``"unsatisfiable"`` (416). Multi-range and malformed headers are ignored, as RFC 9110 allows."""
    if not header:
        return None
    match = _BYTES_RANGE.match(header)
    if not match:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":  # suffix range: the last N bytes
        length = _position(last)
        if length == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    if last != "" and _digits_key(last) < _digits_key(first):
        return None  # invalid range spec: ignored
    start = _position(first)
    if start >= size:
        return "unsatisfiable"
    end = size - 1 if last == "" else min(_position(last), size - 1)
    return start, end


def _mime(path: str) -> str:
    return _MIME.get(posixpath.splitext(path)[1].lower(), "application/octet-stream")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the built viewer; ``/data/`` and ``/graph_data/`` from the graph folder."""

    protocol_version = "HTTP/1.1"
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **_MIME,
                      "": "application/octet-stream"}

    _state: _ServerState  # set on the per-server subclass that serve_graphs creates

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=str(self._state.viewer_dir), **kwargs)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code="-", size="-") -> None:
        try:
            status = int(getattr(code, "value", code))
        except (TypeError, ValueError):
            status = 0
        self._state.record(self.command, self.path, status)
        super().log_request(code, size)

    def end_headers(self) -> None:
        if not self._is_data_request():
            # The built viewer changes when frontend/ or circuit-tracer changes: revalidate.
            self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def _data_rel(self) -> str | None:
        path = urllib.parse.urlsplit(self.path).path
        for prefix in ("/data/", "/graph_data/"):
            if path.startswith(prefix):
                return urllib.parse.unquote(path[len(prefix) :])
        return None

    def _is_data_request(self) -> bool:
        return self._data_rel() is not None

    def do_GET(self) -> None:
        rel = self._data_rel()
        if rel is None:
            super().do_GET()
        else:
            self._send_data(rel, head=False)

    def do_HEAD(self) -> None:
        rel = self._data_rel()
        if rel is None:
            super().do_HEAD()
        else:
            self._send_data(rel, head=True)

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith("/save_graph/"):
            self._send_text(404, "not found")
            return
        if not self._state.allow_save:
            self._send_text(403, "saving is disabled; start circuitflow-serve with --allow_save")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._send_text(411, "Content-Length required")
            return
        if length > MAX_SAVE_BYTES:
            self._send_text(413, "request body too large")
            return
        body = self.rfile.read(length)
        slug = urllib.parse.unquote(path[len("/save_graph/") :])
        target = self._resolve(f"{slug}.json") if slug and "/" not in slug else None
        if target is None or not os.path.isfile(target):
            self._send_text(404, f"no graph {slug!r}")
            return
        try:
            q_params = json.loads(body.decode("utf-8"))["qParams"]
            with open(target, encoding="utf-8") as f:
                graph = json.load(f)
            graph["qParams"] = q_params
            tmp = f"{target}.tmp-{os.getpid()}-{threading.get_ident()}"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(graph, f)
            os.replace(tmp, target)
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self._send_text(400, f"could not save {slug!r}: {exc}")
            return
        logger.info("saved qParams of %s", target)
        self._send_text(200, "saved")

    def _start(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()

    def _send_text(self, status: int, text: str, head: bool = False,
                   extra: dict[str, str] | None = None) -> None:
        body = (text + "\n").encode("utf-8")
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}
        self._start(status, {**headers, **(extra or {})})
        if not head:
            self.wfile.write(body)

    def _resolve(self, rel: str) -> str | None:
        """``rel`` inside the graph folder, or None if it would leave it: symlinks are followed only
        while their target stays inside the (resolved) graph folder."""
        if "\x00" in rel or "\\" in rel:
            return None
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or any(p == ".." for p in parts):
            return None
        path = os.path.join(self._state.graph_dir, *parts)
        root = os.path.realpath(self._state.graph_dir)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            return None
        return path

    def _send_data(self, rel: str, head: bool) -> None:
        path = self._resolve(rel)
        if path is None or not os.path.isfile(path):
            self._send_text(404, "not found", head=head)
            return
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            last_modified = self.date_time_string(int(st.st_mtime))
            headers = {
                "Content-Type": _mime(path),
                "Last-Modified": last_modified,
                "Accept-Ranges": "bytes",
                "Cache-Control": "no-cache",  # the pipeline rewrites graph folders: revalidate
            }

            range_header = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if range_header and if_range and if_range.strip() != last_modified:
                range_header = None  # the client's copy is stale: send the whole file
            byte_range = parse_range(range_header, size)

            if byte_range is None and self._not_modified(st.st_mtime):
                del headers["Content-Type"]
                self._start(304, headers)
                return
            if byte_range == "unsatisfiable":
                self._send_text(416, "range not satisfiable", head=head,
                                extra={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"})
                return
            if isinstance(byte_range, tuple):
                start, end = byte_range
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                headers["Content-Length"] = str(end - start + 1)
                self._start(206, headers)
                if not head:
                    f.seek(start)
                    self._copy(f, end - start + 1)
                return

            # Large JSON (graph files) goes gzip-compressed when the client accepts it, as with
            # circuit-tracer's server; HEAD answers describe the uncompressed file.
            wants_gzip = "gzip" in self.headers.get("Accept-Encoding", "").lower()
            if (not head and wants_gzip and size >= GZIP_MIN_BYTES
                    and headers["Content-Type"] == "application/json"):
                body = gzip.compress(f.read(), compresslevel=3)
                headers.update({"Content-Encoding": "gzip", "Vary": "Accept-Encoding",
                                "Content-Length": str(len(body))})
                self._start(200, headers)
                self.wfile.write(body)
                return

            headers["Content-Length"] = str(size)
            self._start(200, headers)
            if not head:
                self._copy(f, size)

    def _not_modified(self, mtime: float) -> bool:
        since = self.headers.get("If-Modified-Since")
        if not since or self.headers.get("If-None-Match"):
            return False
        try:
            when = email.utils.parsedate_to_datetime(since)
        except (TypeError, ValueError, IndexError, OverflowError):
            return False
        if when is None:
            return False
        return int(mtime) <= int(when.timestamp())

    def _copy(self, f, length: int) -> None:
        remaining = length
        while remaining > 0:
            chunk = f.read(min(remaining, 1024 * 1024))
            if not chunk:
                break
            self.wfile.write(chunk)
            remaining -= len(chunk)


@dataclass
class _ServerState:
    graph_dir: str
    viewer_dir: Path
    allow_save: bool
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _HTTPServerV6(_HTTPServer):
    address_family = socket.AF_INET6


class GraphServer:
    """A running viewer server (background thread). ``url`` opens the viewer."""

    def __init__(self, httpd: _HTTPServer, thread: threading.Thread, state: _ServerState,
                 host: str, tmp_dir: Path | None):
        self._httpd = httpd
        self._thread = thread
        self._state = state
        self._tmp_dir = tmp_dir
        self._stopped = False
        self.host = host
        self.port: int = httpd.server_address[1]
        url_host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        if ":" in url_host:
            url_host = f"[{url_host}]"
        self.base_url = f"http://{url_host}:{self.port}"
        self.url = f"{self.base_url}/index.html"
        self.graph_dir = Path(state.graph_dir)
        self.viewer_dir = state.viewer_dir

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """``(method, path, status)`` of every request answered so far."""
        with self._state.lock:
            return list(self._state.requests)

    def stop(self) -> None:
        """Stop serving, join the thread and remove the temporary viewer copy (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def __enter__(self) -> GraphServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"GraphServer({str(self.graph_dir)!r}, url={self.url!r})"


def serve_graphs(
    graph_dir: str | os.PathLike[str],
    port: int = DEFAULT_PORT,
    host: str = DEFAULT_HOST,
    frontend_vendor_dir: str | os.PathLike[str] | None = None,
    *,
    viewer_dir: str | os.PathLike[str] | None = None,
    allow_save: bool = False,
) -> GraphServer:
    """Serve ``graph_dir`` and an offline viewer in a background thread; returns at once.

    ``port=0`` picks a free port (see ``.port``/``.url``). ``frontend_vendor_dir`` is the
    folder with ``package.json``, ``node_modules/`` and ``shims/`` (default: the checkout's
    ``frontend/`` or ``$CIRCUITFLOW_FRONTEND_DIR``). The viewer is built into ``viewer_dir``
    when given (kept), else into a temporary folder removed by ``.stop()``. ``allow_save``
    enables the viewer's Save button (``POST /save_graph/<slug>`` rewrites ``<slug>.json``).
    """
    graph_path = Path(graph_dir).resolve()
    if not graph_path.is_dir():
        raise FileNotFoundError(f"graph folder {graph_dir} does not exist")
    if not (graph_path / "graph-metadata.json").is_file():
        logger.warning("%s has no graph-metadata.json; the viewer will show nothing", graph_path)

    tmp_dir = None
    if viewer_dir is None:
        tmp_dir = Path(tempfile.mkdtemp(prefix="circuitflow-viewer-"))
        built = tmp_dir
    else:
        built = Path(viewer_dir)
    try:
        build_viewer(built, frontend_vendor_dir)
        state = _ServerState(graph_dir=str(graph_path), viewer_dir=built.resolve(),
                             allow_save=allow_save)
        handler = type("GraphHandler", (_Handler,), {"_state": state})
        server_cls = _HTTPServerV6 if ":" in host else _HTTPServer
        httpd = server_cls((host, port), handler)
    except BaseException:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    thread = threading.Thread(target=httpd.serve_forever, name="circuitflow-serve", daemon=True)
    thread.start()
    server = GraphServer(httpd, thread, state, host, tmp_dir)
    logger.info("serving %s at %s", graph_path, server.url)
    return server
