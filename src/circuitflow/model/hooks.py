"""Forward hooks on a Hugging Face decoder: where circuit-tracer's MLP hook points are.

``blocks.{l}.mlp.hook_in`` is the normalized residual that enters the MLP and
``blocks.{l}.mlp.hook_out`` the MLP output; here they are read with forward hooks on the
Hugging Face model's MLP modules, so transcoders trained on them plug into circuit-tracer's
replacement model unchanged.
"""

from __future__ import annotations

from circuitflow.model.facts import model_facts

HOOK_IN = "mlp.hook_in"
HOOK_OUT = "mlp.hook_out"


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
        self.capture = capture
        self.captured: dict[int, object] = {}
        last = max(modules)
        self.handles = [module.register_forward_hook(self._hook(key, stop and key == last))
                        for key, module in modules.items()]

    def _hook(self, key: int, is_last: bool):
        def hook(module, inputs, output):
            self.captured[key] = self.capture(inputs, output)
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


def mlp_recorder(model, layers: tuple[int, ...], stop: bool = True) -> ModuleRecorder:
    """Records each layer's MLP input and output (mlp.hook_in / mlp.hook_out)."""
    blocks = decoder_layers(model)
    return ModuleRecorder({layer: blocks[layer].mlp for layer in layers}, _mlp_in_out, stop=stop)
