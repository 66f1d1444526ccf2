"""What the ops layer says about backends and elementwise engines, asked in one place.

The bench reports which elementwise engine ran inside the fused op (``aten``, ``inductor`` or
``triton``) and skips a backend that cannot run here with the ops layer's own reason. Each
question is one small function here, so the rest of the bench does not depend on how
:mod:`ffnlab.ops.dispatch` and :mod:`ffnlab.ops.engines` spell their answers.
"""

from __future__ import annotations

import torch

from ..ops.dispatch import backend_unsupported_reasons, plan
from ..ops.engines import TRITON, Engine, select

__all__ = ["TRITON", "Engine", "fused_engine", "picked_engine", "unsupported_reason"]


def unsupported_reason(backend: str, x: torch.Tensor, *,
                       activation: str | None = None) -> str | None:
    """Why FeedForward ``backend`` cannot run on tensors like ``x``: a sentence, or None."""
    return "; ".join(backend_unsupported_reasons(backend, x, activation=activation)) or None


def fused_engine(backend: str, x: torch.Tensor, *, activation: str | None = None,
                 hidden: int | None = None, gated: bool | None = None) -> str | None:
    """The elementwise engine (``aten``, ``inductor``, ``triton``) that ``backend`` runs on
    ``x [tokens, dim]`` with ``hidden`` units; None for the reference backend."""
    return plan(backend, x, activation=activation, hidden_dim=hidden, gated=gated)[1]


def picked_engine(h1: torch.Tensor, h3: torch.Tensor | None, activation: str,
                  direction: str) -> Engine:
    """The engine the fused op's table picks for ``h1 [N, hidden]`` (``h3`` the value branch
    or None) in ``direction`` (``"forward"`` or ``"backward"``)."""
    return select("auto", h1, hidden_dim=h1.shape[-1], activation=activation,
                  gated=h3 is not None, direction=direction)
