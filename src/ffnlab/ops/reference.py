"""The reference FFN: plain torch operations, autograd for the backward. This is the oracle.

Every other backend (the fused autograd op, the Triton kernels) is tested against these
functions, and the benchmarks and the lab report how far they are from them.

Shapes: ``x [..., dim]``, ``w1, w3 [hidden, dim]``, ``w2 [dim, hidden]``, ``b1, b3 [hidden]``,
``b2 [dim]``; ``beta`` a float or a tensor broadcastable to ``[..., hidden]`` (``[]`` or
``[hidden]``). Output ``[..., dim]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..activations import get_activation

__all__ = ["hidden_activation", "ffn_reference"]


def hidden_activation(
    activation: str,
    h1: torch.Tensor,
    h3: torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The elementwise middle of an FFN: ``act(h1)`` (plain) or ``act(h1) * h3`` (gated).

    ``h1 = W1 x + b1`` is the activation/gate branch, ``h3 = W3 x + b3`` the value branch
    (None for plain variants). Shapes ``[..., hidden]`` in, ``[..., hidden]`` out.
    """
    act = get_activation(activation)
    a = act.fn(h1, beta) if act.has_beta else act.fn(h1)
    return a if h3 is None else a * h3


def ffn_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    b3: torch.Tensor | None = None,
    *,
    activation: str,
    beta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``W2 · act(W1 x + b1) + b2`` or, with ``w3``, ``W2 · (act(W1 x + b1) ⊙ (W3 x + b3)) + b2``.

    Equivalent PyTorch (SwiGLU)::

        F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)
    """
    h1 = F.linear(x, w1, b1)
    h3 = None if w3 is None else F.linear(x, w3, b3)
    return F.linear(hidden_activation(activation, h1, h3, beta), w2, b2)
