import json

import pytest

from ffnlab.cli import main
from ffnlab.errors import UsageError
from ffnlab.lab.config import CompareConfig
from ffnlab.lab.sweep import Setting, SweepConfig

TEXT = ("A feed-forward block maps every token alone, while attention mixes them; the five "
        "boxing wizards jump quickly over the lazy dog. ") * 60


def test_settings_are_sorted_unique_and_labelled(tmp_path):
    cfg = SweepConfig(CompareConfig(preset="smoke", out=tmp_path), dims=(64, 32, 64))
    assert [s.label for s in cfg.settings()] == ["dim-32", "dim-64"]
    both = SweepConfig(CompareConfig(preset="smoke", out=tmp_path), dims=(32, 48),
                       data_fractions=(1, 0.25))
    assert [s.label for s in both.settings()] == ["dim-32-data-0.25", "dim-32-data-1",
                                                  "dim-48-data-0.25", "dim-48-data-1"]
    sub = both.config_for(Setting(48, 0.25))
    assert sub.out == tmp_path / "dim-48-data-0.25" and sub.dim == 48
    assert sub.data_fraction == 0.25 and sub.resolved()[1].dim == 48


@pytest.mark.parametrize("kw, message", [
    ({"dims": (31, 64)}, "width 31 is not divisible by the 2 attention heads"),
    ({"dims": (32,)}, "at least two settings"),
    ({"data_fractions": (0.0, 1.0)}, "--data-fraction must be in (0, 1], got 0.0"),
    ({"data_fractions": (0.5, 1.5)}, "--data-fraction must be in (0, 1], got 1.5"),
    ({"dims": (0, 32)}, "--dims"),
])
def test_bad_sweeps_name_the_problem(tmp_path, kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SweepConfig(CompareConfig(preset="smoke", out=tmp_path), **kw)


@pytest.mark.parametrize("flags, message", [
    (["--dims", "33,64"], "not divisible by the 2 attention heads"),
    (["--dims", "31"], "not divisible"),
    (["--dims", "32,x"], "--dims takes positive integers"),
    (["--data-fraction", "0.25,0"], "--data-fraction must be in (0, 1]"),
    (["--data-fraction", "abc"], "--data-fraction takes numbers"),
    (["--optimizers", "adamw,sgd"], "unknown --optimizers 'sgd'"),
])
def test_cli_refuses_bad_sizes_with_one_line_and_writes_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["compare", "--preset", "smoke", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_width_sweep_runs_each_setting_and_writes_the_sweep_report(tmp_path, capsys):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "sweep"
    argv = ["compare", "--preset", "smoke", "--steps", "4", "--data", str(data), "--backend",
            "reference", "--workers", "1", "--variants", "relu,gelu", "--seeds", "2",
            "--dims", "16,32", "--out", str(out)]
    assert main(argv) == 0
    content = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in content["settings"]] == ["dim-16", "dim-32"]
    assert [r["dim"] for r in content["settings"]] == [16, 32]
    for label in ("dim-16", "dim-32"):
        res = json.loads((out / label / "results.json").read_text())
        assert res["config"]["model"]["dim"] == int(label.split("-")[1])
    (claim,) = content["claims"]
    assert claim["id"] == "width" and claim["verdict"] in ("supported", "not supported",
                                                          "inconclusive")
    assert (out / "gain_vs_dim.png").read_bytes()[:4] == b"\x89PNG"
    (trend,) = content["trends"]  # gelu − relu over 2 widths x 2 seeds
    assert (trend["a"], trend["b"], trend["n_points"]) == ("gelu", "relu", 4)
    assert trend["sizes"] == sorted(trend["sizes"]) and len(trend["sizes"]) == 2
    assert trend["ci95"][0] <= trend["slope_per_doubling"] <= trend["ci95"][1]
    assert (out / "trend_vs_params.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Trend with size" in (out / "sweep.md").read_text()
    assert "dim-16/report.md" in (out / "sweep.md").read_text()
    # Run again: every setting resumes from its finished runs and the sweep is the same.
    assert main(argv) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["settings"] == content["settings"]


def test_optimizer_sweep_says_which_verdicts_survive_the_change_of_recipe(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "recipes"
    argv = ["compare", "--preset", "smoke", "--steps", "4", "--data", str(data), "--backend",
            "reference", "--workers", "1", "--variants", "relu,gelu,swiglu", "--seeds", "2",
            "--optimizers", "adamw,muon", "--out", str(out)]
    assert main(argv) == 0
    content = json.loads((out / "sweep.json").read_text())
    assert [(r["label"], r["optimizer"]) for r in content["settings"]] == [
        ("opt-adamw", "adamw"), ("opt-muon", "muon")]
    for opt in ("adamw", "muon"):
        res = json.loads((out / f"opt-{opt}" / "results.json").read_text())
        assert res["config"]["optimizer"] == opt
    pairs = {(r["a"], r["b"]): r for r in content["robust"]}
    assert set(pairs) == {("gelu", "relu"), ("swiglu", "relu")}
    for r in pairs.values():
        verdicts = {o: p["verdict"] for o, p in r["by_optimizer"].items()}
        assert set(verdicts) == {"adamw", "muon"}
        assert r["robust"] == (len(set(verdicts.values())) == 1)
        assert r["verdict"] == (verdicts["adamw"] if r["robust"] else None)
    assert {c["id"] for c in content["robust_claims"]} >= {"smooth_beats_relu", "glu_best"}
    md = (out / "sweep.md").read_text()
    assert "## Across optimizers" in md and "comparisons are robust to the optimizer" in md


def test_robustness_is_read_per_size_across_optimizers():
    from ffnlab.lab.claims.robust import robust_claims, robust_comparisons

    def res(opt, dim, verdict):
        return {"config": {"optimizer": opt, "model": {"dim": dim}, "data_fraction": 1.0},
                "comparisons": [{"a": "gelu", "b": "relu", "mean": -0.03, "ci95": [-0.05, -0.01],
                                 "n": 5, "verdict": verdict}],
                "claims": [{"id": "x", "claim": "X", "verdict": "supported"}]}

    got = robust_comparisons([res("adamw", 64, "a better"), res("muon", 64, "a better"),
                              res("adamw", 32, "a better"), res("muon", 32, "unresolved"),
                              res("adamw", 16, "b better")])  # dim 16: one optimizer only
    assert [(r["dim"], r["robust"], r["verdict"]) for r in got] == [
        (32, False, None), (64, True, "a better")]
    assert [c["robust"] for c in robust_claims([res("adamw", 64, "x"), res("muon", 64, "y")])] == [True]


def test_advise_names_robust_and_recipe_dependent_verdicts(tmp_path, capsys):
    out = tmp_path / "recipes"
    for opt, verdict in (("adamw", "a better"), ("muon", "unresolved")):
        (out / f"opt-{opt}").mkdir(parents=True)
        res = {"config": {"optimizer": opt, "model": {"dim": 64}, "data_fraction": 1.0},
               "variants": [{"name": n, "val_bpb_mean": b, "tokens_per_s": 1000.0,
                             "saved_bytes_per_token": 100.0,
                             "runs": [{"seed": 0, "val_bpb": b}, {"seed": 1, "val_bpb": b}]}
                            for n, b in (("gelu", 2.0), ("relu", 2.1))],
               "comparisons": [{"a": "gelu", "b": "relu", "mean": -0.1, "ci95": [-0.2, 0.0],
                                "n": 2, "verdict": verdict}]}
        (out / f"opt-{opt}" / "results.json").write_text(json.dumps(res))
    from ffnlab.lab.claims.sweep import sweep_content
    from ffnlab.lab.sweep import Setting

    done = [(Setting(None, None, o), json.loads((out / f"opt-{o}" / "results.json").read_text()))
            for o in ("adamw", "muon")]
    (out / "sweep.json").write_text(json.dumps(sweep_content(done, status="complete",
                                                             resolution=0.02)))
    assert main(["advise", "--results", str(out / "opt-muon" / "results.json")]) == 0
    text = capsys.readouterr().out
    assert "gelu − relu is recipe-dependent (adamw: a better, muon: unresolved)" in text


def test_thorough_is_a_ladder_of_widths_and_depths_under_both_optimizers(tmp_path):
    import argparse

    from ffnlab.commands import compare as cmd
    from ffnlab.lab.sweep import sweep_preset

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    sweep = cmd.sweep_from_args(p.parse_args(["--preset", "thorough", "--out", str(tmp_path)]))
    small_data = [f"dim-64-L1-data-0.25-opt-{o}" for o in ("adamw", "muon")]
    assert [s.label for s in sweep.settings()] == [
        f"dim-{d}-L{n}-opt-{o}" for d in (32, 64) for n in (1, 2) for o in ("adamw", "muon")
    ] + small_data
    arm = sweep.config_for(sweep.settings()[-1])
    assert arm.data_fraction == 0.25 and arm.resolved()[1].dim == 64
    assert sweep.base.preset == "quick" and sweep.base.tuning
    sizes = {(c.resolved()[1].dim, c.resolved()[1].n_layers)
             for c in map(sweep.config_for, sweep.settings())}
    ffn = sorted(8 * d * d * n for d, n in sizes)
    assert ffn[-1] / ffn[0] >= 8  # the ladder spans 8x in FFN parameters
    fewer = cmd.sweep_from_args(p.parse_args(["--preset", "thorough", "--dims", "32,64",
                                              "--depths", "1", "--out", str(tmp_path)]))
    assert [s.label for s in fewer.settings()] == [
        f"dim-{d}-L1-opt-{o}" for d in (32, 64) for o in ("adamw", "muon")] + small_data
    with pytest.raises(UsageError, match="is a sweep"):
        CompareConfig(preset="thorough")
    assert sweep_preset("thorough", CompareConfig(out=tmp_path)).optimizers == ("adamw", "muon")


def test_depth_sweep_sets_the_layers(tmp_path):
    cfg = SweepConfig(CompareConfig(preset="smoke", out=tmp_path), depths=(2, 1, 2))
    assert [s.label for s in cfg.settings()] == ["L1", "L2"]
    assert cfg.config_for(Setting(None, None, None, 2)).resolved()[1].n_layers == 2
    with pytest.raises(UsageError, match="--depths"):
        SweepConfig(CompareConfig(preset="smoke", out=tmp_path), depths=(0, 1))


def test_small_data_arm_runs_at_one_size_and_never_repeats_the_ladder(tmp_path):
    base = CompareConfig(preset="smoke", out=tmp_path)
    cfg = SweepConfig(base, dims=(32, 16), depths=(2, 1), optimizers=("adamw", "muon"),
                      small_data=(0.5, 0.25, 1.0))
    arm = [s.label for s in cfg.settings() if s.data_fraction is not None]
    assert arm == [f"dim-32-L1-data-{f:g}-opt-{o}" for f in (0.25, 0.5) for o in ("adamw", "muon")]
    assert len(cfg.settings()) == 8 + 4
    with pytest.raises(UsageError, match=r"--data-fraction must be in \(0, 1\], got 0"):
        SweepConfig(base, dims=(16, 32), small_data=(0,))


def test_small_data_arm_decides_the_small_data_claim_under_each_optimizer(tmp_path):
    """The thorough preset's layout at smoke size: a ladder of widths under two optimizers plus a
    quarter of the data at the widest; sweep.json then holds the small-data claim under each
    optimizer, and its robustness across them."""
    from ffnlab.lab.sweep import run_sweep

    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    base = CompareConfig(preset="smoke", out=tmp_path / "sweep", steps=4, data=data,
                         backend="reference", workers=1, variants=("swish", "swiglu"), seeds=2)
    res = run_sweep(SweepConfig(base, dims=(16, 32), optimizers=("adamw", "muon"),
                                small_data=(0.25,)))
    assert not res.interrupted
    small = [c for c in res.content["claims"] if c["id"] == "glu_small_data"]
    assert sorted(c["optimizer"] for c in small) == ["adamw", "muon"]
    assert all(c["numbers"]["fractions"] == [0.25, 1.0] for c in small)
    assert "glu_small_data" in {c["id"] for c in res.content["robust_claims"]}
    assert {c["id"] for c in res.content["claims"]} >= {"width", "glu_small_data"}
