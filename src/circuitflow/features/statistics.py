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


def _descending_rank(keys: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32] that sorts float32 `keys` (no NaN) in descending order: the float's bits
    read as a signed integer, with the magnitude bits of negative floats flipped, are monotonic."""
    bits = keys.view(torch.int32)
    monotonic = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long()
    return (1 << 31) - monotonic


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

    def candidates(self, group: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Which entries beat their group's current minimum (a cheap prefilter; the minimum can
        be stale while events are pending, which only lets more through)."""
        return key > self.keys[group, -1]

    def offer(self, group: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              seq: torch.Tensor, pos: torch.Tensor, context_of) -> None:
        keep = self.candidates(group, key)
        if not keep.any():
            return
        idx = keep.nonzero().squeeze(-1)
        self.add(group[idx], key[idx], value[idx], seq[idx], pos[idx], context_of(idx))

    def add(self, group: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seq: torch.Tensor,
            pos: torch.Tensor, context: torch.Tensor) -> None:
        """Buffer entries (already through `candidates`), in arrival order: among equal keys the
        earlier entry wins."""
        self.pending.append((group, key, value, seq, pos, context))
        self.pending_size += len(group)
        if self.pending_size >= self.merge_at:
            self.flush()

    def flush(self) -> None:
        """Merge buffered events into the slots."""
        if not self.pending:
            return
        group, key, value, seq, pos, context = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.pending_size = [], 0
        # the touched groups in ascending order, and each entry's index among them (no sort needed)
        is_touched = torch.zeros(len(self.keys), dtype=torch.bool)
        is_touched[group] = True
        touched = is_touched.nonzero().squeeze(-1)
        n = len(touched)
        index_of = torch.empty(len(self.keys), dtype=torch.long)
        index_of[touched] = torch.arange(n)
        cand_group = torch.cat([torch.arange(n).repeat_interleave(self.slots), index_of[group]])
        cand_key = torch.cat([self.keys[touched].reshape(-1), key])
        cand_value = torch.cat([self.values[touched].reshape(-1), value])
        cand_seq = torch.cat([self.seq[touched].reshape(-1), seq])
        cand_pos = torch.cat([self.pos[touched].reshape(-1), pos])
        cand_context = torch.cat([self.context[touched].reshape(-1, self.context.shape[-1]), context])
        # one stable sort by (group, key descending): equal keys keep their arrival order, the
        # slots (earlier) before the pending entries
        order = torch.sort((cand_group << 33) + _descending_rank(cand_key), stable=True).indices
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


def firing_events(acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(window, position, feature) of every positive activation of [windows, positions, features],
    in that lexicographic order (the order in which events arrive at the statistics)."""
    return (acts > 0).nonzero(as_tuple=True)


def topk_events(values: torch.Tensor, indices: torch.Tensor,
                from_position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`firing_events` of the activations a TopK encoder scatters from its top-k `values` and
    `indices` [windows, positions, k], at positions >= `from_position`: read from the k entries
    per token instead of scanning every feature."""
    features, order = indices.sort(-1)
    fired = values.gather(-1, order) > 0
    fired[:, :from_position] = False
    window_idx, pos, slot = fired.nonzero(as_tuple=True)
    return window_idx, pos, features[window_idx, pos, slot]


def update_layer(stats: LayerStats, acts: torch.Tensor, seqs: torch.Tensor, domains: torch.Tensor,
                 settings: CollectFeaturesSettings, generator: torch.Generator, events=None) -> None:
    """Fold one batch of activations [windows, positions, features] into the layer's stats.

    Position 0 (BOS) has zero activations by construction. `events` are `firing_events(acts)`
    when the caller already has them (a TopK encoder knows them without scanning `acts`).
    """
    n_windows, n_pos, n_features = acts.shape
    window_idx, pos, feature = firing_events(acts) if events is None else events
    if not len(feature):
        return
    # index the flat tensor: one linear index per event is much cheaper than three-tensor indexing
    flat = acts.reshape(-1)
    event_index = (window_idx * n_pos + pos) * n_features + feature
    values = flat[event_index]
    domain = domains[window_idx]
    stats.counts.view(-1).index_add_(0, domain * n_features + feature, torch.ones_like(feature))
    flat_bins = feature * (HIST_BINS + 2) + _hist_bin(values)
    stats.histogram.view(-1).index_add_(0, flat_bins, torch.ones_like(flat_bins, dtype=torch.int32))

    # The keys of the random and band samples are drawn in this order whatever passes.
    random_keys = torch.rand(len(values), generator=generator)
    band_keys = torch.rand(len(values), generator=generator)
    band_group = feature * N_BANDS + _band(values)
    keep_top = stats.top.candidates(feature, values)
    keep_random = stats.random.candidates(feature, random_keys)
    keep_band = stats.bands.candidates(band_group, band_keys)
    # each event's context is gathered once, however many of the three samples take it
    kept = (keep_top | keep_random | keep_band).nonzero().squeeze(-1)
    if not len(kept):
        return
    offsets = torch.arange(-settings.context_before, settings.context_after + 1)
    kept_pos = pos[kept]
    positions = kept_pos[:, None] + offsets[None, :]
    inside = (positions >= 0) & (positions < n_pos)
    shift = (positions.clamp(0, n_pos - 1) - kept_pos[:, None]) * n_features
    context = flat[event_index[kept][:, None] + shift].masked_fill_(~inside, float("nan")).half()
    kept_seq = seqs[window_idx[kept]]
    kept_pos32 = kept_pos.int()
    for store, keep, group, key in ((stats.top, keep_top, feature, values),
                                    (stats.random, keep_random, feature, random_keys),
                                    (stats.bands, keep_band, band_group, band_keys)):
        chosen = keep[kept].nonzero().squeeze(-1)
        if len(chosen):
            idx = kept[chosen]
            store.add(group[idx], key[idx], values[idx], kept_seq[chosen], kept_pos32[chosen], context[chosen])


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
