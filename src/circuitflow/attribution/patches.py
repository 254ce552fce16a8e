"""Fixes applied to circuit-tracer 0.5.0 before graphs are written.

- Error nodes got ids ``0_{layer}_{pos}`` that collide with layer-0 feature nodes (issue #78);
  `patch_error_node_ids` applies the upstream fix (``{layer}_-1_{pos}``).
- The nnsight backend knows only the architectures in its registry
  (``circuit_tracer.utils.tl_nnsight_mapping``), and its Gemma entries lack circuitflow's hook
  names; `register_model_families` adds Qwen2 (Llama's module layout) and the missing
  ``mlp.hook_in`` / ``mlp.hook_out`` entries from `circuitflow.model.hooks.NNSIGHT_MLP_HOOKS`.
- Token nodes of models whose embedding module scales its output (Gemma-3's
  ``Gemma3TextScaledWordEmbedding`` multiplies by sqrt(d_model)) got the unscaled embedding
  rows, so every token -> node edge was sqrt(d_model) times too small (Gemma-2 scales after the
  embedding module and is right); `patch_scaled_token_vectors` scales them.
"""

from __future__ import annotations

import dataclasses

# architectures circuit-tracer 0.5.0 does not register, and the registered one with the same layout
_SAME_LAYOUT = {"Qwen2ForCausalLM": "LlamaForCausalLM"}


def patch_error_node_ids() -> None:
    """Give error nodes ids that cannot collide with feature ids (upstream fix of #78)."""
    from circuit_tracer.frontend import graph_models

    def error_node(cls, layer, pos, influence=None):
        return cls(node_id=f"{layer}_-1_{pos}", feature=-1, layer=str(layer), ctx_idx=pos,
                   feature_type="mlp reconstruction error", jsNodeId=f"{layer}_-1-{pos}",
                   influence=influence)

    graph_models.Node.error_node = classmethod(error_node)


def register_model_families() -> None:
    """Make circuit-tracer's nnsight backend attribute every family in `NNSIGHT_MLP_HOOKS` with
    circuitflow's hook names, at the tensors circuitflow's transcoders were trained on.

    Idempotent. Raises if circuit-tracer already maps one of our hook names elsewhere (a newer
    circuit-tracer), since transcoders trained by circuitflow would then read the wrong tensor.
    """
    from circuit_tracer.utils import tl_nnsight_mapping as mapping

    from circuitflow.model.hooks import NNSIGHT_MLP_HOOKS

    registry = mapping._REGISTRY
    for architecture, template in _SAME_LAYOUT.items():
        if architecture not in registry:
            mapping._register(dataclasses.replace(mapping.get_mapping(template), model_architecture=architecture))
    for architecture, hooks in NNSIGHT_MLP_HOOKS.items():
        if architecture not in registry:
            continue
        entry = registry[architecture]
        known = entry.feature_hook_mapping
        for name, location in hooks.items():
            if name in known and tuple(known[name]) != location:
                raise RuntimeError(f"circuit-tracer maps {name} of {architecture} to {known[name]}, but "
                                   f"circuitflow's transcoders read {location}; update "
                                   "circuitflow.model.hooks.NNSIGHT_MLP_HOOKS")
        if any(name not in known for name in hooks):
            mapping._register(dataclasses.replace(entry, feature_hook_mapping={**known, **hooks}))


def patch_scaled_token_vectors() -> None:
    """Token node vectors = what the embedding module outputs for each token (its `embed_scale`
    included), so token edges are exact for Gemma-3 as for every other family. Idempotent."""
    from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel

    original = NNSightReplacementModel.setup_attribution
    if getattr(original, "circuitflow_patched", False):
        return

    def setup_attribution(self, inputs):
        context = original(self, inputs)
        embedding = self._resolve_attr(self._model, self._embed_location)
        scale = getattr(embedding, "embed_scale", None)
        if scale is not None:
            context.token_vectors = context.token_vectors * scale.to(context.token_vectors.dtype)
        return context

    setup_attribution.circuitflow_patched = True
    NNSightReplacementModel.setup_attribution = setup_attribution


def apply_patches() -> None:
    """Every fix above (all idempotent): call before building a replacement model."""
    register_model_families()
    patch_scaled_token_vectors()
    patch_error_node_ids()
