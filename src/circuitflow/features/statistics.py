"""Streaming per-feature statistics: fixed-size state per feature, whatever the number of tokens.

Per feature: counts (overall and per domain), a fine log-spaced histogram of positive
activations (from which ``quantile_values`` and the frontend's ``histogram`` are derived), the
top activations, a seeded sample per power-of-two activation band and a seeded reservoir of
all firing events. Every sample keeps its context window's activations, captured when it
enters, so no second pass is needed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from circuitflow.config import CollectFeaturesSettings

# Fine histogram: geometric bins over [1e-4, 1e4) (about 2.3 % wide), plus under/overflow.
HIST_LOW, HIST_HIGH, HIST_BINS = 1e-4, 1e4, 800
N_BANDS = 16  # power-of-two activation bands for the quantile samples: 2^-8 .. 2^7


class TopSlots:
    """For each of G groups keep the `slots` entries with the largest keys, streaming.

    Entries carry an activation value, the token they sit on (window index, position) and
    the feature's activations over the surrounding context window. Events that pass a cheap
    prefilter (beating their group's current minimum) are buffered and merged into the slots
    once the buffer holds as many entries as the slots do: merging touches every slot of the
    affected groups, so doing it per batch cost more than the model's forward pass.
    """

    def __init__(self, groups: int, slots: int, window: int):
        self.slots = slots
        self.keys = torch.full((groups, slots), -math.inf)
        self.values = torch.zeros(groups, slots)
        self.seq = torch.full((groups, slots), -1, dtype=torch.int32)
        self.pos = torch.zeros(groups, slots, dtype=torch.int32)
        self.context = torch.zeros(groups, slots, window, dtype=torch.float16)
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.pending_size = 0
        self.merge_at = max(groups * slots, 1024)

    def offer(self, group: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              seq: torch.Tensor, pos: torch.Tensor, context_of) -> None:
        # The minimum can be stale (pending events not merged yet): that only lets more through.
        keep = key > self.keys[group, -1]
        if not keep.any():
            return
        idx = keep.nonzero().squeeze(-1)
        self.pending.append((group[idx], key[idx], value[idx], seq[idx], pos[idx], context_of(idx)))
        self.pending_size += len(idx)
        if self.pending_size >= self.merge_at:
            self.flush()

    def flush(self) -> None:
        """Merge buffered events into the slots."""
        if not self.pending:
            return
        group, key, value, seq, pos, context = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.pending_size = [], 0
        touched, inverse = torch.unique(group, return_inverse=True)
        n = len(touched)
        cand_group = torch.cat([torch.arange(n).repeat_interleave(self.slots), inverse])
        cand_key = torch.cat([self.keys[touched].reshape(-1), key])
        cand_value = torch.cat([self.values[touched].reshape(-1), value])
        cand_seq = torch.cat([self.seq[touched].reshape(-1), seq])
        cand_pos = torch.cat([self.pos[touched].reshape(-1), pos])
        cand_context = torch.cat([self.context[touched].reshape(-1, self.context.shape[-1]), context])
        # sort by group, then key descending (two stable sorts)
        order = torch.argsort(cand_key, descending=True, stable=True)
        order = order[torch.argsort(cand_group[order], stable=True)]
        sorted_group = cand_group[order]
        first = torch.searchsorted(sorted_group, torch.arange(n))
        rank = torch.arange(len(order)) - first[sorted_group]
        chosen = order[rank < self.slots]
        rows = touched[cand_group[chosen]]
        cols = rank[rank < self.slots]
        self.keys[rows, cols] = cand_key[chosen]
        self.values[rows, cols] = cand_value[chosen]
        self.seq[rows, cols] = cand_seq[chosen]
        self.pos[rows, cols] = cand_pos[chosen]
        self.context[rows, cols] = cand_context[chosen]


class LayerStats:
    """Everything kept for one layer's features while streaming."""

    def __init__(self, n_features: int, n_domains: int, settings: CollectFeaturesSettings):
        self.n_features = n_features
        self.counts = torch.zeros(n_domains, n_features, dtype=torch.long)
        self.histogram = torch.zeros(n_features, HIST_BINS + 2, dtype=torch.int32)
        # oversampled so that overlapping windows can be dropped and top_k still remain
        self.top = TopSlots(n_features, settings.top_k * (2 if settings.dedupe else 1), settings.window)
        self.bands = TopSlots(n_features * N_BANDS, settings.examples_per_quantile, settings.window)
        self.random = TopSlots(n_features, settings.n_random, settings.window)


def _hist_bin(values: torch.Tensor) -> torch.Tensor:
    scaled = (torch.log(values) - math.log(HIST_LOW)) / (math.log(HIST_HIGH) - math.log(HIST_LOW))
    return (scaled * HIST_BINS).floor().clamp(-1, HIST_BINS).long() + 1


def _band(values: torch.Tensor) -> torch.Tensor:
    return (torch.floor(torch.log2(values)) + 8).clamp(0, N_BANDS - 1).long()


def update_layer(stats: LayerStats, acts: torch.Tensor, seqs: torch.Tensor, domains: torch.Tensor,
                 settings: CollectFeaturesSettings, generator: torch.Generator) -> None:
    """Fold one batch of activations [windows, positions, features] into the layer's stats.

    Position 0 (BOS) has zero activations by construction.
    """
    n_windows, n_pos, n_features = acts.shape
    window_idx, pos, feature = (acts > 0).nonzero(as_tuple=True)
    if not len(feature):
        return
    values = acts[window_idx, pos, feature]
    domain = domains[window_idx]
    stats.counts.view(-1).index_add_(0, domain * n_features + feature, torch.ones_like(feature))
    flat_bins = feature * (HIST_BINS + 2) + _hist_bin(values)
    stats.histogram.view(-1).index_add_(0, flat_bins, torch.ones_like(flat_bins, dtype=torch.int32))

    offsets = torch.arange(-settings.context_before, settings.context_after + 1)

    def context_of(events: torch.Tensor) -> torch.Tensor:
        w, p, f = window_idx[events], pos[events], feature[events]
        positions = p[:, None] + offsets[None, :]
        inside = (positions >= 0) & (positions < n_pos)
        gathered = acts[w[:, None], positions.clamp(0, n_pos - 1), f[:, None]]
        return torch.where(inside, gathered, torch.full_like(gathered, float("nan"))).half()

    seq = seqs[window_idx]
    pos32 = pos.int()
    stats.top.offer(feature, values, values, seq, pos32, context_of)
    random_keys = torch.rand(len(values), generator=generator)
    stats.random.offer(feature, random_keys, values, seq, pos32, context_of)
    band_keys = torch.rand(len(values), generator=generator)
    stats.bands.offer(feature * N_BANDS + _band(values), band_keys, values, seq, pos32, context_of)


_EDGES = np.geomspace(HIST_LOW, HIST_HIGH, HIST_BINS + 1)
_BIN_LOWER = np.concatenate([[0.0], _EDGES])  # bin 0 is the underflow bin
_BIN_UPPER = np.concatenate([_EDGES, [_EDGES[-1] * 10]])
_BIN_CENTRE = np.concatenate([[HIST_LOW / 2], np.sqrt(_EDGES[:-1] * _EDGES[1:]), [_EDGES[-1]]])


def quantiles_from_histogram(hist: np.ndarray) -> np.ndarray:
    """The 1st..100th percentiles of the positive activations, from the fine histogram."""
    cumulative = np.cumsum(hist)
    targets = cumulative[-1] * np.arange(1, 101) / 100
    idx = np.searchsorted(cumulative, targets, side="left").clip(0, len(hist) - 1)
    before = np.where(idx > 0, cumulative[idx - 1], 0)
    within = (targets - before) / np.maximum(hist[idx], 1)
    return _BIN_LOWER[idx] + within * (_BIN_UPPER[idx] - _BIN_LOWER[idx])


def linear_histogram(hist: np.ndarray, act_max: float, bins: int) -> list[int]:
    """Re-bin the fine histogram into `bins` equal bins over [0, act_max] (by bin centre)."""
    target = np.minimum((_BIN_CENTRE / max(act_max, 1e-12) * bins).astype(int), bins - 1)
    return np.bincount(target, weights=hist, minlength=bins).astype(np.int64).tolist()
