"""Targets, tables and Markdown from a result object."""

import pytest

from ffnlab.bench.report import FFN_COLUMNS, evaluate_targets, to_markdown


def _row(provider, fwd_bwd_ms, saved, **kw):
    base = {"kind": "ffn", "variant": "swiglu", "dim": 512, "hidden": 1536, "tokens": 2048,
            "provider": provider, "status": "ok", "fwd_bwd_ms": fwd_bwd_ms,
            "saved_bytes_per_token": saved}
    return {**base, **kw}


def test_cpu_targets_pass_fail_and_missing():
    result = {"config": {"device": "cpu", "dtype": "float32"}, "rows": [
        _row("reference", 10.0, 100.0),
        _row("fused:activation", 9.0, 60.0),
        _row("fused:full", 12.0, 8.0),
        _row("matmul", 8.0, None),
    ]}
    result["rows"][0].update(fwd_bwd_ms_min=8.0, fwd_bwd_spread=0.25)
    result["rows"][1].update(fwd_bwd_ms_min=8.8, fwd_bwd_spread=0.05)
    t = {x["name"]: x for x in evaluate_targets(result)}
    assert t["fused fwd+bwd time / reference"]["status"] == "PASS"
    assert "fastest calls 1.100, spread 5% / 25%" in t["fused fwd+bwd time / reference"]["note"]
    assert t["fused fwd+bwd time / reference"]["value"] == pytest.approx(0.9)
    assert t["fused fwd+bwd time / matmul floor"]["status"] == "FAIL"  # 9/8 > 1.05
    assert t["saved bytes, recompute=activation / reference"]["status"] == "FAIL"  # 0.60
    assert t["saved bytes, recompute=full / reference"]["status"] == "PASS"
    result["rows"][1] = {**_row("fused:activation", None, None), "status": "skipped",
                         "reason": "not built here"}
    t = {x["name"]: x for x in evaluate_targets(result)}
    assert t["fused fwd+bwd time / reference"]["status"] == "n/a"
    assert "not built here" in t["fused fwd+bwd time / reference"]["note"]
    result["config"]["dtype"] = "bfloat16"
    assert {x["status"] for x in evaluate_targets(result)} == {"n/a"}


def test_time_targets_use_the_paired_ratio_when_rows_carry_it():
    # Ratio of medians 9/10 = 0.9 would pass; the per-round (paired) median 1.02 does not.
    result = {"config": {"device": "cpu", "dtype": "float32"}, "rows": [
        _row("reference", 10.0, 100.0),
        _row("fused:activation", 9.0, 50.0, fwd_bwd_vs_reference=1.02, fwd_bwd_vs_matmul=1.04),
        _row("fused:full", 12.0, 8.0),
        _row("matmul", 8.0, None),
    ]}
    t = {x["name"]: x for x in evaluate_targets(result)}
    assert t["fused fwd+bwd time / reference"]["value"] == pytest.approx(1.02)
    assert t["fused fwd+bwd time / reference"]["status"] == "FAIL"
    assert t["fused fwd+bwd time / matmul floor"]["value"] == pytest.approx(1.04)
    assert t["fused fwd+bwd time / matmul floor"]["status"] == "PASS"


def test_gpu_targets():
    rows = [
        _row("reference", 12.0, 100.0, dim=4096, hidden=11008, tokens=8192),
        _row("fused:activation", 10.0, 50.0, dim=4096, hidden=11008, tokens=8192),
        _row("liger", 9.0, 50.0, dim=4096, hidden=11008, tokens=8192),
    ]
    ew = [{"kind": "elementwise", "variant": "swiglu", "hidden": 11008, "tokens": 8192,
           "provider": "triton", "status": "ok", "fwd_copy_share": 0.9, "fwd_bwd_copy_share": 0.8}]
    result = {"config": {"device": "cuda", "dtype": "bfloat16"}, "rows": rows, "elementwise": ew}
    t = evaluate_targets(result)
    by = {x["name"]: x for x in t}
    assert by["fwd+bwd speedup of fused over eager"]["value"] == pytest.approx(1.2)
    assert by["fwd+bwd speedup of fused over eager"]["status"] == "PASS"
    assert by["fwd+bwd speedup of fused over Liger"]["status"] == "FAIL"
    assert by["saved bytes, fused / Liger"]["status"] == "PASS"
    assert [x["status"] for x in t if x["name"].startswith("elementwise")] == ["PASS", "FAIL"]


def _result(rows):
    result = {
        "machine": {"device_name": "cpu0", "device": "cpu", "torch_threads": 1, "torch": "t",
                    "triton": None, "python": "3", "date": "d"},
        "ceilings": {"copy_bytes_per_s": 1e9, "matmul_flops_per_s": 1e9, "matmul_dtype": "float32",
                     "matmul_n": 8},
        "config": {"dtype": "float32", "dim": 512, "repeats": 1, "warmup": 0, "device": "cpu"},
        "rows": rows,
    }
    result["targets"] = evaluate_targets(result)
    return result


def test_markdown_lists_skips():
    md = to_markdown(_result([_row("reference", 1.0, 10.0),
                              {**_row("triton", None, None), "status": "skipped",
                               "reason": "needs CUDA"}]))
    assert "- triton: needs CUDA  [swiglu]" in md and "| reference |" in md


def test_cells_name_the_engine_and_print_missing_as_a_dash():
    md = to_markdown(_result([_row("reference", 1.0, 10.0, fwd_ms=0.5),
                              _row("fused:activation", 1.25, None, engine="aten",
                                   fwd_bwd_matmul_share=0.456)]))
    assert "| fused:activation [aten] |" in md and "| reference |" in md
    cells = {name: fmt for name, fmt in FFN_COLUMNS}
    fused = _row("fused:activation", 1.25, None, fwd_bwd_matmul_share=0.456, max_rel_err=None)
    assert cells["fwd+bwd ms"](fused) == "1.25" and cells["f+b % mm peak"](fused) == "46%"
    assert cells["saved B/tok"](fused) == "-" and cells["rel err"](fused) == "-"
    assert cells["fwd ms"](fused) == "-"  # not in the row at all
