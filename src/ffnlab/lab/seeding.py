"""Adaptive seeding: which (variant, seed) runs a compare invocation needs, round by round.

Round 0 is every variant with the first ``initial`` seeds. After a round has finished, every
comparison (:mod:`ffnlab.lab.comparisons`) whose 95 % interval is wider than the resolution, or
undecided, asks for more paired seeds for both of its variants: as many as its measured spread
needs (:func:`~ffnlab.lab.comparisons.seeds_needed`), at least one more, at most twice what it
has (a spread from few seeds is itself uncertain), and never past ``max_seeds``. Variants that
are resolved get no new seed unless a comparison they are part of needs one.

The plan is a pure function of the finished runs of the earlier rounds, computed from round 0
each time (:func:`plan`): an invocation that was interrupted, or runs on another machine with the
same finished runs, asks for exactly the same runs, so a resumed adaptive run keeps the seeds it
had and adds only what is missing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .comparisons import comparisons, seeds_needed

__all__ = ["SeedPlan", "plan", "next_round"]

Record = Mapping  # a finished run's record: at least "seed", "val_bpb", "diverged"


@dataclass(frozen=True)
class SeedPlan:
    """``counts``: variant -> number of seeds wanted (seeds ``seed0 .. seed0 + count - 1``);
    ``rounds``: rounds computed; ``complete``: every wanted run has finished and no comparison
    asks for more (resolved, or held back by ``max_seeds``)."""

    counts: dict[str, int]
    rounds: int
    complete: bool

    def wanted(self, seed0: int) -> list[tuple[str, int]]:
        return [(v, seed0 + i) for v, n in self.counts.items() for i in range(n)]


def _results_view(counts: Mapping[str, int], seed0: int,
                  finished: Callable[[str, int], Record | None]) -> dict:
    """The part of results.json that the comparisons read, from the finished runs in ``counts``."""
    variants = []
    for v, n in counts.items():
        runs = [r for i in range(n) if (r := finished(v, seed0 + i)) is not None]
        variants.append({"name": v, "runs": [dict(r) for r in runs]})
    return {"variants": variants}


def next_round(counts: Mapping[str, int], seed0: int, finished: Callable[[str, int], Record | None],
               *, resolution: float, max_seeds: int) -> dict[str, int]:
    """The counts after one more round, given that every run of ``counts`` has finished."""
    view = _results_view(counts, seed0, finished)
    new = dict(counts)
    for c in comparisons(view, resolution):
        if c.resolved:
            continue
        have = min(counts[c.a], counts[c.b])
        want = seeds_needed(c.std, resolution, at_least=have + 1, cap=max_seeds)
        want = min(max_seeds, max(have + 1, min(want, 2 * have)))
        for v in (c.a, c.b):
            new[v] = max(new[v], want)
    return new


def plan(variants: Sequence[str], seed0: int, *, initial: int, max_seeds: int,
         resolution: float | None, finished: Callable[[str, int], Record | None]) -> SeedPlan:
    """The runs wanted now: round 0, then one round more for each round that has finished.

    ``finished(variant, seed)`` is the record of a finished run or None. ``resolution`` None
    (or ``max_seeds <= initial``) turns adaptive seeding off: round 0 is the whole plan.
    """
    counts = {v: initial for v in variants}
    rounds = 1
    while True:
        all_done = all(finished(v, seed0 + i) is not None
                       for v, n in counts.items() for i in range(n))
        if not all_done:
            return SeedPlan(counts, rounds, complete=False)
        if resolution is None or max_seeds <= initial:
            return SeedPlan(counts, rounds, complete=True)
        new = next_round(counts, seed0, finished, resolution=resolution, max_seeds=max_seeds)
        if new == counts:
            return SeedPlan(counts, rounds, complete=True)
        counts, rounds = new, rounds + 1
