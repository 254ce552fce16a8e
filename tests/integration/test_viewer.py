"""circuitflow.viewer: a real server on a free loopback port, real HTTP (urllib), no mocks.

Needs ``frontend/node_modules`` (``npm ci --prefix frontend``); those tests skip with that
reason when it is missing. The browser tests also need Debian's ``chromium`` and skip
without it.
"""

from __future__ import annotations

import gzip
import html
import http.client
import json
import re
import shutil
import struct
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import pytest

from circuitflow.viewer import FrontendError, build_viewer, main, parse_range, serve_graphs

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
needs_node_modules = pytest.mark.skipif(
    not (FRONTEND / "node_modules").is_dir(),
    reason="frontend/node_modules is missing: run `npm ci --prefix frontend`",
)

SLUG = "tiny-cat"
TOKENS = ["<|im_start|>", "The", " cat", " sat"]
TOKEN_IDS = [1, 504, 2644, 3290]


def cantor(layer: int, feature: int) -> int:
    return (layer + feature) * (layer + feature + 1) // 2 + feature


FEATURES = [(0, 2, 2, 0.30, 1.2), (1, 5, 3, 0.20, 0.8)]  # (layer, feature, position, influence, act)
CLICKED = "1_5_3"
CLICKED_ID = cantor(1, 5)  # 26


def feature_json(layer: int, feature: int) -> dict:
    example = {"tokens": ["The", " cat", " sat", " on"], "tokens_acts_list": [0.0, 1.2, 0.3, 0.0],
               "train_token_ind": 1, "is_repeated_datapoint": False}
    return {"index": cantor(layer, feature), "layer": layer, "feature": feature,
            "transcoder_id": f"tiny-plt/{layer}", "act_min": 0.0, "act_max": 1.4,
            "activation_frequency": 0.01, "quantile_values": [0.1, 0.5, 1.2], "histogram": [5, 3, 1],
            "top_logits": [" on", " down"], "bottom_logits": [" the", " a"],
            "examples_quantiles": [{"quantile_name": "Top activations", "examples": [example]}]}


def write_graph_folder(out: Path) -> Path:
    """A graph folder as circuit-tracer's create_graph_files writes it, plus feature files."""
    nodes = [{"node_id": f"E_{tid}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
              "feature_type": "embedding", "jsNodeId": f"E_{tid}-{pos}", "influence": 0.1}
             for pos, tid in enumerate(TOKEN_IDS)]
    nodes += [{"node_id": f"{layer}_{feat}_{pos}", "feature": cantor(layer, feat), "layer": str(layer),
               "ctx_idx": pos, "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{feat}-0",
               "influence": influence, "activation": act, "clerp": ""}
              for layer, feat, pos, influence, act in FEATURES]
    nodes.append({"node_id": "1_-1_3", "feature": -1, "layer": "1", "ctx_idx": 3,
                  "feature_type": "mlp reconstruction error", "jsNodeId": "1_-1-3", "influence": 0.4})
    nodes.append({"node_id": "3_319_3", "feature": 319, "layer": "3", "ctx_idx": 3, "feature_type": "logit",
                  "token_prob": 0.5, "is_target_logit": True, "jsNodeId": "L_319-3",
                  "clerp": 'Output " on" (p=0.500)'})
    links = [("E_2644_2", "0_2_2", 2.0), ("0_2_2", "1_5_3", 1.5), ("E_3290_3", "1_5_3", 0.7),
             ("1_5_3", "3_319_3", 3.0), ("1_-1_3", "3_319_3", -0.5), ("E_504_1", "3_319_3", 0.3)]
    metadata = {"slug": SLUG, "scan": "./data/features", "transcoder_list": [], "prompt_tokens": TOKENS,
                "prompt": "".join(TOKENS), "node_threshold": 0.8, "schema_version": 1}
    graph = {"metadata": metadata,
             "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                         "sg_pos": ""},
             "nodes": nodes, "links": [{"source": s, "target": t, "weight": w} for s, t, w in links]}
    features = out / "features"
    features.mkdir(parents=True)
    (out / f"{SLUG}.json").write_text(json.dumps(graph), encoding="utf-8")
    (out / "graph-metadata.json").write_text(json.dumps({"graphs": [metadata]}), encoding="utf-8")
    for layer, feat, *_ in FEATURES:
        feature = json.dumps(feature_json(layer, feat))
        (features / f"{cantor(layer, feat)}.json").write_text(feature, encoding="utf-8")
    # A packed layer file like layer_{L}.bin: entries of uint32 LE length + one gzip member.
    entries = [gzip.compress(json.dumps(feature_json(1, f)).encode(), mtime=0) for f in range(3)]
    blob = b"".join(struct.pack("<I", len(e)) + e for e in entries)
    (features / "layer_1.bin").write_bytes(blob)
    return out


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory) -> Path:
    return write_graph_folder(tmp_path_factory.mktemp("graphs"))


