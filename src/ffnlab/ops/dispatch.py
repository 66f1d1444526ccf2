"""Choose and run an FFN backend.

Backends are tried in order for ``backend="auto"``; the first whose constraints hold runs, and
the reference is always last. Forcing a backend that cannot run raises a clear error.
"""

from __future__ import annotations

import torch

from ..errors import check_choice
from .reference import ffn_reference

__all__ = ["BACKENDS", "RECOMPUTE_MODES", "feed_forward", "resolve_backend", "why_not"]

BACKENDS = ("auto", "reference", "fused", "triton")
RECOMPUTE_MODES = ("none", "activation", "full")


def why_not(backend: str, x: torch.Tensor) -> str | None:
    """Why ``backend`` cannot run on ``x`` (a sentence), or None if it can."""
    if backend == "reference":
        return None
    return f"the {backend!r} backend is not implemented yet"


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend that runs for ``backend`` on input ``x``."""
    check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        for candidate in ("triton", "fused"):
            if why_not(candidate, x) is None:
                return candidate
        return "reference"
    reason = why_not(backend, x)
    if reason is not None:
        raise NotImplementedError(f"backend={backend!r} cannot run here: {reason}")
    return backend


def feed_forward(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    b3: torch.Tensor | None = None,
    *,
    activation: str,
    beta: float | torch.Tensor = 1.0,
    backend: str = "auto",
    recompute: str = "activation",
) -> torch.Tensor:
    """Run the FFN with the chosen backend. Shapes as :func:`ffn_reference`."""
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    resolve_backend(backend, x)
    return ffn_reference(x, w1, w2, w3, b1, b2, b3, activation=activation, beta=beta)
