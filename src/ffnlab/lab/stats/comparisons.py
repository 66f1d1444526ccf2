"""Paired comparisons with a resolution: results.json's ``comparisons``.

A comparison of variants ``a`` and ``b`` is the set of per-seed differences
``d_s = bpb_a(s) - bpb_b(s)`` over the seeds where both runs finished (paired: one seed gives both
runs the same batches and the same non-FFN initialisation). Its 95 % interval is Student-t:

    mean(d) +- t_{0.975, n-1} * std(d) / sqrt(n)        (std with ddof = 1, n >= 2)

and its verdict, against the resolution ``r`` (bits per byte) the run asked for:

* ``"equivalent"``: the whole interval lies inside ``[-r, +r]`` (no difference of size ``r``
  or more is compatible with the data; this is an answer, not a shrug);
* ``"a better"`` / ``"b better"``: the interval lies below / above zero;
* ``"unresolved"``: neither (the interval straddles zero and reaches past ``r``), or fewer than
  two paired seeds.

Equivalence is checked first: an interval such as ``[+0.002, +0.015]`` at ``r = 0.02`` is a
real but practically negligible gap, reported as ``equivalent`` with its interval.

The pairs compared (:func:`comparison_pairs`): every variant against ``relu``, every gated
variant against the plain variant with the same activation (``swiglu`` vs ``swish``, ...), which
have equal FFN parameters by construction, and every mixture of experts against its dense
variant (``moe:swiglu:8x2`` vs ``swiglu``: equal active FFN parameters, router aside).

:func:`seeds_needed` is what adaptive seeding asks: how many paired seeds a spread ``std`` needs
for a half-width of at most ``r``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..names import BASELINE, GATED_TWINS, is_moe, moe_base
from .paired import Comparison, paired_difference, verdict_for
from .student import t_quantile_975
from .table import variants_by_name

__all__ = ["BASELINE", "GATED_TWINS", "Comparison", "comparison_pairs", "verdict_for", "compare",
           "comparisons", "seeds_needed"]


def comparison_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """``(a, b)`` pairs to compare among ``names``: each vs relu, then each gated vs its twin,
    then each MoE vs its dense variant."""
    present = list(dict.fromkeys(names))
    pairs: list[tuple[str, str]] = []
    if BASELINE in present:
        pairs += [(n, BASELINE) for n in present if n != BASELINE]
    pairs += [(g, p) for g, p in GATED_TWINS.items()
              if g in present and p in present and (g, p) not in pairs]
    pairs += [(m, base) for m in present if is_moe(m)
              if (base := moe_base(m)) in present and (m, base) not in pairs]
    return pairs


def compare(results: Mapping, a: str, b: str, resolution: float) -> Comparison:
    """The paired comparison ``a - b`` over the finished seeds of both in ``results``."""
    pd = paired_difference(results, a, b)
    return Comparison(a, b, pd.seeds, pd.diffs, float(resolution), dropped=pd.dropped)


def comparisons(results: Mapping, resolution: float) -> list[Comparison]:
    """Every pair of :func:`comparison_pairs` among the variants of ``results``."""
    names = list(variants_by_name(results))
    return [compare(results, a, b, resolution) for a, b in comparison_pairs(names)]


def seeds_needed(std: float, resolution: float, *, at_least: int = 2, cap: int = 1000) -> int:
    """The smallest ``n >= at_least`` with ``t_{0.975,n-1} * std / sqrt(n) <= resolution``
    (``cap`` when none up to it; ``at_least`` when ``std`` is 0)."""
    if not (resolution > 0):
        raise ValueError(f"resolution must be positive, got {resolution}")
    if not math.isfinite(std):
        return cap
    n = max(2, at_least)
    while n < cap and t_quantile_975(n - 1) * std / math.sqrt(n) > resolution:
        n += 1
    return n