@pytest.fixture(scope="module")
def server(graph_dir):
    srv = serve_graphs(graph_dir, port=0, frontend_vendor_dir=FRONTEND)
    yield srv
    srv.stop()


def fetch(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without raising on 4xx/5xx."""
    request = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers, err.read()


def script_srcs(page: str) -> list[str]:
    return re.findall(r"""<script\b[^>]*\bsrc\s*=\s*['"]([^'"]+)['"]""", page, re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# no server needed


def test_missing_node_modules_is_a_clear_error(tmp_path):
    frontend = tmp_path / "frontend"
    frontend.mkdir()
    shutil.copy(FRONTEND / "package.json", frontend / "package.json")
    with pytest.raises(FrontendError, match=r"npm ci --prefix frontend"):
        build_viewer(tmp_path / "viewer", frontend)
    graphs = write_graph_folder(tmp_path / "graphs")
    with pytest.raises(FrontendError, match=r"node_modules is missing"):
        serve_graphs(graphs, port=0, frontend_vendor_dir=frontend)


def test_parse_range():
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-5", 10) == (2, 5)
    assert parse_range("bytes=2-", 10) == (2, 9)
    assert parse_range("bytes=-3", 10) == (7, 9)
    assert parse_range("bytes=8-20", 10) == (8, 9)  # clamped to the end
    assert parse_range("bytes=10-12", 10) == "unsatisfiable"
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: whole file
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=5-2", 10) is None  # invalid: ignored
    # Positions too long for int() (over 4,300 digits) are past the end of any file.
    assert parse_range("bytes=" + "9" * 4300 + "-", 10) == "unsatisfiable"
    huge = "9" * 4301
    assert parse_range(f"bytes={huge}-", 10) == "unsatisfiable"
    assert parse_range(f"bytes={huge}-{huge}1", 10) == "unsatisfiable"
    assert parse_range(f"bytes=2-{huge}", 10) == (2, 9)
    assert parse_range(f"bytes=-{huge}", 10) == (0, 9)
    assert parse_range(f"bytes={huge}1-{huge}", 10) is None  # invalid: ignored
    assert parse_range(f"bytes={'0' * 4300}3-{'0' * 4300}5", 10) == (3, 5)
    assert parse_range("bytes=18446744073709551616-", 10) == "unsatisfiable"  # 2**64


def test_main_reports_a_missing_graph_folder(tmp_path, capsys):
    assert main(["--graph_dir", str(tmp_path / "nope"), "--port", "0"]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# HTTP


@needs_node_modules
@pytest.mark.parametrize("page", ["index.html", "feature-view.html"])
def test_pages_load_only_local_scripts(server, page):
    status, headers, body = fetch(f"{server.base_url}/{page}")
    assert status == 200
    text = body.decode("utf-8")
    assert "transformer-circuits.pub" not in text and "unpkg.com" not in text
    assert not re.search(r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*['"](?:https?:)?//""", text)
    srcs = script_srcs(text)
    assert any("vendor/d3/dist/d3.min.js" in s for s in srcs)
    if page == "index.html":
        assert any("vendor/dagre/" in s for s in srcs) and any("vendor/pako/" in s for s in srcs)
    for src in srcs:
        url = urllib.parse.urljoin(f"{server.base_url}/{page}", src)
        status, headers, body = fetch(url)
        assert status == 200, url
        assert headers["Content-Type"].startswith("text/javascript"), url
        assert body, url


