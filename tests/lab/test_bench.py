import contextlib
import io
import json
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ffnlab.cli import main
from ffnlab.lab import bench_elementwise as E
from ffnlab.lab import bench_providers as P
from ffnlab.lab.bench import Config, _time_round_robin
from ffnlab.lab.bench_report import evaluate_targets, to_markdown
from ffnlab.lab.timing import best_ceilings, spread
from ffnlab.ops import engines

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
    m = result["machine"]
    assert m["device"] == "cpu" and m["torch"] == torch.__version__ and m["date"]
    assert result["config"]["tokens"] == [32] and result["config"]["hidden"]["swiglu"] == [40]
    assert result["ceilings"]["copy_bytes_per_s"] > 0 and result["ceilings"]["matmul_flops_per_s"] > 0
    # One row per (variant, provider), in the order asked for.
    providers = ["reference", "fused:none", "fused:activation", "fused:full", "triton", "liger",
                 "matmul"]
    assert [(r["variant"], r["provider"]) for r in result["rows"]] == [
        (v, p) for v in ("swiglu", "relu") for p in providers
    ]
    for r in result["rows"]:
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
            assert r.get("kernel") == ("aten" if r["provider"].startswith("fused") else None)
    assert json.loads((out / "bench.json").read_text()) == result
    assert (out / "bench.png").stat().st_size > 1000
    md = (out / "bench.md").read_text()
    assert "| provider |" in md and "## Targets" in md


def test_skipped_providers_carry_a_reason(tiny_run):
    _, out = tiny_run
    result = json.loads((out / "bench.json").read_text())
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


def test_saved_bytes_per_token(tiny_run):
    _, out = tiny_run
    result = json.loads((out / "bench.json").read_text())
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


def test_spread_is_iqr_over_median():
    assert spread([1.0, 1.0, 1.0]) == 0.0  # too few to say
    assert spread([10.0] * 8) == 0.0
    assert spread([8.0, 9.0, 10.0, 11.0, 12.0]) == pytest.approx((11.5 - 8.5) / 10.0)


def test_best_ceilings_keeps_the_higher_of_each():
    a = {"copy_bytes_per_s": 5.0, "matmul_flops_per_s": 9.0, "matmul_n": 8}
    b = {"copy_bytes_per_s": 7.0, "matmul_flops_per_s": 3.0, "matmul_n": 8}
    assert best_ceilings(a, b) == {"copy_bytes_per_s": 7.0, "matmul_flops_per_s": 9.0,
                                   "matmul_n": 8}


def test_elementwise_rows_count_bytes(tiny_run):
    _, out = tiny_run
    result = json.loads((out / "bench.json").read_text())
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


