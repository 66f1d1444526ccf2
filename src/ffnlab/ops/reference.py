"""The reference FFN: plain torch operations, autograd for the backward. This is the oracle.

Every other backend (the fused autograd op, the Triton kernels) is tested against these
functions, and the benchmarks and the lab report how far they are from them.

Shapes: ``x [..., dim]``, ``w1, w3 [hidden, dim]``, ``w2 [dim, hidden]``, ``b1, b3 [hidden]``,
``b2 [dim]``; ``beta`` a float or a tensor broadcastable to ``[..., hidden]`` (``[]`` or
``[hidden]``). Output ``[..., dim]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..activations import Activation, get_activation

__all__ = [
    "ActivationArg", "act_value", "default_param", "ffn_reference", "hidden_activation", "middle",
]

ActivationArg = str | Callable[[torch.Tensor], torch.Tensor]
"""An activation: a name in :data:`ffnlab.activations.ACTIVATIONS`, or any callable
``[..., hidden] -> [..., hidden]`` (a function or an ``nn.Module``)."""


def default_param(act: Activation, like: torch.Tensor) -> torch.Tensor:
    """The packed parameters of an activation with learnable ones at their initial values
    (xielu: the raw ``[p, n]`` of αp = αn = 0.8), as a constant tensor like ``like``."""
    return torch.tensor(act.param_init, dtype=like.dtype, device=like.device)


def act_value(
    act: Activation, x: torch.Tensor, param: float | torch.Tensor = 1.0, options: tuple = ()
) -> torch.Tensor:
    """``act.fn(x, [param,] **options)``: ``param`` is Swish's beta or the packed parameters
    (None or a float for those: their initial values); ``options`` in ``act.options`` order."""
    kw = act.kwargs(options)
    if act.has_beta:
        return act.fn(x, param, **kw)
    if act.n_params:
        p = param if isinstance(param, torch.Tensor) else default_param(act, x)
        return act.fn(x, p, **kw)
    return act.fn(x, **kw)


def hidden_activation(
    activation: ActivationArg,
    h1: torch.Tensor,
    h3: torch.Tensor | None = None,
    beta: float | torch.Tensor = 1.0,
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """The elementwise middle of an FFN: ``act(h1)`` (plain) or ``act(h1) * h3`` (gated;
    ``act(h1) * value_fn(h3)`` for an activation with a value transform, GPT-OSS's clamp).

    ``h1 = W1 x + b1`` is the activation/gate branch, ``h3 = W3 x + b3`` the value branch
    (None for plain variants). Shapes ``[..., hidden]`` in, ``[..., hidden]`` out. ``beta``:
    Swish's beta or the packed parameters of an activation with learnable ones (xielu:
    ``[2]``); ``options``: the activation's option values (:func:`ffnlab.activations.bind_options`).
    A callable ``activation`` is called on ``h1`` as it is.
    """
    if callable(activation):
        a = activation(h1)
        return a if h3 is None else a * h3
    act = get_activation(activation)
    a = act_value(act, h1, beta, options)
    if h3 is None:
        return a
    return a * (h3 if act.value_fn is None else act.value_fn(h3, **act.kwargs(options)))


def ffn_reference(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    b3: torch.Tensor | None = None,
    *,
    activation: ActivationArg,
    beta: float | torch.Tensor = 1.0,
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """``W2 · act(W1 x + b1) + b2`` or, with ``w3``, ``W2 · (act(W1 x + b1) ⊙ (W3 x + b3)) + b2``.

    Equivalent PyTorch (SwiGLU)::

        F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)

    ``activation``, ``beta``, ``options`` as :func:`hidden_activation`.
    """
    h1 = F.linear(x, w1, b1)
    h3 = None if w3 is None else F.linear(x, w3, b3)
    return F.linear(hidden_activation(activation, h1, h3, beta, options), w2, b2)


def middle(
    activation: ActivationArg, h1: torch.Tensor, h3: torch.Tensor | None,
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """The elementwise middle ``m = act(h1) [* value(h3)]``, ``[..., hidden]``, with the least
    Python around it (a patched MLP's plain path runs it on every decoding step). Equivalent PyTorch::

        hidden_activation(activation, h1, h3, 1.0, options)
    """
    if callable(activation):
        a = activation(h1)
        return a if h3 is None else a * h3
    act = get_activation(activation)
    if act.n_params or act.value_fn is not None:
        return hidden_activation(activation, h1, h3, 1.0, options)
    kw = act.kwargs(options)
    a = act.fn(h1, 1.0, **kw) if act.has_beta else act.fn(h1, **kw)  # swish's beta is 1 here
    return a if h3 is None else a * h3
