"""What is collected at a layer: a transcoder's features, or a seeded sample of MLP neurons."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from circuitflow.model.hooks import HOOK_IN, hook_point
from circuitflow.transcoders.replacement import PerLayerTranscoders


class FeatureRequestError(ValueError):
    """The features request does not fit the transcoders or the model."""


class TranscoderSource:
    """Features of one layer of a transcoder set (a `circuitflow.transcoders.replacement`),
    read from the MLP input (circuit-tracer's mlp.hook_in)."""

    kind = "transcoder"

    def __init__(self, replacement, layer: int, transcoder_id: str, input_hook: str = HOOK_IN):
        self.replacement, self.layer, self.transcoder_id = replacement, layer, transcoder_id
        self.input_hook = input_hook  # where features read from (an imported set's may differ from the MLP input)
        self.n_features = replacement.n_features
        self.feature_ids = np.arange(self.n_features)
        # A CLT feature writes to every layer from its own to the last; the logit lens reads
        # its write to the last layer.
        self.writes_to_layers = ([layer, replacement.n_layers - 1] if replacement.cross_layer else [layer, layer])
        transcoder = replacement.transcoders[layer] if isinstance(replacement, PerLayerTranscoders) else None
        self.topk_transcoder = transcoder if transcoder is not None and transcoder.activation == "topk" else None

    def hooked_module(self, block):
        return hook_point(block, self.input_hook)[0]

    def reader(self, block):
        """read(inputs, output) of a forward hook on `hooked_module(block)`: the feature input."""
        return hook_point(block, self.input_hook)[1]

    @torch.no_grad()
    def encode(self, mlp_input: torch.Tensor) -> torch.Tensor:
        return self.replacement.encode(self.layer, mlp_input.float())

    @torch.no_grad()
    def encode_with_top(self, mlp_input: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """`encode(mlp_input)` and, for a per-layer TopK transcoder, the top-k (values, indices) it
        scattered (which give the firing events without scanning the dense activations), else None."""
        transcoder = self.topk_transcoder
        if transcoder is None:
            return self.encode(mlp_input), None
        # the same operations as the transcoder's own ReluTopK, so the activations are identical
        pre = transcoder.pre_activations(mlp_input.float())
        values, indices = torch.topk(pre, transcoder.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, F.relu(values)), (values, indices)

    def output_directions(self) -> torch.Tensor:
        return self.replacement.output_directions(self.layer).float()


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

    def reader(self, block):
        return lambda inputs, output: inputs[0]

    @torch.no_grad()
    def encode(self, projection_input: torch.Tensor) -> torch.Tensor:
        return projection_input.float()[..., self.index]

    def encode_with_top(self, projection_input: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.encode(projection_input), None

    def output_directions(self) -> torch.Tensor:
        return self.directions
