"""The fused FFN: one custom autograd op with an explicit backward and three recompute modes.

``fused_feed_forward(x, w1, w2, w3, b1, b2, b3, activation=..., beta=..., recompute=...)``
computes the same thing as :func:`ffnlab.ops.reference.ffn_reference`::

    h1 = F.linear(x, w1, b1)                      # [..., hidden]   gate / activation branch
    h3 = F.linear(x, w3, b3)                      # [..., hidden]   value branch (gated only)
    m = act(h1) * h3          (gated)             # [..., hidden]
    m = act(h1)               (plain)
    y = F.linear(m, w2, b2)                       # [..., dim]

as two ``torch.library`` custom ops, ``ffnlab::ffn_forward`` and ``ffnlab::ffn_backward``,
joined by ``register_autograd``. Both have fake (meta) implementations, so ``torch.compile``
traces the op with ``fullgraph=True``; ``torch.utils.checkpoint`` works in both its modes.
Eager calls take a plain ``autograd.Function`` over the same two implementations, which skips
the custom-op wrapper's per-call cost (see :class:`_FusedFFN`).

What the backward keeps (``recompute``), for ``x [N, dim]`` and ``hidden`` units:

==============  =======================  ==============================================
mode            saved for backward        recomputed in backward
==============  =======================  ==============================================
``none``        x, h1, h3, act(h1), m     nothing (what eager autograd keeps)
``activation``  x, h1, h3                 act(h1), act'(h1) and m (W2's gradient needs m)
``full``        x                         h1 and h3 (two matmuls) and the above
==============  =======================  ==============================================

(plain variants: ``none`` keeps x, h1, act(h1); ``activation`` keeps x, h1; plain relu2 and
leaky_relu2 in float32/64 under ``none`` keep x and act(h1) only, plus a bool sign for leaky:
:mod:`.square_output`.) What each mode saves and costs, measured, is in docs/benchmarks.md.

Half inputs (float16, bfloat16): the matmuls run in the input dtype, the elementwise maths
in float32, each elementwise result rounded once.

The elementwise middle runs on one of the engines of :mod:`ffnlab.ops.engines` (``aten``,
``inductor``, ``triton``), all with the same contract. ``engine="auto"`` lets the engines table
choose, per direction, from the hidden tensor's device, dtype and size and the activation;
naming an engine runs that one in both directions (``NotImplementedError`` with the reasons if
it cannot run here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..activations import compute_dtype, get_activation
from ..errors import UsageError, check_choice
from . import square_output
from .engines import ENGINES, Engine, select
from .function_callable import callable_feed_forward
from .reference import ActivationArg

__all__ = ["fused_feed_forward", "RECOMPUTE_MODES"]

RECOMPUTE_MODES = ("none", "activation", "full")


def _engine(engine: str, h1: Tensor, activation: str, gated: bool, direction: str) -> Engine:
    """The engine for one direction on ``h1 [N, hidden]``: a named one as it is (checked by
    :func:`fused_feed_forward`), else the table's choice."""
    if engine != "auto":
        return ENGINES[engine]
    return select("auto", h1, hidden_dim=h1.shape[-1], activation=activation, gated=gated,
                  direction=direction)  # fmt: skip


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``F.linear(x, w, b)`` for 2-D ``x``; ``addmm`` folds the bias into the matmul."""
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


def _beta_arg(beta: Tensor | None, beta_value: float) -> float | Tensor:
    return beta if beta is not None else beta_value


# --- forward -----------------------------------------------------------------------------
# Both ops return lists whose length depends on the recompute mode and on which gradients are
# needed: a custom op's outputs may not alias each other, and empty placeholder tensors would
# (they share the null storage).


def _kept(recompute: str, gated: bool, activation: str, dtype: torch.dtype | None = None,
          engine: str = "auto") -> tuple[str, ...]:  # fmt: skip
    """Names of the [N, hidden] tensors the forward returns for backward, in order. Plain
    relu2 / leaky_relu2 in float32/64 keep their output instead of h1 (:mod:`.square_output`),
    except with the Triton kernels named (they recompute in registers)."""
    if engine != "triton" and dtype is not None:
        trick = square_output.keeps_output(activation, gated, dtype, recompute)
        if trick:
            return trick
    if recompute == "full":
        return ()
    if recompute == "activation":
        return ("h1", "h3") if gated else ("h1",)
    if not gated:
        return ("h1", "m")
    # The identity's act(h1) is h1 itself: nothing more to keep (bilinear).
    return ("h1", "h3", "m") if activation == "identity" else ("h1", "h3", "a", "m")


def _forward_impl(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None,
    b1: Tensor | None,
    b2: Tensor | None,
    b3: Tensor | None,
    beta: Tensor | None,
    activation: str,
    beta_value: float,
    recompute: str,
    engine: str,
    options: list[float],
) -> list[Tensor]:
    """``x [N, dim]`` -> ``[y [N, out], *kept]`` with ``kept`` the ``[N, hidden]`` tensors that
    backward keeps under ``recompute``, named by :func:`_kept`."""
    gated = w3 is not None
    h1 = _linear(x, w1, b1)
    h3 = _linear(x, w3, b3) if gated else None
    kept = _kept(recompute, gated, activation, x.dtype, engine)
    m, a = _engine(engine, h1, activation, gated, "forward").hidden_forward(
        activation, h1, h3, _beta_arg(beta, beta_value), keep_act="a" in kept,
        options=tuple(options),
    )
    y = _linear(m, w2, b2)
    named = {"h1": h1, "h3": h3, "a": a, "m": m}
    if "pos" in kept:
        named["pos"] = h1 > 0
    return [y, *(named[k] for k in kept)]


# The custom ops are made from the plain impls (schema from their annotations); the impls stay
# callable directly, which the eager autograd.Function below does.
_ffn_forward = torch.library.custom_op("ffnlab::ffn_forward", mutates_args=())(_forward_impl)


@_ffn_forward.register_fake
def _ffn_forward_fake(x, w1, w2, w3, b1, b2, b3, beta, activation, beta_value, recompute, engine,
                      options):  # fmt: skip
    n, hidden = x.shape[0], w1.shape[0]
    kept = _kept(recompute, w3 is not None, activation, x.dtype, engine)
    dt = {"pos": torch.bool}
    return [x.new_empty(n, w2.shape[0]),
            *(x.new_empty(n, hidden, dtype=dt.get(k, x.dtype)) for k in kept)]  # fmt: skip


# --- backward ----------------------------------------------------------------------------

_GRAD_NAMES = ("x", "w1", "w2", "w3", "b1", "b2", "b3", "beta")


def _backward_impl(
    grad: Tensor,
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None,
    b1: Tensor | None,
    b3: Tensor | None,
    beta: Tensor | None,
    kept: list[Tensor],
    activation: str,
    beta_value: float,
    recompute: str,
    engine: str,
    options: list[float],
    needs: Sequence[bool],
) -> list[Tensor]:
    """The gradients for ``grad = dL/dy [N, out]`` of the inputs named in ``_GRAD_NAMES``
    whose ``needs`` entry is True, in that order. ``kept`` is what the forward returned."""
    need = dict(zip(_GRAD_NAMES, needs, strict=True))
    gated = w3 is not None
    saved = dict(zip(_kept(recompute, gated, activation, x.dtype, engine), kept, strict=True))
    if recompute == "full":
        saved["h1"] = _linear(x, w1, b1)
        if gated:
            saved["h3"] = _linear(x, w3, b3)
    h1, h3, a, m = (saved.get(k) for k in ("h1", "h3", "a", "m"))
    beta_arg = _beta_arg(beta, beta_value)
    options = tuple(options)
    out = dict.fromkeys(_GRAD_NAMES)

    if h1 is None and m is not None:  # relu2 / leaky_relu2 kept their output: no h1 needed
        if any(need[k] for k in ("x", "w1", "b1")):
            slope = options[0] if options else 0.5
            dh1 = square_output.backward_from_output(activation, torch.mm(grad, w2), m,
                                                     saved.get("pos"), slope)  # fmt: skip
    elif any(need[k] for k in ("x", "w1", "w3", "b1", "b3", "beta")):
        dm = torch.mm(grad, w2)  # [N, hidden]: ours, so the engine may overwrite it
        # For plain variants the kept m is act(h1), which the sigmoid/tanh derivatives reuse.
        dh1, dh3, m, dbeta = _engine(engine, h1, activation, gated, "backward").hidden_backward(
            activation, dm, h1, h3, beta_arg, a=a if gated else m, m=m,
            need_m=need["w2"], need_dbeta=need["beta"], dm_is_scratch=True, options=options,
        )  # fmt: skip
        del dm
    elif need["w2"] and m is None:
        # m alone is a forward computation: the forward direction's engine
        m, _ = _engine(engine, h1, activation, gated, "forward").hidden_forward(
            activation, h1, h3, beta_arg, options=options
        )
    if need["w2"]:
        out["w2"] = torch.mm(grad.t(), m)
    if need["b2"]:
        out["b2"] = grad.sum(0)
    if need["x"]:
        dx = torch.mm(dh1, w1)
        out["x"] = dx.addmm_(dh3, w3) if gated else dx
    if need["w1"]:
        out["w1"] = torch.mm(dh1.t(), x)
    if need["b1"]:
        out["b1"] = dh1.sum(0)
    if gated and need["w3"]:
        out["w3"] = torch.mm(dh3.t(), x)
    if gated and need["b3"]:
        out["b3"] = dh3.sum(0)
    if need["beta"]:
        db = dbeta if beta.dim() == 1 else dbeta.sum()
        out["beta"] = db.to(beta.dtype).reshape(beta.shape)
    return [out[k] for k, n in zip(_GRAD_NAMES, needs, strict=True) if n]


_ffn_backward = torch.library.custom_op("ffnlab::ffn_backward", mutates_args=())(_backward_impl)


@_ffn_backward.register_fake
def _ffn_backward_fake(
    grad, x, w1, w2, w3, b1, b3, beta, kept, activation, beta_value, recompute, engine, options,
    needs
):  # fmt: skip
    like = (x, w1, w2, w3, b1, grad.new_empty(w2.shape[0]), b3, beta)
    return [torch.empty_like(t) for t, n in zip(like, needs, strict=True) if n]


def _save(ctx, inputs: tuple, kept) -> None:
    """What both autograd paths keep for backward, from the forward's 13 inputs."""
    x, w1, w2, w3, b1, b2, b3, beta, activation, beta_value, recompute, engine, options = inputs
    ctx.set_materialize_grads(False)
    # Parameters are saved too (the model keeps them anyway; saved_tensor_bytes leaves them
    # out); the activations saved are exactly the mode's list in the module docstring.
    ctx.save_for_backward(x, w1, w2, w3, b1, b3, beta, *kept)
    ctx.meta = (activation, beta_value, recompute, engine, options)


