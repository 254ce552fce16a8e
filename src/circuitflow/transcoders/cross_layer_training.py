"""train_cross_layer_transcoder: one CLT over layers 0..n-1, trained jointly from every layer's shard
(aligned: `circuitflow.transcoders.batches.LockstepBatches`), by the loop both kinds share
(`circuitflow.transcoders.trainer`); this module is the cross-layer kind (`CrossLayerKind`).

The recipe is the per-layer one (`circuitflow.transcoders.training`) lifted to layers: TopK per
layer (k features of each layer per token) or BatchTopK across layers, loss = the mean over layers
of each layer's FVU (optionally weighted toward the early layers),
inputs and outputs at unit RMS per layer, Adam with warmup and linear decay. Each feature's
decoder — its writes to layers i..n-1, taken together — is kept at unit norm. Features start as a
per-layer transcoder's (encoder = a token's input direction, decoder = its output direction at
its own layer only) and learn their later-layer writes. Silent latents restart on badly
reconstructed tokens of their layer, AuxK revives dead ones on their own layer's residual, and
checkpoints make the run resumable. Finally TopK becomes JumpReLU: per-feature thresholds that
keep TopK's firing rates, times one common factor (`calibrate_cross_layer_thresholds`), because
circuit-tracer's ``load_clt`` reads only ReLU and JumpReLU.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from circuitflow.activations.shards import ActivationShard
from circuitflow.config import TrainCrossLayerTranscoderSettings, TrainingSettings
from circuitflow.config_rules import check_cross_layer, check_sparsity
from circuitflow.logs import pick_device
from circuitflow.transcoders.batches import LockstepBatches, aligned_shards, centred_rms
from circuitflow.transcoders.cross_layer import CrossLayerTranscoder, save_cross_layer_transcoder
from circuitflow.transcoders.thresholds import THRESHOLD_SCALES, base_thresholds, best_factor, topk_counts
from circuitflow.transcoders.trainer import forget_moments, fvu, restart_rows, train

log = logging.getLogger("circuitflow.transcoders")


def _flat_decoders(model: CrossLayerTranscoder) -> list[torch.Tensor]:
    """Each layer's decoder as [F, (n-i)*d]: one row per feature, all its writes."""
    return [w.view(w.shape[0], -1) for w in model.W_dec]


class _ShiftedSum(torch.autograd.Function):
    """b_dec + every source layer's writes, layer i's filling columns i*d.. of [B, n*d], in one
    buffer: padding each write to full width (or adding in place into slices) costs a full
    [B, n, d] tensor per layer, which dominated the step on CPU."""

    @staticmethod
    def forward(ctx, bias, *writes):
        batch, width = writes[0].shape
        out = bias.reshape(1, -1).repeat(batch, 1)
        for w in writes:
            out[:, width - w.shape[1]:] += w
        ctx.widths, ctx.bias_shape = [w.shape[1] for w in writes], bias.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        total = grad.shape[1]
        return grad.sum(0).view(ctx.bias_shape), *(grad[:, total - w:] for w in ctx.widths)


