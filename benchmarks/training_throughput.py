"""Benchmark: transcoder training tokens/s against this machine's dense matmul FLOP rate.

    python benchmarks/training_throughput.py [--steps 60] [--n-features 2048] [--k 32] [--d-model 576]

Trains the real `train_transcoder` (TopK, skip connection, the default recipe, float32; bf16
autocast for the encoder on CUDA) on a synthetic shard of SmolLM2's shape, and counts the
FLOPs of one training step per token: encoder forward and weight gradient (4·d·n), skip
forward and weight gradient (4·d²), sparse decoder forward and gradients (6·k·d); the
AuxK/resampling extras are left out, so the figure is a lower bound on the work done. The
reference is the best of `torch.mm` at the encoder's shape ([batch, d] @ [d, n]) on the same
device and threads. Goal: achieved FLOP/s >= 0.5 of the matmul rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations import ShardWriters, activation_schema
from circuitflow.config import TrainingSettings, TrainTranscoderSettings, TranscoderArchitecture
from circuitflow.logs import pick_device
from circuitflow.transcoders import train_transcoder


def matmul_rate(batch: int, d: int, n: int, device: str, repeats: int = 20) -> float:
    a, b = torch.randn(batch, d, device=device), torch.randn(d, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * batch * d * n / best


def synthetic_shard(path: Path, tokens: int, d: int) -> None:
    rng = np.random.default_rng(0)
    with ShardWriters({0: str(path)}, activation_schema(d, "float16"), 8192) as writers:
        for start in range(0, tokens, 4096):
            n = min(4096, tokens - start)
            x = rng.standard_normal((n, d)).astype(np.float16)
            writers.append(0, {"seq": np.zeros(n, np.int32), "pos": np.ones(n, np.int32),
                               "doc": np.zeros(n, np.int32), "token": np.zeros(n, np.int32)},
                           x, np.tanh(x).astype(np.float16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--n-features", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    d, n, k, batch = args.d_model, args.n_features, args.k, args.batch_size
    architecture = TranscoderArchitecture(activation="topk", n_features=n, k=k, skip_connection=True)
    training = TrainingSettings(steps=args.steps, batch_size=batch, eval_tokens=batch, checkpoint_every=0,
                                device=device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_shard(tmp / "layer_0.parquet", (args.steps + 2) * batch, d)
        metrics = train_transcoder(shard_path=tmp / "layer_0.parquet", layer=0, out_weights=tmp / "w.safetensors",
                                   out_architecture=tmp / "a.json", out_metrics=tmp / "m.json",
                                   settings=TrainTranscoderSettings(architecture=architecture, training=training))
    tokens_per_second = metrics["training_tokens_per_second"]
    flops_per_token = 4 * d * n + 4 * d * d + 6 * k * d
    achieved = tokens_per_second * flops_per_token
    reference = matmul_rate(batch, d, n, device)
    print(f"device {device}, {args.threads} threads; d_model {d}, {n} latents, k {k}, batch {batch}, {args.steps} steps")
    print(f"  training             : {tokens_per_second:10.0f} tokens/s = {achieved / 1e9:7.2f} GFLOP/s "
          f"({flops_per_token / 1e6:.2f} MFLOP/token)")
    print(f"  torch.mm [{batch}x{d}]@[{d}x{n}]: {reference / 1e9:7.2f} GFLOP/s")
    print(f"  ratio                : {achieved / reference:10.3f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
