"""JumpReLU trained directly, with straight-through threshold gradients (Rajamanoharan et al.,
as in Gemma Scope), the alternative to TopK training followed by calibrated thresholds.

    acts = pre * H(pre - theta)

H has no useful derivative, so the backward pass uses a rectangle kernel of width `bandwidth`
around the threshold: d acts / d theta = -(theta / bandwidth) * K((pre - theta) / bandwidth)
and, for the sparsity penalty, d H / d theta = -(1 / bandwidth) * K(...). The pre-activations
are in unit-RMS output units (training rescales every layer), so one bandwidth fits all
layers. Instead of a fixed L0 coefficient, `L0Controller` adapts it so that the mean L0 tracks
k: the two ways of getting JumpReLU features then compare at the same sparsity.
"""

from __future__ import annotations

import math

import torch


def _kernel(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    return ((pre - threshold).abs() < bandwidth / 2).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(threshold / ctx.bandwidth) * _kernel(pre, threshold, ctx.bandwidth) * grad
        return grad * (pre > threshold), grad_threshold.sum(0), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_threshold = -(1.0 / ctx.bandwidth) * _kernel(pre, threshold, ctx.bandwidth) * grad
        return None, grad_threshold.sum(0), None


def jumprelu_ste(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float):
    """(activations, L0 per token), both with straight-through gradients to `threshold`."""
    return _JumpReLU.apply(pre, threshold, bandwidth), _Step.apply(pre, threshold, bandwidth).sum(-1)


@torch.no_grad()
def initial_thresholds(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Per-feature thresholds at which each feature fires on k / n_features of these tokens
    (so the starting L0 is about k), never negative."""
    rate = k / pre.shape[1]
    return torch.quantile(pre, 1 - rate, dim=0).clamp_min(0)


class L0Controller:
    """The L0 penalty's coefficient, raised while L0 is above `target` and lowered below it
    (multiplicatively, by at most `rate` per step; on SmolLM2 with k = 32, rate 0.05 let L0 end
    at 39-42, rate 0.2 at 34-37)."""

    def __init__(self, target: float, coefficient: float = 0.1, rate: float = 0.2):
        self.target, self.coefficient, self.rate = target, coefficient, rate

    def update(self, l0: float) -> None:
        self.coefficient *= math.exp(max(-self.rate, min(self.rate, self.rate * (l0 / self.target - 1))))

    def state_dict(self) -> dict:
        return {"coefficient": self.coefficient}

    def load_state_dict(self, state: dict) -> None:
        self.coefficient = state["coefficient"]
