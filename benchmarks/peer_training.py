"""Benchmark: our transcoder recipe against EleutherAI's sparsify at equal budget, same batches.

    python benchmarks/peer_training.py [--run smollm2-135m] [--layers 3 12 28] [--steps 250]
        [--activation jumprelu [--jumprelu-training ste]]

Needs the default run's activation shards (`snakemake --cores 2 activations`) and sparsify
(`pip install --no-deps eai-sparsify==1.3.3 schedulefree simple-parsing docstring-parser natsort
einops` into the project's venv; its other requirements are already there).

Per layer, both trainers see the same cached tokens in the same order: ours through
`train_transcoder` itself (the run's config, `--steps` steps), sparsify through the same seeded
batch stream, with its own defaults for a skip transcoder: `SparseCoder(transcode=True)` (zero
decoder, kaiming encoder, encoder bias centring the mean input, b_dec = mean output), its FVU
loss, SignSGD in a schedule-free wrapper (momentum 0.95, lr 5e-3 / sqrt(n_latents / 2^14)), no
AuxK; evaluated with the schedule-free averaged weights (`optimizer.eval()`), as sparsify saves.

Both are measured on the same held-out tokens (the shard's last `transcoder.eval_tokens` rows):
FVU, FVU without the 1 % of tokens with the largest MLP-output norm, L0, dead % (no firing in
the last `transcoder.dead_tokens` training tokens, counted the same way for both), never fired
on the held-out tokens %, and the training loop's wall seconds. Prints a markdown table and the
ratios ours / sparsify; the goal is FVU ratio <= 1 and dead ratio <= 2 on every layer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from circuitflow.activations.shards import ActivationShard
from circuitflow.config import settings_for
from circuitflow.transcoders import load_transcoder, train_transcoder
from circuitflow.transcoders.batches import ShardBatches


@torch.no_grad()
def held_out_metrics(predict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """`predict(x) -> (y_hat, acts)` measured on held-out tokens."""
    y_hat, acts = predict(x)
    error = (y - y_hat).pow(2).sum(-1)
    centred = (y - y.mean(0)).pow(2).sum(-1)
    keep = y.norm(dim=-1) <= torch.quantile(y.norm(dim=-1), 0.99)
    return {"fvu": float(error.sum() / centred.sum()),
            "fvu_without_top1pct": float(error[keep].sum() / (y[keep] - y[keep].mean(0)).pow(2).sum()),
            "l0": float((acts > 0).float().sum(-1).mean()),
            "never_fired": float(((acts > 0).sum(0) == 0).float().mean())}


def train_ours(shard: Path, layer: int, settings, folder: Path) -> dict:
    out = [folder / f"layer_{layer}{suffix}" for suffix in (".safetensors", ".architecture.json", ".metrics.json")]
    metrics = train_transcoder(shard_path=shard, layer=layer, out_weights=out[0], out_architecture=out[1],
                               out_metrics=out[2], settings=settings)
    transcoder = load_transcoder(out[0])

    def predict(x):
        acts = transcoder.encode(x)
        return transcoder.decode(acts, x), acts

    seconds = metrics["steps"] * metrics["training"]["batch_size"] / metrics["training_tokens_per_second"]
    return {"predict": predict, "dead": metrics["dead_fraction"], "seconds": seconds}


def train_sparsify(shard: Path, layer: int, settings) -> dict:
    from schedulefree import ScheduleFreeWrapper
    from sparsify.config import SparseCoderConfig
    from sparsify.sign_sgd import SignSGD
    from sparsify.sparse_coder import SparseCoder

    architecture, training = settings.architecture, settings.training
    batches = ShardBatches(ActivationShard(shard), training, np.random.default_rng([training.seed, layer]))
    torch.manual_seed(training.seed * 1000 + layer)
    config = SparseCoderConfig(num_latents=architecture.n_features, k=architecture.k, transcode=True,
                               skip_connection=architecture.skip_connection)
    sae = SparseCoder(ActivationShard(shard).d_model, config)
    lr = 5e-3 / math.sqrt(architecture.n_features / 2 ** 14)
    optimizer = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    optimizer.train()
    since_fired = torch.zeros(architecture.n_features, dtype=torch.long)
    started = time.perf_counter()
    for step, (x, y) in zip(range(training.steps), batches):
        if step == 0:
            sae.encoder.bias.data = -x.mean(0) @ sae.encoder.weight.data.T
            sae.b_dec.data = y.mean(0)
        out = sae(x=x, y=y)
        out.fvu.backward()
        optimizer.step()
        optimizer.zero_grad()
        since_fired += len(x)
        since_fired[out.latent_indices.flatten()] = 0
    seconds = time.perf_counter() - started
    optimizer.eval()  # the schedule-free averaged weights, which sparsify saves

    def predict(x):
        top_acts, top_indices, _ = sae.encode(x)
        acts = torch.zeros(len(x), architecture.n_features).scatter_(-1, top_indices, top_acts)
        y_hat = sae.decode(top_acts, top_indices)
        if sae.W_skip is not None:
            y_hat = y_hat + x @ sae.W_skip.mT
        return y_hat, acts

    return {"predict": predict, "dead": float((since_fired >= training.dead_tokens).float().mean()),
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="smollm2-135m", help="results/<run>/ of the pipeline")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--layers", type=int, nargs="+", default=[3, 12, 28])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's transcoder.steps")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trainers", nargs="+", choices=["ours", "sparsify"], default=["ours", "sparsify"])
    parser.add_argument("--activation", choices=["topk", "jumprelu"], default=None,
                        help="our transcoder.activation (default: the config's); sparsify always trains TopK")
    parser.add_argument("--jumprelu-training", choices=["calibrated", "ste"], default=None,
                        help="with --activation jumprelu: TopK + calibrated thresholds, or straight-through training")
    parser.add_argument("--ste-bandwidth", type=float, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    settings = settings_for("train_transcoders", config)
    if args.activation:
        settings = dataclasses.replace(settings, architecture=dataclasses.replace(
            settings.architecture, activation=args.activation))
    settings = dataclasses.replace(settings, training=dataclasses.replace(
        settings.training, device="cpu", checkpoint_every=0, **({"steps": args.steps} if args.steps else {}),
        **({"jumprelu_training": args.jumprelu_training} if args.jumprelu_training else {}),
        **({"ste_bandwidth": args.ste_bandwidth} if args.ste_bandwidth else {})))
    a, t = settings.architecture, settings.training
    print(f"{t.steps} steps x {t.batch_size} tokens, {a.n_features} latents, k = {a.k}, skip = "
          f"{a.skip_connection}, {args.threads} threads; dead = no firing in the last {t.dead_tokens} tokens")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layer in args.layers:
            shard = Path("results") / args.run / "activations" / f"layer_{layer}.parquet"
            eval_x, eval_y = ShardBatches(ActivationShard(shard), t, np.random.default_rng(0)).eval_set()
            trainers = {"ours": lambda: train_ours(shard, layer, settings, Path(tmp)),
                        "sparsify": lambda: train_sparsify(shard, layer, settings)}
            for name in args.trainers:
                run = trainers[name]
                trained = run()
                rows.append({"layer": layer, "trainer": name, **held_out_metrics(trained["predict"], eval_x, eval_y),
                             "dead": trained["dead"], "seconds": trained["seconds"]})
                print(json.dumps(rows[-1]), flush=True)
    print("\n| layer | trainer | FVU | FVU w/o top 1 % | L0 | dead % | never fired % | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['layer']} | {row['trainer']} | {row['fvu']:.3f} | {row['fvu_without_top1pct']:.3f} | "
              f"{row['l0']:.1f} | {100 * row['dead']:.1f} | {100 * row['never_fired']:.1f} | {row['seconds']:.1f} |")
    if len(args.trainers) < 2:
        return
    print("\n| layer | FVU ours/sparsify | dead ours/sparsify | wall ours/sparsify | goal met |")
    print("|---|---:|---:|---:|---|")
    for layer in args.layers:
        ours, peer = (next(r for r in rows if r["layer"] == layer and r["trainer"] == n) for n in ("ours", "sparsify"))
        fvu_ratio = ours["fvu"] / peer["fvu"]
        dead_ratio = ours["dead"] / peer["dead"] if peer["dead"] else (math.inf if ours["dead"] else 1.0)
        met = fvu_ratio <= 1 and (ours["dead"] <= 2 * peer["dead"])
        print(f"| {layer} | {fvu_ratio:.3f} | {dead_ratio:.2f} | {ours['seconds'] / peer['seconds']:.2f} | "
              f"{'yes' if met else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
