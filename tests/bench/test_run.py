"""run_bench: one result object with a row per (variant, hidden, tokens, provider)."""

import pytest
import torch

from ffnlab.bench import BenchConfig, run_bench
from ffnlab.bench.run import duplicate_providers, time_providers

PROVIDERS = ("reference", "fused:none", "fused:activation", "fused:full", "triton", "liger",
             "matmul")


@pytest.fixture(scope="module")
def tiny_result():
    """One small run shared by the tests below."""
    cfg = BenchConfig(variants=("swiglu", "relu"), dim=16, hidden=(40,), tokens=(32,),
                      repeats=2, warmup=1, providers=PROVIDERS)
    return run_bench(cfg)


def test_result_structure(tiny_result):
    result = tiny_result
    assert set(result) >= {"machine", "config", "ceilings", "rows", "elementwise", "targets"}
    m = result["machine"]
    assert m["device"] == "cpu" and m["torch"] == torch.__version__ and m["date"]
    assert result["config"]["tokens"] == [32] and result["config"]["hidden"]["swiglu"] == [40]
    assert result["ceilings"]["copy_bytes_per_s"] > 0 and result["ceilings"]["matmul_flops_per_s"] > 0
    # One row per (variant, provider), in the order asked for.
    assert [(r["variant"], r["provider"]) for r in result["rows"]] == [
        (v, p) for v in ("swiglu", "relu") for p in PROVIDERS
    ]
    for r in result["rows"]:
        assert "kernel" not in r  # the engine is called the engine
        if r["status"] == "ok":
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
            assert r["fwd_bwd_flops_per_s"] == pytest.approx(
                3 * r["fwd_flops_per_s"] * r["fwd_ms"] / r["fwd_bwd_ms"])
            assert r["fwd_bwd_matmul_share"] == pytest.approx(
                r["fwd_bwd_flops_per_s"] / result["ceilings"]["matmul_flops_per_s"])
            assert r["peak_bytes"] is None  # CPU: no allocator statistics
            if r["provider"] != "matmul":  # every provider computes the reference's output
                assert r["max_rel_err"] < 1e-5
            # the elementwise engine that ran, for the fused rows (tiny sizes: ATen's)
            assert r.get("engine") == ("aten" if r["provider"].startswith("fused") else None)


def test_skipped_providers_carry_a_reason(tiny_result):
    result = tiny_result
    by = {(r["variant"], r["provider"]): r for r in result["rows"]}
    for v in ("swiglu", "relu"):
        for p in ("triton", "liger"):  # no CUDA here
            r = by[(v, p)]
            assert r["status"] == "skipped" and "CUDA" in r["reason"]
            assert "fwd_ms" not in r
    for r in result["rows"] + result["elementwise"]:
        assert r["status"] in ("ok", "skipped")
        if r["status"] == "skipped":
            assert isinstance(r["reason"], str) and r["reason"]


def test_saved_bytes_per_token(tiny_result):
    result = tiny_result
    by = {(r["variant"], r["provider"]): r for r in result["rows"]}
    # Reference SwiGLU keeps x [dim] and four [hidden] tensors (h1, silu(h1), h3, product),
    # fp32: 4 * (16 + 4 * 40) bytes per token. ReLU keeps x and relu's output.
    assert by[("swiglu", "reference")]["saved_bytes_per_token"] == 4 * (16 + 4 * 40)
    assert by[("relu", "reference")]["saved_bytes_per_token"] == 4 * (16 + 40)
    assert by[("swiglu", "matmul")]["saved_bytes_per_token"] is None
    act, full = by[("swiglu", "fused:activation")], by[("swiglu", "fused:full")]
    if act["status"] == "ok":  # x, h1, h3 / x alone
        assert act["saved_bytes_per_token"] == 4 * (16 + 2 * 40)
        assert full["saved_bytes_per_token"] == 4 * 16
        assert full["saved_vs_reference"] == pytest.approx(16 / 176)
    else:
        assert act["reason"] and full["reason"]


