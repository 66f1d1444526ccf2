"""Crash safety of ``ffnlab compare``: SIGKILL at chosen points, then the same command again.

Each kill runs the real command line in a subprocess through a small wrapper (``WRAPPER``) that
replaces one of ffnlab's own functions so the process kills itself at a deterministic point:

* ``step N``: at the start of the N-th training step of the process (``train.lr_at``);
* ``write GLOB N``: half-way through the N-th write of a file matching GLOB (``folder/name``):
  half the bytes are in a temporary file, fsynced, then SIGKILL (what a power cut does);
* ``before GLOB N``: just before that write, every earlier write complete.

After every kill: every ``*.json`` in the output parses (writes are atomic). After the final,
uninterrupted invocation: no temporary file is left, finished runs were not retrained, and the
results equal those of a run that was never interrupted (timings aside).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WRAPPER = r'''
import os, signal, sys
from fnmatch import fnmatch
from pathlib import Path

import ffnlab.files as files
import ffnlab.lab.train.loop as train
from ffnlab.cli import main

mode, target, nth, argv = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
count = 0


def die():
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def matches(path):
    p = Path(path)
    return fnmatch(f"{p.parent.name}/{p.name}", target)


if mode == "step":
    real_lr_at = train.lr_at

    def lr_at(step, cfg):
        global count
        count += 1
        if count == nth:
            die()
        return real_lr_at(step, cfg)

    train.lr_at = lr_at
elif mode in ("write", "before"):
    for mod, name in ((files, "atomic_write_bytes"),):
        def patched(path, data, real=getattr(mod, name)):
            global count
            if matches(path):
                count += 1
                if count == nth:
                    if mode == "write":
                        p = Path(path)
                        p.parent.mkdir(parents=True, exist_ok=True)
                        with open(p.parent / f".{p.name}.killed.tmp", "wb") as f:
                            f.write(bytes(data[: len(data) // 2]))
                            f.flush()
                            os.fsync(f.fileno())
                    die()
            return real(path, data)
        setattr(mod, name, patched)
sys.exit(main(argv))
'''

TEXT = ("Crash safety means that a power cut at any moment loses at most the work since the "
        "last checkpoint, and never corrupts a file that was already complete. ") * 30

# Timings differ between runs; everything else must match an uninterrupted run exactly.
TIMING = {"tokens_per_s", "wall_s", "ffn_ms", "act_ns_per_element"}


def _comparable(results: dict) -> list:
    def clean(d: dict) -> dict:
        return {k: v for k, v in d.items() if k not in TIMING}

    return [{**clean(v), "runs": [clean(r) for r in v["runs"]]} for v in results["variants"]]


@pytest.fixture
def lab(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    wrapper = tmp_path / "kill_wrapper.py"
    wrapper.write_text(WRAPPER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def argv(out: Path, extra: tuple[str, ...]) -> list[str]:
        # 6 steps: a checkpoint after every step (ckpt_every = steps // 4 = 1)
        return ["compare", "--preset", "smoke", "--steps", "6", "--variants", "relu,gelu",
                "--seeds", "1", "--backend", "reference", "--workers", "1", "--data", str(data),
                "--out", str(out), *extra]

    def run(out: Path, *kill: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        if kill:
            cmd = [sys.executable, str(wrapper), *kill, *argv(out, extra)]
        else:
            cmd = [sys.executable, "-m", "ffnlab", *argv(out, extra)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)

    return run


def _all_json_parses(out: Path) -> list[Path]:
    files = [p for p in out.rglob("*.json")]
    for p in files:
        json.loads(p.read_text())  # raises on a half-written file
    return files


def _killed(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def test_sigkill_anywhere_then_rerun_loses_nothing(lab, tmp_path):
    out = tmp_path / "out"
    ck = out / "checkpoints"

    # 1. during training: relu's 4th step; steps 1-3 are checkpointed
    _killed(lab(out, "step", "-", "4"))
    _all_json_parses(out)
    assert json.loads((ck / "relu-s0.json").read_text())["step"] == 3
    assert not (out / "runs").exists()

    # 2. a truncated checkpoint is detected and retrained, not loaded; then killed half-way
    #    through writing the 3rd checkpoint's tensors (the pair written at step 2 stays valid)
    (tensors,) = ck.glob("relu-s0.*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:100])
    proc = lab(out, "write", "checkpoints/relu-s0.*.safetensors", "3")
    _killed(proc)
    assert "sha256" in proc.stderr and "from scratch" in proc.stderr
    _all_json_parses(out)
    assert json.loads((ck / "relu-s0.json").read_text())["step"] == 2
    assert list(ck.glob(".relu-s0.3.safetensors.*.tmp"))  # the half-written file

    # 3. between the two files of a checkpoint: new tensors written, metadata not yet
    _killed(lab(out, "before", "checkpoints/relu-s0.json", "1"))
    assert json.loads((ck / "relu-s0.json").read_text())["step"] == 2
    assert (ck / "relu-s0.3.safetensors").exists()  # orphan, ignored on resume

    # 4. half-way through writing the finished run's record
    proc = lab(out, "write", "runs/relu-s0.json", "1")
    _killed(proc)
    assert "restarting" not in proc.stderr  # resumed from the step-2 checkpoint, not retrained
    _all_json_parses(out)
    assert not (out / "runs" / "relu-s0.json").exists()

    # 5. half-way through results.json, once both runs are finished
    _killed(lab(out, "write", "out/results.json", "1"))
    _all_json_parses(out)
    finished = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert set(finished) == {"relu-s0.json", "gelu-s0.json"}

    # 6. half-way through the Markdown report
    _killed(lab(out, "write", "out/report.md", "1"))
    _all_json_parses(out)

    # 7. the same command, uninterrupted
    proc = lab(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")} == finished
    _all_json_parses(out)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert not list(ck.glob("*.safetensors"))
    assert (out / "report.md").read_text().strip()

    baseline = tmp_path / "baseline"
    proc = lab(baseline)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((out / "results.json").read_text())
    want = json.loads((baseline / "results.json").read_text())
    assert got["status"] == want["status"] == "complete"
    assert _comparable(got) == _comparable(want)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_damaged_checkpoint_after_sigkill_restarts_the_run(lab, tmp_path, optimizer):
    """Killed mid-run, its checkpoint damaged: the next run retrains it from scratch (one line on
    stderr), exits 0 and ends with an uninterrupted run's numbers, under every optimizer."""
    extra = ("--optimizer", optimizer)
    out = tmp_path / "out"
    _killed(lab(out, "step", "-", "4", extra=extra))
    (tensors,) = (out / "checkpoints").glob("relu-s0.*.safetensors")
    tensors.write_bytes(tensors.read_bytes()[:100])
    proc = lab(out, extra=extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if "from scratch" in line], proc.stderr
    baseline = tmp_path / "baseline"
    assert lab(baseline, extra=extra).returncode == 0
    got = json.loads((out / "results.json").read_text())
    want = json.loads((baseline / "results.json").read_text())
    assert got["config"]["optimizer"] == optimizer
    assert _comparable(got) == _comparable(want)


