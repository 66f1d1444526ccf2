"""The fused expert FFN: every expert's FFN on its segment of sorted rows, one autograd op.

``grouped_feed_forward(xs, offsets, w1, w2, w3, b1, b2, b3, activation=..., recompute=...)``
takes the rows ``xs [M, dim]`` sorted by expert (segment ``e`` is rows
``offsets[e-1]:offsets[e]``, see :mod:`ffnlab.ops.grouped`) and the stacked expert weights
``w1, w3 [E, hidden, dim]``, ``w2 [E, out, hidden]``, biases ``b1, b3 [E, hidden]``,
``b2 [E, out]``, and computes, per segment, the FFN of :mod:`ffnlab.ops.function`::

    for e, (start, end) in enumerate(segments):
        ys[start:end] = ffn_reference(xs[start:end], w1[e], w2[e], w3[e], b1[e], b2[e], b3[e],
                                      activation=activation, beta=beta, options=options)

with the projections as grouped matrix products (:func:`~ffnlab.ops.grouped.grouped_mm`), the
elementwise middle on the fused op's engines (:mod:`ffnlab.ops.engines`) over all ``M`` rows at
once, and the fused op's three recompute modes (same saved tensors per row; the table is in
:mod:`ffnlab.ops.function`). Like the fused op it is a pair of ``torch.library`` custom ops
(``ffnlab::grouped_ffn_forward`` / ``ffnlab::grouped_ffn_backward``) with fake
implementations, so ``torch.compile(fullgraph=True)`` traces a call whether the products run
``torch._grouped_mm`` or the per-segment loop (the loop's host synchronisation stays inside
the op); eager calls take a plain ``autograd.Function`` over the same implementations.
Swish's beta is a fixed float here (no learnable beta in the experts); ``options`` are the
activation's option values (:func:`ffnlab.activations.bind_options`: GPT-OSS's clamped SwiGLU
alpha and limit), passed to the engines as the dense fused op passes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..activations import get_activation
from ..errors import UsageError, check_choice
from .engines import ENGINES, select
from .function import RECOMPUTE_MODES, _engine, _kept
from .grouped import grouped_mm, grouped_mm_weight, row_experts

__all__ = ["grouped_feed_forward"]


def _glinear(x: Tensor, w: Tensor, b: Tensor | None, offsets: Tensor, rows: Tensor | None):
    """``x [M, in]`` by ``w [E, out, in]`` per segment, plus ``b [E, out]`` per row."""
    y = grouped_mm(x, w.transpose(1, 2), offsets)
    return y if b is None else y.add_(b.index_select(0, rows))


def _forward_impl(
    xs: Tensor,
    offsets: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None,
    b1: Tensor | None,
    b2: Tensor | None,
    b3: Tensor | None,
    activation: str,
    beta: float,
    recompute: str,
    engine: str,
    options: list[float],
) -> list[Tensor]:
    """``xs [M, dim]`` -> ``[ys [M, out], *kept]``, ``kept`` the ``[M, hidden]`` tensors that
    backward keeps under ``recompute`` (named by :func:`ffnlab.ops.function._kept`)."""
    gated = w3 is not None
    biased = any(b is not None for b in (b1, b2, b3))
    rows = row_experts(offsets, xs.shape[0]) if biased else None
    h1 = _glinear(xs, w1, b1, offsets, rows)
    h3 = _glinear(xs, w3, b3, offsets, rows) if gated else None
    kept = _kept(recompute, gated, activation)
    m, a = _engine(engine, h1, activation, gated, "forward").hidden_forward(
        activation, h1, h3, beta, keep_act="a" in kept, options=tuple(options)
    )
    ys = _glinear(m, w2, b2, offsets, rows)
    named = {"h1": h1, "h3": h3, "a": a, "m": m}
    return [ys, *(named[k] for k in kept)]


_forward_op = torch.library.custom_op("ffnlab::grouped_ffn_forward", mutates_args=())(
    _forward_impl
)


@_forward_op.register_fake
def _forward_fake(xs, offsets, w1, w2, w3, b1, b2, b3, activation, beta, recompute, engine,
                  options):  # fmt: skip
    n, hidden = xs.shape[0], w1.shape[1]
    kept = _kept(recompute, w3 is not None, activation)
    return [xs.new_empty(n, w2.shape[1]), *(xs.new_empty(n, hidden) for _ in kept)]


_GRAD_NAMES = ("xs", "w1", "w2", "w3", "b1", "b2", "b3")


def _segment_sum(t: Tensor, rows: Tensor, n_groups: int) -> Tensor:
    """``t [M, n]`` summed per segment -> ``[E, n]`` (a bias gradient)."""
    return t.new_zeros(n_groups, t.shape[1]).index_add_(0, rows, t)


def _backward_impl(
    grad: Tensor,
    xs: Tensor,
    offsets: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None,
    b1: Tensor | None,
    b3: Tensor | None,
    kept: list[Tensor],
    activation: str,
    beta: float,
    recompute: str,
    engine: str,
    options: list[float],
    needs: Sequence[bool],
) -> list[Tensor]:
    """The gradients for ``grad = dL/dys [M, out]`` of the inputs in ``_GRAD_NAMES`` whose
    ``needs`` entry is True, in that order. ``kept`` is what the forward returned."""
    need = dict(zip(_GRAD_NAMES, needs, strict=True))
    gated = w3 is not None
    n_groups = offsets.shape[0]
    rows = None
    if any(need[k] for k in ("b1", "b2", "b3")) or b1 is not None or b3 is not None:
        rows = row_experts(offsets, xs.shape[0])
    saved = dict(zip(_kept(recompute, gated, activation), kept, strict=True))
    if recompute == "full":
        saved["h1"] = _glinear(xs, w1, b1, offsets, rows)
        if gated:
            saved["h3"] = _glinear(xs, w3, b3, offsets, rows)
    h1, h3, a, m = (saved.get(k) for k in ("h1", "h3", "a", "m"))
    options = tuple(options)
    out = dict.fromkeys(_GRAD_NAMES)

    if any(need[k] for k in ("xs", "w1", "w3", "b1", "b3")):
        dm = grouped_mm(grad, w2, offsets)  # [M, hidden]: ours, the engine may overwrite it
        dh1, dh3, m, _ = _engine(engine, h1, activation, gated, "backward").hidden_backward(
            activation, dm, h1, h3, beta, a=a if gated else m, m=m,
            need_m=need["w2"], need_dbeta=False, dm_is_scratch=True, options=options,
        )  # fmt: skip
        del dm
    elif need["w2"] and m is None:
        m, _ = _engine(engine, h1, activation, gated, "forward").hidden_forward(
            activation, h1, h3, beta, options=options
        )
    if need["w2"]:
        out["w2"] = grouped_mm_weight(grad, m, offsets)
    if need["b2"]:
        out["b2"] = _segment_sum(grad, rows, n_groups)
    if need["xs"]:
        dx = grouped_mm(dh1, w1, offsets)
        out["xs"] = dx.add_(grouped_mm(dh3, w3, offsets)) if gated else dx
    if need["w1"]:
        out["w1"] = grouped_mm_weight(dh1, xs, offsets)
    if need["b1"]:
        out["b1"] = _segment_sum(dh1, rows, n_groups)
    if gated and need["w3"]:
        out["w3"] = grouped_mm_weight(dh3, xs, offsets)
    if gated and need["b3"]:
        out["b3"] = _segment_sum(dh3, rows, n_groups)
    return [out[k] for k, n in zip(_GRAD_NAMES, needs, strict=True) if n]


_backward_op = torch.library.custom_op("ffnlab::grouped_ffn_backward", mutates_args=())(
    _backward_impl
)


@_backward_op.register_fake
def _backward_fake(
    grad, xs, offsets, w1, w2, w3, b1, b3, kept, activation, beta, recompute, engine, options,
    needs
):  # fmt: skip
    e = w1.shape[0]
    like = (xs, w1, w2, w3, b1, grad.new_empty(e, w2.shape[1]), b3)
    return [torch.empty_like(t) for t, n in zip(like, needs, strict=True) if n]


def _save(ctx, inputs: tuple, kept) -> None:
    xs, offsets, w1, w2, w3, b1, b2, b3, activation, beta, recompute, engine, options = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(xs, offsets, w1, w2, w3, b1, b3, *kept)
    ctx.meta = (activation, beta, recompute, engine, options)


def _grads(ctx, grad_y, backward) -> tuple:
    """The 13 input gradients (None for offsets, the settings and what needs none)."""
    n = ctx.needs_input_grad
    needs = [bool(n[0]), *(bool(x) for x in n[2:8])]  # xs, w1, w2, w3, b1, b2, b3
    if grad_y is None or not any(needs):
        return (None,) * 13
    xs, offsets, w1, w2, w3, b1, b3, *kept = ctx.saved_tensors
    it = iter(backward(grad_y, xs, offsets, w1, w2, w3, b1, b3, kept, *ctx.meta, needs))
    g = [next(it) if k else None for k in needs]
    return (g[0], None, *g[1:], None, None, None, None, None)


def _setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(*output[1:])
    _save(ctx, inputs, output[1:])


def _backward(ctx, grads):
    # The custom op's gradients mirror its inputs as torch.library flattens them: a list of
    # floats is one input (one None), an empty list none (an empty list back).
    *out, _ = _grads(ctx, grads[0], torch.ops.ffnlab.grouped_ffn_backward)
    return (*out, None if ctx.meta[4] else [])


_forward_op.register_autograd(_backward, setup_context=_setup_context)


class _GroupedFFN(torch.autograd.Function):
    """The custom ops' forward and backward for eager calls (no custom-op wrapper cost, as
    :class:`ffnlab.ops.function._FusedFFN`)."""

    @staticmethod
    def forward(ctx, *inputs):
        ys, *kept = _forward_impl(*inputs)
        _save(ctx, inputs, kept)
        return ys

    @staticmethod
    def backward(ctx, grad_y):
        return _grads(ctx, grad_y, _backward_impl)


def grouped_feed_forward(
    xs: Tensor,
    offsets: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None = None,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    b3: Tensor | None = None,
    *,
    activation: str,
    beta: float = 1.0,
    recompute: str = "activation",
    engine: str = "auto",
    options: tuple[float, ...] = (),
) -> Tensor:
    """Each expert's FFN on its rows. ``xs [M, dim]`` sorted by expert, ``offsets [E]`` (int32
    cumulative segment ends, ``offsets[-1] == M``) -> ``ys [M, out]``.

    Shapes: ``w1, w3 [E, hidden, dim]``, ``w2 [E, out, hidden]``, ``b1, b3 [E, hidden]``,
    ``b2 [E, out]``; ``options``: the activation's option values in
    :attr:`~ffnlab.activations.Activation.options` order (``()``: its defaults). Equivalent
    PyTorch::

        start = 0
        for e, end in enumerate(offsets.tolist()):
            h1 = xs[start:end] @ w1[e].T + b1[e]
            m = act(h1) * (xs[start:end] @ w3[e].T + b3[e]) if w3 is not None else act(h1)
            ys[start:end] = m @ w2[e].T + b2[e]
            start = end
    """
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    check_choice("engine", engine, ("auto", *ENGINES))
    act = get_activation(activation)
    if not act.has_beta and float(beta) != 1.0:
        raise UsageError(f"beta applies only to swish, not to activation {activation!r}")
    e, hidden, dim = w1.shape
    if xs.dim() != 2 or xs.shape[1] != dim:
        raise UsageError(f"xs must be [M, {dim}], got {list(xs.shape)}")
    if offsets.shape != (e,):
        raise UsageError(f"offsets must be [{e}] (one end per expert), got {list(offsets.shape)}")
    if w2.dim() != 3 or w2.shape[0] != e or w2.shape[2] != hidden:
        raise UsageError(f"w2 must be [{e}, out, {hidden}], got {list(w2.shape)}")
    if w3 is not None and w3.shape != w1.shape:
        raise UsageError(f"w3 must have w1's shape {list(w1.shape)}, got {list(w3.shape)}")
    for name, b, n in (("b1", b1, hidden), ("b2", b2, w2.shape[1]), ("b3", b3, hidden)):
        if b is not None and b.shape != (e, n):
            raise UsageError(f"{name} must be [{e}, {n}], got {list(b.shape)}")
    if len(options) not in (0, len(act.options)):
        raise UsageError(f"activation {act.name!r} takes options {act.option_names}, "
                         f"got {len(options)} values")  # fmt: skip
    options = [float(o) for o in (options or act.kwargs().values())]
    if engine != "auto":
        select(engine, xs, hidden_dim=hidden, activation=act.name, gated=w3 is not None)
    args = (xs, offsets, w1, w2, w3, b1, b2, b3, act.name, float(beta), recompute, engine,
            options)
    if torch.compiler.is_compiling():
        return torch.ops.ffnlab.grouped_ffn_forward(*args)[0]
    return _GroupedFFN.apply(*args)
