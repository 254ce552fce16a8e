"""Benchmark: what training a cross-layer transcoder costs, against the parse-time estimate.

    python benchmarks/clt_training_cost.py [--layers 30] [--d-model 576] [--n-features 512] [--k 16]
                                           [--steps 20] [--device auto]

Trains the real `train_cross_layer_transcoder` (the default recipe: TopK per layer, then
JumpReLU thresholds) on synthetic lockstep shards of the given shape (SmolLM2's by default) and
prints seconds per step, training tokens/s, the process's peak RSS and, on CUDA, the peak GPU
memory, beside `circuitflow.config_rules.cross_layer_memory`'s estimate (the figure a config is
checked against when the workflow is parsed). The shards are written first (not timed).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations import ShardWriters, activation_schema
from circuitflow.config import TrainCrossLayerTranscoderSettings, TrainingSettings, TranscoderArchitecture
from circuitflow.config_rules import cross_layer_memory
from circuitflow.logs import pick_device
from circuitflow.transcoders import train_cross_layer_transcoder

ROW_GROUP_TOKENS = 8192


def lockstep_shards(folder: Path, n_layers: int, tokens: int, d: int) -> list[str]:
    """One float16 shard per layer over the same tokens: x random, y a fixed nonlinear map of it."""
    rng = np.random.default_rng(0)
    paths = {layer: str(folder / f"layer_{layer}.parquet") for layer in range(n_layers)}
    maps = [rng.standard_normal((d, d)).astype(np.float32) / np.sqrt(d) for _ in range(n_layers)]
    with ShardWriters(paths, activation_schema(d, "float16"), ROW_GROUP_TOKENS) as writers:
        for start in range(0, tokens, 4096):
            n = min(4096, tokens - start)
            index = np.arange(start, start + n, dtype=np.int32)
            columns = {"seq": index // 64, "pos": index % 64 + 1, "doc": index // 64, "token": index % 1000}
            for layer in range(n_layers):
                x = rng.standard_normal((n, d)).astype(np.float32)
                writers.append(layer, columns, x.astype(np.float16), np.tanh(x @ maps[layer]).astype(np.float16))
    return [paths[layer] for layer in range(n_layers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--n-features", type=int, default=512)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--calibration-tokens", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    n, d, batch = args.layers, args.d_model, args.batch_size
    eval_tokens = batch
    training = TrainingSettings(steps=args.steps, batch_size=batch, eval_tokens=eval_tokens, checkpoint_every=0,
                                calibration_tokens=args.calibration_tokens, device=device)
    architecture = TranscoderArchitecture(activation="jumprelu", n_features=args.n_features, k=args.k,
                                          skip_connection=False)
    estimate = cross_layer_memory(n, d, args.n_features, shuffle_row_groups=training.shuffle_row_groups,
                                  row_group_tokens=ROW_GROUP_TOKENS, cache_bytes=2, eval_tokens=eval_tokens,
                                  calibration_tokens=args.calibration_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = (args.steps + 1) * batch + args.calibration_tokens + eval_tokens + ROW_GROUP_TOKENS
        started = time.perf_counter()
        shards = lockstep_shards(tmp, n, tokens, d)
        written = time.perf_counter() - started
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        metrics = train_cross_layer_transcoder(
            shard_paths=shards, out_dir=tmp / "clt", out_metrics=tmp / "clt.metrics.json",
            settings=TrainCrossLayerTranscoderSettings(layers=tuple(range(n)), architecture=architecture,
                                                       training=training))
    figures = {
        "device": device, "layers": n, "d_model": d, "n_features": args.n_features, "k": args.k, "batch": batch,
        "steps": args.steps, "shard_seconds": written, "parameters": metrics["parameters"],
        "seconds_per_step": metrics["seconds_per_step"], "tokens_per_second": metrics["training_tokens_per_second"],
        "job_seconds": metrics["seconds"], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
        "estimate_gb": estimate["total_bytes"] / 1e9, "estimate_state_gb": estimate["state_bytes"] / 1e9,
        "estimate_data_gb": estimate["data_bytes"] / 1e9,
    }
    print(f"CLT on {device}: {n} layers x {args.n_features} features, d_model {d}, k {args.k}, batch {batch}, "
          f"{args.steps} steps, {metrics['parameters'] / 1e6:.1f}M parameters")
    print(f"  seconds per step : {figures['seconds_per_step']:8.3f}  ({figures['tokens_per_second']:.0f} tokens/s)")
    print(f"  job              : {figures['job_seconds']:8.1f} s (calibration and evaluation included)")
    print(f"  peak RSS         : {figures['peak_rss_gb']:8.2f} GB"
          + (f"; peak CUDA memory {figures['peak_cuda_gb']:.2f} GB" if device == "cuda" else ""))
    print(f"  parse-time estimate: {figures['estimate_gb']:6.2f} GB ({figures['estimate_state_gb']:.2f} GB state, "
          f"{figures['estimate_data_gb']:.2f} GB data, the rest the runtime allowance)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
