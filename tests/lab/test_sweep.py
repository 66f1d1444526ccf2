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
    assert "dim-16/report.md" in (out / "sweep.md").read_text()
    # Run again: every setting resumes from its finished runs and the sweep is the same.
    assert main(argv) == 0
    again = json.loads((out / "sweep.json").read_text())
    assert again["settings"] == content["settings"]