@needs_node_modules
def test_data_and_graph_data_routes(server, graph_dir):
    status, headers, body = fetch(f"{server.base_url}/data/graph-metadata.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["graphs"][0]["slug"] == SLUG

    status, _, body = fetch(f"{server.base_url}/graph_data/{SLUG}.json")
    graph = json.loads(body)
    assert status == 200 and graph == json.loads((graph_dir / f"{SLUG}.json").read_text())

    feature_ids = [n["feature"] for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert CLICKED_ID in feature_ids
    for feature_id in feature_ids:
        status, _, body = fetch(f"{server.base_url}/data/features/{feature_id}.json")
        assert status == 200 and json.loads(body)["index"] == feature_id

    size = (graph_dir / f"{SLUG}.json").stat().st_size
    status, headers, body = fetch(f"{server.base_url}/data/{SLUG}.json", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) == size and headers["Accept-Ranges"] == "bytes"

    status, headers, _ = fetch(f"{server.base_url}/data/{SLUG}.json",
                               headers={"If-Modified-Since": headers["Last-Modified"]})
    assert status == 304


@needs_node_modules
def test_range_requests_on_a_packed_layer_file(server, graph_dir):
    blob = (graph_dir / "features" / "layer_1.bin").read_bytes()
    # Offsets of entry 1, requested as the frontend does: bytes=offsets[f]-offsets[f+1].
    first = 4 + struct.unpack_from("<I", blob, 0)[0]
    second_end = first + 4 + struct.unpack_from("<I", blob, first)[0]
    url = f"{server.base_url}/data/features/layer_1.bin"

    status, headers, body = fetch(url, headers={"Range": f"bytes={first}-{second_end}"})
    assert status == 206
    assert headers["Content-Range"] == f"bytes {first}-{second_end}/{len(blob)}"
    assert body == blob[first : second_end + 1]
    length = struct.unpack_from("<I", body, 0)[0]
    assert json.loads(gzip.decompress(body[4 : 4 + length])) == feature_json(1, 1)

    status, headers, body = fetch(url, headers={"Range": "bytes=-10"})
    assert status == 206 and body == blob[-10:]
    assert headers["Content-Range"] == f"bytes {len(blob) - 10}-{len(blob) - 1}/{len(blob)}"

    status, headers, _ = fetch(url, method="HEAD", headers={"Range": "bytes=0-3"})
    assert status == 206 and headers["Content-Length"] == "4"

    status, headers, _ = fetch(url, headers={"Range": f"bytes={len(blob)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(blob)}"

    status, _, body = fetch(url)
    assert status == 200 and body == blob


@needs_node_modules
@pytest.mark.parametrize("n_digits", [4300, 4301, 20000])  # int() refuses over 4,300 digits
def test_a_range_too_long_for_int_is_not_satisfiable(server, graph_dir, n_digits):
    size = (graph_dir / "features" / "layer_1.bin").stat().st_size
    status, headers, _ = fetch(f"{server.base_url}/data/features/layer_1.bin",
                               headers={"Range": "bytes=" + "9" * n_digits + "-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    assert server.requests[-1] == ("GET", "/data/features/layer_1.bin", 416)


@needs_node_modules
def test_large_json_is_gzipped_only_when_accepted(server, graph_dir):
    big = {"graphs": [], "padding": "x" * (1024 * 1024 + 10)}
    (graph_dir / "big.json").write_text(json.dumps(big), encoding="utf-8")
    url = f"{server.base_url}/data/big.json"
    status, headers, body = fetch(url, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(body)) == big
    status, headers, body = fetch(url)
    assert status == 200 and headers.get("Content-Encoding") is None and json.loads(body) == big
    status, headers, body = fetch(url, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-1"})
    assert (status, body) == (206, b'{"') and headers.get("Content-Encoding") is None


@needs_node_modules
def test_paths_outside_the_graph_folder_are_not_served(server):
    for path in ["/data/../graph-metadata.json", "/data/%2e%2e/%2e%2e/etc/passwd", "/data/nope.json",
                 "/graph_data/features", "/data/features/..%2f..%2fpyproject.toml"]:
        status, _, _ = fetch(server.base_url + path)
        assert status == 404, path


@needs_node_modules
def test_symlinks_are_followed_only_inside_the_graph_folder(server, graph_dir, tmp_path):
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": true}')
    (graph_dir / "leak.json").symlink_to(outside)
    (graph_dir / "alias.json").symlink_to(graph_dir / "graph-metadata.json")
    try:
        assert fetch(server.base_url + "/data/leak.json")[0] == 404
        status, _, body = fetch(server.base_url + "/data/alias.json")
        assert status == 200 and json.loads(body)["graphs"][0]["slug"] == SLUG
    finally:
        (graph_dir / "leak.json").unlink()
        (graph_dir / "alias.json").unlink()


@needs_node_modules
def test_save_graph_is_opt_in(server, tmp_path):
    body = json.dumps({"qParams": {"pinnedIds": "1_5_3"}}).encode()
    status, _, _ = fetch(f"{server.base_url}/save_graph/{SLUG}", method="POST", data=body,
                         headers={"Content-Type": "application/json"})
    assert status == 403

    graphs = write_graph_folder(tmp_path / "graphs")
    with serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND, allow_save=True) as writable:
        status, _, _ = fetch(f"{writable.base_url}/save_graph/{SLUG}", method="POST", data=body,
                             headers={"Content-Type": "application/json"})
        assert status == 200
        status, _, _ = fetch(f"{writable.base_url}/save_graph/..%2fx", method="POST", data=body,
                             headers={"Content-Type": "application/json"})
        assert status == 404
    assert json.loads((graphs / f"{SLUG}.json").read_text())["qParams"] == {"pinnedIds": "1_5_3"}


# The save path (--allow_save): only the viewer's own page may write, only graph files, atomically.

SAVE_BODY = json.dumps({"qParams": {"pinnedIds": "1_5_3", "clickedId": "1_5_3"},
                        "timestamp": "2025-01-01T00:00:00.000Z"}).encode()


@pytest.fixture(scope="module")
def writable(tmp_path_factory):
    graphs = write_graph_folder(tmp_path_factory.mktemp("writable"))
    with serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND, allow_save=True) as srv:
        yield srv


def raw_request(server, method: str, path: str, headers: dict[str, str | None],
                body: bytes = b"") -> tuple[int, str]:
    """(status, text) of one request sent with exactly ``headers`` (None: header left out), over
    http.client; the Host header defaults to the server's own."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"127.0.0.1:{server.port}", **headers}.items():
            if value is not None:
                connection.putheader(name, value)
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def save(server, body: bytes = SAVE_BODY, slug: str = SLUG, **headers: str | None) -> tuple[int, str]:
    """A POST /save_graph/<slug> with the headers the viewer's Save button sends, overridden by
    ``headers`` (``Content_Type=`` for Content-Type)."""
    sent = {"Content-Type": "application/json", "Content-Length": str(len(body)),
            "Origin": f"http://127.0.0.1:{server.port}", "Sec-Fetch-Site": "same-origin"}
    sent.update({name.replace("_", "-"): value for name, value in headers.items()})
    return raw_request(server, "POST", f"/save_graph/{slug}", sent, body)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@needs_node_modules
def test_the_viewer_page_saves_atomically(writable):
    graph_path = writable.graph_dir / f"{SLUG}.json"
    before = json.loads(graph_path.read_text())
    assert save(writable) == (200, "saved\n")
    after = json.loads(graph_path.read_text())
    assert after == {**before, "qParams": {"pinnedIds": "1_5_3", "clickedId": "1_5_3"}}
    assert not list(writable.graph_dir.glob(".*partial*"))  # written beside, then renamed


@needs_node_modules
@pytest.mark.parametrize("headers", [
    {"Origin": "http://attacker.example", "Content_Type": "text/plain", "Sec_Fetch_Site": None},
    {"Origin": "http://attacker.example", "Sec_Fetch_Site": "cross-site"},
    {"Origin": "http://localhost:3000", "Sec_Fetch_Site": "same-site"},  # another local app
    {"Origin": None, "Sec_Fetch_Site": "cross-site"},
    {"Origin": "null", "Sec_Fetch_Site": None},
], ids=["simple-text-plain", "cross-site", "other-local-port", "fetch-site-only", "null-origin"])
def test_a_cross_origin_save_is_refused(writable, headers):
    before = folder_bytes(writable.graph_dir)
    status, text = save(writable, **headers)
    assert status == 403 and text.startswith("cross-origin save refused"), (status, text)
    assert folder_bytes(writable.graph_dir) == before


@needs_node_modules
def test_a_save_needs_a_json_content_type(writable):
    before = folder_bytes(writable.graph_dir)
    status, text = save(writable, Content_Type="text/plain;charset=UTF-8")
    assert status == 415 and "application/json" in text, (status, text)
    assert folder_bytes(writable.graph_dir) == before


@needs_node_modules
def test_a_rebound_host_name_is_refused(server, writable):
    """DNS rebinding: a page of attacker.example whose name now points at 127.0.0.1 is, to the
    browser, same-origin with this server; only the Host header gives it away."""
    port = writable.port
    before = folder_bytes(writable.graph_dir)
    status, text = save(writable, Host=f"attacker.example:{port}",
                        Origin=f"http://attacker.example:{port}")
    assert status == 403 and "is not this server" in text, (status, text)
    assert folder_bytes(writable.graph_dir) == before
    # Reading is refused too: graphs and feature files are what a rebinding page would take.
    for path in (f"/data/{SLUG}.json", "/index.html"):
        status, _ = raw_request(server, "GET", path, {"Host": f"attacker.example:{server.port}"})
        assert status == 403, path
    assert raw_request(server, "GET", f"/data/{SLUG}.json", {"Host": None})[0] == 400
    assert raw_request(server, "GET", f"/data/{SLUG}.json", {"Host": "x.example@127.0.0.1"})[0] == 400


@needs_node_modules
@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1", "[::1]:{port}", "LOCALHOST:{port}",
                                  "localhost:9000", "10.1.2.3:{port}"])
def test_loopback_names_and_addresses_are_served(server, host):
    """Any port: behind `ssh -L 9000:localhost:8041` the browser sends Host localhost:9000."""
    status, _ = raw_request(server, "GET", f"/data/{SLUG}.json", {"Host": host.format(port=server.port)})
    assert status == 200, host


@needs_node_modules
@pytest.mark.parametrize(("length", "expected"), [
    ("-1", 400), ("abc", 400), ("1e3", 400), (str(5 * 1024**2), 413), ("9" * 5000, 413),
])
def test_a_bad_or_huge_content_length_is_refused_before_reading(writable, length, expected):
    """Nothing is sent after the headers: a server that waited for the declared body would time
    out here (as it did for -1, which read until the client hung up)."""
    before = folder_bytes(writable.graph_dir)
    status, text = save(writable, b"", Content_Length=length)
    assert status == expected and ("Content-Length" in text or "limit" in text), (status, text)
    assert folder_bytes(writable.graph_dir) == before


@needs_node_modules
def test_max_save_bytes_caps_the_body(tmp_path):
    graphs = write_graph_folder(tmp_path / "graphs")
    with pytest.raises(ValueError, match="max_save_bytes must be a positive number"):
        serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND, max_save_bytes=0)
    limit = len(SAVE_BODY) - 1
    with serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND, allow_save=True,
                      max_save_bytes=limit) as srv:
        status, text = save(srv)
        assert status == 413 and f"{limit}-byte limit" in text, (status, text)
        assert save(srv, json.dumps({"qParams": {}}).encode())[0] == 200


@needs_node_modules
@pytest.mark.parametrize(("slug", "body", "reason"), [
    ("graph-metadata", SAVE_BODY, "is not a circuit-tracer graph"),  # a JSON file, not a graph
    (SLUG, b'{"qParams": "1_5_3"}', "qParams is a str"),
    (SLUG, b'{"qParams": {"pruningThreshold": NaN}}', "not JSON"),
    (SLUG, b'{"qParams": ' + b"[" * 100_000, "not JSON"),  # nesting deeper than the parser goes
], ids=["not-a-graph", "qparams-not-an-object", "nan", "deep-nesting"])
def test_only_valid_graphs_are_written(writable, slug, body, reason):
    before = folder_bytes(writable.graph_dir)
    status, text = save(writable, body, slug=slug)
    assert status == 400 and text.startswith("not saved") and reason in text, (status, text)
    assert folder_bytes(writable.graph_dir) == before


@needs_node_modules
def test_port_zero_and_stop(graph_dir):
    srv = serve_graphs(graph_dir, port=0, frontend_vendor_dir=FRONTEND)
    assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}/index.html"
    viewer = srv.viewer_dir
    assert fetch(srv.url)[0] == 200
    srv.stop()
    srv.stop()  # idempotent
    assert not viewer.exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(srv.url, timeout=2)


@needs_node_modules
def test_console_script_entry_point(graph_dir):
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from circuitflow.viewer import main; sys.exit(main())",
         "--graph_dir", str(graph_dir), "--port", "0", "--frontend_dir", str(FRONTEND)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"(http://\S+/index\.html)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert fetch(match.group(1))[0] == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0  # SIGTERM stops it cleanly


# ---------------------------------------------------------------------------------------------
# headless Chromium (Debian's `chromium`)

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)


def run_chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=10000",
           "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if ":CONSOLE" in line]
    return [line for line in lines if re.search(r"Uncaught|Error|is not a function|is not defined", line)]


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of raw pixel bytes) of an 8-bit, non-interlaced RGB/RGBA PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    bpp = 3 if color == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, stride, bpp)]


@pytest.mark.slow
@needs_node_modules
@needs_chromium
def test_viewer_renders_offline_in_headless_chromium(server, tmp_path):
    pinned = urllib.parse.quote(",".join(["0_2_2", CLICKED, "3_319_3", "E_2644_2"]))
    url = f"{server.url}?slug={SLUG}&clickedId={CLICKED}&pinnedIds={pinned}"

    seen = len(server.requests)
    done = run_chromium(tmp_path, url, "--dump-dom")
    requests = server.requests[seen:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert not console_errors(done.stderr), console_errors(done.stderr)
    dom = done.stdout
    # The link graph draws one element per node; the feature panel shows the clicked feature's
    # examples, loaded from /data/features/<cantor id>.json.
    link_graph = dom[dom.index("grid-contents link-graph") :]
    n_nodes = len(re.findall(r'<text class="node[ "]', link_graph))
    assert n_nodes == 8, n_nodes
    assert re.search(r"Feature(&nbsp;|\s)*<a[^>]*>L1/5</a>", dom)  # the clicked feature's panel
    assert 'class="token train_token_ind"' in dom
    assert ("GET", f"/data/features/{CLICKED_ID}.json", 200) in requests
    assert ("GET", f"/graph_data/{SLUG}.json", 200) in requests
    assert not [r for r in requests if r[2] >= 400 and r[1] != "/favicon.ico"], requests

    png = tmp_path / "viewer.png"
    done = run_chromium(tmp_path, url, f"--screenshot={png}")
    assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
    width, height, pixels = png_pixels(png)
    assert (width, height) == (1400, 900)
    non_white = sum(1 for p in pixels if p != b"\xff\xff\xff")
    assert non_white > 0.05 * len(pixels), non_white
    assert len(set(pixels)) > 50  # text, node colours, link greens and the feature colour scale


JETPACK_CHECK = """
<div class='tooltip tooltip-hidden' style='position: fixed'></div>
<div id='box' style='width: 300px; height: 200px'></div>
<script>
var out = {}
try {
  out.defineRemoved = typeof window.define === 'undefined'
  var sel = d3.select('#box').append('div.a.b#c')
  out.append = [sel.attr('class'), sel.attr('id')].join('|')
  sel.at({strokeWidth: 2}).st({fontSize: 12, marginTop: 3})
  out.at = sel.attr('stroke-width')
  out.st = sel.style('font-size') + '|' + sel.style('margin-top')
  out.appendMany = d3.select('#box').appendMany('span.item', [1, 2, 3]).size()
  out.selectAppend = d3.select('#box').selectAppend('p.x').selectAppend('p.x').size()
  out.parent = sel.parent().attr('id')
  out.nestBy = JSON.stringify(d3.nestBy([1, 2, 1], d => d)) + '|' + d3.nestBy([1, 2, 1], d => d)[0].key
  out.clamp = d3.clamp(0, 5, 3)
  out.d3map = JSON.stringify(d3.map([1, 2], d => d * 2))
  out.sort = JSON.stringify(d3.sort([3, 1, 2]))
  var c = d3.conventions({sel: d3.select('#box').append('div'), width: 100, height: 50, layers: 'sdc'})
  out.conventions = [c.layers.length, c.totalWidth, typeof c.drawAxis].join('|')
  c.drawAxis()
  c.drawAxis(c.layers[0])
  out.axes = c.sel.selectAll('.x.axis').size() + '|' + c.sel.selectAll('.y.axis').size()
  var g = d3.select('#box').append('svg').append('g').translate([3, 4])
  out.translate = g.attr('transform') + '|' + g.translate(-16, 1).attr('transform')
  var tip = d3.select('#box').append('div.tipped').datum({a: 1})
    .call(d3.attachTooltip, d3.select('.tooltip'), [])
  var node = tip.node()
  node.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: 50, clientY: 60}))
  node.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: 50, clientY: 60}))
  out.tooltip = d3.select('.tooltip').classed('tooltip-hidden') + '|' + d3.select('.tooltip').style('top')
  out.pako = pako.inflate(pako.deflate('hi'), {to: 'string'})
  var dg = new dagre.graphlib.Graph(); dg.setGraph({}); dg.setDefaultEdgeLabel(() => ({}))
  dg.setNode('a', {width: 10, height: 10}); dg.setNode('b', {width: 10, height: 10}); dg.setEdge('a', 'b')
  dagre.layout(dg)
  out.dagre = dg.node('b').y > dg.node('a').y
} catch (e) { out.error = String(e && e.stack || e) }
var pre = document.createElement('pre'); pre.id = 'result'; pre.textContent = JSON.stringify(out)
document.body.appendChild(pre)
</script>
"""


@pytest.mark.slow
@needs_node_modules
@needs_chromium
def test_vendored_jetpack_behaves_like_the_viewer_expects(graph_dir, tmp_path):
    """The d3 v7 + npm d3-jetpack combination (frontend/shims) provides the helpers the viewer uses."""
    viewer = build_viewer(tmp_path / "viewer", FRONTEND)
    index = (viewer / "index.html").read_text(encoding="utf-8")
    vendor_tags = "\n".join(f"<script src='{s}'></script>" for s in script_srcs(index) if "vendor/" in s)
    page = f"<!DOCTYPE html><meta charset='utf-8'>\n{vendor_tags}\n{JETPACK_CHECK}"
    (viewer / "jetpack-check.html").write_text(page, encoding="utf-8")
    with serve_graphs(graph_dir, port=0, frontend_vendor_dir=FRONTEND, viewer_dir=viewer) as srv:
        done = run_chromium(tmp_path, f"{srv.base_url}/jetpack-check.html", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    match = re.search(r'<pre id="result">(.*?)</pre>', done.stdout, re.S)
    assert match, done.stdout[-2000:]
    out = json.loads(html.unescape(match.group(1)))
    assert out == {
        "defineRemoved": True,
        "append": "a b|c",
        "at": "2",
        "st": "12px|3px",
        "appendMany": 3,
        "selectAppend": 1,
        "parent": "box",
        "nestBy": "[[1,1],[2]]|1",
        "clamp": 3,
        "d3map": "[2,4]",  # d3 v7's d3.map, not d3-collection's
        "sort": "[1,2,3]",
        "conventions": "3|140|function",
        "axes": "2|2",
        "translate": "translate(3,4)|translate(0,-16)",
        "tooltip": "false|80px",
        "pako": "hi",
        "dagre": True,
    }


SAVE_CHECK = """
<iframe id='viewer' src='index.html?slug=%(slug)s&clickedId=%(clicked)s&pinnedIds=%(clicked)s'
        style='width: 1200px; height: 800px'></iframe>
