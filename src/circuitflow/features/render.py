"""Turning a layer's streaming state into circuit-tracer's per-feature JSON objects."""

from __future__ import annotations

import math

import numpy as np
import torch

from circuitflow.config import CollectFeaturesSettings
from circuitflow.features.ids import cantor
from circuitflow.features.statistics import LayerStats, TopSlots, linear_histogram, quantiles_from_histogram


def logit_lens(model, directions: torch.Tensor, n_logits: int) -> tuple[torch.Tensor, ...]:
    """Top/bottom vocabulary logits of output directions [F, d_model] through the unembedding.

    The final norm is applied the way it acts on a residual direction: its per-dimension gain
    (and, for LayerNorm, mean removal); the per-token normalising scale is positive and leaves
    the ranking unchanged.
    """
    unembed = model.get_output_embeddings().weight.detach().float()  # [vocab, d_model]
    norm = _final_norm(model)
    d = directions
    if isinstance(norm, torch.nn.LayerNorm):
        d = d - d.mean(-1, keepdim=True)
    if norm is not None and getattr(norm, "weight", None) is not None:
        gain = norm.weight.detach().float()
        if "Gemma" in type(norm).__name__:  # Gemma's RMSNorm scales by (1 + weight)
            gain = 1 + gain
        d = d * gain
    tops, bottoms = [], []
    for chunk in torch.split(d, 1024):
        logits = chunk @ unembed.T
        tops.append(torch.topk(logits, n_logits, dim=-1))
        bottoms.append(torch.topk(logits, n_logits, dim=-1, largest=False))
    return (torch.cat([t.values for t in tops]), torch.cat([t.indices for t in tops]),
            torch.cat([b.values for b in bottoms]), torch.cat([b.indices for b in bottoms]))


def _final_norm(model):
    base = getattr(model, model.base_model_prefix, model)
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        if hasattr(base, name):
            return getattr(base, name)
    return None


class _SlotArrays:
    """A TopSlots store as numpy arrays, with each group's slots flattened into one row."""

    def __init__(self, slots: TopSlots, rows: int):
        slots.flush()
        self.keys = slots.keys.numpy().reshape(rows, -1)
        self.values = slots.values.numpy().reshape(rows, -1)
        self.seq = slots.seq.numpy().reshape(rows, -1)
        self.pos = slots.pos.numpy().reshape(rows, -1)
        self.context = slots.context.numpy().reshape(rows, -1, slots.context.shape[-1])

    def examples(self, row: int) -> np.ndarray:
        """Indices of the filled slots of `row`, by descending activation (ties: seq, pos)."""
        filled = np.flatnonzero(np.isfinite(self.keys[row]))
        order = np.lexsort((self.pos[row, filled], self.seq[row, filled], -self.values[row, filled]))
        return filled[order]


