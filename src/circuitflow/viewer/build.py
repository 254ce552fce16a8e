"""Build an offline copy of circuit-tracer's attribution-graph viewer.

circuit-tracer 0.5.0's viewer (``circuit_tracer/frontend/assets``) loads its libraries from
public CDNs (transformer-circuits.pub and unpkg.com). ``build_viewer`` copies those packaged
assets and rewrites their HTML pages to load pinned npm copies of the libraries instead
(``frontend/package.json``, installed into ``frontend/node_modules`` by
``npm ci --prefix frontend``), copied into the viewer's ``vendor/`` folder.

CDN script -> replacement (see ``CDN_REPLACEMENTS``):

- ``hotserver-client-ws.js`` (live reload for Anthropic's dev server): dropped.
- ``d3.js`` (d3 v7: listeners get ``(event, d)``; uses ``d3.sort``, ``d3.pointer``, ``d3.group``):
  ``d3@7.9.0`` ``dist/d3.min.js``.
- ``jetpack_2024-07-20.js`` (``selection.append('div.class')``, ``.at``, ``.st``, ``.translate``,
  ``.appendMany``, ``.selectAppend``, ``.parent``, ``d3.conventions``, ``d3.nestBy``,
  ``d3.clamp``, ``d3.attachTooltip``): ``d3-jetpack@2.3.0`` ``build/d3-jetpack.cjs`` (with
  ``d3-collection@1.0.7`` for ``d3.nestBy``), loaded on top of d3 v7 by the small loader
  ``frontend/shims/d3-jetpack-v7-loader.js`` (npm's browser builds of d3-jetpack do not work
  as plain scripts with d3 v7; the loader's header explains why).
- ``npy_v0.js`` (``npyjs.parse`` for ``.npy`` files): dropped; no viewer page loads ``.npy``.
- ``dagre@0.8.5/dist/dagre.min.js`` and ``pako@2.1.0/dist/pako.min.js``: the same files from npm.

circuit-tracer's assets are located without importing circuit-tracer (which would import torch).
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import shutil
from pathlib import Path

__all__ = [
    "CDN_REPLACEMENTS",
    "FrontendError",
    "build_viewer",
    "circuit_tracer_assets_dir",
    "default_frontend_dir",
]

VENDOR_PREFIX = "vendor"  # URL folder of the vendored scripts inside the built viewer
NPM_HINT = "run `npm ci --prefix frontend` in the repository root (Node 20+)"
FRONTEND_DIR_ENV = "CIRCUITFLOW_FRONTEND_DIR"

_CT_LIB = "https://transformer-circuits.pub/2025/attribution-graphs/static_js/lib/"
# CDN script URL in circuit-tracer 0.5.0's HTML -> files (relative to the frontend folder) that
# replace it, in load order; an empty tuple drops the script.
CDN_REPLACEMENTS: dict[str, tuple[str, ...]] = {
    _CT_LIB + "hotserver-client-ws.js": (),
    _CT_LIB + "d3.js": ("node_modules/d3/dist/d3.min.js",),
    _CT_LIB + "jetpack_2024-07-20.js": (
        "shims/d3-jetpack-v7-loader.js",
        "node_modules/d3-collection/dist/d3-collection.min.js",
        "node_modules/d3-jetpack/build/d3-jetpack.cjs",
    ),
    _CT_LIB + "npy_v0.js": (),
    "https://unpkg.com/dagre@0.8.5/dist/dagre.min.js": ("node_modules/dagre/dist/dagre.min.js",),
    "https://unpkg.com/pako@2.1.0/dist/pako.min.js": ("node_modules/pako/dist/pako.min.js",),
}

_SCRIPT_TAG = re.compile(
    r"""<script\b[^>]*?\bsrc\s*=\s*(['"])(?P<src>[^'"]*)\1[^>]*>\s*</script>""", re.IGNORECASE
)
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
# A script or stylesheet still loaded from another host (plain <a href> links are fine).
_REMOTE_REF = re.compile(
    r"""<(?:script|link)\b[^>]*\b(?:src|href)\s*=\s*(['"])(?:[a-z][a-z0-9+.-]*:)?//""", re.IGNORECASE
)


class FrontendError(RuntimeError):
    """The vendored frontend libraries or circuit-tracer's viewer assets are missing or wrong."""


def circuit_tracer_assets_dir() -> Path:
    """circuit-tracer's packaged viewer (``circuit_tracer/frontend/assets``).

    Found without importing circuit_tracer, which would import torch."""
    spec = importlib.util.find_spec("circuit_tracer")
    if spec is None or not spec.submodule_search_locations:
        raise FrontendError("circuit-tracer is not installed (pip install circuit-tracer==0.5.0)")
    for location in spec.submodule_search_locations:
        assets = Path(location) / "frontend" / "assets"
        if (assets / "index.html").is_file():
            return assets
    raise FrontendError("circuit-tracer's frontend/assets/index.html was not found")


def default_frontend_dir() -> Path:
    """``$CIRCUITFLOW_FRONTEND_DIR``; else ``frontend/`` of the checkout this module lives in
    (an editable install); else ``./frontend``."""
    env = os.environ.get(FRONTEND_DIR_ENV)
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[3] / "frontend"
    if (checkout / "package.json").is_file():
        return checkout
    return Path.cwd() / "frontend"


def _check_vendor(frontend_dir: Path) -> None:
    """Every file the viewer needs is there and npm installed the versions package.json pins."""
    package_json = frontend_dir / "package.json"
    if not package_json.is_file():
        raise FrontendError(
            f"{package_json} not found: pass the repository's frontend/ folder "
            f"(frontend_vendor_dir=..., --frontend_dir or ${FRONTEND_DIR_ENV})"
        )
    node_modules = frontend_dir / "node_modules"
    if not node_modules.is_dir():
        raise FrontendError(f"{node_modules} is missing: {NPM_HINT}")
    pins = json.loads(package_json.read_text(encoding="utf-8")).get("dependencies", {})
    for rel in sorted({rel for files in CDN_REPLACEMENTS.values() for rel in files}):
        path = frontend_dir / rel
        if not path.is_file():
            raise FrontendError(f"{path} is missing: {NPM_HINT}")
        parts = Path(rel).parts
        if parts[0] != "node_modules":
            continue
        package = parts[1]
        manifest = node_modules / package / "package.json"
        installed = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        wanted = pins.get(package)
        if wanted is None:
            raise FrontendError(f"{package_json} does not pin {package}, which the viewer loads")
        if installed != wanted:
            raise FrontendError(
                f"{package} {installed} is installed but {package_json} pins {wanted}: {NPM_HINT}"
            )


def _rewrite_html(html: str, page: str, vendored: dict[str, str]) -> str:
    """Replace the CDN ``<script>`` tags of one page; ``page`` is its path in the viewer folder."""
    page_dir = posixpath.dirname(page)

    def replace(match: re.Match[str]) -> str:
        src = match.group("src")
        if not _REMOTE.match(src):
            return match.group(0)
        if src not in CDN_REPLACEMENTS:
            raise FrontendError(
                f"{page} loads {src}, which circuitflow.viewer has no offline copy of "
                "(a new circuit-tracer version?); add it to CDN_REPLACEMENTS"
            )
        files = CDN_REPLACEMENTS[src]
        name = src.rsplit("/", 1)[-1]
        if not files:
            return f"<!-- circuitflow: {name} dropped (not needed offline) -->"
        tags = []
        for rel in files:
            url = posixpath.relpath(vendored[rel], page_dir or ".")
            if not url.startswith("."):
                url = "./" + url
            tags.append(f"<script src='{url}'></script>")
        return "\n".join(tags)

    out = _SCRIPT_TAG.sub(replace, html)
    if _REMOTE_REF.search(out):
        raise FrontendError(f"{page} still references a remote script or stylesheet")
    return out


def build_viewer(dest: str | os.PathLike[str],
                 frontend_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write an offline copy of circuit-tracer's viewer into ``dest`` (created or refreshed).

    Copies ``circuit_tracer/frontend/assets``, copies the vendored scripts into
    ``dest/vendor/`` (``node_modules/<pkg>/...`` -> ``vendor/<pkg>/...``,
    ``shims/...`` -> ``vendor/shims/...``) and rewrites every HTML page's CDN ``<script>`` tags
    to load them (relative URLs). The result is plain static files: any static server that
    also maps ``/data/`` and ``/graph_data/`` to the graph folder can serve it, e.g.
    ``circuit_tracer.frontend.local_server.serve(graph_dir, frontend_dir=dest)``.
    """
    frontend = Path(frontend_dir) if frontend_dir is not None else default_frontend_dir()
    _check_vendor(frontend)
    assets = circuit_tracer_assets_dir()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(assets, dest, dirs_exist_ok=True)

    vendored: dict[str, str] = {}
    for rel in sorted({rel for files in CDN_REPLACEMENTS.values() for rel in files}):
        parts = Path(rel).parts
        inside = parts[1:] if parts[0] == "node_modules" else parts
        target = posixpath.join(VENDOR_PREFIX, *inside)
        (dest / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(frontend / rel, dest / target)
        vendored[rel] = target

    pages = [p for p in dest.rglob("*.html") if p.relative_to(dest).parts[0] != VENDOR_PREFIX]
    for path in sorted(pages):
        page = path.relative_to(dest).as_posix()
        html = path.read_text(encoding="utf-8")
        path.write_text(_rewrite_html(html, page, vendored), encoding="utf-8")
    return dest
