"""The routes loop against the experts reference (float64 and per dtype), in every layout it
takes: packed gate/up halves concatenated or interleaved, either half first, plain experts,
biases, other ranks' expert ids, a per-route norm."""

from __future__ import annotations

import pytest
import torch

from ffnlab.ops.moe_reference import experts_reference
from ffnlab.ops.routes_loop import ROUTES_LOOP_MAX, loop_routes, routes_loop_runs

E, DIM, HIDDEN = 5, 12, 7
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}


def _case(dtype, tokens: int, k: int, *, gated: bool, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    w1, w3, w2 = r(E, HIDDEN, DIM), r(E, HIDDEN, DIM), r(E, DIM, HIDDEN)
    b1, b3, b2 = (r(E, HIDDEN), r(E, HIDDEN), r(E, DIM)) if bias else (None, None, None)
    x = r(tokens, 2 * DIM)[:, ::2]  # not contiguous
    idx = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(tokens)])
    gates = torch.rand(tokens, k, generator=g, dtype=torch.float64).to(dtype)
    return x, idx, gates, (w1, w2, w3 if gated else None, b1, b2, b3 if gated else None)


def _packed(w1, w3, interleaved: bool, gate_first: bool):
    first, second = (w1, w3) if gate_first else (w3, w1)
    if interleaved:
        return torch.stack([first, second], dim=2).flatten(1, 2)  # rows g0 u0 g1 u1 ...
    return torch.cat([first, second], dim=1)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("layout", [(False, True), (False, False), (True, True), (True, False)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tokens,k", [(1, 1), (1, 4), (3, 2), (2, 5)])
def test_the_loop_equals_the_experts_reference(dtype, layout, bias, tokens, k):
    interleaved, gate_first = layout
    x, idx, gates, (w1, w2, w3, b1, b2, b3) = _case(dtype, tokens, k, gated=True, bias=bias)
    up = _packed(w1, w3, interleaved, gate_first)
    b_up = None if not bias else _packed(b1[..., None], b3[..., None], interleaved, gate_first)[..., 0]
    got = loop_routes(x, idx, gates, up, w2, b_up, b2, activation="swish",
                      interleaved=interleaved, gate_first=gate_first)  # fmt: skip
    want = experts_reference(x, idx, gates, w1, w2, w3, b1, b2, b3, activation="swish")
    assert got.shape == (tokens, DIM)
    _close(got, want, TOL[dtype])


def _close(got, want, tol):
    """Within ``tol`` of the output's scale: the loop sums each token's routes in another
    order than the reference (per route, not per expert), so single elements that cancel differ
    by more than ``tol`` relative to themselves in low precision."""
    scale = want.abs().max().item()
    torch.testing.assert_close(got.to(want.dtype), want, rtol=0, atol=tol * max(scale, 1.0))


def test_plain_experts_options_and_a_transposed_view():
    x, idx, gates, (w1, w2, _, _, _, _) = _case(torch.float64, 2, 3, gated=False, bias=False)
    stored = w1.transpose(1, 2).contiguous()  # [E, dim, I] as GPT-OSS-style layouts store it
    got = loop_routes(x, idx, gates, stored.transpose(1, 2), w2, activation="leaky_relu",
                      options=(0.2,), gated=False)  # fmt: skip
    want = experts_reference(x, idx, gates, w1, w2, activation="leaky_relu", options=(0.2,))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_other_ranks_ids_are_skipped_and_a_route_norm_applies_before_the_gates():
    x, idx, gates, (w1, w2, w3, _, _, _) = _case(torch.float64, 3, 2, gated=True, bias=False)
    up = torch.cat([w1, w3], dim=1)
    far = idx.clone()
    far[0, 1] = E + 2  # another rank's expert: contributes zero
    got = loop_routes(x, far, gates, up, w2, activation="swish")
    kept_gates = gates.clone()
    kept_gates[0, 1] = 0.0
    want = experts_reference(x, idx, kept_gates, w1, w2, w3, activation="swish")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got = loop_routes(x, idx, gates, up, w2, activation="swish", route_norm=lambda y: 3 * y)
    want = experts_reference(x, idx, gates, w1, w2, w3, activation="swish")
    torch.testing.assert_close(got, 3 * want, rtol=1e-12, atol=1e-12)
    nothing = torch.full_like(idx, E)
    assert torch.equal(loop_routes(x, nothing, gates, up, w2, activation="swish"),
                       torch.zeros(3, DIM, dtype=torch.float64))  # fmt: skip


def test_extreme_inputs_give_what_the_reference_gives():
    x, idx, gates, (w1, w2, w3, _, _, _) = _case(torch.float32, 2, 2, gated=True, bias=False)
    for big in (1e18, -1e18):
        xb = x * big
        got = loop_routes(xb, idx, gates, torch.cat([w1, w3], dim=1), w2, activation="swish")
        want = experts_reference(xb, idx, gates, w1, w2, w3, activation="swish")
        assert torch.isfinite(want).all()
        _close(got, want, 1e-5)


def test_the_loop_runs_for_one_token_or_a_few_routes_on_a_cpu_without_gradients():
    x = torch.zeros(2, 4)
    with torch.no_grad():
        assert routes_loop_runs(x, 1, 64) and routes_loop_runs(x, 2, ROUTES_LOOP_MAX // 2)
        assert not routes_loop_runs(x, 2, ROUTES_LOOP_MAX // 2 + 1)
        assert not routes_loop_runs(x.to("meta"), 1, 1)
    assert not routes_loop_runs(x, 1, 1)  # gradients wanted


def test_a_compiled_graph_never_takes_the_loop():
    seen = []

    def f(x):
        seen.append(routes_loop_runs(x, 1, 2))
        return x + 1

    with torch.no_grad():
        torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(3))
    assert seen == [False]
