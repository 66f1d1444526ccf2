"""The claims' verdicts from comparisons, timing intervals and the no-training measurements,
and the measurements themselves (activation_cost, swish_beta, saturation)."""

import math
from types import SimpleNamespace

import pytest
import torch

from ffnlab.activations import gelu, swish
from ffnlab.lab.claims import check as C
from ffnlab.lab.claims.speed import ratio_call
from ffnlab.lab.measure import swish_beta
from ffnlab.lab.measure.saturation import saturation
from ffnlab.lab.measure.timing import (
    ACTIVATION_COST_SET,
    activation_cost,
    activation_kernels,
    median_interval,
)
from ffnlab.lab.names import GATED_TWINS
from ffnlab.lab.run import results as R
from ffnlab.lab.run.runner import CompareRunner
from ffnlab.lab.stats import comparisons as K
from ffnlab.lab.train.model import ModelConfig
from ffnlab.lab.verdicts import ClaimVerdict, PairVerdict, SpeedCall
from ffnlab.ops.reference import hidden_activation

BASE = [2.50, 2.40, 2.60, 2.55]
# Per-seed differences a - b (4 seeds, t = 3.182) and what they give at resolution 0.02.
DIFFS = {
    PairVerdict.A_BETTER: [-0.05, -0.06, -0.04, -0.05],     # [-0.063, -0.037]
    PairVerdict.EQUIVALENT: [-0.005, 0.003, -0.002, 0.004],  # [-0.0065, +0.0065]
    PairVerdict.UNRESOLVED: [-0.05, 0.04, -0.03, 0.05],     # [-0.073, +0.078]
    PairVerdict.B_BETTER: [0.05, 0.06, 0.04, 0.05],
}


def make_results(bpb, *, resolution=None, measured=None):
    """Results with per-seed bpb per variant (2/3-hidden gated twins: equal parameters)."""
    variants = []
    for name, vals in bpb.items():
        gated = name in K.GATED_TWINS
        runs = [{"seed": s, "val_bpb": x, "diverged": False} for s, x in enumerate(vals)]
        variants.append({"name": name, "gated": gated, "hidden": 64 if gated else 96,
                         "params": 3 * 32 * 64 if gated else 2 * 32 * 96,
                         "val_bpb_mean": sum(vals) / len(vals), "runs": runs})
    cfg = {"seeds": list(range(len(BASE))), "model": {"dim": 32}}
    if resolution is not None:
        cfg["resolution_bpb"] = resolution
    return {"config": cfg, "variants": variants, "measured": measured or {}}


def shifted(kind):
    return [b + d for b, d in zip(BASE, DIFFS[kind], strict=True)]


def verdict(results, cid):
    (v,) = [v for v in C.check_claims(results) if v.claim_id == cid]
    return v


def test_synthetic_diffs_give_the_intended_comparison():
    for kind in DIFFS:
        r = make_results({"relu": BASE, "gelu": shifted(kind)})
        assert K.compare(r, "gelu", "relu", 0.02).verdict == kind


# --- quality claims --------------------------------------------------------------------------

EXPECTED = {PairVerdict.A_BETTER: ClaimVerdict.SUPPORTED, PairVerdict.EQUIVALENT: ClaimVerdict.NOT_SUPPORTED,
            PairVerdict.UNRESOLVED: ClaimVerdict.INCONCLUSIVE, PairVerdict.B_BETTER: ClaimVerdict.NOT_SUPPORTED}


@pytest.mark.parametrize("kind", list(DIFFS))
def test_smooth_beats_relu_follows_the_comparisons(kind):
    r = make_results({"relu": BASE, "gelu": shifted(kind), "swish": shifted(kind)})
    v = verdict(r, "smooth_beats_relu")
    assert v.verdict == EXPECTED[kind]
    assert v.numbers["gelu_minus_relu"]["verdict"] == kind
    assert v.numbers["resolution_bpb"] == 0.02
    lo, hi = K.compare(r, "gelu", "relu", 0.02).ci95
    assert f"[{lo:+.4f}, {hi:+.4f}]" in v.explanation  # the interval is quoted
    if kind == PairVerdict.EQUIVALENT:
        assert "no measurable difference" in v.explanation and "within ±0.02" in v.explanation


def test_smooth_beats_relu_a_resolved_contradiction_decides():
    # GELU equivalent to ReLU (an answer: not better), Swish unresolved: the claim fails anyway.
    r = make_results({"relu": BASE, "gelu": shifted(PairVerdict.EQUIVALENT), "swish": shifted(PairVerdict.UNRESOLVED)})
    assert verdict(r, "smooth_beats_relu").verdict == ClaimVerdict.NOT_SUPPORTED
    # GELU better, Swish unresolved: only more seeds can tell.
    r = make_results({"relu": BASE, "gelu": shifted(PairVerdict.A_BETTER), "swish": shifted(PairVerdict.UNRESOLVED)})
    assert verdict(r, "smooth_beats_relu").verdict == ClaimVerdict.INCONCLUSIVE


