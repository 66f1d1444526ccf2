"""Adaptive seeding: which (variant, seed) runs a compare invocation needs, round by round.

Round 0 is every variant with the first ``initial`` seeds. After a round has finished, every
comparison (:mod:`ffnlab.lab.stats.comparisons`) whose 95 % interval is wider than the resolution, or
undecided, asks for more paired seeds for both of its variants: as many as its measured spread
needs (:func:`~ffnlab.lab.stats.comparisons.seeds_needed`), at least one more, at most twice what it
has (a spread from few seeds is itself uncertain), and never past ``max_seeds``. Variants that
are resolved get no new seed unless a comparison they are part of needs one.

The plan is a function of the finished runs of the earlier rounds, computed from round 0 each
time (:func:`plan`): an invocation that was interrupted asks for exactly the same runs, so a
resumed adaptive run keeps the seeds it had and adds only what is missing. A time budget may
cut a round short (:func:`trim_round`: the variants of the widest intervals first); that
depends on the machine's speed, so the rounds decided are recorded (``OUT/seeding.json``) and
replayed on resume rather than decided again.

On ``wave`` workers a round whose run count is not a multiple of ``wave`` would leave workers
idle while its last runs finish (half a run's time per odd round on two workers, about 4 % of a
default run over its rounds): :func:`fill_waves` gives the idle slots one more seed each, to the
variants of the widest intervals whose seed pairs up at once with a partner's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ..stats.comparisons import comparison_pairs, comparisons, seeds_needed

__all__ = ["SeedPlan", "plan", "next_round", "trim_round", "fill_waves"]

Record = Mapping  # a finished run's record: at least "seed", "val_bpb", "diverged"


@dataclass(frozen=True)
class SeedPlan:
    """``counts``: variant -> number of seeds wanted (seeds ``seed0 .. seed0 + count - 1``);
    ``rounds``: rounds so far; ``complete``: every wanted run has finished and no round follows;
    ``stopped``: why no round follows (``"resolved"``, ``"max seeds"``, ``"time budget"``,
    ``"fixed"`` when adaptive seeding is off; None while incomplete); ``new_rounds``: rounds
    decided by this call, which the caller records so that a later call replays them."""

    counts: dict[str, int]
    rounds: int
    complete: bool
    stopped: str | None = None
    new_rounds: tuple[dict[str, int], ...] = ()

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
               *, resolution: float, max_seeds: int) -> tuple[dict[str, int], dict[str, float]]:
    """The counts after one more round, given that every run of ``counts`` has finished, and
    each variant's priority: the widest half-width among its comparisons that ask for seeds."""
    view = _results_view(counts, seed0, finished)
    new = dict(counts)
    priority: dict[str, float] = {}
    for c in comparisons(view, resolution):
        if c.resolved:
            continue
        have = min(counts[c.a], counts[c.b])
        want = seeds_needed(c.std, resolution, at_least=have + 1, cap=max_seeds)
        want = min(max_seeds, max(have + 1, min(want, 2 * have)))
        width = float("inf") if math.isnan(c.half_width) else c.half_width  # NaN: 1 seed
        for v in (c.a, c.b):
            if want > new[v]:
                new[v] = want
            if want > counts[v]:
                priority[v] = max(priority.get(v, 0.0), width)
    return new, priority


def trim_round(counts: Mapping[str, int], new: Mapping[str, int], runs: int,
               priority: Mapping[str, float]) -> dict[str, int]:
    """``new`` cut down to at most ``runs`` added runs: one seed at a time, to the variants of
    the widest intervals first (so the seeds that remain still pair up with relu's)."""
    out = dict(counts)
    order = sorted((v for v in new if new[v] > counts[v]), key=lambda v: (-priority.get(v, 0.0), v))
    left = max(0, int(runs))
    while left > 0:
        grew = False
        for v in order:
            if left > 0 and out[v] < new[v]:
                out[v] += 1
                left -= 1
                grew = True
        if not grew:
            break
    return out


