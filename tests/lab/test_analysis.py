import copy
import json
import math
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffnlab.lab.claims import check as C
from ffnlab.lab.names import GATED_TWINS
from ffnlab.lab.stats import paired
from ffnlab.lab.stats import table as A
from ffnlab.lab.stats.student import t_quantile_975
from ffnlab.lab.verdicts import ClaimVerdict
from ffnlab.sizing import ffn_flops_per_token

FIXTURE = Path(__file__).parent / "fixtures" / "results_small.json"

PLAIN = {"gated": False, "hidden": 96, "params": 2 * 32 * 96 + 96 + 32}
GATED = {"gated": True, "hidden": 64, "params": 3 * 32 * 64}


def make_results(bpb, extra=None, *, seeds=None, dead_threshold=0.0):
    """A results dict: ``bpb`` maps variant -> per-seed final bpb (None = run missing)."""
    extra = extra or {}
    n = max(len(v) for v in bpb.values())
    seeds = list(range(n)) if seeds is None else seeds
    variants = []
    for name, vals in bpb.items():
        runs = [{"seed": s, "val_bpb": x, "curve": [[0, 8.0], [10, x]], "diverged": False}
                for s, x in zip(seeds, vals, strict=False) if x is not None]
        good = [r["val_bpb"] for r in runs]
        mean = sum(good) / len(good) if good else math.nan
        std = (math.sqrt(sum((x - mean) ** 2 for x in good) / (len(good) - 1))
               if len(good) > 1 else 0.0)
        v = {"name": name, **(GATED if name in GATED_TWINS or name == "bilinear" else PLAIN),
             "val_bpb_mean": mean, "val_bpb_std": std, "tokens_per_s": 1000.0, "ffn_ms": 1.0,
             "act_ns_per_element": 1.0, "saved_bytes_per_token": 1024, "dead_fraction": 0.0,
             "curve": [[0, 8.0], [10, mean]], "runs": runs}
        v["flops_per_token"] = ffn_flops_per_token(name, 32, v["hidden"])  # as results.py writes
        v.update(extra.get(name, {}))
        variants.append(v)
    return {"schema_version": 1, "status": "complete",
            "config": {"seeds": seeds, "dead_threshold": dead_threshold,
                       "model": {"dim": 32, "plain_hidden": 96, "gated_hidden": 64}},
            "corpus": {"name": "test", "bytes": 1, "sha256": "0"}, "variants": variants}


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706
    assert t_quantile_975(2) == 4.303
    assert t_quantile_975(1000) == pytest.approx(1.9623, abs=1e-4)  # exact: 1.96234
    assert math.isnan(t_quantile_975(0))


def test_paired_difference_is_per_seed():
    r = make_results({"relu": [2.50, 2.40, 2.60], "gelu": [2.48, 2.39, 2.57]})
    pd = paired.paired_difference(r, "gelu", "relu")
    assert pd.seeds == (0, 1, 2)
    assert pd.diffs == pytest.approx((-0.02, -0.01, -0.03))
    assert pd.mean == pytest.approx(-0.02)
    assert pd.std == pytest.approx(0.01)
    assert pd.sem == pytest.approx(0.01 / math.sqrt(3))
    lo, hi = pd.ci95
    assert lo == pytest.approx(-0.02 - 4.303 * 0.01 / math.sqrt(3))
    assert hi == pytest.approx(-0.02 + 4.303 * 0.01 / math.sqrt(3))
    assert pd.min_max == pytest.approx((-0.03, -0.01))
    # |mean| is 3.5 standard errors, but with 2 degrees of freedom the t interval
    # [-0.045, +0.005] still holds zero: not distinguishable, as the report's interval shows.
    assert not pd.distinguishable and pd.caution == ""
    four = paired.paired_difference(make_results({"relu": [2.50, 2.40, 2.60, 2.55],
                                             "gelu": [2.48, 2.39, 2.57, 2.53]}), "gelu", "relu")
    assert four.ci95[1] < 0 and four.distinguishable