def _grads(ctx, grad_y, backward) -> tuple:
    """The 13 input gradients from ``backward`` (the custom op or the impl), None where an
    input is None or needs no gradient (those cost nothing)."""
    needs = [bool(n) for n in ctx.needs_input_grad[:8]]
    if grad_y is None or not any(needs):
        return (None,) * 13
    x, w1, w2, w3, b1, b3, beta, *kept = ctx.saved_tensors
    it = iter(backward(grad_y, x, w1, w2, w3, b1, b3, beta, kept, *ctx.meta, needs))
    return (*(next(it) if n else None for n in needs), None, None, None, None, None)


def _setup_context(ctx, inputs, output) -> None:
    ctx.mark_non_differentiable(*output[1:])
    _save(ctx, inputs, output[1:])


def _backward(ctx, grads):
    # The custom op's gradients mirror its inputs as torch.library flattens them: a list of
    # floats is one input (one None), an empty list none (an empty list back).
    *out, _ = _grads(ctx, grads[0], torch.ops.ffnlab.ffn_backward)
    return (*out, None if ctx.meta[4] else [])


_ffn_forward.register_autograd(_backward, setup_context=_setup_context)


class _FusedFFN(torch.autograd.Function):
    """The same forward and backward as the custom ops, for eager calls.

    A ``torch.library`` custom op pays Python-side argument handling (defaults, pytree,
    redispatch) on every call, which at small sizes costs more than the FFN itself (measured
    in docs/benchmarks.md). Eager calls therefore go through this plain ``autograd.Function``
    (same impl functions, same saved tensors); under ``torch.compile`` the custom ops are
    used, which the compiler can trace.
    """

    @staticmethod
    def forward(ctx, *inputs):
        y, *kept = _forward_impl(*inputs)
        _save(ctx, inputs, kept)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _grads(ctx, grad_y, _backward_impl)


