"""relu2 / leaky_relu2 with the output kept for backward (recompute "none"): the same values
and gradients as the reference, and the bytes saved that the module docstring states."""

from __future__ import annotations

import pytest
import torch

from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.memory import saved_tensor_bytes
from ffnlab.ops.reference import ffn_reference
from ffnlab.ops.square_output import backward_from_output, keeps_output


def _args(dtype, n=2048, dim=8, hidden=256):
    g = torch.Generator().manual_seed(5)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    return mk(n, dim), mk(hidden, dim), mk(dim, hidden)


@pytest.mark.parametrize(("activation", "options", "want"), [("relu2", [], 2048 * 256 * 4),
                                                             ("leaky_relu2", [0.5], 2048 * 256 * 5)])
def test_saved_bytes_measured(activation, options, want):
    x, w1, w2 = _args(torch.float32)
    xb = x.numel() * 4
    run = lambda mode: saved_tensor_bytes(
        lambda: fused_feed_forward(x, w1, w2, activation=activation, recompute=mode,
                                   options=options), (w1, w2))[0] - xb  # fmt: skip
    assert run("none") == want  # was 8 B per element: h1 and y
    assert run("activation") == 2048 * 256 * 4  # h1 only, as before


@pytest.mark.parametrize("activation", ["relu2", "leaky_relu2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_match_reference(activation, dtype):
    x, w1, w2 = _args(dtype, n=33, dim=6, hidden=17)
    x64, w164, w264 = (t.detach().double().requires_grad_() for t in (x, w1, w2))
    opts = (0.3,) if activation == "leaky_relu2" else ()
    y = fused_feed_forward(x, w1, w2, activation=activation, recompute="none", options=opts)
    yr = ffn_reference(x64, w164, w264, activation=activation, options=opts)
    gy = torch.randn_like(yr)
    g = torch.autograd.grad(y, (x, w1, w2), gy.to(dtype))
    gr = torch.autograd.grad(yr, (x64, w164, w264), gy)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(y.double(), yr, rtol=tol, atol=tol)
    for a, b in zip(g, gr, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda *t: fused_feed_forward(*t, activation=activation, recompute="none",
                                          options=opts), (x64, w164, w264))  # fmt: skip


def test_sign_is_needed_for_leaky_and_kept_only_where_it_pays():
    # h = -4 and h = 2 give the same y = 4 at slope 0.5, with derivatives -2 and 4: the bool decides.
    h = torch.tensor([[-4.0, 2.0, 0.0]], dtype=torch.float64)
    y = torch.nn.functional.leaky_relu(h, 0.5) ** 2
    assert y[0, 0] == y[0, 1] == 4.0
    dh = backward_from_output("leaky_relu2", torch.ones_like(h), y, h > 0, 0.5)
    torch.testing.assert_close(dh, torch.tensor([[-2.0, 4.0, 0.0]], dtype=torch.float64))
    assert keeps_output("relu2", False, torch.float32, "none") == ("m",)
    assert keeps_output("relu2", False, torch.bfloat16, "none") == ()  # half: h1 kept
    assert keeps_output("relu2", True, torch.float32, "none") == ()
    assert keeps_output("leaky_relu2", False, torch.float64, "activation") == ()