def test_elementwise_rows_count_bytes(tiny_result):
    result = tiny_result
    for r in result["elementwise"]:
        if r["status"] == "ok":
            assert r["fwd_copy_share"] == pytest.approx(
                r["fwd_bytes"] / (r["fwd_ms"] / 1e3) / result["ceilings"]["copy_bytes_per_s"])
    ref = {r["variant"]: r for r in result["elementwise"] if r["provider"] == "reference"}
    # gated: fwd reads h1, h3 and writes m; backward reads g, h1, h3 and writes dh1, dh3.
    assert ref["swiglu"]["fwd_bytes"] == 3 * 32 * 40 * 4
    assert ref["swiglu"]["fwd_bwd_bytes"] == 8 * 32 * 40 * 4
    assert ref["relu"]["fwd_bytes"] == 2 * 32 * 40 * 4
    assert ref["relu"]["fwd_bwd_bytes"] == 5 * 32 * 40 * 4


def test_progress_ticks_once_per_round():
    cfg = BenchConfig(variants=("relu",), dim=8, tokens=(4, 8), repeats=2, warmup=0,
                      providers=("reference", "matmul"))
    ticks = []
    run_bench(cfg, tick=lambda: ticks.append(1))
    assert len(ticks) == cfg.progress_steps() == 2 * 2 * 2  # tokens x repeats x (ffn, elementwise)


class _Boom:
    backend = None

    def fwd(self, inp):
        raise RuntimeError("no kernel for this\nsecond line")

    fwd_bwd = fwd


class _Count:
    backend = None

    def __init__(self):
        self.calls = 0

    def fwd(self, inp):
        self.calls += 1

    fwd_bwd = fwd


class _FailsLater(_Count):
    def fwd_bwd(self, inp):
        self.calls += 1
        if self.calls > 4:
            raise MemoryError("out of memory")


def test_failing_provider_is_reported_not_raised():
    cfg = BenchConfig(variants=("relu",), dim=4, multiple_of=1, tokens=(2,),
                      providers=("reference",), repeats=3, warmup=2, seed=0)
    good = _Count()
    ticks = []
    runners = {"boom": _Boom(), "good": good, "later": _FailsLater()}
    times, failed = time_providers(runners, None, cfg, lambda: ticks.append(1))
    assert failed == {"boom": "RuntimeError: no kernel for this",
                      "later": "MemoryError: out of memory"}
    assert list(times) == ["good"] and len(times["good"]["fwd"]) == 3
    assert good.calls == 2 * 2 + 2 * 3 and len(ticks) == 3


def test_triton_row_is_not_a_second_fused_activation_row():
    # On CUDA the fused op runs the Triton engine: backend="triton" is the same code.
    runs = {"reference": object(), "fused:activation": object(), "triton": object()}
    cuda = {"reference": None, "fused:activation": "triton", "triton": "triton"}
    assert duplicate_providers(runs, cuda) == {
        "triton": "same code as fused:activation (engine triton)"}
    # On CPU (ATen or inductor engine), or without the fused row, both are timed.
    assert duplicate_providers(runs, {**cuda, "fused:activation": "aten"}) == {}
    assert duplicate_providers(runs, {**cuda, "fused:activation": "inductor"}) == {}
    del runs["fused:activation"]
    assert duplicate_providers(runs, cuda) == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rows_time_distinct_things():
    cfg = BenchConfig(variants=("swiglu",), dim=64, tokens=(128,), repeats=2, warmup=1,
                      device=torch.device("cuda"), providers=("reference", "fused", "triton"))
    rows = {r["provider"]: r for r in run_bench(cfg)["rows"]}
    assert rows["fused:activation"]["status"] == "ok"
    assert rows["fused:activation"]["engine"] == "triton"
    assert rows["triton"]["status"] == "skipped"
    assert rows["triton"]["reason"] == "same code as fused:activation (engine triton)"
