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
import time
from pathlib import Path

import numpy as np
import torch

from circuitflow.config import CollectFeaturesSettings, CollectNeuronsSettings
from circuitflow.data.dataset import read_windows, usable_positions
from circuitflow.features.ids import feature_file
from circuitflow.features.render import FeatureWriter, logit_lens
from circuitflow.features.sources import FeatureRequestError, NeuronSource, TranscoderSource
from circuitflow.features.statistics import LayerStats, topk_events, update_layer
from circuitflow.io import atomic_path, write_json
from circuitflow.logs import Progress, pick_device
from circuitflow.model.facts import read_model_facts
from circuitflow.model.hooks import ModuleRecorder, decoder_layers
from circuitflow.model.loading import load_model
from circuitflow.transcoders.replacement import load_replacement
from circuitflow.transcoders.sets import read_transcoder_set

log = logging.getLogger("circuitflow.features")


def collect(model_dir: str | Path, validation_split: str | Path, sources_for, out_dir: str | Path,
            out_metadata: str | Path, settings: CollectFeaturesSettings) -> dict:
    """Stream the validation split through the model and write one JSON per live feature."""
    model, tokenizer = load_model(model_dir, settings.model_dtype)
    device = pick_device(settings.device)
    transcoder_id = settings.source_id
    model.to(device)
    sources = sources_for(model)
    windows = read_windows(validation_split)
    tokens = np.asarray(windows.column("tokens").to_pylist(), dtype=np.int32)
    seqs = torch.from_numpy(windows.column("seq").to_numpy().astype(np.int32))
    domain_names = sorted(set(windows.column("domain").to_pylist()))
    domains = torch.tensor([domain_names.index(d) for d in windows.column("domain").to_pylist()])
    n_windows, context = tokens.shape
    positions = usable_positions(context)
    total_tokens = n_windows * positions
    stats = {layer: LayerStats(source.n_features, len(domain_names), settings) for layer, source in sources.items()}
    generator = torch.Generator().manual_seed(settings.seed)
    blocks = decoder_layers(model)
    recorder = ModuleRecorder({layer: source.hooked_module(blocks[layer]) for layer, source in sources.items()},
                              {layer: source.reader(blocks[layer]) for layer, source in sources.items()})
    progress = Progress(log, f"collect {transcoder_id}", total_tokens, "tokens")
    log.info("collecting %s over %d windows x %d tokens, layers %s", transcoder_id, n_windows, positions,
             list(sources))
    forward_seconds = 0.0
    with torch.inference_mode():
        for start in range(0, n_windows, settings.batch_size):
            stop = min(start + settings.batch_size, n_windows)
            ids = torch.from_numpy(tokens[start:stop]).long().to(device)
            began = time.perf_counter()
            captured = recorder.run(model, ids)
            forward_seconds += time.perf_counter() - began
            for layer, source in sources.items():
                acts, top = source.encode_with_top(captured[layer].cpu())
                acts[:, 0] = 0  # BOS: circuit-tracer never attributes position 0
                events = None if top is None else topk_events(*top, from_position=1)
                update_layer(stats[layer], acts, seqs[start:stop], domains[start:stop], settings, generator,
                             events)
            progress.update((stop - start) * positions)
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
        name: int((domains == i).sum()) * positions for i, name in enumerate(domain_names)}
    metadata = {"total_tokens": total_tokens, "tokens_per_domain": tokens_per_domain,
                "kind": next(iter(sources.values())).kind, "transcoder_id": transcoder_id,
                "dead_features_per_layer": {}, "features": []}
    started = time.perf_counter()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for layer, source in sources.items():
            layer_stats = stats[layer]
            logits = logit_lens(model, source.output_directions().to(device), settings.n_logits)
            writer = FeatureWriter(layer_stats, source, layer, window_text, token_text,
                                   tuple(t.cpu() for t in logits), settings, total_tokens)
            live = np.flatnonzero(writer.counts > 0)
            metadata["dead_features_per_layer"][str(layer)] = int(source.n_features - len(live))
            for row in live.tolist():
                data = writer.feature(row)
                path = feature_file(tmp, data["index"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
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


def collect_features(*, model_dir: str | Path, transcoder_set: str | Path, validation_split: str | Path,
                     out_dir: str | Path, out_metadata: str | Path, settings: CollectFeaturesSettings) -> dict:
    """Transcoder features of `settings.layers` (each must have a transcoder in the set)."""
    config = read_transcoder_set(transcoder_set)
    config.require_layers(settings.layers, "features.layers")
    d_model = read_model_facts(model_dir).d_model
    if config.d_model != d_model:
        raise FeatureRequestError(
            f"transcoder set {transcoder_set} has d_model {config.d_model}, but the model in {model_dir} "
            f"has d_model {d_model}")
    replacement = load_replacement(config, settings.layers, decoders=False)
    transcoders = {layer: TranscoderSource(replacement, layer, settings.source_id, config.feature_input_hook)
                   for layer in settings.layers}
    return collect(model_dir, validation_split, lambda model: transcoders, out_dir, out_metadata, settings)


def collect_neurons(*, model_dir: str | Path, validation_split: str | Path, out_dir: str | Path,
                    out_metadata: str | Path, settings: CollectNeuronsSettings) -> dict:
    """The same files for a seeded sample of `settings.n_per_layer` MLP neurons per layer."""
    def sources_for(model):
        blocks = decoder_layers(model)
        return {layer: NeuronSource(blocks[layer], layer, settings.n_per_layer, settings.seed, settings.source_id)
                for layer in settings.layers}

    return collect(model_dir, validation_split, sources_for, out_dir, out_metadata, settings)
