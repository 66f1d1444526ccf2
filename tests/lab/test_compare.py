import json
import math
from pathlib import Path

import pytest
import torch

import ffnlab
from ffnlab.cli import main
from ffnlab.lab import config

TEXT = (
    "It was the best of times, it was the worst of times; a feed-forward block maps every "
    "token alone, while attention mixes them. The five boxing wizards jump quickly. "
) * 40

VARIANT_FIELDS = {
    "name", "gated", "activation", "hidden", "params", "val_bpb_mean", "val_bpb_std",
    "tokens_per_s", "ffn_ms", "act_ns_per_element", "saved_bytes_per_token", "dead_fraction",
    "curve", "runs",
}
RUN_FIELDS = {"seed", "val_bpb", "curve", "tokens_per_s", "dead_fraction", "final_train_loss",
              "wall_s", "diverged"}


@pytest.fixture
def argv(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)

    def make(*extra, out="out"):
        # --backend reference: under TRITON_INTERPRET=1 "auto" would run the (slow) interpreter
        # --workers 1: in this process, where monkeypatching reaches (the pool has its tests)
        return ["compare", "--preset", "smoke", "--steps", "4", "--data", str(data),
                "--backend", "reference", "--workers", "1", "--out", str(tmp_path / out), *extra]

    return make


def _results(tmp_path, out="out"):
    return json.loads((tmp_path / out / "results.json").read_text())


def test_end_to_end_schema(argv, tmp_path, capsys):
    assert main(argv("--variants", "relu,swiglu", "--seeds", "2", "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    res = _results(tmp_path)
    assert printed == res
    assert res["schema_version"] == 2 and res["status"] == "complete" and res["missing"] == []
    cfg = res["config"]
    for key in ("preset", "steps", "seeds", "device", "dtype", "model", "lr", "warmup",
                "tokens_per_run", "eval_every", "dead_threshold", "versions", "started", "finished"):
        assert key in cfg, key
    assert cfg["preset"] == "smoke" and cfg["steps"] == 4 and cfg["seeds"] == [0, 1]
    assert set(cfg["model"]) >= {"dim", "n_layers", "n_heads", "seq_len", "batch_size",
                                 "plain_hidden", "gated_hidden", "vocab"}
    m = cfg["model"]
    assert cfg["tokens_per_run"] == 4 * m["batch_size"] * m["seq_len"]
    assert set(cfg["versions"]) == {"ffnlab", "torch", "python"}
    assert res["corpus"]["name"] == "corpus.txt" and res["corpus"]["bytes"] == len(TEXT)
    assert len(res["corpus"]["sha256"]) == 64
    assert [v["name"] for v in res["variants"]] == ["relu", "swiglu"]
    for v in res["variants"]:
        assert set(v) >= VARIANT_FIELDS
        assert v["params"] == ffnlab.ffn_params(v["name"], m["dim"], v["hidden"], bias=False)
        assert [r["seed"] for r in v["runs"]] == [0, 1]
        for r in v["runs"]:
            assert set(r) >= RUN_FIELDS and r["diverged"] is False
        bpbs = [r["val_bpb"] for r in v["runs"]]
        assert v["val_bpb_mean"] == pytest.approx(sum(bpbs) / 2)
        assert v["val_bpb_std"] == pytest.approx(abs(bpbs[0] - bpbs[1]) / math.sqrt(2))
        assert v["curve"][0][0] == 0 and v["curve"][-1][0] == 4
        assert v["ffn_ms"] > 0 and v["act_ns_per_element"] > 0 and v["saved_bytes_per_token"] > 0
        assert 0.0 <= v["dead_fraction"] <= 1.0
    assert (tmp_path / "out" / "report.md").stat().st_size > 0
    assert (tmp_path / "out" / "runs" / "swiglu-s1.json").exists()
    assert not list((tmp_path / "out" / "checkpoints").glob("*.safetensors"))


def test_rerun_skips_finished_runs_and_adds_new_ones(argv, tmp_path):
    assert main(argv("--variants", "relu")) == 0
    first = (tmp_path / "out" / "runs" / "relu-s0.json").read_bytes()
    assert main(argv("--variants", "relu,gelu")) == 0
    assert (tmp_path / "out" / "runs" / "relu-s0.json").read_bytes() == first
    assert [v["name"] for v in _results(tmp_path)["variants"]] == ["relu", "gelu"]


def test_config_mismatch_is_refused(argv, tmp_path, capsys):
    assert main(argv("--variants", "relu")) == 0
    capsys.readouterr()
    bad = argv("--variants", "relu")
    bad[bad.index("--steps") + 1] = "6"
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert "different train" in err and len(err.strip().splitlines()) == 1


def test_interrupt_writes_partial_results_then_resumes(argv, tmp_path, monkeypatch, capsys):
    import ffnlab.lab.train.loop as train_mod

    real = train_mod.train_run
    calls = []

    def flaky(variant, seed, *a, **kw):
        calls.append((variant, seed))
        if variant == "gelu":
            raise KeyboardInterrupt
        return real(variant, seed, *a, **kw)

    monkeypatch.setattr(train_mod, "train_run", flaky)
    assert main(argv("--variants", "relu,gelu")) == 130
    res = _results(tmp_path)
    assert res["status"] == "partial"
    assert res["missing"] == [{"variant": "gelu", "seed": 0}]
    assert [v["name"] for v in res["variants"]] == ["relu"]
    assert (tmp_path / "out" / "report.md").exists()
    monkeypatch.setattr(train_mod, "train_run", real)
    assert main(argv("--variants", "relu,gelu")) == 0
    assert _results(tmp_path)["status"] == "complete"


def test_memory_check_refuses(argv, monkeypatch, capsys):
    import ffnlab.lab.measure.memory as measure_mod

    monkeypatch.setattr(measure_mod, "available_memory_bytes", lambda device: 1024)
    assert main(argv()) == 2
    err = capsys.readouterr().err
    assert "GiB but only" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value, needle", [
    ("--preset", "quik", "did you mean 'quick'"),
    ("--variants", "swigl", "did you mean 'swiglu'"),
    ("--backend", "fast", "unknown backend"),
    ("--seeds", "0", "--seeds must be a positive integer"),
    ("--seed", "-1", "--seed must be a non-negative integer"),
    ("--resolution", "0", "--resolution must be a positive number"),
    ("--resolution", "-1", "--resolution must be a positive number"),
    ("--max-seeds", "1", "--max-seeds must be an integer >= 2"),
    ("--data-fraction", "0", "--data-fraction must be in (0, 1]"),
    ("--data-fraction", "1.01", "--data-fraction must be in (0, 1]"),
    ("--workers", "0", "--workers must be a positive integer"),
])
def test_usage_errors(argv, capsys, flag, value, needle):
    args = argv()
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (Path(args[args.index("--out") + 1])).exists()  # nothing written


