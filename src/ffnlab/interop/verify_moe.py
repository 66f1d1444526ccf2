"""Whether a transformers mixture-of-experts block is one :class:`~.hf_moe.HFMoE` can stand in
for: :func:`verified_moe_spec` tries each description :mod:`.recognise_moe` offers on a probe
(random parameters, float64 and float32, outputs and gradients) against the block itself."""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from .hf_moe import HFMoE
from .recognise_moe import MoESpec, moe_candidates
from .verify import (
    NEAR,
    TOLERANCE,
    TOLERANCE_FLOAT32,
    plain_copy,
    randomise_parameters,
    relative_difference,
)

__all__ = ["verified_moe_spec"]


def _eager_copy(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A ``dtype`` copy of ``block`` whose experts run transformers' eager loop (the default
    ``grouped_mm`` has no float64 kernel on the CPU), parameters and router buffers redrawn."""
    probe = plain_copy(block).to(dtype).eval()  # DTensor shards: plain, full-shape
    for m in probe.modules():
        config = getattr(m, "config", None)
        if config is not None and hasattr(config, "_experts_implementation"):
            config._experts_implementation = "eager"
    randomise_parameters(probe, seed=0)
    g = torch.Generator().manual_seed(2)
    # A correction bias left at zero would hide a spec that ignores it; N(-1, 1) puts most
    # biased sigmoid scores (in (0, 1)) below 0, where filling the groups not chosen with 0
    # (A.X-K2) or -inf (DeepSeek-V3) chooses otherwise.
    with torch.no_grad():
        for m in probe.modules():
            for name, b in m.named_buffers(recurse=False):
                if b.is_floating_point() and "bias" in name:
                    b.copy_(torch.randn(b.shape, generator=g, dtype=torch.float64) - 1.0)
    return probe


def _run(module: nn.Module, x: Tensor, cot: Tensor | None, params: list[Tensor]):
    with torch.enable_grad():
        out = module(x)
        y = out[0] if isinstance(out, tuple) else out
        extra = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if cot is None:
            return out, y, extra, []
        grads = torch.autograd.grad(y, [x, *params], cot, allow_unused=True)
    return out, y, extra, grads


class _MoEProbe:
    """A randomised ``dtype`` copy of a block, an input ``[2, 5, dim]``, a cotangent and the
    block's output, second output and gradients (input and every parameter), and how the block
    called its child ``router``."""

    def __init__(self, block: nn.Module, dim: int, dtype: torch.dtype, router: str) -> None:
        self.module = _eager_copy(block, dtype)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(2, 5, dim, generator=g, dtype=torch.float64).to(dtype)
        self.x.requires_grad_()
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        calls = []
        hook = self.module._modules[router].register_forward_pre_hook(
            lambda _, args: calls.append(args))  # fmt: skip
        try:
            self.out, y, _, _ = _run(self.module, self.x, None, self.params)
        finally:
            hook.remove()
        self.router_call = _router_call(self.module, self.x, calls)
        self.cot = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        _, self.y, self.extra, self.grads = _run(self.module, self.x, self.cot, self.params)

    def difference(self, spec: MoESpec) -> float:
        try:
            wrapper = HFMoE(self.module, spec, backend="reference")
            _, y, extra, grads = _run(wrapper, self.x, self.cot, self.params)
            pairs = [(self.y, y), (self.extra, extra), *zip(self.grads, grads, strict=True)]
            return max(relative_difference(a, b) for a, b in pairs)
        except Exception:  # noqa: BLE001 - a candidate that fails does not match
            return math.inf


def _router_call(block: nn.Module, x: Tensor, calls: list[tuple]) -> str:
    """How ``block`` called its router on ``x`` (:attr:`MoESpec.router_call`)."""
    if len(calls) != 1 or not calls[0]:
        return "flat"
    args = calls[0]
    form = "input" if args[0].dim() == x.dim() else "flat"
    own = [b for b in block._buffers.values() if b is not None] + list(block._parameters.values())
    if len(args) > 1 and any(args[1] is t for t in own):
        form += "+bias"
    return form


def verified_moe_spec(block: nn.Module, dim: int) -> tuple[MoESpec | None, float]:
    """``(spec, difference)`` of the first :func:`moe_candidates` spec whose wrapper computes
    ``block``'s output, second output and gradients (input and every parameter) within
    :data:`~ffnlab.interop.verify.TOLERANCE` on a float64 probe ``[2, 5, dim]``, or ``(None,
    smallest difference)`` (``inf`` when no candidate ran).

    A block that rounds on purpose (GraniteMoE's ``softmax(top-k logits.float())``, which ffnlab
    computes as renormalised softmax probabilities: equal in exact arithmetic) cannot match in
    float64: candidates within :data:`~ffnlab.interop.verify.NEAR` are checked again on a
    float32 probe, within :data:`~ffnlab.interop.verify.TOLERANCE_FLOAT32`."""
    first = next(moe_candidates(block), None)
    if first is None:
        return None, math.inf
    try:
        probe = _MoEProbe(block, dim, torch.float64, first.router)
    except Exception:  # noqa: BLE001 - a block that does not run on [2, 5, dim]: no match
        return None, math.inf
    returns: tuple[str | None, ...] = (None,)
    if isinstance(probe.out, tuple):  # (y, router logits [T, E]) or (y, gates [T, k])
        n_experts = HFMoE(probe.module, first, backend="reference").expert_weights()[0].shape[0]
        width = -1 if probe.extra is None else probe.extra.shape[-1]
        returns = tuple(r for r, w in (("logits", n_experts), ("gates", first.top_k)) if w == width)
    best, near = math.inf, []
    for spec in moe_candidates(block, returns=returns, flat=probe.y.dim() == 2):
        spec = replace(spec, router_call=probe.router_call)
        diff = probe.difference(spec)
        if diff <= TOLERANCE:
            return spec, diff
        if diff < NEAR:
            near.append((diff, spec))
        best = min(best, diff)
    if near:
        probe32 = _MoEProbe(block, dim, torch.float32, first.router)
        for _, spec in sorted(near, key=lambda t: t[0]):
            diff = probe32.difference(spec)
            if diff <= TOLERANCE_FLOAT32:
                return spec, diff
    return None, best
