"""Structural recognition of mixture-of-experts blocks, and HFMoE, on plain-torch blocks.

The blocks here are written as transformers 5.x writes them (router ``weight [E, dim]``,
fused 3-D ``gate_up_proj``/``down_proj``) but need no transformers: the recognition looks at
structure only, and the probe decides.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ffnlab
from ffnlab.interop.hf import patch_hf_report
from ffnlab.interop.hf_moe import HFMoE
from ffnlab.interop.recognise_moe import moe_candidates, moe_parts, why_not_moe

E, DIM, HIDDEN, K = 5, 8, 6, 2


class Router(nn.Module):
    def __init__(self, norm: bool) -> None:
        super().__init__()
        self.top_k, self.norm_topk_prob = K, norm
        self.weight = nn.Parameter(torch.randn(E, DIM) / DIM**0.5)

    def forward(self, x):
        logits = F.linear(x, self.weight)
        top, idx = logits.softmax(-1).topk(self.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True) if self.norm_topk_prob else top, idx


class Experts(nn.Module):
    """``gate_up_proj [E, 2I, dim]`` (gate rows first) or, ``transposed``, ``[E, dim, 2I]``
    with gate and up columns interleaved (GPT-OSS's layout), stated as transformers does."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.is_transposed, self.is_concatenated = transposed, not transposed
        shape_gu = (E, DIM, 2 * HIDDEN) if transposed else (E, 2 * HIDDEN, DIM)
        shape_d = (E, HIDDEN, DIM) if transposed else (E, DIM, HIDDEN)
        self.gate_up_proj = nn.Parameter(torch.randn(shape_gu) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(shape_d) * 0.3)
        self.act_fn = nn.SiLU()

    def forward(self, x, idx, weights):
        out = torch.zeros_like(x)
        for e in range(E):
            tok, slot = torch.where(idx == e)
            if self.is_transposed:
                gu = x[tok] @ self.gate_up_proj[e]
                gate, up = gu[..., ::2], gu[..., 1::2]
                h = (self.act_fn(gate) * up) @ self.down_proj[e]
            else:
                gate, up = F.linear(x[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
                h = F.linear(self.act_fn(gate) * up, self.down_proj[e])
            out.index_add_(0, tok, h * weights[tok, slot, None])
        return out


class SharedMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(DIM, 4, bias=False)
        self.up_proj = nn.Linear(DIM, 4, bias=False)
        self.down_proj = nn.Linear(4, DIM, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class SparseMoeBlock(nn.Module):
    def __init__(self, norm=True, transposed=False, shared=False) -> None:
        super().__init__()
        self.gate, self.experts = Router(norm), Experts(transposed)
        if shared:
            self.shared_expert = SharedMLP()
            self.shared_expert_gate = nn.Linear(DIM, 1, bias=False)

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1])
        _, w, idx = self.gate(x2)
        y = self.experts(x2, idx, w)
        if hasattr(self, "shared_expert"):
            y = y + torch.sigmoid(self.shared_expert_gate(x2)) * self.shared_expert(x2)
        return y.reshape(x.shape)


def _model(**kw) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("mlp", SparseMoeBlock(**kw))
    return model.double()


@pytest.mark.parametrize(
    "kw", [{}, {"norm": False}, {"transposed": True}, {"shared": True}], ids=str
)
def test_patch_hf_replaces_the_block_exactly(kw):
    model = _model(**kw)
    x = torch.randn(3, 4, DIM, dtype=torch.float64, requires_grad=True)
    want = model(x)
    (gx,) = torch.autograd.grad(want.square().sum(), x)
    keys = list(model.state_dict())
    assert ffnlab.patch_hf(model) == 1
    wrapper = model.mlp
    assert isinstance(wrapper, HFMoE)
    assert wrapper.spec.norm_topk == kw.get("norm", True)
    assert wrapper.spec.interleaved == wrapper.spec.transposed == kw.get("transposed", False)
    assert list(model.state_dict()) == keys
    got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (gx2,) = torch.autograd.grad(got.square().sum(), x)
    torch.testing.assert_close(gx2, gx, rtol=1e-12, atol=1e-12)
    assert ffnlab.unpatch_hf(model) == 1 and isinstance(model.mlp, SparseMoeBlock)


def test_the_weight_views_follow_training():
    """W1/W3 are views of ``gate_up_proj``: an update of the stored tensor reaches the wrapper."""
    model = _model()
    ffnlab.patch_hf(model)
    w1, w2, w3, *_ = model.mlp.expert_weights()
    gu = model.mlp.experts.gate_up_proj
    assert w1._base is gu and w3._base is gu and w2 is model.mlp.experts.down_proj
    with torch.no_grad():
        gu[0, 0, 0] += 1.0
    assert model.mlp.expert_weights()[0][0, 0, 0] == w1[0, 0, 0]


def test_candidates_put_the_router_hint_first():
    block = SparseMoeBlock(norm=False)
    first = next(moe_candidates(block))
    assert (first.kind, first.norm_topk, first.top_k, first.router_weight) == (
        "softmax", False, K, "gate.weight")  # fmt: skip
    assert moe_parts(SparseMoeBlock(shared=True))[0] == {
        "router": "gate", "experts": "experts", "shared": "shared_expert",
        "shared_gate": "shared_expert_gate"}  # fmt: skip


class ListExperts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(DIM, E, bias=False)
        self.experts = nn.ModuleList(SharedMLP() for _ in range(E))


def test_reasons_a_block_is_left():
    assert "a list of modules (experts)" in why_not_moe(ListExperts())
    block = SparseMoeBlock()
    block.extra = nn.Linear(DIM, 3)
    assert why_not_moe(block) == "its child extra (Linear) has no known role"
    block = SparseMoeBlock()
    block.jitter_noise = 0.01
    assert "training-mode input jitter (jitter_noise=0.01)" in why_not_moe(block)
    block = SparseMoeBlock()
    block.experts.act_fn = nn.Softsign()  # no ffnlab activation of that name
    assert why_not_moe(block) == "its experts' activation Softsign has no ffnlab equivalent"


class SharpRouter(Router):
    """Logits times 3: no candidate computes it."""

    def forward(self, x):
        return super().forward(3 * x)


def test_a_block_computing_something_else_is_left_with_the_difference():
    model = _model()
    sharp = SharpRouter(norm=True).double()
    sharp.weight = model.mlp.gate.weight
    model.mlp.gate = sharp
    count, left = patch_hf_report(model)
    assert count == 0 and isinstance(model.mlp, SparseMoeBlock)
    assert left[0].startswith("mlp (SparseMoeBlock: no candidate matches it: smallest relative")


class ExpertScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(E, DIM))
        self.eps = 1e-5


class NormedExperts(Experts):
    """Each route's output through its expert's RMSNorm, in the input's dtype, before the
    gates weight it (Ergo's ``post_expert_norm``, without its float32 rounding)."""

    def __init__(self) -> None:
        super().__init__()
        self.post_norm = ExpertScale()

    def forward(self, x, idx, weights):
        out = torch.zeros_like(x)
        for e in range(E):
            tok, slot = torch.where(idx == e)
            gate, up = F.linear(x[tok], self.gate_up_proj[e]).chunk(2, dim=-1)
            h = F.linear(self.act_fn(gate) * up, self.down_proj[e])
            h = F.rms_norm(h, (DIM,), self.post_norm.weight[e], eps=self.post_norm.eps)
            out.index_add_(0, tok, h * weights[tok, slot, None])
        return out


def test_a_per_expert_output_norm_is_recognised_and_computed():
    model = _model()
    model.mlp.experts = NormedExperts().double()
    x = torch.randn(3, 4, DIM, dtype=torch.float64)
    want = model(x)
    keys = list(model.state_dict())
    assert ffnlab.patch_hf(model) == 1
    spec = model.mlp.spec
    assert (spec.expert_norm, spec.norm_eps, spec.norm_float32) == (
        "experts.post_norm.weight", 1e-5, False)  # fmt: skip
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        model.mlp.experts.post_norm.weight.uniform_(0.5, 1.5)
        want = model.mlp.original(x)
    torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)
