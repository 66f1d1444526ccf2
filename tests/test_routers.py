"""Routers (ffnlab.routers) against hand computations."""

from __future__ import annotations

import pytest
import torch

from ffnlab.errors import UsageError
from ffnlab.routers import ROUTERS, get_router


def _router(name, e=6, k=2, dim=5, **kw):
    torch.manual_seed(0)
    return get_router(name)(dim, e, k, dtype=torch.float64, **kw)


def _x(t=7, dim=5):
    torch.manual_seed(1)
    return torch.randn(t, dim, dtype=torch.float64)


@pytest.mark.parametrize("norm", [True, False])
def test_softmax_router(norm):
    r, x = _router("softmax", norm_topk=norm, routed_scaling=1.5), _x()
    out = r(x)
    p = torch.softmax(x @ r.weight.T, -1)
    top = p.topk(2, -1)
    want = top.values / top.values.sum(-1, keepdim=True) if norm else top.values
    assert torch.equal(out.expert_idx, top.indices)
    torch.testing.assert_close(out.gates, want * 1.5)
    torch.testing.assert_close(out.probs, p)
    assert not out.gate_input and r.bias is None


def test_sigmoid_router_bias_selects_but_does_not_weigh():
    r, x = _router("sigmoid", norm_topk=False), _x()
    with torch.no_grad():
        r.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0, 0.0, 0.0]))  # expert 3 always chosen
    out = r(x)
    s = torch.sigmoid(x @ r.weight.T)
    assert (out.expert_idx == 3).any(-1).all()
    torch.testing.assert_close(out.gates, s.gather(1, out.expert_idx))  # no bias in the gates
    torch.testing.assert_close(out.probs, s / s.sum(-1, keepdim=True))
    assert "router.bias" not in dict(r.named_parameters())
    assert list(r.state_dict()) == ["weight", "bias"]


def test_sigmoid_router_groups():
    r, x = _router("sigmoid", e=6, k=2, n_group=3, topk_group=1), _x(20)
    out = r(x)
    s = torch.sigmoid(x @ r.weight.T)
    group_score = s.reshape(20, 3, 2).sum(-1)  # groups of 2: the sum of both
    best = group_score.argmax(-1)
    assert torch.equal(out.expert_idx.sort(-1).values, torch.stack([best * 2, best * 2 + 1], -1))
    g = s.gather(1, out.expert_idx)
    torch.testing.assert_close(out.gates, g / g.sum(-1, keepdim=True))


def test_sigmoid_input_router():
    r, x = _router("sigmoid_input", k=1), _x()
    out = r(x)
    logits = x @ r.weight.T
    assert torch.equal(out.expert_idx[:, 0], logits.argmax(-1))
    torch.testing.assert_close(out.gates[:, 0], torch.sigmoid(logits.max(-1).values))
    assert out.gate_input
    with pytest.raises(UsageError, match="norm_topk=True does not apply"):
        _router("sigmoid_input", norm_topk=True)
    with pytest.raises(UsageError, match="routed_scaling"):
        _router("sigmoid_input", routed_scaling=2.0)


def test_router_bad_arguments():
    assert set(ROUTERS) == {"softmax", "sigmoid", "sigmoid_input"}
    with pytest.raises(ValueError, match="did you mean 'softmax'"):
        get_router("softmx")
    with pytest.raises(UsageError, match="n_experts=6 does not divide into n_group=4"):
        _router("sigmoid", n_group=4)
    with pytest.raises(UsageError, match="topk_group=3 exceeds n_group=2"):
        _router("sigmoid", n_group=2, topk_group=3)
    with pytest.raises(UsageError, match="top_k=4 exceeds the 3 experts of topk_group=1"):
        _router("sigmoid", k=4, n_group=2, topk_group=1)
    with pytest.raises(UsageError, match="routed_scaling must be"):
        _router("softmax", routed_scaling=0)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_route_takes_logits_and_a_bias_from_outside(name):
    """``route(logits, bias)`` is what ``forward`` does after the projection; a bias passed in
    moves the choice as the router's own buffer does."""
    r, x = _router(name, bias=True), _x()
    with torch.no_grad():
        r.bias.copy_(torch.tensor([0.0, 3.0, 0.0, 0.0, -3.0, 0.0], dtype=torch.float64))
    want = r(x)
    got = r.route(x @ r.weight.T, r.bias)
    assert torch.equal(got.expert_idx, want.expert_idx)
    torch.testing.assert_close(got.gates, want.gates, rtol=1e-15, atol=1e-15)
    assert (got.expert_idx == 1).any(1).all() and not (got.expert_idx == 4).any()
    plain = r.route(x @ r.weight.T)  # no bias: another choice
    assert not torch.equal(plain.expert_idx, got.expert_idx)
