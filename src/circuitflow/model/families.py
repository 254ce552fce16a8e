"""Which model families circuit-tracer 0.5.0 can attribute, checked at parse time (torch-free).

The nnsight backend attributes the architectures in circuit-tracer's registry
(``circuit_tracer.utils.tl_nnsight_mapping``) plus Qwen2, which
`circuitflow.attribution.patches.register_model_families` registers with Llama's layout.
The TransformerLens backend takes only official TransformerLens model names, and circuitflow
attributes its materialized local folder, so no architecture works there.
tests/unit/test_families.py checks this list against the installed circuit-tracer.
"""

from __future__ import annotations

from circuitflow.config import ConfigError

NNSIGHT_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",  # registered by circuitflow.attribution.patches
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GptOssForCausalLM",
)
# circuit-tracer also maps Gemma3ForConditionalGeneration, but a multimodal config nests the
# text model's sizes under text_config, which circuitflow's model facts do not read: text-only
# Gemma-3 checkpoints load as Gemma3ForCausalLM.

# config.json `model_type` -> architecture, for configs that do not list `architectures`
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gpt_oss": "GptOssForCausalLM",
}


# Hook names circuit-tracer 0.5.0's nnsight backend maps only for some families (the others are
# mapped for every family above, by circuit-tracer or by circuitflow.attribution.patches).
HOOKS_OF_SOME_FAMILIES = {"ln2.hook_normalized": ("Gemma2ForCausalLM", "Gemma3ForCausalLM")}


def check_hooks(architecture: str | None, hooks: tuple[str, str], origin: str) -> None:
    """Raise ConfigError (one line) when a published set reads a hook circuit-tracer cannot find
    in this family (GemmaScope's ln2.hook_normalized exists for Gemma only)."""
    if architecture is None:
        return
    name = MODEL_TYPES.get(architecture, architecture)
    for hook in hooks:
        families = HOOKS_OF_SOME_FAMILIES.get(hook)
        if families is not None and name not in families:
            raise ConfigError(f"transcoder.source {origin} reads {hook}, which circuit-tracer 0.5.0 maps for "
                              f"{', '.join(families)} only, not for the model's {name}")


def check_attributable(architecture: str | None, backend: str) -> None:
    """Raise ConfigError (one line) unless circuit-tracer's `backend` can attribute `architecture`.

    `architecture` is a Hugging Face class name (config.json's ``architectures[0]``, as in
    `circuitflow.model.facts.ModelFacts.architecture`) or a ``model_type``; None (not known yet,
    e.g. a hub model not materialized) passes, and the attribution rule itself fails later.
    """
    if architecture is None:
        return
    name = MODEL_TYPES.get(architecture, architecture)
    supported = ", ".join(NNSIGHT_ARCHITECTURES)
    if backend == "nnsight":
        if name not in NNSIGHT_ARCHITECTURES:
            raise ConfigError(
                f"attribution.backend nnsight: circuit-tracer 0.5.0 cannot attribute {name} models; it supports "
                f"{supported}; use a model of one of these architectures")
        return
    if backend == "transformerlens":
        raise ConfigError(
            f"attribution.backend transformerlens cannot attribute {name}: circuit-tracer 0.5.0's "
            "TransformerLens backend loads only official TransformerLens model names, not circuitflow's "
            f"materialized model folder; set attribution.backend: nnsight (supports {supported})")
    raise ConfigError(f"attribution.backend {backend!r} is unknown; use nnsight (supports {supported})")
