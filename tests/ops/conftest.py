"""Helpers shared by the backend tests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ffnlab import FeedForward
from ffnlab.ops import engines


def _match_reference(ffn: FeedForward, x: torch.Tensor, *, rtol: float, atol: float) -> None:
    """``ffn`` (any backend) against a reference-backend copy with the same state: output,
    input gradient (``rtol``/``atol``) and every parameter gradient (rtol 1e-4, atol 1e-5:
    weight gradients sum over all rows, so their rounding grows with the batch)."""
    learn = False if ffn.beta is None else ("scalar" if ffn.beta.dim() == 0 else "per_unit")
    ref = FeedForward(ffn.dim, ffn.hidden_dim, ffn.variant, backend="reference",
                      bias=ffn.w1.bias is not None, learnable_beta=learn,
                      device=x.device, dtype=x.dtype)
    ref.load_state_dict(ffn.state_dict())
    x = x.detach().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y, yr = ffn(x), ref(x2)
    assert y.shape == yr.shape
    torch.testing.assert_close(y, yr, rtol=rtol, atol=atol)
    gy = torch.randn_like(y)
    y.backward(gy)
    yr.backward(gy)
    torch.testing.assert_close(x.grad, x2.grad, rtol=rtol, atol=atol)
    for (name, p), q in zip(ffn.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture
def match_reference():
    """``match_reference(ffn, x, rtol=..., atol=...)``: forward and backward of ``ffn`` equal
    a reference-backend copy of it."""
    return _match_reference


@pytest.fixture
def lower_inductor_threshold(monkeypatch):
    """``lower_inductor_threshold(n)``: for this test, the engines table chooses the inductor
    engine from ``n`` hidden elements on (the table entry replaced, not mutated)."""

    def lower(min_elements: int) -> engines.Engine:
        low = replace(engines.INDUCTOR, min_elements=min_elements)
        monkeypatch.setitem(engines.ENGINES, "inductor", low)
        return low

    return lower
