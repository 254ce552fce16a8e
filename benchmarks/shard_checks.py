"""Read-throughput cost of verifying activation shards' page checksums (goal: under 5 %).

    python benchmarks/shard_checks.py [--tokens 40000] [--d-model 576] [--repeats 7]

Writes one shard the way cache_activations does (float16, the default run's d_model and row
group size, page checksums on), then reads every row group of both vector columns back as
numpy arrays, as training does, alternately with parquet's CRC verification on (what
`ActivationShard` does) and off. Prints the best time of each, tokens/s, and the overhead.
Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from circuitflow.activations import ActivationShard, ShardWriters, activation_schema


def read_all(shard: ActivationShard) -> float:
    started = time.perf_counter()
    for index in range(len(shard.row_group_sizes)):
        shard.read_row_group(index)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=40_000)
    parser.add_argument("--d-model", type=int, default=576)
    parser.add_argument("--row-group-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=7)
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
        checked = ActivationShard(path)
        unchecked = ActivationShard(path)
        unchecked.file = pq.ParquetFile(path, page_checksum_verification=False)
        read_all(checked), read_all(unchecked)  # warm the page cache
        on, off = [], []
        for _ in range(args.repeats):
            on.append(read_all(checked))
            off.append(read_all(unchecked))
        size_mb = path.stat().st_size / 1e6
    best_on, best_off = min(on), min(off)
    print(f"shard: {args.tokens} tokens x d_model {args.d_model}, float16, {size_mb:.1f} MB, "
          f"row groups of {args.row_group_tokens}; best of {args.repeats}")
    print(f"  without verification: {best_off * 1e3:8.1f} ms  ({args.tokens / best_off:12.0f} tokens/s)")
    print(f"  with CRC verification: {best_on * 1e3:7.1f} ms  ({args.tokens / best_on:12.0f} tokens/s)")
    print(f"  overhead: {100 * (best_on / best_off - 1):.1f} %  (goal < 5 %)")


if __name__ == "__main__":
    main()
