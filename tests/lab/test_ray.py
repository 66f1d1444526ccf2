"""Ray: the lab's runs as tasks on a local two-worker Ray cluster, equal to a serial run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffnlab.cli import main

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

TEXT = "A feed-forward block maps every token on its own; attention mixes them. " * 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head`` with 2 CPUs (two one-thread workers), stopped afterwards."""
    exe = Path(sys.executable).with_name("ray")
    if not exe.exists():
        exe = Path(shutil.which("ray") or "ray")
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    start = subprocess.run([str(exe), "start", "--head", "--num-cpus", "2", "--port", str(port),
                            "--node-ip-address", "127.0.0.1",
                            "--include-dashboard", "false", "--temp-dir", str(tmp / "t"),
                            "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=180)
    if start.returncode != 0:
        pytest.fail(f"ray start failed: {start.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(exe), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _argv(tmp_path: Path, out: str, *extra: str) -> list[str]:
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    return ["compare", "--preset", "smoke", "--steps", "4", "--variants", "relu,swiglu",
            "--seeds", "2", "--backend", "reference", "--data", str(data),
            "--out", str(tmp_path / out), *extra]


def _quality(out: Path) -> dict:
    res = json.loads((out / "results.json").read_text())
    return {(v["name"], r["seed"]): (r["val_bpb"], r["curve"], r["dead_fraction"])
            for v in res["variants"] for r in v["runs"]}


def test_ray_tasks_equal_a_serial_run(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    assert main(_argv(tmp_path, "ray", "--ray", cluster)) == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each Ray task uses
    try:
        assert main(_argv(tmp_path, "serial", "--workers", "1")) == 0
    finally:
        torch.set_num_threads(threads)
    got, want = _quality(tmp_path / "ray"), _quality(tmp_path / "serial")
    assert len(want) == 4 and got == want
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "serial" / "runs").glob("*.json"))
    # the same command again finds every run finished (resume works as with local workers)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ray" / "runs").glob("*.json")}
    assert main(_argv(tmp_path, "ray", "--ray", cluster)) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "ray" / "runs").glob("*.json")} == before


def test_a_ray_address_that_does_not_answer_is_one_line_and_writes_nothing(tmp_path, capsys):
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()  # nothing listens there
    assert main(_argv(tmp_path, "nope", "--ray", f"127.0.0.1:{port}")) == 2
    err = capsys.readouterr().err.strip()
    assert "the Ray cluster does not answer" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "nope").exists()


def _runs(out: Path) -> dict:
    """Every saved run of a sweep (tuning and verdict) by its path under ``out``: the numbers a
    run's executor must not change (wall times aside)."""
    keep = ("val_bpb", "curve", "dead_fraction", "final_train_loss", "diverged", "steps_done")
    return {str(p.relative_to(out)): {k: json.loads(p.read_text()).get(k) for k in keep}
            for p in sorted(out.rglob("*.json")) if p.parent.name in ("runs", "tuning")}


def test_a_tuned_sweep_over_optimizers_and_widths_on_ray_equals_a_local_one(cluster, tmp_path,
                                                                            monkeypatch):
    """What ``--preset thorough`` does (tuning, both optimizers, a ladder of widths), at smoke
    size, through the cluster and through local one-thread workers: the same runs, the same
    numbers, the same robustness verdicts."""
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    sweep = ("--tune", "--tuning-seeds", "1", "--optimizers", "adamw,muon", "--dims", "16,32")
    assert main(_argv(tmp_path, "ray", *sweep, "--ray", cluster)) == 0
    assert main(_argv(tmp_path, "local", *sweep, "--workers", "2")) == 0
    got, want = _runs(tmp_path / "ray"), _runs(tmp_path / "local")
    # 2 optimizers x 2 widths x 2 variants x (3 tuning rates, more where a grid widens, + 2 seeds)
    assert got == want
    assert len(want) >= 40
    robust = [json.loads((tmp_path / d / "sweep.json").read_text())["robust"]
              for d in ("ray", "local")]
    assert robust[0] == robust[1] and robust[0]