# --- public entry point ------------------------------------------------------------------


def _check(x, w1, w2, w3, b1, b2, b3, beta, n_params: int = 0) -> None:
    hidden, dim = w1.shape
    if w2.shape[1] != hidden:
        raise UsageError(f"w2 must be [out, {hidden}], got {list(w2.shape)}")
    if w3 is not None and w3.shape != w1.shape:
        raise UsageError(f"w3 must have w1's shape {list(w1.shape)}, got {list(w3.shape)}")
    if x.shape[-1] != dim:
        raise UsageError(f"input must be [..., {dim}], got {list(x.shape)}")
    for name, b, n in (("b1", b1, hidden), ("b2", b2, w2.shape[0]), ("b3", b3, hidden)):
        if b is not None and b.shape != (n,):
            raise UsageError(f"{name} must be [{n}], got {list(b.shape)}")
    if b3 is not None and w3 is None:
        raise UsageError("b3 given without w3")
    if n_params:
        if isinstance(beta, Tensor) and beta.shape != (n_params,):
            raise UsageError(
                f"the activation's packed parameters must be [{n_params}], got {list(beta.shape)}"
            )
    elif isinstance(beta, Tensor) and beta.shape not in ((), (hidden,)):
        raise UsageError(f"beta must be a scalar or [{hidden}], got {list(beta.shape)}")


