"""How a paired difference moves with model size: a straight line in log2(FFN parameters).

Every seed at every size gives one point ``(x, d)``: ``x = log2(FFN parameters per layer)``,
``d = bpb_a − bpb_b`` of that seed's paired runs. An ordinary least-squares line ``d = α + β x``
through all of them gives:

* the **slope** ``β``, the change of the difference per doubling of FFN parameters, with its
  Student-t 95 % interval ``β ± t(0.975, N−2) · s / sqrt(Sxx)`` (``s²`` the residual variance);
  a negative slope means ``a``'s advantage grows with size;
* the **crossing**, the size where the line crosses zero, ``x0 = −α / β``, with Fieller's 95 %
  interval: the ``x`` where zero lies inside the line's own 95 % band,
  ``(α + β x)² <= t² s² (1/N + (x − x̄)² / Sxx)``. When the slope is not distinguishable from zero
  that set is unbounded and the crossing has no interval (None). A crossing outside the measured
  sizes is an extrapolation and is marked so.

Sizes are reported as FFN parameters (``2 ** x``). The seeds of different sizes train different
models, so the points are treated as independent; within one size they are the comparison's own
paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .student import t_quantile_975

__all__ = ["Trend", "fit_trend"]


@dataclass(frozen=True)
class Trend:
    """The fitted line of one comparison over sizes (see the module docstring)."""

    a: str
    b: str
    points: tuple[tuple[float, float], ...]  # (FFN parameters, a − b) per seed and size
    slope: float
    slope_ci95: tuple[float, float]
    intercept: float
    crossing: float | None  # FFN parameters where the line crosses 0 (None: flat line)
    crossing_ci95: tuple[float, float] | None  # None: unbounded (slope not resolved)

    @property
    def sizes(self) -> tuple[float, ...]:
        return tuple(sorted({p for p, _ in self.points}))

    @property
    def extrapolated(self) -> bool:
        """The crossing lies outside the measured sizes (or there is none)."""
        return self.crossing is None or not (self.sizes[0] <= self.crossing <= self.sizes[-1])

    def at(self, params: float) -> float:
        """The fitted difference at ``params`` FFN parameters."""
        return self.intercept + self.slope * math.log2(params)

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "n_points": len(self.points),
                "points": [list(p) for p in self.points],
                "sizes": list(self.sizes), "slope_per_doubling": self.slope,
                "ci95": list(self.slope_ci95), "intercept": self.intercept,
                "crossing_params": self.crossing,
                "crossing_ci95": None if self.crossing_ci95 is None else list(self.crossing_ci95),
                "extrapolated": self.extrapolated}


def fit_trend(a: str, b: str, points: Sequence[tuple[float, float]]) -> Trend:
    """The line through ``points`` ``(FFN parameters, a − b)``; ValueError with fewer than 3
    points or fewer than 2 distinct sizes."""
    pts = tuple((float(p), float(d)) for p, d in points)
    xs = [math.log2(p) for p, _ in pts]
    ys = [d for _, d in pts]
    n = len(pts)
    if n < 3 or len(set(xs)) < 2:
        raise ValueError(f"a trend needs 3 or more points at 2 or more sizes, got {n} at "
                         f"{len(set(xs))}")
    mx, my = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    beta = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    alpha = my - beta * mx
    sse = math.fsum((y - alpha - beta * x) ** 2 for x, y in zip(xs, ys, strict=True))
    s2 = sse / (n - 2)
    t = t_quantile_975(n - 2)
    half = t * math.sqrt(s2 / sxx)
    crossing = None if beta == 0 else _params(-alpha / beta)
    return Trend(a, b, pts, beta, (beta - half, beta + half), alpha, crossing,
                 _fieller(alpha, beta, mx, sxx, s2, n, t))


def _fieller(alpha: float, beta: float, mx: float, sxx: float, s2: float, n: int,
             t: float) -> tuple[float, float] | None:
    """Fieller's interval of ``−α/β`` in parameters, or None when it is unbounded."""
    k = t * t * s2
    qa = beta * beta - k / sxx  # > 0 exactly when the slope's interval excludes 0
    if not qa > 0:
        return None
    qb = 2 * (alpha * beta + k * mx / sxx)
    qc = alpha * alpha - k * (1 / n + mx * mx / sxx)
    disc = qb * qb - 4 * qa * qc
    if disc < 0:  # cannot happen when qa > 0 (the line's own x0 satisfies it); guard rounding
        return None
    r = math.sqrt(disc)
    lo, hi = sorted(((-qb - r) / (2 * qa), (-qb + r) / (2 * qa)))
    return (_params(lo), _params(hi))


def _params(x: float) -> float:
    """``2 ** x`` without overflow (a crossing 2^1000 parameters away is simply infinite)."""
    return math.inf if x > 1000 else 0.0 if x < -1000 else 2.0 ** x