def test_quality_claims_read_the_runs_resolution():
    # 0.015 bpb better on every seed: equivalent at ±0.02, better at ±0.005.
    bpb = {"relu": BASE, "gelu": [b - 0.015 for b in BASE], "swish": [b - 0.015 for b in BASE]}
    assert verdict(make_results(bpb), "smooth_beats_relu").verdict == ClaimVerdict.NOT_SUPPORTED
    v = verdict(make_results(bpb, resolution=0.005), "smooth_beats_relu")
    assert v.verdict == ClaimVerdict.SUPPORTED and v.numbers["resolution_bpb"] == 0.005


@pytest.mark.parametrize("kind", list(DIFFS))
def test_glu_quality_follows_the_comparison(kind):
    v = verdict(make_results({"swish": BASE, "swiglu": shifted(kind)}), "glu_quality")
    assert v.verdict == EXPECTED[kind]
    assert v.numbers["pairs"]["swiglu"]["comparison"]["verdict"] == kind
    if kind == PairVerdict.EQUIVALENT:
        assert "no measurable difference" in v.explanation


@pytest.mark.parametrize("kinds, expected", [
    ((PairVerdict.A_BETTER, PairVerdict.UNRESOLVED), ClaimVerdict.SUPPORTED),                    # half better, none worse
    ((PairVerdict.A_BETTER, PairVerdict.UNRESOLVED, PairVerdict.EQUIVALENT), ClaimVerdict.INCONCLUSIVE),   # the unresolved one decides
    ((PairVerdict.A_BETTER, PairVerdict.EQUIVALENT, PairVerdict.EQUIVALENT), ClaimVerdict.NOT_SUPPORTED),  # at most 1 of 3 can be better
    ((PairVerdict.A_BETTER, PairVerdict.A_BETTER, PairVerdict.B_BETTER), ClaimVerdict.NOT_SUPPORTED),      # one pair worse
])
def test_glu_quality_over_several_pairs(kinds, expected):
    bpb = {}
    for (g, p), kind in zip((("swiglu", "swish"), ("geglu", "gelu"), ("reglu", "relu")), kinds,
                            strict=False):
        bpb[p], bpb[g] = BASE, shifted(kind)
    assert verdict(make_results(bpb), "glu_quality").verdict == expected


@pytest.mark.parametrize("kind", list(DIFFS))
def test_glu_best_follows_the_comparison(kind):
    # swiglu against relu, the only variant outside the family.
    v = verdict(make_results({"relu": BASE, "swiglu": shifted(kind)}), "glu_best")
    assert v.verdict == EXPECTED[kind]
    assert v.numbers["comparison"]["verdict"] == kind


def test_gated_twins_are_the_comparisons_ones():
    assert not hasattr(C, "GATED_TWINS") or GATED_TWINS is K.GATED_TWINS


# --- speed claims ------------------------------------------------------------------------------

@pytest.mark.parametrize("ci, call", [
    ((1.10, 1.20), SpeedCall.SLOWER), ((0.70, 0.90), SpeedCall.FASTER),
    ((0.98, 1.03), SpeedCall.SAME), ((1 / 1.05, 1.05), SpeedCall.SAME),        # inside the band, edges included
    ((1.02, 1.08), SpeedCall.UNDECIDED), ((0.93, 0.99), SpeedCall.UNDECIDED),  # straddling an edge
    ((0.90, 1.10), SpeedCall.UNDECIDED), ((math.nan, math.nan), SpeedCall.UNDECIDED),
])
def test_ratio_call(ci, call):
    assert ratio_call(ci) == call


def cost(ratios):
    return {"numel": 65536, "reps": 200, "device": "cpu", "dtype": "float32",
            "ns_per_element": {},
            "ratios": {k: {"median": (lo + hi) / 2, "ci95": [lo, hi], "coverage": 0.96, "n": 200}
                       for k, (lo, hi) in ratios.items()}}


@pytest.mark.parametrize("ci, expected", [
    ((1.12, 1.25), ClaimVerdict.SUPPORTED), ((0.99, 1.02), ClaimVerdict.NOT_SUPPORTED),
    ((0.80, 0.90), ClaimVerdict.NOT_SUPPORTED), ((1.01, 1.09), ClaimVerdict.INCONCLUSIVE)])
