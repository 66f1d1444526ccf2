"""The ``aten`` engine: the elementwise middle of the FFN as ATen operations.

One of the fused op's elementwise engines (the table is :mod:`ffnlab.ops.engines`): it runs
on every device and dtype, and is the fallback the table ends with. The ``inductor`` engine
(:mod:`ffnlab.ops.engine_inductor`) and the ``triton`` engine (:mod:`ffnlab.ops.engine_triton`)
have the same two functions with the same contract.

Shapes: ``h1, h3, dm`` are ``[N, hidden]`` (2-D; ``h3`` is None for plain variants); ``beta``
is a float or a tensor of shape ``[]`` or ``[hidden]``.

Why it is as fast as eager autograd although it recomputes the activation in backward:
every buffer that only this module can see is reused in place (``mul_``, ``out=``), so the
backward allocates three ``[N, hidden]`` tensors where eager allocates four, and the
activation derivative uses ATen's fused backward kernels (``silu_backward``, ``gelu_backward``,
...), the same kernels eager autograd calls, one pass over memory each. Activations without
such a kernel (relu², Swish with beta != 1 or learnable) use the analytic derivatives of
:mod:`ffnlab.activations`.

Half inputs (float16, bfloat16) are upcast once, all elementwise maths runs in float32, and
each result is rounded once to the input dtype.
"""

from __future__ import annotations

import torch

from ..activations import compute_dtype, get_activation, swish_grad_beta

__all__ = ["hidden_forward", "hidden_backward"]

_aten = torch.ops.aten


def _is_unit_beta(beta: float | torch.Tensor) -> bool:
    return not isinstance(beta, torch.Tensor) and float(beta) == 1.0


def _act(activation: str, x: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """``act(x)`` (a new tensor unless ``act`` is the identity)."""
    act = get_activation(activation)
    if act.has_beta:
        b = beta.to(x.dtype) if isinstance(beta, torch.Tensor) else beta
        return act.fn(x, b)
    return act.fn(x)


def _act_backward_(
    activation: str,
    t: torch.Tensor,
    x: torch.Tensor,
    beta: float | torch.Tensor,
    a: torch.Tensor | None,
) -> torch.Tensor:
    """Overwrite ``t`` with ``t * act'(x)`` and return it (``a = act(x)`` if known).

    Equivalent PyTorch: ``t * get_activation(activation).grad(x)``.
    """
    if activation == "identity":
        return t
    if activation == "relu":
        return _aten.threshold_backward.grad_input(t, x, 0, grad_input=t)
    if activation in ("gelu", "gelu_tanh"):
        approx = "tanh" if activation == "gelu_tanh" else "none"
        return _aten.gelu_backward.grad_input(t, x, approximate=approx, grad_input=t)
    if activation == "swish" and _is_unit_beta(beta):
        return _aten.silu_backward.grad_input(t, x, grad_input=t)
    if activation in ("sigmoid", "tanh"):
        out = a if a is not None else _act(activation, x, beta)
        kernel = _aten.sigmoid_backward if activation == "sigmoid" else _aten.tanh_backward
        return kernel.grad_input(t, out, grad_input=t)
    act = get_activation(activation)
    if act.has_beta:
        b = beta.to(x.dtype) if isinstance(beta, torch.Tensor) else beta
        return t.mul_(act.grad(x, b))
    return t.mul_(act.grad(x))


def hidden_forward(
    activation: str,
    h1: torch.Tensor,
    h3: torch.Tensor | None,
    beta: float | torch.Tensor = 1.0,
    *,
    keep_act: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``m = act(h1) * h3`` (gated) or ``act(h1)`` (plain), and ``act(h1)`` if ``keep_act``.

    Returns ``(m, a)``, both ``[N, hidden]`` in ``h1``'s dtype; ``a`` is None unless
    ``keep_act`` and the variant is gated (for plain variants ``m`` is ``act(h1)``).

    Equivalent PyTorch::

        a = act(h1); m = a * h3 if h3 is not None else a
    """
    dt = h1.dtype
    half = compute_dtype(dt) != dt
    x = h1.float() if half else h1
    a = _act(activation, x, beta)
    if h3 is None:
        if a is h1:  # identity activation: never hand back an alias of an input
            a = a.clone()
        return a.to(dt), None
    v = h3.float() if half else h3
    if keep_act or a is x:
        m = torch.mul(a, v)
        return m.to(dt), (a.to(dt) if keep_act else None)
    return a.mul_(v).to(dt), None


def hidden_backward(
    activation: str,
    dm: torch.Tensor,
    h1: torch.Tensor,
    h3: torch.Tensor | None,
    beta: float | torch.Tensor = 1.0,
    *,
    a: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    need_m: bool = True,
    need_dbeta: bool = False,
    dm_is_scratch: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the elementwise middle, given ``dm = dL/dm`` (``[N, hidden]``).

    ``a = act(h1)`` and ``m`` may be passed when they were kept (recompute ``"none"``);
    otherwise they are recomputed. ``dm_is_scratch`` lets this function overwrite ``dm``.

    Returns ``(dh1, dh3, m, dbeta)``: ``dh1, dh3 [N, hidden]`` in ``h1``'s dtype (``dh3`` None
    for plain variants), ``m`` (recomputed when ``need_m`` and not given, else as given) and
    ``dbeta`` (``[hidden]`` in the compute dtype, summed over rows; None unless ``need_dbeta``).

    Equivalent PyTorch (gated)::

        dh3 = dm * act(h1)
        dh1 = dm * h3 * act'(h1)
        dbeta = (dm * h3 * swish_grad_beta(h1, beta)).sum(0)
    """
    dt = h1.dtype
    half = compute_dtype(dt) != dt
    x = h1.float() if half else h1
    g = dm.float() if half else dm
    scratch = half or dm_is_scratch
    a_c = None
    if a is not None:
        a_c = a.float() if half else a
    dh3 = None
    if h3 is not None:
        v = h3.float() if half else h3
        if a_c is None:
            a_c = _act(activation, x, beta)
        dh3 = torch.mul(g, a_c).to(dt)
        t = g.mul_(v) if scratch else torch.mul(g, v)
    else:
        t = g if scratch else g.clone()
    dbeta = None
    if need_dbeta:
        b = beta.to(x.dtype) if isinstance(beta, torch.Tensor) else beta
        # Summed over every row (all leading dims), in float32 for half inputs.
        dbeta = (t * swish_grad_beta(x, b)).sum(0)
    dh1 = _act_backward_(activation, t, x, beta, a_c)
    dh1 = dh1.to(dt)
    if need_m and m is None:
        if h3 is None:
            m = (a_c if a_c is not None else _act(activation, x, beta)).to(dt)
        else:
            # a_c is ours unless it was the kept activation or an alias of h1 (identity).
            own = a is None and a_c is not x
            m = (a_c.mul_(v) if own else torch.mul(a_c, v)).to(dt)
    return dh1, dh3, m, dbeta
