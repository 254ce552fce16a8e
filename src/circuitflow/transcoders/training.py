"""train_transcoder: a sparse replacement of one MLP, trained from its cached activations.

The module and its files are in `circuitflow.transcoders.single_layer`. Training (defaults
follow the TopK recipe of Gao et al. and EleutherAI's sparsify): FVU loss, AuxK loss on dead
latents (alpha 1/32, k_aux = d_model/2), Adam with linear warmup and linear decay, decoder
rows kept at unit norm (with the parallel gradient component removed), ``b_dec`` initialised
to the mean MLP output and ``b_enc`` centring the mean input; silent latents are restarted on
badly reconstructed tokens (`resample_dead_latents`), and checkpoints make a run resumable
(`Checkpoint`). A JumpReLU transcoder is trained as TopK, then given per-feature thresholds
(`calibrate_thresholds`), or, with ``jumprelu_training: ste``, trained directly with
straight-through threshold gradients (`circuitflow.transcoders.jumprelu_ste`); either way
circuit-tracer's own loader reads it. The architecture and the
training settings arrive separately (`TrainTranscoderSettings`), as in sparsify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from circuitflow.activations.shards import ActivationShard
from circuitflow.config import TrainingSettings, TrainTranscoderSettings
from circuitflow.config_rules import TOPK_TRAINED, check_sparsity
from circuitflow.io import atomic_path, keyed, sha256_file, write_json
from circuitflow.logs import Progress, pick_device
from circuitflow.paths import RunPaths
from circuitflow.transcoders.jumprelu_ste import L0Controller, initial_thresholds, jumprelu_ste
from circuitflow.transcoders.single_layer import ReluTopK, Transcoder, save_transcoder

log = logging.getLogger("circuitflow.transcoders")

TRAINABLE = ("topk", "jumprelu", "relu")


class ShardBatches:
    """Seeded streaming batches from one shard: row groups in random order, rows shuffled
    within a buffer of `shuffle_row_groups` row groups. The last `eval_tokens` rows are held out."""

    def __init__(self, shard: ActivationShard, settings: TrainingSettings, rng: np.random.Generator):
        self.shard, self.settings, self.rng = shard, settings, rng
        self.train_rows = shard.n_rows - settings.eval_tokens
        if self.train_rows < settings.batch_size:
            raise ValueError(
                f"activation shard {shard.path} has {shard.n_rows} tokens: too few for eval_tokens="
                f"{settings.eval_tokens} plus one batch of {settings.batch_size}")
        self.offsets = np.cumsum([0] + shard.row_group_sizes)

    def _row_group(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.shard.read_row_group(index)
        keep = max(0, min(len(data["mlp_in"]), self.train_rows - self.offsets[index]))
        return data["mlp_in"][:keep], data["mlp_out"][:keep]

    def eval_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for index in range(len(self.shard.row_group_sizes)):
            if self.offsets[index + 1] <= self.train_rows:
                continue
            data = self.shard.read_row_group(index)
            skip = max(0, self.train_rows - self.offsets[index])
            xs.append(data["mlp_in"][skip:])
            ys.append(data["mlp_out"][skip:])
        return (torch.from_numpy(np.concatenate(xs).astype(np.float32)),
                torch.from_numpy(np.concatenate(ys).astype(np.float32)))

    def __iter__(self):
        groups = [i for i in range(len(self.shard.row_group_sizes)) if self.offsets[i] < self.train_rows]
        size = self.settings.batch_size
        leftover_x = leftover_y = None
        while True:  # epochs until the caller stops
            order = self.rng.permutation(groups)
            for start in range(0, len(order), self.settings.shuffle_row_groups):
                parts = [self._row_group(i) for i in order[start:start + self.settings.shuffle_row_groups]]
                x = np.concatenate([p[0] for p in parts] + ([leftover_x] if leftover_x is not None else []))
                y = np.concatenate([p[1] for p in parts] + ([leftover_y] if leftover_y is not None else []))
                perm = self.rng.permutation(len(x))
                full = len(x) // size * size
                for b in range(0, full, size):
                    idx = perm[b:b + size]
                    yield (torch.from_numpy(x[idx].astype(np.float32)),
                           torch.from_numpy(y[idx].astype(np.float32)))
                rest = perm[full:]
                leftover_x, leftover_y = x[rest], y[rest]


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: sum of squared error over total variance of y."""
    return (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)