def test_paired_and_unpaired_conclusions_differ():
    # Seed-to-seed variation (±0.1) is shared by both variants and dwarfs the 0.02 effect:
    # pairing removes it, the unpaired comparison drowns in it.
    r = make_results({"relu": [2.50, 2.40, 2.60, 2.55], "gelu": [2.48, 2.39, 2.57, 2.53]})
    assert paired.paired_difference(r, "gelu", "relu").distinguishable
    # Unpaired: difference of the means, Welch's standard error, a 2-sigma rule (looser than t).
    xa = list(A.good_runs(A.variants_by_name(r)["gelu"]).values())
    xb = list(A.good_runs(A.variants_by_name(r)["relu"]).values())
    mean = statistics.fmean(xa) - statistics.fmean(xb)
    se = math.sqrt(statistics.variance(xa) / len(xa) + statistics.variance(xb) / len(xb))
    assert mean == pytest.approx(-0.02)
    assert not abs(mean) > 2 * se


def test_pairing_uses_seed_not_position_and_drops_unusable_runs():
    r = make_results({"relu": [2.5, 2.4, 2.6, 2.7], "gelu": [2.4, 2.3, 2.5, None]})
    relu = A.variants_by_name(r)["relu"]
    relu["runs"].reverse()  # order in the file must not matter
    relu["runs"][0]["diverged"] = True  # seed 3
    A.variants_by_name(r)["gelu"]["runs"][1]["val_bpb"] = float("nan")  # seed 1
    pd = paired.paired_difference(r, "gelu", "relu")
    assert pd.seeds == (0, 2)
    assert pd.diffs == pytest.approx((-0.1, -0.1))
    assert pd.dropped == (1, 3)
    assert "only 2 seeds" in pd.caution


@given(offsets=st.lists(st.floats(-1, 1), min_size=3, max_size=3),
       effect=st.lists(st.floats(-0.1, 0.1), min_size=3, max_size=3))
def test_paired_difference_ignores_shared_seed_offsets(offsets, effect):
    base = [2.0 + o for o in offsets]
    r = make_results({"relu": base, "swish": [b + e for b, e in zip(base, effect, strict=True)]})
    pd = paired.paired_difference(r, "swish", "relu")
    assert pd.diffs == pytest.approx(tuple(effect), abs=1e-9)


def test_one_seed_is_never_distinguishable():
    r = make_results({"relu": [2.5], "gelu": [2.0]})
    pd = paired.paired_difference(r, "gelu", "relu")
    assert pd.n == 1 and pd.mean == pytest.approx(-0.5)
    assert not pd.distinguishable and "one seed" in pd.caution
    assert math.isnan(pd.std) and all(math.isnan(x) for x in pd.ci95)


def test_ranking_puts_diverged_last():
    r = make_results({"relu": [2.5], "gelu": [2.4], "swish": [None]})
    assert [v["name"] for v in A.ranking(r)] == ["gelu", "relu", "swish"]
    best, runner, pd = paired.best_variant(r)
    assert (best, runner) == ("gelu", "relu") and pd.n == 1


def test_missing_runs():
    r = make_results({"relu": [2.5, 2.4, None], "gelu": [2.4, 2.3, 2.2]}, seeds=[0, 1, 2])
    r["config"]["variants"] = ["relu", "gelu", "swiglu"]
    A.variants_by_name(r)["gelu"]["runs"][0]["diverged"] = True
    miss = A.missing_runs(r)
    assert ("relu", 2) in miss["missing"] and ("swiglu", 0) in miss["missing"]
    assert miss["diverged"] == [("gelu", 0)] and miss["absent"] == ["swiglu"]


@pytest.mark.parametrize("bad, needle", [([], "JSON object"), ({}, "'variants'"),
                                         ({"variants": [{"x": 1}]}, "variants[0]")])
def test_check_results_rejects(bad, needle):
    with pytest.raises(ValueError) as e:
        A.check_results(bad)
    assert needle in str(e.value)


# --- the claims ---------------------------------------------------------------------------

