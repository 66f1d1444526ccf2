"""Scalar activation functions, their analytic derivatives, and the table of them by name.

The functions live in :mod:`~.basic` (the classic ones: relu, gelu, swish, ...) and
:mod:`~.extra` (transformers' other ``ACT2FN`` names and the activations of newer variants);
all are importable from here, ``ffnlab.activations.<name>``. :data:`ACTIVATIONS` maps a name to
an :class:`Activation`: its function, derivative and, where it has them, its options (floats
given by keyword, such as leaky_relu2's ``slope``), its learnable parameters (a packed tensor,
such as xIELU's raw ``[p, n]``) and, for GPT-OSS's clamped SwiGLU, the transform of the value
branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..errors import unknown_choice
from . import basic as _basic
from . import extra as _extra
from .basic import *  # noqa: F403
from .basic import __all__ as _basic_all
from .extra import *  # noqa: F403
from .extra import __all__ as _extra_all

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "bind_options",
    "get_activation",
    *_basic_all,
    *_extra_all,
]


@dataclass(frozen=True)
class Activation:
    """One scalar activation: its function, derivative and how to write it.

    ``fn(x, *param, **options)`` and ``grad(x, *param, **options)`` map a tensor to a tensor of
    the same shape and dtype. ``param`` is Swish's ``beta`` (``has_beta``) or the packed tensor
    of learnable parameters (``n_params`` > 0, shape ``[n_params]``); ``options`` the floats
    named in ``options`` (each ``(name, default)``).
    ``value_and_grad(x, ...)``: ``(fn(x), grad(x))`` with their common subexpressions written
    once (for fused code that needs both), where that saves work; None otherwise.
    ``param_grads(x, theta, **options)``: the elementwise derivatives by each packed parameter
    (a tuple of ``n_params`` tensors shaped like ``x``; summing is the caller's job);
    ``param_init`` their initial values.
    ``value_fn`` / ``value_grad`` (gated variants only): the transform of the value branch,
    ``m = fn(h1) * value_fn(h3)``; None means ``value_fn(v) = v``.
    ``option_checks``: ``(name, predicate, what it must be)`` for each option with a range.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    grad: Callable[..., torch.Tensor]
    formula: str
    has_beta: bool = False
    monotonic: bool = True
    value_and_grad: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None
    options: tuple[tuple[str, float], ...] = ()
    option_checks: tuple[tuple[str, Callable[[float], bool], str], ...] = ()
    n_params: int = 0
    param_init: tuple[float, ...] = ()
    param_grads: Callable[..., tuple[torch.Tensor, ...]] | None = None
    value_fn: Callable[..., torch.Tensor] | None = None
    value_grad: Callable[..., torch.Tensor] | None = None

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.options)

    def kwargs(self, values: tuple[float, ...] = ()) -> dict[str, float]:
        """``{name: value}`` from option values in :attr:`options` order (``()``: defaults)."""
        if not values:
            return dict(self.options)
        return dict(zip(self.option_names, values, strict=True))


