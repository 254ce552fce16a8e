"""cache_activations: run the model over the train split and stream MLP inputs/outputs to parquet.

One forward pass per batch of windows records every requested layer's MLP input and output
(circuit-tracer's hook points, see `circuitflow.model.hooks`) and appends them to that layer's
shard (`circuitflow.activations.shards`). A manifest with per-layer statistics goes beside.
The split is read a batch at a time and each shard buffers one row group, so memory does not
grow with the number of tokens; the shards' size is estimated (`shard_bytes`) and checked
against the free space before anything is written.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations.shards import ShardWriters, activation_schema, shard_bytes
from circuitflow.config import CacheActivationsSettings
from circuitflow.io import keyed, sha256_file, write_json
from circuitflow.logs import Progress, pick_device
from circuitflow.data.dataset import iter_windows, require_free_space, split_shape, usable_positions
from circuitflow.model.facts import read_model_facts
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT, mlp_recorder
from circuitflow.model.loading import load_model

log = logging.getLogger("circuitflow.activations")

# transformers' causal-mask helpers leave about 25 cyclic objects per forward (classes made by
# torch.vmap) that only a full collection frees, and Python runs one only once such objects
# number a quarter of all objects: tens of MB that grew with the tokens cached. A full
# collection takes about 0.1 s.
FULL_GC_EVERY_BATCHES = 500


class _RunningStats:
    """Per-layer sums for the manifest: mean vector norm, mean L2 norm, total variance."""

    def __init__(self, d_model: int):
        self.n = 0
        self.sum = np.zeros(d_model, np.float64)
        self.sum_sq = 0.0
        self.sum_norm = 0.0

    def add(self, vectors) -> None:
        v = vectors.double()
        self.n += v.shape[0]
        self.sum += v.sum(0).numpy()
        self.sum_sq += float((v * v).sum())
        self.sum_norm += float(v.norm(dim=-1).sum())

    def summary(self) -> dict:
        mean = self.sum / max(self.n, 1)
        return {
            "mean_norm": float(np.linalg.norm(mean)),
            "mean_l2_norm": self.sum_norm / max(self.n, 1),
            "total_variance": self.sum_sq / max(self.n, 1) - float(mean @ mean),
        }


def require_shard_space(out_shards: dict[int, str], n_tokens: int, d_model: int, settings: CacheActivationsSettings,
                        free_bytes: int | None = None) -> None:
    """Refuse shards whose estimated size (`shard_bytes`, per layer) exceeds the free space."""
    lower = "dataset.train_tokens or activations.layers"
    if settings.dtype != "float16":
        lower += " (or set activations.dtype: float16)"
    per_shard = shard_bytes(n_tokens, d_model, settings.dtype, settings.row_group_tokens)
    require_free_space({path: per_shard for path in out_shards.values()},
                       f"cache_activations ({len(out_shards)} layers x {n_tokens:,} tokens x d_model {d_model} "
                       f"x in+out at {settings.dtype})", lower, free_bytes)


def cache_activations(*, model_dir: str | Path, train_split: str | Path, out_shards: Sequence[str | Path],
                      out_manifest: str | Path, settings: CacheActivationsSettings,
                      free_bytes: int | None = None) -> dict:
    """Stream every layer's MLP in/out over the train split into one parquet shard per layer
    (`out_shards` in the order of `settings.layers`), a batch of windows at a time: memory is
    bounded by the batch and one row group per layer, whatever the split's length. Refused
    before anything is written when the shards would not fit in the free space of their
    filesystem (`free_bytes` stands in for what it reports)."""
    out_shards = keyed(settings.layers, out_shards, "activation shards")
    n_windows, context = split_shape(train_split)
    positions = usable_positions(context)
    n_tokens = n_windows * positions
    d_model = read_model_facts(model_dir).d_model
    require_shard_space(out_shards, n_tokens, d_model, settings, free_bytes)
    device = pick_device(settings.device)
    model, _ = load_model(model_dir, settings.model_dtype)
    model.to(device)
    schema = activation_schema(d_model, settings.dtype)
    recorder = mlp_recorder(model, settings.layers)
    stats = {layer: (_RunningStats(d_model), _RunningStats(d_model)) for layer in settings.layers}
    progress = Progress(log, "cache_activations", n_tokens, "tokens")
    log.info("caching layers %s of %s: %d windows x %d tokens, d_model %d, %s",
             list(settings.layers), model_dir, n_windows, positions, d_model, settings.dtype)

    with ShardWriters(out_shards, schema, settings.row_group_tokens) as writers, torch.inference_mode():
        forward_seconds = 0.0
        for batch, (seqs, tokens, docs) in enumerate(iter_windows(train_split, settings.batch_size, context), 1):
            ids = torch.tensor(tokens, dtype=torch.long, device=device)
            began = time.perf_counter()
            captured = recorder.run(model, ids)
            forward_seconds += time.perf_counter() - began
            meta = {
                "seq": np.repeat(seqs, positions).astype(np.int32),
                "pos": np.tile(np.arange(1, context, dtype=np.int32), len(seqs)),
                "doc": docs[:, 1:].reshape(-1).astype(np.int32),
                "token": tokens[:, 1:].reshape(-1).astype(np.int32),
            }
            for layer in settings.layers:
                x, y = (t.reshape(-1, d_model).cpu() for t in captured[layer])
                stats[layer][0].add(x)
                stats[layer][1].add(y)
                writers.append(layer, meta,
                               x.to(getattr(torch, settings.dtype)).numpy(),
                               y.to(getattr(torch, settings.dtype)).numpy())
            progress.update(ids[:, 1:].numel())
            if batch % FULL_GC_EVERY_BATCHES == 0:
                gc.collect()
    recorder.close()

    manifest = {
        "model_dir": str(model_dir),
        "model_architecture": type(model).__name__,
        "train_split": str(train_split),
        "dataset_sha256": sha256_file(train_split),
        "d_model": d_model,
        "n_tokens": n_tokens,
        "context_length": context,
        "dtype": settings.dtype,
        "hooks": {"mlp_in": f"blocks.{{layer}}.{HOOK_IN}", "mlp_out": f"blocks.{{layer}}.{HOOK_OUT}"},
        "hf_modules": "input and output of decoder block `mlp` modules",
        "layers": {
            str(layer): {
                "shard": str(out_shards[layer]),
                "mlp_in": stats[layer][0].summary(),
                "mlp_out": stats[layer][1].summary(),
            }
            for layer in settings.layers
        },
        "seconds": progress.seconds,
        "forward_seconds": forward_seconds,
        "tokens_per_second": n_tokens / progress.seconds,
    }
    write_json(out_manifest, manifest)
    log.info("cached %d tokens x %d layers in %.1fs (%.0f tokens/s; forward alone %.1fs)",
             n_tokens, len(settings.layers), progress.seconds, manifest["tokens_per_second"], forward_seconds)
    return manifest