def sparse_forward(model: CrossLayerTranscoder, x: torch.Tensor, sparsity: str = "per_layer"):
    """TopK, decoding only the active rows: k features of each layer per token (`per_layer`), or
    BatchTopK (`batch`): the batch's k x n_layers x tokens largest pre-activations over every
    layer and token, so a layer or token that needs more features gets them. Returns per-layer
    (pre, feature ids, acts, token rows: None for per_layer, where ids are [B, k]) and the
    prediction [B, n, d]."""
    batch, n_layers, d = x.shape
    writes, picked = [], []
    # every layer's encoder in one batched product: indexing W_enc per layer would cost a
    # full-size zero gradient per layer in the backward pass
    pres = torch.baddbmm(model.b_enc[:, None], x.transpose(0, 1), model.W_enc.transpose(1, 2))
    if sparsity == "batch":
        kept = model.k * n_layers * batch
        # the kept-th largest value: kthvalue counts from the smallest
        threshold = pres.detach().flatten().kthvalue(pres.numel() - kept + 1).values
    for layer, (decoder, pre) in enumerate(zip(_flat_decoders(model), pres.unbind(0))):
        if sparsity == "batch":
            rows, indices = ((pre >= threshold) & (pre > 0)).nonzero(as_tuple=True)
            acts = pre[rows, indices]
            offsets = torch.searchsorted(rows, torch.arange(batch, device=rows.device))
            writes.append(F.embedding_bag(indices, decoder, offsets, per_sample_weights=acts, mode="sum"))
        else:
            values, indices = torch.topk(pre, model.k, dim=-1)
            acts = F.relu(values)
            writes.append(F.embedding_bag(indices, decoder, per_sample_weights=acts, mode="sum"))
            rows = None
        picked.append((pre, indices, acts, rows))
    return picked, _ShiftedSum.apply(model.b_dec, *writes).view(batch, n_layers, d)


