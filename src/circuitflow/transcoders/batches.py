"""Training batches from activation shards: one shard's seeded stream (`ShardBatches`), every
layer's shard in lockstep for a cross-layer transcoder (`LockstepBatches`, on shards checked
to hold the same tokens by `aligned_shards`), and the unit-RMS rescaling both trainers apply."""

from __future__ import annotations

import numpy as np
import torch

from circuitflow.activations.shards import ActivationShard
from circuitflow.config import TrainingSettings


class ShardBatches:
    """Seeded streaming batches from one shard: row groups in random order, rows shuffled
    within a buffer of `shuffle_row_groups` row groups. The last `eval_tokens` rows are held out."""

    def __init__(self, shard: ActivationShard, settings: TrainingSettings, rng: np.random.Generator):
        self.shard, self.settings, self.rng = shard, settings, rng
        self.train_rows = shard.n_rows - settings.eval_tokens
        if self.train_rows < settings.batch_size:
            raise ValueError(
                f"activation shard {shard.path} has {shard.n_rows} tokens: too few for eval_tokens="
                f"{settings.eval_tokens} plus one batch of {settings.batch_size}")
        self.offsets = np.cumsum([0] + shard.row_group_sizes)

    def _row_group(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.shard.read_row_group(index)
        keep = max(0, min(len(data["mlp_in"]), self.train_rows - self.offsets[index]))
        return data["mlp_in"][:keep], data["mlp_out"][:keep]

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for index in range(len(self.shard.row_group_sizes)):
            if self.offsets[index + 1] <= self.train_rows:
                continue
            data = self.shard.read_row_group(index)
            skip = max(0, self.train_rows - self.offsets[index])
            xs.append(data["mlp_in"][skip:])
            ys.append(data["mlp_out"][skip:])
        return (torch.from_numpy(np.concatenate(xs).astype(np.float32)),
                torch.from_numpy(np.concatenate(ys).astype(np.float32)))

    def __iter__(self):
        groups = [i for i in range(len(self.shard.row_group_sizes)) if self.offsets[i] < self.train_rows]
        size = self.settings.batch_size
        leftover_x = leftover_y = None
        while True:  # epochs until the caller stops
            order = self.rng.permutation(groups)
            for start in range(0, len(order), self.settings.shuffle_row_groups):
                parts = [self._row_group(i) for i in order[start:start + self.settings.shuffle_row_groups]]
                x = np.concatenate([p[0] for p in parts] + ([leftover_x] if leftover_x is not None else []))
                y = np.concatenate([p[1] for p in parts] + ([leftover_y] if leftover_y is not None else []))
                perm = self.rng.permutation(len(x))
                full = len(x) // size * size
                for b in range(0, full, size):
                    idx = perm[b:b + size]
                    yield (torch.from_numpy(x[idx].astype(np.float32)),
                           torch.from_numpy(y[idx].astype(np.float32)))
                rest = perm[full:]
                leftover_x, leftover_y = x[rest], y[rest]


def aligned_shards(paths) -> list[ActivationShard]:
    """The shards of `paths`, after checking that they hold the same tokens in the same order
    (same row groups and d_model, same ``seq``/``pos`` in the first and last row group)."""
    shards = [ActivationShard(path) for path in paths]
    first = shards[0]
    for shard in shards[1:]:
        if shard.row_group_sizes != first.row_group_sizes or shard.d_model != first.d_model:
            raise ValueError(f"activation shards {first.path} and {shard.path} differ in rows or d_model; "
                             "rebuild the activations (all layers come from one cache_activations job)")
    ends = (0, len(first.row_group_sizes) - 1)
    for index in ends:
        reference = first.read_row_group(index, ("seq", "pos"))
        for shard in shards[1:]:
            other = shard.read_row_group(index, ("seq", "pos"))
            if any(not np.array_equal(reference[c], other[c]) for c in ("seq", "pos")):
                raise ValueError(f"activation shards {first.path} and {shard.path} hold different tokens in row "
                                 f"group {index}; rebuild the activations")
    return shards


class LockstepBatches:
    """Aligned batches from every layer's shard: ([B, n_layers, d], [B, n_layers, d]). One
    `ShardBatches` per shard, all with the same seed, so token t of every layer's batch is the
    same token."""

    def __init__(self, shards, settings, seed):
        self.parts = [ShardBatches(shard, settings, np.random.default_rng(seed)) for shard in shards]

    def eval_set(self):
        pairs = [part.eval_set() for part in self.parts]
        return torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)

    def __iter__(self):
        streams = [iter(part) for part in self.parts]
        while True:
            pairs = [next(stream) for stream in streams]
            yield torch.stack([p[0] for p in pairs], 1), torch.stack([p[1] for p in pairs], 1)


def take_tokens(stream, n_tokens: int, scale_x, scale_y, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The next `n_tokens` MLP inputs and outputs of the batch stream, rescaled as in training
    (the scales are numbers, or per-layer tensors that broadcast over a lockstep batch)."""
    xs, ys, have = [], [], 0
    while have < n_tokens:
        x, y = next(stream)
        xs.append(x)
        ys.append(y)
        have += len(x)
    return ((torch.cat(xs)[:n_tokens] / scale_x).to(device), (torch.cat(ys)[:n_tokens] / scale_y).to(device))


def centred_rms(t: torch.Tensor) -> float:
    """Root mean square of the centred entries (1.0 for a constant tensor)."""
    rms = float((t - t.mean(0)).pow(2).mean().sqrt())
    return rms if rms > 0 else 1.0