def topk_forward(model: Transcoder, x: torch.Tensor, bf16: bool = False):
    """Sparse TopK forward: decode only the k active rows (embedding_bag), not all features.
    With `bf16` (CUDA only) the encoder matmul, the dominant cost, runs under bf16 autocast;
    the selection, the decoder and the loss stay in float32."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        pre = model.pre_activations(x)
    pre = pre.float()
    values, indices = torch.topk(pre, model.k, dim=-1)
    acts = F.relu(values)
    y_hat = F.embedding_bag(indices, model.W_dec, per_sample_weights=acts, mode="sum") + model.b_dec
    if model.W_skip is not None:
        y_hat = y_hat + x @ model.W_skip.T
    return pre, indices, acts, y_hat


def auxk_loss(model: Transcoder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK: let the top-k_aux dead latents reconstruct the residual error, reviving them."""
    dead_ids = dead.nonzero().squeeze(-1)
    k_aux = min(model.d_model // 2, dead_ids.numel())
    if k_aux == 0:
        return pre.new_zeros(())
    values, picked = torch.topk(pre[:, dead_ids], k_aux, dim=-1)
    recon = F.embedding_bag(dead_ids[picked], model.W_dec, per_sample_weights=F.relu(values), mode="sum")
    scale = min(dead_ids.numel() / k_aux, 1.0)
    return scale * fvu(residual, recon)


def _init_from_data(model: Transcoder, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> None:
    """Start each feature at one training token: encoder row = its centred input direction,
    decoder row = its centred output direction. Random directions leave most latents never
    selected by TopK (the inputs live near a low-dimensional subspace), so they die at once."""
    x_centred, y_centred = x - x.mean(0), y - y.mean(0)
    picks = torch.randint(0, x.shape[0], (model.n_features,), generator=generator)
    noise = torch.randn(model.n_features, model.d_model, generator=generator) * 1e-3
    with torch.no_grad():
        model.W_enc.copy_(F.normalize(x_centred[picks] + noise, dim=-1))
        model.W_dec.copy_(F.normalize(y_centred[picks] + noise, dim=-1))
        model.b_dec.copy_(y.mean(0))
        model.b_enc.copy_(-(x.mean(0) @ model.W_enc.T))
        # Both activations are positively homogeneous, so scaling the encoder scales the
        # output: pick the least-squares scale so training starts near the data's magnitude.
        predicted = model.encode(x) @ model.W_dec
        scale = float((y_centred * predicted).sum() / (predicted * predicted).sum().clamp_min(1e-12))
        if scale > 0:
            model.W_enc.mul_(scale)
            model.b_enc.mul_(scale)


RESTART_CAP = 4.0  # restarted pre-activations are capped at this x the batch's 99th-percentile active one


@torch.no_grad()
def resample_dead_latents(model: Transcoder, optimizer, x: torch.Tensor, y: torch.Tensor, silent: torch.Tensor,
                          generator: torch.Generator) -> int:
    """Restart the `silent` latents on this batch's worst-reconstructed tokens (drawn with
    probability proportional to the squared error): decoder row = that token's error direction,
    encoder row = its centred input direction, scaled so the token's pre-activation equals its
    error's norm (alone, the latent would remove that token's error; on similar tokens it
    competes for TopK), capped at `RESTART_CAP` x the batch's 99th-percentile active
    pre-activation. Their Adam moments are reset. Returns how many were restarted.
    Measured on SmolLM2 (benchmarks/peer_training.py): a target at the batch's median k-th
    pre-activation left 1.7 % of layer 12's latents dead, this one 0.6 %."""
    ids = silent.nonzero().squeeze(-1)
    if ids.numel() == 0:
        return 0
    pre, _, _, y_hat = topk_forward(model, x)
    error = (y - y_hat).pow(2).sum(-1)
    picks = torch.multinomial(error.clamp_min(1e-12), ids.numel(), replacement=ids.numel() > len(x),
                              generator=generator)
    x_centred = x[picks] - x.mean(0)
    # Capped: restarts on massive-activation tokens would otherwise fire hugely on their
    # neighbours (layer 11 of SmolLM2: held-out FVU 1.07 uncapped, 0.27 capped).
    cap = RESTART_CAP * float(torch.quantile(pre.topk(model.k, dim=-1).values.flatten(), 0.99))
    target = (y - y_hat)[picks].norm(dim=-1, keepdim=True).clamp(max=cap)
    directions = F.normalize(x_centred, dim=-1)
    encoder = directions * (target / x_centred.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    model.W_enc[ids] = encoder
    model.b_enc[ids] = -(x.mean(0) @ encoder.T)
    model.W_dec[ids] = F.normalize((y - y_hat)[picks], dim=-1)
    for parameter in (model.W_enc, model.b_enc, model.W_dec):
        state = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][ids] = 0
    return int(ids.numel())


def lr_factor(step: int, settings: TrainingSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = (step - settings.warmup_steps) / span
    return 1.0 - (1.0 - settings.final_lr_fraction) * progress


def topk_counts(indices: torch.Tensor, acts: torch.Tensor, n_features: int) -> torch.Tensor:
    """How often TopK let each feature fire ([n_features], from topk indices and values)."""
    counts = torch.zeros(n_features, dtype=torch.long, device=indices.device)
    counts.scatter_add_(0, indices[acts > 0], torch.ones_like(indices[acts > 0]))
    return counts


def base_thresholds(pre: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-feature thresholds that keep TopK's firing counts on these pre-activations [tokens,
    features]: midway between each feature's c-th and (c+1)-th largest value; a feature TopK
    never picked gets its largest value (it stays silent)."""
    ranked = pre.sort(dim=0, descending=True).values
    n = ranked.shape[0]
    above = ranked.gather(0, (counts - 1).clamp(0, n - 1)[None])[0]
    below = ranked.gather(0, counts.clamp(max=n - 1)[None])[0]
    base = torch.where(counts == 0, ranked[0], (above + below) / 2)
    return torch.where(counts >= n, torch.zeros_like(base), base).clamp_min(0)


def resample_due(done: int, settings: TrainingSettings) -> bool:
    """Whether silent latents are restarted after step `done` (every `resample_every` steps
    until `resample_until_fraction` of training)."""
    return bool(settings.resample_every and done % settings.resample_every == 0
                and done <= settings.resample_until_fraction * settings.steps)


def record_curve(curve: list, step: int, settings: TrainingSettings, loss_fvu, aux, tokens_since_fired,
                 resampled: int) -> None:
    """Append the loss curve's point for `step`: 20 points in all, plus every resampling."""
    if step % max(settings.steps // 20, 1) == 0 or step == settings.steps - 1 or resampled:
        curve.append({"step": step, "fvu": float(loss_fvu.detach()), "aux": float(aux.detach()),
                      "dead": int((tokens_since_fired >= settings.dead_tokens).sum()),
                      **({"resampled": resampled} if resampled else {})})


THRESHOLD_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.75, 2.0)
L0_SLACK = 1.05  # a calibrated JumpReLU may fire at most 5 % more often than TopK did


@torch.no_grad()
def calibrate_thresholds(model: Transcoder, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Give a TopK-trained transcoder JumpReLU thresholds, from calibration tokens (x, y).

    Each feature's base threshold keeps the firing rate TopK gave it (midway between its c-th
    and (c+1)-th largest pre-activations, c being how often TopK let it fire); a feature TopK
    never picked gets its largest pre-activation and stays silent. Then one common factor on
    all thresholds is picked from `THRESHOLD_SCALES`: the lowest FVU on the calibration tokens
    whose mean L0 stays within `L0_SLACK` of TopK's."""
    pre, indices, acts, y_topk = topk_forward(model, x)
    counts = topk_counts(indices, acts, model.n_features)
    base = base_thresholds(pre, counts)
    n = pre.shape[0]
    topk_l0 = float(counts.sum()) / n
    candidates = []
    for factor in THRESHOLD_SCALES:
        # never-picked features keep their silencing threshold whatever the factor
        threshold = torch.where(counts == 0, base, base * factor)
        jump_acts = pre * (pre > threshold)
        candidates.append({"factor": factor, "l0": float((jump_acts > 0).sum()) / n,
                           "fvu": float(fvu(y, model.decode(jump_acts, x))), "threshold": threshold})
    allowed = [c for c in candidates if c["l0"] <= L0_SLACK * topk_l0] or [min(candidates, key=lambda c: c["l0"])]
    best = min(allowed, key=lambda c: c["fvu"])
    model.threshold.copy_(best["threshold"])
    return {"calibration_tokens": n, "features_never_picked": int((counts == 0).sum()),
            "topk_l0_on_calibration": topk_l0, "topk_fvu_on_calibration": float(fvu(y, y_topk)),
            "threshold_factor": best["factor"], "jumprelu_l0_on_calibration": best["l0"],
            "jumprelu_fvu_on_calibration": best["fvu"],
            "factors_tried": [{k: c[k] for k in ("factor", "l0", "fvu")} for c in candidates]}


@torch.no_grad()
def evaluate(model: Transcoder, x: torch.Tensor, y: torch.Tensor, activation: str | None = None) -> dict:
    """FVU, L0 and never-fired share on held-out tokens; `activation` overrides the model's own
    (to measure a JumpReLU transcoder as the TopK it was trained as)."""
    if activation == "topk":
        acts = ReluTopK(model.k)(model.pre_activations(x))
    else:
        acts = model.encode(x)
    y_hat = model.decode(acts, x)
    fired = (acts > 0).any(0)
    return {
        "fvu": float(fvu(y, y_hat)),
        "l0": float((acts > 0).float().sum(-1).mean()),
        "fraction_never_fired_on_eval": float(1 - fired.float().mean()),
    }


def train_transcoders(*, shard_paths: Sequence[str | Path], layers: Sequence[int], out_dir: str | Path,
                      checkpoint_dir: str | Path, settings: TrainTranscoderSettings) -> list[dict]:
    """Train the transcoders of `layers` (one shard each, in that order) one after another in
    this process, each exactly as `train_transcoder` alone would, into `out_dir`."""
    shard_paths = keyed(layers, shard_paths, "activation shards")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = RunPaths("")  # the layer files' names, as the set declares them
    metrics = []
    for layer in layers:
        def named(pattern: str) -> Path:
            return out_dir / Path(pattern.format(layer=layer)).name

        metrics.append(train_transcoder(shard_path=shard_paths[layer], layer=layer,
                                        out_weights=named(names.layer_weights),
                                        out_architecture=named(names.layer_architecture),
                                        out_metrics=named(names.layer_metrics),
                                        checkpoint_dir=checkpoint_dir, settings=settings))
    return metrics


def train_transcoder(*, shard_path: str | Path, layer: int, out_weights: str | Path, out_architecture: str | Path,
                     out_metrics: str | Path, settings: TrainTranscoderSettings,
                     checkpoint_dir: str | Path | None = None) -> dict:
    """Train one layer's transcoder from its activation shard; write weights, architecture, metrics.
    Checkpoints go to `checkpoint_dir` (default: ``checkpoints/`` beside the weights)."""
    architecture = settings.architecture
    settings = dataclasses.replace(settings.training, device=pick_device(settings.training.device))
    if architecture.activation not in TRAINABLE:
        raise ValueError(f"transcoder.activation {architecture.activation!r}: training supports {TRAINABLE}")
    check_sparsity(architecture.activation, architecture.k, architecture.n_features)
    started = time.perf_counter()
    shard = ActivationShard(shard_path)
    torch.manual_seed(settings.seed * 1000 + layer)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + layer)
    rng = np.random.default_rng([settings.seed, layer])
    batches = ShardBatches(shard, settings, rng)
    device = torch.device(settings.device)
    eval_x, eval_y = (t.to(device) for t in batches.eval_set())

    model = Transcoder(shard.d_model, architecture)
    stream = iter(batches)
    first_x, first_y = next(stream)
    # Train on inputs and outputs rescaled to unit RMS, so the learning rate means the same
    # for every model and layer (MLP output scales differ by orders of magnitude); the scales
    # are folded back into the weights before saving.
    scale_x, scale_y = centred_rms(first_x), centred_rms(first_y)
    first_x, first_y = (first_x / scale_x).to(device), (first_y / scale_y).to(device)
    _init_from_data(model, first_x.cpu(), first_y.cpu(), generator)
    # jumprelu trained with straight-through threshold gradients instead of TopK + calibration
    ste = architecture.activation == "jumprelu" and settings.jumprelu_training == "ste"
    topk_trained = architecture.activation in TOPK_TRAINED and not ste
    controller = L0Controller(architecture.k) if ste else None
    if ste:
        with torch.no_grad():
            model.threshold.copy_(initial_thresholds(model.pre_activations(first_x.cpu()), architecture.k))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    tokens_since_fired = torch.zeros(architecture.n_features, dtype=torch.long, device=device)
    curve = []
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(out_weights).parent / "checkpoints"
    checkpoint = Checkpoint(checkpoint_dir / f"layer_{layer}.pt",
                            training_fingerprint([shard], architecture, settings, layer, "plt"))
    resample_generator = torch.Generator(device=device).manual_seed(settings.seed * 1000 + layer + 1)
    start_step = checkpoint.restore(model, optimizer, scheduler, tokens_since_fired, curve, resample_generator,
                                    controller)
    for _ in range(max(start_step - 1, 0)):  # the stream is seeded: replaying it skips the seen batches
        next(stream)
    progress = Progress(log, f"train_transcoder layer {layer}", settings.steps, "steps", settings.log_every_s)
    progress.update(start_step)
    x, y = first_x, first_y
    loop_started = time.perf_counter()
    for step in range(start_step, settings.steps):
        if step:
            x, y = next(stream)
            x, y = (x / scale_x).to(device), (y / scale_y).to(device)
        if ste:
            acts, l0_per_token = jumprelu_ste(model.pre_activations(x), model.threshold, settings.ste_bandwidth)
            y_hat = model.decode(acts, x)
            loss_fvu = fvu(y, y_hat)
            fired = (acts > 0).any(0)
            aux = l0_per_token.mean()  # logged as the curve's "aux": the L0 that the penalty holds near k
            loss = loss_fvu + controller.coefficient * aux / architecture.k
        elif topk_trained:
            pre, indices, acts, y_hat = topk_forward(model, x, bf16=device.type == "cuda")
            loss_fvu = fvu(y, y_hat)
            fired = torch.zeros(architecture.n_features, dtype=torch.bool, device=device)
            fired[indices[acts > 0]] = True
            dead = tokens_since_fired >= settings.dead_tokens
            aux = auxk_loss(model, pre, (y - y_hat).detach(), dead) if settings.auxk_alpha else pre.new_zeros(())
            loss = loss_fvu + settings.auxk_alpha * aux
        else:
            acts = F.relu(model.pre_activations(x))
            y_hat = model.decode(acts, x)
            loss_fvu = fvu(y, y_hat)
            fired = (acts > 0).any(0)
            # L1 on activations scaled by decoder norms, relative to the output's scale.
            scale = (y - y.mean(0)).pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
            aux = (acts * model.W_dec.norm(dim=-1)).sum(-1).mean() / scale
            loss = loss_fvu + settings.l1_coefficient * aux
        tokens_since_fired += x.shape[0]
        tokens_since_fired[fired] = 0

        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_gradient(model)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.W_dec.copy_(F.normalize(model.W_dec, dim=-1))
            if ste:
                model.threshold.clamp_(min=0)
                controller.update(float(aux))
        done = step + 1
        resampled = 0
        if architecture.activation in TOPK_TRAINED and resample_due(done, settings):
            silent = tokens_since_fired >= settings.resample_every * settings.batch_size
            resampled = resample_dead_latents(model, optimizer, x, y, silent, resample_generator)
            if ste and resampled:
                with torch.no_grad():  # a restarted latent fires where it was restarted, like a typical one
                    model.threshold[silent] = model.threshold[~silent].median() if (~silent).any() else 0.0
            tokens_since_fired[silent] = 0
        record_curve(curve, step, settings, loss_fvu, aux, tokens_since_fired, resampled)
        progress.update(1)
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            checkpoint.save(done, model, optimizer, scheduler, tokens_since_fired, curve, resample_generator,
                            controller)

    loop_seconds = time.perf_counter() - loop_started
    calibration = {}
    if architecture.activation == "jumprelu" and not ste:
        calibration = calibrate_thresholds(model, *take_tokens(stream, settings.calibration_tokens, scale_x,
                                                                scale_y, device))
    _fold_scales(model, scale_x, scale_y)
    if calibration:
        calibration["topk_before_calibration"] = evaluate(model, eval_x, eval_y, activation="topk")
    metrics = {
        "layer": layer,
        **evaluate(model, eval_x, eval_y),
        **({"calibration": calibration} if calibration else {}),
        **({"ste": {"bandwidth": settings.ste_bandwidth, "final_l0_coefficient": controller.coefficient}}
           if ste else {}),
        "dead_fraction": float((tokens_since_fired >= settings.dead_tokens).float().mean()),
        "dead_definition": f"no activation in the last {settings.dead_tokens} training tokens",
        "eval_tokens": int(eval_x.shape[0]),
        "tokens_seen": settings.steps * settings.batch_size,
        "shard_tokens": shard.n_rows,
        "steps": settings.steps,
        "resumed_from_step": start_step,
        "seconds": time.perf_counter() - started,
        "training_tokens_per_second": (settings.steps - start_step) * settings.batch_size / max(loop_seconds, 1e-9),
        "curve": curve,
        "training": dataclasses.asdict(settings),
    }
    save_transcoder(model, layer, out_weights, out_architecture)
    write_json(out_metrics, metrics)
    checkpoint.remove()
    log.info("layer %d: FVU %.4f, L0 %.1f, dead %.3f, %d tokens in %.1fs", layer, metrics["fvu"],
             metrics["l0"], metrics["dead_fraction"], metrics["tokens_seen"], metrics["seconds"])
    if calibration:
        before = calibration["topk_before_calibration"]
        log.info("layer %d: JumpReLU thresholds from %d tokens: held-out FVU %.4f and L0 %.1f (TopK before: "
                 "%.4f and %.1f)", layer, calibration["calibration_tokens"], metrics["fvu"], metrics["l0"],
                 before["fvu"], before["l0"])
    return metrics


def training_fingerprint(shards: list[ActivationShard], architecture, settings: TrainingSettings, layer,
                         kind: str) -> str:
    """What a checkpoint must match to be resumed: the kind (plt or clt), the data (each shard's
    content hash: shards are uncompressed, so two of the same shape have the same size whatever
    they hold), the architecture and every training setting that changes the numbers (not the
    logging or checkpoint cadence)."""
    training = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("log_every_s", "checkpoint_every")}
    identity = {"kind": kind, "shards": [[sha256_file(s.path), s.n_rows] for s in shards],
                "layer": layer, "architecture": dataclasses.asdict(architecture), "training": training}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class Checkpoint:
    """A checkpoint file (``checkpoints/layer_{l}.pt`` beside the weights): everything the loop changes (weights,
    optimizer and scheduler state, dead-latent counters, the curve) after a given step, written
    atomically. The batch stream is seeded, so a resumed run replays it to the same position and
    ends with the same weights as an uninterrupted one."""

    def __init__(self, path: str | Path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def save(self, step: int, model, optimizer, scheduler, tokens_since_fired, curve, generator,
             controller=None) -> None:
        state = {"fingerprint": self.fingerprint, "step": step, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "tokens_since_fired": tokens_since_fired, "curve": curve, "generator": generator.get_state(),
                 "controller": controller.state_dict() if controller is not None else None}
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        log.info("checkpoint after step %d: %s", step, self.path)

    def restore(self, model, optimizer, scheduler, tokens_since_fired, curve, generator, controller=None) -> int:
        """The step to start from: 0, or the one after the last checkpoint of this same run."""
        if not self.path.is_file():
            return 0
        try:
            state = torch.load(self.path, map_location=tokens_since_fired.device, weights_only=True)
        except Exception as error:  # a torn or foreign file: train from scratch rather than trust it
            log.warning("ignoring unreadable checkpoint %s (%s); training from step 0", self.path, error)
            return 0
        if state.get("fingerprint") != self.fingerprint:
            log.warning("discarding checkpoint %s: it was trained on other data, settings or kind; training "
                        "from step 0", self.path)
            self.remove()
            return 0
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        tokens_since_fired.copy_(state["tokens_since_fired"])
        curve.extend(state["curve"])
        generator.set_state(state["generator"])
        if controller is not None:
            controller.load_state_dict(state["controller"])
        log.info("resuming from the checkpoint after step %d: %s", state["step"], self.path)
        return int(state["step"])

    def remove(self) -> None:
        # The folder stays: layers training side by side share it, and removing it when it looks
        # empty raced with another layer creating its first checkpoint there.
        self.path.unlink(missing_ok=True)


def take_tokens(stream, n_tokens: int, scale_x, scale_y, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The next `n_tokens` MLP inputs and outputs of the batch stream, rescaled as in training
    (the scales are numbers, or per-layer tensors that broadcast over a lockstep batch)."""
    xs, ys, have = [], [], 0
    while have < n_tokens:
        x, y = next(stream)
        xs.append(x)
        ys.append(y)
        have += len(x)
    return ((torch.cat(xs)[:n_tokens] / scale_x).to(device), (torch.cat(ys)[:n_tokens] / scale_y).to(device))


def centred_rms(t: torch.Tensor) -> float:
    """Root mean square of the centred entries (1.0 for a constant tensor)."""
    rms = float((t - t.mean(0)).pow(2).mean().sqrt())
    return rms if rms > 0 else 1.0


@torch.no_grad()
def _fold_scales(model: Transcoder, scale_x: float, scale_y: float) -> None:
    """Turn a transcoder of x/scale_x -> y/scale_y into one of x -> y (same features).

    TopK, ReLU and JumpReLU are positively homogeneous, so scaling the encoder by scale_y
    scales the activations by scale_y; decoder rows keep their unit norm.
    """
    model.W_enc.mul_(scale_y / scale_x)
    model.b_enc.mul_(scale_y)
    model.b_dec.mul_(scale_y)
    if model.W_skip is not None:
        model.W_skip.mul_(scale_y / scale_x)
    if model.threshold is not None:
        model.threshold.mul_(scale_y)


def _remove_parallel_gradient(model: Transcoder) -> None:
    """Keep decoder rows on the unit sphere: drop the gradient component along each row."""
    grad = model.W_dec.grad
    if grad is not None:
        rows = F.normalize(model.W_dec.detach(), dim=-1)
        grad -= (grad * rows).sum(-1, keepdim=True) * rows
