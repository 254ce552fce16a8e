"""A transcoder set of either kind seen as one replacement of the MLPs, layer by layer.

Feature collection, interp negatives and the fidelity evaluation read a set through this one
interface: ``encode(layer, x)`` gives a layer's feature activations from its MLP input,
``decode(layer, acts, x)`` predicts a layer's MLP output from the activations of the layers
that write to it (a per-layer transcoder: its own; a CLT: every layer up to it), and
``output_directions(layer)`` is what the logit lens reads (a CLT feature's write to the last layer).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from circuitflow.transcoders.cross_layer import CrossLayerTranscoder, load_cross_layer_transcoder
from circuitflow.transcoders.sets import TranscoderSetConfig
from circuitflow.transcoders.single_layer import Transcoder, load_transcoder


class PerLayerTranscoders:
    """A per-layer set: each layer's transcoder reads and writes its own MLP only."""

    cross_layer = False

    def __init__(self, transcoders: dict[int, Transcoder]):
        self.transcoders = transcoders
        self.layers = tuple(sorted(transcoders))
        self.n_features = transcoders[self.layers[0]].n_features

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return self.transcoders[layer].encode(x)

    def decode(self, layer: int, acts: Mapping[int, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self.transcoders[layer].decode(acts[layer], x)

    def output_directions(self, layer: int) -> torch.Tensor:
        return self.transcoders[layer].W_dec.detach()

    def to(self, device) -> PerLayerTranscoders:
        for transcoder in self.transcoders.values():
            transcoder.to(device)
        return self


class CircuitTracerTranscoders:
    """An imported set, loaded by circuit-tracer's own loaders (a `TranscoderSet` or a
    `CrossLayerTranscoder`), seen through the same interface. Decoder rows are read through
    circuit-tracer's `_get_decoder_vectors`, which reads them from the files when the set is lazy."""

    def __init__(self, transcoders, cross_layer: bool):
        self.transcoders, self.cross_layer = transcoders, cross_layer
        self.n_layers = transcoders.n_layers
        self.layers = tuple(range(self.n_layers))
        self.n_features = transcoders.d_transcoder

    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if self.cross_layer:
            return self.transcoders.encode_layer(x, layer)
        return self.transcoders[layer].encode(x)

    def _decoder(self, layer: int) -> torch.Tensor:
        if self.cross_layer:
            return self.transcoders._get_decoder_vectors(layer)  # [features, n_layers - layer, d_model]
        return self.transcoders[layer]._get_decoder_vectors()  # [features, d_model]

    @torch.no_grad()
    def decode(self, layer: int, acts: Mapping[int, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if not self.cross_layer:
            return self.transcoders[layer].decode(acts[layer], x)
        out = self.transcoders.b_dec[layer].expand(x.shape[0], -1).clone()
        for source in range(layer + 1):
            out += acts[source] @ self._decoder(source)[:, layer - source]
        return out

    def output_directions(self, layer: int) -> torch.Tensor:
        decoder = self._decoder(layer)
        return decoder[:, -1] if self.cross_layer else decoder

    def to(self, device) -> CircuitTracerTranscoders:
        self.transcoders.to(device)
        return self

    def eval(self) -> CircuitTracerTranscoders:
        self.transcoders.eval()
        return self


def load_replacement(config: TranscoderSetConfig, layers=None, decoders: bool = True, device="cpu"):
    """The set's transcoders for `layers` (default: all) as a `PerLayerTranscoders` or a
    `CrossLayerTranscoder` (all its layers; without `decoders` only what encoding and the logit
    lens need), in eval mode on `device`. An imported set is loaded by circuit-tracer."""
    if config.imported:
        from circuitflow.transcoders.imported import load_published_set

        transcoders = load_published_set(config.loader_settings, config.kind, config.architecture.activation,
                                         config.architecture.k, device=device)
        return CircuitTracerTranscoders(transcoders, config.cross_layer).eval()
    if config.cross_layer:
        model: CrossLayerTranscoder = load_cross_layer_transcoder(config.folder, config.d_model, decoders=decoders)
        return model.to(device).eval()
    wanted = sorted(config.layers) if layers is None else layers
    return PerLayerTranscoders({layer: load_transcoder(config.layers[layer]).eval() for layer in wanted}).to(device)
