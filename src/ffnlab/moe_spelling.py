"""The spelling of a variant on the command line: a registry name (``swiglu``) or a mixture of
experts of one (``moe:swiglu:8x2``: 8 routed experts of swiglu, 2 per token).

``ffnlab compare`` (:mod:`ffnlab.lab.train.variant`, which adds the lab's sizing and builds the
block) and ``ffnlab bench`` (:mod:`ffnlab.commands.bench`) both parse names with
:func:`parse_variant_spelling`, so the two commands take the same spelling. This module sits
below both in the layers (it needs only the registry), so the bench does not import the lab.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UsageError
from .variants import get_variant

__all__ = ["MOE_PREFIX", "VariantSpelling", "is_moe_spelling", "parse_experts",
           "parse_variant_spelling"]  # fmt: skip

MOE_PREFIX = "moe"

_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class VariantSpelling:
    """A parsed spelling: ``base`` (a canonical registry name), dense when ``n_experts`` is
    None, else ``n_experts`` routed experts of ``base`` with ``top_k`` per token."""

    base: str
    n_experts: int | None = None
    top_k: int | None = None

    @property
    def is_moe(self) -> bool:
        return self.n_experts is not None

    @property
    def name(self) -> str:
        """The canonical spelling (``swiglu``, ``moe:swiglu:8x2``)."""
        if not self.is_moe:
            return self.base
        return f"{MOE_PREFIX}:{self.base}:{self.n_experts}x{self.top_k}"


def is_moe_spelling(text: object) -> bool:
    """Whether ``text`` is spelt as a mixture of experts (``moe:...``, any case), valid or not."""
    return isinstance(text, str) and text.strip().lower().startswith(MOE_PREFIX + ":")


def _positive(text: str, what: str, spelling: str) -> int:
    value = int(text)
    if value < 1:
        raise UsageError(f"{spelling!r}: {what} must be at least 1, got {value}")
    return value


def parse_experts(text: str, spelling: str) -> tuple[int, int]:
    """The ``<E>x<k>`` part (``"8x2"`` -> ``(8, 2)``) with ``E >= 1`` and ``1 <= k <= E``; a
    UsageError naming ``spelling`` (what the user wrote) otherwise."""
    m = _SHAPE.match(str(text))
    if m is None:
        raise UsageError(f"{spelling!r}: the experts part must be <experts>x<top_k> (two "
                         f"positive integers, e.g. 8x2), got {text!r}")  # fmt: skip
    n_experts = _positive(m[1], "the number of experts", spelling)
    top_k = _positive(m[2], "top_k", spelling)
    if top_k > n_experts:
        raise UsageError(f"{spelling!r}: top_k={top_k} exceeds the {n_experts} experts")
    return n_experts, top_k


def parse_variant_spelling(name: str) -> VariantSpelling:
    """Parse a registry name or alias (ValueError with close matches when unknown), or
    ``moe:<variant>:<E>x<k>`` with ``E >= 1`` and ``1 <= k <= E`` (spaces and the prefix's
    case are free: ``" MoE: swiglu : 4 x 1 "`` is ``moe:swiglu:4x1``)."""
    if not isinstance(name, str):
        raise UsageError(f"a variant name is a string, got {type(name).__name__}")
    text = name.strip()
    if not is_moe_spelling(text):
        return VariantSpelling(get_variant(text).name)
    parts = text.split(":")
    if len(parts) != 3 or not parts[1].strip():
        raise UsageError(f"{name!r} is not a mixture of experts spelling: write "
                         f"moe:<variant>:<experts>x<top_k>, e.g. moe:swiglu:8x2")  # fmt: skip
    base = get_variant(parts[1].strip()).name
    n_experts, top_k = parse_experts(parts[2], name)
    return VariantSpelling(base, n_experts, top_k)
