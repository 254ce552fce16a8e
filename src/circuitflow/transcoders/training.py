"""train_transcoder: a sparse replacement of one MLP, trained from its cached activations.

The module and its files are in `circuitflow.transcoders.single_layer`. Training (defaults
follow the TopK recipe of Gao et al. and EleutherAI's sparsify): FVU loss, AuxK loss on dead
latents (alpha 1/32, k_aux = d_model/2), Adam with linear warmup and linear decay, decoder
rows kept at unit norm (with the parallel gradient component removed), ``b_dec`` initialised
to the mean MLP output and ``b_enc`` centring the mean input; silent latents are restarted on
badly reconstructed tokens (`resample_dead_latents`), and checkpoints make a run resumable.
A JumpReLU transcoder is trained as TopK, then given per-feature thresholds
(`calibrate_thresholds`), or, with ``jumprelu_training: ste``, trained directly with
straight-through threshold gradients (`circuitflow.transcoders.jumprelu_ste`); either way
circuit-tracer's own loader reads it. The architecture and the
training settings arrive separately (`TrainTranscoderSettings`), as in sparsify.

The loop is `circuitflow.transcoders.trainer.train`'s, shared with the cross-layer
transcoder; this module is the per-layer kind (`PerLayerKind`) and its sparsity objectives.
"""

from __future__ import annotations

import dataclasses
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
from circuitflow.io import keyed
from circuitflow.logs import pick_device
from circuitflow.paths import RunPaths
from circuitflow.transcoders.batches import ShardBatches, centred_rms
from circuitflow.transcoders.jumprelu_ste import L0Controller, initial_thresholds, jumprelu_ste
from circuitflow.transcoders.single_layer import ReluTopK, Transcoder, save_transcoder
from circuitflow.transcoders.thresholds import THRESHOLD_SCALES, base_thresholds, best_factor, topk_counts
from circuitflow.transcoders.trainer import forget_moments, fvu, restart_rows, train

log = logging.getLogger("circuitflow.transcoders")

TRAINABLE = ("topk", "jumprelu", "relu")


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


@torch.no_grad()
def resample_dead_latents(model: Transcoder, optimizer, x: torch.Tensor, y: torch.Tensor, silent: torch.Tensor,
                          generator: torch.Generator) -> int:
    """Restart the `silent` latents on this batch's worst-reconstructed tokens (`restart_rows`)
    and reset their Adam moments. Returns how many were restarted."""
    ids = silent.nonzero().squeeze(-1)
    if ids.numel() == 0:
        return 0
    pre, _, _, y_hat = topk_forward(model, x)
    model.W_enc[ids], model.b_enc[ids], model.W_dec[ids] = restart_rows(x, y - y_hat, pre, model.k, ids.numel(),
                                                                        generator)
    forget_moments(optimizer, [(parameter, ids) for parameter in (model.W_enc, model.b_enc, model.W_dec)])
    return int(ids.numel())


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
    best = best_factor(candidates, topk_l0)
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


class TopKObjective:
    """FVU plus AuxK on dead latents: TopK training, also of a JumpReLU transcoder whose
    thresholds are calibrated afterwards. Its other hooks do nothing, as the other objectives'
    do unless they say otherwise."""

    resamples, controller = True, None

    def __init__(self, settings: TrainingSettings, k: int, calibrated: bool = False):
        self.settings, self.k, self.calibrated = settings, k, calibrated

    def loss(self, model: Transcoder, x, y, tokens_since_fired):
        pre, indices, acts, y_hat = topk_forward(model, x, bf16=x.device.type == "cuda")
        loss_fvu = fvu(y, y_hat)
        fired = torch.zeros(model.n_features, dtype=torch.bool, device=x.device)
        fired[indices[acts > 0]] = True
        dead = tokens_since_fired >= self.settings.dead_tokens
        alpha = self.settings.auxk_alpha
        aux = auxk_loss(model, pre, (y - y_hat).detach(), dead) if alpha else pre.new_zeros(())
        return loss_fvu, aux, loss_fvu + alpha * aux, fired

    def init(self, model: Transcoder, x: torch.Tensor) -> None:
        pass

    def after_step(self, model: Transcoder, aux) -> None:
        pass

    def after_resample(self, model: Transcoder, silent: torch.Tensor, resampled: int) -> None:
        pass

    def calibrate(self, model: Transcoder, tokens) -> dict:
        return calibrate_thresholds(model, *tokens()) if self.calibrated else {}

    def metrics(self) -> dict:
        return {}


class L1Objective(TopKObjective):
    """ReLU: FVU plus L1 on activations scaled by decoder norms, relative to the output's scale.
    Nothing is restarted."""

    resamples = False

    def loss(self, model: Transcoder, x, y, tokens_since_fired):
        acts = F.relu(model.pre_activations(x))
        loss_fvu = fvu(y, model.decode(acts, x))
        scale = (y - y.mean(0)).pow(2).sum(-1).mean().sqrt().clamp_min(1e-6)
        aux = (acts * model.W_dec.norm(dim=-1)).sum(-1).mean() / scale
        return loss_fvu, aux, loss_fvu + self.settings.l1_coefficient * aux, (acts > 0).any(0)


