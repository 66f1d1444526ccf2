"""HFMLP / BERT wrappers: which path a call takes (``backend="auto"``: the plain computation
through the modules for small calls, the fused op for large ones; forced backends as named),
and that every path computes the original module's function in float64, before and after the
weights change."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab.interop import hf_modules
from ffnlab.interop.hf_modules import HFMLP, HFFeedForward
from ffnlab.ops import dispatch
from ffnlab.ops.reference import hidden_activation, middle

pytest.importorskip("transformers")

# Families whose MLP forms differ: gated (separate projections), packed gate_up, GPT-2's Conv1D
# with an output dropout, BERT's intermediate/output pair, T5's gated-gelu with hidden dropout.
FORMS = ["llama", "phi3", "gpt2", "bert", "t5_gated"]
SHAPES = [(1, 1, 32), (1, 32), (3, 5, 32), (2, 1, 32)]  # decoding steps and odd shapes


@pytest.fixture
def fused_calls(monkeypatch):
    """How many calls reached the fused op's entry (``projected_feed_forward``); tests set it
    to 0 after patching (patching checks each wrapper on a probe through that entry)."""
    count = [0]
    real = hf_modules.projected_feed_forward

    def spy(*args, **kw):
        count[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(hf_modules, "projected_feed_forward", spy)
    return count


def _model(hf_models, family: str):
    model, inputs, _ = hf_models.build(family)
    return model.double(), inputs


def _pair(hf_models, family: str, backend: str = "auto"):
    """``(original model, patched deep copy, inputs)`` in float64."""
    model, inputs = _model(hf_models, family)
    patched = copy.deepcopy(model)
    assert ffnlab.patch_hf(patched, backend=backend) > 0
    return model, patched, inputs


def _wrapper_and_original(patched: nn.Module) -> tuple[HFFeedForward, nn.Module]:
    w = next(m for m in patched.modules() if isinstance(m, HFFeedForward) and m.counts_as_mlp)
    return w, w.original


def _grads(model, inputs, hf_models) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    hf_models.output(model, inputs).pow(2).mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_middle_equals_the_reference_activation():
    h1, h3 = torch.randn(3, 8, dtype=torch.float64), torch.randn(3, 8, dtype=torch.float64)
    for act, opts in (("swish", ()), ("gelu_tanh", ()), ("relu2", ()), ("clamped_swish", ()),
                      ("xielu", ()), (torch.tanh, ())):  # fmt: skip
        for v in (h3, None):
            want = hidden_activation(act, h1, v, 1.0, opts)
            torch.testing.assert_close(middle(act, h1, v, opts), want, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_decoding_step_runs_the_modules_and_equals_the_original_exactly(
    hf_models, fused_calls, shape
):
    model, patched, _ = _pair(hf_models, "llama")
    wrapper, original = _wrapper_and_original(patched)
    assert isinstance(wrapper, HFMLP) and wrapper.hidden_dim == 64
    x = torch.randn(shape, dtype=torch.float64)
    fused_calls[0] = 0
    with torch.no_grad():
        got, want = wrapper(x), original(x)
    assert fused_calls[0] == 0  # the plain path: the projection modules, as the original
    assert torch.equal(got, want)  # the same operations in the same order: bit for bit
    # with gradients too (a small training batch)
    xg = x.clone().requires_grad_()
    wrapper(xg).pow(2).sum().backward()
    gx = xg.grad.clone()
    grads = {n: p.grad.clone() for n, p in wrapper.named_parameters()}
    xg.grad = None
    wrapper.zero_grad(set_to_none=True)
    original(xg).pow(2).sum().backward()
    torch.testing.assert_close(gx, xg.grad, rtol=0, atol=0)
    for n, p in original.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=0, atol=0, msg=n)
    assert fused_calls[0] == 0


@pytest.mark.parametrize("family", FORMS)
def test_small_and_large_calls_take_their_paths_and_give_the_models_function(
    hf_models, fused_calls, monkeypatch, family
):
    model, patched, inputs = _pair(hf_models, family)
    fused_calls[0] = 0
    with torch.no_grad():
        want = hf_models.output(model, inputs)
        got_small = hf_models.output(patched, inputs)
    assert fused_calls[0] == 0, "the tiny inputs run the plain path"
    torch.testing.assert_close(got_small, want, rtol=1e-12, atol=1e-12)
    want_grads = _grads(model, inputs, hf_models)
    small_grads = _grads(patched, inputs, hf_models)
    assert fused_calls[0] == 0
    monkeypatch.setattr(dispatch, "FUSED_MIN_ELEMENTS", 1)  # every call counts as large
    with torch.no_grad():
        got_large = hf_models.output(patched, inputs)
    assert fused_calls[0] == 0, "without gradients a CPU keeps the plain path at every size"
    torch.testing.assert_close(got_large, want, rtol=1e-12, atol=1e-12)
    large_grads = _grads(patched, inputs, hf_models)
    assert fused_calls[0] > 0, "large calls with gradients run the fused op"
    assert small_grads.keys() == want_grads.keys() == large_grads.keys()
    for k in want_grads:
        torch.testing.assert_close(small_grads[k], want_grads[k], rtol=1e-10, atol=1e-12, msg=k)
        torch.testing.assert_close(large_grads[k], want_grads[k], rtol=1e-10, atol=1e-12, msg=k)


def test_forced_backends_keep_their_meaning_at_one_token(hf_models, fused_calls, monkeypatch):
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    for backend in ("fused", "reference"):
        model, patched, _ = _pair(hf_models, "llama", backend=backend)
        wrapper, original = _wrapper_and_original(patched)
        fused_calls[0] = 0
        with torch.no_grad():
            torch.testing.assert_close(wrapper(x), original(x), rtol=1e-12, atol=1e-12)
        assert fused_calls[0] == 1, backend  # the named backend ran, not the modules
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    _, patched, _ = _pair(hf_models, "llama", backend="triton")
    wrapper, _ = _wrapper_and_original(patched)
    with pytest.raises(NotImplementedError, match="backend='triton' cannot run here"):
        wrapper(x)


@pytest.mark.parametrize("large", [False, True])
def test_outputs_follow_the_weights_after_an_optimizer_step_and_load_state_dict(
    hf_models, monkeypatch, large
):
    if large:
        monkeypatch.setattr(dispatch, "FUSED_MIN_ELEMENTS", 1)
    model, patched, inputs = _pair(hf_models, "llama")
    opt = torch.optim.SGD(patched.parameters(), lr=0.5)
    for _ in range(2):  # a decoding step between the updates
        with torch.no_grad():
            hf_models.output(patched, inputs)
        _grads(patched, inputs, hf_models)
        opt.step()
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(patched.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(patched, inputs),
                                   hf_models.output(fresh, inputs), rtol=1e-12, atol=1e-12)
        step_out = hf_models.output(patched, inputs)
    # load_state_dict of other weights into the patched model
    other, _ = _model(hf_models, "llama")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    patched.load_state_dict(other.state_dict())
    with torch.no_grad():
        got = hf_models.output(patched, inputs)
        torch.testing.assert_close(got, hf_models.output(other, inputs), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, step_out)  # the weights did change


def test_a_projection_replaced_after_patching_is_called_on_the_plain_path(hf_models):
    _, patched, _ = _pair(hf_models, "llama")
    wrapper, _ = _wrapper_and_original(patched)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    with torch.no_grad():
        before = wrapper(x)
        wrapper.down_proj = _Doubled(wrapper.down_proj)
        torch.testing.assert_close(wrapper(x), 2 * before, rtol=1e-12, atol=1e-12)


class _Doubled(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return 2 * self.inner(x)