def test_sigmoid_cost_from_the_interval(ci, expected):
    v = verdict(make_results({}, measured={"activation_cost": cost({"sigmoid/relu": ci})}),
                "sigmoid_cost")
    assert v.verdict == expected
    assert f"[{ci[0]:.2f}, {ci[1]:.2f}]" in v.explanation
    # the same measurement stored the other way round (relu/sigmoid) gives the same verdict
    inv = cost({"relu/sigmoid": (1 / ci[1], 1 / ci[0])})
    assert verdict(make_results({}, measured={"activation_cost": inv}),
                   "sigmoid_cost").verdict == expected


def test_speed_claims_need_the_measurement():
    for cid in ("speed_order", "sigmoid_cost"):
        v = verdict(make_results({"relu": BASE, "swish": BASE, "gelu": BASE}), cid)
        assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


def test_speed_order_does_not_need_trained_variants():
    r = make_results({}, measured={"activation_cost": cost(
        {"swish/relu": (1.3, 1.5), "gelu/swish": (1.6, 1.9), "gelu/relu": (2.5, 2.9)})})
    assert verdict(r, "speed_order").verdict == ClaimVerdict.SUPPORTED


# --- activation_cost ---------------------------------------------------------------------------

def test_median_interval_order_statistics():
    m = median_interval([float(x) for x in range(1, 21)])
    # n = 20: ranks 6 and 15 (P(Binomial(20, 1/2) <= 5) = 0.0207)
    assert m["median"] == 10.5 and m["ci95"] == [6.0, 15.0]
    assert m["coverage"] == pytest.approx(1 - 2 * 21700 / 2**20)
    assert math.isnan(median_interval([1.0, 2.0, 3.0, 4.0, 5.0])["ci95"][0])  # 93.75 % < 95 %


@pytest.mark.parametrize("name", ACTIVATION_COST_SET)
def test_activation_kernels_compute_the_autograd_gradient(name):
    h = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1000, dtype=torch.float64)
    ref = hidden_activation(name, h)
    ref.backward(g)
    y, dh = torch.empty_like(g), torch.empty_like(g)
    fwd, bwd = activation_kernels(name)
    fwd(h.detach(), y)
    bwd(g, h.detach(), y, dh)
    torch.testing.assert_close(y, ref.detach())
    torch.testing.assert_close(dh, h.grad)


def test_activation_cost_intervals_contain_the_median():
    out = activation_cost(numel=4096, reps=12)
    assert set(out["ns_per_element"]) == set(ACTIVATION_COST_SET)
    n = len(ACTIVATION_COST_SET)
    assert len(out["ratios"]) == n * (n - 1) // 2
    assert {f"{a}/relu" for a in ACTIVATION_COST_SET[1:]} <= set(out["ratios"])
    for r in out["ratios"].values():
        lo, hi = r["ci95"]
        assert 0 < lo <= r["median"] <= hi and r["coverage"] >= 0.95 and r["n"] == 12
    few = activation_cost(["relu", "gelu"], numel=1024, reps=3)
    assert math.isnan(few["ratios"]["gelu/relu"]["ci95"][0])


# --- swish_beta --------------------------------------------------------------------------------

def test_swish_beta_limits():
    m = swish_beta.measure()
    assert 1.6 <= m["gelu"]["best_beta"] <= 1.8
    assert m["gelu"]["max_gap"] < 0.02 and m["gelu"]["holds"]
    # the best beta is better than SiLU's 1 and than quick-GELU's 1.702 on the same grid ...
    assert m["gelu"]["max_gap"] < m["gelu"]["gap_at_quick_gelu_beta"] < m["gelu"]["gap_at_beta_1"]
    # ... and a minimum: its neighbours, computed here on the same grid, are further from GELU
    x = torch.linspace(-6, 6, 12001, dtype=torch.float64)
    best = m["gelu"]["best_beta"]
    for beta in (best - 2e-3, best, best + 2e-3):
        gap = (swish(x, beta) - gelu(x)).abs().max().item()
        if beta == best:
            assert gap == pytest.approx(m["gelu"]["max_gap"], rel=1e-9)
        else:
            assert gap > m["gelu"]["max_gap"]
    # closed forms: beta * 6^2 / 4 (the grid's end) and 0.2785 / beta
    assert m["linear"]["max_gap"] == pytest.approx(1e-3 * 36 / 4, rel=1e-3)
    assert m["relu"]["max_gap"] == pytest.approx(0.27846 / 50, rel=1e-3)
    assert verdict(make_results({}, measured={"swish_beta": m}), "swish_beta").verdict == ClaimVerdict.SUPPORTED
    bad = {**m, "gelu": {**m["gelu"], "max_gap": 0.2, "holds": False}}
    v = verdict(make_results({}, measured={"swish_beta": bad}), "swish_beta")
    assert v.verdict == ClaimVerdict.NOT_SUPPORTED and "gelu" in v.explanation
    assert verdict(make_results({}), "swish_beta").verdict == ClaimVerdict.INCONCLUSIVE


# --- saturation --------------------------------------------------------------------------------

