"""The routed experts of a few tokens, one matrix-vector product per route: a decoding step's
mixture of experts on a CPU.

A decoding step routes one token to ``k`` experts. transformers' ``grouped_mm`` experts (its
default) and ffnlab's grouped op both sort the routes by expert, count them, gather the rows
and run grouped products over every expert: a dozen operations of fixed cost for ``k`` rows.
Running each route as ``F.linear`` on its expert's weight (a view) costs two products per route
and a few operations in all. Measured (idle 2-core Xeon, 2 threads, float32, torch 2.13,
transformers 5.25, 2026-12-07), one Qwen3-MoE block (dim 256, 16 experts of 256, top-4) on one
token: the block with ``grouped_mm`` 347 us; its own router's code followed by this loop
215 us (0.62x); the patched block (ffnlab's router, then this loop) 0.78x the block's time.

The loop reads the expert ids on the host (``tolist()``), which on a GPU would wait for the
device, so callers run it on CPU tensors only, and only for one token or a few routes
(:func:`routes_loop_runs`): each route reads its expert's weights, while the grouped products
read an expert's weights once for all its tokens. Same block, more tokens (loop / block):
1 token (4 routes) 0.82x, 2 tokens 0.96x, 4 tokens 1.16x, 8 tokens 1.59x.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .grouped import packed_halves
from .reference import middle

__all__ = ["ROUTES_LOOP_MAX", "loop_routes", "routes_loop_runs"]

#: Routes per call (tokens x top-k) up to which :func:`routes_loop_runs` says the loop runs
#: for any number of tokens (the module docstring's measurements: 8 routes of 2 tokens 0.96x,
#: 16 of 4 tokens 1.16x). One token's routes all read different experts, so the loop runs for
#: one token at any top-k.
ROUTES_LOOP_MAX = 8


def routes_loop_runs(x: Tensor, tokens: int, top_k: int) -> bool:
    """Whether :func:`loop_routes` is the faster way to run ``tokens x top_k`` routes of ``x``:
    a CPU tensor, no gradients wanted, one token or at most :data:`ROUTES_LOOP_MAX` routes, and
    no ``torch.compile`` tracing (the ids read on the host would break a full graph)."""
    return (
        (tokens == 1 or tokens * top_k <= ROUTES_LOOP_MAX)
        and not torch.is_grad_enabled()
        and x.is_cpu
        and not torch.compiler.is_compiling()
    )


def loop_routes(
    x: Tensor,
    expert_idx: Tensor,
    gates: Tensor,
    up: Tensor,
    down: Tensor,
    b_up: Tensor | None = None,
    b_down: Tensor | None = None,
    *,
    activation: str | Callable[[Tensor], Tensor],
    options: tuple[float, ...] = (),
    gated: bool = True,
    interleaved: bool = False,
    gate_first: bool = True,
    route_norm: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The routed experts' output for ``x [T, dim]`` -> ``[T, dim]``, route by route.

    ``expert_idx [T, k]`` names each token's experts (ids from ``E`` on, other ranks' experts
    under expert parallelism, are skipped), ``gates [T, k]`` their weights; ``up [E, U, dim]``
    the stored first projection in ``F.linear``'s layout (views fine: ``U = 2I`` with the gate
    and up halves packed, concatenated or ``interleaved``, gate half first or not; ``U = I``
    when not ``gated``), ``down [E, dim, I]``, biases ``[E, U]`` and ``[E, dim]``;
    ``route_norm``: a norm applied to each route's output rows before the gates. Equivalent
    PyTorch::

        for t, j in routes:
            e = expert_idx[t, j]
            h1, h3 = halves(F.linear(x[t], up[e], b_up[e]))       # h1 = all, h3 = None if not gated
            ys[t, j] = F.linear(hidden_activation(activation, h1, h3, 1.0, options), down[e], b_down[e])
        y = (route_norm(ys) * gates[..., None]).sum(1)

    A route of an id outside ``[0, E)`` contributes zero.
    """
    n_experts = up.shape[0]
    ids = expert_idx.tolist()
    rows, keep = [], []
    for t, row in enumerate(ids):
        xt = x[t]
        for j, e in enumerate(row):
            if 0 <= e < n_experts:
                rows.append(F.linear(xt, up[e], None if b_up is None else b_up[e]))
                keep.append((t, j, e))
    out_dim = down.shape[1]
    if not rows:
        return x.new_zeros(x.shape[0], out_dim)
    h = torch.stack(rows)  # [R, U]
    h1, h3 = packed_halves(h, interleaved, gate_first, dim=-1) if gated else (h, None)
    m = middle(activation, h1, h3, options)
    ys = torch.stack([F.linear(m[r], down[e], None if b_down is None else b_down[e])
                      for r, (_, _, e) in enumerate(keep)])  # fmt: skip
    if route_norm is not None:
        ys = route_norm(ys)
    if len(keep) == len(ids) * expert_idx.shape[1]:  # every route: [T, k, dim] as transformers
        y = ys.view(x.shape[0], -1, out_dim) * gates.unsqueeze(-1)
        return y.sum(1)
    out = x.new_zeros(x.shape[0], out_dim, dtype=torch.result_type(ys, gates))
    for r, (t, j, _) in enumerate(keep):
        out[t] += ys[r] * gates[t, j]
    return out
