"""Dense vs mixture of experts end to end: a smoke compare of ``swiglu,moe:swiglu:4x2`` gives
total and active parameters, the MoE-vs-dense comparison, the load balance and its plot; and
the report's sentence on whether routing pays follows the interval's verdict."""

from __future__ import annotations

import json

import pytest

from ffnlab.lab.claims.check import check_claims
from ffnlab.lab.compare import run_compare
from ffnlab.lab.config import CompareConfig
from ffnlab.lab.report.moe import moe_blocks, routing_sentence
from ffnlab.lab.report.plots import plot_load_balance
from ffnlab.lab.verdicts import PairVerdict

TEXT = "a small corpus of plain text for the lab, with a few more words in it; " * 60
VARIANTS = ("swiglu", "moe:swiglu:4x2")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("moe")
    (tmp / "c.txt").write_text(TEXT)
    cfg = CompareConfig(preset="smoke", out=tmp / "out", variants=VARIANTS, steps=6, seeds=2,
                        max_seeds=2, workers=1, data=tmp / "c.txt", backend="reference")
    res = run_compare(cfg)
    return res, json.loads(res.results_path.read_text())


def test_params_total_and_active(smoke):
    _, r = smoke
    by = {v["name"]: v for v in r["variants"]}
    dense, moe = by["swiglu"], by["moe:swiglu:4x2"]
    assert dense["params"] == dense["params_total"] == dense["params_active"]
    assert moe["params"] == moe["params_total"] > moe["params_active"]
    m = moe["moe"]
    assert (m["n_experts"], m["top_k"], m["base"]) == (4, 2, "swiglu")
    # dim 32: dense SwiGLU hidden 85, experts of 43 (85 / 2 rounded half up); router 4 x 32
    assert (m["dense_hidden"], m["expert_hidden"], m["router_params"]) == (85, 43, 128)
    assert moe["params_active"] == 2 * 3 * 43 * 32 + 128
    assert moe["params_total"] == 4 * 3 * 43 * 32 + 128
    assert moe["dead_fraction"] is None and "dead_fraction" in moe["skipped"]
    assert moe["saved_bytes_per_token"] > 0 and moe["ffn_ms"] > 0 and moe["tokens_per_s"] > 0


def test_the_moe_is_compared_with_its_dense_twin(smoke):
    _, r = smoke
    (c,) = [c for c in r["comparisons"] if (c["a"], c["b"]) == ("moe:swiglu:4x2", "swiglu")]
    assert c["n"] == 2 and c["seeds"] == [0, 1] and c["verdict"] in tuple(PairVerdict)
    lo, hi = c["ci95"]
    assert lo < c["mean"] < hi
    # the sources' claims are about dense FFNs: none mentions the MoE
    assert all("moe:" not in cl["explanation"] for cl in r["claims"])


def test_load_balance_is_recorded_and_plotted(smoke):
    res, r = smoke
    moe = {v["name"]: v for v in r["variants"]}["moe:swiglu:4x2"]
    lb = moe["load_balance"]
    assert len(lb["cv_per_seed"]) == 2 and lb["cv"] >= 0 and 1 <= lb["max_over_mean"] <= 2
    assert sum(lb["sorted_share"]) == pytest.approx(1.0)
    assert lb["sorted_share"] == sorted(lb["sorted_share"], reverse=True)
    assert lb["uniform_share"] == 0.25
    for run in moe["runs"]:
        assert sum(run["load_balance"]["share"][0]) == pytest.approx(1.0)
    assert {v["name"]: v for v in r["variants"]}["swiglu"]["load_balance"] is None
    png = res.out / "load_balance.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = res.report_path.read_text()
    assert "## Dense vs mixture of experts" in report and "![" in report
    assert "load_balance.png" in report and "routing pays at this size" in report.lower()
    assert (res.out / "runs" / "moe-swiglu-4x2-s1.json").exists()


def test_dense_only_runs_have_no_moe_section_or_plot(smoke):
    _, r = smoke
    dense = {**r, "variants": [v for v in r["variants"] if v["name"] == "swiglu"]}
    assert plot_load_balance(dense) is None
    assert moe_blocks(dense, {}, "caption") == []


def _results(verdict: str, lo: float, hi: float, n: int = 3) -> tuple[dict, dict, dict]:
    moe = {"name": "moe:swiglu:8x2", "tokens_per_s": 30000.0, "moe": {"base": "swiglu"}}
    dense = {"name": "swiglu", "tokens_per_s": 60000.0}
    results = {"config": {"resolution_bpb": 0.02}, "variants": [dense, moe],
               "comparisons": [{"a": moe["name"], "b": "swiglu", "n": n, "mean": (lo + hi) / 2,
                                "ci95": [lo, hi], "verdict": verdict}]}
    return results, moe, dense


@pytest.mark.parametrize(("verdict", "lo", "hi", "start"), [
    (PairVerdict.A_BETTER, -0.05, -0.01, "Routing pays in quality at this size"),
    (PairVerdict.B_BETTER, 0.01, 0.05, "Routing does not pay at this size"),
    (PairVerdict.EQUIVALENT, -0.01, 0.01, "Routing buys no measurable quality at this size"),
    (PairVerdict.UNRESOLVED, -0.05, 0.04, "Whether routing pays at this size is not resolved"),
])
def test_routing_sentence_follows_the_verdict(verdict, lo, hi, start):
    text = routing_sentence(*_results(verdict, lo, hi))
    assert text.startswith(start), text
    assert f"[{lo:+.4f}, {hi:+.4f}]" in text and "30,000 vs 60,000 tokens/s (0.50×" in text


def test_routing_sentence_without_an_interval_or_a_dense_twin():
    results, moe, dense = _results(PairVerdict.UNRESOLVED, float("nan"), float("nan"), n=1)
    assert "too few for an interval" in routing_sentence(results, moe, dense)
    assert "without its dense variant" in routing_sentence(results, moe, None)


def test_claims_leave_moe_variants_out():
    results, moe, dense = _results(PairVerdict.A_BETTER, -0.05, -0.01)
    moe.update(val_bpb_mean=1.0, runs=[{"seed": 0, "val_bpb": 1.0, "diverged": False}])
    dense.update(val_bpb_mean=2.0, runs=[{"seed": 0, "val_bpb": 2.0, "diverged": False}])
    assert all("moe:" not in v.explanation for v in check_claims(results))
