"""A cross-layer transcoder (CLT): the module, and its files in circuit-tracer's CLT layout.

Layer i's features read layer i's MLP input and write to the MLP outputs of layers i..n-1:

    pre_i  = x_i @ W_enc[i].T + b_enc[i]              # [tokens, n_features]
    acts_i = activation(pre_i)                        # TopK in training, JumpReLU when saved
    y^_j   = sum_{i<=j} acts_i @ W_dec[i][:, j-i] + b_dec[j]

Files (what circuit-tracer 0.5.0's ``load_clt`` reads; ``n_layers`` is the number of encoder
files, so a CLT always covers layers 0..n-1): ``W_enc_{i}.safetensors`` with ``W_enc_{i} [F, d]``,
``b_enc_{i} [F]``, ``b_dec_{i} [d]`` and ``threshold_{i} [F]`` (JumpReLU), and
``W_dec_{i}.safetensors`` with ``W_dec_{i} [F, n-i, d]``. ``load_clt`` never reads a skip path,
so a CLT has none. Beside them, ``clt.architecture.json`` says what the tensors are; every file's
safetensors header carries the same ``circuitflow.clt_id``, so a file from another CLT of the
same shape is caught (`check_cross_layer_files`) instead of silently mixed in.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from circuitflow.config import TranscoderArchitecture
from circuitflow.io import atomic_path, read_json, write_json
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT

KIND = "cross_layer_transcoder"
FORMAT = "circuitflow-clt-v1"
ARCHITECTURE_FILE = "clt.architecture.json"
ID_KEY = "circuitflow.clt_id"
ACTIVATIONS = ("topk", "jumprelu")  # topk while training; saved CLTs are jumprelu (load_clt reads no TopK)


class CrossLayerFileError(ValueError):
    """A CLT file is missing, from another CLT, or does not match the architecture."""


def encoder_file(folder: str | Path, layer: int) -> Path:
    return Path(folder) / f"W_enc_{layer}.safetensors"


def decoder_file(folder: str | Path, layer: int) -> Path:
    return Path(folder) / f"W_dec_{layer}.safetensors"


def cross_layer_files(folder: str | Path, n_layers: int) -> list[Path]:
    """Every weights file of a CLT over layers 0..n_layers-1: encoders, then decoders."""
    return ([encoder_file(folder, i) for i in range(n_layers)]
            + [decoder_file(folder, i) for i in range(n_layers)])


class CrossLayerTranscoder(nn.Module):
    """A CLT over layers 0..n_layers-1 with `architecture.n_features` features per layer."""

    cross_layer = True

    def __init__(self, n_layers: int, d_model: int, architecture: TranscoderArchitecture, decoders: bool = True):
        super().__init__()
        if architecture.activation not in ACTIVATIONS:
            raise ValueError(f"a cross-layer transcoder's activation must be one of {ACTIVATIONS}, "
                             f"not {architecture.activation!r}")
        if architecture.skip_connection:
            raise ValueError("a cross-layer transcoder has no skip connection (circuit-tracer's load_clt never "
                             "loads W_skip); set transcoder.skip_connection: false")
        self.architecture, self.n_layers, self.d_model = architecture, n_layers, d_model
        self.n_features, self.k = architecture.n_features, architecture.k
        n = architecture.n_features
        self.W_enc = nn.Parameter(torch.zeros(n_layers, n, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_layers, n))
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d_model))
        # Without decoders (feature collection only encodes), only the last-layer slices are kept.
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(n, n_layers - i, d_model)) for i in range(n_layers)]
                                      if decoders else [])
        self.register_buffer("last_decoders", None if decoders else torch.zeros(n_layers, n, d_model))
        self.threshold = nn.Parameter(torch.zeros(n_layers, n)) if architecture.activation == "jumprelu" else None

    @property
    def activation(self) -> str:
        return self.architecture.activation

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers))

    def pre_activations(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.W_enc[layer], self.b_enc[layer])

    def activate(self, layer: int, pre: torch.Tensor) -> torch.Tensor:
        if self.threshold is not None:
            return pre * (pre > self.threshold[layer])
        values, indices = torch.topk(pre, self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))

    def encode(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Dense activations [tokens, n_features] of layer `layer`'s features."""
        return self.activate(layer, self.pre_activations(layer, x))

    def decode(self, target: int, acts: Mapping[int, torch.Tensor], x: torch.Tensor | None = None) -> torch.Tensor:
        """The prediction of layer `target`'s MLP output from the activations of every layer <= target."""
        if not len(self.W_dec):
            raise RuntimeError("this CLT was loaded without decoders (decoders=False)")
        out = self.b_dec[target].expand(acts[target].shape[0], -1)
        for source in range(target + 1):
            out = out + acts[source] @ self.W_dec[source][:, target - source]
        return out

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        """[tokens, n_layers, d_model] MLP inputs -> predicted MLP outputs, same shape."""
        acts = {layer: self.encode(layer, xs[:, layer]) for layer in self.layers}
        return torch.stack([self.decode(layer, acts) for layer in self.layers], dim=1)

    def output_directions(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s features' writes to the last layer [F, d]: what the logit lens reads."""
        if self.last_decoders is not None:
            return self.last_decoders[layer]
        return self.W_dec[layer][:, -1].detach()

    def files_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """File name -> tensors, under circuit-tracer's CLT key names."""
        def plain(t: torch.Tensor) -> torch.Tensor:
            return t.detach().float().cpu().contiguous()

        files = {}
        for i in self.layers:
            encoder = {f"W_enc_{i}": plain(self.W_enc[i]), f"b_enc_{i}": plain(self.b_enc[i]),
                       f"b_dec_{i}": plain(self.b_dec[i])}
            if self.threshold is not None:
                encoder[f"threshold_{i}"] = plain(self.threshold[i])
            files[encoder_file("", i).name] = encoder
            files[decoder_file("", i).name] = {f"W_dec_{i}": plain(self.W_dec[i])}
        return files


def architecture_record(model: CrossLayerTranscoder, clt_id: str) -> dict:
    return {"format": FORMAT, "kind": KIND, "clt_id": clt_id, "n_layers": model.n_layers, "d_model": model.d_model,
            **dataclasses.asdict(model.architecture), "feature_input_hook": HOOK_IN,
            "feature_output_hook": HOOK_OUT}


def save_cross_layer_transcoder(model: CrossLayerTranscoder, folder: str | Path) -> dict:
    """Write every layer's encoder and decoder file and the architecture JSON (each atomically);
    returns the architecture record."""
    from safetensors.torch import save_file

    clt_id = uuid.uuid4().hex
    for name, tensors in model.files_state().items():
        with atomic_path(Path(folder) / name) as tmp:
            save_file(tensors, str(tmp), metadata={ID_KEY: clt_id})
    record = architecture_record(model, clt_id)
    write_json(Path(folder) / ARCHITECTURE_FILE, record)
    return record


def read_cross_layer_architecture(folder: str | Path) -> dict:
    path = Path(folder) / ARCHITECTURE_FILE
    if not path.is_file():
        raise CrossLayerFileError(f"{path} is missing; retrain the cross-layer transcoder")
    record = read_json(path)
    if record.get("format") != FORMAT or record.get("kind") != KIND:
        raise CrossLayerFileError(f"{path} is not a {FORMAT} {KIND} file; retrain the cross-layer transcoder")
    return record


def check_cross_layer_files(folder: str | Path, d_model: int) -> dict:
    """The architecture record, after checking (from the safetensors headers only) that every
    layer's two files exist, come from this same CLT and have the shapes it implies."""
    from safetensors import safe_open

    record = read_cross_layer_architecture(folder)
    n_layers, n_features = record["n_layers"], record["n_features"]
    if record["d_model"] != d_model:
        raise CrossLayerFileError(f"{Path(folder) / ARCHITECTURE_FILE} has d_model {record['d_model']} but the "
                                  f"model has {d_model}; retrain the cross-layer transcoder for this model")
    for i in range(n_layers):
        expected = {encoder_file(folder, i): {f"W_enc_{i}": [n_features, d_model], f"b_enc_{i}": [n_features],
                                              f"b_dec_{i}": [d_model],
                                              **({f"threshold_{i}": [n_features]}
                                                 if record["activation"] == "jumprelu" else {})},
                    decoder_file(folder, i): {f"W_dec_{i}": [n_features, n_layers - i, d_model]}}
        for path, shapes in expected.items():
            if not path.is_file():
                raise CrossLayerFileError(f"{path} is missing; retrain the cross-layer transcoder")
            with safe_open(str(path), framework="pt") as handle:
                found = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
                clt_id = (handle.metadata() or {}).get(ID_KEY)
            if clt_id != record["clt_id"]:
                raise CrossLayerFileError(
                    f"{path} belongs to another cross-layer transcoder (id {clt_id}, this one's is "
                    f"{record['clt_id']}); retrain the cross-layer transcoder rather than mixing files")
            for key, shape in shapes.items():
                if found.get(key) != shape:
                    raise CrossLayerFileError(
                        f"{path}: {key} has shape {found.get(key)}, expected {shape} (n_layers {n_layers}, "
                        f"n_features {n_features}, d_model {d_model}); retrain the cross-layer transcoder")
    # circuit-tracer counts W_enc_*.safetensors files to learn n_layers: a stray one breaks it.
    extra = sorted(p.name for p in Path(folder).glob("W_enc_*.safetensors")
                   if p not in cross_layer_files(folder, n_layers))
    if extra:
        raise CrossLayerFileError(f"{folder} holds {extra} beyond the CLT's {n_layers} layers; circuit-tracer's "
                                  "load_clt would count them as layers: remove them")
    return record


def load_cross_layer_transcoder(folder: str | Path, d_model: int, decoders: bool = True) -> CrossLayerTranscoder:
    """Load a checked CLT (float32). Without `decoders` only the encoders and the last-layer
    decoder slices are read: enough to encode and for the logit lens, a fraction of the memory."""
    from safetensors import safe_open

    record = check_cross_layer_files(folder, d_model)
    fields = {f.name for f in dataclasses.fields(TranscoderArchitecture)}
    architecture = TranscoderArchitecture(**{k: v for k, v in record.items() if k in fields})
    model = CrossLayerTranscoder(record["n_layers"], d_model, architecture, decoders=decoders)
    with torch.no_grad():
        for i in model.layers:
            with safe_open(str(encoder_file(folder, i)), framework="pt") as handle:
                model.W_enc[i].copy_(handle.get_tensor(f"W_enc_{i}"))
                model.b_enc[i].copy_(handle.get_tensor(f"b_enc_{i}"))
                model.b_dec[i].copy_(handle.get_tensor(f"b_dec_{i}"))
                if model.threshold is not None:
                    model.threshold[i].copy_(handle.get_tensor(f"threshold_{i}"))
            with safe_open(str(decoder_file(folder, i)), framework="pt") as handle:
                if decoders:
                    model.W_dec[i].copy_(handle.get_tensor(f"W_dec_{i}"))
                else:
                    last = model.n_layers - i - 1  # the slice that writes to the last layer
                    model.last_decoders[i].copy_(handle.get_slice(f"W_dec_{i}")[:, last:last + 1][:, 0])
    return model
