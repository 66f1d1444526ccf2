"""Routers (ffnlab.routers) against hand computations."""

from __future__ import annotations

import math

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
    assert set(ROUTERS) == {"softmax", "sigmoid", "sigmoid_input", "sparsemixer"}
    with pytest.raises(ValueError, match="did you mean 'softmax'"):
        get_router("softmx")
    with pytest.raises(UsageError, match="n_experts=6 does not divide into n_group=4"):
        _router("sigmoid", n_group=4)
    with pytest.raises(UsageError, match="topk_group=3 exceeds n_group=2"):
        _router("sigmoid", n_group=2, topk_group=3)
    with pytest.raises(UsageError, match="top_k=7 exceeds n_experts=6"):
        _router("sigmoid", k=7)
    with pytest.raises(ValueError, match="group_score"):
        _router("sigmoid", n_group=2, group_score="sum")
    with pytest.raises(ValueError, match="group_fill"):
        _router("sigmoid", n_group=2, group_fill="nan")
    with pytest.raises(UsageError, match="no norm_topk and no selection bias"):
        _router("sparsemixer", bias=True)
    with pytest.raises(UsageError, match="n_group=1"):
        _router("sparsemixer", n_group=2)
    with pytest.raises(UsageError, match="jitter_eps"):
        _router("sparsemixer", jitter_eps=-1.0)
    with pytest.raises(UsageError, match="routed_scaling must be"):
        _router("softmax", routed_scaling=0)


@pytest.mark.parametrize("name", sorted(set(ROUTERS) - {"sparsemixer"}))
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


def _group_reference(sel, scores, k, n_group, topk_group, score, fill):
    """Group-limited top-k written out token by token: per token the experts that must be
    chosen, those that may be (ties at the k-th score), and each one's gate."""
    e = sel.shape[1]
    size = e // n_group
    out = []
    for row, srow in zip(sel.tolist(), scores.tolist(), strict=True):
        groups = [row[g * size:(g + 1) * size] for g in range(n_group)]
        gs = [max(g) if score == "max" else sum(sorted(g)[-2:]) for g in groups]
        kept = sorted(range(n_group), key=lambda g: -gs[g])[:topk_group]
        inside = [j for j in range(e) if j // size in kept]
        other = -float("inf") if fill == "-inf" else 0.0
        masked = [row[j] if j in inside else other for j in range(e)]
        kth = sorted(masked, reverse=True)[k - 1]
        must = {j for j in range(e) if masked[j] > kth}
        may = {j for j in range(e) if masked[j] >= kth}
        gates = {j: 0.0 if fill == "zero_gates" and j not in inside else srow[j]
                 for j in range(e)}  # fmt: skip
        out.append((must, may, gates))
    return out


@pytest.mark.parametrize("score", ["top2", "max"])
@pytest.mark.parametrize("fill", ["-inf", "zero", "zero_gates"])
@pytest.mark.parametrize("k,n_group,topk_group", [(2, 3, 1), (3, 3, 2), (2, 2, 1), (3, 2, 1)])
def test_group_limited_choice(score, fill, k, n_group, topk_group):
    """Every group rule, top_k below and (the last two: 3 of 6 experts with 3 selectable) up
    to the selectable experts; a bias pushes some selection scores below 0."""
    r = _router("sigmoid", k=k, n_group=n_group, topk_group=topk_group, norm_topk=False,
                group_score=score, group_fill=fill)  # fmt: skip
    x = _x(40)
    with torch.no_grad():
        r.bias.copy_(torch.tensor([-0.9, 0.2, -0.6, 0.1, -0.8, 0.0], dtype=torch.float64))
    out = r(x)
    s = torch.sigmoid(x @ r.weight.T)
    want = _group_reference(s + r.bias, s, k, n_group, topk_group, score, fill)
    for idx, g, (must, may, gates) in zip(out.expert_idx.tolist(), out.gates.tolist(), want,
                                          strict=True):  # fmt: skip
        assert len(set(idx)) == k and must <= set(idx) <= may
        assert g == pytest.approx([gates[j] for j in idx], rel=1e-15, abs=1e-15)


def test_top_k_above_the_selectable_experts_takes_masked_ones():
    """6 experts, 2 groups of 3, one kept, top-5: the 3 kept and 2 of the others (-inf: their
    own gates; zero_gates: gate 0)."""
    x = _x(20)
    for fill in ("-inf", "zero_gates"):
        r = _router("sigmoid", k=5, n_group=2, topk_group=1, norm_topk=False, bias=False,
                    group_fill=fill)  # fmt: skip
        out = r(x)
        s = torch.sigmoid(x @ r.weight.T)
        group = s.reshape(20, 2, 3).topk(2, -1).values.sum(-1).argmax(-1)  # [T]
        inside = (out.expert_idx // 3) == group[:, None]
        assert (inside.sum(-1) == 3).all()
        want = s.gather(1, out.expert_idx)
        want = want if fill == "-inf" else want * inside
        torch.testing.assert_close(out.gates, want, rtol=0, atol=0)


def _sparsemixer_reference(logits, eps, k=2):
    """PhiMoE's sparsemixer in eval mode, token by token."""
    idx, gates = [], []
    for row in logits.tolist():
        chosen, g = [], []
        for _ in range(k):
            m = [float("-inf") if j in chosen else v for j, v in enumerate(row)]
            best = max(m)
            j = m.index(best)
            keep = [m[i] if (best - v) / max(abs(v), best) <= 2 * eps else float("-inf")
                    for i, v in enumerate(row)]  # fmt: skip
            chosen.append(j)
            g.append(math.exp(keep[j]) / sum(math.exp(v) for v in keep))
        idx.append(chosen)
        gates.append(g)
    return torch.tensor(idx), torch.tensor(gates, dtype=torch.float64)


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3])
def test_sparsemixer_router_eval(eps):
    r = _router("sparsemixer", jitter_eps=eps).eval()
    x = _x(30)
    out = r(x)
    logits = x @ r.weight.T
    want_idx, want_gates = _sparsemixer_reference(logits, eps)
    assert torch.equal(out.expert_idx, want_idx)
    torch.testing.assert_close(out.gates, want_gates, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.probs, logits.softmax(-1))
    if eps == 0.0:
        assert torch.equal(out.gates, torch.ones_like(out.gates))


def test_sparsemixer_router_train_samples_and_scales():
    """Training mode: experts sampled within the threshold and gates scaled by 1 or 1/3; the
    backward is the softmax gradient of the chosen gate, unscaled."""
    r = _router("sparsemixer", e=6, jitter_eps=0.5).train()
    x = _x(200).requires_grad_()
    torch.manual_seed(0)
    out = r(x)
    logits = x @ r.weight.T
    ev = r.eval()(x)
    assert not torch.equal(out.expert_idx, ev.expert_idx)  # sampled
    assert (out.expert_idx[:, 0] != out.expert_idx[:, 1]).all()
    ratio = out.gates / r.route(logits.detach()).gates.detach().clamp_min(1e-300)
    assert ratio.min() < 0.5  # some gates scaled by 1/3