TINY = ModelConfig(dim=16, n_layers=1, n_heads=2, seq_len=16)


@pytest.fixture(scope="module")
def sat():
    return saturation(TINY, rows=2048)


def test_saturation_measured_shares(sat):
    rnd, stds = sat["random"]["share"], sat["random"]["std"]
    assert stds[0] == 1.0 and stds[-1] >= 8.0
    assert all(abs(s - 0.5) < 0.02 for s in rnd["relu"])  # its exact-zero half, at any scale
    # at the unit variance of the lab's init sigmoid barely saturates, less than relu ...
    assert rnd["sigmoid"][0] < 0.01 < rnd["relu"][0]
    assert sat["model"]["share"]["sigmoid"] < 0.01 < sat["model"]["share"]["relu"]
    # ... and saturates as the pre-activations grow, past relu at std 8
    for name in ("sigmoid", "tanh"):
        assert rnd[name] == sorted(rnd[name]) and rnd[name][-1] > rnd["relu"][-1]
    # tanh(x) = 2 sigmoid(2x) - 1: at std s tanh saturates like sigmoid at std 2s
    assert rnd["tanh"][0] == pytest.approx(rnd["sigmoid"][1], abs=1e-9)


def test_saturation_gradients(sat):
    g, r = sat["model"]["w1_grad_norm"], sat["random"]["w1_grad_norm"]
    assert g["sigmoid"] < 0.5 * g["relu"]  # slope at most 1/4
    assert r["sigmoid"][-1] < r["sigmoid"][0] and r["tanh"][-1] < r["tanh"][0]
    assert r["relu"][-1] == pytest.approx(r["relu"][0], rel=1e-5)  # relu' is scale-free


def test_saturation_claim_from_measured(sat):
    v = verdict(make_results({}, measured={"saturation": sat}), "saturation")
    assert v.verdict == ClaimVerdict.NOT_SUPPORTED  # relu's zero half outnumbers sigmoid's flat tails
    assert "initialisation, not after training" in v.explanation


def _sat(share, grad):
    names = ("relu", "sigmoid", "tanh", "gelu", "swish")
    return {"threshold": 0.1, "seed": 0,
            "model": {"share": dict(zip(names, share, strict=True)),
                      "w1_grad_norm": dict(zip(names, grad, strict=True))},
            "random": {"std": [1.0], "share": {n: [x] for n, x in zip(names, share, strict=True)},
                       "w1_grad_norm": {n: [x] for n, x in zip(names, grad, strict=True)}}}


@pytest.mark.parametrize("share, grad, expected", [
    # relu sigmoid tanh gelu swish
    ((0.1, 0.6, 0.5, 0.2, 0.2), (1.0, 0.2, 0.4, 0.9, 0.9), ClaimVerdict.SUPPORTED),
    ((0.5, 0.01, 0.07, 0.2, 0.2), (1.0, 0.3, 1.2, 1.1, 1.1), ClaimVerdict.NOT_SUPPORTED),
    ((0.1, 0.6, 0.5, 0.2, 0.2), (1.0, 0.2, 1.4, 0.9, 0.9), ClaimVerdict.NOT_SUPPORTED),  # tanh's grad larger
])
def test_saturation_verdict(share, grad, expected):
    v = verdict(make_results({}, measured={"saturation": _sat(share, grad)}), "saturation")
    assert v.verdict == expected


def test_saturation_not_measured():
    v = verdict(make_results({}), "saturation")
    assert v.verdict == ClaimVerdict.INCONCLUSIVE and "Not measured" in v.explanation


# --- the runner stores them, results.json keeps them ---------------------------------------------

def test_runner_measure_stores_the_claims_measurements():
    fake = SimpleNamespace(
        variants=["relu"], model_cfg=TINY, device=torch.device("cpu"), dtype=torch.float32,
        backend="reference", train_cfg=SimpleNamespace(batch_size=2),
        preset=SimpleNamespace(timing_reps=2, act_numel=1024), measured={})
    CompareRunner.measure(fake)
    assert set(fake.measured["activation_cost"]["ns_per_element"]) == set(ACTIVATION_COST_SET)
    assert fake.measured["saturation"]["at"] == "initialisation (no training)"
    assert fake.measured["swish_beta"]["gelu"]["holds"]
    assert {"activation_cost", "saturation", "swish_beta"} <= set(R.EXTRA_MEASUREMENTS)
    verdicts = {v.claim_id: v.verdict for v in C.check_claims(make_results({}, measured=fake.measured))}
    assert verdicts["swish_beta"] == ClaimVerdict.SUPPORTED and verdicts["saturation"] == ClaimVerdict.NOT_SUPPORTED
    assert "Not measured" not in verdict(make_results({}, measured=fake.measured),
                                         "sigmoid_cost").explanation
