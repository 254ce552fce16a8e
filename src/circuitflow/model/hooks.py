"""Forward hooks on a Hugging Face decoder: where circuit-tracer's MLP hook points are.

``blocks.{l}.mlp.hook_in`` is the normalized residual that enters the MLP and
``blocks.{l}.mlp.hook_out`` the MLP output; here they are read with forward hooks on the
Hugging Face model's MLP modules, so transcoders trained on them plug into circuit-tracer's
replacement model unchanged.

That is the same tensor pair for every family, Gemma-2/3 included: there the block is
``pre_feedforward_layernorm -> mlp -> post_feedforward_layernorm``, and ``mlp.hook_in`` /
``mlp.hook_out`` are the MLP module's own input and output (the post-MLP norm stays part of the
model, with its scale frozen during attribution), exactly as in TransformerLens, whose
``ReplacementMLP`` wraps ``blocks[l].mlp`` inside ``ln2``/``ln2_post``. circuit-tracer 0.5.0's
nnsight backend locates these names per architecture (`NNSIGHT_MLP_HOOKS`); for Gemma-2 it
knows neither name and for Gemma-3 not ``mlp.hook_out`` (its Gemma entries target GemmaScope's
``hook_mlp_out``, the post-norm output), so `circuitflow.attribution.patches` registers the
missing entries from `NNSIGHT_MLP_HOOKS`, the one place where that correspondence is written.
"""

from __future__ import annotations

from circuitflow.model.facts import model_facts

HOOK_IN = "mlp.hook_in"
HOOK_OUT = "mlp.hook_out"

_PRE_MLP_NORM = {"llama": "model.layers[{layer}].post_attention_layernorm",
                 "gemma": "model.layers[{layer}].pre_feedforward_layernorm"}
_MLP = ("model.layers[{layer}].mlp", "output")
_POST_MLP = {"llama": _MLP, "gemma": ("model.layers[{layer}].post_feedforward_layernorm", "output")}


def _hooks(layout: str) -> dict[str, tuple[str, str]]:
    """The hook names `hook_point` reads, where circuit-tracer's nnsight backend must read them
    (ln2.hook_normalized is circuit-tracer's own, inside Gemma's norm; Llama-like families have none):
    the MLP's input (= the output of the norm before it) and output, the residual entering that
    norm, and the output after the post-MLP norm (Gemma) or of the MLP."""
    norm = _PRE_MLP_NORM[layout]
    return {HOOK_IN: (norm, "output"), "hook_resid_mid": (norm, "input"), HOOK_OUT: _MLP,
            "hook_mlp_out": _POST_MLP[layout]}


# Hugging Face architecture -> {hook name: (nnsight module pattern, "input" | "output")}: where
# circuit-tracer's nnsight backend reads each hook name, i.e. what `mlp_recorder` and
# `hook_point` read (tests/integration/test_model_families.py compares them on every family).
NNSIGHT_MLP_HOOKS: dict[str, dict[str, tuple[str, str]]] = {
    "LlamaForCausalLM": _hooks("llama"),
    "Qwen2ForCausalLM": _hooks("llama"),
    "Qwen3ForCausalLM": _hooks("llama"),
    "Gemma2ForCausalLM": _hooks("gemma"),
    "Gemma3ForCausalLM": _hooks("gemma"),
    # GptOssForCausalLM: circuit-tracer's own entries (mlp.hook_out = the experts' output, which
    # is the first element of the MLP module's output tuple)
}


def decoder_layers(model) -> list:
    """The model's decoder blocks, found generically (Llama/Qwen/Gemma `model.layers`, GPT-2 `h`)."""
    import torch

    n_layers = model_facts(model.config.to_dict(), type(model).__name__).n_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers and hasattr(module[0], "mlp"):
            return list(module)
    raise ValueError(f"cannot find {n_layers} decoder blocks with an `mlp` submodule in {type(model).__name__}")


class _StopForward(Exception):
    """Raised by the last hook: later layers and the LM head are not needed."""


