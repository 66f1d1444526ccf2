"""``ffnlab compare --tune``: each variant's rate chosen on tuning seeds, verdicts on fresh seeds
at those rates, the tuning in results.json and the report, and nothing retrained on a rerun."""

from __future__ import annotations

import json

import pytest

from ffnlab.cli import main
from ffnlab.files import read_json

pytestmark = pytest.mark.slow

TEXT = "Tuning: every feed-forward block deserves its own step size before it is judged. " * 40
GRID = (0.005, 0.01, 0.02)


def _argv(tmp_path, out: str, *extra: str) -> list[str]:
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    return ["compare", "--preset", "smoke", "--steps", "6", "--variants", "relu,gelu",
            "--seeds", "2", "--backend", "reference", "--workers", "1", "--data", str(data),
            "--lr-grid", ",".join(map(str, GRID)), "--tuning-seeds", "1",
            "--out", str(tmp_path / out), *extra]


def test_tuned_compare_records_the_tuning_and_reruns_nothing(tmp_path):
    assert main(_argv(tmp_path, "out")) == 0
    out = tmp_path / "out"
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["tuning"]["enabled"] and r["config"]["tuning"]["seeds"] == [1000]
    assert r["config"]["tuning"]["grid"] == list(GRID)
    for v in r["variants"]:
        t = v["tuning"]
        assert v["lr"] == t["chosen"] and set(GRID) <= set(t["grid"])
        assert {(x["lr"], x["seed"]) for x in t["runs"]} == {(lr, 1000) for lr in t["grid"]}
        assert t["at_edge"] == (t["chosen"] in (t["grid"][0], t["grid"][-1]))
        for s in (0, 1):  # the verdict runs trained at the chosen rate, on seeds 0 and 1
            rec = read_json(out / "runs" / f"{v['name']}-s{s}.json")
            assert rec["key"]["train"]["lr"] == v["lr"] and rec["seed"] == s
    (shared,) = r["comparisons_shared_rate"]
    assert (shared["a"], shared["b"], shared["n"], shared["shared_lr"]) == ("gelu", "relu", 1, 0.01)
    md = (out / "report.md").read_text()
    assert "## Learning rates: each variant at its own" in md and (out / "lr_tuning.png").exists()
    assert "at the shared rate 0.01" in md

    stamps = {p.name: p.stat().st_mtime_ns for p in [*out.glob("runs/*"), *out.glob("tuning/*")]}
    assert main(_argv(tmp_path, "out")) == 0  # everything is there: nothing retrained
    assert {p.name: p.stat().st_mtime_ns
            for p in [*out.glob("runs/*"), *out.glob("tuning/*")]} == stamps
    again = json.loads((out / "results.json").read_text())
    assert [v["tuning"] for v in again["variants"]] == [v["tuning"] for v in r["variants"]]
    assert again["comparisons"] == r["comparisons"]


def test_no_tune_trains_every_variant_at_the_recipe_rate(tmp_path):
    assert main(_argv(tmp_path, "plain", "--no-tune")) == 0
    r = json.loads((tmp_path / "plain" / "results.json").read_text())
    assert not r["config"]["tuning"]["enabled"] and "comparisons_shared_rate" not in r
    assert {v["lr"] for v in r["variants"]} == {0.01} and not (tmp_path / "plain" / "tuning").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (("--lr-grid", "0.01,0.02"), "--lr-grid: a tuning grid needs at least 3 learning rates"),
    (("--lr-grid", "0.01,0,0.02"), "--lr-grid: a learning rate must be a positive number, got 0.0"),
    (("--lr-grid", "0.01,0.02,0.08"), "at most a factor 2 apart"),
    (("--lr-grid", "0.01,x,0.02"), "--lr-grid takes learning rates separated by commas"),
    (("--tuning-seeds", "0"), "--tuning-seeds must be a positive integer"),
])
def test_bad_tuning_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    argv = [a for a in _argv(tmp_path, "bad") if a not in ("--lr-grid", ",".join(map(str, GRID)))]
    try:
        rc = main([*argv, *flags])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()
