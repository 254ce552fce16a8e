"""cache_activations' peak memory as the train split grows (goal: flat, bounded by the batch and row groups).

    python benchmarks/cache_memory.py [--scales 1,4,16] [--tokens 40000] [--batch-size 32]

Builds the tests' tiny model (a random 2-layer Llama, d_model 64, SmolLM2's tokenizer: see
tests/conftest.py), prepares train splits of 1x, 4x and 16x `--tokens` tokens from the shipped
corpus (context 32 and row groups of 1,024 tokens, as the tests' tiny workflow config; a small
shuffle buffer, so that only the tokens needed are read) and runs the real `cache_activations`
on each, both layers, in a fresh Python process.
Prints, per split, the child's peak RSS (its getrusage, from wait4), the tokens cached, the
seconds and tokens/s, then the ratio of the peak RSS of the largest split to the smallest.
Setup (model, splits) runs in its own child process, so the parent stays small: Linux counts
the parent's RSS into the peak of each child it starts afterwards. Children run torch on one
thread: memory is what is measured, and on a shared machine torch's spinning threads made the
same run up to 20x slower.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = 32
LAYERS = (0, 1)
ROW_GROUP_TOKENS = 1024
SHUFFLE_BUFFER = 2000  # records; the shipped corpus (22,051) would be read and tokenized whole


def setup(args: argparse.Namespace) -> None:
    """The tiny model and one train split per scale, in `args.tmp`."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import CORPUS, SMOLLM2_SOURCE, build_tiny_llama
    from transformers import AutoTokenizer

    from circuitflow.config import PrepareDatasetSettings, PrepareModelSettings
    from circuitflow.data import prepare_dataset
    from circuitflow.model import prepare_model
    from circuitflow.model.source import resolve_source

    tmp = Path(args.tmp)
    source = resolve_source(SMOLLM2_SOURCE)
    tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
    build_tiny_llama(tmp / "tiny-source", tokenizer)
    prepare_model(out_dir=tmp / "model", settings=PrepareModelSettings(source=str(tmp / "tiny-source")))
    for scale in scales(args):
        out = tmp / f"{scale}x"
        settings = PrepareDatasetSettings(source=str(CORPUS), context_length=CONTEXT,
                                          train_tokens=scale * args.tokens, validation_tokens=CONTEXT * 4,
                                          shuffle_buffer=SHUFFLE_BUFFER)
        prepare_dataset(model_dir=tmp / "model", out_train=out / "train.parquet",
                        out_validation=out / "validation.parquet", out_summary=out / "summary.json",
                        settings=settings)


def cache(args: argparse.Namespace) -> None:
    """One cache_activations run; prints a JSON line for the parent."""
    from circuitflow.activations import cache_activations
    from circuitflow.config import CacheActivationsSettings

    split = Path(args.split)
    settings = CacheActivationsSettings(layers=LAYERS, batch_size=args.batch_size, row_group_tokens=ROW_GROUP_TOKENS,
                                        device="cpu")
    manifest = cache_activations(model_dir=Path(args.tmp) / "model", train_split=split,
                                 out_shards=[str(split.parent / f"layer_{layer}.parquet") for layer in LAYERS],
                                 out_manifest=split.parent / "manifest.json", settings=settings)
    shard_bytes = sum((split.parent / f"layer_{layer}.parquet").stat().st_size for layer in LAYERS)
    print(json.dumps({"tokens": manifest["n_tokens"], "seconds": manifest["seconds"], "shard_bytes": shard_bytes}))


def run_child(args: argparse.Namespace, *extra: str) -> tuple[str, int]:
    """(the child's stdout, its peak RSS in bytes)."""
    command = [sys.executable, __file__, "--tmp", args.tmp, "--tokens", str(args.tokens), "--scales", args.scales,
               "--batch-size", str(args.batch_size), *extra]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        output = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            sys.exit(f"{' '.join(extra)} failed:\n{errors.read().decode()[-3000:]}")
    return output.decode(), usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def scales(args: argparse.Namespace) -> list[int]:
    return [int(s) for s in args.scales.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,4,16", help="split sizes, in multiples of --tokens")
    parser.add_argument("--tokens", type=int, default=40_000, help="train tokens of the 1x split")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward (activations.batch_size)")
    parser.add_argument("--child", choices=("setup", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        {"setup": setup, "cache": cache}[args.child](args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="cache-memory-") as tmp:
        args.tmp = tmp
        run_child(args, "--child", "setup")
        print(f"tiny model ({len(LAYERS)} layers, d_model 64), context {CONTEXT}, batch {args.batch_size} windows, "
              f"row groups of {ROW_GROUP_TOKENS} tokens; one fresh process per split")
        print(f"{'split':>6} {'tokens':>10} {'shards MB':>10} {'peak RSS MB':>12} {'seconds':>8} {'tokens/s':>9}")
        for scale in scales(args):
            split = Path(tmp) / f"{scale}x" / "train.parquet"
            output, peak = run_child(args, "--child", "cache", "--split", str(split))
            result = json.loads(output.strip().splitlines()[-1])
            peaks[scale] = peak
            print(f"{scale:>5}x {result['tokens']:>10,} {result['shard_bytes'] / 1e6:>10.1f} {peak / 2**20:>12.0f} "
                  f"{result['seconds']:>8.1f} {result['tokens'] / result['seconds']:>9,.0f}")
            for shard in split.parent.glob("layer_*.parquet"):
                shard.unlink()  # the next split's shards need the room
    largest, smallest = max(peaks), min(peaks)
    print(f"peak RSS {largest}x / {smallest}x: {peaks[largest] / peaks[smallest]:.2f}  "
          f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB peak)")


if __name__ == "__main__":
    main()