class ModuleRecorder:
    """Forward hooks on some modules, keyed by layer, storing `capture(inputs, output)`.

    By default the forward pass is stopped right after the last hooked module, so later layers
    and the LM head are never computed (caching, feature collection); with `stop=False` the
    forward runs to the logits, which the caller computes itself (fidelity evaluation).
    """

    def __init__(self, modules: dict[int, object], capture, stop: bool = True):
        # one capture for every module, or one per key
        self.capture = capture if isinstance(capture, dict) else {key: capture for key in modules}
        self.captured: dict[int, object] = {}
        last = max(modules)
        self.handles = [module.register_forward_hook(self._hook(key, stop and key == last))
                        for key, module in modules.items()]

    def _hook(self, key: int, is_last: bool):
        def hook(module, inputs, output):
            self.captured[key] = self.capture[key](inputs, output)
            if is_last:
                raise _StopForward
        return hook

    def run(self, model, input_ids) -> dict:
        self.captured = {}
        try:
            model(input_ids=input_ids, use_cache=False)
        except _StopForward:
            pass
        return self.captured

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def mlp_output(output):
    """An MLP module's output tensor (some architectures return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _mlp_in_out(inputs, output) -> tuple:
    """MLP input and output at positions >= 1 (circuit-tracer zeroes position 0)."""
    return inputs[0][:, 1:].detach(), mlp_output(output)[:, 1:].detach()


# The other hook names published sets use (imported with transcoder.source), by where they sit:
# read at a module's input (a transcoder's feature_input_hook) or at its output (feature_output_hook).
INPUT_HOOKS = (HOOK_IN, "ln2.hook_normalized", "hook_resid_mid")
OUTPUT_HOOKS = (HOOK_OUT, "hook_mlp_out")


def _rms_normalized(norm, x):
    """What TransformerLens calls ln2.hook_normalized: the residual RMS-normalized by the norm
    before the MLP, before its scale (circuit-tracer reads Gemma's inside the norm's `_norm`)."""
    import torch

    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def hook_point(block, hook: str):
    """(module, read) for circuit-tracer's hook name in a decoder block: `read(inputs, output)`,
    called by a forward hook on `module`, gives the hook's tensor. mlp.hook_in / mlp.hook_out are
    the MLP's input and output; hook_resid_mid is the residual entering the norm before the MLP,
    ln2.hook_normalized that residual normalized before the norm's scale; hook_mlp_out is the
    output of the norm after the MLP where the family has one (Gemma), else the MLP's."""
    pre_mlp_norm = getattr(block, "pre_feedforward_layernorm", None)
    pre_mlp_norm = pre_mlp_norm if pre_mlp_norm is not None else getattr(block, "post_attention_layernorm", None)
    if hook == HOOK_IN:
        return block.mlp, lambda inputs, output: inputs[0]
    if hook == HOOK_OUT:
        return block.mlp, lambda inputs, output: mlp_output(output)
    if hook == "hook_resid_mid" and pre_mlp_norm is not None:
        return pre_mlp_norm, lambda inputs, output: inputs[0]
    if hook == "ln2.hook_normalized" and pre_mlp_norm is not None:
        return pre_mlp_norm, lambda inputs, output: _rms_normalized(pre_mlp_norm, inputs[0])
    if hook == "hook_mlp_out":
        post_mlp_norm = getattr(block, "post_feedforward_layernorm", None)
        return (post_mlp_norm if post_mlp_norm is not None else block.mlp), lambda inputs, output: mlp_output(output)
    raise ValueError(f"hook {hook!r} is not one circuitflow reads in a {type(block).__name__} "
                     f"({', '.join(INPUT_HOOKS + OUTPUT_HOOKS)})")


class _PairRecorder(ModuleRecorder):
    """Per layer, a tensor read at one module and the output of a later one: (x, y) at positions >= 1."""

    def __init__(self, inputs: dict, outputs: dict, stop: bool = True):
        self.captured, self._x = {}, {}
        last = max(outputs)
        self.handles = [module.register_forward_hook(self._input_hook(layer, read))
                        for layer, (module, read) in inputs.items()]
        self.handles += [module.register_forward_hook(self._output_hook(layer, stop and layer == last))
                         for layer, (module, _) in outputs.items()]

    def _input_hook(self, layer: int, read):
        def hook(module, inputs, output):
            self._x[layer] = read(inputs, output)[:, 1:].detach()
        return hook

    def _output_hook(self, layer: int, is_last: bool):
        def hook(module, inputs, output):
            self.captured[layer] = (self._x.pop(layer), mlp_output(output)[:, 1:].detach())
            if is_last:
                raise _StopForward
        return hook


def mlp_recorder(model, layers: tuple[int, ...], stop: bool = True, input_hook: str = HOOK_IN,
                 output_hook: str = HOOK_OUT) -> ModuleRecorder:
    """Records each layer's transcoder input and target: the MLP's input and output
    (mlp.hook_in / mlp.hook_out) unless an imported set reads other hooks."""
    blocks = decoder_layers(model)
    if (input_hook, output_hook) == (HOOK_IN, HOOK_OUT):
        return ModuleRecorder({layer: blocks[layer].mlp for layer in layers}, _mlp_in_out, stop=stop)
    return _PairRecorder({layer: hook_point(blocks[layer], input_hook) for layer in layers},
                         {layer: hook_point(blocks[layer], output_hook) for layer in layers}, stop=stop)
