"""pack_features: per-feature JSON files into circuit-tracer's packed binary format; reading it back.

Input: a folder with one JSON object per live feature, named ``<cantor(layer, feature)>.json``
and placed where `circuitflow.features.ids.feature_file` puts it (``layer_<l>/<feature // 1000>/``),
each carrying at least integer ``layer`` and ``feature`` keys that agree with its name.

Output folder (what circuit-tracer's frontend and Hugging Face ``features/`` folders read)::

    index.json.gz                   gzip of compact JSON:
                                    {"version": "1.0", "format": "variable_chunks",
                                     "0": {"filename": "layer_0.bin", "offsets": [...]}, ...}
    layer_{l}.bin                   one per layer of the set, entries concatenated, no header,
                                    no padding; index keys are the real layer numbers, so a
                                    set of layers [3, 5] gives "3" and "5"

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
import logging
import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from circuitflow.features.ids import cantor, cantor_unpair, feature_file
from circuitflow.io import atomic_path

log = logging.getLogger("circuitflow.features")

__all__ = ["PackError", "pack_feature_folder", "pack_features", "read_packed_feature"]

INDEX_NAME = "index.json.gz"
INDEX_VERSION = "1.0"
INDEX_FORMAT = "variable_chunks"
GZIP_LEVEL = 9
_LENGTH = struct.Struct("<I")
# Canonical decimal only: "0523.json" would alias 523.json, and "+5"/"-1" are not ids.
_NAME_RE = re.compile(r"(0|[1-9][0-9]*)\.json")


class PackError(ValueError):
    """Invalid feature input or a corrupt packed folder; the message names the file."""


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, but the browser's JSON.parse does not.
    raise ValueError(f"non-finite number {name} is not allowed")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_feature_file(path: Path, label: str, layer: int, feature: int) -> tuple[Any, bytes]:
    """Parse one feature file and check it against its name; returns (object, the bytes read)."""
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
    return obj, raw


def _scan_names(feature_dir: Path, layers: list[int], n_features: int) -> dict[int, list[int]]:
    """List the folder's tree once and map layer -> sorted live features, checking every name
    and that each file is where `feature_file` puts it."""
    if not feature_dir.is_dir():
        raise PackError(f"{feature_dir} is not a folder")
    by_layer: dict[int, list[int]] = {layer: [] for layer in layers}
    for folder, subfolders, names in os.walk(feature_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in names:
            if name.startswith("."):
                continue  # hidden files, e.g. the .snakemake_timestamp of a directory output
            path = Path(folder) / name
            label = str(path)
            match = _NAME_RE.fullmatch(name)
            if match is None:
                raise PackError(f"{label}: unexpected file, feature files are named <cantor_id>.json")
            if not path.is_file():
                raise PackError(f"{label} is not a regular file")
            layer, feature = cantor_unpair(int(match.group(1)))
            if layer not in by_layer or feature >= n_features:
                raise PackError(
                    f"{label} is (layer {layer}, feature {feature}), outside "
                    f"layers {layers} x {n_features} features"
                )
            if path != feature_file(feature_dir, int(match.group(1))):
                raise PackError(f"{label} is not where collect_features puts it "
                                f"({feature_file(feature_dir, int(match.group(1)))})")
            by_layer[layer].append(feature)
    for features in by_layer.values():
        features.sort()
    return by_layer


def _features(feature_dir: Path, layer: int, features: list[int]) -> Iterator[tuple[int, Path, str]]:
    for feature in features:
        path = feature_file(feature_dir, cantor(layer, feature))
        yield feature, path, str(path)


def _entry(obj: Any) -> bytes:
    payload = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    member = gzip.compress(payload.encode("utf-8"), compresslevel=GZIP_LEVEL, mtime=0)
    return _LENGTH.pack(len(member)) + member


def pack_feature_folder(
    feature_dir: str | os.PathLike, out_dir: str | os.PathLike, layers: list[int], n_features: int
) -> dict[str, Any]:
    """Pack ``feature_dir/<cantor>.json`` into ``out_dir`` (replaced atomically); see module doc.

    Every file is validated before anything is written, so bad input raises `PackError` and
    leaves an existing ``out_dir`` untouched. Returns a summary: layers, n_features,
    n_packed, layer_bytes (size of each layer file), index_bytes, json_bytes (input bytes),
    packed_bytes (all output bytes).
    """
    layers = sorted(set(layers))
    if not layers or layers[0] < 0 or n_features < 1:
        raise ValueError(f"need at least one layer >= 0 and n_features >= 1, got {layers}, {n_features}")
    feature_dir, out_dir = Path(feature_dir), Path(out_dir)
    by_layer = _scan_names(feature_dir, layers, n_features)

    # Validation pass: parse each file once and drop it (memory stays one file), so a bad file
    # fails fast, before minutes of compression, and nothing is ever written for bad input.
    for layer, features in by_layer.items():
        for feature, path, label in _features(feature_dir, layer, features):
            load_feature_file(path, label, layer, feature)

    layer_bytes: list[int] = []
    json_bytes = 0
    index: dict[str, Any] = {"version": INDEX_VERSION, "format": INDEX_FORMAT}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for layer in layers:
            live = by_layer[layer]
            offsets = [0] * (n_features + 1)
            position = 0
            filename = f"layer_{layer}.bin"
            with open(tmp / filename, "wb") as handle:
                previous = -1
                for feature, path, label in _features(feature_dir, layer, live):
                    # Re-checked while packing in case the folder changed since validation.
                    obj, raw = load_feature_file(path, label, layer, feature)
                    json_bytes += len(raw)
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
        "layers": layers,
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


def pack_features(*, feature_dir: str | os.PathLike, transcoder_set: str | os.PathLike,
                  out_dir: str | os.PathLike) -> dict[str, Any]:
    """Rule entry point: pack with the layers and feature count of a transcoder set config."""
    from circuitflow.transcoders.sets import read_transcoder_set

    config = read_transcoder_set(transcoder_set)
    summary = pack_feature_folder(feature_dir, out_dir, sorted(config.layers), config.n_features)
    log.info("packed %(n_packed)d features: %(json_bytes)d bytes of JSON -> %(packed_bytes)d bytes", summary)
    return summary
