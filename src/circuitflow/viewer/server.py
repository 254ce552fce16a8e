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

Every request must name this server in its ``Host`` header (a loopback name, an IP address, the
bound host, this machine's name or one of ``allowed_hosts``), so a web page cannot read graphs or
save through a DNS name it rebinds to 127.0.0.1. A save must also come from the viewer's own
origin (``Origin`` / ``Sec-Fetch-Site``), send ``application/json`` of at most
``max_save_bytes``, and leave ``<slug>.json`` a circuit-tracer graph; it is written atomically.
"""

from __future__ import annotations

import email.utils
import gzip
import http.server
import ipaddress
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from circuitflow.io import write_json

from .build import build_viewer

__all__ = ["DEFAULT_HOST", "DEFAULT_MAX_SAVE_BYTES", "DEFAULT_PORT", "GraphServer", "parse_range",
           "serve_graphs"]

logger = logging.getLogger("circuitflow.viewer")

DEFAULT_PORT = 8041
DEFAULT_HOST = "127.0.0.1"
# Large JSON files are sent gzip-compressed when the client accepts it (as circuit-tracer does).
GZIP_MIN_BYTES = 1024**2
# The Save button posts only the view state (qParams: pinned node ids, supernodes, edited
# labels), not the graph: even every node of a few-MB pruned graph pinned and relabelled stays
# far below 4 MiB. The cap bounds the memory one request can take before anything is checked.
DEFAULT_MAX_SAVE_BYTES = 4 * 1024**2

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


# name or [IPv6] literal, then an optional port; anything else (userinfo, paths) is refused.
_HOST_HEADER = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")
_BYTE_COUNT = re.compile(r"[0-9]+")
_WILDCARD_HOSTS = ("", "0.0.0.0", "::")


def _host_name(header: str) -> str | None:
    """The lower-cased host of a ``Host`` header (``[::1]:8041`` -> ``::1``), None if malformed."""
    match = _HOST_HEADER.fullmatch(header.strip().lower())
    if match is None:
        return None
    return match["name"].strip("[]").rstrip(".")


def _is_trusted_host(name: str, allowed: frozenset[str]) -> bool:
    """Whether a request naming ``name`` can come from a page of this server. DNS rebinding needs
    a name the attacker's DNS answers for; loopback names and IP literals cannot be rebound. Any
    port is accepted: behind ``ssh -L 9000:localhost:8041`` the browser sends ``localhost:9000``."""
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _trusted_host_names(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host names a server bound to ``host`` answers to besides loopback names and IP literals:
    the bound name, this machine's name when bound to every interface, and ``extra``."""
    names = {host.strip("[]").lower(), *(name.lower().rstrip(".") for name in extra)}
    if host in _WILDCARD_HOSTS:
        machine = socket.gethostname().lower()
        names |= {machine, machine.split(".")[0]}
    return frozenset(names - {""})


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # json.loads would take NaN and Infinity


def _graph_reader():
    """The pipeline's own graph check (``assemble_graphs`` refuses what it refuses), imported only
    when saving is on: ``circuitflow.attribution`` imports torch."""
    from circuitflow.attribution.graphs import GraphFolderError, read_graph

    return read_graph, GraphFolderError


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the built viewer; ``/data/`` and ``/graph_data/`` from the graph folder."""

    protocol_version = "HTTP/1.1"
    # Seconds a socket may stall: a client that declares a body and never sends it (or idles on a
    # kept-alive connection) does not hold its thread for ever.
    timeout = 60
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

    def parse_request(self) -> bool:
        """The request line and headers, refusing (403) a ``Host`` that is not this server's."""
        if not super().parse_request():
            return False
        hosts = self.headers.get_all("Host") or []
        name = _host_name(hosts[0]) if len(hosts) == 1 else None
        if name is None:
            self._refuse(400, "one valid Host header is required")
            return False
        if not _is_trusted_host(name, self._state.trusted_hosts):
            self._refuse(403, f"Host {hosts[0]!r} is not this server: open it by a loopback name "
                              "or IP address (e.g. http://127.0.0.1:<port>/index.html)")
            return False
        return True

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
        # Every refusal closes the connection: the body it leaves unread must not be taken for the
        # next request.
        path = urllib.parse.urlsplit(self.path).path
        if not path.startswith("/save_graph/"):
            self._refuse(404, "not found")
            return
        if not self._state.allow_save:
            self._refuse(403, "saving is disabled; start circuitflow-serve with --allow_save")
            return
        refusal = self._cross_origin() or self._wrong_content_type() or self._bad_length()
        if refusal:
            self._refuse(*refusal)
            return
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        if len(body) != length:
            self._refuse(400, f"the body ended after {len(body)} of {length} bytes")
            return
        slug = urllib.parse.unquote(path[len("/save_graph/") :])
        target = self._resolve(f"{slug}.json") if slug and "/" not in slug else None
        if target is None or not os.path.isfile(target):
            self._refuse(404, f"no graph {slug!r}")
            return
        status, message = self._save_q_params(slug, target, body)
        self._send_text(status, message, extra=None if status == 200 else {"Connection": "close"})

    def _cross_origin(self) -> tuple[int, str] | None:
        """403 unless the browser says the request comes from a page of this server (a client
        that sends neither header is not a browser, which no web page can drive)."""
        site = self.headers.get("Sec-Fetch-Site", "").strip().lower()
        if site and site not in ("same-origin", "none"):
            return 403, f"cross-origin save refused (Sec-Fetch-Site: {site}); use the viewer page"
        origin = self.headers.get("Origin")
        host = self.headers["Host"].strip().lower()
        if origin is not None and origin.strip().lower() not in (f"http://{host}",
                                                                 f"https://{host}"):
            return 403, f"cross-origin save refused (Origin: {origin}); use the viewer page"
        return None

    def _wrong_content_type(self) -> tuple[int, str] | None:
        media_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            return 415, (f"save needs Content-Type: application/json "
                         f"(got {media_type or 'none'}), as the viewer's Save button sends")
        return None

    def _bad_length(self) -> tuple[int, str] | None:
        if "Transfer-Encoding" in self.headers:
            return 411, "save needs a Content-Length body, not Transfer-Encoding"
        declared = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if len(declared) != 1:
            return (411, "save needs a Content-Length header") if not declared else (
                400, "conflicting Content-Length headers")
        value = declared.pop()
        if not _BYTE_COUNT.fullmatch(value):
            return 400, f"Content-Length {value[:40]!r} is not a byte count"
        limit = self._state.max_save_bytes
        if _digits_key(value) > _digits_key(str(limit)):  # no int() of thousands of digits
            return 413, (f"save body of {value[:40]} bytes is over the {limit}-byte limit "
                         "(serve_graphs(max_save_bytes=...))")
        return None

    def _save_q_params(self, slug: str, target: str, body: bytes) -> tuple[int, str]:
        """Replace ``qParams`` of graph ``target``; it is rewritten only if it was a
        circuit-tracer graph and the body a JSON object with a ``qParams`` object."""
        try:
            request = json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
            q_params = request["qParams"]
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            return 400, f"not saved: the body is not JSON with qParams ({type(exc).__name__})"
        if not isinstance(q_params, dict):
            return 400, f"not saved: qParams is a {type(q_params).__name__}, not a JSON object"
        read_graph, graph_error = _graph_reader()
        with self._state.save_lock:  # atomic_path's partial name is per process, not per thread
            try:
                _, graph = read_graph(target)
            except graph_error as exc:
                logger.warning("refused to save into %s: %s", target, exc)
                return 400, f"not saved: {slug}.json is not a circuit-tracer graph"
            graph["qParams"] = q_params
            try:
                write_json(target, graph, indent=None)
            except (ValueError, OSError) as exc:
                return 500, f"could not write {slug}.json: {exc}"
        logger.info("saved qParams of %s", target)
        return 200, "saved"

    def _refuse(self, status: int, text: str) -> None:
        if status != 404:  # the operator sees why a Save failed, or who tried
            logger.warning("refused %s %s: %s", self.command, self.path[:200], text)
        self._send_text(status, text, head=self.command == "HEAD", extra={"Connection": "close"})

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
    trusted_hosts: frozenset[str]
    max_save_bytes: int
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    save_lock: threading.Lock = field(default_factory=threading.Lock)

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
    max_save_bytes: int = DEFAULT_MAX_SAVE_BYTES,
    allowed_hosts: Iterable[str] = (),
) -> GraphServer:
    """Serve ``graph_dir`` and an offline viewer in a background thread; returns at once.

    ``port=0`` picks a free port (see ``.port``/``.url``). ``frontend_vendor_dir`` is the
    folder with ``package.json``, ``node_modules/`` and ``shims/`` (default: the checkout's
    ``frontend/`` or ``$CIRCUITFLOW_FRONTEND_DIR``). The viewer is built into ``viewer_dir``
    when given (kept), else into a temporary folder removed by ``.stop()``. ``allow_save``
    enables the viewer's Save button (``POST /save_graph/<slug>`` rewrites ``<slug>.json``),
    with bodies of at most ``max_save_bytes``. Requests must name the server by a loopback name,
    an IP address, ``host``, this machine's name (when ``host`` is every interface) or one of
    ``allowed_hosts`` (e.g. a reverse proxy's name).
    """
    graph_path = Path(graph_dir).resolve()
    if not graph_path.is_dir():
        raise FileNotFoundError(f"graph folder {graph_dir} does not exist")
    if type(max_save_bytes) is not int or max_save_bytes < 1:
        raise ValueError(f"max_save_bytes must be a positive number of bytes, "
                         f"not {max_save_bytes!r}")
    if allow_save:
        _graph_reader()  # a missing dependency fails here, not at the first save
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
                             allow_save=allow_save,
                             trusted_hosts=_trusted_host_names(host, allowed_hosts),
                             max_save_bytes=max_save_bytes)
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
