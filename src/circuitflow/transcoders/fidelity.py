"""evaluate_transcoders: what each transcoder does to the model, on held-out validation windows.

Two measurements, both on the validation split (training reads the train split only):

- **Reconstruction**, from one clean forward: per layer FVU, L0, and the fractions of dead
  (never fired on these tokens) and dense (fired on more than `dense_fraction` of them) latents.
- **Splicing**, on the first `splice_windows` of those windows: the model's next-token
  cross-entropy with one layer's MLP output replaced by its transcoder's prediction, against the
  clean model and against that MLP zero-ablated, giving

      loss_recovered = (CE_ablated - CE_spliced) / (CE_ablated - CE_clean)

  (SAELens's ``ce_loss_score`` form), the KL divergence from the clean next-token distribution
  and the top-1 agreement with it; then the same with every layer of the set replaced at once,
  each transcoder reading the already-replaced stream: the replacement model that
  circuit-tracer traces, without its error nodes.

A cross-layer transcoder is measured the same way: its prediction of layer j reads the MLP
inputs of every layer up to j in the same pass (`circuitflow.transcoders.replacement`).

Position 0 keeps its real MLP output in every variant: circuit-tracer never attributes it and
the transcoders were not trained on it (see `circuitflow.model.hooks`). Its prediction is the
same in every variant, so losses are averaged over the predictions made at positions 1..T-2.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from circuitflow.config import EvaluateTranscodersSettings
from circuitflow.data.dataset import read_windows
from circuitflow.io import atomic_path, write_json
from circuitflow.logs import Progress, pick_device
from circuitflow.model.facts import read_model_facts
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT, decoder_layers, hook_point, mlp_output, mlp_recorder
from circuitflow.model.loading import load_model
from circuitflow.transcoders.replacement import load_replacement
from circuitflow.transcoders.sets import read_transcoder_set

log = logging.getLogger("circuitflow.transcoders")

ALL_LAYERS = "all"
CSV_COLUMNS = ("layer", "fvu", "l0", "dead_fraction", "dense_fraction", "ce_clean", "ce_spliced",
               "ce_ablated", "loss_recovered", "kl_spliced", "kl_ablated", "top1_agreement")


@dataclass
class _Reconstruction:
    """Running sums for one layer's FVU, L0 and firing counts (float64, exact over batches)."""

    tokens: int = 0
    squared_error: float = 0.0
    sum_y: torch.Tensor | None = None
    sum_y_squared: float = 0.0
    active: float = 0.0
    fired: torch.Tensor | None = None

    def add(self, y: torch.Tensor, y_hat: torch.Tensor, acts: torch.Tensor) -> None:
        y, y_hat = y.double(), y_hat.double()
        self.tokens += y.shape[0]
        self.squared_error += float((y - y_hat).pow(2).sum())
        self.sum_y = y.sum(0) if self.sum_y is None else self.sum_y + y.sum(0)
        self.sum_y_squared += float(y.pow(2).sum())
        on = acts > 0
        self.active += float(on.sum())
        counts = on.sum(0)
        self.fired = counts if self.fired is None else self.fired + counts

    def result(self, dense_fraction: float) -> dict:
        variance = self.sum_y_squared - float(self.sum_y.pow(2).sum()) / self.tokens
        frequency = self.fired.double() / self.tokens
        return {"fvu": self.squared_error / max(variance, 1e-30), "l0": self.active / self.tokens,
                "dead_fraction": float((self.fired == 0).double().mean()),
                "dense_fraction": float((frequency > dense_fraction).double().mean()),
                "tokens": self.tokens}


