import math

import pytest

from ffnlab.lab.stats import comparisons as CMP
from ffnlab.lab.stats.student import t_quantile_975
from ffnlab.lab.verdicts import PairVerdict

# Two-sided 95 % Student-t quantiles from a printed table (e.g. NIST/SEMATECH e-Handbook 1.4.2.7).
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086,
           30: 2.042, 40: 2.021, 60: 2.000, 100: 1.984, 120: 1.980}


@pytest.mark.parametrize("df, q", sorted(T_TABLE.items()))
def test_t_quantiles_match_the_table(df, q):
    assert t_quantile_975(df) == pytest.approx(q, abs=6e-4)


def test_t_quantile_of_no_degree_of_freedom_is_nan():
    assert math.isnan(t_quantile_975(0))


def _results(diffs_by_pair: dict[str, list[float]], base: float = 2.0) -> dict:
    """relu at ``base`` + a little per-seed wobble; each variant = relu + its diff per seed."""
    n = max(len(d) for d in diffs_by_pair.values())
    relu = [base + 0.01 * ((s * 7) % 5) for s in range(n)]
    variants = [{"name": "relu", "runs": [{"seed": s, "val_bpb": relu[s]} for s in range(n)]}]
    for name, diffs in diffs_by_pair.items():
        variants.append({"name": name, "runs": [{"seed": s, "val_bpb": relu[s] + d}
                                                for s, d in enumerate(diffs)]})
    return {"variants": variants}


def test_interval_is_the_student_t_interval_of_the_paired_differences():
    diffs = [-0.03, -0.01, -0.02, -0.05, -0.04]
    (c,) = CMP.comparisons(_results({"gelu": diffs}), 0.02)
    mean = sum(diffs) / 5
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 4)
    half = 2.776 * std / math.sqrt(5)  # t(0.975, 4) from the table
    assert (c.a, c.b, c.n) == ("gelu", "relu", 5)
    assert c.mean == pytest.approx(mean, abs=1e-12) and c.std == pytest.approx(std, abs=1e-12)
    assert c.ci95 == pytest.approx((mean - half, mean + half), abs=1e-9)
    assert c.verdict == PairVerdict.A_BETTER  # [-0.050, -0.010]: below zero, not inside +-0.02


@pytest.mark.parametrize("ci, verdict", [
    ((-0.015, 0.012), PairVerdict.EQUIVALENT),
    ((0.002, 0.015), PairVerdict.EQUIVALENT),  # real but smaller than the resolution
    ((-0.08, -0.021), PairVerdict.A_BETTER),
    ((-0.03, -0.001), PairVerdict.A_BETTER),
    ((0.001, 0.05), PairVerdict.B_BETTER),
    ((-0.01, 0.03), PairVerdict.UNRESOLVED),
    ((-0.2, 0.2), PairVerdict.UNRESOLVED),
    ((math.nan, math.nan), PairVerdict.UNRESOLVED),
])
def test_verdicts(ci, verdict):
    assert CMP.verdict_for(ci, 0.02) == verdict


def test_a_single_seed_is_unresolved_and_serialises_without_nan_claims():
    (c,) = CMP.comparisons(_results({"swiglu": [-0.05]}), 0.02)
    assert c.n == 1 and math.isnan(c.half_width) and c.verdict == PairVerdict.UNRESOLVED
    assert not c.resolved
    d = c.to_dict()
    assert d["verdict"] == "unresolved" and d["n"] == 1


def test_pairs_are_each_vs_relu_then_gated_vs_twin():
    names = ["relu", "gelu", "swish", "glu", "geglu", "swiglu", "relu2"]
    pairs = CMP.comparison_pairs(names)
    assert pairs[:6] == [("gelu", "relu"), ("swish", "relu"), ("glu", "relu"), ("geglu", "relu"),
                         ("swiglu", "relu"), ("relu2", "relu")]
    assert set(pairs[6:]) == {("geglu", "gelu"), ("swiglu", "swish")}  # no sigmoid: no glu twin
    assert ("reglu", "relu") in CMP.comparison_pairs(["relu", "reglu"])
    assert CMP.comparison_pairs(["reglu", "relu"]).count(("reglu", "relu")) == 1
    assert CMP.comparison_pairs(["gelu", "geglu"]) == [("geglu", "gelu")]  # no relu


@pytest.mark.parametrize("std, res", [(0.03, 0.02), (0.01, 0.02), (0.05, 0.01), (0.0, 0.02)])
def test_seeds_needed_is_the_smallest_n_reaching_the_resolution(std, res):
    n = CMP.seeds_needed(std, res)
    assert t_quantile_975(n - 1) * std / math.sqrt(n) <= res
    if n > 2:
        assert t_quantile_975(n - 2) * std / math.sqrt(n - 1) > res


def test_seeds_needed_caps_and_refuses_a_bad_resolution():
    assert CMP.seeds_needed(1.0, 0.001, cap=12) == 12
    assert CMP.seeds_needed(math.nan, 0.02, cap=9) == 9
    with pytest.raises(ValueError, match="resolution must be positive"):
        CMP.seeds_needed(0.1, 0.0)
