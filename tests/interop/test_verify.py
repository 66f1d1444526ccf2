"""ffnlab.interop.verify: each replacement checked on a randomised float64 probe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab.interop.hf import build_wrapper
from ffnlab.interop.recognise import candidates
from ffnlab.interop.verify import Probe, verified_spec


def _verify(module):
    return verified_spec(module, lambda m, s: build_wrapper(m, s, "reference"))


class Swapped(nn.Module):
    """Names say gate_proj is the gate; the forward gates with up_proj."""

    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.GELU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x)) * self.gate_proj(x))


def test_roles_come_from_the_function_even_when_the_weights_cannot_tell():
    m = Swapped()
    with torch.no_grad():
        m.up_proj.weight.copy_(m.gate_proj.weight)  # both orders agree on these weights
    spec, diff = _verify(m)
    assert (spec.gate, spec.up) == ("up_proj", "gate_proj") and diff <= 1e-10
    model = nn.Sequential(m)
    assert ffnlab.patch_hf(model, backend="reference") == 1
    with torch.no_grad():
        m.up_proj.weight.normal_()  # now the orders differ: the patched one must still agree
        x = torch.randn(3, 8)
        torch.testing.assert_close(model[0](x), m(x), rtol=1e-6, atol=1e-6)


class HiddenDropout(nn.Module):
    def __init__(self, dim=8, hidden=12, p=0.4):
        super().__init__()
        self.wi = nn.Linear(dim, hidden, bias=False)
        self.wo = nn.Linear(hidden, dim, bias=False)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(p)

    def forward(self, x):
        return self.wo(self.dropout(self.act(self.wi(x))))


def test_dropout_placement_is_checked_in_train_mode():
    spec, _ = _verify(HiddenDropout())
    assert (spec.hidden_dropout, spec.out_dropout) == ("dropout", None)
    spec, _ = _verify(HiddenDropout(p=0.0))  # inactive: eval and train agree either way
    assert spec is not None


class Upcast(nn.Module):
    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        g, u = self.gate_proj(x), self.up_proj(x)
        return self.down_proj((self.act_fn(g.float()) * u.float()).to(g.dtype))


def test_a_forward_that_rounds_to_float32_is_checked_in_float32():
    m = Upcast()
    probe = Probe(m, dim=8)
    spec = next(candidates(m))
    assert probe.difference(build_wrapper(probe.module, spec, "reference")) > 1e-10
    spec, diff = _verify(m)
    assert spec is not None and diff <= 1e-5


class Clamped(nn.Module):
    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x).clamp(-0.1, 0.1))


def test_no_candidate_for_a_different_function_reports_the_difference():
    spec, diff = _verify(Clamped())
    assert spec is None and 1e-3 < diff < 10
    layer = nn.Module()
    layer.mlp = Clamped()
    with pytest.warns(UserWarning, match=r"mlp \(Clamped: no candidate matches it: smallest"):
        assert ffnlab.patch_hf(layer) == 0


def test_probe_compares_gradients_too():
    m = HiddenDropout(p=0.0)
    probe = Probe(m, dim=8)
    spec, _ = _verify(m)
    assert probe.difference(build_wrapper(probe.module, spec, "reference")) <= 1e-12

    class Detached(nn.Module):  # same output, no gradient through wi
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            h = self.inner.act(self.inner.wi(x)).detach()
            return self.inner.wo(h)

    assert probe.difference(Detached(probe.module)) > 0.1


def test_gradcheck_through_the_module_path():
    class Normed(nn.Module):  # BitNet's form: a norm on the hidden units
        def __init__(self, dim=4, hidden=6):
            super().__init__()
            self.gate_proj = nn.Linear(dim, hidden, bias=False)
            self.up_proj = nn.Linear(dim, hidden, bias=False)
            self.down_proj = nn.Linear(hidden, dim, bias=False)
            self.act_fn = nn.SiLU()
            self.ffn_sub_norm = nn.LayerNorm(hidden)

        def forward(self, x):
            h = self.act_fn(self.gate_proj(x)) * self.up_proj(x)
            return self.down_proj(self.ffn_sub_norm(h))

    m = Normed().double()
    spec, _ = _verify(m)
    assert spec.hidden_norm == "ffn_sub_norm"
    w = build_wrapper(m, spec, "auto")
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(w, (x,))
