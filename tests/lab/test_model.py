import pytest
import torch

import ffnlab
from ffnlab.lab.train.model import ModelConfig, TinyGPT, init_parameters, is_ffn_param
from ffnlab.sizing import default_hidden_dim


def ffn_hidden(variant: str, dim: int) -> int:
    """The lab's hidden size (equal FFN budgets): the library's default rule, no rounding."""
    return default_hidden_dim(variant, dim, multiple_of=1)

CFG = ModelConfig(dim=32, n_layers=2, n_heads=4, seq_len=16)


@pytest.mark.parametrize("dim", [32, 64, 128, 256, 768])
def test_equal_ffn_budgets(dim):
    budgets = {v: ffnlab.ffn_params(v, dim, ffn_hidden(v, dim), bias=False) for v in ffnlab.VARIANTS}
    plain = budgets["relu"]
    assert plain == 8 * dim * dim
    for v, n in budgets.items():
        assert abs(n - plain) / plain < 0.02, (v, n, plain)
    assert ffn_hidden("swiglu", dim) == ffnlab.llama_hidden_dim(dim, multiple_of=1)


def test_model_ffn_params_match_budget():
    for v in ("relu", "swiglu"):
        m = TinyGPT(CFG, v)
        n = sum(p.numel() for name, p in m.named_parameters() if is_ffn_param(name))
        assert n == CFG.n_layers * ffnlab.ffn_params(v, CFG.dim, ffn_hidden(v, CFG.dim), bias=False)


def test_forward_shape_and_causality():
    m = TinyGPT(CFG, "geglu")
    init_parameters(m, 0)
    x = torch.randint(0, 256, (2, 16))
    y = m(x)
    assert y.shape == (2, 16, 256)
    x2 = x.clone()
    x2[:, 10:] = (x2[:, 10:] + 1) % 256  # changing the future must not change the past
    torch.testing.assert_close(m(x2)[:, :10], y[:, :10])
    assert not torch.allclose(m(x2)[:, 10:], y[:, 10:])


def test_same_non_ffn_init_across_variants():
    states = {}
    for v in ("relu", "swiglu", "bilinear"):
        m = TinyGPT(CFG, v)
        init_parameters(m, seed=7)
        states[v] = dict(m.named_parameters())
    ref = states["relu"]
    non_ffn = [n for n in ref if not is_ffn_param(n)]
    assert non_ffn and all(n in states["swiglu"] for n in non_ffn)
    for v in ("swiglu", "bilinear"):
        for n in non_ffn:
            assert torch.equal(states[v][n], ref[n]), n
    # FFN weights differ by variant, and everything differs by seed
    assert not torch.equal(states["swiglu"]["blocks.0.ffn.w1.weight"][:, :4],
                           states["bilinear"]["blocks.0.ffn.w1.weight"][:, :4])
    m = TinyGPT(CFG, "relu")
    init_parameters(m, seed=8)
    assert not torch.equal(m.tok.weight, ref["tok.weight"])


def test_capture_gate_preactivations_is_w1x():
    m = TinyGPT(CFG, "swiglu")
    init_parameters(m, 0)
    x = torch.randint(0, 256, (3, 9))
    inputs = []
    handle = m.blocks[1].ffn.register_forward_pre_hook(lambda mod, a: inputs.append(a[0]))
    with m.capture_gate_preactivations() as store:
        m(x)
    handle.remove()
    assert [len(s) for s in store] == [1, 1]
    h1 = store[1][0]
    assert h1.shape == (3, 9, ffn_hidden("swiglu", 32))
    torch.testing.assert_close(h1, inputs[0] @ m.blocks[1].ffn.w1.weight.T)
    with torch.no_grad():
        m(x)
    assert [len(s) for s in store] == [1, 1]  # hooks removed on exit


def test_bad_config():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        ModelConfig(dim=30, n_layers=1, n_heads=4, seq_len=8)
    with pytest.raises(ValueError, match="seq_len must be a positive integer"):
        ModelConfig(dim=32, n_layers=1, n_heads=4, seq_len=0)
    with pytest.raises(ValueError, match="longer than seq_len"):
        TinyGPT(CFG, "relu")(torch.zeros(1, 17, dtype=torch.long))
