"""``ffnlab compare``'s flags become one CompareConfig, and ``--nproc`` hands all of it on."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from ffnlab.cli import main
from ffnlab.commands import compare as cmd
from ffnlab.commands import compare_worker
from ffnlab.lab.config import CompareConfig
from ffnlab.lab.train import distributed

TEXT = "The five boxing wizards jump quickly over a feed-forward block. " * 60


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    return p


def _every_flag(tmp_path: Path) -> list[str]:
    """A value for every flag, none of them the default."""
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    return ["--preset", "smoke", "--out", str(tmp_path / "out"), "--variants", "relu,gelu",
            "--device", "cpu:0", "--dtype", "float64", "--seed", "3", "--seeds", "2",
            "--steps", "4", "--data", str(data), "--backend", "reference", "--nproc", "2",
            "--dist-timeout", "30", "--json", "--resolution", "0.05", "--max-seeds", "3",
            "--workers", "1", "--data-fraction", "0.5", "--time-budget", "60",
            "--dims", "16", "--depths", "2", "--optimizer", "adamw", "--tune", "--lr-grid", "0.01,0.02,0.04",
            "--tuning-seeds", "3"]


def test_every_flag_is_a_config_field_and_every_field_a_flag(tmp_path):
    dests = {a.dest for a in _parser()._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(CompareConfig)}
    cfg = cmd.config_from_args(_parser().parse_args(_every_flag(tmp_path)))
    default = cmd.config_from_args(_parser().parse_args([]))
    assert default == CompareConfig()
    unchanged = [f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) == getattr(default, f.name)]
    assert unchanged == ["ray"]  # --ray excludes --nproc and --workers
    ray = cmd.config_from_args(_parser().parse_args(["--ray", "auto"]))
    assert ray.ray == "auto"


def test_nproc_hands_every_field_to_the_workers(tmp_path, monkeypatch):
    seen = {}

    def fake_launch(nproc, module_args, *, module):
        (path,) = module_args
        seen.update(nproc=nproc, module=module, config=Path(path).read_text())
        return 0

    monkeypatch.setattr(distributed, "launch", fake_launch)
    argv = _every_flag(tmp_path)
    assert main(["compare", *argv]) == 0
    assert seen["nproc"] == 2 and seen["module"] == cmd.WORKER_MODULE
    got = CompareConfig.from_json(seen["config"])
    want = cmd.config_from_args(_parser().parse_args(argv))
    # The workers get the parent's configuration, paths made absolute.
    assert got == dataclasses.replace(want, out=want.out.resolve(), data=want.data.resolve())
    assert json.loads(seen["config"]) == got.to_dict()
    assert (tmp_path / "out" / "config.json").exists()  # the parent checked and created out


def test_worker_needs_exactly_one_readable_config(tmp_path, capsys):
    assert compare_worker.main([]) == 2
    assert capsys.readouterr().err.strip() == (
        "ffnlab compare: error: expected one argument, the configuration file; got 0")
    assert compare_worker.main([str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot read the compare configuration" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "quik"}))
    assert compare_worker.main([str(bad)]) == 2
    assert "did you mean 'quick'" in capsys.readouterr().err


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_worker_reports_a_bad_config_on_rank_0_only(tmp_path, capsys, monkeypatch, rank, printed):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"variants": ["swigl"]}))
    assert compare_worker.main([str(bad)]) == 2
    assert ("did you mean 'swiglu'" in capsys.readouterr().err) is printed