def _quality(res: dict) -> dict:
    return {(v["name"], r["seed"]): (r["val_bpb"], r["curve"], r["dead_fraction"])
            for v in res["variants"] for r in v["runs"]}


def test_worker_pool_equals_a_serial_run_bit_for_bit(argv, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each pool worker uses
    try:
        assert main(argv("--variants", "relu,swiglu,gelu", "--seeds", "2", out="serial")) == 0
    finally:
        torch.set_num_threads(threads)
    pooled = argv("--variants", "relu,swiglu,gelu", "--seeds", "2", out="pool")
    pooled[pooled.index("--workers") + 1] = "2"
    assert main(pooled) == 0
    serial, pool = _results(tmp_path, "serial"), _results(tmp_path, "pool")
    assert len(_quality(serial)) == 6 and _quality(pool) == _quality(serial)
    assert pool["comparisons"] == serial["comparisons"]


def test_adaptive_seeding_adds_seeds_until_resolved_or_budget(argv, tmp_path):
    # An unreachable resolution: seeds are added up to the budget, and the report says so.
    assert main(argv("--variants", "relu,gelu", "--seeds", "2", "--max-seeds", "4",
                     "--resolution", "1e-9")) == 0
    res = _results(tmp_path)
    assert res["config"]["seeds"] == [0, 1, 2, 3]
    assert res["config"]["seeding"]["counts"] == {"relu": 4, "gelu": 4}
    assert res["config"]["seeding"]["complete"] is True and res["config"]["resolution_bpb"] == 1e-9
    (c,) = res["comparisons"]
    assert (c["a"], c["b"], c["n"]) == ("gelu", "relu", 4) and c["resolved"] is False
    # A generous resolution: the first seeds suffice.
    assert main(argv("--variants", "relu,gelu", "--seeds", "2", "--max-seeds", "4",
                     "--resolution", "10", out="easy")) == 0
    easy = _results(tmp_path, "easy")
    assert easy["config"]["seeds"] == [0, 1] and easy["comparisons"][0]["verdict"] == "equivalent"


def test_data_fraction_trains_on_less_and_scores_on_the_same_bytes(argv, tmp_path):
    assert main(argv("--variants", "relu", "--data-fraction", "0.25", out="quarter")) == 0
    res = _results(tmp_path, "quarter")
    assert res["config"]["data_fraction"] == 0.25
    assert main(argv("--variants", "relu", out="whole")) == 0
    whole = _results(tmp_path, "whole")
    q, w = res["corpus"], whole["corpus"]
    assert q["sha256"] == w["sha256"] and q["val_bytes"] == w["val_bytes"]  # same validation
    assert q["train_bytes"] == int(w["train_bytes"] * 0.25)
    assert res["variants"][0]["runs"][0]["val_bpb"] != whole["variants"][0]["runs"][0]["val_bpb"]

def test_presets_fit_the_budget():
    for name in config.PRESETS:
        preset, model, train = config.resolve_config(name)
        assert train.warmup < train.steps and train.eval_every <= train.steps
    _, _, t = config.resolve_config("quick", steps=8)
    assert t.steps == 8 and t.warmup == 0 and t.eval_every == 2


def test_aggregate_leaves_diverged_runs_out_of_quality_numbers():
    from ffnlab.lab.run.results import aggregate_variant

    def run(seed, bpb, curve, diverged):
        return {"seed": seed, "val_bpb": bpb, "curve": curve, "tokens_per_s": 100.0 * (seed + 1),
                "dead_fraction": 0.5 if diverged else 0.1, "final_train_loss": 1.0,
                "wall_s": 1.0, "diverged": diverged}

    good = run(0, 3.0, [[0, 8.0], [10, 3.0]], False)
    bad = run(1, None, [[0, 8.0], [10, 40.0]], True)
    v = aggregate_variant("relu", [good, bad], dim=8, measured={})
    assert v["curve"] == [[0, 8.0], [10, 3.0]]
    assert v["val_bpb_mean"] == 3.0 and v["dead_fraction"] == 0.1
    assert v["diverged_runs"] == 1 and v["tokens_per_s"] == 150.0  # speed is still measured


def test_a_comparison_its_time_budget_ended_is_not_extended_by_running_it_again(
        argv, tmp_path, monkeypatch):
    """The same command on a finished comparison adds no run: an earlier invocation's budget
    that ended the adaptive rounds is recorded (``seeding.json``) and honoured; a larger budget
    goes on."""
    from ffnlab.lab.run import runner as R

    class Spent:  # every reading after the first is far past any budget
        calls = 0

        @classmethod
        def monotonic(cls) -> float:
            cls.calls += 1
            return 0.0 if cls.calls == 1 else 1e9

    flags = ("--variants", "relu,gelu", "--seeds", "2", "--max-seeds", "6", "--time-budget", "1000")
    monkeypatch.setattr(R, "time", Spent)
    assert main(argv(*flags)) == 0
    monkeypatch.undo()
    seeding = json.loads((tmp_path / "out" / "seeding.json").read_text())
    assert seeding["stopped_by_budget"] == 1000.0
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").glob("*.json"))
    assert runs == ["gelu-s0.json", "gelu-s1.json", "relu-s0.json", "relu-s1.json"]
    res = _results(tmp_path)
    assert res["config"]["seeding"]["stopped"] == "time budget"
    assert main(argv(*flags)) == 0  # the same command: nothing to add
    assert sorted(p.name for p in (tmp_path / "out" / "runs").glob("*.json")) == runs
    assert _results(tmp_path)["config"]["seeding"]["stopped"] == "time budget"
    assert main(argv(*flags[:-1], "5000")) == 0  # a larger budget goes on deciding rounds
    assert len(list((tmp_path / "out" / "runs").glob("*.json"))) > len(runs)
