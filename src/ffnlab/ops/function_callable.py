"""The fused FFN for an activation given as a callable: recomputed under autograd in backward.

``callable_feed_forward(x, w1, w2, w3, b1, b2, b3, activation=act, recompute=...)`` computes
what :func:`ffnlab.ops.reference.ffn_reference` computes with a callable activation::

    h1 = F.linear(x, w1, b1)                      # [..., hidden]
    m = act(h1) * F.linear(x, w3, b3)             # gated; plain: m = act(h1)
    y = F.linear(m, w2, b2)                       # [..., out]

``act`` is any function or ``nn.Module`` mapping ``[..., hidden]`` to ``[..., hidden]`` (a
transformers activation module, a user's own), so it has no analytic derivative here: the
forward runs it without building a graph, and the backward re-runs it on the saved
pre-activation under ``torch.enable_grad()`` and takes ``torch.autograd.grad`` of it, for
``h1`` and for every parameter of ``act`` that requires a gradient (e.g. xIELU's
``alpha_p`` / ``alpha_n``), which are inputs of the op so that autograd accumulates them.

What the backward keeps (``recompute``), for ``x [N, dim]``:

==============  ======================  =============================================
mode            saved for backward       recomputed in backward
==============  ======================  =============================================
``none``        x, h1, h3, m             act(h1) and its graph (m need not be)
``activation``  x, h1, h3                act(h1), its graph and m
``full``        x                        h1, h3 (two matmuls) and the above
==============  ======================  =============================================

(plain variants: no h3.) Compared with eager autograd, which keeps whatever the callable's
own operations save (for a composite like xIELU several ``[N, hidden]`` tensors), this keeps
at most the listed ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["callable_feed_forward"]


def _linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())


class _CallableFFN(torch.autograd.Function):
    """Inputs: ``x, w1, w2, w3, b1, b2, b3, act, recompute, *act_params``."""

    @staticmethod
    def forward(ctx, x, w1, w2, w3, b1, b2, b3, act, recompute, *act_params):
        h1 = _linear(x, w1, b1)
        h3 = _linear(x, w3, b3) if w3 is not None else None
        a = act(h1)
        m = a * h3 if h3 is not None else a
        y = _linear(m, w2, b2)
        kept = {"none": (h1, h3, m), "activation": (h1, h3, None), "full": (None, None, None)}
        ctx.save_for_backward(x, w1, w2, w3, b1, b3, *kept[recompute], *act_params)
        ctx.act, ctx.recompute, ctx.n_params = act, recompute, len(act_params)
        ctx.set_materialize_grads(False)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, w1, w2, w3, b1, b3, h1, h3, m, *act_params = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if grad is None:
            return (None,) * (9 + ctx.n_params)
        gated = w3 is not None
        if ctx.recompute == "full":
            h1 = _linear(x, w1, b1)
            h3 = _linear(x, w3, b3) if gated else None
        params = [p for p, n in zip(act_params, needs[9:], strict=True) if n]
        dm = torch.mm(grad, w2)
        with torch.enable_grad():
            h1g = h1.detach().requires_grad_()
            a = ctx.act(h1g)
            grads = torch.autograd.grad(a, [h1g, *params], dm * h3 if gated else dm,
                                        allow_unused=True)  # fmt: skip
        dh1, *dparams = grads
        a = a.detach()
        dh3 = dm * a if gated else None
        if m is None and needs[2]:
            m = a * h3 if gated else a
        if dh1 is None:  # the callable ignored its input (a constant): no gradient through it
            dh1 = torch.zeros_like(h1)
        out = [None] * 9
        if needs[0]:
            dx = torch.mm(dh1, w1)
            out[0] = dx.addmm_(dh3, w3) if gated else dx
        if needs[1]:
            out[1] = torch.mm(dh1.t(), x)
        if needs[2]:
            out[2] = torch.mm(grad.t(), m)
        if gated and needs[3]:
            out[3] = torch.mm(dh3.t(), x)
        if needs[4]:
            out[4] = dh1.sum(0)
        if needs[5]:
            out[5] = grad.sum(0)
        if gated and needs[6]:
            out[6] = dh3.sum(0)
        it = iter(dparams)
        return (*out, *(next(it) if n else None for n in needs[9:]))


def callable_feed_forward(
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None = None,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    b3: Tensor | None = None,
    *,
    activation: Callable[[Tensor], Tensor],
    recompute: str = "activation",
) -> Tensor:
    """The FFN with a callable ``activation``: ``x [..., dim]`` -> ``[..., out]``. Shapes as
    :func:`ffnlab.ops.function.fused_feed_forward`. Equivalent PyTorch::

        h1 = F.linear(x, w1, b1)
        m = activation(h1) * F.linear(x, w3, b3) if w3 is not None else activation(h1)
        y = F.linear(m, w2, b2)
    """
    if not callable(activation):
        raise TypeError(f"activation must be callable, got {type(activation).__name__}")
    params = (
        tuple(p for p in activation.parameters() if p.requires_grad)
        if isinstance(activation, nn.Module)
        else ()
    )
    if torch.is_autocast_enabled(x.device.type):
        dt = torch.get_autocast_dtype(x.device.type)
        x, w1, w2, w3, b1, b2, b3 = (None if t is None else t.to(dt) for t in (x, w1, w2, w3, b1, b2, b3))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    # The forward runs the callable under no_grad (autograd.Function.forward does): a module
    # with parameters builds no graph of its own, its gradient comes from backward's re-run.
    y = _CallableFFN.apply(x2, w1, w2, w3, b1, b2, b3, activation, recompute, *params)
    return y.reshape(*lead, w2.shape[0])