def fill_waves(counts: Mapping[str, int], new: Mapping[str, int], wave: int,
               priority: Mapping[str, float], *, max_seeds: int,
               pairs: Sequence[tuple[str, str]]) -> dict[str, int]:
    """``new`` grown until the runs it adds to ``counts`` fill whole waves of ``wave`` runs.

    Each extra seed goes, one per variant, to the variant of highest ``priority`` (then name)
    below ``max_seeds``, preferring one whose next seed is already wanted for a partner in
    ``pairs`` (it pairs up at once); otherwise the seed waits for its partner's in a later
    round. The slot would sit idle anyway, so an extra seed costs no wall time.
    """
    out = dict(new)
    short = -sum(out[v] - counts.get(v, 0) for v in out) % max(1, int(wave))
    partners: dict[str, list[str]] = {v: [] for v in out}
    for a, b in pairs:
        if a in out and b in out:
            partners[a].append(b)
            partners[b].append(a)
    taken: set[str] = set()
    while short > 0:
        free = [v for v in out if v not in taken and out[v] < max_seeds]
        if not free:
            break
        pairable = [v for v in free if any(out[b] > out[v] for b in partners[v])]
        v = min(pairable or free, key=lambda v: (-priority.get(v, 0.0), v))
        out[v] += 1
        taken.add(v)
        short -= 1
    return out


Fit = Callable[[Mapping[str, int], Mapping[str, int], Mapping[str, float]], dict[str, int]]


def plan(variants: Sequence[str], seed0: int, *, initial: int, max_seeds: int,
         resolution: float | None, finished: Callable[[str, int], Record | None],
         recorded: Sequence[Mapping[str, int]] = (), fit: Fit | None = None,
         decide: bool = True, wave: int = 1) -> SeedPlan:
    """The runs wanted now: round 0, the ``recorded`` rounds, then one round more for each
    round that has finished.

    ``finished(variant, seed)`` is the record of a finished run or None. ``resolution`` None
    (or ``max_seeds <= initial``) turns adaptive seeding off: round 0 is the whole plan.
    ``fit(counts, new, priority)`` may cut a new round down (to what a time budget allows); a
    round it cuts to nothing ends the plan with ``stopped="time budget"``. ``wave``: runs that
    train side by side; each new round is filled to whole waves (:func:`fill_waves`).
    """
    counts = {v: initial for v in variants}
    for r in recorded:
        counts = {v: max(n, int(r.get(v, 0))) for v, n in counts.items()}
    rounds, new_rounds = 1 + len(recorded), []
    while True:
        if not all(finished(v, seed0 + i) is not None for v, n in counts.items() for i in range(n)):
            return SeedPlan(counts, rounds, False, None, tuple(new_rounds))
        if resolution is None or max_seeds <= initial:
            return SeedPlan(counts, rounds, True, "fixed", tuple(new_rounds))
        if not decide:
            return SeedPlan(counts, rounds, True, None, tuple(new_rounds))
        new, priority = next_round(counts, seed0, finished, resolution=resolution,
                                   max_seeds=max_seeds)
        if new == counts:
            stopped = "max seeds" if priority or _any_unresolved(counts, seed0, finished,
                                                                 resolution) else "resolved"
            return SeedPlan(counts, rounds, True, stopped, tuple(new_rounds))
        if fit is not None:
            new = fit(counts, new, priority)
            if new == counts:
                return SeedPlan(counts, rounds, True, "time budget", tuple(new_rounds))
        if wave > 1:
            new = fill_waves(counts, new, wave, priority, max_seeds=max_seeds,
                             pairs=comparison_pairs(list(counts)))
        counts, rounds = new, rounds + 1
        new_rounds.append(dict(new))


def _any_unresolved(counts, seed0, finished, resolution) -> bool:
    return any(not c.resolved for c in comparisons(_results_view(counts, seed0, finished),
                                                   resolution))
