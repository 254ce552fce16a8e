"""The training loop of both transcoder kinds, and what it needs that is not kind-specific.

`train` owns the loop: seeded batches, inputs and outputs rescaled to unit RMS, data init,
Adam with linear warmup and linear decay (`lr_factor`), dead-latent bookkeeping, the decoder
constraint around each step, resampling silent latents (`resample_due`), the loss curve
(`record_curve`), resumable checkpoints (`Checkpoint`), progress logs, then calibration,
folding the scales back, evaluation, the files and the metrics both kinds report. A kind
(`circuitflow.transcoders.training.PerLayerKind`,
`circuitflow.transcoders.cross_layer_training.CrossLayerKind`) is a small object that says
what differs: how its model is built and starts, its loss, its decoder constraint, how it
restarts silent latents, and how it is calibrated, rescaled, evaluated and saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from circuitflow.activations.shards import ActivationShard
from circuitflow.config import TrainingSettings
from circuitflow.io import atomic_path, sha256_file, write_json
from circuitflow.logs import Progress
from circuitflow.transcoders.batches import take_tokens

log = logging.getLogger("circuitflow.transcoders")

RESTART_CAP = 4.0  # restarted pre-activations are capped at this x the batch's 99th-percentile active one


def train(kind, settings: TrainingSettings, started: float) -> dict:
    """Train `kind`'s model with `settings` (its device already picked), write its files and
    metrics, and return the metrics. `started`: when the caller began (for "seconds")."""
    torch.manual_seed(kind.seed)
    generator = torch.Generator().manual_seed(kind.seed)
    batches = kind.batches()
    device = torch.device(settings.device)
    eval_x, eval_y = (t.to(device) for t in batches.eval_set())
    model = kind.build()
    stream = iter(batches)
    first_x, first_y = next(stream)
    # Train on inputs and outputs rescaled to unit RMS, so the learning rate means the same
    # for every model and layer (MLP output scales differ by orders of magnitude); the scales
    # are folded back into the weights before saving.
    scale_x, scale_y = kind.scales(first_x, first_y)
    first_x, first_y = first_x / scale_x, first_y / scale_y
    kind.init(model, first_x, first_y, generator)
    model.to(device)
    first_x, first_y = first_x.to(device), first_y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, settings))
    tokens_since_fired = torch.zeros(kind.feature_shape, dtype=torch.long, device=device)
    curve = []
    checkpoint = Checkpoint(kind.checkpoint_path, training_fingerprint(kind.shards, kind.architecture, settings,
                                                                       kind.layer, kind.name))
    resample_generator = torch.Generator(device=device).manual_seed(kind.seed + 1)
    start_step = checkpoint.restore(model, optimizer, scheduler, tokens_since_fired, curve, resample_generator,
                                    kind.controller)
    for _ in range(max(start_step - 1, 0)):  # the stream is seeded: replaying it skips the seen batches
        next(stream)
    progress = Progress(log, kind.label, settings.steps, "steps", settings.log_every_s)
    progress.update(start_step)
    x, y = first_x, first_y
    loop_started = time.perf_counter()
    for step in range(start_step, settings.steps):
        if step:
            x, y = next(stream)
            x, y = (x / scale_x).to(device), (y / scale_y).to(device)
        loss_fvu, aux, loss, fired = kind.loss(model, x, y, tokens_since_fired)
        tokens_since_fired += x.shape[0]
        tokens_since_fired[fired] = 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        kind.constrain_gradients(model)
        optimizer.step()
        scheduler.step()
        kind.after_step(model, aux)
        done = step + 1
        resampled = 0
        if kind.resamples and resample_due(done, settings):
            silent = tokens_since_fired >= settings.resample_every * settings.batch_size
            resampled = kind.resample(model, optimizer, x, y, silent, resample_generator)
            tokens_since_fired[silent] = 0
        record_curve(curve, step, settings, loss_fvu, aux, tokens_since_fired, resampled)
        progress.update(1)
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.steps:
            checkpoint.save(done, model, optimizer, scheduler, tokens_since_fired, curve, resample_generator,
                            kind.controller)
    loop_seconds = time.perf_counter() - loop_started

    calibration = kind.calibrate(model, lambda: take_tokens(stream, settings.calibration_tokens, scale_x, scale_y,
                                                            device))
    kind.fold_scales(model, scale_x, scale_y)
    if calibration:  # the TopK the model was trained as, for comparison
        calibration["topk_before_calibration"] = kind.evaluate(model, eval_x, eval_y, as_trained=True)
    steps_run, step_costs = settings.steps - start_step, kind.reports_step_costs
    metrics = {
        **kind.metrics(model, eval_x, eval_y, calibration, tokens_since_fired),
        "dead_definition": f"no activation in the last {settings.dead_tokens} training tokens",
        "eval_tokens": int(eval_x.shape[0]),
        "tokens_seen": settings.steps * settings.batch_size,
        "shard_tokens": kind.shards[0].n_rows,
        "steps": settings.steps,
        "resumed_from_step": start_step,
        "seconds": time.perf_counter() - started,
        **({"seconds_per_step": loop_seconds / max(steps_run, 1)} if step_costs else {}),
        "training_tokens_per_second": steps_run * settings.batch_size / max(loop_seconds, 1e-9),
        **({"peak_rss_gb": _peak_rss_gb()} if step_costs else {}),
        "curve": curve,
        "training": dataclasses.asdict(settings),
    }
    kind.save(model)
    write_json(kind.out_metrics, metrics)
    checkpoint.remove()
    kind.log_summary(metrics)
    return metrics


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: sum of squared error over total variance of y."""
    return (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)


