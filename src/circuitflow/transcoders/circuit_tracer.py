"""The adapter to circuit-tracer: our transcoders as its `SingleLayerTranscoder` / `TranscoderSet`,
and a cross-layer transcoder loaded by circuit-tracer's own ``load_clt``."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from circuitflow.transcoders.sets import read_transcoder_set
from circuitflow.transcoders.single_layer import ReluTopK, Transcoder, load_transcoder


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


def load_transcoder_set(config_path: str | Path, n_layers: int, d_model: int | None = None, dtype=torch.float32):
    """circuit-tracer's `TranscoderSet` (or `CrossLayerTranscoder`) for a model of `n_layers`
    layers: every layer must have a transcoder."""
    from circuit_tracer.transcoder import TranscoderSet

    config = read_transcoder_set(config_path)
    config.require_layers(range(n_layers), "attribution (circuit-tracer replaces every MLP)")
    if d_model is not None and config.d_model != d_model:
        raise ValueError(f"transcoder set {config_path} has d_model {config.d_model} but the model has {d_model}")
    if config.imported:
        from circuitflow.transcoders.imported import load_published_set

        return load_published_set(config.loader_settings, config.kind, config.architecture.activation,
                                  config.architecture.k, dtype=dtype)
    if config.cross_layer:
        from circuit_tracer.transcoder.cross_layer_transcoder import load_clt

        # the files are checked (read_transcoder_set); circuit-tracer reads them itself
        return load_clt(str(config.folder), feature_input_hook=config.feature_input_hook,
                        feature_output_hook=config.feature_output_hook, scan=config.scan,
                        device=torch.device("cpu"), dtype=dtype, lazy_decoder=False)
    transcoders = {layer: to_circuit_tracer(load_transcoder(config.layers[layer]), layer, dtype)
                   for layer in range(n_layers)}
    return TranscoderSet(transcoders, feature_input_hook=config.feature_input_hook,
                         feature_output_hook=config.feature_output_hook, scan=config.scan)
