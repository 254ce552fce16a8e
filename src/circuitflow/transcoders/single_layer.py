"""A single-layer transcoder: the module, and its file format (weights + architecture JSON).

A transcoder reads the MLP input ``x`` and predicts the MLP output ``y``:

    pre  = x @ W_enc.T + b_enc                  # [tokens, n_features]
    acts = activation(pre)                      # TopK (ReLU of the k largest), ReLU or JumpReLU
    y^   = acts @ W_dec + b_dec (+ x @ W_skip.T)

Files: ``layer_{l}.safetensors`` holds only tensors, under circuit-tracer's per-layer keys
(``W_enc [F,d]``, ``W_dec [F,d]``, ``b_enc``, ``b_dec``, optional ``W_skip [d,d]`` and
``activation_function.threshold``). Beside it, ``layer_{l}.architecture.json`` says what the
tensors are (kind, layer, activation, k, sizes, hook points), as sparsify keeps its config
beside the weights. ReLU and JumpReLU files also load with circuit-tracer's own
``load_relu_transcoder``; TopK cannot be expressed in circuit-tracer 0.5.0's files, so
`circuitflow.transcoders.circuit_tracer` builds it from the architecture.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from circuitflow.config import TranscoderArchitecture
from circuitflow.config_rules import check_sparsity
from circuitflow.io import atomic_path, read_json, tensor_shapes, write_json
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT

ACTIVATIONS = ("topk", "relu", "jumprelu")
KIND = "single_layer_transcoder"
FORMAT = "circuitflow-transcoder-v2"


class TranscoderFileError(ValueError):
    """A transcoder file or its architecture JSON is missing or does not match."""


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
    """One layer's transcoder; its shape and activation come from a `TranscoderArchitecture`."""

    def __init__(self, d_model: int, architecture: TranscoderArchitecture):
        super().__init__()
        activation, n_features, k = architecture.activation, architecture.n_features, architecture.k
        skip_connection = architecture.skip_connection
        if activation not in ACTIVATIONS:
            raise ValueError(f"transcoder activation {activation!r} is not one of {ACTIVATIONS}")
        if activation == "topk":  # only topk applies k here; jumprelu's k was a training setting
            check_sparsity(activation, k, n_features)
        self.architecture = architecture
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

    def state_for_file(self) -> dict[str, torch.Tensor]:
        """Tensors under circuit-tracer's per-layer key names."""
        state = {name: getattr(self, name) for name in ("W_enc", "W_dec", "b_enc", "b_dec")}
        if self.W_skip is not None:
            state["W_skip"] = self.W_skip
        if self.threshold is not None:
            state["activation_function.threshold"] = self.threshold
        return {name: tensor.detach().float().cpu().contiguous() for name, tensor in state.items()}


def architecture_path(weights: str | Path) -> Path:
    """``layer_3.safetensors`` -> ``layer_3.architecture.json`` (same folder)."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".architecture.json")


def architecture_record(transcoder: Transcoder, layer: int) -> dict:
    return {"format": FORMAT, "kind": KIND, "layer": layer, "d_model": transcoder.d_model,
            **dataclasses.asdict(transcoder.architecture),
            "feature_input_hook": HOOK_IN, "feature_output_hook": HOOK_OUT}


def save_transcoder(transcoder: Transcoder, layer: int, weights: str | Path,
                    architecture: str | Path | None = None) -> None:
    """Write the tensors and the architecture JSON (default: beside the weights)."""
    from safetensors.torch import save_file

    with atomic_path(weights) as tmp:
        save_file(transcoder.state_for_file(), str(tmp))
    write_json(architecture or architecture_path(weights), architecture_record(transcoder, layer))


def read_architecture(weights: str | Path) -> dict | None:
    """The architecture JSON beside `weights`, or None when there is none."""
    path = architecture_path(weights)
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("format") != FORMAT or record.get("kind") != KIND:
        raise TranscoderFileError(f"{path} is not a {FORMAT} {KIND} file; retrain that layer")
    return record


def check_transcoder_file(weights: str | Path, layer: int, d_model: int) -> dict:
    """The architecture record of one layer's files, after checking it names `layer` and that
    every tensor has the shape it and the model's `d_model` imply (read from the header only)."""
    weights = Path(weights)
    record = read_architecture(weights)
    if record is None:
        raise TranscoderFileError(f"{architecture_path(weights)} is missing; retrain layer {layer}")
    if record["layer"] != layer:
        raise TranscoderFileError(f"{architecture_path(weights)} is for layer {record['layer']}, not {layer}")
    n_features = record["n_features"]
    expected = {"W_enc": [n_features, d_model], "W_dec": [n_features, d_model], "b_enc": [n_features],
                "b_dec": [d_model]}
    if record["skip_connection"]:
        expected["W_skip"] = [d_model, d_model]
    if record["activation"] == "jumprelu":
        expected["activation_function.threshold"] = [n_features]
    shapes = tensor_shapes(weights)
    for key, shape in expected.items():
        if shapes.get(key) != shape:
            raise TranscoderFileError(
                f"{weights}: {key} has shape {shapes.get(key)}, expected {shape} (d_model {d_model} of the "
                f"model, n_features {n_features}); retrain layer {layer}")
    return record


def load_transcoder(weights: str | Path) -> Transcoder:
    """Load a transcoder file; without an architecture JSON the activation is read from the
    tensors (``activation_function.threshold`` means JumpReLU, else ReLU), as circuit-tracer does."""
    from safetensors import safe_open

    if not Path(weights).is_file():
        raise TranscoderFileError(f"transcoder file {weights} does not exist")
    with safe_open(str(weights), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    n_features, d_model = tensors["W_enc"].shape
    record = read_architecture(weights)
    if record is None:
        activation = "jumprelu" if "activation_function.threshold" in tensors else "relu"
        architecture = TranscoderArchitecture(activation=activation, n_features=n_features,
                                              skip_connection="W_skip" in tensors)
    else:
        fields = {f.name for f in dataclasses.fields(TranscoderArchitecture)}
        architecture = TranscoderArchitecture(**{k: v for k, v in record.items() if k in fields})
        if (record["d_model"], architecture.n_features) != (d_model, n_features):
            raise TranscoderFileError(
                f"{weights} holds W_enc of shape [{n_features}, {d_model}] but {architecture_path(weights)} "
                f"says [{architecture.n_features}, {record['d_model']}]; retrain that layer")
    transcoder = Transcoder(d_model, architecture)
    state = {("threshold" if key == "activation_function.threshold" else key): value
             for key, value in tensors.items()}
    transcoder.load_state_dict(state)
    return transcoder
