"""Small file helpers shared by every stage: atomic writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path that replaces `final` only if the block succeeds.

    An interrupted or failing job therefore never leaves a half-written `final` that a later
    run could trust, and the partials a killed job left beside `final` are removed first.
    Works for files and for directories.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Partials of the same output left by a killed job (kill -9 skips the cleanup below) are
    # stale: Snakemake runs one job per output, so none of them can still be written to.
    for stale in final.parent.glob(f".{glob_escape(final.name)}.partial-*"):
        _remove(stale)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def keyed(keys, paths, what: str) -> dict:
    """Pair a rule's path list with the keys it was built from (layers, slugs), checking lengths."""
    keys, paths = list(keys), [str(p) for p in paths]
    if len(keys) != len(paths):
        raise ValueError(f"{len(paths)} {what} given for {len(keys)} entries {keys}")
    return dict(zip(keys, paths))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (finite floats only: NaN is a bug, not a value)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, allow_nan=False) + "\n", encoding="utf-8")


def relative_paths(value: Any, root: str | os.PathLike) -> Any:
    """`value` with every absolute path under `root` made relative to it (recursively), for
    files that are shared: they should not carry the publisher's folders."""
    root = str(root)
    if isinstance(value, dict):
        return {key: relative_paths(item, root) for key, item in value.items()}
    if isinstance(value, list):
        return [relative_paths(item, root) for item in value]
    if isinstance(value, str) and value.startswith(f"{root}{os.sep}"):
        return value[len(root) + 1:]
    return value


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# Keys of our JSON outputs that hold wall-clock figures (a number, or for "seconds" sometimes a
# dict of phases), which differ between any two runs of the same inputs; beside each, the outputs
# that write it.
TIMING_KEYS = frozenset({
    "seconds",  # activations manifest, *.metrics.json, fidelity.json, feature metadata, <slug>.scores.json
    "forward_seconds",  # activations manifest
    "tokens_per_second",  # activations manifest, feature metadata
    "training_tokens_per_second",  # *.metrics.json (per-layer and cross-layer)
    "seconds_per_step",  # cross-layer *.metrics.json
    "wall_seconds",  # the LLM stages' usage files
})


def drop_timings(value: Any) -> Any:
    """A copy of parsed JSON `value` without any TIMING_KEYS entry, at any depth: what two runs of
    the same inputs must agree on."""
    if isinstance(value, dict):
        return {key: drop_timings(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [drop_timings(item) for item in value]
    return value


def tensor_shapes(path: str | os.PathLike) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors or .npz file's headers (no tensor is read)."""
    path = Path(path)
    if path.suffix == ".npz":
        import zipfile

        import numpy as np

        shapes = {}
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)(member)
                    shapes[name.removesuffix(".npy")] = list(header[0])
        return shapes
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file below `folder`, keyed by relative path, sorted."""
    folder = Path(folder)
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
