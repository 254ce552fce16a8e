"""Feature ids: circuit-tracer's Cantor pairing of (layer, feature), with real layer numbers."""

from __future__ import annotations

import math
from pathlib import Path

# circuit-tracer's graph-file `feature_type` of transcoder feature nodes (per-layer and cross-layer alike)
FEATURE_NODE = "cross layer transcoder"


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


# Feature example files per folder at most: clusters cap files per folder and per quota, and the
# default run's features once filled one folder with 57,574.
FEATURES_PER_FOLDER = 1000


def feature_file(feature_dir: str | Path, cantor_id: int) -> Path:
    """Where collect_features (and collect_neurons) keep a feature's JSON:
    ``<feature_dir>/layer_<l>/<feature // 1000>/<cantor id>.json``. The graphs' own folder keeps
    circuit-tracer's flat ``features/<id>.json``, which its frontend reads."""
    layer, feature = cantor_unpair(int(cantor_id))
    return Path(feature_dir) / f"layer_{layer}" / str(feature // FEATURES_PER_FOLDER) / f"{cantor_id}.json"


def feature_files(feature_dir: str | Path) -> list[Path]:
    """Every feature JSON under `feature_dir`, in the layout of `feature_file`."""
    return sorted(Path(feature_dir).glob("layer_*/*/*.json"))
