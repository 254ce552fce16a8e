"""Benchmark: pipeline throughput against a bare `model(...)` forward on the same batches.

    python benchmarks/throughput.py [--run smollm2-135m] [--windows 160] [--batch-size 8] [--stages ...]

Uses the default run's outputs (model folder, dataset splits, transcoders): run the pipeline
first. All timings use the same windows, batch size and thread count; the bare forward is the
full model with its LM head (what a user would call).

- cache_activations (train split, every layer, parquet writing included): goal >= 0.9x;
- collect_features (validation split, every layer's transcoder, top-k/quantile/reservoir
  tracking included; JSON writing excluded): goal >= 0.8x.

Prints tokens/s for each and the ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml

from circuitflow.activations import cache_activations
from circuitflow.config import settings_for
from circuitflow.data import usable_positions
from circuitflow.features import collect_features
from circuitflow.model import load_model, read_model_facts

STAGES = ["cache_activations", "collect_features"]
GOALS = {"cache_activations": 0.9, "collect_features": 0.8}  # throughput as a fraction of a bare forward
SPLITS = {"cache_activations": "train", "collect_features": "validation"}


def bare_forward(model, tokens: list[list[int]], batch_size: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            model(input_ids=torch.tensor(tokens[start:start + batch_size]), use_cache=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--run", default="smollm2-135m", help="results/<run>/ of the pipeline")
    parser.add_argument("--windows", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--config", default="config/config.yaml", help="the run's config (settings of both stages)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=STAGES, help="stages to time (default: both)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = Path("results") / args.run
    model, _ = load_model(args.model_dir)
    n_layers = read_model_facts(args.model_dir).n_layers
    layers = tuple(range(n_layers))
    config = yaml.safe_load(Path(args.config).read_text())
    cache_settings = dataclasses.replace(settings_for("cache_activations", config, layers=layers),
                                         batch_size=args.batch_size, device="cpu")
    collect_settings = dataclasses.replace(
        settings_for("collect_features", config, layers=layers, source_id="benchmark"),
        batch_size=args.batch_size, device="cpu")
    print(f"model: {args.model_dir} ({n_layers} layers), {args.windows} windows, batch {args.batch_size}, "
          f"{args.threads} threads, best of {args.repeats}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for label in args.stages:
            split, goal = SPLITS[label], GOALS[label]
            table = pq.read_table(results / "dataset" / f"{split}.parquet").slice(0, args.windows)
            tokens = table.column("tokens").to_pylist()
            n_tokens = len(tokens) * usable_positions(len(tokens[0]))
            subset = tmp / f"{split}.parquet"
            pq.write_table(table, subset)
            bare_forward(model, tokens[: args.batch_size], args.batch_size)  # warm-up
            bare, timed = [], []
            for _ in range(args.repeats):  # interleaved, best of each
                bare.append(bare_forward(model, tokens, args.batch_size))
                if label == "cache_activations":
                    shards = [str(tmp / f"layer_{layer}.parquet") for layer in layers]
                    manifest = cache_activations(model_dir=args.model_dir, train_split=subset, out_shards=shards,
                                                 out_manifest=tmp / "manifest.json", settings=cache_settings)
                    timed.append(manifest["seconds"])
                else:
                    meta = collect_features(model_dir=args.model_dir,
                                            transcoder_set=results / "transcoders" / "config.yaml",
                                            validation_split=subset, out_dir=tmp / "features",
                                            out_metadata=tmp / "features.json", settings=collect_settings)
                    timed.append(meta["seconds"]["collect"])
            bare_rate, rate = n_tokens / min(bare), n_tokens / min(timed)
            print(f"[{label}] {n_tokens} tokens of the {split} split")
            print(f"  bare model(...) forward : {bare_rate:8.1f} tokens/s")
            print(f"  {label:<24}: {rate:8.1f} tokens/s")
            print(f"  ratio                   : {rate / bare_rate:8.3f}  (goal >= {goal})")


if __name__ == "__main__":
    main()
