"""ffnlab.patch_hf / unpatch_hf on tiny random-weight transformers models of every family."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab.interop.hf_activations import hf_activation, hf_activation_options
from ffnlab.interop.hf_modules import HFFeedForward
from ffnlab.ops.reference import hidden_activation

pytest.importorskip("transformers")

FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "t5", "t5_gated", "bert"]
# What each family's MLP must become: wrapper class and ffnlab activation.
EXPECT = {
    "llama": ("HFMLP", "swish"),
    "mistral": ("HFMLP", "swish"),
    "qwen2": ("HFMLP", "swish"),
    "gemma": ("HFMLP", "gelu_tanh"),  # hidden_act="gelu_pytorch_tanh"
    "phi3": ("HFMLP", "swish"),
    "gpt2": ("HFMLP", "gelu_tanh"),  # "gelu_new"
    "t5": ("HFMLP", "relu"),
    "t5_gated": ("HFMLP", "gelu_tanh"),  # "gated-gelu" is gelu_new
    "bert": ("HFBertFeedForward", "gelu"),
}
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _wrappers(model):
    return [m for m in model.modules() if isinstance(m, HFFeedForward) and m.counts_as_mlp]


@pytest.mark.parametrize("family", FAMILIES)
def test_same_outputs_and_count(hf_models, family):
    model, inputs, n_mlp = hf_models.build(family)
    with torch.no_grad():
        before = hf_models.output(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every MLP of these models is recognised: no warning
        assert ffnlab.patch_hf(model) == n_mlp
    wrappers = _wrappers(model)
    assert len(wrappers) == n_mlp
    cls, act = EXPECT[family]
    assert {type(w).__name__ for w in wrappers} == {cls}
    assert {w.ffn_activation for w in wrappers} == {act}
    with torch.no_grad():
        after = hf_models.output(model, inputs)
    torch.testing.assert_close(after, before, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_gives_same_gradients_on_original_parameters(hf_models, family):
    model, inputs, _ = hf_models.build(family)
    model.train()  # dropout is 0 in these configs, so train mode is deterministic
    params_before = dict(model.named_parameters())

    def grads():
        model.zero_grad(set_to_none=True)
        hf_models.output(model, inputs).pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    want = grads()
    ffnlab.patch_hf(model)
    got = grads()
    # the same Parameter objects, under the same names
    assert {k: id(p) for k, p in model.named_parameters()} == {
        k: id(p) for k, p in params_before.items()
    }
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_unchanged_and_shared(hf_models, family):
    model, _, _ = hf_models.build(family)
    before = model.state_dict()
    ffnlab.patch_hf(model)
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        assert after[k].data_ptr() == before[k].data_ptr(), k  # shared, not copied


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "t5_gated", "bert"])
def test_save_pretrained_round_trip(hf_models, family, tmp_path):
    model, inputs, n_mlp = hf_models.build(family)
    ffnlab.patch_hf(model)
    with torch.no_grad():
        want = hf_models.output(model, inputs)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = type(model).from_pretrained(tmp_path).float().eval()
    assert list(loaded.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(loaded, inputs), want, **TOL)
    assert ffnlab.patch_hf(loaded) == n_mlp
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(loaded, inputs), want, **TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_unpatch_restores_original_instances(hf_models, family):
    model, inputs, n_mlp = hf_models.build(family)
    originals = {name: m for name, m in model.named_modules()}
    ffnlab.patch_hf(model)
    model.train()
    assert ffnlab.unpatch_hf(model) == n_mlp
    restored = dict(model.named_modules())
    assert restored.keys() == originals.keys()
    for name, m in restored.items():
        assert m is originals[name], name
        assert m.training, name  # the mode set while patched carries over
    assert not any(isinstance(m, HFFeedForward) for m in model.modules())
    assert ffnlab.unpatch_hf(model) == 0


def test_training_through_patch_updates_the_original(hf_models):
    model, inputs, _ = hf_models.build("phi3")  # packed weight: updated through slices
    packed = model.model.layers[0].mlp.gate_up_proj.weight
    ffnlab.patch_hf(model)
    old = packed.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    hf_models.output(model, inputs).pow(2).mean().backward()
    opt.step()
    assert packed.grad is not None and packed.grad[:64].abs().sum() > 0  # gate half
    assert packed.grad[64:].abs().sum() > 0  # up half
    assert not torch.equal(packed, old)
    ffnlab.unpatch_hf(model)
    assert model.model.layers[0].mlp.gate_up_proj.weight is packed


@pytest.mark.parametrize("family", ["gpt2", "t5", "t5_gated", "bert"])
def test_dropout_in_train_mode_matches(hf_models, family):
    """Dropout stays where transformers has it (T5: hidden units; GPT-2/BERT: output), and
    consumes the random stream in the same order, so a seeded train-mode forward agrees."""
    model, inputs, _ = hf_models.build(family, dropout=0.3)
    model.train()
    torch.manual_seed(5)
    want = hf_models.output(model, inputs)
    ffnlab.patch_hf(model)
    torch.manual_seed(5)
    got = hf_models.output(model, inputs)
    torch.testing.assert_close(got, want, **TOL)


def test_t5_keeps_wo_in_its_own_dtype(hf_models):
    """T5 may keep ``wo`` in float32 while the rest is bfloat16; it casts the hidden units."""
    model, inputs, _ = hf_models.build("t5_gated")
    model.to(torch.bfloat16)
    for m in model.modules():
        if type(m).__name__ == "T5DenseGatedActDense":
            m.wo.float()
    with torch.no_grad():
        want = hf_models.output(model, inputs)
        ffnlab.patch_hf(model)
        got = hf_models.output(model, inputs)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_patching_twice_changes_nothing(hf_models):
    model, inputs, n_mlp = hf_models.build("llama")
    assert ffnlab.patch_hf(model) == n_mlp
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ffnlab.patch_hf(model) == 0
    assert len(_wrappers(model)) == n_mlp


class MyMLP(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.tanh(self.fc(x))


def test_unrecognised_mlp_is_left_alone_and_listed_once(hf_models):
    model, inputs, n_mlp = hf_models.build("llama")
    odd = MyMLP(32)
    model.model.layers[1].mlp = odd
    with pytest.warns(UserWarning) as record:
        assert ffnlab.patch_hf(model) == n_mlp - 1
    msgs = [str(w.message) for w in record if "ffnlab.patch_hf" in str(w.message)]
    assert len(msgs) == 1
    assert "model.layers.1.mlp (MyMLP" in msgs[0]
    assert model.model.layers[1].mlp is odd


def test_learnable_activation_runs_as_the_models_callable(hf_models):
    # PReLU learns its slope: the wrapper calls the model's own module (fused op, re-run under
    # autograd), which keeps its parameter, state-dict key and gradient.
    model, inputs, n_mlp = hf_models.build("llama", hidden_act="prelu")
    keys = list(model.state_dict())
    with torch.no_grad():
        before = hf_models.output(model, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ffnlab.patch_hf(model) == n_mlp
    assert {type(w.ffn_activation).__name__ for w in _wrappers(model)} == {"PReLU"}
    assert list(model.state_dict()) == keys and "model.layers.0.mlp.act_fn.weight" in keys
    torch.testing.assert_close(hf_models.output(model, inputs), before, **TOL)
    hf_models.output(model, inputs).sum().backward()
    assert model.model.layers[0].mlp.act_fn.weight.grad is not None


class Doubling(nn.Module):
    """An MLP whose forward is not what its parts suggest: it must be left alone."""

    def __init__(self, dim):
        super().__init__()
        self.up_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.down_proj = nn.Linear(2 * dim, dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.up_proj(x))) * 2.0 + 0.001 * x


def test_mlp_computing_something_else_is_left_alone_with_the_difference(hf_models):
    model, inputs, n_mlp = hf_models.build("llama")
    odd = Doubling(32)
    model.model.layers[0].mlp = odd
    with torch.no_grad():
        before = hf_models.output(model, inputs)
    with pytest.warns(UserWarning) as record:
        assert ffnlab.patch_hf(model) == n_mlp - 1
    msgs = [str(w.message) for w in record if "ffnlab.patch_hf" in str(w.message)]
    assert len(msgs) == 1
    assert re.search(r"model\.layers\.0\.mlp \(Doubling: no candidate matches it: smallest "
                     r"relative difference [0-9.e+-]+ > 1e-10\)", msgs[0])  # fmt: skip
    assert model.model.layers[0].mlp is odd
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(model, inputs), before, **TOL)


def test_model_without_mlp_returns_zero_and_says_why():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="found no MLP in Sequential") as record:
        assert ffnlab.patch_hf(model) == 0
    assert len(record) == 1


def test_bad_arguments(hf_models):
    model, _, _ = hf_models.build("llama")
    with pytest.raises(ValueError, match="did you mean 'fused'"):
        ffnlab.patch_hf(model, backend="fuse")
    with pytest.raises(TypeError, match="nn.Module"):
        ffnlab.patch_hf("llama")
    with pytest.raises(TypeError, match="nn.Module"):
        ffnlab.unpatch_hf(None)
    with pytest.raises(ValueError, match="unknown recompute mode 'ful'; did you mean 'full'"):
        ffnlab.patch_hf(model, recompute="ful")


def test_options_after_the_model_are_keyword_only(hf_models):
    """patch_hf(model, *, backend=..., recompute=...), as from_hf: the old positional backend
    is a TypeError naming the extra positional argument, and patches nothing."""
    import inspect

    model, _, _ = hf_models.build("llama")
    with pytest.raises(TypeError, match=r"patch_hf\(\) takes 1 positional argument but 2"):
        ffnlab.patch_hf(model, "fused")
    assert _wrappers(model) == []
    for fn in (ffnlab.patch_hf, ffnlab.from_hf):
        params = list(inspect.signature(fn).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in params), fn.__name__
        assert {"backend", "recompute"} <= {p.name for p in params}


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_recompute_reaches_the_patched_modules(hf_models, family):
    """Each wrapper runs the fused op with the recompute mode given to patch_hf: its value is
    on every wrapper, and the bytes one MLP call saves for backward shrink from "none" to
    "activation" to "full", with the same outputs."""
    from ffnlab.ops.memory import saved_tensor_bytes

    saved, outs = {}, {}
    for mode in ("none", "activation", "full"):
        torch.manual_seed(0)
        model, _, _ = hf_models.build(family)
        ffnlab.patch_hf(model, backend="fused", recompute=mode)
        wrappers = _wrappers(model)
        assert wrappers and all(w.recompute == mode for w in wrappers)
        assert f"recompute={mode!r}" in repr(wrappers[0])
        w = wrappers[0]
        dim = w.ffn_weights()[0].shape[1]
        x = torch.randn(3, 5, dim, generator=torch.Generator().manual_seed(1),
                        requires_grad=True)  # fmt: skip
        saved[mode], outs[mode] = saved_tensor_bytes(lambda w=w, x=x: w(x), exclude=model.parameters())
    assert saved["none"] > saved["activation"] > saved["full"], saved
    torch.testing.assert_close(outs["full"], outs["none"], rtol=0, atol=0)


def test_reference_backend_matches_in_float64(hf_models):
    model, inputs, _ = hf_models.build("llama")
    model.double()
    with torch.no_grad():
        want = hf_models.output(model, inputs)
        ffnlab.patch_hf(model, backend="reference")
        got = hf_models.output(model, inputs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# transformers ACT2FN names -> the ffnlab activation hf_activation must name (None: the model's
# own callable runs).
ACT_NAMES = {
    "silu": "swish", "swish": "swish", "gelu": "gelu", "gelu_python": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
    "quick_gelu": "quick_gelu", "relu": "relu", "relu2": "relu2", "sigmoid": "sigmoid",
    "tanh": "tanh", "linear": "identity",
    "gelu_accurate": "gelu_accurate", "relu6": "relu6", "hardswish": "hardswish",
    "mish": "mish", "laplace": "laplace", "gelu_10": "gelu_10", "leaky_relu": "leaky_relu",
    # learnable: the model's own module runs (its parameters are the model's)
    "prelu": None, "xielu": None,
}  # fmt: skip


@pytest.mark.parametrize("name", list(ACT_NAMES))
def test_activation_map_computes_the_same_function(name):
    from transformers.activations import ACT2FN

    act = ACT2FN[name]
    want = ACT_NAMES[name]
    assert hf_activation(act) == want
    if want is not None:
        x = torch.linspace(-12, 12, 1201, dtype=torch.float64)
        options = hf_activation_options(act)
        mine = hidden_activation(want, x, None, 1.0, options)
        torch.testing.assert_close(mine, act(x), rtol=1e-6, atol=1e-7)


def test_activation_map_plain_functions_and_strangers():
    assert hf_activation(torch.nn.functional.silu) == "swish"
    assert hf_activation(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert hf_activation(nn.GELU()) == "gelu"
    assert hf_activation(MyMLP(2)) is None  # a module from elsewhere is not trusted
    assert hf_activation(lambda x: x) is None
    assert hf_activation([1]) is None  # unhashable


def test_deepcopy_of_patched_model_keeps_sharing(hf_models):
    import copy

    model, inputs, n_mlp = hf_models.build("gpt2")
    ffnlab.patch_hf(model)
    clone = copy.deepcopy(model)
    wrapper = clone.transformer.h[0].mlp
    assert wrapper.c_fc is wrapper.original.c_fc  # the copy's wrapper and original share too
    assert wrapper.c_fc is not model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        torch.testing.assert_close(
            hf_models.output(clone, inputs), hf_models.output(model, inputs), rtol=0, atol=0
        )
    assert ffnlab.unpatch_hf(clone) == n_mlp
    assert type(clone.transformer.h[0].mlp).__name__ == "GPT2MLP"


@pytest.mark.parametrize("family", FAMILIES)
def test_hooked_projection_is_called_not_bypassed(hf_models, family):
    """A hook (or an adapter replacing a projection) must act as it does on the original."""
    model, inputs, _ = hf_models.build(family)
    model.eval()
    with torch.no_grad():
        plain = hf_models.output(model, inputs)
    ffnlab.patch_hf(model, backend="fused")
    handles = [
        w.projections()[0].register_forward_hook(lambda mod, inp, out: out * 0.5)
        for w in _wrappers(model)
    ]
    with torch.no_grad():
        patched = hf_models.output(model, inputs)
    ffnlab.unpatch_hf(model)  # the hooks stay on the same (shared) projection modules
    with torch.no_grad():
        original = hf_models.output(model, inputs)
    for h in handles:
        h.remove()
    assert not torch.allclose(original, plain, **TOL)  # the hook does change the function
    torch.testing.assert_close(patched, original, **TOL)


def test_bert_sees_an_output_dense_replaced_after_patching(hf_models):
    # W2 lives in the layer's output module; replacing it after patch_hf must take effect.
    model, inputs, _ = hf_models.build("bert")
    model.eval()
    ffnlab.patch_hf(model, backend="fused")
    with torch.no_grad():
        before = hf_models.output(model, inputs)
    layer = model.encoder.layer[0]
    old = layer.output.dense
    new = torch.nn.Linear(old.in_features, old.out_features)
    with torch.no_grad():
        new.weight.copy_(old.weight * 2)
        new.bias.copy_(old.bias)
    layer.output.dense = new
    with torch.no_grad():
        after = hf_models.output(model, inputs)
    assert not torch.allclose(before, after, **TOL)
    ffnlab.unpatch_hf(model)  # the replacement stays in the restored BertOutput
    assert model.encoder.layer[0].output.dense is new
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(model, inputs), after, **TOL)


def test_meta_device_modules_cannot_be_checked_and_are_left(hf_models):
    with torch.device("meta"):
        model, _, n_mlp = hf_models.llama()
    with pytest.warns(UserWarning, match="parameters are on the meta device"):
        assert ffnlab.patch_hf(model) == 0
    assert not _wrappers(model)


def test_clipped_gelu_other_than_10_and_leaky_slopes():
    from transformers.activations import ClippedGELUActivation

    assert hf_activation(ClippedGELUActivation(-5, 5)) is None  # runs as the callable
    assert hf_activation_options(nn.LeakyReLU(0.2)) == (0.2,)
    assert hf_activation_options(nn.SiLU()) == ()


def test_subclasses_are_patched_by_what_they_compute(hf_models):
    """The exact-class rule is gone: a subclass with LLaMA's forward is patched, one that
    changes the forward is left alone with its difference."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    class Renamed(LlamaMLP):
        pass

    class Halved(LlamaMLP):
        def forward(self, x):
            return 0.5 * super().forward(x)

    model, inputs, n_mlp = hf_models.build("llama")
    cfg = model.config
    model.model.layers[0].mlp = Renamed(cfg)
    model.model.layers[1].mlp = Halved(cfg)
    with torch.no_grad():
        before = hf_models.output(model, inputs)
    with pytest.warns(UserWarning, match=r"layers\.1\.mlp \(Halved: no candidate matches"):
        assert ffnlab.patch_hf(model) == 1
    assert isinstance(model.model.layers[0].mlp, HFFeedForward)
    assert type(model.model.layers[1].mlp) is Halved
    with torch.no_grad():
        torch.testing.assert_close(hf_models.output(model, inputs), before, **TOL)
