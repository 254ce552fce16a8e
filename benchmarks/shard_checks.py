"""Read-throughput cost of verifying activation shards' page checksums (goal: under 5 %).

    python benchmarks/shard_checks.py [--tokens 40000] [--d-model 576] [--repeats 7]

Writes one shard the way cache_activations does (float16, the default run's d_model and row
group size, page checksums on), then measures, alternately with parquet's CRC verification
as `ActivationShard` does it (each row group checked on its first read) and with none:

- one pass over every row group (both vector columns as numpy arrays): the worst case, since
  every byte is checked;
- the training data path of the default run: `train_transcoder`'s batch stream, 250 batches
  of 1,024 tokens (about 6 epochs of the shard), float32 conversion and shuffling included.

Prints the best time of each, tokens/s, and the overhead. Run it with nothing else running.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from circuitflow.activations import ActivationShard, ShardWriters, activation_schema
from circuitflow.config import TrainingSettings
from circuitflow.transcoders.batches import ShardBatches


def open_shard(path: Path, verify: bool) -> ActivationShard:
    shard = ActivationShard(path)
    if not verify:
        shard.file = shard.unverified_file
    return shard


def one_pass(path: Path, verify: bool) -> float:
    shard = open_shard(path, verify)
    started = time.perf_counter()
    for index in range(len(shard.row_group_sizes)):
        shard.read_row_group(index)
    return time.perf_counter() - started


def training_stream(path: Path, verify: bool, steps: int, batch_size: int) -> float:
    shard = open_shard(path, verify)
    settings = TrainingSettings(batch_size=batch_size, steps=steps)
    started = time.perf_counter()
    batches = ShardBatches(shard, settings, np.random.default_rng(0))
    batches.eval_set()
    stream = iter(batches)
    for _ in range(steps):
        next(stream)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--row-group-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=250, help="training batches (the default run's steps)")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "layer_0.parquet"
        with ShardWriters({0: str(path)}, activation_schema(args.d_model, "float16"), args.row_group_tokens) as writers:
            for start in range(0, args.tokens, 1024):
                n = min(1024, args.tokens - start)
                zeros = np.zeros(n, np.int32)
                writers.append(0, {"seq": zeros, "pos": zeros, "doc": zeros, "token": zeros},
                               rng.standard_normal((n, args.d_model)).astype(np.float16),
                               rng.standard_normal((n, args.d_model)).astype(np.float16))
        size_mb = path.stat().st_size / 1e6
        print(f"shard: {args.tokens} tokens x d_model {args.d_model}, float16, {size_mb:.1f} MB, "
              f"row groups of {args.row_group_tokens}; best of {args.repeats}")
        one_pass(path, True)  # warm the page cache
        cases = (("one pass over the shard", lambda verify: one_pass(path, verify), args.tokens),
                 (f"training stream, {args.steps} x {args.batch_size} tokens",
                  lambda verify: training_stream(path, verify, args.steps, args.batch_size),
                  args.steps * args.batch_size))
        for label, run, tokens in cases:
            on, off = [], []
            for _ in range(args.repeats):  # interleaved
                on.append(run(True))
                off.append(run(False))
            best_on, best_off = min(on), min(off)
            print(f"[{label}]")
            print(f"  without verification : {best_off * 1e3:8.1f} ms  ({tokens / best_off:10.0f} tokens/s)")
            print(f"  with verification    : {best_on * 1e3:8.1f} ms  ({tokens / best_on:10.0f} tokens/s)")
            print(f"  overhead             : {100 * (best_on / best_off - 1):8.1f} %  (goal < 5 %)")


if __name__ == "__main__":
    main()
