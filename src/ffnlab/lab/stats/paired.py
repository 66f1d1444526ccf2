"""The lab's one statistic: the paired difference ``a − b`` of two variants over seeds.

One seed gives both runs the same batches and the same non-FFN initialisation, so most
seed-to-seed variation cancels in ``d_s = bpb_a(s) − bpb_b(s)``. Over the ``n`` seeds where both
runs finished:

    mean(d) ± t_{0.975, n−1} · std(d) / sqrt(n)        (std with ddof = 1, n ≥ 2)

is the Student-t 95 % interval of the mean difference. Lower bits per byte is better, so a
difference below 0 means ``a`` is better. :class:`PairedDiff` computes every number; a
:class:`~ffnlab.lab.stats.comparisons.Comparison` adds the resolution it is judged at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ...numbers import as_float
from ..verdicts import DEFAULT_RESOLUTION, PairVerdict
from .student import t_quantile_975
from .table import good_runs, ranking, variants_by_name

__all__ = ["PairedDiff", "Comparison", "verdict_for", "paired_difference", "paired_vs_baseline",
           "best_variant"]


@dataclass(frozen=True)
class PairedDiff:
    """Per-seed differences ``bpb[a] − bpb[b]`` over the seeds where both runs are usable;
    ``dropped``: seeds present for one side only, or diverged."""

    a: str
    b: str
    seeds: tuple[int, ...] = ()
    diffs: tuple[float, ...] = ()
    dropped: tuple[int, ...] = field(default=(), kw_only=True)

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return math.fsum(self.diffs) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof 1) of the differences; NaN below 2 seeds."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((d - m) ** 2 for d in self.diffs) / (self.n - 1))

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def half_width(self) -> float:
        """Half the 95 % interval's width (NaN with fewer than 2 seeds)."""
        return t_quantile_975(self.n - 1) * self.sem if self.n >= 2 else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        """Student-t 95 % interval of the mean difference (NaN with fewer than 2 seeds)."""
        h = self.half_width
        return (self.mean - h, self.mean + h)

    @property
    def min_max(self) -> tuple[float, float]:
        return (min(self.diffs), max(self.diffs)) if self.diffs else (math.nan, math.nan)

    @property
    def distinguishable(self) -> bool:
        """The 95 % interval excludes zero, with at least 2 paired seeds."""
        if self.n < 2:
            return False
        if self.sem > 0:
            lo, hi = self.ci95
            return hi < 0 or lo > 0
        return self.mean != 0

    @property
    def caution(self) -> str:
        if self.n == 0:
            return "no seed where both runs finished"
        if self.n == 1:
            return "one seed only: seed noise cannot be estimated"
        if self.n < 3:
            return f"only {self.n} seeds: the spread itself is very uncertain"
        return ""

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        mn, mx = self.min_max
        return {"a": self.a, "b": self.b, "n": self.n, "seeds": list(self.seeds),
                "diffs": list(self.diffs), "dropped": list(self.dropped), "mean": self.mean,
                "std": self.std, "sem": self.sem, "ci95": [lo, hi], "min": mn, "max": mx,
                "distinguishable": self.distinguishable, "caution": self.caution}


def verdict_for(ci95: tuple[float, float], resolution: float) -> PairVerdict:
    """The verdict of an interval ``(low, high)`` of ``a − b`` at ``resolution``: equivalent
    when it lies within ±resolution (checked first: ``[+0.002, +0.015]`` at 0.02 is a real but
    negligible gap), a / b better when it lies below / above 0, else unresolved."""
    lo, hi = ci95
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return PairVerdict.UNRESOLVED
    if -resolution <= lo and hi <= resolution:
        return PairVerdict.EQUIVALENT
    if hi < 0:
        return PairVerdict.A_BETTER
    if lo > 0:
        return PairVerdict.B_BETTER
    return PairVerdict.UNRESOLVED


@dataclass(frozen=True)
class Comparison(PairedDiff):
    """A :class:`PairedDiff` judged at ``resolution`` (bits per byte): results.json's
    ``comparisons`` items."""

    resolution: float = DEFAULT_RESOLUTION

    @property
    def verdict(self) -> PairVerdict:
        return verdict_for(self.ci95, self.resolution)

    @property
    def resolved(self) -> bool:
        """Whether the interval is as narrow as asked (half-width <= resolution) and decided."""
        h = self.half_width
        return math.isfinite(h) and h <= self.resolution and self.verdict != PairVerdict.UNRESOLVED

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        return {"a": self.a, "b": self.b, "n": self.n, "seeds": list(self.seeds),
                "diffs": list(self.diffs), "mean": self.mean, "std": self.std,
                "ci95": [lo, hi], "half_width": self.half_width,
                "verdict": self.verdict.value, "resolved": self.resolved}


def paired_difference(results: Mapping, a: str, b: str) -> PairedDiff:
    """Paired ``bpb[a] − bpb[b]`` per seed (both variants must be in ``results``)."""
    by = variants_by_name(results)
    ra, rb = good_runs(by[a]), good_runs(by[b])
    seeds = tuple(sorted(set(ra) & set(rb)))
    all_seeds = {r.get("seed") for v in (by[a], by[b]) for r in v.get("runs") or []}
    dropped = tuple(sorted(s for s in all_seeds if isinstance(s, int) and s not in seeds))
    return PairedDiff(a, b, seeds, tuple(ra[s] - rb[s] for s in seeds), dropped=dropped)


def paired_vs_baseline(results: Mapping, baseline: str = "relu") -> dict[str, PairedDiff]:
    """name -> paired difference against ``baseline`` ({} when the baseline is absent)."""
    by = variants_by_name(results)
    if baseline not in by:
        return {}
    return {n: paired_difference(results, n, baseline) for n in by if n != baseline}


def best_variant(results: Mapping) -> tuple[str | None, str | None, PairedDiff | None]:
    """(best, runner-up, paired best − runner-up) by ``val_bpb_mean``; Nones where absent."""
    ranked = [v["name"] for v in ranking(results)
              if not math.isnan(as_float(v.get("val_bpb_mean")))]
    if not ranked:
        return None, None, None
    if len(ranked) == 1:
        return ranked[0], None, None
    return ranked[0], ranked[1], paired_difference(results, ranked[0], ranked[1])