_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")

ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("relu", _basic.relu, _basic.relu_grad, "max(0, x)"),
        Activation("gelu", _basic.gelu, _basic.gelu_grad, "x·Φ(x)", monotonic=False,
                   value_and_grad=_basic.gelu_value_and_grad),
        Activation(
            "gelu_tanh",
            _basic.gelu_tanh,
            _basic.gelu_tanh_grad,
            "0.5x(1+tanh(√(2/π)(x+0.044715x³)))",
            monotonic=False,
            value_and_grad=_basic.gelu_tanh_value_and_grad,
        ),
        Activation("quick_gelu", _basic.quick_gelu, _basic.quick_gelu_grad, "x·σ(1.702x)",
                   monotonic=False),
        Activation("swish", _basic.swish, _basic.swish_grad, "x·σ(βx)", has_beta=True,
                   monotonic=False, value_and_grad=_basic.swish_value_and_grad),
        Activation("sigmoid", _basic.sigmoid, _basic.sigmoid_grad, "σ(x) = 1/(1+e^-x)"),
        Activation("tanh", _basic.tanh, _basic.tanh_grad, "tanh(x)"),
        Activation("relu2", _basic.relu2, _basic.relu2_grad, "max(0, x)²"),
        Activation("identity", _basic.identity, _basic.identity_grad, "x"),
        Activation("gelu_10", _extra.gelu_10, _extra.gelu_10_grad, "clip(x·Φ(x), -10, 10)",
                   monotonic=False),
        Activation("gelu_accurate", _extra.gelu_accurate, _extra.gelu_accurate_grad,
                   "0.5x(1+tanh(√(2/π)(x+0.044715x³)))", monotonic=False),
        Activation("hardswish", _extra.hardswish, _extra.hardswish_grad, "x·relu6(x+3)/6",
                   monotonic=False),
        Activation("laplace", _extra.laplace, _extra.laplace_grad,
                   "0.5(1+erf((x-0.707107)/(0.282095·√2)))"),
        Activation("leaky_relu", _extra.leaky_relu, _extra.leaky_relu_grad, "max(x, s·x)",
                   options=(("slope", 0.01),), option_checks=(("slope", *_NON_NEGATIVE),)),
        Activation("leaky_relu2", _extra.leaky_relu2, _extra.leaky_relu2_grad,
                   "leaky_relu(x, s)²", monotonic=False,
                   options=(("slope", 0.5),), option_checks=(("slope", *_NON_NEGATIVE),)),
        Activation("mish", _extra.mish, _extra.mish_grad, "x·tanh(softplus(x))",
                   monotonic=False),
        Activation("relu6", _extra.relu6, _extra.relu6_grad, "min(max(0, x), 6)"),
        Activation("xielu", _extra.xielu_packed, _extra.xielu_packed_grad,
                   "x>0: αp·x²+βx; else (expm1(min(x,ε))−x)·αn+βx", monotonic=False,
                   n_params=2, param_init=_extra.xielu_raw_init(),
                   param_grads=_extra.xielu_packed_param_grads),
        Activation("clamped_swish", _extra.clamped_swish, _extra.clamped_swish_grad,
                   "min(x,L)·σ(α·min(x,L))", monotonic=False,
                   options=(("alpha", 1.702), ("limit", 7.0)),
                   option_checks=(("alpha", *_POSITIVE), ("limit", *_POSITIVE)),
                   value_fn=_extra.clamped_value, value_grad=_extra.clamped_value_grad),
    )
}


def get_activation(name: str) -> Activation:
    """Look up an activation by name (``silu`` is an alias of ``swish``)."""
    key = "swish" if name == "silu" else name
    if key not in ACTIVATIONS:
        raise unknown_choice("activation", name, [*ACTIVATIONS, "silu"])
    return ACTIVATIONS[key]


def bind_options(activation: str, act_kwargs: Mapping[str, float] | None) -> tuple[float, ...]:
    """The option values of ``activation`` in :attr:`Activation.options` order, from
    ``act_kwargs`` (missing keys take their defaults).

    ValueError naming the accepted keys for an unknown key, and naming the range for a value
    that is not a finite float in it (e.g. ``slope < 0``, ``limit <= 0``).
    """
    act = get_activation(activation)
    given = dict(act_kwargs or {})
    accepted = act.option_names
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        names = ", ".join(repr(n) for n in accepted) if accepted else "none"
        raise ValueError(
            f"unknown act_kwargs {', '.join(repr(k) for k in unknown)} for activation "
            f"{act.name!r}; accepted keys: {names}"
        )
    values = []
    checks = {n: (ok, what) for n, ok, what in act.option_checks}
    for name, default in act.options:
        v = given.get(name, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"act_kwargs[{name!r}] must be a finite number, got {v!r}")
        v = float(v)
        if name in checks and not checks[name][0](v):
            raise ValueError(
                f"act_kwargs[{name!r}] must be {checks[name][1]} for activation {act.name!r}, "
                f"got {v!r} (accepted keys: {', '.join(repr(n) for n in accepted)})"
            )
        values.append(v)
    return tuple(values)