def _verdict(results, claim_id):
    (v,) = [v for v in C.check_claims(results) if v.claim_id == claim_id]
    return v


def _cost(ratios):
    """A measured.activation_cost: ``ratios`` maps "b/a" to the interval of t_b / t_a."""
    return {"numel": 65536, "reps": 200, "device": "cpu", "dtype": "float32",
            "ns_per_element": {},
            "ratios": {k: {"median": (lo + hi) / 2, "ci95": [lo, hi], "coverage": 0.95, "n": 200}
                       for k, (lo, hi) in ratios.items()}}


def _speed(swish_relu, gelu_swish, gelu_relu, ffn=(1.0, 1.0, 1.0)):
    r = make_results({"relu": [2.5], "swish": [2.5], "gelu": [2.5]})
    r["measured"] = {"activation_cost": _cost({"swish/relu": swish_relu, "gelu/swish": gelu_swish,
                                               "gelu/relu": gelu_relu})}
    for name, f in zip(("relu", "swish", "gelu"), ffn, strict=True):
        A.variants_by_name(r)[name].update(ffn_ms=f)
    return _verdict(r, "speed_order")


def test_speed_order_claim():
    v = _speed((1.9, 2.1), (1.4, 1.6), (2.9, 3.1))
    assert v.verdict == ClaimVerdict.SUPPORTED
    assert "[1.90, 2.10]" in v.explanation  # the measured intervals are quoted
    assert "invisible" in v.explanation  # whole-FFN times identical: matmuls dominate
    assert _speed((0.4, 0.6), (0.6, 0.7), (0.3, 0.4)).verdict == ClaimVerdict.NOT_SUPPORTED
    # GELU/Swish within 2 % of 1, its whole interval inside the 5 % band: "≈" is an answer
    v = _speed((1.9, 2.1), (0.99, 1.03), (2.9, 3.1))
    assert v.verdict == ClaimVerdict.NOT_SUPPORTED and v.numbers["ratios"]["gelu/swish"]["call"] == "≈"
    # the same gap with an interval reaching past the band edge: not resolved
    v = _speed((1.9, 2.1), (0.99, 1.08), (2.9, 3.1))
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "straddles" in v.explanation
    assert "invisible" not in _speed((1.9, 2.1), (1.4, 1.6), (2.9, 3.1),
                                     ffn=(1.0, 1.2, 1.5)).explanation
    v = _verdict(make_results({"relu": [2.5], "swish": [2.5]}), "speed_order")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


@pytest.mark.parametrize("gelu, swish, expected", [
    ([2.45, 2.35, 2.55], [2.44, 2.36, 2.55], ClaimVerdict.SUPPORTED),       # both ~0.05 better every seed
    ([2.53, 2.43, 2.62], [2.47, 2.39, 2.58], ClaimVerdict.NOT_SUPPORTED),   # GELU worse every seed
    ([2.45, 2.45, 2.55], [2.55, 2.35, 2.65], ClaimVerdict.INCONCLUSIVE),    # signs flip between seeds
])
def test_smooth_beats_relu_claim(gelu, swish, expected):
    r = make_results({"relu": [2.50, 2.40, 2.60], "gelu": gelu, "swish": swish})
    v = _verdict(r, "smooth_beats_relu")
    assert v.verdict == expected
    assert v.numbers["gelu_minus_relu"]["n"] == 3


def test_smooth_beats_relu_one_seed_is_inconclusive():
    v = _verdict(make_results({"relu": [2.5], "gelu": [2.0], "swish": [2.0]}), "smooth_beats_relu")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "one seed" in v.explanation


