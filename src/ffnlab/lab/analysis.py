"""Statistics over a lab ``results.json`` dict (the claims are checked in ``claims.py``).

Pure functions: they read the dict that ``ffnlab compare`` writes (schema in docs/lab.md) and
never touch files or the training code. Conventions:

* bits per byte (bpb): lower is better; a difference ``a - b < 0`` means ``a`` is better.
* Differences between two variants are **paired by seed**: the same seed gives both runs the
  same batches and the same non-FFN initialisation, so most seed-to-seed variation cancels
  in ``bpb_a(seed) - bpb_b(seed)``. The spread reported is the sample std (ddof=1) of those
  per-seed differences, with a Student-t 95 % interval and the min/max.
* "Distinguishable from seed noise" means that the Student-t 95 % interval of the mean
  difference excludes zero, with at least 2 paired seeds (the same interval the comparisons and
  the report show; ``2 * std_error`` would call more gaps real than that interval does with few
  seeds); fewer than 3 seeds earns a caution, since a std from 2 numbers is itself very loose.
* Timings are single medians without a spread, so relative differences under
  :data:`TIMING_NOISE` are called "within noise".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..numbers import as_float

__all__ = [
    "TIMING_NOISE", "PairedDiff",
    "check_results", "variants_by_name", "ranking", "paired_difference",
    "paired_vs_baseline", "best_variant", "missing_runs",
    "t_quantile_975", "good_runs",
]

TIMING_NOISE = 0.05
"""Relative timing difference treated as noise: medians of repeated CPU timings on a shared
machine commonly move by a few percent between runs, so 5 % is the smallest gap we call real."""

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value for ``df`` degrees of freedom.

    The table for 1-30 (3 decimals); past 30 the Cornish-Fisher expansion in 1/df to the third
    order, which is within 1e-4 of the exact quantile there (2.0211 at 40, 2.0003 at 60).
    """
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = _Z975, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3))


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def check_results(results: Any) -> dict:
    """``results`` if it looks like a lab results dict, else a ValueError naming what is wrong."""
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a JSON object, got {type(results).__name__}")
    variants = results.get("variants")
    if not isinstance(variants, list):
        raise ValueError("results has no 'variants' list")
    for i, v in enumerate(variants):
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
            raise ValueError(f"results variants[{i}] is not an object with a 'name'")
    return dict(results)


def variants_by_name(results: Mapping) -> dict[str, Mapping]:
    return {v["name"]: v for v in results.get("variants", [])}


def ranking(results: Mapping) -> list[Mapping]:
    """Variants sorted by ``val_bpb_mean`` (best first); NaN / diverged ones last, by name."""
    def key(v):
        m = as_float(v.get("val_bpb_mean"))
        return (math.isnan(m), m if not math.isnan(m) else 0.0, v["name"])
    return sorted(results.get("variants", []), key=key)


def good_runs(v: Mapping) -> dict[int, float]:
    """seed -> final val bpb for the runs that finished with a finite value and did not diverge."""
    out = {}
    for r in v.get("runs") or []:
        bpb = as_float(r.get("val_bpb"))
        if r.get("diverged") or math.isnan(bpb) or not isinstance(r.get("seed"), int):
            continue
        out[r["seed"]] = bpb
    return out


@dataclass(frozen=True)
class PairedDiff:
    """Per-seed differences ``bpb[a] - bpb[b]`` over the seeds where both runs are usable."""

    a: str
    b: str
    seeds: tuple[int, ...] = ()
    diffs: tuple[float, ...] = ()
    dropped: tuple[int, ...] = ()  # seeds present for one side only, or diverged

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        return _std(self.diffs)

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        """Student-t 95 % interval of the mean difference (NaN with fewer than 2 seeds)."""
        h = t_quantile_975(self.n - 1) * self.sem
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


def paired_difference(results: Mapping, a: str, b: str) -> PairedDiff:
    """Paired ``bpb[a] - bpb[b]`` per seed (both variants must be in ``results``)."""
    by = variants_by_name(results)
    ra, rb = good_runs(by[a]), good_runs(by[b])
    seeds = tuple(sorted(set(ra) & set(rb)))
    all_seeds = {r.get("seed") for v in (by[a], by[b]) for r in v.get("runs") or []}
    dropped = tuple(sorted(s for s in all_seeds if isinstance(s, int) and s not in seeds))
    return PairedDiff(a, b, seeds, tuple(ra[s] - rb[s] for s in seeds), dropped)


def paired_vs_baseline(results: Mapping, baseline: str = "relu") -> dict[str, PairedDiff]:
    """name -> paired difference against ``baseline`` ({} when the baseline is absent)."""
    by = variants_by_name(results)
    if baseline not in by:
        return {}
    return {n: paired_difference(results, n, baseline) for n in by if n != baseline}


def best_variant(results: Mapping) -> tuple[str | None, str | None, PairedDiff | None]:
    """(best, runner-up, paired best − runner-up) by ``val_bpb_mean``; Nones where absent."""
    ranked = [v["name"] for v in ranking(results) if not math.isnan(as_float(v.get("val_bpb_mean")))]
    if not ranked:
        return None, None, None
    if len(ranked) == 1:
        return ranked[0], None, None
    return ranked[0], ranked[1], paired_difference(results, ranked[0], ranked[1])


def missing_runs(results: Mapping) -> dict[str, list]:
    """``{"missing": [(variant, seed)], "diverged": [(variant, seed)], "absent": [variant]}``.

    Expected seeds come from ``config.seeds``, expected variants from ``config.variants``; the
    results' own ``missing`` list (unfinished runs, when recorded) is merged in.
    """
    cfg = results.get("config") or {}
    seeds = [s for s in cfg.get("seeds") or [] if isinstance(s, int)]
    by = variants_by_name(results)
    missing, diverged = [], []
    for name, v in by.items():
        have = {r.get("seed") for r in v.get("runs") or []}
        missing += [(name, s) for s in seeds if s not in have]
        diverged += [(name, r.get("seed")) for r in v.get("runs") or []
                     if r.get("diverged") or math.isnan(as_float(r.get("val_bpb")))]
    wanted = [n for n in cfg.get("variants") or [] if isinstance(n, str)]
    absent = [n for n in wanted if n not in by]
    missing += [(n, s) for n in absent for s in seeds]
    # The training side also lists the runs it did not finish, as {"variant", "seed"} objects.
    for m in results.get("missing") or []:
        if isinstance(m, Mapping) and isinstance(m.get("variant"), str):
            pair = (m["variant"], m.get("seed"))
            if pair not in missing:
                missing.append(pair)
            if m["variant"] not in by and m["variant"] not in absent:
                absent.append(m["variant"])
    return {"missing": missing, "diverged": diverged, "absent": absent}
