"""collect_features / collect_neurons: each feature's activating examples, for the viewer.

One pass of the model over the validation split. At every requested layer the MLP input is
encoded by that layer's transcoder (or, for the neuron baseline, the input of the MLP's
output projection is read for a seeded sample of neurons), and per feature we keep:

- counts (overall and per domain) for ``activation_frequency`` and ``feature_metadata.json``;
- a fine log-spaced histogram of positive activations, from which ``quantile_values`` (the
  1st..100th percentiles) and the frontend's ``histogram`` (bins over [act_min, act_max]) are
  derived at the end;
- the top activations (oversampled, so near-identical windows can be dropped at the end);
- a seeded uniform sample per power-of-two activation band (for the quantile groups);
- a seeded reservoir sample of all firing events ("Random samples").

Every sample keeps its context window's activations, captured when it enters, so no second
pass is needed. All state is a fixed size per feature (slots x context), independent of the
number of tokens: memory is bounded by ``features x slots x window``, not by the data.

Each live feature becomes ``<cantor(layer, feature)>.json`` in circuit-tracer's schema (see
``FeatureWriter``); ``feature_metadata.json`` holds run-level counts (the seed's schema).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from circuitflow.activations import ModuleRecorder, decoder_layers
from circuitflow.io import atomic_path, write_json
from circuitflow.logs import Progress
from circuitflow.pack import cantor

log = logging.getLogger("circuitflow.features")

# Fine histogram: geometric bins over [1e-4, 1e4) (about 2.3 % wide), plus under/overflow.
HIST_LOW, HIST_HIGH, HIST_BINS = 1e-4, 1e4, 800
N_BANDS = 16  # power-of-two activation bands for the quantile samples: 2^-8 .. 2^7


class FeatureRequestError(ValueError):
    """The features request does not fit the transcoders or the model."""


@dataclass(frozen=True)
class CollectSettings:
    layers: tuple[int, ...]
    batch_size: int = 8
    top_k: int = 10
    context_before: int = 16
    context_after: int = 4
    dedupe: bool = True
    n_quantiles: int = 3
    examples_per_quantile: int = 3
    n_random: int = 5
    n_logits: int = 10
    histogram_bins: int = 40
    n_neurons: int = 256
    seed: int = 0
    device: str = "cpu"
    model_dtype: str = "float32"

    @property
    def window(self) -> int:
        return self.context_before + 1 + self.context_after


# --------------------------------------------------------------------------- streaming state


class TopSlots:
    """For each of G groups keep the `slots` entries with the largest keys, streaming.

    Entries carry an activation value, the token they sit on (window index, position) and
    the feature's activations over the surrounding context window. Events that pass a cheap
    prefilter (beating their group's current minimum) are buffered and merged into the slots
    once the buffer holds as many entries as the slots do: merging touches every slot of the
    affected groups, so doing it per batch cost more than the model's forward pass.
    """

    def __init__(self, groups: int, slots: int, window: int):
        self.slots = slots
        self.keys = torch.full((groups, slots), -math.inf)
        self.values = torch.zeros(groups, slots)
        self.seq = torch.full((groups, slots), -1, dtype=torch.int32)
        self.pos = torch.zeros(groups, slots, dtype=torch.int32)
        self.context = torch.zeros(groups, slots, window, dtype=torch.float16)
        self.pending: list[tuple[torch.Tensor, ...]] = []
        self.pending_size = 0
        self.merge_at = max(groups * slots, 1024)

    def offer(self, group: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              seq: torch.Tensor, pos: torch.Tensor, context_of) -> None:
        # The minimum can be stale (pending events not merged yet): that only lets more through.
        keep = key > self.keys[group, -1]
        if not keep.any():
            return
        idx = keep.nonzero().squeeze(-1)
        self.pending.append((group[idx], key[idx], value[idx], seq[idx], pos[idx], context_of(idx)))
        self.pending_size += len(idx)
        if self.pending_size >= self.merge_at:
            self.flush()

    def flush(self) -> None:
        """Merge buffered events into the slots."""
        if not self.pending:
            return
        group, key, value, seq, pos, context = (torch.cat(parts) for parts in zip(*self.pending))
        self.pending, self.pending_size = [], 0
        touched, inverse = torch.unique(group, return_inverse=True)
        n = len(touched)
        cand_group = torch.cat([torch.arange(n).repeat_interleave(self.slots), inverse])
        cand_key = torch.cat([self.keys[touched].reshape(-1), key])
        cand_value = torch.cat([self.values[touched].reshape(-1), value])
        cand_seq = torch.cat([self.seq[touched].reshape(-1), seq])
        cand_pos = torch.cat([self.pos[touched].reshape(-1), pos])
        cand_context = torch.cat([self.context[touched].reshape(-1, self.context.shape[-1]), context])
        # sort by group, then key descending (two stable sorts)
        order = torch.argsort(cand_key, descending=True, stable=True)
        order = order[torch.argsort(cand_group[order], stable=True)]
        sorted_group = cand_group[order]
        first = torch.searchsorted(sorted_group, torch.arange(n))
        rank = torch.arange(len(order)) - first[sorted_group]
        chosen = order[rank < self.slots]
        rows = touched[cand_group[chosen]]
        cols = rank[rank < self.slots]
        self.keys[rows, cols] = cand_key[chosen]
        self.values[rows, cols] = cand_value[chosen]
        self.seq[rows, cols] = cand_seq[chosen]
        self.pos[rows, cols] = cand_pos[chosen]
        self.context[rows, cols] = cand_context[chosen]


class LayerStats:
    """Everything kept for one layer's features while streaming."""

    def __init__(self, n_features: int, n_domains: int, settings: CollectSettings):
        self.n_features = n_features
        self.counts = torch.zeros(n_domains, n_features, dtype=torch.long)
        self.histogram = torch.zeros(n_features, HIST_BINS + 2, dtype=torch.int32)
        # oversampled so that overlapping windows can be dropped and top_k still remain
        self.top = TopSlots(n_features, settings.top_k * (2 if settings.dedupe else 1), settings.window)
        self.bands = TopSlots(n_features * N_BANDS, settings.examples_per_quantile, settings.window)
        self.random = TopSlots(n_features, settings.n_random, settings.window)


def _hist_bin(values: torch.Tensor) -> torch.Tensor:
    scaled = (torch.log(values) - math.log(HIST_LOW)) / (math.log(HIST_HIGH) - math.log(HIST_LOW))
    return (scaled * HIST_BINS).floor().clamp(-1, HIST_BINS).long() + 1


def _band(values: torch.Tensor) -> torch.Tensor:
    return (torch.floor(torch.log2(values)) + 8).clamp(0, N_BANDS - 1).long()


def update_layer(stats: LayerStats, acts: torch.Tensor, seqs: torch.Tensor, domains: torch.Tensor,
                 settings: CollectSettings, generator: torch.Generator) -> None:
    """Fold one batch of activations [windows, positions, features] into the layer's stats.

    Position 0 (BOS) has zero activations by construction.
    """
    n_windows, n_pos, n_features = acts.shape
    window_idx, pos, feature = (acts > 0).nonzero(as_tuple=True)
    if not len(feature):
        return
    values = acts[window_idx, pos, feature]
    domain = domains[window_idx]
    stats.counts.view(-1).index_add_(0, domain * n_features + feature, torch.ones_like(feature))
    flat_bins = feature * (HIST_BINS + 2) + _hist_bin(values)
    stats.histogram.view(-1).index_add_(0, flat_bins, torch.ones_like(flat_bins, dtype=torch.int32))

    offsets = torch.arange(-settings.context_before, settings.context_after + 1)

    def context_of(events: torch.Tensor) -> torch.Tensor:
        w, p, f = window_idx[events], pos[events], feature[events]
        positions = p[:, None] + offsets[None, :]
        inside = (positions >= 0) & (positions < n_pos)
        gathered = acts[w[:, None], positions.clamp(0, n_pos - 1), f[:, None]]
        return torch.where(inside, gathered, torch.full_like(gathered, float("nan"))).half()

    seq = seqs[window_idx]
    pos32 = pos.int()
    stats.top.offer(feature, values, values, seq, pos32, context_of)
    random_keys = torch.rand(len(values), generator=generator)
    stats.random.offer(feature, random_keys, values, seq, pos32, context_of)
    band_keys = torch.rand(len(values), generator=generator)
    stats.bands.offer(feature * N_BANDS + _band(values), band_keys, values, seq, pos32, context_of)


# --------------------------------------------------------------------------- sources


class TranscoderSource:
    """Features of a layer's transcoder, read from the MLP input (circuit-tracer's mlp.hook_in)."""

    kind = "transcoder"

    def __init__(self, transcoder, layer: int, transcoder_id: str):
        self.transcoder, self.layer, self.transcoder_id = transcoder, layer, transcoder_id
        self.n_features = transcoder.n_features
        self.feature_ids = np.arange(self.n_features)

    def hooked_module(self, block):
        return block.mlp

    @torch.no_grad()
    def encode(self, mlp_input: torch.Tensor) -> torch.Tensor:
        return self.transcoder.encode(mlp_input.float())

    def output_directions(self) -> torch.Tensor:
        return self.transcoder.W_dec.detach().float()


class NeuronSource:
    """A seeded sample of MLP neurons: the input of the MLP's output projection."""

    kind = "neuron"
    OUTPUT_PROJECTIONS = ("down_proj", "c_proj", "fc2", "dense_4h_to_h")

    def __init__(self, block, layer: int, n_neurons: int, seed: int, transcoder_id: str):
        self.projection_name = next((n for n in self.OUTPUT_PROJECTIONS if hasattr(block.mlp, n)), None)
        if self.projection_name is None:
            raise FeatureRequestError(
                f"layer {layer}: cannot find the MLP output projection (looked for {self.OUTPUT_PROJECTIONS})")
        projection = getattr(block.mlp, self.projection_name)
        weight = projection.weight.detach().float()
        # nn.Linear stores [d_model, d_mlp]; GPT-2's Conv1D stores [d_mlp, d_model]
        columns = weight.T if type(projection).__name__ != "Conv1D" else weight
        d_mlp = columns.shape[0]
        rng = np.random.default_rng([seed, layer])
        self.feature_ids = np.sort(rng.choice(d_mlp, size=min(n_neurons, d_mlp), replace=False))
        self.index = torch.from_numpy(self.feature_ids)
        self.directions = columns[self.index]
        self.layer, self.transcoder_id = layer, transcoder_id
        self.n_features = len(self.feature_ids)

    def hooked_module(self, block):
        return getattr(block.mlp, self.projection_name)

    @torch.no_grad()
    def encode(self, projection_input: torch.Tensor) -> torch.Tensor:
        return projection_input.float()[..., self.index]

    def output_directions(self) -> torch.Tensor:
        return self.directions


# --------------------------------------------------------------------------- export


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


_EDGES = np.geomspace(HIST_LOW, HIST_HIGH, HIST_BINS + 1)
_BIN_LOWER = np.concatenate([[0.0], _EDGES])  # bin 0 is the underflow bin
_BIN_UPPER = np.concatenate([_EDGES, [_EDGES[-1] * 10]])
_BIN_CENTRE = np.concatenate([[HIST_LOW / 2], np.sqrt(_EDGES[:-1] * _EDGES[1:]), [_EDGES[-1]]])


def quantiles_from_histogram(hist: np.ndarray) -> np.ndarray:
    """The 1st..100th percentiles of the positive activations, from the fine histogram."""
    cumulative = np.cumsum(hist)
    targets = cumulative[-1] * np.arange(1, 101) / 100
    idx = np.searchsorted(cumulative, targets, side="left").clip(0, len(hist) - 1)
    before = np.where(idx > 0, cumulative[idx - 1], 0)
    within = (targets - before) / np.maximum(hist[idx], 1)
    return _BIN_LOWER[idx] + within * (_BIN_UPPER[idx] - _BIN_LOWER[idx])


def linear_histogram(hist: np.ndarray, act_max: float, bins: int) -> list[int]:
    """Re-bin the fine histogram into `bins` equal bins over [0, act_max] (by bin centre)."""
    target = np.minimum((_BIN_CENTRE / max(act_max, 1e-12) * bins).astype(int), bins - 1)
    return np.bincount(target, weights=hist, minlength=bins).astype(np.int64).tolist()


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
                 logits: tuple, settings: CollectSettings, total_tokens: int):
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
        return data


