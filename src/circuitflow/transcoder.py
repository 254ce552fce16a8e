"""train_transcoder: a sparse replacement of one MLP, trained from its cached activations.

A transcoder reads the MLP input ``x`` and predicts the MLP output ``y``:

    pre  = x @ W_enc.T + b_enc                  # [tokens, n_features]
    acts = activation(pre)                      # TopK (ReLU of the k largest), ReLU or JumpReLU
    y^   = acts @ W_dec + b_dec (+ x @ W_skip.T)

Files use circuit-tracer's per-layer keys (``W_enc [F,d]``, ``W_dec [F,d]``, ``b_enc``,
``b_dec``, optional ``W_skip [d,d]`` and ``activation_function.threshold``), plus safetensors
header metadata naming the activation and ``k``. ReLU and JumpReLU files load with
circuit-tracer's own ``load_relu_transcoder``; TopK cannot be expressed in circuit-tracer
0.5.0's files, so `load_transcoder_set` builds it from the set's ``config.yaml``.

Training (defaults follow the TopK recipe of Gao et al. and EleutherAI's sparsify): FVU loss,
AuxK loss on dead latents (alpha 1/32, k_aux = d_model/2), Adam with linear warmup and linear
decay, decoder rows kept at unit norm (with the parallel gradient component removed),
``b_dec`` initialised to the mean MLP output and ``b_enc`` centring the mean input.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from circuitflow.activations import HOOK_IN, HOOK_OUT, ActivationShard
from circuitflow.io import atomic_path, write_json
from circuitflow.logs import Progress

log = logging.getLogger("circuitflow.transcoder")

ACTIVATIONS = ("topk", "relu", "jumprelu")
TRAINABLE = ("topk", "relu")


@dataclass(frozen=True)
class TrainSettings:
    n_features: int = 2048
    activation: str = "topk"
    k: int = 32
    skip_connection: bool = True
    steps: int = 250
    batch_size: int = 1024
    lr: float = 5e-3
    warmup_steps: int = 20
    final_lr_fraction: float = 0.0
    auxk_alpha: float = 1 / 32
    dead_tokens: int = 100_000
    l1_coefficient: float = 1e-3
    eval_tokens: int = 2048
    shuffle_row_groups: int = 4
    log_every_s: float = 10.0
    seed: int = 0
    device: str = "cpu"


class ReluTopK(nn.Module):
    """Keep the k largest pre-activations, then ReLU: sparse and never negative.

    circuit-tracer 0.5.0's own ``TopK`` skips the ReLU; this module is used in its place so
    attribution sees exactly the activations the transcoder was trained with.
    """

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def extra_repr(self) -> str:
        return f"k={self.k}"


class Transcoder(nn.Module):
    def __init__(self, d_model: int, n_features: int, activation: str = "topk", k: int = 16,
                 skip_connection: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"transcoder activation {activation!r} is not one of {ACTIVATIONS}")
        if activation == "topk" and not 0 < k <= n_features:
            raise ValueError(f"transcoder k={k} must be in 1..n_features ({n_features})")
        self.d_model, self.n_features, self.activation, self.k = d_model, n_features, activation, k
        self.W_enc = nn.Parameter(torch.zeros(n_features, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.zeros(n_features, d_model))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.W_skip = nn.Parameter(torch.zeros(d_model, d_model)) if skip_connection else None
        self.threshold = nn.Parameter(torch.zeros(n_features)) if activation == "jumprelu" else None

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense feature activations [tokens, n_features]."""
        pre = self.pre_activations(x)
        if self.activation == "topk":
            return ReluTopK(self.k)(pre)
        if self.activation == "jumprelu":
            return pre * (pre > self.threshold)
        return F.relu(pre)

    def decode(self, acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            out = out + x @ self.W_skip.T
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def metadata(self) -> dict[str, str]:
        return {"format": "circuitflow-transcoder-v1", "activation": self.activation, "k": str(self.k),
                "d_model": str(self.d_model), "n_features": str(self.n_features)}

    def state_for_file(self) -> dict[str, torch.Tensor]:
        """Tensors under circuit-tracer's per-layer key names."""
        state = {name: getattr(self, name) for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if self.W_skip is not None:
            state["W_skip"] = self.W_skip
        if self.threshold is not None:
            state["activation_function.threshold"] = self.threshold
        return {name: tensor.detach().float().cpu().contiguous() for name, tensor in state.items()}


def save_transcoder(transcoder: Transcoder, path: str | Path, extra_metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    metadata = {**transcoder.metadata(), **{k: str(v) for k, v in (extra_metadata or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(transcoder.state_for_file(), str(tmp), metadata=metadata)


def load_transcoder(path: str | Path) -> Transcoder:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    activation = meta.get("activation") or ("jumprelu" if "activation_function.threshold" in tensors else "relu")
    n_features, d_model = tensors["W_enc"].shape
    transcoder = Transcoder(d_model, n_features, activation, int(meta.get("k", 0) or 0) or 1,
                            skip_connection="W_skip" in tensors)
    state = {("threshold" if key == "activation_function.threshold" else key): value
             for key, value in tensors.items()}
    transcoder.load_state_dict(state)
    return transcoder


# --------------------------------------------------------------------------- training


class _Batches:
    """Seeded streaming batches from one shard: row groups in random order, rows shuffled
    within a buffer of `shuffle_row_groups` row groups. The last `eval_tokens` rows are held out."""

    def __init__(self, shard: ActivationShard, settings: TrainSettings, rng: np.random.Generator):
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


def topk_forward(model: Transcoder, x: torch.Tensor):
    """Sparse TopK forward: decode only the k active rows (embedding_bag), not all features."""
    pre = model.pre_activations(x)
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


def _lr_factor(step: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    span = max(settings.steps - settings.warmup_steps, 1)
    progress = (step - settings.warmup_steps) / span
    return 1.0 - (1.0 - settings.final_lr_fraction) * progress


@torch.no_grad()
def evaluate(model: Transcoder, x: torch.Tensor, y: torch.Tensor) -> dict:
    acts = model.encode(x)
    y_hat = model.decode(acts, x)
    fired = (acts > 0).any(0)
    return {
        "fvu": float(fvu(y, y_hat)),
        "l0": float((acts > 0).float().sum(-1).mean()),
        "fraction_never_fired_on_eval": float(1 - fired.float().mean()),
    }


def train_transcoder(shard_path: str | Path, layer: int, settings: TrainSettings,
                     out_weights: str | Path, out_metrics: str | Path) -> dict:
    """Train one layer's transcoder from its activation shard; write weights and metrics."""
    if settings.activation not in TRAINABLE:
        raise ValueError(f"transcoder.activation {settings.activation!r}: training supports {TRAINABLE}")
    started = time.perf_counter()
    shard = ActivationShard(shard_path)
    torch.manual_seed(settings.seed * 1000 + layer)
    generator = torch.Generator().manual_seed(settings.seed * 1000 + layer)
    rng = np.random.default_rng([settings.seed, layer])
    batches = _Batches(shard, settings, rng)
    device = torch.device(settings.device)
    eval_x, eval_y = (t.to(device) for t in batches.eval_set())

    model = Transcoder(shard.d_model, settings.n_features, settings.activation, settings.k,
                       settings.skip_connection)
    stream = iter(batches)
    first_x, first_y = next(stream)
    # Train on inputs and outputs rescaled to unit RMS, so the learning rate means the same
    # for every model and layer (MLP output scales differ by orders of magnitude); the scales
    # are folded back into the weights before saving.
    scale_x, scale_y = _rms(first_x), _rms(first_y)
    first_x, first_y = (first_x / scale_x).to(device), (first_y / scale_y).to(device)
    _init_from_data(model, first_x.cpu(), first_y.cpu(), generator)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, settings))
    tokens_since_fired = torch.zeros(settings.n_features, dtype=torch.long, device=device)
    progress = Progress(log, f"train_transcoder layer {layer}", settings.steps, "steps", settings.log_every_s)
    curve = []
    x, y = first_x, first_y
    for step in range(settings.steps):
        if step:
            x, y = next(stream)
            x, y = (x / scale_x).to(device), (y / scale_y).to(device)
        if settings.activation == "topk":
            pre, indices, acts, y_hat = topk_forward(model, x)
            loss_fvu = fvu(y, y_hat)
            fired = torch.zeros(settings.n_features, dtype=torch.bool, device=device)
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
        if step % max(settings.steps // 20, 1) == 0 or step == settings.steps - 1:
            curve.append({"step": step, "fvu": float(loss_fvu.detach()), "aux": float(aux.detach()),
                          "dead": int((tokens_since_fired >= settings.dead_tokens).sum())})
        progress.update(1)

    _fold_scales(model, scale_x, scale_y)
    metrics = {
        "layer": layer,
        **evaluate(model, eval_x, eval_y),
        "dead_fraction": float((tokens_since_fired >= settings.dead_tokens).float().mean()),
        "dead_definition": f"no activation in the last {settings.dead_tokens} training tokens",
        "eval_tokens": int(eval_x.shape[0]),
        "tokens_seen": settings.steps * settings.batch_size,
        "shard_tokens": shard.n_rows,
        "steps": settings.steps,
        "seconds": time.perf_counter() - started,
        "curve": curve,
        "settings": asdict(settings),
    }
    save_transcoder(model, out_weights, {"layer": layer})
    write_json(out_metrics, metrics)
    log.info("layer %d: FVU %.4f, L0 %.1f, dead %.3f, %d tokens in %.1fs", layer, metrics["fvu"],
             metrics["l0"], metrics["dead_fraction"], metrics["tokens_seen"], metrics["seconds"])
    return metrics


def _rms(t: torch.Tensor) -> float:
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


# --------------------------------------------------------------------------- transcoder sets


def write_transcoder_set_config(weights: dict[int, str | Path], out_config: str | Path,
                                model_dir: str | Path, scan: str) -> dict:
    """Write the set's circuit-tracer `config.yaml` (paths relative to the config's folder)."""
    import yaml

    out_config = Path(out_config)
    layers = sorted(weights)
    first = load_transcoder(weights[layers[0]])
    config = {
        "model_kind": "transcoder_set",
        "model_name": str(Path(model_dir).resolve()),
        "feature_input_hook": HOOK_IN,
        "feature_output_hook": HOOK_OUT,
        "activation": first.activation,
        "k": first.k if first.activation == "topk" else None,
        "d_model": first.d_model,
        "n_features": first.n_features,
        "skip_connection": first.W_skip is not None,
        "scan": scan,
        "transcoders": [str(Path(weights[layer]).resolve().relative_to(out_config.parent.resolve()))
                        for layer in layers],
    }
    with atomic_path(out_config) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def to_circuit_tracer(transcoder: Transcoder, layer: int, dtype=torch.float32):
    """The equivalent circuit-tracer `SingleLayerTranscoder` (same weights, same activation)."""
    from circuit_tracer.transcoder import SingleLayerTranscoder
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    if transcoder.activation == "topk":
        activation = ReluTopK(transcoder.k)
    elif transcoder.activation == "jumprelu":
        activation = JumpReLU(transcoder.threshold.detach().clone().to(dtype), bandwidth=0.1)
    else:
        activation = F.relu
    out = SingleLayerTranscoder(transcoder.d_model, transcoder.n_features, activation, layer,
                                skip_connection=transcoder.W_skip is not None,
                                device=torch.device("cpu"), dtype=dtype)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec") + (("W_skip",) if transcoder.W_skip is not None else ()):
            getattr(out, name).copy_(getattr(transcoder, name))
    return out


def load_transcoder_set(config_path: str | Path, d_model: int | None = None, dtype=torch.float32):
    """Build circuit-tracer's `TranscoderSet` from a set `config.yaml` written above."""
    import yaml
    from circuit_tracer.transcoder import TranscoderSet

    config_path = Path(config_path)
    config = yaml.safe_load(config_path.read_text())
    transcoders = {}
    for layer, relative in enumerate(config["transcoders"]):
        transcoder = load_transcoder(config_path.parent / relative)
        if d_model is not None and transcoder.d_model != d_model:
            raise ValueError(
                f"transcoder {relative} has d_model {transcoder.d_model} but the model has {d_model}")
        transcoders[layer] = to_circuit_tracer(transcoder, layer, dtype)
    return TranscoderSet(transcoders, feature_input_hook=config["feature_input_hook"],
                         feature_output_hook=config["feature_output_hook"], scan=config["scan"])
