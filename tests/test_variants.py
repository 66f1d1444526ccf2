import pytest

import ffnlab
from ffnlab.variants import parse_variant_list

DOCUMENTED_TABLE = {
    "relu": (False, "relu"),
    "gelu": (False, "gelu"),
    "gelu_tanh": (False, "gelu_tanh"),
    "swish": (False, "swish"),
    "sigmoid": (False, "sigmoid"),
    "tanh": (False, "tanh"),
    "relu2": (False, "relu2"),
    "quick_gelu": (False, "quick_gelu"),
    "leaky_relu2": (False, "leaky_relu2"),
    "xielu": (False, "xielu"),
    "glu": (True, "sigmoid"),
    "bilinear": (True, "identity"),
    "reglu": (True, "relu"),
    "geglu": (True, "gelu"),
    "geglu_tanh": (True, "gelu_tanh"),
    "swiglu": (True, "swish"),
    "qgeglu": (True, "quick_gelu"),
    "clamped_swiglu": (True, "clamped_swish"),
}


def test_registry_is_design_table():
    assert list(ffnlab.VARIANTS) == list(DOCUMENTED_TABLE)
    for name, (gated, act) in DOCUMENTED_TABLE.items():
        v = ffnlab.get_variant(name)
        assert (v.name, v.gated, v.activation) == (name, gated, act)
        assert v.formula and v.source


def test_alias_and_errors():
    assert ffnlab.get_variant("silu") is ffnlab.VARIANTS["swish"]
    with pytest.raises(ValueError, match="did you mean 'swiglu'"):
        ffnlab.get_variant("swiglue")
    with pytest.raises(ValueError, match="unknown variant"):
        ffnlab.get_variant("zzzz")


def test_parse_variant_list():
    assert parse_variant_list("all") == list(ffnlab.VARIANTS)
    assert parse_variant_list(" relu, silu,relu ") == ["relu", "swish"]
    with pytest.raises(ValueError, match="gelux"):
        parse_variant_list("relu,gelux")


def test_default_bias_is_the_models():
    assert not ffnlab.get_variant("swiglu").default_bias
    assert ffnlab.get_variant("relu").default_bias
    assert ffnlab.get_variant("clamped_swiglu").default_bias  # GPT-OSS has biases
