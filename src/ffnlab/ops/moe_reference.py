"""The reference mixture of experts: a loop over the experts, plain torch ops (the oracle).

The fused path (:mod:`ffnlab.ops.grouped`, :mod:`ffnlab.ops.grouped_function`) and expert
parallelism are tested against :func:`experts_reference`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .expert_norm import OutputNorm
from .reference import ffn_reference

__all__ = ["experts_reference"]


def experts_reference(
    x: Tensor,
    expert_idx: Tensor,
    gates: Tensor,
    w1: Tensor,
    w2: Tensor,
    w3: Tensor | None = None,
    b1: Tensor | None = None,
    b2: Tensor | None = None,
    b3: Tensor | None = None,
    *,
    activation: str,
    beta: float = 1.0,
    gate_input: bool = False,
    options: tuple = (),
    out_norm: OutputNorm | None = None,
) -> Tensor:
    """The routed experts' output for ``x [T, dim]``: ``[T, out]``.

    ``expert_idx [T, k]`` (int64) names each token's experts, ``gates [T, k]`` their weights;
    ``w1, w3 [E, hidden, dim]``, ``w2 [E, out, hidden]``, ``b1, b3 [E, hidden]``, ``b2 [E, out]``;
    ``options``: the activation's option values (GPT-OSS's clamped SwiGLU alpha and limit);
    ``out_norm``: each expert's RMSNorm on its output, before the gates (Ergo; ``N_e`` below,
    the identity without it).
    ``y_t = Σ_j gates[t, j] · N_e(FFN_e(x_t))`` with ``e = expert_idx[t, j]``, or with
    ``gate_input`` (Llama 4) ``y_t = Σ_j N_e(FFN_e(gates[t, j] · x_t))``. Equivalent PyTorch
    (this is it)::

        for e in range(E):
            tok, slot = torch.where(expert_idx == e)
            y[tok] += gates[tok, slot, None] * N_e(FFN_e(x[tok]))
    """
    out = x.new_zeros(x.shape[0], w2.shape[1])
    for e in range(w1.shape[0]):
        # an expert with no token still runs (on zero rows): its gradients are zeros, not
        # None, as the fused path's, and an empty batch's output stays in the graph
        tok, slot = torch.where(expert_idx == e)
        g = gates[tok, slot].unsqueeze(1).to(x.dtype)
        xe = x[tok] * g if gate_input else x[tok]
        ye = ffn_reference(
            xe, w1[e], w2[e], None if w3 is None else w3[e],
            None if b1 is None else b1[e], None if b2 is None else b2[e],
            None if b3 is None else b3[e], activation=activation, beta=beta,
            options=options,
        )  # fmt: skip
        if out_norm is not None:
            ye = out_norm(ye, e)
        out = out.index_add(0, tok, ye if gate_input else ye * g)
    return out