def test_sigkill_during_tuning_resumes_to_the_uninterrupted_choice(lab, tmp_path):
    """Killed in the tuning phase (2 variants x 3 rates x 1 seed of 6 steps: step 10 is relu's
    second rate): the rerun keeps the finished tuning runs, resumes the rest, chooses the same
    rates and ends with the uninterrupted run's numbers."""
    tuned = ("--lr-grid", "0.005,0.01,0.02", "--tuning-seeds", "1")
    out = tmp_path / "out"
    _killed(lab(out, "step", "-", "10", extra=tuned))
    assert [p.name for p in (out / "tuning").glob("*.json")] == ["relu-lr0.005-s1000.json"]
    proc = lab(out, extra=tuned)
    assert proc.returncode == 0, proc.stderr[-2000:]
    baseline = tmp_path / "baseline"
    assert lab(baseline, extra=tuned).returncode == 0
    got = json.loads((out / "results.json").read_text())
    want = json.loads((baseline / "results.json").read_text())
    assert [v["tuning"] for v in got["variants"]] == [v["tuning"] for v in want["variants"]]
    assert _comparable(got) == _comparable(want)
    assert got["comparisons_shared_rate"] == want["comparisons_shared_rate"]


def test_sigkill_during_an_adaptive_round_resumes_with_the_seeds_it_had(lab, tmp_path):
    # An unreachable resolution: round 1 trains seeds 0-1 of both variants (4 runs x 6 steps),
    # round 2 adds seed 2. Killed at the 27th step: relu seed 2, step 3, in round 2.
    adaptive = ("--seeds", "2", "--max-seeds", "3", "--resolution", "1e-9")
    out = tmp_path / "out"
    _killed(lab(out, "step", "-", "27", extra=adaptive))
    _all_json_parses(out)
    round1 = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert set(round1) == {"relu-s0.json", "relu-s1.json", "gelu-s0.json", "gelu-s1.json"}
    assert json.loads((out / "checkpoints" / "relu-s2.json").read_text())["step"] == 2

    proc = lab(out, extra=adaptive)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {p.name: p.read_bytes() for p in (out / "runs").glob("*.json")}
    assert set(runs) == set(round1) | {"relu-s2.json", "gelu-s2.json"}
    assert {k: runs[k] for k in round1} == round1  # round 1 was not retrained
    assert json.loads(runs["relu-s2.json"])["resumed_from"] == 2

    baseline = tmp_path / "baseline"
    assert lab(baseline, extra=adaptive).returncode == 0
    got = json.loads((out / "results.json").read_text())
    want = json.loads((baseline / "results.json").read_text())
    assert got["config"]["seeds"] == want["config"]["seeds"] == [0, 1, 2]
    assert _comparable(got) == _comparable(want)
    assert got["comparisons"] == want["comparisons"]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_stop_when_the_parent_is_killed(tmp_path):
    import time

    data = tmp_path / "corpus.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ffnlab", "compare", "--preset", "smoke", "--steps", "3000",
         "--variants", "relu,gelu", "--seeds", "1", "--backend", "reference", "--workers", "2",
         "--data", str(data), "--out", str(out)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list((out / "checkpoints").glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2 and list((out / "checkpoints").glob("*.json"))
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = [w for w in workers if Path(f"/proc/{w}/stat").exists()
             and Path(f"/proc/{w}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert alive == []
