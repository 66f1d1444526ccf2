"""`ffnlab bench`: flags -> BenchConfig, files written, tables and JSON printed, bad input."""

import argparse
import contextlib
import io
import json

import pytest
import torch

from ffnlab.bench import BenchConfig
from ffnlab.cli import main
from ffnlab.commands import bench as B

TINY = ["--dim", "16", "--hidden", "40", "--tokens", "32", "--repeats", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One small run shared by the tests below: (its --json stdout, the output folder)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", *TINY, "--variants", "swiglu,relu", "--out", str(out), "--json",
            "--providers", "reference,fused,triton,liger,matmul"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return buf.getvalue(), out


def test_json_structure_and_files(tiny_run):
    stdout, out = tiny_run
    result = json.loads(stdout)
    assert set(result) >= {"machine", "config", "ceilings", "rows", "elementwise", "targets"}
    assert result["config"]["tokens"] == [32] and result["config"]["hidden"]["swiglu"] == [40]
    providers = ["reference", "fused:none", "fused:activation", "fused:full", "triton", "liger",
                 "matmul"]
    assert [(r["variant"], r["provider"]) for r in result["rows"]] == [
        (v, p) for v in ("swiglu", "relu") for p in providers
    ]
    assert json.loads((out / "bench.json").read_text()) == result
    assert (out / "bench.png").stat().st_size > 1000
    md = (out / "bench.md").read_text()
    assert "| provider |" in md and "## Targets" in md
    assert "| fused:activation [aten] |" in md


def _args(**change):
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    return argparse.Namespace(**{**vars(p.parse_args([])), **change})


def test_flags_default_to_the_config_defaults():
    cfg = B.config_from_args(_args())
    assert cfg == BenchConfig()
    cfg = B.config_from_args(_args(variants="swiglu,relu", hidden="40,24,40", tokens="8, 16",
                                   providers="reference,fused", dtype="bf16", warmup=0,
                                   elementwise=False))
    assert cfg.variants == ("swiglu", "relu") and cfg.hidden == (40, 24)
    assert cfg.tokens == (8, 16) and cfg.dtype == torch.bfloat16 and cfg.warmup == 0
    assert cfg.providers == ("reference", "fused:none", "fused:activation", "fused:full")
    assert cfg.elementwise is False


def test_table_output(tmp_path, capsys):
    argv = ["bench", *TINY, "--variants", "geglu", "--providers", "reference,matmul,liger",
            "--no-elementwise", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "geglu: dim 16, hidden 40, 32 tokens" in out
    assert "Targets" in out and "n/a" in out  # not the target's shape: no verdict
    assert "liger: Liger-Kernel runs on CUDA only" in out
    assert f"wrote {tmp_path / 'bench.json'}, bench.md, bench.png" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["elementwise"] == []


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--dim", "0"], "--dim must be a positive integer"),
        (["--tokens", "0"], "--tokens must be a positive integer"),
        (["--tokens", "12,abc"], "--tokens takes positive integers"),
        (["--hidden", "-3"], "--hidden must be a positive integer"),
        (["--repeats", "0"], "--repeats must be a positive integer"),
        (["--warmup", "-1"], "--warmup must be a non-negative integer"),
        (["--dtype", "int8"], "unknown dtype 'int8'"),
        (["--device", "tpu"], "tpu"),
        (["--providers", "fused:activaton"], "did you mean 'fused:activation'"),
        (["--variants", "swigl"], "did you mean 'swiglu'"),
    ],
)
def test_bad_input_exits_2_with_one_line(extra, needle, tmp_path, capsys):
    assert main(["bench", *TINY, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_exits_2(tmp_path, capsys):
    assert main(["bench", *TINY, "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_nan_ratio_is_written_as_null(tmp_path, monkeypatch, capsys):
    real = B.run_bench

    def nan_bench(cfg, tick=lambda: None):
        result = real(cfg, tick)
        ok = next(r for r in result["rows"] if r["status"] == "ok")
        ok["fwd_vs_reference"] = float("nan")
        ok["fwd_vs_matmul"] = float("inf")
        return result

    monkeypatch.setattr(B, "run_bench", nan_bench)
    argv = ["bench", *TINY, "--variants", "relu", "--providers", "reference,matmul",
            "--no-elementwise", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))

    result = strict((tmp_path / "bench.json").read_text())
    ok = next(r for r in result["rows"] if r["status"] == "ok")
    assert ok["fwd_vs_reference"] is None and ok["fwd_vs_matmul"] is None
    assert strict(capsys.readouterr().out) == result
    assert [p.name for p in tmp_path.glob(".*.tmp")] == []


def test_new_variants_are_accepted_and_measured(tmp_path):
    new = ["quick_gelu", "leaky_relu2", "xielu", "qgeglu", "clamped_swiglu"]
    argv = ["bench", "--dim", "8", "--hidden", "16", "--tokens", "16", "--repeats", "1",
            "--warmup", "0", "--no-elementwise", "--providers", "reference,fused:activation",
            "--variants", ",".join(new), "--out", str(tmp_path), "--json"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    rows = json.loads(buf.getvalue())["rows"]
    assert [r["variant"] for r in rows if r["provider"] == "reference"] == new
    for r in rows:
        assert r["status"] == "ok" and r["fwd_bwd_ms"] > 0, (r["variant"], r["provider"])
        assert r["max_rel_err"] is None or r["max_rel_err"] < 1e-5


# --- a mixture of experts: --variants moe:<variant>:<E>x<k>, as ffnlab compare spells it ------

MOE_TINY = ["--dim", "16", "--hidden", "24", "--tokens", "17", "--repeats", "1", "--warmup", "1"]


def _bench_moe(argv, capsys):
    assert main(["bench", *argv, *MOE_TINY, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_moe_spelling_times_a_mixture_of_experts(tmp_path, capsys):
    result, err = _bench_moe(["--variants", " MoE:geglu:4X2 ", "--out", str(tmp_path)], capsys)
    c = result["config"]
    assert (c["variant"], c["n_experts"], c["top_k"], c["hidden"], c["tokens"]) == (
        "geglu", 4, 2, 24, 17)
    assert [r["provider"] for r in result["rows"]] == ["reference", "fused"]
    assert all(r["status"] == "ok" for r in result["rows"])
    assert json.loads((tmp_path / "moe_bench.json").read_text()) == result
    assert (tmp_path / "moe_bench.md").read_text().startswith(
        "# ffnlab bench --variants moe:geglu:4x2\n")
    assert err == "" and not (tmp_path / "bench.json").exists()


@pytest.mark.parametrize(("old", "new"), [
    (["--moe", "4x2"], "moe:swiglu:4x2"),  # swiglu unless --variants names one
    (["--moe", "4x2", "--variants", "geglu"], "moe:geglu:4x2"),
])
def test_moe_flag_is_a_deprecated_alias(old, new, tmp_path, capsys):
    result, err = _bench_moe([*old, "--out", str(tmp_path / "old")], capsys)
    assert err.splitlines() == [f"ffnlab bench: --moe is deprecated; write --variants {new}"]
    same, err = _bench_moe(["--variants", new, "--out", str(tmp_path / "new")], capsys)
    assert err == "" and same["config"] == result["config"]


@pytest.mark.parametrize(("extra", "needle"), [
    (["--variants", "moe:swigl:4x2"], "did you mean 'swiglu'"),
    (["--variants", "moe:swiglu:2x4"], "'moe:swiglu:2x4': top_k=4 exceeds the 2 experts"),
    (["--variants", "moe:swiglu:4"], "the experts part must be <experts>x<top_k>"),
    (["--variants", "relu,moe:swiglu:4x2"],
     "a mixture of experts is timed on its own, fused against the reference loop: give "
     "--variants moe:swiglu:4x2 alone"),
    (["--variants", "moe:swiglu:4x2", "--hidden", "24,32"],
     "moe:swiglu:4x2 is timed at one shape: give one --hidden and one --tokens"),
    (["--variants", "moe:swiglu:4x2", "--moe", "4x2"],
     "--moe is the old spelling of --variants moe:swiglu:4x2: give one of them"),
    (["--moe", "4y2"], "'moe:swiglu:4y2': the experts part must be <experts>x<top_k>"),
])
def test_moe_bad_input_exits_2_with_one_line(extra, needle, tmp_path, capsys):
    assert main(["bench", *TINY, "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if "is deprecated" not in ln]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "moe_bench.json").exists()