class StraightThroughObjective(TopKObjective):
    """JumpReLU trained directly (``jumprelu_training: ste``): FVU plus the L0 penalty whose
    coefficient `L0Controller` adapts. Thresholds start where each feature fires on k /
    n_features of the first batch and stay non-negative; a restarted latent gets the median
    threshold, so it fires where it was restarted, like a typical one."""

    def __init__(self, settings: TrainingSettings, k: int):
        super().__init__(settings, k)
        self.controller = L0Controller(k)

    def loss(self, model: Transcoder, x, y, tokens_since_fired):
        acts, l0_per_token = jumprelu_ste(model.pre_activations(x), model.threshold, self.settings.ste_bandwidth)
        loss_fvu = fvu(y, model.decode(acts, x))
        aux = l0_per_token.mean()  # logged as the curve's "aux": the L0 that the penalty holds near k
        return loss_fvu, aux, loss_fvu + self.controller.coefficient * aux / self.k, (acts > 0).any(0)

    def init(self, model: Transcoder, x: torch.Tensor) -> None:
        model.threshold.copy_(initial_thresholds(model.pre_activations(x), self.k))

    def after_step(self, model: Transcoder, aux) -> None:
        model.threshold.clamp_(min=0)
        self.controller.update(float(aux))

    def after_resample(self, model: Transcoder, silent: torch.Tensor, resampled: int) -> None:
        if resampled:
            model.threshold[silent] = model.threshold[~silent].median() if (~silent).any() else 0.0

    def metrics(self) -> dict:
        return {"ste": {"bandwidth": self.settings.ste_bandwidth,
                        "final_l0_coefficient": self.controller.coefficient}}


class PerLayerKind:
    """What `circuitflow.transcoders.trainer.train` needs to know about one layer's transcoder."""

    name, reports_step_costs = "plt", False

    def __init__(self, shard: ActivationShard, layer: int, architecture, settings: TrainingSettings, out_weights,
                 out_architecture, out_metrics, checkpoint_dir: Path):
        self.shards, self.layer, self.architecture, self.settings = [shard], layer, architecture, settings
        self.out_weights, self.out_architecture, self.out_metrics = out_weights, out_architecture, out_metrics
        self.checkpoint_path = checkpoint_dir / f"layer_{layer}.pt"
        self.seed, self.label = settings.seed * 1000 + layer, f"train_transcoder layer {layer}"
        self.feature_shape = (architecture.n_features,)
        if architecture.activation == "jumprelu" and settings.jumprelu_training == "ste":
            self.objective = StraightThroughObjective(settings, architecture.k)
        elif architecture.activation in TOPK_TRAINED:
            self.objective = TopKObjective(settings, architecture.k, calibrated=architecture.activation == "jumprelu")
        else:
            self.objective = L1Objective(settings, architecture.k)
        self.resamples, self.controller = self.objective.resamples, self.objective.controller
        self.loss, self.calibrate = self.objective.loss, self.objective.calibrate

    def batches(self) -> ShardBatches:
        return ShardBatches(self.shards[0], self.settings, np.random.default_rng([self.settings.seed, self.layer]))

    def build(self) -> Transcoder:
        return Transcoder(self.shards[0].d_model, self.architecture)

    def scales(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return centred_rms(x), centred_rms(y)

    @torch.no_grad()
    def init(self, model: Transcoder, x, y, generator) -> None:
        _init_from_data(model, x, y, generator)
        self.objective.init(model, x)

    constrain_gradients, fold_scales = staticmethod(_remove_parallel_gradient), staticmethod(_fold_scales)

    @torch.no_grad()
    def after_step(self, model: Transcoder, aux) -> None:
        model.W_dec.copy_(F.normalize(model.W_dec, dim=-1))
        self.objective.after_step(model, aux)

    @torch.no_grad()
    def resample(self, model: Transcoder, optimizer, x, y, silent, generator) -> int:
        resampled = resample_dead_latents(model, optimizer, x, y, silent, generator)
        self.objective.after_resample(model, silent, resampled)
        return resampled

    def evaluate(self, model: Transcoder, x, y, as_trained: bool = False) -> dict:
        return evaluate(model, x, y, activation="topk" if as_trained else None)

    def metrics(self, model: Transcoder, eval_x, eval_y, calibration: dict, tokens_since_fired) -> dict:
        return {"layer": self.layer, **self.evaluate(model, eval_x, eval_y),
                **({"calibration": calibration} if calibration else {}), **self.objective.metrics(),
                "dead_fraction": float((tokens_since_fired >= self.settings.dead_tokens).float().mean())}

    def save(self, model: Transcoder) -> None:
        save_transcoder(model, self.layer, self.out_weights, self.out_architecture)

    def log_summary(self, metrics: dict) -> None:
        log.info("layer %d: FVU %.4f, L0 %.1f, dead %.3f, %d tokens in %.1fs", self.layer, metrics["fvu"],
                 metrics["l0"], metrics["dead_fraction"], metrics["tokens_seen"], metrics["seconds"])
        if "calibration" in metrics:
            calibration, before = metrics["calibration"], metrics["calibration"]["topk_before_calibration"]
            log.info("layer %d: JumpReLU thresholds from %d tokens: held-out FVU %.4f and L0 %.1f (TopK before: "
                     "%.4f and %.1f)", self.layer, calibration["calibration_tokens"], metrics["fvu"], metrics["l0"],
                     before["fvu"], before["l0"])


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
    training = dataclasses.replace(settings.training, device=pick_device(settings.training.device))
    if architecture.activation not in TRAINABLE:
        raise ValueError(f"transcoder.activation {architecture.activation!r}: training supports {TRAINABLE}")
    check_sparsity(architecture.activation, architecture.k, architecture.n_features)
    started = time.perf_counter()
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else Path(out_weights).parent / "checkpoints"
    kind = PerLayerKind(ActivationShard(shard_path), layer, architecture, training, out_weights, out_architecture,
                        out_metrics, checkpoint_dir)
    return train(kind, training, started)