<pre id='result'></pre>
<script>
// Click the viewer's own Save button once it is drawn; report what the button then says.
var waited = 0
function poll() {
  var doc = document.getElementById('viewer').contentDocument
  var button = doc && doc.querySelector('.save-button')
  if (button && !button.dataset.clicked) { button.dataset.clicked = '1'; button.click() }
  if (button && /Saved|Error|Failed/.test(button.textContent) || (waited += 100) > 8000) {
    document.getElementById('result').textContent = button ? button.textContent : 'no button'
    return
  }
  setTimeout(poll, 100)
}
setTimeout(poll, 100)
</script>
"""

CROSS_ORIGIN_SAVE = """
<pre id='result'></pre>
<script>
// What another page open in the same browser could try: a simple (no preflight) text/plain POST,
// and a JSON one (which needs a CORS preflight that the server does not grant).
var url = '%(target)s/save_graph/%(slug)s'
var body = JSON.stringify({qParams: {pinnedIds: 'attacker'}})
Promise.allSettled([
  fetch(url, {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body}),
  fetch(url, {method: 'POST', headers: {'Content-Type': 'application/json'}, body}),
]).then(results => {
  document.getElementById('result').textContent = results.map(r => r.status).join('|')
})
</script>
"""


@pytest.mark.slow
@needs_node_modules
@needs_chromium
def test_the_save_button_works_and_other_pages_cannot_save(tmp_path):
    """The real viewer's Save button (Chromium's own Origin, Sec-Fetch-Site and Content-Type)
    saves; a page of another origin (another local port) cannot."""
    graphs = write_graph_folder(tmp_path / "graphs")
    viewer = build_viewer(tmp_path / "viewer", FRONTEND)
    (viewer / "save-check.html").write_text(SAVE_CHECK % {"slug": SLUG, "clicked": CLICKED},
                                            encoding="utf-8")
    with serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND, viewer_dir=viewer,
                      allow_save=True) as writable:
        done = run_chromium(tmp_path, f"{writable.base_url}/save-check.html", "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        assert re.search(r'<pre id="result">Saved!</pre>', done.stdout), done.stdout[-2000:]
        saved = json.loads((graphs / f"{SLUG}.json").read_text())["qParams"]
        assert saved["clickedId"] == CLICKED and saved["pinnedIds"] == CLICKED, saved

        before = folder_bytes(graphs)
        attacker_viewer = build_viewer(tmp_path / "attacker", FRONTEND)
        (attacker_viewer / "attack.html").write_text(
            CROSS_ORIGIN_SAVE % {"target": writable.base_url, "slug": SLUG}, encoding="utf-8")
        with serve_graphs(graphs, port=0, frontend_vendor_dir=FRONTEND,
                          viewer_dir=attacker_viewer) as attacker:
            seen = len(writable.requests)
            done = run_chromium(tmp_path, f"{attacker.base_url}/attack.html", "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        assert re.search(r'<pre id="result">fulfilled\|rejected</pre>', done.stdout), done.stdout[-2000:]
        posts = [r for r in writable.requests[seen:] if r[0] == "POST"]
        assert posts == [("POST", f"/save_graph/{SLUG}", 403)], writable.requests[seen:]
        assert folder_bytes(graphs) == before