def lr_factor(step: int, settings: TrainingSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = (step - settings.warmup_steps) / span
    return 1.0 - (1.0 - settings.final_lr_fraction) * progress


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


@torch.no_grad()
def restart_rows(x: torch.Tensor, error: torch.Tensor, pre: torch.Tensor, k: int, n: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where `n` silent latents restart, from one batch's inputs `x` [B, d], its TopK pre-activations
    `pre` and its reconstruction `error` [B, d]: on tokens drawn with probability proportional to
    the squared error, decoder row = that token's error direction, encoder row = its centred input
    direction, scaled so the token's pre-activation equals its error's norm (alone, the latent
    would remove that token's error; on similar tokens it competes for TopK), capped at
    `RESTART_CAP` x the batch's 99th-percentile active pre-activation. Returns (encoder rows,
    encoder biases, decoder rows). Measured on SmolLM2 (benchmarks/peer_training.py): a target at
    the batch's median k-th pre-activation left 1.7 % of layer 12's latents dead, this one 0.6 %."""
    picks = torch.multinomial(error.pow(2).sum(-1).clamp_min(1e-12), n, replacement=n > len(x), generator=generator)
    x_centred = x[picks] - x.mean(0)
    # Capped: restarts on massive-activation tokens would otherwise fire hugely on their
    # neighbours (layer 11 of SmolLM2: held-out FVU 1.07 uncapped, 0.27 capped).
    cap = RESTART_CAP * float(torch.quantile(pre.topk(k, dim=-1).values.flatten(), 0.99))
    target = error[picks].norm(dim=-1, keepdim=True).clamp(max=cap)
    encoder = F.normalize(x_centred, dim=-1) * (target / x_centred.norm(dim=-1, keepdim=True).clamp_min(1e-6))
    return encoder, -(x.mean(0) @ encoder.T), F.normalize(error[picks], dim=-1)


def forget_moments(optimizer: torch.optim.Optimizer, rows: list) -> None:
    """Zero Adam's moments of the given rows: [(parameter, index into it), ...]."""
    for parameter, index in rows:
        state = optimizer.state.get(parameter, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0


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
    """A checkpoint file (``checkpoints/layer_{l}.pt`` or ``clt.pt``): everything the loop changes (weights,
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


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kilobytes on Linux
