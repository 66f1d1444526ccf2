"""Swish's β, checked on a grid: results.json's ``measured.swish_beta``.

``swish_β(x) = x·σ(βx)`` (:func:`ffnlab.activations.swish`). The limits the sources state:

* β → 0: ``σ(βx) → 1/2``, so ``swish_β(x) → x/2``, a linear function; the gap is
  ``|x|·|σ(βx) − 1/2| <= β·x²/4``, 0.009 at β = 1e-3 on ``[-6, 6]``.
* β → ∞: ``σ(βx)`` tends to the step function, so ``swish_β → relu``; the gap is
  ``|x|·σ(−β|x|)``, largest at ``β|x| ≈ 1.28`` where it is ``0.2785 / β``.
* some β makes it close to GELU (``x·Φ(x)``, :func:`ffnlab.activations.gelu`): the β that
  minimises ``max |swish_β − gelu|`` on the grid, found by a scan of β in [0.5, 3] (step 0.01)
  and a refinement around the best (step 1e-4).

Everything is float64 on ``GRID_POINTS`` evenly spaced points of ``[-6, 6]`` (step 0.001):
pure maths, the same on every machine, so the verdict has no interval and is never
inconclusive. The tolerances are fixed here, before looking at the result.
"""

from __future__ import annotations

import torch

from ...activations import QUICK_GELU_BETA, gelu, relu, swish

__all__ = ["BETA_LARGE", "BETA_SMALL", "GELU_TOL", "GRID", "LINEAR_TOL", "RELU_TOL", "measure"]

GRID = (-6.0, 6.0)
GRID_POINTS = 12001

BETA_SMALL = 1e-3
LINEAR_TOL = 0.01
"""Largest ``max |swish_β − x/2|`` at β = 1e-3 that counts as linear: 0.33 % of the linear
function's largest value on the grid (3); the bound β·36/4 = 0.009 fits under it."""

BETA_LARGE = 50.0
RELU_TOL = 0.01
"""Largest ``max |swish_β − relu|`` at β = 50 that counts as ReLU (the exact value is
0.2785 / 50 = 0.0056)."""

GELU_TOL = 0.05
"""Largest ``max |swish_β − gelu|`` on the grid that counts as close: a quarter of SiLU's
(β = 1) gap of 0.19, and 6 % of gelu(1) = 0.84."""


def _grid() -> torch.Tensor:
    return torch.linspace(GRID[0], GRID[1], GRID_POINTS, dtype=torch.float64)


def _gelu_gaps(x: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """``max_x |swish_β(x) − gelu(x)|`` for each β of ``betas``."""
    return (swish(x[None, :], betas[:, None]) - gelu(x)[None, :]).abs().amax(dim=1)


def measure() -> dict:
    """The three limits on the grid, with the tolerances and whether each holds.

    Returns ``{"grid", "points", "linear": {"beta", "max_gap", "relative_gap", "tol", "holds"},
    "relu": {"beta", "max_gap", "tol", "holds"}, "gelu": {"best_beta", "max_gap", "tol",
    "holds", "gap_at_beta_1", "gap_at_quick_gelu_beta", "quick_gelu_beta"}}``; ``relative_gap``
    is the gap over the largest ``|x/2|`` on the grid.
    """
    x = _grid()
    lin = (swish(x, BETA_SMALL) - x / 2).abs().max().item()
    lin_rel = lin / (x / 2).abs().max().item()
    rel = (swish(x, BETA_LARGE) - relu(x)).abs().max().item()
    coarse = torch.arange(0.5, 3.0 + 1e-9, 0.01, dtype=torch.float64)
    b0 = coarse[_gelu_gaps(x, coarse).argmin()].item()
    fine = torch.arange(b0 - 0.01, b0 + 0.01 + 1e-12, 1e-4, dtype=torch.float64)
    gaps = _gelu_gaps(x, fine)
    k = int(gaps.argmin())
    best, gap = fine[k].item(), gaps[k].item()
    at = _gelu_gaps(x, torch.tensor([1.0, QUICK_GELU_BETA], dtype=torch.float64)).tolist()
    return {
        "grid": list(GRID), "points": GRID_POINTS,
        "linear": {"beta": BETA_SMALL, "max_gap": lin, "relative_gap": lin_rel,
                   "tol": LINEAR_TOL, "holds": lin <= LINEAR_TOL},
        "relu": {"beta": BETA_LARGE, "max_gap": rel, "tol": RELU_TOL, "holds": rel <= RELU_TOL},
        "gelu": {"best_beta": best, "max_gap": gap, "tol": GELU_TOL, "holds": gap <= GELU_TOL,
                 "gap_at_beta_1": at[0], "quick_gelu_beta": QUICK_GELU_BETA,
                 "gap_at_quick_gelu_beta": at[1]},
    }
