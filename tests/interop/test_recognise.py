"""ffnlab.interop.recognise: candidate MLP specs from a module's structure, no class names."""

from __future__ import annotations

import torch
from torch import nn

from ffnlab.interop.recognise import (
    candidates,
    forward_inputs,
    is_moe_block,
    projection_shape,
    why_not_mlp,
)


class Packed(nn.Module):
    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act = nn.SiLU()

    def forward(self, x):
        up, gate = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.act(gate))


class Scaled(nn.Module):
    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.act_fn = nn.SiLU()
        self.gate_multiplier, self.down_multiplier = 0.5, 2.0

    def forward(self, x):
        y = self.up_proj(x) * self.act_fn(self.gate_proj(x) * self.gate_multiplier)
        return self.down_proj(y) * self.down_multiplier


class WithConv(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * dim)
        self.conv = nn.Conv1d(dim, dim, 3)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        return self.out_proj(x)


def test_packed_layout_offers_both_halves_as_the_gate():
    specs = list(candidates(Packed()))
    assert {(s.gate, s.down, s.packed, s.gate_first) for s in specs} == {
        ("gate_up_proj", "down_proj", True, True),
        ("gate_up_proj", "down_proj", True, False),
    }
    assert specs[0].activation == "swish" and specs[0].act_attr == "act"  # named first


def test_gated_layout_offers_either_projection_as_the_gate_names_first():
    specs = list(candidates(Scaled()))
    first = specs[0]
    assert (first.gate, first.up, first.down) == ("gate_proj", "up_proj", "down_proj")
    assert (first.gate_scale, first.out_scale) == ("gate_multiplier", "down_multiplier")
    assert any(s.gate == "up_proj" for s in specs)
    assert any(s.gate_scale is None for s in specs)  # multipliers tried off too


def test_modules_that_are_not_mlps_have_no_candidates_and_a_reason():
    assert not list(candidates(WithConv()))
    assert "no two or three projections" in why_not_mlp(WithConv())
    assert not list(candidates(nn.Linear(4, 4)))
    assert why_not_mlp(Packed()) is None


def test_forward_inputs():
    class Residual(nn.Module):
        def forward(self, hidden_states, residual):
            return hidden_states + residual

    class Masked(nn.Module):
        def forward(self, x, mask):
            return x

    class Optional(nn.Module):
        def forward(self, x, layer_idx=None):
            return x

    assert forward_inputs(Residual()) == 2
    assert forward_inputs(Masked()) == 0
    assert forward_inputs(Optional()) == 1


def test_moe_blocks_by_children_or_class_name_ending():
    block = nn.Module()
    block.experts = nn.ModuleList()
    assert is_moe_block(block)

    class FooSparseMoeBlock(nn.Module):
        pass

    class FooMoeDecoderLayer(nn.Module):
        pass

    assert is_moe_block(FooSparseMoeBlock())
    assert not is_moe_block(FooMoeDecoderLayer())  # a layer holding an MoE is walked into
    assert not is_moe_block(Packed())


def test_conv1d_like_projection_shapes_come_from_transformers_only():
    class Conv1D(nn.Module):  # same name, not transformers': not a projection
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(4, 8))

    m = nn.Module()
    m.c_fc, m.c_proj = Conv1D(), Conv1D()
    assert not list(candidates(m))


def test_a_module_wrapping_one_linear_is_a_projection():
    class Clipped(nn.Module):  # Gemma-4's clippable linear: clamps around its Linear
        def __init__(self, i, o):
            super().__init__()
            self.linear = nn.Linear(i, o, bias=False)

        def forward(self, x):
            return self.linear(x).clamp(-1, 1)

    m = nn.Module()
    m.up_proj, m.down_proj, m.act_fn = Clipped(8, 12), Clipped(12, 8), nn.ReLU()
    m.forward = lambda x: m.down_proj(m.act_fn(m.up_proj(x)))
    assert projection_shape(m.up_proj) == (8, 12)
    assert [(s.gate, s.down) for s in candidates(m)][:1] == [("up_proj", "down_proj")]


class OutputNormed(nn.Module):
    """A ReLU² MLP followed by an RMSNorm of its output (Ergo's shared expert)."""

    def __init__(self, dim=8, hidden=12):
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)
        self.norm = nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.norm(self.down_proj(torch.relu(self.up_proj(x)).square()))


def test_a_norm_of_the_model_width_is_tried_on_the_input_then_on_the_output():
    import pytest

    import ffnlab
    from ffnlab.errors import UsageError
    from ffnlab.interop.hf import build_wrapper
    from ffnlab.interop.verify import verified_spec

    mlp = OutputNormed()
    roles = [(s.input_norm, s.out_norm) for s in candidates(mlp)]
    assert roles[0] == ("norm", None) and (None, "norm") in roles
    spec, diff = verified_spec(mlp, lambda m, s: build_wrapper(m, s, "reference"))
    assert spec.out_norm == "norm" and spec.input_norm is None and diff <= 1e-10
    with torch.no_grad():
        mlp.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 8)
    wrapper = build_wrapper(mlp, spec, "auto")
    torch.testing.assert_close(wrapper(x), mlp(x))
    with pytest.raises(UsageError, match="a norm on the output"):
        ffnlab.from_hf(mlp)