def _layer_fvus(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """Each layer's FVU [n] ([B, n, d] tensors, vectorised)."""
    error = (y - y_hat).pow(2).sum((0, 2))
    variance = (y - y.mean(0)).pow(2).sum((0, 2)).clamp_min(1e-12)
    return error / variance


def layer_loss_weights(n_layers: int, exponent: float) -> torch.Tensor | None:
    """Output layer j's weight in the loss, proportional to (j + 1) ** -exponent, with mean 1
    (None for 0: the plain mean). Layer j's output can only be written by the features of layers
    0..j, so the early layers have the fewest features to share and the most downstream reach."""
    if exponent == 0:
        return None
    weights = torch.arange(1, n_layers + 1, dtype=torch.float32) ** -exponent
    return weights / weights.mean()


def _auxk(model: CrossLayerTranscoder, picked, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """AuxK per layer: the top dead latents of layer i reconstruct layer i's residual error
    through their own-layer decoder slice (the cheap part that revives them)."""
    losses = []
    for layer, (pre, *_) in enumerate(picked):
        dead_ids = dead[layer].nonzero().squeeze(-1)
        k_aux = min(model.d_model // 2, dead_ids.numel())
        if k_aux == 0:
            continue
        values, chosen = torch.topk(pre[:, dead_ids], k_aux, dim=-1)
        own = model.W_dec[layer][:, 0]
        recon = F.embedding_bag(dead_ids[chosen], own, per_sample_weights=F.relu(values), mode="sum")
        losses.append(min(dead_ids.numel() / k_aux, 1.0) * fvu(residual[:, layer], recon))
    return torch.stack(losses).mean() if losses else residual.new_zeros(())


def _init_from_data(model: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, generator) -> None:
    """Every feature starts as a per-layer transcoder's: one training token's centred input
    direction reads, its centred output direction at its own layer writes; later-layer writes
    start at zero. Then each layer's encoder gets the least-squares output scale."""
    with torch.no_grad():
        for layer in model.layers:
            xs, ys = x[:, layer], y[:, layer]
            x_centred, y_centred = xs - xs.mean(0), ys - ys.mean(0)
            picks = torch.randint(0, xs.shape[0], (model.n_features,), generator=generator)
            noise = torch.randn(model.n_features, model.d_model, generator=generator) * 1e-3
            model.W_enc[layer].copy_(F.normalize(x_centred[picks] + noise, dim=-1))
            model.W_dec[layer].zero_()
            model.W_dec[layer][:, 0].copy_(F.normalize(y_centred[picks] + noise, dim=-1))
            model.b_dec[layer].copy_(ys.mean(0))
            model.b_enc[layer].copy_(-(xs.mean(0) @ model.W_enc[layer].T))
            predicted = model.activate(layer, model.pre_activations(layer, xs)) @ model.W_dec[layer][:, 0]
            scale = float((y_centred * predicted).sum() / (predicted * predicted).sum().clamp_min(1e-12))
            if scale > 0:
                model.W_enc[layer].mul_(scale)
                model.b_enc[layer].mul_(scale)


@torch.no_grad()
def _resample(model: CrossLayerTranscoder, optimizer, x, y, silent: torch.Tensor, generator,
              sparsity: str = "per_layer") -> int:
    """Restart each layer's silent latents on that layer's worst-reconstructed tokens, as the
    per-layer `resample_dead_latents` does: the decoder writes the token's error at its own layer."""
    picked, y_hat = sparse_forward(model, x, sparsity)
    restarted = 0
    for layer, (pre, *_) in enumerate(picked):
        ids = silent[layer].nonzero().squeeze(-1)
        if ids.numel() == 0:
            continue
        encoder, bias, decoder = restart_rows(x[:, layer], y[:, layer] - y_hat[:, layer], pre, model.k, ids.numel(),
                                              generator)
        model.W_enc[layer][ids], model.b_enc[layer][ids] = encoder, bias
        model.W_dec[layer][ids] = 0
        model.W_dec[layer][ids, 0] = decoder
        forget_moments(optimizer, [(model.W_enc, (layer, ids)), (model.b_enc, (layer, ids)),
                                   (model.W_dec[layer], (ids,))])
        restarted += int(ids.numel())
    return restarted


def _constrain_decoders(model: CrossLayerTranscoder, gradients: bool) -> None:
    """Unit norm per feature over all its writes: drop the gradient along each row (before the
    step), or renormalise the rows (after it)."""
    for weight in model.W_dec:
        flat = weight.detach().view(weight.shape[0], -1)  # shares the parameter's storage
        rows = F.normalize(flat, dim=-1)
        if not gradients:
            flat.copy_(rows)
        elif weight.grad is not None:
            grad = weight.grad.view(weight.shape[0], -1)
            grad -= (grad * rows).sum(-1, keepdim=True) * rows


def _decode_sparse(model: CrossLayerTranscoder, acts: list[torch.Tensor]) -> torch.Tensor:
    """The prediction [N, n, d] from dense per-layer activations, decoding only their nonzero
    entries (variable-length ``embedding_bag`` bags) into one buffer: a dense product or a
    full-width padded tensor per layer costs many times more memory traffic."""
    batch = acts[0].shape[0]
    out = model.b_dec.reshape(1, -1).repeat(batch, 1)
    width = out.shape[1]
    for layer, (decoder, layer_acts) in enumerate(zip(_flat_decoders(model), acts)):
        rows, features = layer_acts.nonzero(as_tuple=True)
        offsets = torch.searchsorted(rows, torch.arange(batch, device=rows.device))
        writes = F.embedding_bag(features, decoder, offsets, per_sample_weights=layer_acts[rows, features],
                                 mode="sum")
        out[:, width - writes.shape[1]:] += writes
    return out.view(batch, model.n_layers, -1)


def _trained_activations(model: CrossLayerTranscoder, x: torch.Tensor, sparsity: str,
                         batch_size: int | None = None) -> list[torch.Tensor]:
    """Each layer's dense activations [N, F] as training picks them (TopK, or BatchTopK over
    batches of `batch_size` tokens: its threshold is per batch)."""
    step = batch_size or x.shape[0]
    dense = [[] for _ in model.layers]
    for start in range(0, x.shape[0], step):
        picked, _ = sparse_forward(model, x[start:start + step], sparsity)
        for layer, (pre, indices, acts, rows) in enumerate(picked):
            if rows is None:
                dense[layer].append(torch.zeros_like(pre).scatter(-1, indices, acts))
            else:
                dense[layer].append(torch.zeros_like(pre).index_put((rows, indices), acts))
    return [torch.cat(parts) for parts in dense]


@torch.no_grad()
def calibrate_cross_layer_thresholds(model: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor,
                                     chunk: int = 1024, sparsity: str = "per_layer", batch_size: int = 1024) -> dict:
    """JumpReLU thresholds for a TopK-trained CLT from calibration tokens (x, y: [N, n, d]): per
    layer the firing-rate-keeping `base_thresholds`, then one common factor from
    `THRESHOLD_SCALES` (`best_factor`: the lowest mean FVU whose mean L0 stays near TopK's).
    Firing counts come from `sparse_forward` over batches of `batch_size` tokens (BatchTopK's
    threshold is per batch: give it the training batch size); the search decodes `chunk` at a time."""
    n = x.shape[0]
    counts = torch.zeros(model.n_layers, model.n_features, dtype=torch.long, device=x.device)
    topk_error = torch.zeros(model.n_layers, dtype=torch.float64, device=x.device)
    for start in range(0, n, batch_size):
        picked, y_topk = sparse_forward(model, x[start:start + batch_size], sparsity)
        topk_error += (y[start:start + batch_size] - y_topk).double().pow(2).sum((0, 2))
        for layer, (_, indices, acts, _) in enumerate(picked):
            counts[layer] += topk_counts(indices, acts, model.n_features)
    base = torch.stack([base_thresholds(model.pre_activations(layer, x[:, layer]), counts[layer])
                        for layer in model.layers])
    topk_l0 = float(counts.sum()) / n / model.n_layers
    thresholds = {factor: torch.where(counts == 0, base, base * factor) for factor in THRESHOLD_SCALES}
    sums = {factor: {"error": torch.zeros(model.n_layers, dtype=torch.float64, device=x.device), "active": 0.0}
            for factor in THRESHOLD_SCALES}
    for start in range(0, n, chunk):
        xs, ys = x[start:start + chunk], y[start:start + chunk]
        pres = [model.pre_activations(layer, xs[:, layer]) for layer in model.layers]
        for factor, threshold in thresholds.items():
            acts = [pre * (pre > threshold[layer]) for layer, pre in enumerate(pres)]
            sums[factor]["active"] += float(sum((a > 0).sum() for a in acts))
            sums[factor]["error"] += (ys - _decode_sparse(model, acts)).double().pow(2).sum((0, 2))
    variance = (y - y.mean(0)).double().pow(2).sum((0, 2)).clamp_min(1e-12)
    candidates = [{"factor": f, "l0": s["active"] / n / model.n_layers,
                   "fvu": float((s["error"] / variance).mean())} for f, s in sums.items()]
    best = best_factor(candidates, topk_l0)
    model.threshold.copy_(thresholds[best["factor"]])
    return {"calibration_tokens": n, "features_never_picked": int((counts == 0).sum()),
            "topk_l0_on_calibration": topk_l0, "topk_fvu_on_calibration": float((topk_error / variance).mean()),
            "threshold_factor": best["factor"], "jumprelu_l0_on_calibration": best["l0"],
            "jumprelu_fvu_on_calibration": best["fvu"], "factors_tried": candidates}


@torch.no_grad()
def evaluate_cross_layer(model: CrossLayerTranscoder, x: torch.Tensor, y: torch.Tensor, topk: bool = False,
                         sparsity: str = "per_layer", batch_size: int | None = None) -> dict:
    """Per-layer FVU, L0 and never-fired share on held-out tokens (`topk`: as trained, with
    `sparsity` over batches of `batch_size`)."""
    if topk:
        acts = dict(enumerate(_trained_activations(model, x, sparsity, batch_size)))
    else:
        acts = {layer: model.activate(layer, model.pre_activations(layer, x[:, layer])) for layer in model.layers}
    layers = []
    for layer in model.layers:
        y_hat = model.decode(layer, acts)
        on = acts[layer] > 0
        layers.append({"layer": layer, "fvu": float(fvu(y[:, layer], y_hat)), "l0": float(on.float().sum(-1).mean()),
                       "fraction_never_fired_on_eval": float(1 - on.any(0).float().mean())})
    return {"mean_fvu": float(np.mean([r["fvu"] for r in layers])),
            "mean_l0": float(np.mean([r["l0"] for r in layers])), "layers": layers}


@torch.no_grad()
def _fold_scales(model: CrossLayerTranscoder, scale_x: torch.Tensor, scale_y: torch.Tensor) -> None:
    """Turn a CLT of x/scale_x -> y/scale_y (per layer) into one of x -> y. Layer i's
    activations are scaled by scale_y[i] (its encoder by scale_y[i]/scale_x[i]); its write to
    layer j by scale_y[j]/scale_y[i]."""
    for i in model.layers:
        model.W_enc[i].mul_(scale_y[i] / scale_x[i])
        model.b_enc[i].mul_(scale_y[i])
        if model.threshold is not None:
            model.threshold[i].mul_(scale_y[i])
        model.W_dec[i].mul_((scale_y[i:] / scale_y[i])[None, :, None])
    model.b_dec.mul_(scale_y[:, None])


def train_cross_layer_transcoder(*, shard_paths, out_dir: str | Path, out_metrics: str | Path,
                                 settings: TrainCrossLayerTranscoderSettings) -> dict:
    """Train one CLT over `settings.layers` (0..n-1) from their shards (in that order); write
    its files into `out_dir` and its metrics."""
    architecture, layers = settings.architecture, settings.layers
    training = dataclasses.replace(settings.training, device=pick_device(settings.training.device))
    check_cross_layer(layers, architecture.activation, architecture.skip_connection, training.jumprelu_training)
    check_sparsity(architecture.activation, architecture.k, architecture.n_features)
    if len(shard_paths) != len(layers):
        raise ValueError(f"{len(shard_paths)} activation shards given for layers {list(layers)}")
    started = time.perf_counter()
    kind = CrossLayerKind(aligned_shards(shard_paths), architecture, training, Path(out_dir), out_metrics)
    return train(kind, training, started)


class CrossLayerKind:
    """What `circuitflow.transcoders.trainer.train` needs to know about a CLT. It trains as TopK
    (`model`); calibration copies it into the JumpReLU CLT that is saved (`saved`)."""

    name, reports_step_costs, layer, controller, resamples = "clt", True, None, None, True
    label = "train_cross_layer_transcoder"

    def __init__(self, shards: list[ActivationShard], architecture, settings: TrainingSettings, out_dir: Path,
                 out_metrics):
        self.shards, self.architecture, self.settings = shards, architecture, settings
        self.out_dir, self.out_metrics = out_dir, out_metrics
        self.n_layers, self.d_model = len(shards), shards[0].d_model
        self.seed = settings.seed * 1000 + 999  # apart from every per-layer transcoder's seed
        self.feature_shape = (self.n_layers, architecture.n_features)
        self.checkpoint_path = out_dir / "checkpoints" / "clt.pt"
        self.saved = None
        self.loss_weights = layer_loss_weights(self.n_layers, settings.clt_layer_weight_exponent)

    init = staticmethod(_init_from_data)

    def resample(self, model: CrossLayerTranscoder, optimizer, x, y, silent, generator) -> int:
        return _resample(model, optimizer, x, y, silent, generator, self.settings.clt_sparsity)

    def batches(self) -> LockstepBatches:
        return LockstepBatches(self.shards, self.settings, [self.settings.seed, 999])

    def build(self) -> CrossLayerTranscoder:
        model = CrossLayerTranscoder(self.n_layers, self.d_model,
                                     dataclasses.replace(self.architecture, activation="topk"))
        self.parameters = sum(p.numel() for p in model.parameters())
        log.info("CLT over %d layers: %d features per layer, %.1fM parameters (%.2f GB float32, about 4x that "
                 "with gradients and Adam's moments)", self.n_layers, model.n_features, self.parameters / 1e6,
                 self.parameters * 4 / 1e9)
        return model

    def scales(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer, as [n_layers, 1]: they broadcast over a lockstep batch [B, n_layers, d]."""
        return tuple(torch.tensor([centred_rms(t[:, i]) for i in range(self.n_layers)])[:, None] for t in (x, y))

    def loss(self, model: CrossLayerTranscoder, x, y, tokens_since_fired):
        picked, y_hat = sparse_forward(model, x, self.settings.clt_sparsity)
        fvus = _layer_fvus(y, y_hat)
        loss_fvu = fvus.mean()
        objective = loss_fvu if self.loss_weights is None else (fvus * self.loss_weights.to(fvus.device)).mean()
        fired = torch.zeros_like(tokens_since_fired, dtype=torch.bool)
        for layer, (_, indices, acts, _) in enumerate(picked):
            fired[layer, indices[acts > 0]] = True
        dead = tokens_since_fired >= self.settings.dead_tokens
        alpha = self.settings.auxk_alpha
        aux = _auxk(model, picked, (y - y_hat).detach(), dead) if alpha else loss_fvu.new_zeros(())
        return loss_fvu, aux, objective + alpha * aux, fired

    def constrain_gradients(self, model: CrossLayerTranscoder) -> None:
        _constrain_decoders(model, gradients=True)

    def after_step(self, model: CrossLayerTranscoder, aux) -> None:
        _constrain_decoders(model, gradients=False)

    def calibrate(self, model: CrossLayerTranscoder, tokens) -> dict:
        self.saved = CrossLayerTranscoder(self.n_layers, self.d_model, self.architecture).to(model.b_dec.device)
        self.saved.load_state_dict(model.state_dict(), strict=False)  # the same weights, plus thresholds
        return calibrate_cross_layer_thresholds(self.saved, *tokens(), sparsity=self.settings.clt_sparsity,
                                                batch_size=self.settings.batch_size)

    def fold_scales(self, model: CrossLayerTranscoder, scale_x: torch.Tensor, scale_y: torch.Tensor) -> None:
        device = model.b_dec.device
        for each in (self.saved, model):
            _fold_scales(each, scale_x[:, 0].to(device), scale_y[:, 0].to(device))

    def evaluate(self, model: CrossLayerTranscoder, x, y, as_trained: bool = False) -> dict:
        if as_trained:
            return evaluate_cross_layer(model, x, y, topk=True, sparsity=self.settings.clt_sparsity,
                                        batch_size=self.settings.batch_size)
        return evaluate_cross_layer(self.saved, x, y)

    def metrics(self, model: CrossLayerTranscoder, eval_x, eval_y, calibration: dict, tokens_since_fired) -> dict:
        held_out = self.evaluate(model, eval_x, eval_y)
        dead = (tokens_since_fired >= self.settings.dead_tokens).float().mean(1)
        for row, dead_fraction in zip(held_out["layers"], dead.tolist()):
            row["dead_fraction"] = dead_fraction
        return {"kind": "cross_layer_transcoder", "n_layers": self.n_layers, **held_out,
                "max_dead_fraction": float(dead.max()), "calibration": calibration, "parameters": self.parameters}

    def save(self, model: CrossLayerTranscoder) -> None:
        save_cross_layer_transcoder(self.saved, self.out_dir)

    def log_summary(self, metrics: dict) -> None:
        before = metrics["calibration"]["topk_before_calibration"]
        log.info("CLT: held-out mean FVU %.4f at mean L0 %.1f (TopK before calibration: %.4f at %.1f); max dead "
                 "%.3f; %.2f s/step, %.1fs in all", metrics["mean_fvu"], metrics["mean_l0"], before["mean_fvu"],
                 before["mean_l0"], metrics["max_dead_fraction"], metrics["seconds_per_step"], metrics["seconds"])
