"""ffnlab.from_hf: a standalone FeedForward from one transformers MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab import FeedForward

pytest.importorskip("transformers")


def _mlp(model, family):
    if family == "t5" or family == "t5_gated":
        return model.encoder.block[0].layer[-1].DenseReluDense
    if family == "gpt2":
        return model.transformer.h[0].mlp
    if family == "bert":
        return model.encoder.layer[0]  # the layer holds the intermediate/output pair
    return model.model.layers[0].mlp


def _hf_ffn(family, module, x):
    """What the FeedForward must equal: the module's FFN, BERT's without residual/LayerNorm."""
    if family == "bert":
        return module.output.dense(module.intermediate(x))
    return module(x)


SHARED = {  # family -> (variant, FeedForward attribute -> module attribute path)
    "llama": ("swiglu", {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}),
    "gemma": ("geglu_tanh", {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}),
    "t5": ("relu", {"w1": "wi", "w2": "wo"}),
    "t5_gated": ("geglu_tanh", {"w1": "wi_0", "w2": "wo", "w3": "wi_1"}),
    "bert": ("gelu", {"w1": "intermediate.dense", "w2": "output.dense"}),
}


@pytest.mark.parametrize("family", list(SHARED))
def test_shares_linear_layers(hf_models, family):
    model, _, _ = hf_models.build(family)
    module = _mlp(model, family)
    ffn = ffnlab.from_hf(module)
    variant, layers = SHARED[family]
    assert isinstance(ffn, FeedForward) and ffn.variant == variant
    for attr, path in layers.items():
        assert getattr(ffn, attr) is module.get_submodule(path), attr
    assert not ffn.gated or ffn.w3 is not None
    x = torch.randn(3, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), _hf_ffn(family, module, x), rtol=1e-5, atol=1e-6)
    assert all(not p.is_meta for p in ffn.parameters())


@pytest.mark.parametrize("family", ["phi3", "gpt2"])
def test_packed_and_conv1d_need_copy(hf_models, family):
    model, _, _ = hf_models.build(family)
    module = _mlp(model, family)
    with pytest.raises(ValueError, match="copy=True"):
        ffnlab.from_hf(module)
    ffn = ffnlab.from_hf(module, copy=True, backend="reference")
    x = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), module(x), rtol=1e-5, atol=1e-6)
        ffn.w1.weight.zero_()  # a copy: the module keeps its weights
    assert all(p.abs().sum() > 0 for p in module.parameters() if p.dim() == 2)  # (biases are 0)
    if family == "gpt2":
        assert ffn.w1.bias is not None and ffn.variant == "gelu_tanh"


def test_copy_for_linear_families_copies(hf_models):
    model, _, _ = hf_models.build("llama")
    module = _mlp(model, "llama")
    ffn = ffnlab.from_hf(module, copy=True)
    assert ffn.w1 is not module.gate_proj
    assert ffn.w1.weight.data_ptr() != module.gate_proj.weight.data_ptr()
    torch.testing.assert_close(ffn.w1.weight, module.gate_proj.weight, rtol=0, atol=0)


def test_from_patched_wrapper_and_options(hf_models):
    model, _, _ = hf_models.build("qwen2")
    module = _mlp(model, "qwen2")
    ffnlab.patch_hf(model)
    ffn = ffnlab.from_hf(model.model.layers[0].mlp, backend="reference", recompute="full")
    assert ffn.w1 is module.gate_proj
    assert (ffn.backend, ffn.recompute) == ("reference", "full")


def test_errors():
    with pytest.raises(ValueError, match="does not recognise Linear"):
        ffnlab.from_hf(nn.Linear(3, 3))
    with pytest.raises(TypeError):
        ffnlab.from_hf("LlamaMLP")


@pytest.mark.parametrize(
    ("hidden_act", "activation"),
    [("mish", "mish"), ("quick_gelu", "quick_gelu"), ("leaky_relu", "leaky_relu"),
     ("gelu_10", "gelu_10"), ("xielu", "XIELUActivation"), ("prelu", "PReLU")],
)  # fmt: skip
def test_activations_without_a_variant_replace_the_variants(hf_models, hidden_act, activation):
    """A gated mish (no such variant) is ``reglu`` with ``activation="mish"``; a learnable one
    (xIELU, PReLU) is the model's own module, shared, so its parameters keep training."""
    model, _, _ = hf_models.build("llama", hidden_act=hidden_act)
    module = _mlp(model, "llama")
    ffn = ffnlab.from_hf(module)
    act = ffn.activation
    assert (act if isinstance(act, str) else type(act).__name__) == activation
    if not isinstance(act, str):
        assert act is module.act_fn
    x = torch.randn(3, 4, 32)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), module(x), rtol=1e-5, atol=1e-6)
    copied = ffnlab.from_hf(module, copy=True)
    assert isinstance(act, str) or copied.activation is not module.act_fn


def test_from_hf_is_a_function_not_a_feed_forward_method():
    assert ffnlab.from_hf is ffnlab.interop.from_hf
    assert not hasattr(FeedForward, "from_hf")  # the module layer does not import interop


def test_structurally_recognised_families(families):
    survey = families
    # Nemotron: plain up_proj/down_proj with relu2, Linears shared
    nemotron = survey.build_model("nemotron")
    mlp = nemotron.model.layers[0].mlp
    ffn = ffnlab.from_hf(mlp)
    assert ffn.variant == "relu2" and ffn.w1 is mlp.up_proj and ffn.w2 is mlp.down_proj
    x = torch.randn(3, 32)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), mlp(x), rtol=1e-5, atol=1e-6)
    # Falcon-H1: gate/down multipliers cannot be carried without copying
    falcon = survey.build_model("falcon_h1")
    mlp = falcon.model.layers[0].feed_forward
    with pytest.raises(ValueError, match="multiplies its gate or output by a constant"):
        ffnlab.from_hf(mlp)
    ffn = ffnlab.from_hf(mlp, copy=True)
    with torch.no_grad():
        torch.testing.assert_close(ffn(x), mlp(x), rtol=1e-5, atol=1e-6)
    # BitNet: a norm on the hidden units has no place in a FeedForward
    bitnet = survey.build_model("bitnet")
    with pytest.raises(ValueError, match="a norm on the hidden units"):
        ffnlab.from_hf(bitnet.model.layers[0].mlp)
