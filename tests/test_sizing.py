import pytest

import ffnlab
from ffnlab.sizing import default_hidden_dim, ffn_flops_per_token, ffn_params


@pytest.mark.parametrize(
    "kwargs, want",
    [
        (dict(dim=128, hidden_dim=256, multiple_of=16), 176),  # the FFN blog post's worked case
        (dict(dim=4096, multiple_of=256), 11008),  # LLaMA-7B
        (dict(dim=4096, multiple_of=1024, ffn_dim_multiplier=1.3), 14336),  # Llama-3-8B
        (dict(dim=8192, multiple_of=4096, ffn_dim_multiplier=1.3), 28672),  # Llama-2-70B
        (dict(dim=64, hidden_dim=64, multiple_of=8), 48),  # the source's comment example
    ],
)
def test_llama_hidden_dim(kwargs, want):
    assert ffnlab.llama_hidden_dim(**kwargs) == want


def test_seed_formula_agrees():
    # The FFN blog post writes the rule as multiple_of * ((2*h//3 + multiple_of - 1) // multiple_of).
    for dim in (16, 100, 128, 333):
        for h in (None, 256, 1000):
            for m in (1, 8, 16, 256):
                hh = h or 4 * dim
                want = m * ((2 * hh // 3 + m - 1) // m)
                assert ffnlab.llama_hidden_dim(dim, hidden_dim=h, multiple_of=m) == want


@pytest.mark.parametrize("bad", [0, -1, 2.5, None, True])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        ffnlab.llama_hidden_dim(bad)
    with pytest.raises(ValueError, match="multiple_of"):
        ffnlab.llama_hidden_dim(64, multiple_of=bad if bad is not None else 0)


def test_ffn_dim_multiplier_must_be_positive():
    with pytest.raises(ValueError, match="ffn_dim_multiplier"):
        ffnlab.llama_hidden_dim(64, ffn_dim_multiplier=0)


@pytest.mark.parametrize("dim", [64, 128, 512, 4096])
def test_gated_default_matches_plain_params(dim):
    plain = ffn_params("relu", dim, default_hidden_dim("relu", dim), bias=False)
    for name, v in ffnlab.VARIANTS.items():
        if v.gated:
            gated = ffn_params(name, dim, default_hidden_dim(name, dim))
            assert abs(gated - plain) / plain < 0.02, (name, gated, plain)


def test_params_and_flops_counts():
    assert ffn_params("relu", 10, 40) == 2 * 10 * 40 + 40 + 10
    assert ffn_params("swiglu", 10, 40) == 3 * 10 * 40
    assert ffn_params("swiglu", 10, 40, bias=True) == 3 * 10 * 40 + 2 * 40 + 10
    f = ffn_flops_per_token("swiglu", 10, 40)
    assert f["matmul"] == 2 * 3 * 10 * 40 and f["total"] > f["matmul"]
    assert ffn_flops_per_token("relu", 10, 40)["matmul"] == 2 * 2 * 10 * 40
