"""JumpReLU thresholds for a TopK-trained transcoder, the rule both kinds calibrate by: per
feature, a base threshold that keeps the firing rate TopK gave it (`base_thresholds`), then one
common factor on all thresholds from `THRESHOLD_SCALES` (`best_factor`)."""

from __future__ import annotations

import torch

THRESHOLD_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)
L0_SLACK = 1.05  # a calibrated JumpReLU may fire at most 5 % more often than TopK did


def topk_counts(indices: torch.Tensor, acts: torch.Tensor, n_features: int) -> torch.Tensor:
    """How often TopK let each feature fire ([n_features], from topk indices and values)."""
    counts = torch.zeros(n_features, dtype=torch.long, device=indices.device)
    counts.scatter_add_(0, indices[acts > 0], torch.ones_like(indices[acts > 0]))
    return counts


def base_thresholds(pre: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-feature thresholds that keep TopK's firing counts on these pre-activations [tokens,
    features]: midway between each feature's c-th and (c+1)-th largest value; a feature TopK
    never picked gets its largest value (it stays silent)."""
    ranked = pre.sort(dim=0, descending=True).values
    n = ranked.shape[0]
    above = ranked.gather(0, (counts - 1).clamp(0, n - 1)[None])[0]
    below = ranked.gather(0, counts.clamp(max=n - 1)[None])[0]
    base = torch.where(counts == 0, ranked[0], (above + below) / 2)
    return torch.where(counts >= n, torch.zeros_like(base), base).clamp_min(0)


def best_factor(candidates: list[dict], topk_l0: float) -> dict:
    """Of the candidates ({"factor", "l0", "fvu"} each), the lowest FVU whose L0 stays within
    `L0_SLACK` of TopK's (or, if none does, the sparsest)."""
    allowed = [c for c in candidates if c["l0"] <= L0_SLACK * topk_l0] or [min(candidates, key=lambda c: c["l0"])]
    return min(allowed, key=lambda c: c["fvu"])