@pytest.mark.parametrize("dead, expected", [
    ({"relu": 0.12, "gelu": 0.0, "swish": 0.0}, ClaimVerdict.SUPPORTED),
    ({"relu": 0.002, "gelu": 0.0, "swish": 0.0}, ClaimVerdict.NOT_SUPPORTED),
    ({"relu": 0.10, "gelu": 0.15, "swish": 0.0}, ClaimVerdict.NOT_SUPPORTED),
    ({"relu": float("nan"), "gelu": 0.0, "swish": 0.0}, ClaimVerdict.INCONCLUSIVE),
])
def test_relu_dies_claim(dead, expected):
    r = make_results({n: [2.5] for n in dead}, {n: {"dead_fraction": d} for n, d in dead.items()},
                     dead_threshold=0.0)
    v = _verdict(r, "relu_dies")
    assert v.verdict == expected
    if expected != ClaimVerdict.INCONCLUSIVE:
        assert "never exceeds 0" in v.explanation  # the threshold is stated


def test_relu_dies_without_relu_is_not_measured():
    v = _verdict(make_results({"gelu": [2.5]}), "relu_dies")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


@pytest.mark.parametrize("swiglu, expected", [
    ([2.45, 2.36, 2.55], ClaimVerdict.SUPPORTED), ([2.55, 2.44, 2.66], ClaimVerdict.NOT_SUPPORTED),
    ([2.45, 2.45, 2.55], ClaimVerdict.INCONCLUSIVE)])
def test_glu_quality_claim(swiglu, expected):
    r = make_results({"swish": [2.50, 2.40, 2.60], "swiglu": swiglu})
    v = _verdict(r, "glu_quality")
    assert v.verdict == expected
    assert v.numbers["pairs"]["swiglu"]["param_ratio"] == pytest.approx(6144 / 6272)


def test_glu_quality_without_twins_is_not_measured():
    v = _verdict(make_results({"relu": [2.5], "swiglu": [2.4]}), "glu_quality")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


def _with_ffn_ratios(r: dict, ratios: dict[str, tuple[float, float, float]]) -> dict:
    r["measured"] = {"ffn_ratios": {k: {"median": m, "ci95": [lo, hi], "coverage": 0.98, "n": 30}
                                    for k, (m, lo, hi) in ratios.items()}}
    return r


@pytest.mark.parametrize("interval, expected", [
    ((1.25, 1.20, 1.31), ClaimVerdict.SUPPORTED),      # slower beyond the band
    ((1.01, 0.98, 1.03), ClaimVerdict.NOT_SUPPORTED),  # inside the band: not slower
    ((1.06, 1.02, 1.09), ClaimVerdict.INCONCLUSIVE),   # straddles the band's edge
])
def test_glu_compute_claim(interval, expected):
    r = _with_ffn_ratios(make_results({"gelu": [2.5], "geglu": [2.4]}), {"geglu/gelu": interval})
    v = _verdict(r, "glu_compute")
    assert v.verdict == expected
    # hidden 64 = 2/3 of 96: three [32x64] matmuls cost what two [32x96] ones do.
    assert v.numbers["pairs"]["geglu"]["matmul_flops_ratio"] == pytest.approx(1.0)
    assert v.numbers["pairs"]["geglu"]["ffn_time_ratio"]["median"] == interval[0]
    assert f"[{interval[1]:.2f}, {interval[2]:.2f}]" in v.explanation


def test_glu_compute_one_pair_not_slower_is_not_supported():
    r = _with_ffn_ratios(make_results({"gelu": [2.5], "geglu": [2.4], "relu": [2.5],
                                       "reglu": [2.4]}),
                         {"geglu/gelu": (1.3, 1.25, 1.35), "reglu/relu": (1.0, 0.98, 1.02)})
    assert _verdict(r, "glu_compute").verdict == ClaimVerdict.NOT_SUPPORTED


def test_glu_compute_without_ratios_is_not_measured():
    v = _verdict(make_results({"gelu": [2.5], "geglu": [2.4]}), "glu_compute")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


@pytest.mark.parametrize("best, expected", [
    ("swiglu", ClaimVerdict.SUPPORTED), ("relu", ClaimVerdict.NOT_SUPPORTED),
    (None, ClaimVerdict.NOT_SUPPORTED)])  # all equal on every seed: equivalent, so SwiGLU is not the best