# --------------------------------------------------------------------------- entry points


def collect(model_dir: str | Path, validation_split: str | Path, sources_for, settings: CollectSettings,
            out_dir: str | Path, out_metadata: str | Path, transcoder_id: str) -> dict:
    """Stream the validation split through the model and write one JSON per live feature."""
    from circuitflow.dataset import read_windows
    from circuitflow.model import load_model

    model, tokenizer = load_model(model_dir, settings.model_dtype)
    model.to(settings.device)
    sources = sources_for(model)
    windows = read_windows(validation_split)
    tokens = np.asarray(windows.column("tokens").to_pylist(), dtype=np.int32)
    seqs = torch.from_numpy(windows.column("seq").to_numpy().astype(np.int32))
    domain_names = sorted(set(windows.column("domain").to_pylist()))
    domains = torch.tensor([domain_names.index(d) for d in windows.column("domain").to_pylist()])
    n_windows, context = tokens.shape
    total_tokens = n_windows * (context - 1)
    stats = {layer: LayerStats(source.n_features, len(domain_names), settings) for layer, source in sources.items()}
    generator = torch.Generator().manual_seed(settings.seed)
    blocks = decoder_layers(model)
    recorder = ModuleRecorder({layer: source.hooked_module(blocks[layer]) for layer, source in sources.items()},
                              lambda inputs, output: inputs[0].detach())
    progress = Progress(log, f"collect {transcoder_id}", total_tokens, "tokens")
    log.info("collecting %s over %d windows x %d tokens, layers %s", transcoder_id, n_windows, context - 1,
             list(sources))
    forward_seconds = 0.0
    with torch.inference_mode():
        for start in range(0, n_windows, settings.batch_size):
            stop = min(start + settings.batch_size, n_windows)
            ids = torch.from_numpy(tokens[start:stop]).long().to(settings.device)
            began = time.perf_counter()
            captured = recorder.run(model, ids)
            forward_seconds += time.perf_counter() - began
            for layer, source in sources.items():
                acts = source.encode(captured[layer].cpu())
                acts[:, 0] = 0  # BOS: circuit-tracer never attributes position 0
                update_layer(stats[layer], acts, seqs[start:stop], domains[start:stop], settings, generator)
            progress.update((stop - start) * (context - 1))
    recorder.close()
    collect_seconds = progress.seconds

    token_cache: dict[int, str] = {}

    def token_text(token_id: int) -> str:
        if token_id not in token_cache:
            token_cache[token_id] = tokenizer.decode([token_id])
        return token_cache[token_id]

    # windows are addressed by their `seq`; decode each window's tokens once
    window_text: list[list[str]] = [[] for _ in range(int(seqs.max()) + 1)]
    for row, seq in enumerate(seqs.tolist()):
        window_text[seq] = [token_text(int(t)) for t in tokens[row]]
    tokens_per_domain = {
        name: int((domains == i).sum()) * (context - 1) for i, name in enumerate(domain_names)}
    metadata = {"total_tokens": total_tokens, "tokens_per_domain": tokens_per_domain,
                "kind": next(iter(sources.values())).kind, "transcoder_id": transcoder_id,
                "dead_features_per_layer": {}, "features": []}
    started = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for layer, source in sources.items():
            layer_stats = stats[layer]
            logits = logit_lens(model, source.output_directions().to(settings.device), settings.n_logits)
            writer = FeatureWriter(layer_stats, source, layer, window_text, token_text,
                                   tuple(t.cpu() for t in logits), settings, total_tokens)
            live = np.flatnonzero(writer.counts > 0)
            metadata["dead_features_per_layer"][str(layer)] = int(source.n_features - len(live))
            for row in live.tolist():
                data = writer.feature(row)
                (tmp / f"{data['index']}.json").write_text(
                    json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
                per_domain = layer_stats.counts[:, row].tolist()
                count = data["activation_count"]
                metadata["features"].append({
                    "layer": layer, "feature": data["feature"], "cantor_id": data["index"],
                    "activation_count": count, "activation_freq": count / total_tokens,
                    "domain_density": {n: c / max(tokens_per_domain[n], 1)
                                       for n, c in zip(domain_names, per_domain) if c},
                    "domain_fraction": {n: c / count for n, c in zip(domain_names, per_domain) if c},
                })
            log.info("layer %d: %d live, %d dead features written", layer, len(live),
                     source.n_features - len(live))
    metadata["seconds"] = {"collect": collect_seconds, "forward": forward_seconds,
                           "write": time.perf_counter() - started}
    metadata["tokens_per_second"] = total_tokens / collect_seconds
    write_json(out_metadata, metadata, indent=None)
    log.info("%s: %d live features from %d tokens in %.1fs (%.0f tokens/s; forward alone %.1fs)",
             transcoder_id, len(metadata["features"]), total_tokens, collect_seconds,
             metadata["tokens_per_second"], forward_seconds)
    return metadata


def collect_features(model_dir, transcoder_config, validation_split, settings: CollectSettings,
                     out_dir, out_metadata, transcoder_id: str) -> dict:
    """Transcoder features of `settings.layers` (each must have a transcoder in the set)."""
    import yaml

    from circuitflow.transcoder import load_transcoder

    config_path = Path(transcoder_config)
    config = yaml.safe_load(config_path.read_text())
    available = len(config["transcoders"])
    missing = [layer for layer in settings.layers if not 0 <= layer < available]
    if missing:
        raise FeatureRequestError(
            f"features requested for layer(s) {missing}, but {config_path} has transcoders for layers "
            f"0..{available - 1} only")
    d_model = json.loads((Path(model_dir) / "config.json").read_text())["hidden_size"]
    transcoders = {}
    for layer in settings.layers:
        transcoder = load_transcoder(config_path.parent / config["transcoders"][layer])
        if transcoder.d_model != d_model:
            raise FeatureRequestError(
                f"transcoder {config['transcoders'][layer]} has d_model {transcoder.d_model}, but the model "
                f"in {model_dir} has d_model {d_model}")
        transcoders[layer] = TranscoderSource(transcoder.eval(), layer, transcoder_id)
    return collect(model_dir, validation_split, lambda model: transcoders, settings, out_dir, out_metadata,
                   transcoder_id)


def collect_neurons(model_dir, validation_split, settings: CollectSettings, out_dir, out_metadata,
                    transcoder_id: str) -> dict:
    """The same files for a seeded sample of `settings.n_neurons` MLP neurons per layer."""
    def sources_for(model):
        blocks = decoder_layers(model)
        return {layer: NeuronSource(blocks[layer], layer, settings.n_neurons, settings.seed, transcoder_id)
                for layer in settings.layers}

    return collect(model_dir, validation_split, sources_for, settings, out_dir, out_metadata, transcoder_id)
