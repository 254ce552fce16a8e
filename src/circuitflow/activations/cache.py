"""cache_activations: run the model over the train split and stream MLP inputs/outputs to parquet.

One forward pass per batch of windows records every requested layer's MLP input and output
(circuit-tracer's hook points, see `circuitflow.model.hooks`) and appends them to that layer's
shard (`circuitflow.activations.shards`). A manifest with per-layer statistics goes beside.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations.shards import ShardWriters, activation_schema
from circuitflow.config import CacheActivationsSettings
from circuitflow.io import keyed, sha256_file, write_json
from circuitflow.logs import Progress, pick_device
from circuitflow.data.dataset import read_windows, usable_positions
from circuitflow.model.facts import read_model_facts
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT, mlp_recorder
from circuitflow.model.loading import load_model

log = logging.getLogger("circuitflow.activations")


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


def cache_activations(*, model_dir: str | Path, train_split: str | Path, out_shards: Sequence[str | Path],
                      out_manifest: str | Path, settings: CacheActivationsSettings) -> dict:
    """Stream every layer's MLP in/out over the train split into one parquet shard per layer
    (`out_shards` in the order of `settings.layers`)."""
    out_shards = keyed(settings.layers, out_shards, "activation shards")
    device = pick_device(settings.device)
    model, _ = load_model(model_dir, settings.model_dtype)
    model.to(device)
    windows = read_windows(train_split)
    tokens = windows.column("tokens").to_pylist()
    docs = windows.column("docs").to_pylist()
    seqs = windows.column("seq").to_numpy()
    d_model = read_model_facts(model_dir).d_model
    context = len(tokens[0])
    positions = usable_positions(context)
    n_tokens = len(tokens) * positions
    schema = activation_schema(d_model, settings.dtype)
    recorder = mlp_recorder(model, settings.layers)
    stats = {layer: (_RunningStats(d_model), _RunningStats(d_model)) for layer in settings.layers}
    progress = Progress(log, "cache_activations", n_tokens, "tokens")
    log.info("caching layers %s of %s: %d windows x %d tokens, d_model %d, %s",
             list(settings.layers), model_dir, len(tokens), positions, d_model, settings.dtype)

    with ShardWriters(out_shards, schema, settings.row_group_tokens) as writers, torch.inference_mode():
        forward_seconds = 0.0
        for start in range(0, len(tokens), settings.batch_size):
            stop = min(start + settings.batch_size, len(tokens))
            ids = torch.tensor(tokens[start:stop], dtype=torch.long, device=device)
            began = time.perf_counter()
            captured = recorder.run(model, ids)
            forward_seconds += time.perf_counter() - began
            meta = {
                "seq": np.repeat(seqs[start:stop], positions).astype(np.int32),
                "pos": np.tile(np.arange(1, context, dtype=np.int32), stop - start),
                "doc": np.asarray([d[1:] for d in docs[start:stop]], np.int32).reshape(-1),
                "token": ids[:, 1:].reshape(-1).cpu().numpy().astype(np.int32),
            }
            for layer in settings.layers:
                x, y = (t.reshape(-1, d_model).cpu() for t in captured[layer])
                stats[layer][0].add(x)
                stats[layer][1].add(y)
                writers.append(layer, meta,
                               x.to(getattr(torch, settings.dtype)).numpy(),
                               y.to(getattr(torch, settings.dtype)).numpy())
            progress.update(ids[:, 1:].numel())
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