@dataclass
class _Splice:
    """Running sums for one variant's next-token loss against the clean model."""

    tokens: int = 0
    ce: float = 0.0
    kl: float = 0.0
    agree: float = 0.0

    def add(self, log_probs: torch.Tensor, clean_log_probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.tokens += targets.numel()
        self.ce += float(-log_probs.gather(-1, targets[..., None]).sum())
        self.kl += float((clean_log_probs.exp() * (clean_log_probs - log_probs)).sum())
        self.agree += float((log_probs.argmax(-1) == clean_log_probs.argmax(-1)).sum())

    @property
    def mean_ce(self) -> float:
        return self.ce / self.tokens


@dataclass
class _Variants:
    clean: _Splice = field(default_factory=_Splice)
    spliced: dict = field(default_factory=dict)  # layer or ALL_LAYERS -> _Splice
    ablated: dict = field(default_factory=dict)


class _Replace:
    """Forward hooks that replace the MLP output at positions >= 1 of the `replaced` layers, by
    the set's prediction (`ablate=False`) or by zeros. The prediction reads the MLP inputs of
    this same pass: a per-layer transcoder its own layer's, a CLT every layer's up to it (so for
    a CLT every layer up to the last replaced one is hooked, to encode its features)."""

    def __init__(self, blocks: list, replacement, replaced: tuple[int, ...], ablate: bool,
                 hooks: tuple[str, str] = (HOOK_IN, HOOK_OUT)):
        self.replacement, self.replaced, self.ablate = replacement, set(replaced), ablate
        self.acts: dict[int, torch.Tensor] = {}
        self.inputs: dict[int, torch.Tensor] = {}
        hooked = self.replaced
        if replacement.cross_layer and not ablate:
            hooked = [layer for layer in replacement.layers if layer <= max(replaced)]
        # the input hook's module runs first (the MLP itself for the default hooks, where the
        # read hook is registered before the write hook and so runs first)
        reads = {layer: hook_point(blocks[layer], hooks[0]) for layer in hooked if not ablate}
        self.handles = [module.register_forward_hook(self._read(layer, read)) for layer, (module, read) in reads.items()]
        self.handles += [hook_point(blocks[layer], hooks[1])[0].register_forward_hook(self._write(layer))
                         for layer in hooked if layer in self.replaced]

    def _read(self, layer: int, read):
        def hook(module, inputs, output):
            x = read(inputs, output)[:, 1:]
            self.inputs[layer] = x.reshape(-1, x.shape[-1]).float()
            self.acts[layer] = self.replacement.encode(layer, self.inputs[layer])
        return hook

    def _write(self, layer: int):
        def hook(module, inputs, output):
            out = mlp_output(output).clone()
            if self.ablate:
                out[:, 1:] = 0
            else:
                prediction = self.replacement.decode(layer, self.acts, self.inputs[layer])
                out[:, 1:] = prediction.view(out[:, 1:].shape).to(out.dtype)
            return (out, *output[1:]) if isinstance(output, tuple) else out
        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


def _next_token_log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the predictions made at positions 1..T-2 (for targets 2..T-1)."""
    logits = model(input_ids=ids, use_cache=False).logits[:, 1:-1]
    return F.log_softmax(logits.float(), dim=-1)


def evaluate_transcoders(*, model_dir: str | Path, transcoder_set: str | Path, validation_split: str | Path,
                         out_json: str | Path, out_csv: str | Path, settings: EvaluateTranscodersSettings) -> dict:
    """Measure every transcoder of the set on the validation split; write fidelity.json and .csv."""
    started = time.perf_counter()
    facts = read_model_facts(model_dir)
    set_config = read_transcoder_set(transcoder_set)
    set_config.require_layers(settings.layers, "evaluate_transcoders")
    if set_config.d_model != facts.d_model:
        raise ValueError(f"transcoder set {transcoder_set} has d_model {set_config.d_model} but the model "
                         f"has {facts.d_model}; retrain the transcoders for this model")
    device = torch.device(pick_device(settings.device))
    model, _ = load_model(model_dir, settings.model_dtype)
    model.to(device)
    replacement = load_replacement(set_config, settings.layers, device=device)
    layers = tuple(settings.layers)
    blocks = decoder_layers(model)
    hooks = (set_config.feature_input_hook, set_config.feature_output_hook)  # the MLP's, unless imported

    windows = read_windows(validation_split)
    tokens = np.asarray(windows.column("tokens").to_pylist(), dtype=np.int64)
    n_windows = min(settings.windows, len(tokens))
    n_splice = min(settings.splice_windows, n_windows)
    if tokens.shape[1] < 3:
        raise ValueError(f"validation windows of {tokens.shape[1]} tokens are too short to evaluate next-token "
                         "loss; raise dataset.context_length")
    reconstruction = {layer: _Reconstruction() for layer in settings.layers}
    variants = _Variants()
    n_variants = 2 * len(layers) + 2
    progress = Progress(log, "evaluate_transcoders", n_windows + n_splice * n_variants, "window passes")
    log.info("evaluating %d layers (%s) on %d validation windows (%d with splicing, %d variants)", len(layers),
             set_config.kind,
             n_windows, n_splice, n_variants)

    with torch.inference_mode():
        for start in range(0, n_windows, settings.batch_size):
            ids = torch.from_numpy(tokens[start:min(start + settings.batch_size, n_windows)]).to(device)
            recorder = mlp_recorder(model, layers, stop=False, input_hook=hooks[0], output_hook=hooks[1])
            try:
                clean = _next_token_log_probs(model, ids)
            finally:
                recorder.close()
            xs = {layer: x.reshape(-1, x.shape[-1]).float() for layer, (x, _) in recorder.captured.items()}
            acts = {layer: replacement.encode(layer, xs[layer]) for layer in layers}
            for layer in layers:
                y = recorder.captured[layer][1]
                reconstruction[layer].add(y.reshape(-1, y.shape[-1]).float(),
                                          replacement.decode(layer, acts, xs[layer]), acts[layer])
            progress.update(len(ids))
            splice_ids = ids[:max(0, min(len(ids), n_splice - start))]
            if len(splice_ids):
                _splice_batch(model, blocks, replacement, layers, splice_ids, clean[:len(splice_ids)], variants,
                              hooks)
                progress.update(len(splice_ids) * n_variants)

    result = _summarise(reconstruction, variants, settings, set_config, facts, n_windows, n_splice,
                        tokens.shape[1], time.perf_counter() - started)
    _write_outputs(result, out_json, out_csv)
    overall = result["all_layers"]
    log.info("all %d layers spliced: CE %.4f vs clean %.4f (ablated %.4f), loss recovered %.3f, KL %.4f; "
             "mean FVU %.4f in %.1fs", len(layers), overall["ce_spliced"], overall["ce_clean"],
             overall["ce_ablated"], overall["loss_recovered"], overall["kl_spliced"], result["mean_fvu"],
             result["seconds"])
    return result


def _splice_batch(model, blocks, replacement, layers, ids, clean, variants: _Variants,
                  hooks: tuple[str, str]) -> None:
    targets = ids[:, 2:]
    variants.clean.add(clean, clean, targets)
    groups = [(layer, (layer,)) for layer in layers] + [(ALL_LAYERS, layers)]
    for key, replaced in groups:
        for ablate, store in ((False, variants.spliced), (True, variants.ablated)):
            with _Replace(blocks, replacement, replaced, ablate, hooks):
                log_probs = _next_token_log_probs(model, ids)
            store.setdefault(key, _Splice()).add(log_probs, clean, targets)


def _splice_row(clean: _Splice, spliced: _Splice, ablated: _Splice) -> dict:
    ce_clean, ce_spliced, ce_ablated = clean.mean_ce, spliced.mean_ce, ablated.mean_ce
    gap = ce_ablated - ce_clean
    return {"ce_clean": ce_clean, "ce_spliced": ce_spliced, "ce_ablated": ce_ablated,
            # undefined when ablating the MLP does not hurt the model at all
            "loss_recovered": (ce_ablated - ce_spliced) / gap if abs(gap) > 1e-9 else None,
            "kl_spliced": spliced.kl / spliced.tokens, "kl_ablated": ablated.kl / ablated.tokens,
            "top1_agreement": spliced.agree / spliced.tokens, "splice_tokens": spliced.tokens}


def _summarise(reconstruction, variants: _Variants, settings, set_config, facts, n_windows, n_splice,
               context, seconds) -> dict:
    layers = []
    for layer, sums in reconstruction.items():
        layers.append({"layer": layer, **sums.result(settings.dense_fraction),
                       **_splice_row(variants.clean, variants.spliced[layer], variants.ablated[layer])})
    mean = {key: float(np.mean([row[key] for row in layers])) for key in ("fvu", "l0", "dead_fraction",
                                                                            "dense_fraction")}
    all_layers = {"layer": ALL_LAYERS, **{key: mean[key] for key in mean},
                  **_splice_row(variants.clean, variants.spliced[ALL_LAYERS], variants.ablated[ALL_LAYERS])}
    return {
        "transcoder_set": str(Path(set_config.path)), "kind": set_config.kind, "scan": set_config.scan,
        "activation": set_config.architecture.activation, "n_features": set_config.n_features,
        "complete": sorted(reconstruction) == list(range(facts.n_layers)),
        "windows": n_windows, "splice_windows": n_splice, "context_length": context,
        "position_0": "kept clean in every variant; losses cover the predictions at positions 1..T-2",
        "dense_fraction_threshold": settings.dense_fraction,
        "dead_definition": "never fired on the evaluation tokens",
        "mean_fvu": mean["fvu"], "max_dead_fraction": max(row["dead_fraction"] for row in layers),
        "layers": layers, "all_layers": all_layers, "seconds": seconds,
    }


def _write_outputs(result: dict, out_json: str | Path, out_csv: str | Path) -> None:
    with atomic_path(out_csv) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for row in [*result["layers"], result["all_layers"]]:
                writer.writerow({key: ("" if row.get(key) is None else row[key]) for key in CSV_COLUMNS})
    write_json(out_json, result)
