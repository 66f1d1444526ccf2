"""Muon whose Newton-Schulz iteration runs in float32 on CPU, and which takes stacks of
matrices (a mixture of experts' ``[E, out, in]`` experts), each matrix on its own.

:class:`torch.optim.Muon` orthogonalises every update in bfloat16. On a GPU that is the fast
path; on a CPU without native bfloat16 matrix units it is emulated, and even with them the
small matrices of the lab's model lose to float32: the five iterations over one step's matrices
(192x64, 64x64, 170x64, 64x170, 170x64) took 2.81 ms in bfloat16 and 1.17 ms in float32 on an
Intel Xeon with AMX (2026-12-06, one thread), and bfloat16 cost 3.9 ms of a 24-30 ms step on an
AMD EPYC without it (2026-12-03). :class:`Muon` is torch's optimizer (its parameter groups,
state, ``state_dict`` and hyperparameters) with one change: on CPU tensors the iteration runs in
float32. Same coefficients, same number of steps, same learning-rate adjustment; on CUDA the
iteration runs in bfloat16, as torch's does.

A 3-D parameter ``[E, out, in]`` is ``E`` matrices: each is orthogonalised and scaled as a matrix
of its own (Moonlight and Kimi K2 train mixtures of experts so), so a mixture of experts trains
with the same optimizer as the dense FFN it is compared with.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import Tensor

__all__ = ["Muon", "orthogonalise"]

# The iteration's dtype by device: float32 on CPU (measured above), bfloat16 elsewhere (torch's).
_NS_DTYPE = {"cpu": torch.float32}


def orthogonalise(update: Tensor, coefficients: tuple[float, float, float], steps: int,
                  eps: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The quintic Newton-Schulz iteration of :class:`torch.optim.Muon` on ``update`` ``[A, B]``
    or a stack ``[E, A, B]`` (each matrix on its own) -> the same shape, computed in ``dtype``
    (``update``'s dtype back). Equivalent PyTorch, per matrix::

        x = update / max(norm(update), eps)            # transposed when A > B
        for _ in range(steps):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
    """
    a, b, c = coefficients
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(update.dtype)


def _adjusted_lr(lr: float, rule: str | None, shape: torch.Size) -> float:
    """torch's Muon learning-rate adjustment: ``"original"`` scales by sqrt(max(1, A/B)),
    ``"match_rms_adamw"`` by 0.2 * sqrt(max(A, B)) (Moonshot's, so AdamW's rate carries over)."""
    rows, cols = shape[-2:]
    if rule is None or rule == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"unknown adjust_lr_fn {rule!r}")


# torch's own defaults, read from its signature (coefficients, eps, steps, momentum, ...).
_TORCH_DEFAULTS = {k: v.default for k, v in inspect.signature(torch.optim.Muon).parameters.items()
                   if v.default is not inspect.Parameter.empty}


class Muon(torch.optim.Optimizer):
    """:class:`torch.optim.Muon`'s algorithm, arguments, defaults and state layout, with the
    orthogonalisation in float32 for CPU parameters and 3-D stacks taken matrix by matrix (see
    the module docstring). torch's class refuses 3-D parameters when it is built, so this one
    is an :class:`~torch.optim.Optimizer` of its own rather than a subclass."""

    def __init__(self, params, **kwargs) -> None:
        unknown = sorted(set(kwargs) - set(_TORCH_DEFAULTS))
        if unknown:
            raise TypeError(f"Muon got unexpected arguments {unknown}; it takes "
                            f"{sorted(_TORCH_DEFAULTS)}")
        defaults = {**_TORCH_DEFAULTS, **kwargs}
        for name in ("lr", "momentum", "weight_decay"):
            if not float(defaults[name]) >= 0.0:
                raise ValueError(f"{name} should be >= 0, got {defaults[name]}")
        if defaults["adjust_lr_fn"] not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn {defaults['adjust_lr_fn']!r} is not supported "
                             f"(None, 'original' or 'match_rms_adamw')")
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim not in (2, 3):
                    raise ValueError(f"Muon takes 2-D matrices or 3-D stacks of them; got a "
                                     f"parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.ndim not in (2, 3):
                    raise ValueError("Muon takes 2-D matrices or 3-D stacks of them; got a "
                                     f"gradient of shape {tuple(p.grad.shape)}")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"], dtype=_NS_DTYPE.get(p.device.type,
                                                                         torch.bfloat16))
                p.mul_(1 - lr * decay)
                p.add_(update, alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