class FeatureWriter:
    """Turns one layer's streaming state into per-feature JSON objects (circuit-tracer schema)."""

    def __init__(self, stats: LayerStats, source, layer: int, window_text: list[list[str]], token_text,
                 logits: tuple, settings: CollectFeaturesSettings, total_tokens: int):
        self.stats, self.source, self.layer, self.settings = stats, source, layer, settings
        self.window_text, self.token_text, self.total_tokens = window_text, token_text, total_tokens
        self.logits = tuple(t.numpy() for t in logits)
        n = stats.n_features
        self.top = _SlotArrays(stats.top, n)
        self.bands = _SlotArrays(stats.bands, n)
        self.random = _SlotArrays(stats.random, n)
        self.hist = stats.histogram.numpy()
        self.counts = stats.counts.sum(0).numpy()

    def _render(self, arrays: _SlotArrays, row: int, slot: int, repeated: bool = False) -> dict:
        settings = self.settings
        seq, pos = int(arrays.seq[row, slot]), int(arrays.pos[row, slot])
        text = self.window_text[seq]
        lo, hi = max(0, pos - settings.context_before), min(len(text), pos + settings.context_after + 1)
        offset = pos - settings.context_before
        acts = np.round(arrays.context[row, slot, lo - offset:hi - offset].astype(np.float64), 3)
        acts[pos - lo] = round(float(arrays.values[row, slot]), 3)  # context is float16; the peak is exact
        return {"tokens": text[lo:hi], "tokens_acts_list": acts.tolist(), "train_token_ind": pos - lo,
                "is_repeated_datapoint": repeated}

    def _top_group(self, row: int) -> tuple[list[dict], float, set[tuple[int, int]]]:
        settings, top = self.settings, self.top
        picked: list[tuple[int, int, int]] = []  # (slot, seq, pos)
        rendered = []
        candidates = top.examples(row)
        for slot in candidates:
            seq, pos = int(top.seq[row, slot]), int(top.pos[row, slot])
            duplicate = any(seq == s and abs(pos - p) <= settings.window // 2 for _, s, p in picked)
            if duplicate and settings.dedupe:
                continue
            picked.append((slot, seq, pos))
            rendered.append(self._render(top, row, slot, duplicate))
            if len(picked) == settings.top_k:
                break
        return rendered, float(top.values[row, candidates[0]]), {(s, p) for _, s, p in picked}

    def _quantile_groups(self, row: int, quantile_values: np.ndarray, act_max: float,
                         shown: set[tuple[int, int]]) -> list[dict]:
        settings, bands = self.settings, self.bands
        slots = np.array([slot for slot in bands.examples(row)
                          if (int(bands.seq[row, slot]), int(bands.pos[row, slot])) not in shown], dtype=np.int64)
        values = bands.values[row, slots]
        bounds = [0.0] + [float(quantile_values[int(100 * q / settings.n_quantiles) - 1])
                          for q in range(1, settings.n_quantiles)] + [math.inf]
        groups = []
        for q in reversed(range(settings.n_quantiles)):
            low, high = bounds[q], bounds[q + 1]
            members = slots[(values >= low) & (values < high)]
            if len(members) > settings.examples_per_quantile:  # spread over the range, deterministic
                members = members[np.linspace(0, len(members) - 1, settings.examples_per_quantile).round().astype(int)]
            if len(members):
                upper = act_max if math.isinf(high) else high
                name = (f"Quantile {100 * q // settings.n_quantiles}-{100 * (q + 1) // settings.n_quantiles}% "
                        f"(activation {low:.2f}-{upper:.2f})")
                groups.append({"quantile_name": name,
                               "examples": [self._render(bands, row, int(m)) for m in members]})
        return groups

    def feature(self, row: int) -> dict:
        """The JSON object of the feature in `row` (must be live)."""
        top, act_max, shown = self._top_group(row)
        quantile_values = quantiles_from_histogram(self.hist[row])
        randoms = self.random.examples(row)
        randoms = randoms[np.lexsort((self.random.pos[row, randoms], self.random.seq[row, randoms]))]
        groups = [{"quantile_name": "Top activations", "examples": top},
                  *self._quantile_groups(row, quantile_values, act_max, shown),
                  {"quantile_name": "Random samples",
                   "examples": [self._render(self.random, row, int(slot)) for slot in randoms]}]
        act_min = min((min(ex["tokens_acts_list"]) for g in groups for ex in g["examples"]), default=0.0)
        top_values, top_ids, bottom_values, bottom_ids = (t[row] for t in self.logits)
        feature = int(self.source.feature_ids[row])
        count = int(self.counts[row])
        data = {
            "index": cantor(self.layer, feature),
            "layer": self.layer,
            "feature": feature,
            "transcoder_id": f"{self.source.transcoder_id}/{self.layer}",
            "act_min": min(float(act_min), 0.0),
            "act_max": act_max,
            "activation_frequency": count / self.total_tokens,
            "activation_count": count,
            "top_logits": [self.token_text(int(i)) for i in top_ids],
            "bottom_logits": [self.token_text(int(i)) for i in bottom_ids],
            "top_logits_values": np.round(top_values.astype(np.float64), 4).tolist(),
            "bottom_logits_values": np.round(bottom_values.astype(np.float64), 4).tolist(),
            "quantile_values": np.round(quantile_values, 4).tolist(),
            "histogram": linear_histogram(self.hist[row], act_max, self.settings.histogram_bins),
            "examples_quantiles": groups,
        }
        if self.source.kind == "neuron":
            data["is_neuron"] = True
        elif self.source.replacement.cross_layer:
            # a CLT feature writes to the MLP outputs of layers [first, last]; the logit lens above
            # is of its write to the last one
            data["writes_to_layers"] = self.source.writes_to_layers
            data["logit_lens_layer"] = self.source.writes_to_layers[1]
        return data
