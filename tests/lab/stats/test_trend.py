"""The slope of a paired difference against log2(FFN parameters) and where it crosses zero."""

from __future__ import annotations

import math
import random

import pytest

from ffnlab.lab.stats.trend import fit_trend

SIZES = (8192, 32768, 131072)  # dim 32, 64, 128: a 16x ladder


def test_an_exact_line_is_recovered():
    # d = 0.06 - 0.01 * log2(P): zero at P = 2^6... use 2^16 = 65536: d = 0.16 - 0.01 x
    pts = [(p, 0.16 - 0.01 * math.log2(p)) for p in SIZES for _ in range(3)]
    t = fit_trend("gelu", "relu", pts)
    assert t.slope == pytest.approx(-0.01) and t.slope_ci95[0] == pytest.approx(-0.01)
    assert t.crossing == pytest.approx(65536) and not t.extrapolated
    assert t.at(65536) == pytest.approx(0.0, abs=1e-12)
    d = t.to_dict()
    assert d["sizes"] == list(SIZES) and d["n_points"] == 9 and d["slope_per_doubling"] == t.slope


def test_a_flat_noisy_line_has_no_crossing_interval_and_an_extrapolated_crossing():
    rng = random.Random(0)
    pts = [(p, 0.03 + rng.gauss(0, 0.01)) for p in SIZES for _ in range(5)]
    t = fit_trend("swiglu", "relu", pts)
    lo, hi = t.slope_ci95
    assert lo < 0 < hi  # no trend resolved
    assert t.crossing_ci95 is None and t.extrapolated


def test_too_few_points_are_refused():
    with pytest.raises(ValueError, match="3 or more points at 2 or more sizes"):
        fit_trend("a", "b", [(8192, 0.1), (32768, 0.0)])
    with pytest.raises(ValueError, match="at 1"):
        fit_trend("a", "b", [(8192, 0.1), (8192, 0.0), (8192, 0.2)])


def test_the_intervals_cover_at_their_nominal_rate():
    """1000 simulated ladders (3 sizes x 5 seeds, noise sd 0.02, true slope -0.015 per
    doubling crossing zero at 2^15.5 params): the slope interval and Fieller's crossing interval
    each cover the truth in 95 % (+- 2 binomial standard errors) of them."""
    rng = random.Random(1)
    true_x0, slope = 15.5, -0.015
    n, cover_slope, cover_cross, bounded = 1000, 0, 0, 0
    for _ in range(n):
        pts = [(p, slope * (math.log2(p) - true_x0) + rng.gauss(0, 0.02)) for p in SIZES
               for _ in range(5)]
        t = fit_trend("a", "b", pts)
        cover_slope += t.slope_ci95[0] <= slope <= t.slope_ci95[1]
        if t.crossing_ci95 is not None:
            bounded += 1
            cover_cross += t.crossing_ci95[0] <= 2 ** true_x0 <= t.crossing_ci95[1]
    se = 2 * math.sqrt(0.05 * 0.95 / n)
    assert abs(cover_slope / n - 0.95) <= se, cover_slope / n
    # Fieller's set is bounded only when the slope is resolved; counting the unbounded ones as
    # covering (they contain every size), the coverage is at least nominal
    assert (cover_cross + (n - bounded)) / n >= 0.95 - se, (cover_cross, bounded)
