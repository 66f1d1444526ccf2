"""The fused op with a callable activation: recomputed under autograd in backward, against the
reference in float64 (forward, every gradient, the callable's own parameters), in each
recompute mode, with what each mode saves for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ffnlab import FeedForward
from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.function_callable import callable_feed_forward
from ffnlab.ops.memory import saved_tensor_bytes
from ffnlab.ops.reference import ffn_reference

MODES = ("none", "activation", "full")


class ScaledTanh(nn.Module):
    """An activation with two parameters of its own, one of them frozen."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([1.3], dtype=torch.float64))
        self.shift = nn.Parameter(torch.tensor(0.2, dtype=torch.float64), requires_grad=False)

    def forward(self, x):
        return self.scale * torch.tanh(x + self.shift) * x


def _args(gated, bias=True, n=6, dim=4, hidden=5):
    g = torch.Generator().manual_seed(7)
    leaf = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
    return (leaf(2, n, dim), leaf(hidden, dim), leaf(dim + 1, hidden),
            leaf(hidden, dim) if gated else None, leaf(hidden) if bias else None,
            leaf(dim + 1) if bias else None, leaf(hidden) if bias and gated else None)  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("gated", [True, False])
def test_module_with_parameters_matches_reference(mode, gated):
    args = _args(gated)
    act_f, act_r = ScaledTanh(), ScaledTanh()
    y = fused_feed_forward(*args, activation=act_f, recompute=mode)
    live = [t for t in args if t is not None]
    gy = torch.randn_like(y)
    grads = torch.autograd.grad(y, [*live, act_f.scale], gy)
    yr = ffn_reference(*args, activation=act_r)
    want = torch.autograd.grad(yr, [*live, act_r.scale], gy)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    # Every input; the callable's parameter is checked against autograd above.
    act = ScaledTanh()
    f = lambda *t: callable_feed_forward(*t, activation=act, recompute=mode)
    assert torch.autograd.gradcheck(f, _args(True))


def test_saved_bytes_follow_the_mode():
    x, w1, w2, w3, *_ = _args(True, bias=False, n=64)
    params = [w1, w2, w3]
    got = {m: saved_tensor_bytes(lambda m=m: callable_feed_forward(x, w1, w2, w3, activation=F.silu,
                                                                   recompute=m), params)[0]
           for m in MODES}  # fmt: skip
    row = 128 * 8  # 128 rows of float64
    assert got["full"] == x.numel() * 8
    assert got["activation"] == got["full"] + 2 * 5 * row  # + h1, h3
    assert got["none"] == got["activation"] + 5 * row  # + m


def test_feedforward_registers_the_module_and_keeps_its_keys():
    ffn = FeedForward(4, 5, "swiglu", activation=ScaledTanh(), dtype=torch.float64)
    assert "act_fn.scale" in ffn.state_dict() and "act_fn.shift" in ffn.state_dict()
    ffn(torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    assert ffn.act_fn.scale.grad is not None and ffn.act_fn.shift.grad is None
    plain = FeedForward(4, 5, "relu", activation=torch.tanh)
    assert "act_fn" not in dict(plain.named_children()) and plain.activation is torch.tanh


def test_backends_and_errors():
    x = torch.randn(3, 4, dtype=torch.float64)
    ref = FeedForward(4, 5, "geglu", activation=F.mish, backend="reference", dtype=torch.float64)
    fused = FeedForward(4, 5, "geglu", activation=F.mish, backend="auto", dtype=torch.float64)
    fused.load_state_dict(ref.state_dict())
    torch.testing.assert_close(fused(x), ref(x))
    with pytest.raises(ValueError, match="triton.*callable"):
        FeedForward(4, 5, "geglu", activation=F.mish, backend="triton")
    with pytest.raises(ValueError, match="act_kwargs"):
        FeedForward(4, 5, "geglu", activation=F.mish, act_kwargs={"slope": 1.0})
    with pytest.raises(TypeError, match="callable or an activation name"):
        FeedForward(4, 5, "geglu", activation=3)
    with pytest.raises(ValueError, match="beta applies only"):
        FeedForward(4, 5, "swiglu", activation=F.mish, beta=2.0)