def test_table_output(tmp_path, capsys):
    argv = ["bench", *TINY, "--variants", "geglu", "--providers", "reference,matmul,liger",
            "--no-elementwise", "--out", str(tmp_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "geglu: dim 16, hidden 40, 32 tokens" in out
    assert "Targets" in out and "n/a" in out  # not the target's shape: no verdict
    assert "liger: Liger-Kernel runs on CUDA only" in out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["elementwise"] == []


def test_default_hidden_sizes():
    args = SimpleNamespace(variants="relu,swiglu", dim=16, hidden=None, multiple_of=256,
                           tokens="8", dtype="float32", device="cpu", providers=None,
                           repeats=1, warmup=0, seed=0, elementwise=True)
    cfg = Config.from_args(args)
    assert cfg.hiddens("relu") == [64]  # 4 * dim, not rounded
    assert cfg.hiddens("swiglu") == [256]  # int(2 * 64 / 3) = 42, rounded up to 256
    assert Config.from_args(SimpleNamespace(**{**vars(args), "multiple_of": 16})).hiddens(
        "swiglu") == [48]
    assert Config.from_args(SimpleNamespace(**{**vars(args), "hidden": "40,24"})).hiddens(
        "relu") == [40, 24]


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
    cfg = Config(variants=["relu"], dim=4, hidden=None, multiple_of=1, tokens=[2],
                 dtype=torch.float32, device=torch.device("cpu"), providers=["reference"],
                 repeats=3, warmup=2, seed=0)
    good = _Count()
    ticks = []
    runners = {"boom": _Boom(), "good": good, "later": _FailsLater()}
    times, failed = _time_round_robin(runners, None, cfg, lambda: ticks.append(1))
    assert failed == {"boom": "RuntimeError: no kernel for this",
                      "later": "MemoryError: out of memory"}
    assert list(times) == ["good"] and len(times["good"]["fwd"]) == 3
    assert good.calls == 2 * 2 + 2 * 3 and len(ticks) == 3


def test_matmul_floor_matches_reference_flop_count():
    # The floor's forward is the reference's three products: same output for the same hidden.
    setup = P.make_setup("swiglu", 8, 24, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    inp = P.make_inputs(setup, 5, seed=1)
    floor = P.build_runner("matmul", setup)
    a = floor._hidden(inp)[0]
    assert torch.equal(floor.fwd(inp), a @ setup.module.w2.weight.detach().t())
    floor.fwd_bwd(inp)  # runs, gated and plain
    P.build_runner("matmul", P.make_setup("relu", 8, 24, dtype=torch.float64,
                                          device=torch.device("cpu"), seed=1)).fwd_bwd(inp)


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


def test_paired_ratio_is_the_median_of_per_round_ratios():
    from ffnlab.lab.bench import _paired_ratio

    a, b = [10.0, 20.0, 30.0], [10.0, 10.0, 30.0]  # rounds 1.0, 2.0, 1.0
    assert _paired_ratio(a, b) == pytest.approx(1.0)  # ratio of medians would say 2.0
    assert _paired_ratio([10.0, 20.0], [10.0, 10.0, 10.0]) == pytest.approx(1.5)  # unaligned
    assert _paired_ratio([], b) is None and _paired_ratio(a, None) is None


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


def test_markdown_lists_skips():
    result = {
        "machine": {"device_name": "cpu0", "device": "cpu", "torch_threads": 1, "torch": "t",
                    "triton": None, "python": "3", "date": "d"},
        "ceilings": {"copy_bytes_per_s": 1e9, "matmul_flops_per_s": 1e9, "matmul_dtype": "float32",
                     "matmul_n": 8},
        "config": {"dtype": "float32", "dim": 512, "repeats": 1, "warmup": 0, "device": "cpu"},
        "rows": [_row("reference", 1.0, 10.0),
                 {**_row("triton", None, None), "status": "skipped", "reason": "needs CUDA"}],
    }
    result["targets"] = evaluate_targets(result)
    md = to_markdown(result)
    assert "- triton: needs CUDA  [swiglu]" in md and "| reference |" in md


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


@pytest.mark.parametrize("engine_name", ["aten", "inductor", "triton"])
def test_engine_runner_computes_the_middle(engine_name):
    # The same runner times the Triton kernels on CUDA; here they run in the interpreter.
    if engine_name == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            pytest.skip("needs TRITON_INTERPRET=1 on a machine without CUDA")
    runner = E.EngineRunner(engines.ENGINES[engine_name], "swish")
    h1, h3, g = (torch.randn(6, 40) for _ in range(3))
    inp = SimpleNamespace(h1=h1.requires_grad_(), h3=h3.requires_grad_(), g=g)
    m = runner.fwd(inp)
    m = m[0] if isinstance(m, tuple) else m
    torch.testing.assert_close(m, F.silu(h1.detach()) * h3.detach())
    runner.fwd_bwd(inp)  # runs without autograd: the engine's own backward
    assert h1.grad is None


def test_private_inputs_protect_shared_tensors():
    # A runner whose backward overwrites its inputs (as Liger's does) gets its own copy.
    from ffnlab.lab.bench import _HiddenInputs

    class Mutating(E.ElementwiseRunner):
        def fwd_bwd(self, inp):
            inp.h1.data.fill_(7.0)

    shared = _HiddenInputs(torch.ones(3, 4, requires_grad=True), None, torch.ones(3, 4))
    runner = E._PrivateInputs(Mutating(lambda h1, h3: h1 * 2))
    runner.fwd_bwd(shared)
    assert torch.equal(shared.h1, torch.ones(3, 4))
    assert torch.equal(runner.fwd(shared), torch.full((3, 4), 14.0))  # runs on the copy


def test_nan_ratio_is_written_as_null(tmp_path, monkeypatch, capsys):
    import ffnlab.lab.bench as B

    real = B.measure

    def nan_measure(cfg, tick=lambda: None):
        result = real(cfg, tick)
        ok = next(r for r in result["rows"] if r["status"] == "ok")
        ok["fwd_vs_reference"] = float("nan")
        ok["fwd_vs_matmul"] = float("inf")
        return result

    monkeypatch.setattr(B, "measure", nan_measure)
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


def test_fused_elementwise_row_uses_the_engine_the_op_picks(monkeypatch):
    from dataclasses import replace

    h1 = torch.zeros(8, 16)
    assert E._fused_cpu_engine(h1, h1, "swish", "forward") is engines.ATEN
    low = replace(engines.INDUCTOR, min_elements=128)
    monkeypatch.setitem(engines.ENGINES, "inductor", low)
    assert E._fused_cpu_engine(h1, h1, "swish", "forward") is low
    # per direction, as the fused op: gated gelu's forward stays on ATen
    assert E._fused_cpu_engine(h1, h1, "gelu", "forward") is engines.ATEN
    assert E._fused_cpu_engine(h1, h1, "gelu", "backward") is low
