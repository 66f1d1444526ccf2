"""BenchConfig: defaults, normalisation and clear errors."""

import pytest
import torch

from ffnlab.bench import BenchConfig
from ffnlab.bench.providers import DEFAULT_PROVIDERS
from ffnlab.errors import UsageError


def test_default_hidden_sizes():
    cfg = BenchConfig(variants=("relu", "swiglu"), dim=16, multiple_of=256, tokens=(8,),
                      repeats=1, warmup=0)
    assert cfg.hiddens("relu") == [64]  # 4 * dim, not rounded
    assert cfg.hiddens("swiglu") == [256]  # int(2 * 64 / 3) = 42, rounded up to 256
    assert BenchConfig(variants=("relu", "swiglu"), dim=16, multiple_of=16).hiddens(
        "swiglu") == [48]
    assert BenchConfig(variants=("relu", "swiglu"), dim=16, hidden=[40, 24]).hiddens(
        "relu") == [40, 24]


def test_defaults_and_normalisation():
    cfg = BenchConfig()
    assert cfg.variants == ("relu", "gelu", "swish", "geglu", "swiglu") and cfg.dim == 512
    assert cfg.tokens == (2048,) and cfg.providers == DEFAULT_PROVIDERS
    assert (cfg.repeats, cfg.warmup, cfg.seed, cfg.elementwise) == (5, 2, 0, True)
    cfg = BenchConfig(variants=["silu", "swish"], tokens=[8, 8, 4], device="cpu")
    assert cfg.variants == ("swish",) and cfg.tokens == (8, 4)  # canonical, no repeats
    assert cfg.device == torch.device("cpu")
    assert cfg.to_json()["tokens"] == [8, 4] and cfg.to_json()["dtype"] == "float32"
    with pytest.raises(AttributeError):
        cfg.dim = 3  # frozen


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"dim": 0}, "dim must be a positive integer, got 0"),
        ({"dim": 2.5}, "dim must be a positive integer"),
        ({"tokens": ()}, "tokens is empty"),
        ({"tokens": 8}, "tokens must be a sequence of positive integers"),
        ({"hidden": (4, -3)}, "hidden must be a positive integer, got -3"),
        ({"multiple_of": 0}, "multiple_of must be a positive integer"),
        ({"repeats": 0}, "repeats must be a positive integer"),
        ({"warmup": -1}, "warmup must be a non-negative integer, got -1"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"elementwise": 1}, "elementwise must be True or False"),
        ({"dtype": torch.int8}, "dtype must be a floating-point torch.dtype"),
        ({"device": "tpu"}, "device"),
        ({"variants": "swiglu"}, "variants must be a sequence of names"),
        ({"variants": ("swigl",)}, "did you mean 'swiglu'"),
        ({"variants": ()}, "no variant given"),
        ({"providers": ("fused:activaton",)}, "did you mean 'fused:activation'"),
    ],
)
def test_bad_values_raise_usage_errors(change, needle):
    with pytest.raises(UsageError) as err:
        BenchConfig(**change)
    assert needle in str(err.value)
