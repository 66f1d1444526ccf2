"""What the ops layer says about backends and elementwise engines, asked in one place.

The bench reports which elementwise engine ran inside the fused op (``aten``, ``inductor`` or
``triton``) and skips a backend that cannot run here with the ops layer's own reason. Each
question is one small function here, so the rest of the bench does not depend on how
:mod:`ffnlab.ops.dispatch` spells its answers.
"""

from __future__ import annotations

from types import ModuleType

import torch

from ..ops.dispatch import plan, why_not
from ..ops.function import elementwise_engine

__all__ = ["fused_engine", "fused_engine_module", "unsupported_reason"]

# The dispatcher's names for the engines -> the names bench rows use.
_ENGINE_NAMES = {"torch": "aten"}


def unsupported_reason(backend: str, x: torch.Tensor, *,
                       activation: str | None = None) -> str | None:
    """Why FeedForward ``backend`` cannot run on tensors like ``x``: a sentence, or None."""
    return why_not(backend, x, activation=activation)


def _planned_engine(backend: str, x: torch.Tensor, **kw) -> str | None:
    """The dispatcher's name of the engine ``backend`` runs on ``x`` (None: reference)."""
    return plan(backend, x, **kw)[1]


def fused_engine(backend: str, x: torch.Tensor, *, activation: str | None = None,
                 hidden: int | None = None, gated: bool | None = None) -> str | None:
    """The elementwise engine (``aten``, ``inductor``, ``triton``) that ``backend`` runs on
    ``x [tokens, dim]`` with ``hidden`` units; None for the reference backend."""
    name = _planned_engine(backend, x, activation=activation, hidden=hidden, gated=gated)
    return None if name is None else _ENGINE_NAMES.get(name, name)


def fused_engine_module(h1: torch.Tensor) -> ModuleType:
    """The engine module the fused op picks for ``h1 [N, hidden]`` on its device, by size
    (an inductor engine delegates, per activation and direction, to ATen where that is faster)."""
    return elementwise_engine(_planned_engine("fused", h1, hidden=h1.shape[-1]))
