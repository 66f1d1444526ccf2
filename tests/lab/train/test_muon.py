"""The lab's Muon: torch's optimizer with the Newton-Schulz iteration in float32 on CPU."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz as torch_ns

from ffnlab.lab.train.muon import Muon, orthogonalise

COEF = (3.4445, -4.7750, 2.0315)


def _formula64(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """The docstring's iteration written out in float64."""
    a, b, c = COEF
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(float(x.norm()), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(64, 64), (192, 64), (17, 53), (53, 17), (1, 9)])
def test_orthogonalise_is_the_iteration_in_float32(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    got = orthogonalise(g, COEF, 5, 1e-7)
    assert got.dtype == torch.float32 and got.shape == g.shape
    torch.testing.assert_close(got.double(), _formula64(g), rtol=1e-4, atol=1e-5)
    # torch's bfloat16 iteration is the same map, to bfloat16's precision
    torch.testing.assert_close(got, torch_ns(g, COEF, 5, 1e-7).float(), rtol=0.05, atol=0.03)
    # singular values pushed towards 1 (the quintic's band is about [0.5, 1.5]; a random
    # matrix's smallest ones are still on their way after 5 steps)
    s = torch.linalg.svdvals(got.double())
    assert float(s.max()) < 1.6 and 0.6 < float(s.median()) < 1.4


def test_steps_follow_torch_muon_and_keep_its_state_layout():
    """Three steps on full-rank gradients: within bfloat16's rounding of torch's Muon, and
    equal (float32) to the update written out in float64. (On the low-rank gradients of a real
    model the two differ more: the iteration blows bfloat16's rounding in the null directions up
    to order 1, which is the float32 path's point.)"""
    kw = {"lr": 0.02, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
          "adjust_lr_fn": "match_rms_adamw"}
    g = torch.Generator().manual_seed(0)
    shapes = [(40, 24), (8, 40)]
    start = [torch.randn(*sh, generator=g) for sh in shapes]
    grads = [[torch.randn(*sh, generator=g) for sh in shapes] for _ in range(3)]
    mine = [torch.nn.Parameter(w.clone()) for w in start]
    ref = [torch.nn.Parameter(w.clone()) for w in start]
    opt, ref_opt = Muon(mine, **kw), torch.optim.Muon(ref, **kw)
    by_hand = [w.double() for w in start]
    bufs = [torch.zeros_like(w) for w in by_hand]
    for step in grads:
        for params, o in ((mine, opt), (ref, ref_opt)):
            for p, gr in zip(params, step, strict=True):
                p.grad = gr.clone()
            o.step()
        for i, gr in enumerate(step):
            bufs[i] = bufs[i] + 0.05 * (gr.double() - bufs[i])
            update = gr.double() + 0.95 * (bufs[i] - gr.double())  # Nesterov
            lr = 0.02 * 0.2 * max(shapes[i]) ** 0.5
            by_hand[i] = by_hand[i] * (1 - 0.02 * 0.1) - lr * _formula64(update)
    for p, q, h, p0 in zip(mine, ref, by_hand, start, strict=True):
        torch.testing.assert_close(p.detach().double(), h, rtol=1e-4, atol=1e-5)
        gap = float(((p.detach() - p0) - (q.detach() - p0)).norm() / (q.detach() - p0).norm())
        assert 0 < gap < 0.02, gap  # bfloat16's rounding, not another update
    sd = opt.state_dict()
    assert sd["param_groups"][0].keys() == ref_opt.state_dict()["param_groups"][0].keys()
    back = Muon([torch.nn.Parameter(w.clone()) for w in start], **kw)
    back.load_state_dict(sd)
    assert torch.equal(back.state_dict()["state"][0]["momentum_buffer"],
                       sd["state"][0]["momentum_buffer"])


def test_bad_arguments_and_vectors_are_refused():
    with pytest.raises(ValueError, match="2-D matrices or 3-D stacks"):
        Muon([torch.nn.Parameter(torch.randn(5))], lr=0.1)
    with pytest.raises(ValueError, match="lr should be >= 0"):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], lr=-1.0)
    with pytest.raises(TypeError, match="unexpected arguments \\['betas'\\]"):
        Muon([torch.nn.Parameter(torch.randn(3, 3))], betas=(0.9, 0.9))
    assert Muon([torch.nn.Parameter(torch.randn(3, 3))]).defaults == \
        torch.optim.Muon([torch.nn.Parameter(torch.randn(3, 3))]).defaults


def test_a_stack_is_each_matrix_on_its_own():
    """A ``[E, A, B]`` stack steps as E separate matrices would (Moonlight-style experts)."""
    g = torch.Generator().manual_seed(3)
    w, grad = torch.randn(4, 6, 5, generator=g), torch.randn(4, 6, 5, generator=g)
    stack = torch.nn.Parameter(w.clone())
    singles = [torch.nn.Parameter(w[e].clone()) for e in range(4)]
    kw = {"lr": 0.05, "adjust_lr_fn": "match_rms_adamw"}
    opt, opt1 = Muon([stack], **kw), Muon(singles, **kw)
    stack.grad = grad.clone()
    for e, p in enumerate(singles):
        p.grad = grad[e].clone()
    opt.step()
    opt1.step()
    torch.testing.assert_close(stack.detach(), torch.stack([p.detach() for p in singles]))
