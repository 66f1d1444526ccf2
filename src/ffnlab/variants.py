"""The registry of FFN variants: every FFN block ffnlab computes, by name.

A variant is a name, whether it is gated, and the scalar activation of its W1 branch:
plain ``y = W2 · act(W1 x + b1) + b2``; gated ``y = W2 · (act(W1 x + b1) ⊙ (W3 x + b3)) + b2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .activations import get_activation
from .errors import UsageError, unknown_choice

__all__ = ["Variant", "VARIANTS", "ALIASES", "get_variant", "variant_names"]


@dataclass(frozen=True)
class Variant:
    """One FFN variant: its name, whether it is gated, the activation of its W1 branch (a name
    in :mod:`ffnlab.activations`), a one-line formula, where it comes from and, where its
    model differs from the rule (plain: on, gated: off), whether it has biases.

    Computed for ``x [..., dim]`` by ``ffnlab.ops.reference.ffn_reference(x, w1, w2, w3, ...,
    activation=variant.activation)`` (the oracle) or any backend of ``ffnlab.FeedForward``.
    """

    name: str
    gated: bool
    activation: str
    formula: str
    source: str
    bias: bool | None = None

    @property
    def default_bias(self) -> bool:
        """Whether ``FeedForward`` puts biases on by default: the variant's own choice where
        its model has them (GPT-OSS), else on for plain and off for gated variants."""
        return (not self.gated) if self.bias is None else self.bias

    @property
    def has_beta(self) -> bool:
        """Whether the activation takes Swish's beta."""
        return get_activation(self.activation).has_beta

    @property
    def matrices(self) -> int:
        """Number of weight matrices: 3 for gated variants, 2 for plain ones."""
        return 3 if self.gated else 2


_PLAIN = "W2·{a}(W1x+b1)+b2"
_GATED = "W2·({a}(W1x)⊙W3x)"

_TABLE = (
    Variant("relu", False, "relu", _PLAIN.format(a="ReLU"), "Vaswani et al. 2017 (Transformer)"),
    Variant("gelu", False, "gelu", _PLAIN.format(a="GELU"), "Hendrycks & Gimpel 2016; BERT"),
    Variant("gelu_tanh", False, "gelu_tanh", _PLAIN.format(a="GELUtanh"), "GPT-2 (gelu_new)"),
    Variant("swish", False, "swish", _PLAIN.format(a="Swishβ"), "Ramachandran et al. 2017"),
    Variant("sigmoid", False, "sigmoid", _PLAIN.format(a="σ"), "classic"),
    Variant("tanh", False, "tanh", _PLAIN.format(a="tanh"), "classic"),
    Variant("relu2", False, "relu2", _PLAIN.format(a="ReLU²"), "So et al. 2021 (Primer)"),
    Variant("glu", True, "sigmoid", _GATED.format(a="σ"), "Dauphin et al. 2016"),
    Variant("bilinear", True, "identity", "W2·(W1x⊙W3x)", "Shazeer 2020"),
    Variant("reglu", True, "relu", _GATED.format(a="ReLU"), "Shazeer 2020"),
    Variant("geglu", True, "gelu", _GATED.format(a="GELU"), "Shazeer 2020"),
    Variant("geglu_tanh", True, "gelu_tanh", _GATED.format(a="GELUtanh"), "Gemma"),
    Variant("swiglu", True, "swish", _GATED.format(a="Swishβ"), "Shazeer 2020; LLaMA"),
)

VARIANTS: Mapping[str, Variant] = MappingProxyType({v.name: v for v in _TABLE})
"""Canonical name -> :class:`Variant`: the plain variants, then the gated ones."""

ALIASES: Mapping[str, str] = MappingProxyType({"silu": "swish"})
"""Accepted alternative names -> canonical name."""


def variant_names(include_aliases: bool = False) -> list[str]:
    """Canonical variant names (and aliases when asked)."""
    return [*VARIANTS, *ALIASES] if include_aliases else list(VARIANTS)


def get_variant(name: str | Variant) -> Variant:
    """The :class:`Variant` called ``name`` (or an alias); ValueError with close matches."""
    if isinstance(name, Variant):
        return name
    key = ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in VARIANTS:
        raise unknown_choice("variant", name, variant_names(include_aliases=True))
    return VARIANTS[key]


def parse_variant_list(text: str | None) -> list[str]:
    """``"relu, swiglu"`` -> ``["relu", "swiglu"]`` (canonical names, validated, no repeats).

    ``None``, ``""`` or ``"all"`` gives every variant.
    """
    if text is None or text.strip() in ("", "all"):
        return variant_names()
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name = get_variant(part).name
        if name not in out:
            out.append(name)
    if not out:  # "," or " , ": without this a command would silently run nothing
        raise UsageError(f"no variant named in {text!r} (give names separated by commas, or all)")
    return out
