"""check_attributable: which families circuit-tracer can attribute, refused in one line at parse time;
the list is checked against the installed circuit-tracer's nnsight registry (with our patches)."""

from __future__ import annotations

import pytest
import torch

from circuitflow.attribution.attribute import attribution_dtype
from circuitflow.config import ConfigError
from circuitflow.model.families import MODEL_TYPES, NNSIGHT_ARCHITECTURES, check_attributable
from circuitflow.model.hooks import HOOK_IN, HOOK_OUT, NNSIGHT_MLP_HOOKS


@pytest.mark.parametrize("architecture", NNSIGHT_ARCHITECTURES + ("qwen2", "gemma3_text", None))
def test_supported_architectures_pass(architecture):
    check_attributable(architecture, "nnsight")


@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "MistralForCausalLM", "gpt2",
                                          "Gemma3ForConditionalGeneration"])
def test_unsupported_family_is_named_with_what_works(architecture):
    with pytest.raises(ConfigError) as error:
        check_attributable(architecture, "nnsight")
    message = str(error.value)
    assert "\n" not in message
    assert MODEL_TYPES.get(architecture, architecture) in message and "attribution.backend nnsight" in message
    assert "Qwen2ForCausalLM" in message and "Gemma3ForCausalLM" in message


def test_transformerlens_backend_is_refused_for_local_folders():
    with pytest.raises(ConfigError, match=r"^attribution.backend transformerlens cannot attribute "
                                          r"LlamaForCausalLM: .*set attribution.backend: nnsight"):
        check_attributable("LlamaForCausalLM", "transformerlens")


def test_unknown_backend_is_named():
    with pytest.raises(ConfigError, match=r"attribution.backend 'tl' is unknown; use nnsight"):
        check_attributable("LlamaForCausalLM", "tl")


def test_list_matches_installed_circuit_tracer_with_our_patches():
    """Every listed architecture is in circuit-tracer's registry once patched, and maps our hook
    names where NNSIGHT_MLP_HOOKS says (so a trained set resolves its hooks)."""
    from circuit_tracer.utils import tl_nnsight_mapping

    from circuitflow.attribution.patches import register_model_families

    register_model_families()
    register_model_families()  # idempotent
    registered = set(tl_nnsight_mapping.get_supported_architectures())
    assert set(NNSIGHT_ARCHITECTURES) <= registered
    # the only registered family left out is the multimodal Gemma-3 (see circuitflow.model.families)
    assert registered - set(NNSIGHT_ARCHITECTURES) == {"Gemma3ForConditionalGeneration"}
    for architecture in NNSIGHT_ARCHITECTURES:
        hooks = tl_nnsight_mapping.get_mapping(architecture).feature_hook_mapping
        assert HOOK_IN in hooks and HOOK_OUT in hooks, architecture
        for name, location in NNSIGHT_MLP_HOOKS.get(architecture, {}).items():
            assert tuple(hooks[name]) == location


def test_attribution_dtype_knob():
    assert attribution_dtype("float32", "cpu") is torch.float32
    assert attribution_dtype("bfloat16", "cpu") is torch.bfloat16  # CPU computes bfloat16 (slowly)
    with pytest.raises(ConfigError, match=r"^attribution.dtype 'float64' is not one of float32, bfloat16, float16$"):
        attribution_dtype("float64", "cpu")


def test_a_circuit_tracer_mapping_that_disagrees_with_our_hooks_is_refused():
    """A (future) circuit-tracer that maps mlp.hook_out of Gemma-2 to the post-MLP norm would
    feed our transcoders the wrong tensor: registering stops instead."""
    import dataclasses

    from circuit_tracer.utils import tl_nnsight_mapping as mapping

    from circuitflow.attribution.patches import register_model_families

    register_model_families()
    original = mapping.get_mapping("Gemma2ForCausalLM")
    post_norm = ("model.layers[{layer}].post_feedforward_layernorm", "output")
    try:
        mapping._register(dataclasses.replace(
            original, feature_hook_mapping={**original.feature_hook_mapping, HOOK_OUT: post_norm}))
        with pytest.raises(RuntimeError, match=r"maps mlp.hook_out of Gemma2ForCausalLM to .*post_feedforward"):
            register_model_families()
    finally:
        mapping._register(original)
