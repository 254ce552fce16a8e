"""Pack per-feature JSON files into circuit-tracer's packed binary format, and read it back.

Input: a folder with one JSON object per live feature, named ``<cantor(layer, feature)>.json``,
each carrying at least integer ``layer`` and ``feature`` keys that agree with its name.

Output folder (what circuit-tracer's frontend and Hugging Face ``features/`` folders read)::

    index.json.gz                   gzip of compact JSON:
                                    {"version": "1.0", "format": "variable_chunks",
                                     "0": {"filename": "layer_0.bin", "offsets": [...]}, ...}
    layer_0.bin ... layer_{L-1}.bin entries concatenated, no header, no padding

One *entry* per live feature::

    offset 0   4 bytes   uint32 little-endian N
    offset 4   N bytes   one gzip member of json.dumps(obj, separators=(",", ":"),
                         ensure_ascii=False).encode("utf-8")

Entries are written in feature order 0..n_features-1. ``offsets`` has n_features+1 entries:
``offsets[0] == 0`` and feature f occupies bytes ``[offsets[f], offsets[f+1])`` of its layer
file, so a missing (dead) feature is a zero-length range. Readers must not decode a
zero-length range (the frontend would read the next feature instead).

Output is byte-reproducible: every gzip member is written with ``mtime=0`` and no file name,
the JSON is re-serialised from the parsed object (input formatting does not matter), and key
order is fixed. (Identical bytes assume the same zlib build; other zlibs may deflate
differently but decode to the same data.)
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from circuitflow.io import atomic_path

__all__ = ["PackError", "cantor", "cantor_unpair", "pack_features", "pack_transcoder_features", "read_packed_feature"]

INDEX_NAME = "index.json.gz"
INDEX_VERSION = "1.0"
INDEX_FORMAT = "variable_chunks"
GZIP_LEVEL = 9
_LENGTH = struct.Struct("<I")
# Canonical decimal only: "0523.json" would alias 523.json, and "+5"/"-1" are not ids.
_NAME_RE = re.compile(r"(0|[1-9][0-9]*)\.json")


class PackError(ValueError):
    """Invalid feature input or a corrupt packed folder; the message names the file."""


def cantor(layer: int, feature: int) -> int:
    """Cantor pairing used by circuit-tracer for feature node ids: (l+f)(l+f+1)/2 + f."""
    if layer < 0 or feature < 0:
        raise ValueError(f"cantor pairing needs non-negative ints, got ({layer}, {feature})")
    s = layer + feature
    return s * (s + 1) // 2 + feature


def cantor_unpair(z: int) -> tuple[int, int]:
    """Inverse of `cantor`: z -> (layer, feature), exact for any size (isqrt, no floats)."""
    if z < 0:
        raise ValueError(f"cantor id must be non-negative, got {z}")
    w = (math.isqrt(8 * z + 1) - 1) // 2
    feature = z - w * (w + 1) // 2
    return w - feature, feature


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, but the browser's JSON.parse does not.
    raise ValueError(f"non-finite number {name} is not allowed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_feature(path: Path, label: str, layer: int, feature: int) -> tuple[Any, int]:
    """Parse one feature file and check it against its name; returns (object, input bytes)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackError(f"{label} is not valid UTF-8: {exc}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError, so is _reject_constant's
        raise PackError(f"{label} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PackError(f"{label} must hold a JSON object, found {type(obj).__name__}")
    for key, expected in (("layer", layer), ("feature", feature)):
        if key not in obj:
            raise PackError(f"{label} has no {key!r} key (expected {expected} from its name)")
        if not _is_int(obj[key]):
            raise PackError(f"{label}: {key!r} must be an integer, found {obj[key]!r}")
        if obj[key] != expected:
            raise PackError(
                f"{label}: {key!r} is {obj[key]} but its name "
                f"{path.stem} = cantor({layer}, {feature}) says {expected}"
            )
    return obj, len(raw)


def _scan_names(feature_dir: Path, n_layers: int, n_features: int) -> dict[int, list[int]]:
    """List the folder once and map layer -> sorted live features, checking every name."""
    if not feature_dir.is_dir():
        raise PackError(f"{feature_dir} is not a folder")
    by_layer: dict[int, list[int]] = {layer: [] for layer in range(n_layers)}
    with os.scandir(feature_dir) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # hidden files, e.g. the .snakemake_timestamp of a directory output
            label = str(feature_dir / entry.name)
            match = _NAME_RE.fullmatch(entry.name)
            if match is None:
                raise PackError(f"{label}: unexpected file, feature files are named <cantor_id>.json")
            if not entry.is_file():
                raise PackError(f"{label} is not a regular file")
            layer, feature = cantor_unpair(int(match.group(1)))
            if layer >= n_layers or feature >= n_features:
                raise PackError(
                    f"{label} is (layer {layer}, feature {feature}), outside "
                    f"{n_layers} layers x {n_features} features"
                )
            by_layer[layer].append(feature)
    for features in by_layer.values():
        features.sort()
    return by_layer


def _features(feature_dir: Path, layer: int, features: list[int]) -> Iterator[tuple[int, Path, str]]:
    for feature in features:
        path = feature_dir / f"{cantor(layer, feature)}.json"
        yield feature, path, str(path)


def _entry(obj: Any) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    member = gzip.compress(payload.encode("utf-8"), compresslevel=GZIP_LEVEL, mtime=0)
    return _LENGTH.pack(len(member)) + member


def pack_features(
    feature_dir: str | os.PathLike, out_dir: str | os.PathLike, n_layers: int, n_features: int
) -> dict[str, Any]:
    """Pack ``feature_dir/<cantor>.json`` into ``out_dir`` (replaced atomically); see module doc.

    Every file is validated before anything is written, so bad input raises `PackError` and
    leaves an existing ``out_dir`` untouched. Returns a summary: n_layers, n_features,
    n_packed, layer_bytes (size of each layer file), index_bytes, json_bytes (input bytes),
    packed_bytes (all output bytes).
    """
    if n_layers < 1 or n_features < 1:
        raise ValueError(f"n_layers and n_features must be >= 1, got {n_layers}, {n_features}")
    feature_dir, out_dir = Path(feature_dir), Path(out_dir)
    by_layer = _scan_names(feature_dir, n_layers, n_features)

    # Validation pass: parse each file once and drop it (memory stays one file), so a bad file
    # fails fast, before minutes of compression, and nothing is ever written for bad input.
    for layer, features in by_layer.items():
        for feature, path, label in _features(feature_dir, layer, features):
            _load_feature(path, label, layer, feature)

    layer_bytes: list[int] = []
    json_bytes = 0
    index: dict[str, Any] = {"version": INDEX_VERSION, "format": INDEX_FORMAT}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for layer in range(n_layers):
            live = by_layer[layer]
            offsets = [0] * (n_features + 1)
            position = 0
            filename = f"layer_{layer}.bin"
            with open(tmp / filename, "wb") as handle:
                previous = -1
                for feature, path, label in _features(feature_dir, layer, live):
                    # Re-checked while packing in case the folder changed since validation.
                    obj, size = _load_feature(path, label, layer, feature)
                    json_bytes += size
                    entry = _entry(obj)
                    handle.write(entry)
                    offsets[previous + 1 : feature + 1] = [position] * (feature - previous)
                    position += len(entry)
                    previous = feature
                # Dead features after the last live one end where the file ends.
                offsets[previous + 1 :] = [position] * (n_features - previous)
            index[str(layer)] = {"filename": filename, "offsets": offsets}
            layer_bytes.append(position)
        index_data = gzip.compress(
            json.dumps(index, separators=(",", ":")).encode("utf-8"),
            compresslevel=GZIP_LEVEL,
            mtime=0,
        )
        (tmp / INDEX_NAME).write_bytes(index_data)

    return {
        "n_layers": n_layers,
        "n_features": n_features,
        "n_packed": sum(len(features) for features in by_layer.values()),
        "layer_bytes": layer_bytes,
        "index_bytes": len(index_data),
        "json_bytes": json_bytes,
        "packed_bytes": sum(layer_bytes) + len(index_data),
    }


def read_packed_feature(packed_dir: str | os.PathLike, layer: int, feature: int) -> dict[str, Any] | None:
    """Decode one feature the way circuit-tracer's frontend does; None for a dead feature.

    Loads ``index.json.gz`` on every call (like the frontend); fine for spot checks.
    """
    packed_dir = Path(packed_dir)
    index = json.loads(gzip.decompress((packed_dir / INDEX_NAME).read_bytes()))
    # The frontend indexes with the layer number, which works for string keys or a list.
    try:
        layer_info = index[layer] if isinstance(index, list) else index[str(layer)]
    except (KeyError, IndexError):
        raise PackError(f"{packed_dir / INDEX_NAME} has no layer {layer}") from None
    offsets = layer_info["offsets"]
    if not 0 <= feature < len(offsets) - 1:
        raise PackError(f"feature {feature} out of range: layer {layer} has {len(offsets) - 1} features")
    start, end = offsets[feature], offsets[feature + 1]
    if start == end:
        return None
    bin_path = packed_dir / layer_info["filename"]
    with open(bin_path, "rb") as handle:
        handle.seek(start)
        chunk = handle.read(end - start)
    if len(chunk) < _LENGTH.size:
        raise PackError(f"{bin_path}: entry for feature {feature} at {start} is truncated")
    (length,) = _LENGTH.unpack_from(chunk)
    if _LENGTH.size + length > len(chunk):
        raise PackError(f"{bin_path}: entry for feature {feature} claims {length} bytes, has fewer")
    return json.loads(gzip.decompress(chunk[_LENGTH.size : _LENGTH.size + length]))


def pack_transcoder_features(feature_dir: str | os.PathLike, transcoder_config: str | os.PathLike,
                             out_dir: str | os.PathLike) -> dict[str, Any]:
    """Rule entry point: pack with the layer and feature counts of a transcoder set config."""
    import yaml

    config = yaml.safe_load(Path(transcoder_config).read_text())
    return pack_features(feature_dir, out_dir, len(config["transcoders"]), int(config["n_features"]))
