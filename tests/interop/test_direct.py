"""The plain path's direct calls (:mod:`ffnlab.interop.direct`): bit for bit what calling the
modules gives, and the modules called whenever something would see the difference."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ffnlab
from ffnlab.interop import direct
from ffnlab.interop.direct import DirectActivation, activation_function, direct_mlp
from ffnlab.interop.hf_modules import HFMLP


class _Mlp(nn.Module):
    """LLaMA's MLP form with any activation object."""

    def __init__(self, act: object, gated: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(12, 20, bias=bias)
        self.up_proj = nn.Linear(12, 20, bias=bias) if gated else None
        self.down_proj = nn.Linear(20, 12, bias=bias)
        self.act_fn = act

    def forward(self, x):
        a = self.act_fn(self.gate_proj(x))
        return self.down_proj(a if self.up_proj is None else a * self.up_proj(x))


def _args(m: _Mlp) -> tuple:
    return m.gate_proj, m.up_proj, m.down_proj, m.act_fn


def _activations() -> list[object]:
    acts: list[object] = [nn.SiLU(), nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"),
                          nn.Tanh(), nn.SiLU(inplace=True)]  # fmt: skip
    try:
        from transformers.activations import ACT2FN
    except ImportError:
        return acts
    return acts + [ACT2FN[n] for n in ("silu", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu")]


@pytest.mark.parametrize("act", _activations(), ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("gated", [True, False])
def test_direct_mlp_equals_the_modules_bit_for_bit(act, gated):
    torch.manual_seed(0)
    m = _Mlp(act, gated=gated, bias=not gated)
    known = DirectActivation(act)
    base = torch.randn(3, 5, 24)[..., ::2]  # odd shape, not contiguous
    for x in (base, base.double(), torch.full((1, 12), 1e30), torch.full((2, 12), -1e4), torch.randn(1, 1, 12)):
        mm = m.to(x.dtype)
        with torch.no_grad():
            got = direct_mlp(x, *_args(mm), known)
            assert got is not None
            # bit for bit, NaN where the original overflows into NaN too
            torch.testing.assert_close(got, mm(x), rtol=0, atol=0, equal_nan=True)


def _fn(act):
    found = activation_function(act)
    return None if found is None else found[0]


def test_the_activation_table_names_what_each_class_calls():
    assert _fn(nn.SiLU()) is F.silu
    assert _fn(nn.ReLU()) is F.relu
    assert _fn(nn.SiLU(inplace=True)) is None  # writes into its input
    assert _fn(nn.Tanh()) is None  # not in the table: called as a module
    gelu = _fn(nn.GELU(approximate="tanh"))
    assert isinstance(gelu, functools.partial) and gelu.keywords == {"approximate": "tanh"}

    class MySiLU(nn.SiLU):  # a subclass may compute anything
        def forward(self, x):
            return 2 * F.silu(x)

    assert _fn(MySiLU()) is None
    acts = pytest.importorskip("transformers.activations")
    assert _fn(acts.GELUActivation(use_gelu_python=True)) is None
    assert _fn(acts.GELUTanh(use_gelu_tanh_python=True)) is None
    assert _fn(acts.ACT2FN["silu"]) is F.silu


@pytest.mark.parametrize("change", ["approximate", "act"])
def test_an_activation_setting_changed_after_the_wrapper_was_made_is_honoured(change):
    torch.manual_seed(3)
    if change == "approximate":
        act = nn.GELU()
    else:
        act = pytest.importorskip("transformers.activations").GELUActivation()
    m = _Mlp(act)
    known = DirectActivation(act)
    x = torch.randn(2, 12)
    with torch.no_grad():
        before = direct_mlp(x, *_args(m), known)
        if change == "approximate":
            act.approximate = "tanh"
        else:
            act.act = torch.tanh
        want = m(x)
        got = direct_mlp(x, *_args(m), known)
    assert not torch.equal(want, before)  # the change shows in the module's output
    assert torch.equal(got, want)
    assert DirectActivation(nn.SiLU(inplace=True)).fn is None


def _hooked(hook_on: str, how: str):
    """An MLP, its output with nothing hooked, and a counter of hook calls after the hook was
    registered on ``hook_on`` (``how``: forward / pre / replace / global ...)."""
    torch.manual_seed(1)
    m = _Mlp(nn.SiLU())
    x = torch.randn(2, 12)
    with torch.no_grad():
        want = m(x)
    calls = [0]

    def fwd(mod, args, out):
        calls[0] += 1
        return out * 2

    def pre(mod, args):
        calls[0] += 1
        return (args[0] * 2,)

    target = getattr(m, hook_on)
    handle = None
    if how == "forward":
        handle = target.register_forward_hook(fwd)
    elif how == "pre":
        handle = target.register_forward_pre_hook(pre)
    elif how == "global":
        handle = nn.modules.module.register_module_forward_hook(fwd)
    elif how == "instance forward":  # what accelerate's hooks do

        def forward(x, _f=target.forward):
            calls[0] += 1
            return _f(x) * 2

        target.forward = forward
    return m, x, want, calls, handle


@pytest.mark.parametrize("hook_on", ["gate_proj", "up_proj", "down_proj", "act_fn"])
@pytest.mark.parametrize("how", ["forward", "pre", "global", "instance forward"])
def test_anything_hooked_is_called(hook_on, how):
    m, x, plain, calls, handle = _hooked(hook_on, how)
    try:
        with torch.no_grad():
            want = m(x)
            n = calls[0]
            got = direct_mlp(x, *_args(m), DirectActivation(m.act_fn))
            if got is None:  # a projection must be called: the wrapper then calls the modules
                got = m(x)
            assert calls[0] > n, "the hook ran"
        assert not torch.equal(want, plain)  # the hook changed the output
        assert torch.equal(got, want)
    finally:
        if handle is not None:
            handle.remove()


def test_a_replaced_activation_or_projection_is_called():
    torch.manual_seed(2)
    m = _Mlp(nn.SiLU())
    known = DirectActivation(m.act_fn)
    x = torch.randn(2, 12)
    with torch.no_grad():
        m.act_fn = nn.SiLU()  # another object than the one recorded: called, same numbers
        assert torch.equal(direct_mlp(x, *_args(m), known), m(x))
        m.act_fn = nn.Tanh()
        assert torch.equal(direct_mlp(x, *_args(m), known), m(x))
        m.down_proj = nn.Sequential(m.down_proj)  # not exactly nn.Linear: called
        assert direct_mlp(x, *_args(m), known) is None


def test_a_compiled_projection_or_a_jit_trace_calls_the_modules(monkeypatch):
    m = _Mlp(nn.SiLU())
    x = torch.randn(2, 12)
    m.gate_proj.compile(backend="eager")
    assert direct_mlp(x, *_args(m), DirectActivation(m.act_fn)) is None
    monkeypatch.setattr(direct.torch._C, "_get_tracing_state", lambda: object())
    m = _Mlp(nn.SiLU())
    assert direct_mlp(x, *_args(m), DirectActivation(m.act_fn)) is None


def test_a_patched_llama_decoding_step_takes_the_direct_path(hf_models, monkeypatch):
    model, _, _ = hf_models.build("llama")
    patched = copy.deepcopy(model)
    assert ffnlab.patch_hf(patched) > 0
    wrapper = next(m for m in patched.modules() if isinstance(m, HFMLP))
    seen = []
    real = direct.direct_mlp
    monkeypatch.setattr("ffnlab.interop.hf_modules.direct_mlp",
                        lambda *a: seen.append(real(*a)) or seen[-1])  # fmt: skip
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        assert torch.equal(wrapper(x), wrapper.original(x))
    assert [y is not None for y in seen] == [True]
    wrapper(x)  # with gradients: the module calls
    assert len(seen) == 1
    h = wrapper.gate_proj.register_forward_hook(lambda mod, a, out: out + 1)
    with torch.no_grad():
        assert torch.equal(wrapper(x), wrapper.original(x))
    h.remove()
    assert [y is not None for y in seen] == [True, False]


def test_a_small_call_off_the_cpu_takes_the_direct_path_too(hf_models, monkeypatch):
    """Off the CPU (the meta device stands in for a GPU here) a small call without gradients
    runs the direct calls as well; a large one with gradients would run the fused op."""
    model, _, _ = hf_models.build("llama")
    assert ffnlab.patch_hf(model) > 0
    wrapper = next(m for m in model.modules() if isinstance(m, HFMLP)).to("meta")
    seen = []
    real = direct.direct_mlp
    monkeypatch.setattr("ffnlab.interop.hf_modules.direct_mlp",
                        lambda *a: seen.append(1) or real(*a))  # fmt: skip
    with torch.no_grad():
        y = wrapper(torch.empty(1, 1, 32, device="meta"))
    assert seen == [1] and y.shape == (1, 1, 32) and y.device.type == "meta"
