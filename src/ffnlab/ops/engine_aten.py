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

from ..activations import Activation, compute_dtype, get_activation, swish_grad_beta

__all__ = ["hidden_forward", "hidden_backward", "param_grad", "value_transform"]

_aten = torch.ops.aten


def _is_unit_beta(beta: float | torch.Tensor) -> bool:
    return not isinstance(beta, torch.Tensor) and float(beta) == 1.0


def _param(act: Activation, x: torch.Tensor, beta: float | torch.Tensor):
    """Swish's beta or the packed parameters, in ``x``'s dtype (their defaults if not given)."""
    if act.n_params and not isinstance(beta, torch.Tensor):
        return torch.tensor(act.param_init, dtype=x.dtype, device=x.device)
    return beta.to(x.dtype) if isinstance(beta, torch.Tensor) else beta


def _call(act: Activation, fn, x: torch.Tensor, beta, options: tuple) -> torch.Tensor:
    """``fn(x, [param,] **options)`` for ``fn`` one of ``act``'s functions."""
    kw = act.kwargs(options)
    if act.has_beta or act.n_params:
        return fn(x, _param(act, x, beta), **kw)
    return fn(x, **kw)


def _act(
    activation: str, x: torch.Tensor, beta: float | torch.Tensor, options: tuple = ()
) -> torch.Tensor:
    """``act(x)`` (a new tensor unless ``act`` is the identity)."""
    act = get_activation(activation)
    return _call(act, act.fn, x, beta, options)


def param_grad(
    activation: str, t: torch.Tensor, x: torch.Tensor, beta, options: tuple = ()
) -> torch.Tensor:
    """The gradient of the activation's parameter given ``t = dL/d act(x)``: Swish's
    ``(t * swish_grad_beta(x, beta)).sum(0)`` (``[hidden]``), or for packed parameters the
    ``[n_params]`` sums ``(t * d act / d theta_i).sum()``."""
    act = get_activation(activation)
    if act.has_beta:
        return (t * swish_grad_beta(x, _param(act, x, beta))).sum(0)
    grads = _call(act, act.param_grads, x, beta, options)
    return torch.stack([(t * g).sum() for g in grads])


def value_transform(activation: str, v: torch.Tensor, options: tuple = ()):
    """``(value_fn(v), value_grad(v))`` of a gated activation with a value transform, else
    ``(v, None)``."""
    act = get_activation(activation)
    if act.value_fn is None:
        return v, None
    kw = act.kwargs(options)
    return act.value_fn(v, **kw), act.value_grad(v, **kw)


def _act_backward_(
    activation: str,
    t: torch.Tensor,
    x: torch.Tensor,
    beta: float | torch.Tensor,
    a: torch.Tensor | None,
    options: tuple = (),
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
    return t.mul_(_call(act, act.grad, x, beta, options))


def hidden_forward(
    activation: str,
    h1: torch.Tensor,
    h3: torch.Tensor | None,
    beta: float | torch.Tensor = 1.0,
    *,
    keep_act: bool = False,
    options: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``m = act(h1) * h3`` (gated) or ``act(h1)`` (plain), and ``act(h1)`` if ``keep_act``.

    Returns ``(m, a)``, both ``[N, hidden]`` in ``h1``'s dtype; ``a`` is None unless
    ``keep_act`` and the variant is gated (for plain variants ``m`` is ``act(h1)``).
    ``beta`` is Swish's beta or an activation's packed parameters, ``options`` its option
    values (``ffnlab.activations.bind_options``); a gated activation with a value transform
    (GPT-OSS's clamp) multiplies by ``value_fn(h3)`` instead of ``h3``.

    Equivalent PyTorch::

        a = act(h1); m = a * h3 if h3 is not None else a
    """
    dt = h1.dtype
    half = compute_dtype(dt) != dt
    x = h1.float() if half else h1
    a = _act(activation, x, beta, options)
    if h3 is None:
        if a is h1:  # identity activation: never hand back an alias of an input
            a = a.clone()
        return a.to(dt), None
    v = value_transform(activation, h3.float() if half else h3, options)[0]
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
    options: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of the elementwise middle, given ``dm = dL/dm`` (``[N, hidden]``).

    ``a = act(h1)`` and ``m`` may be passed when they were kept (recompute ``"none"``);
    otherwise they are recomputed. ``dm_is_scratch`` lets this function overwrite ``dm``.

    Returns ``(dh1, dh3, m, dbeta)``: ``dh1, dh3 [N, hidden]`` in ``h1``'s dtype (``dh3`` None
    for plain variants), ``m`` (recomputed when ``need_m`` and not given, else as given) and
    ``dbeta`` (``[hidden]`` in the compute dtype, summed over rows; for packed parameters
    ``[n_params]``, summed over everything; None unless ``need_dbeta``). ``beta``, ``options``
    and the value transform as :func:`hidden_forward` (then ``dh3 = dm * a * value_grad(h3)``).

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
        v, dv = value_transform(activation, h3.float() if half else h3, options)
        if a_c is None:
            a_c = _act(activation, x, beta, options)
        dh3 = torch.mul(g, a_c)
        dh3 = (dh3 if dv is None else dh3.mul_(dv)).to(dt)
        t = g.mul_(v) if scratch else torch.mul(g, v)
    else:
        t = g if scratch else g.clone()
    dbeta = None
    if need_dbeta:
        # Summed over every row (all leading dims), in float32 for half inputs.
        dbeta = param_grad(activation, t, x, beta, options)
    dh1 = _act_backward_(activation, t, x, beta, a_c, options)
    dh1 = dh1.to(dt)
    if need_m and m is None:
        if h3 is None:
            m = (a_c if a_c is not None else _act(activation, x, beta, options)).to(dt)
        else:
            # a_c is ours unless it was the kept activation or an alias of h1 (identity).
            own = a is None and a_c is not x
            m = (a_c.mul_(v) if own else torch.mul(a_c, v)).to(dt)
    return dh1, dh3, m, dbeta
