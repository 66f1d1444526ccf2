"""Choosing each variant's learning rate from tuning runs, so that a verdict is about FFNs and not
about one shared step size.

Every variant is trained on the same log-spaced grid of learning rates (:func:`log_grid`: at
least 3 points, neighbours at most a factor 2 apart) on *tuning seeds*, which the verdicts never
use. :func:`choose_rate` then picks the variant's rate, and :func:`widen` adds a point past an
edge of the grid when the choice sits on it. The verdicts train fresh seeds at each variant's
chosen rate: a rate chosen on the same seeds would flatter the variant that chose it (the
winner's curse).

The choice: the rate with the lowest mean bits per byte over the tuning seeds, where rates whose
mean lies within ``tie`` of that lowest mean count as tied, and a tie goes to the rate nearest
(in log scale) to ``anchor`` (the shared rate every variant would otherwise use; then the
smaller rate). Without the tie rule two variants with the same best rate pick different grid
points by tuning noise alone, and fresh seeds then measure the gap between two rates as if it
were a gap between two FFNs; with it, such variants land on the same point. A simulation of the
whole procedure (tests/lab/stats/test_tuning.py) shows it declares a winner between two equal
variants at no more than the nominal 5 % rate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ...errors import UsageError

__all__ = ["MAX_FACTOR", "MAX_WIDEN", "log_grid", "check_grid", "widen", "RateChoice",
           "choose_rate"]

MAX_FACTOR = 2.0
"""Neighbouring grid points are at most this factor apart (a coarser grid misses the best rate
by more than the lab resolves: a factor 2 off the best rate cost 0.02-0.08 bpb in the Muon
sweep of docs/lab.md)."""

MAX_WIDEN = 2
"""A grid is widened past an edge at most twice per variant."""


def check_grid(grid: Iterable[float], *, what: str = "--lr-grid") -> tuple[float, ...]:
    """``grid`` sorted, as floats, if it has at least 3 distinct positive finite rates with
    neighbours at most :data:`MAX_FACTOR` apart; else a UsageError naming the problem."""
    try:
        rates = sorted({float(r) for r in grid})
    except (TypeError, ValueError):
        raise UsageError(f"{what}: learning rates are numbers, got {list(grid)!r}") from None
    bad = [r for r in rates if not (math.isfinite(r) and r > 0)]
    if bad:
        raise UsageError(f"{what}: a learning rate must be a positive number, got {bad[0]!r}")
    if len(rates) < 3:
        raise UsageError(f"{what}: a tuning grid needs at least 3 learning rates, got "
                         f"{len(rates)} ({', '.join(f'{r:g}' for r in rates) or 'none'})")
    gaps = [(a, b) for a, b in zip(rates, rates[1:], strict=False) if b / a > MAX_FACTOR * (1 + 1e-9)]
    if gaps:
        a, b = gaps[0]
        raise UsageError(f"{what}: neighbouring learning rates must be at most a factor "
                         f"{MAX_FACTOR:g} apart, {a:g} and {b:g} are {b / a:.3g}x apart")
    return tuple(rates)


def log_grid(center: float, *, points: int = 3, factor: float = MAX_FACTOR) -> tuple[float, ...]:
    """``points`` rates spaced by ``factor`` in log scale, centred on ``center``
    (``log_grid(0.024) == (0.012, 0.024, 0.048)``)."""
    half = (points - 1) / 2
    return check_grid([center * factor ** (i - half) for i in range(points)])


def widen(grid: Sequence[float], chosen: float, *, factor: float = MAX_FACTOR) -> tuple[float, ...]:
    """``grid`` with one more point past the edge ``chosen`` sits on (unchanged when it sits
    inside)."""
    rates = check_grid(grid)
    if chosen == rates[0]:
        return (rates[0] / factor, *rates)
    if chosen == rates[-1]:
        return (*rates, rates[-1] * factor)
    return rates


@dataclass(frozen=True)
class RateChoice:
    """The chosen rate of one variant and what it rests on: ``means`` (rate -> mean bpb over
    the tuning seeds present at every rate), ``at_edge`` (the best rate is the grid's smallest
    or largest)."""

    chosen: float
    grid: tuple[float, ...]
    means: dict[float, float] = field(default_factory=dict)
    seeds: tuple[int, ...] = ()

    @property
    def at_edge(self) -> bool:
        return self.chosen in (self.grid[0], self.grid[-1])

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "chosen": self.chosen, "at_edge": self.at_edge,
                "means": [[lr, m if math.isfinite(m) else None]
                          for lr, m in sorted(self.means.items())],
                "seeds": list(self.seeds)}

    @classmethod
    def from_dict(cls, d: Mapping) -> RateChoice:
        """The inverse of :meth:`to_dict`."""
        return cls(float(d["chosen"]), tuple(float(r) for r in d["grid"]),
                   {float(lr): math.inf if m is None else float(m) for lr, m in d.get("means") or []},
                   tuple(int(s) for s in d.get("seeds") or []))


def _vertex(x: Sequence[float], y: Sequence[float]) -> float:
    """The abscissa of the lowest point of the parabola through three points (``x`` increasing,
    the middle ``y`` the lowest), within ``[x[0], x[2]]``."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    d0, d2 = (y0 - y1) / (x0 - x1), (y2 - y1) / (x2 - x1)  # slopes from the middle point
    curvature = (d2 - d0) / (x2 - x0)
    if not curvature > 0:
        return x1
    v = (x0 + x1) / 2 - d0 / (2 * curvature)  # where the parabola's slope is zero
    return min(max(v, x0), x2)


def choose_rate(bpb: Mapping[float, Mapping[int, float | None]], *,
                digits: int = 3) -> RateChoice:
    """The rate to train a variant at, from ``bpb[lr][seed]`` (final validation bits per byte
    of its tuning runs; None or NaN: the run diverged, which makes that rate the worst).

    Means are taken over the seeds every rate has (paired: a seed gives every rate the same
    batches and initialisation). The best grid rate at an edge is the choice itself
    (``at_edge``: widen the grid and choose again); inside the grid, the choice is the lowest
    point of the parabola in log(lr) through the best rate and its two neighbours, rounded to
    ``digits`` significant digits. ValueError when ``bpb`` has no rate or no seed common to all.
    """
    rates = tuple(sorted(float(r) for r in bpb))
    if not rates:
        raise ValueError("no tuning runs to choose a learning rate from")
    common = set.intersection(*(set(bpb[r]) for r in rates))
    if not common:
        raise ValueError("the tuning runs share no seed across the learning rates")
    seeds = tuple(sorted(common))

    def mean(r: float) -> float:
        vals = [bpb[r][s] for s in seeds]
        if any(v is None or not math.isfinite(v) for v in vals):
            return math.inf
        return math.fsum(vals) / len(vals)

    means = {r: mean(r) for r in rates}
    i = min(range(len(rates)), key=lambda j: (means[rates[j]], rates[j]))
    if math.isinf(means[rates[i]]) or i in (0, len(rates) - 1):
        return RateChoice(rates[i], rates, means, seeds)
    three = rates[i - 1 : i + 2]
    if any(math.isinf(means[r]) for r in three):  # a diverged neighbour: no curve to fit
        return RateChoice(rates[i], rates, means, seeds)
    v = _vertex([math.log(r) for r in three], [means[r] for r in three])
    chosen = float(f"{math.exp(v):.{digits}g}")
    return RateChoice(chosen, rates, means, seeds)
