"""Fingerprints of every training regime's outputs: the proof that a change to the trainer's
code changed no number.

    python benchmarks/trainer_fingerprints.py [--json OUT]

Writes small seeded activation shards (3 layers, d_model 32, 4,000 tokens each, from a sparse
dictionary so there is something to learn, through the project's own `ShardWriters`) and
trains, through the public functions, each regime: per-layer TopK (two layers in one
`train_transcoders` job), TopK with a skip connection, JumpReLU by TopK then calibrated
thresholds, JumpReLU trained straight-through, ReLU + L1, a cross-layer JumpReLU transcoder,
and the straight-through and cross-layer runs again, interrupted after their second checkpoint
and resumed. Prints per regime its held-out FVU and how often it restarted silent latents, the
sha256 of every saved tensor (tensor by tensor) and of every JSON file with the
non-deterministic entries dropped (timings, `peak_rss_gb`, the CLT's random `clt_id`), in the
file's key order, and whether each resumed run's tensors equal the uninterrupted run's. Run it
before and after a change (at the older commit: a `git worktree` and PYTHONPATH=<it>/src) and
compare the `--json` files: every hash must be equal. About 10 s on one CPU thread.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations import ShardWriters, activation_schema
from circuitflow.config import (
    TrainCrossLayerTranscoderSettings,
    TrainingSettings,
    TrainTranscoderSettings,
    TranscoderArchitecture,
)
from circuitflow.io import drop_timings, read_json
from circuitflow.transcoders import train_cross_layer_transcoder, train_transcoder, train_transcoders

LAYERS, D_MODEL, TOKENS = (0, 1, 2), 32, 4000
NOT_DETERMINISTIC = {"peak_rss_gb", "clt_id"}
ADDED_SETTINGS = {"clt_sparsity": "per_layer", "clt_layer_weight_exponent": 0}  # added since: absent from older metrics
# straight-through latents fall silent later than TopK's: restart them more often, so that it happens here
STE = dict(activation="jumprelu", jumprelu_training="ste", resample_every=5)
TRAINING = dict(steps=60, batch_size=128, lr=1e-2, warmup_steps=5, eval_tokens=256, calibration_tokens=512,
                dead_tokens=1000, resample_every=10, resample_until_fraction=0.5, checkpoint_every=0,
                shuffle_row_groups=2, l1_coefficient=1e-3, seed=3, device="cpu")


def write_shards(folder: Path) -> list[Path]:
    """One shard per layer, the same tokens in the same order (as one cache_activations job
    writes them): each layer's output is a sparse code of its input plus a share of the
    previous layer's output, so a cross-layer transcoder has later-layer writes to learn."""
    rng = np.random.default_rng(0)
    paths = [folder / f"layer_{layer}.parquet" for layer in LAYERS]
    xs, ys = [], []
    for layer in LAYERS:
        x = rng.standard_normal((TOKENS, D_MODEL)).astype(np.float32) + (ys[-1] if ys else 0)
        enc = rng.standard_normal((48, D_MODEL)).astype(np.float32)
        enc /= np.linalg.norm(enc, axis=1, keepdims=True)
        dec = rng.standard_normal((48, D_MODEL)).astype(np.float32) * (layer + 1)
        y = np.maximum(x @ enc.T - 1.5, 0) @ dec + 0.5 * layer
        xs.append(x)
        ys.append(y.astype(np.float32))
    meta = {"seq": np.repeat(np.arange(TOKENS // 32, dtype=np.int32), 32),
            "pos": np.tile(np.arange(32, dtype=np.int32), TOKENS // 32),
            "doc": np.zeros(TOKENS, np.int32), "token": np.arange(TOKENS, dtype=np.int32) % 97}
    with ShardWriters(dict(zip(LAYERS, map(str, paths))), activation_schema(D_MODEL, "float16"), 500) as writers:
        for start in range(0, TOKENS, 250):
            part = slice(start, start + 250)
            for layer in LAYERS:
                writers.append(layer, {k: v[part] for k, v in meta.items()}, xs[layer][part].astype(np.float16),
                               ys[layer][part].astype(np.float16))
    return paths


def plt_settings(activation: str, skip: bool = False, **training) -> TrainTranscoderSettings:
    return TrainTranscoderSettings(
        architecture=TranscoderArchitecture(activation=activation, n_features=96, k=6, skip_connection=skip),
        training=TrainingSettings(**{**TRAINING, **training}))


def clt_settings(**training) -> TrainCrossLayerTranscoderSettings:
    return TrainCrossLayerTranscoderSettings(
        layers=LAYERS, architecture=TranscoderArchitecture(activation="jumprelu", n_features=64, k=6,
                                                           skip_connection=False),
        training=TrainingSettings(**{**TRAINING, **training}))


def train_plt(folder: Path, shard: Path, layer: int, settings: TrainTranscoderSettings) -> None:
    train_transcoder(shard_path=shard, layer=layer, out_weights=folder / f"layer_{layer}.safetensors",
                     out_architecture=folder / f"layer_{layer}.architecture.json",
                     out_metrics=folder / f"layer_{layer}.metrics.json", settings=settings)


def train_clt(folder: Path, shards: list[Path], settings: TrainCrossLayerTranscoderSettings) -> None:
    train_cross_layer_transcoder(shard_paths=shards, out_dir=folder, out_metrics=folder / "metrics.json",
                                 settings=settings)


def interrupted_then_resumed(train, *args) -> None:
    """Train until the second checkpoint is written, stop there (as a killed job would), then
    train again: the rerun resumes from that checkpoint."""
    try:  # the trainer's home; the name it had before
        checkpoint_class = importlib.import_module("circuitflow.transcoders.trainer").Checkpoint
    except ModuleNotFoundError:
        checkpoint_class = importlib.import_module("circuitflow.transcoders.training").Checkpoint
    save, saved = checkpoint_class.save, []

    def save_then_stop(self, *a, **kw):
        save(self, *a, **kw)
        saved.append(self.path)
        if len(saved) == 2:
            raise KeyboardInterrupt

    checkpoint_class.save = save_then_stop
    try:
        train(*args)
    except KeyboardInterrupt:
        pass
    finally:
        checkpoint_class.save = save
    assert len(saved) == 2 and saved[-1].is_file(), "the interrupted run left no checkpoint"
    train(*args)


def strip(value):
    value = drop_timings(value)
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items()
                if k not in NOT_DETERMINISTIC and not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def fingerprints(folder: Path) -> dict[str, str]:
    """sha256 of each tensor of each safetensors file and of each JSON file (stripped)."""
    from safetensors.numpy import load_file

    hashes = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            for name, array in sorted(load_file(path).items()):
                digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode() + array.tobytes()).hexdigest()
                hashes[f"{path.name}:{name}"] = digest
        elif path.suffix == ".json":
            text = json.dumps(strip(read_json(path)))  # in the file's key order
            hashes[path.name] = hashlib.sha256(text.encode()).hexdigest()
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write {regime: {file[:tensor]: sha256}} here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same reduction order on every machine load
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shards = write_shards(tmp)
        regimes = {
            "plt_topk": lambda out: train_transcoders(shard_paths=shards[:2], layers=[0, 1], out_dir=out,
                                                      checkpoint_dir=out / "checkpoints",
                                                      settings=plt_settings("topk")),
            "plt_topk_skip": lambda out: train_plt(out, shards[2], 2, plt_settings("topk", skip=True)),
            "plt_jumprelu_calibrated": lambda out: train_plt(out, shards[0], 0, plt_settings("jumprelu")),
            "plt_jumprelu_ste": lambda out: train_plt(out, shards[1], 1, plt_settings(**STE)),
            "plt_relu": lambda out: train_plt(out, shards[0], 0, plt_settings("relu")),
            "clt_jumprelu": lambda out: train_clt(out, shards, clt_settings()),
            "plt_jumprelu_ste_resumed": lambda out: interrupted_then_resumed(
                train_plt, out, shards[1], 1, plt_settings(**STE, checkpoint_every=15)),
            "clt_jumprelu_resumed": lambda out: interrupted_then_resumed(
                train_clt, out, shards, clt_settings(checkpoint_every=15)),
        }
        results = {}
        for regime, run in regimes.items():
            out = tmp / regime
            out.mkdir()
            run(out)
            results[regime] = fingerprints(out)
            metrics = [read_json(p) for p in sorted(out.glob("*metrics.json"))]
            print(regime, "  ".join(f"FVU {m.get('fvu', m.get('mean_fvu')):.4f}, "
                                    f"{sum(1 for c in m['curve'] if 'resampled' in c)} resamplings, "
                                    f"max dead {max(c['dead'] for c in m['curve'])}" for m in metrics))
            for name, digest in results[regime].items():
                print(f"  {digest}  {name}")
    for resumed in ("plt_jumprelu_ste", "clt_jumprelu"):
        same = {k: v for k, v in results[resumed].items() if not k.endswith(".json")}
        again = {k: v for k, v in results[f"{resumed}_resumed"].items() if not k.endswith(".json")}
        print(f"{resumed}: resumed run's tensors equal the uninterrupted run's: {same == again}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
