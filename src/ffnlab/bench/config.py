"""What one benchmark run measures: :class:`BenchConfig`, checked when it is made."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import UsageError, check_choice, check_positive_int
from ..sizing import default_hidden_dim
from ..variants import get_variant
from .providers import DEFAULT_PROVIDERS, PROVIDERS

__all__ = ["BenchConfig", "DEFAULT_VARIANTS"]

DEFAULT_VARIANTS = ("relu", "gelu", "swish", "geglu", "swiglu")


def _positive_ints(name: str, values: Iterable[int]) -> tuple[int, ...]:
    """``values`` as a tuple without repeats (first occurrence kept), each a positive int."""
    if isinstance(values, (int, str)):
        raise UsageError(f"{name} must be a sequence of positive integers, got {values!r}")
    out = tuple(dict.fromkeys(check_positive_int(name, v) for v in values))
    if not out:
        raise UsageError(f"{name} is empty")
    return out


def _names(kind: str, values: Iterable[str], canonical) -> tuple[str, ...]:
    if isinstance(values, str):
        raise UsageError(f"{kind}s must be a sequence of names, got the string {values!r}")
    out = tuple(dict.fromkeys(canonical(v) for v in values))
    if not out:
        raise UsageError(f"no {kind} given")
    return out


@dataclass(frozen=True)
class BenchConfig:
    """One ``ffnlab bench`` run: every provider on every (variant, hidden size, token count).

    ``hidden=None`` measures each variant at its default hidden size: ``4 * dim`` for plain
    variants, LLaMA's rule rounded up to ``multiple_of`` for gated ones. Sequences are stored as
    tuples without repeats, variant names in their canonical spelling; a bad value raises
    :class:`~ffnlab.errors.UsageError` naming the field.
    """

    variants: tuple[str, ...] = DEFAULT_VARIANTS
    dim: int = 512
    hidden: tuple[int, ...] | None = None
    multiple_of: int = 256
    tokens: tuple[int, ...] = (2048,)
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    repeats: int = 5
    warmup: int = 2
    seed: int = 0
    elementwise: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:  # frozen: normalise through object
            object.__setattr__(self, name, value)

        put("variants", _names("variant", self.variants, lambda v: get_variant(v).name))
        check_positive_int("dim", self.dim)
        if self.hidden is not None:
            put("hidden", _positive_ints("hidden", self.hidden))
        check_positive_int("multiple_of", self.multiple_of)
        put("tokens", _positive_ints("tokens", self.tokens))
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise UsageError(f"dtype must be a floating-point torch.dtype, got {self.dtype!r}")
        try:
            put("device", torch.device(self.device))
        except (RuntimeError, TypeError):
            raise UsageError(f"device must be a torch.device, got {self.device!r}") from None
        if self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"device must be cpu or cuda, got {str(self.device)!r}")
        put("providers", _names("provider", self.providers,
                                lambda p: check_choice("provider", p, PROVIDERS)))
        check_positive_int("repeats", self.repeats)
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise UsageError(f"warmup must be a non-negative integer, got {self.warmup!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.elementwise, bool):
            raise UsageError(f"elementwise must be True or False, got {self.elementwise!r}")

    def hiddens(self, variant: str) -> list[int]:
        """The hidden sizes ``variant`` is measured at."""
        if self.hidden is not None:
            return list(self.hidden)
        # plain: exactly 4*dim; gated: LLaMA's rule, rounded up to multiple_of
        multiple_of = self.multiple_of if get_variant(variant).gated else 1
        return [default_hidden_dim(variant, self.dim, multiple_of=multiple_of)]

    def progress_steps(self) -> int:
        """How many rounds the run times (what its ``tick`` callback is called for)."""
        shapes = sum(len(self.hiddens(v)) for v in self.variants) * len(self.tokens)
        return shapes * self.repeats * (2 if self.elementwise else 1)

    def to_json(self) -> dict:
        """The ``config`` object of ``bench.json``."""
        return {
            "variants": list(self.variants),
            "dim": self.dim,
            "hidden": {v: self.hiddens(v) for v in self.variants},
            "multiple_of": self.multiple_of,
            "tokens": list(self.tokens),
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "providers": list(self.providers),
            "repeats": self.repeats,
            "warmup": self.warmup,
            "seed": self.seed,
            "elementwise": self.elementwise,
        }