def fused_feed_forward(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None = None,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    b3: Tensor | None = None,
    *,
    activation: ActivationArg,
    beta: float | Tensor = 1.0,
    recompute: str = "activation",
    engine: str = "auto",
    options: tuple[float, ...] = (),
) -> Tensor:
    """The FFN through the fused op. ``x [..., dim]`` -> ``[..., out]`` (``out = w2.shape[0]``).

    Shapes: ``w1, w3 [hidden, dim]``, ``w2 [out, hidden]``, ``b1, b3 [hidden]``, ``b2 [out]``,
    ``beta`` a float or a tensor ``[]`` / ``[hidden]`` (its gradient is summed over every
    leading dim of ``x``), or for an activation with packed parameters (xielu) those, ``[2]``.
    ``options``: the activation's option values (:func:`ffnlab.activations.bind_options`).
    ``engine``: ``"auto"`` (the engines table chooses per direction) or one of
    :data:`ffnlab.ops.engines.ENGINES` (``NotImplementedError`` with the reasons if it cannot
    run here). A callable ``activation`` runs :func:`ffnlab.ops.function_callable.callable_feed_forward`
    (no engine: the callable is recomputed under autograd in backward). Equivalent PyTorch::

        h1 = F.linear(x, w1, b1)
        m = act(h1) * F.linear(x, w3, b3) if w3 is not None else act(h1)
        y = F.linear(m, w2, b2)     # = ffn_reference(x, w1, w2, w3, b1, b2, b3, ...)
    """
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    check_choice("engine", engine, ("auto", *ENGINES))
    if callable(activation):
        if engine not in ("auto", "aten"):
            raise UsageError(
                f"engine={engine!r} runs only the registry's activations; a callable activation "
                "runs with engine 'auto' (it is recomputed under autograd in backward)"
            )
        _check(x, w1, w2, w3, b1, b2, b3, None)
        return callable_feed_forward(x, w1, w2, w3, b1, b2, b3, activation=activation,
                                     recompute=recompute)  # fmt: skip
    act = get_activation(activation)
    if not (act.has_beta or act.n_params) and (isinstance(beta, Tensor) or float(beta) != 1.0):
        raise UsageError(f"beta applies only to swish, not to activation {activation!r}")
    if act.n_params and not isinstance(beta, Tensor):
        beta = torch.tensor(act.param_init, dtype=compute_dtype(x.dtype), device=x.device)
    if len(options) not in (0, len(act.options)):
        raise UsageError(f"activation {act.name!r} takes options {act.option_names}, "
                         f"got {len(options)} values")  # fmt: skip
    options = [float(o) for o in (options or act.kwargs().values())]
    _check(x, w1, w2, w3, b1, b2, b3, beta, act.n_params)
    if engine != "auto":  # a named engine must be able to run: say why not before any work
        select(engine, x, hidden_dim=w1.shape[0], activation=act.name, gated=w3 is not None)
    if torch.is_autocast_enabled(x.device.type):
        # What F.linear does under autocast: every matmul operand in the autocast dtype.
        dt = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, w3, b1, b2, b3 = (None if t is None else t.to(dt) for t in (x, w1, w2, w3, b1, b2, b3))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    beta_t = beta if isinstance(beta, Tensor) else None
    beta_value = 1.0 if beta_t is not None else float(beta)
    args = (x2, w1, w2, w3, b1, b2, b3, beta_t, act.name, beta_value, recompute, engine, options)
    if torch.compiler.is_compiling():
        y = torch.ops.ffnlab.ffn_forward(*args)[0]
    else:
        y = _FusedFFN.apply(*args)
    return y.reshape(*lead, w2.shape[0])