def test_glu_best_claim(best, expected):
    base = [2.50, 2.40, 2.60]
    bpb = {n: base for n in ("relu", "gelu", "swiglu")}
    if best is not None:
        bpb[best] = [x - 0.05 for x in base]
    v = _verdict(make_results(bpb), "glu_best")
    assert v.verdict == expected
    assert "1.942" in v.explanation and "1.997" in v.explanation  # Shazeer 2020 quoted


def test_glu_best_absent_is_not_measured():
    v = _verdict(make_results({"relu": [2.5], "gelu": [2.4]}), "glu_best")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


def test_every_claim_survives_degenerate_results():
    for r in (make_results({"relu": [None]}), make_results({"swiglu": [2.4]}),
              {"variants": []}, {"variants": [{"name": "relu"}]}):
        verdicts = C.check_claims(r)
        assert len(verdicts) == len(C.ALL_CLAIMS)
        assert all(v.verdict == ClaimVerdict.INCONCLUSIVE for v in verdicts)
        json.dumps([v.to_dict() for v in verdicts])


# --- the fixture ----------------------------------------------------------------------------

def test_fixture_is_self_consistent():
    r = json.loads(FIXTURE.read_text())
    assert r["schema_version"] == 1 and 5 <= len(r["variants"]) <= 13
    for v in r["variants"]:
        xs = [run["val_bpb"] for run in v["runs"]]
        assert len(xs) == len(r["config"]["seeds"])
        mean = sum(xs) / len(xs)
        assert v["val_bpb_mean"] == pytest.approx(mean, abs=1e-4)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))
        assert v["val_bpb_std"] == pytest.approx(sd, abs=1e-4)


def test_fixture_verdicts():
    r = json.loads(FIXTURE.read_text())
    got = {v.claim_id: v.verdict for v in C.check_claims(copy.deepcopy(r))}
    # The fixture (schema 1) has no "measured": the claims resting on it are not measured.
    assert got == {"speed_order": ClaimVerdict.INCONCLUSIVE, "sigmoid_cost": ClaimVerdict.INCONCLUSIVE,
                   "smooth_beats_relu": ClaimVerdict.SUPPORTED, "relu_dies": ClaimVerdict.SUPPORTED,
                   "saturation": ClaimVerdict.INCONCLUSIVE, "swish_beta": ClaimVerdict.INCONCLUSIVE,
                   "glu_quality": ClaimVerdict.SUPPORTED, "glu_compute": ClaimVerdict.INCONCLUSIVE,
                   "glu_best": ClaimVerdict.SUPPORTED}
    best, runner, pd = paired.best_variant(r)
    assert (best, runner) == ("geglu", "swiglu") and not pd.distinguishable


def test_missing_runs_merges_the_training_sides_list():
    r = make_results({"relu": [2.5, 2.4]}, seeds=[0, 1])
    r["missing"] = [{"variant": "swiglu", "seed": 0}, {"variant": "swiglu", "seed": 1}]
    miss = A.missing_runs(r)
    assert miss["missing"] == [("swiglu", 0), ("swiglu", 1)] and miss["absent"] == ["swiglu"]


def test_relu_dies_quotes_the_recorded_dead_rule():
    r = make_results({"relu": [2.5]}, {"relu": {"dead_fraction": 0.2}}, dead_threshold=1e-3)
    r["config"]["dead_rule"] = "a unit is dead if |act| <= threshold on every token"
    v = _verdict(r, "relu_dies")
    assert v.verdict == ClaimVerdict.SUPPORTED
    assert "dead threshold 0.001: a unit is dead if |act| <= threshold" in v.explanation


def test_glu_quality_flags_unmatched_parameters():
    r = make_results({"swish": [2.5, 2.4, 2.6], "swiglu": [2.45, 2.36, 2.55]},
                     {"swiglu": {"params": 3 * 32 * 96}})  # equal hidden: 1.5x the params
    v = _verdict(r, "glu_quality")
    assert "more than 5% between swiglu and the plain twin" in v.explanation
    assert "Caution" not in _verdict(make_results({"swish": [2.5], "swiglu": [2.4]}),
                                     "glu_quality").explanation
