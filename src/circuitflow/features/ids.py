"""Feature ids: circuit-tracer's Cantor pairing of (layer, feature), with real layer numbers."""

from __future__ import annotations

import math

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
