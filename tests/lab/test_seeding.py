"""Adaptive seeding: the plan grows only where an interval is too wide, and stops."""

import hashlib
import itertools

from ffnlab.lab.run.seeding import plan, trim_round
from ffnlab.lab.stats import comparisons as CMP


def _noise(*parts) -> float:
    """A fixed pseudo-random number in [-1, 1) for ``parts`` (the same on every machine)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**63 - 1.0


def _world(spread: dict[str, float], gap: dict[str, float]):
    """finished(variant, seed) for a simulated lab where every run has finished once asked.

    bpb = 2 + gap[v] + spread[v] * noise(v, seed); relu has gap 0.
    """
    done: set[tuple[str, int]] = set()

    def finished(v: str, s: int):
        if (v, s) not in done:
            return None
        return {"seed": s, "val_bpb": 2.0 + gap[v] + spread[v] * _noise(v, s), "diverged": False}

    finished.done = done  # the runs that have finished so far

    def run_to_completion(variants, **kw):
        rounds = []
        while True:
            p = plan(variants, 0, finished=finished, **kw)
            missing = [k for k in p.wanted(0) if k not in done]
            if not missing:
                return p, rounds
            rounds.append(sorted(missing))
            done.update(missing)

    return finished, run_to_completion


def test_no_noise_stops_after_the_first_round():
    _, run = _world({"relu": 0.0, "swiglu": 0.0}, {"relu": 0.0, "swiglu": -0.05})
    p, rounds = run(["relu", "swiglu"], initial=3, max_seeds=10, resolution=0.02)
    assert p.complete and p.counts == {"relu": 3, "swiglu": 3} and len(rounds) == 1


def test_noise_adds_seeds_until_every_interval_reaches_the_resolution():
    finished, run = _world({"relu": 0.03, "gelu": 0.03, "swiglu": 0.0},
                           {"relu": 0.0, "gelu": -0.04, "swiglu": -0.06})
    # swiglu's own noise is 0, but swiglu - relu carries relu's, so every variant grows
    p, rounds = run(["relu", "gelu", "swiglu"], initial=3, max_seeds=40, resolution=0.02)
    assert p.complete and len(rounds) > 1
    view = {"variants": [{"name": v, "runs": [finished(v, s) for s in range(n)]}
                         for v, n in p.counts.items()]}
    got = CMP.comparisons(view, 0.02)
    assert all(c.resolved for c in got), [c.to_dict() for c in got]
    assert max(p.counts.values()) < 40
    # a round at most doubles the seeds (a spread from few seeds is itself uncertain)
    totals = list(itertools.accumulate(len({s for _, s in r}) for r in rounds))
    assert all(b <= 2 * a for a, b in itertools.pairwise(totals))


def test_resolved_variants_get_no_more_seeds():
    _, run = _world({"relu": 0.0, "gelu": 0.0, "reglu": 0.05},
                    {"relu": 0.0, "gelu": -0.1, "reglu": 0.0})
    # reglu - relu is noisy; gelu - relu is exact: gelu stays at its initial seeds
    p, _ = run(["relu", "gelu", "reglu"], initial=2, max_seeds=6, resolution=0.01)
    assert p.counts["gelu"] == 2 and p.counts["reglu"] == p.counts["relu"] == 6


def test_the_budget_stops_an_unresolvable_comparison():
    _, run = _world({"relu": 0.5, "gelu": 0.5}, {"relu": 0.0, "gelu": 0.0})
    p, rounds = run(["relu", "gelu"], initial=2, max_seeds=5, resolution=0.001)
    assert p.complete and p.counts == {"relu": 5, "gelu": 5}


def test_without_a_resolution_or_budget_round_zero_is_the_plan():
    _, run = _world({"relu": 0.5, "gelu": 0.5}, {"relu": 0.0, "gelu": 0.0})
    p, rounds = run(["relu", "gelu"], initial=2, max_seeds=2, resolution=0.02)
    assert p.counts == {"relu": 2, "gelu": 2} and len(rounds) == 1
    p, _ = run(["relu", "gelu"], initial=2, max_seeds=9, resolution=None)
    assert p.counts == {"relu": 2, "gelu": 2}


def test_the_plan_depends_only_on_finished_rounds():
    """Interrupted half-way through a round, the plan asks for the same runs again."""
    finished, run = _world({"relu": 0.03, "gelu": 0.03}, {"relu": 0.0, "gelu": -0.01})
    full, rounds = run(["relu", "gelu"], initial=2, max_seeds=12, resolution=0.02)
    assert len(rounds) >= 2
    # Forget the second half of the last round: the plan still wants exactly the full plan.
    done_now = {k for r in rounds for k in r}
    lost = set(rounds[-1][len(rounds[-1]) // 2:])

    def partial(v, s):
        return None if (v, s) in lost or (v, s) not in done_now else finished(v, s)

    again = plan(["relu", "gelu"], 0, initial=2, max_seeds=12, resolution=0.02, finished=partial)
    assert not again.complete and again.counts == full.counts


def test_trim_round_serves_the_widest_intervals_first():
    counts = {"relu": 4, "gelu": 4, "swish": 4, "geglu": 4}
    new = {"relu": 6, "gelu": 6, "swish": 6, "geglu": 4}
    priority = {"relu": 0.05, "swish": 0.04, "gelu": 0.03}
    assert trim_round(counts, new, 3, priority) == {"relu": 5, "gelu": 5, "swish": 5, "geglu": 4}
    assert trim_round(counts, new, 2, priority) == {"relu": 5, "gelu": 4, "swish": 5, "geglu": 4}
    assert trim_round(counts, new, 0, priority) == counts
    assert trim_round(counts, new, 99, priority) == new


def test_a_time_budget_cuts_rounds_and_the_cut_rounds_are_replayed():
    finished, run = _world({"relu": 0.03, "gelu": 0.03, "swiglu": 0.03},
                           {"relu": 0.0, "gelu": -0.01, "swiglu": -0.04})
    budget = {"runs": 5}  # a budget of 5 more runs in all, then nothing

    def fit(counts, new, priority):
        cut = trim_round(counts, new, budget["runs"], priority)
        budget["runs"] -= sum(cut.values()) - sum(counts.values())
        return cut

    done, recorded = finished.done, []
    fin = finished
    while True:
        p = plan(["relu", "gelu", "swiglu"], 0, initial=3, max_seeds=20, resolution=0.02,
                 finished=fin, recorded=recorded, fit=fit)
        recorded += p.new_rounds
        missing = [k for k in p.wanted(0) if k not in done]
        if not missing:
            break
        done.update(missing)
    assert p.complete and p.stopped == "time budget"
    assert sum(p.counts.values()) == 9 + 5 and p.counts["relu"] >= max(p.counts.values()) - 1
    # Replayed without the budget, the recorded rounds give the same plan; deciding is off.
    again = plan(["relu", "gelu", "swiglu"], 0, initial=3, max_seeds=20, resolution=0.02,
                 finished=fin, recorded=recorded, decide=False)
    assert again.counts == p.counts and again.complete and again.new_rounds == ()


def test_the_reason_a_plan_stopped():
    _, run = _world({"relu": 0.0, "gelu": 0.0}, {"relu": 0.0, "gelu": -0.05})
    assert run(["relu", "gelu"], initial=2, max_seeds=5, resolution=0.02)[0].stopped == "resolved"
    _, run = _world({"relu": 0.5, "gelu": 0.5}, {"relu": 0.0, "gelu": 0.0})
    assert run(["relu", "gelu"], initial=2, max_seeds=3, resolution=0.02)[0].stopped == "max seeds"
    assert run(["relu", "gelu"], initial=2, max_seeds=2, resolution=0.02)[0].stopped == "fixed"


def test_fill_waves_gives_idle_slots_paired_seeds_widest_first():
    from ffnlab.lab.run.seeding import fill_waves

    pairs = [("gelu", "relu"), ("swish", "relu"), ("swiglu", "relu"), ("swiglu", "swish")]
    counts = {"relu": 5, "gelu": 5, "swish": 5, "swiglu": 5}
    new = {"relu": 6, "gelu": 6, "swish": 6, "swiglu": 5}  # 3 runs: one slot of a wave of 2
    priority = {"relu": 0.03, "gelu": 0.03, "swish": 0.025, "swiglu": 0.01}
    # swiglu's seed 5 pairs at once with relu's and swish's: the one useful filler
    assert fill_waves(counts, new, 2, priority, max_seeds=8, pairs=pairs) == {**new, "swiglu": 6}
    # a full wave already: nothing added
    even = {"relu": 6, "gelu": 6, "swish": 5, "swiglu": 5}
    assert fill_waves(counts, even, 2, priority, max_seeds=8, pairs=pairs) == even
    # relu alone grows: the filler is the widest partner whose seed 5 pairs with relu's
    lone = {"relu": 6, "gelu": 5, "swish": 5, "swiglu": 5}
    assert fill_waves(counts, lone, 2, priority, max_seeds=8, pairs=pairs) == {**lone, "gelu": 6}
    # nothing pairs up at once (every variant grew alike): the widest gets a seed anyway
    alike = {"relu": 6, "gelu": 6, "swish": 6, "swiglu": 5}
    assert fill_waves(counts, {**alike, "swiglu": 6}, 2, priority, max_seeds=8, pairs=pairs) == {
        **alike, "swiglu": 6}  # 4 runs: whole waves already
    three = {"relu": 6, "gelu": 6, "swish": 6}
    assert fill_waves({"relu": 5, "gelu": 5, "swish": 5}, three, 2, priority, max_seeds=8,
                      pairs=pairs[:2]) == {**three, "gelu": 7}  # tie with relu: by name
    # max_seeds is never passed
    capped = {"relu": 6, "gelu": 6, "swish": 6, "swiglu": 5}
    assert fill_waves(counts, capped, 2, priority, max_seeds=5, pairs=pairs) == capped


def test_rounds_fill_the_waves_of_the_workers():
    spread = {"relu": 0.02, "gelu": 0.01, "swish": 0.02}
    gap = {"relu": 0.0, "gelu": -0.01, "swish": 0.0}
    _, run = _world(spread, gap)
    p, rounds = run(["relu", "gelu", "swish"], initial=3, max_seeds=12, resolution=0.02, wave=2)
    assert len(rounds) > 1
    assert all(len(r) % 2 == 0 for r in rounds[1:]), rounds  # whole waves after round 0
    _, run1 = _world(spread, gap)
    _, rounds1 = run1(["relu", "gelu", "swish"], initial=3, max_seeds=12, resolution=0.02)
    assert any(len(r) % 2 for r in rounds1[1:]), rounds1  # one worker: rounds as they come
