"""Data-parallel compare runs (gloo on CPU, 2 processes on 127.0.0.1).

The expensive part is starting processes (each imports torch: ~3 s on the 2-core CI machine),
so the file launches exactly two 2-process runs: one through ``ffnlab compare --nproc 2``, and
one through torchrun directly that resumes a checkpoint and records which rank wrote what.
"""

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from ffnlab.cli import main
from ffnlab.lab.train import distributed
from ffnlab.lab.train.distributed import DistContext, check_world_size

TEXT = (
    "It was the best of times, it was the worst of times; a feed-forward block maps every "
    "token alone, while attention mixes them. The five boxing wizards jump quickly. "
) * 40
VARIANTS = "relu,swiglu"
RTOL = 1e-4  # reductions run in another order on 2 ranks; measured differences are ~1e-7


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    (d / "corpus.txt").write_text(TEXT)
    return d


def _argv(workdir: Path, out: str, *extra: str) -> list[str]:
    # smoke preset: global batch 8; --steps 4 checkpoints every step (ckpt_every = steps // 4)
    return ["compare", "--preset", "smoke", "--steps", "4", "--data", str(workdir / "corpus.txt"),
            "--backend", "reference", "--variants", VARIANTS, "--workers", "1",
            "--out", str(workdir / out), *extra]


def _results(workdir: Path, out: str) -> dict:
    return json.loads((workdir / out / "results.json").read_text())


@pytest.fixture(scope="module")
def single(workdir):
    """The 1-process run every data-parallel run must reproduce."""
    assert main(_argv(workdir, "single")) == 0
    return _results(workdir, "single")


def _assert_same_training(a: dict, b: dict) -> None:
    assert [v["name"] for v in a["variants"]] == [v["name"] for v in b["variants"]]
    for va, vb in zip(a["variants"], b["variants"], strict=True):
        assert vb["val_bpb_mean"] == pytest.approx(va["val_bpb_mean"], rel=RTOL), va["name"]
        assert [s for s, _ in vb["curve"]] == [s for s, _ in va["curve"]]
        for (_, x), (_, y) in zip(va["curve"], vb["curve"], strict=True):
            assert y == pytest.approx(x, rel=RTOL), va["name"]
        ra, rb = va["runs"][0], vb["runs"][0]
        assert rb["final_train_loss"] == pytest.approx(ra["final_train_loss"], rel=RTOL)
        assert rb["dead_fraction"] == pytest.approx(ra["dead_fraction"], abs=0.02)


# --- without processes --------------------------------------------------------------------------


def test_world_size_must_split_the_global_batch():
    assert check_world_size(1, 8) == 8 and check_world_size(4, 8) == 2
    with pytest.raises(ValueError, match="does not split evenly over 3 processes; use one of 1, 2, 4, 8"):
        check_world_size(3, 8)
    with pytest.raises(ValueError, match="holds only 8 sequences; use at most 8"):
        check_world_size(16, 8)


def test_shard_takes_contiguous_equal_rows():
    batch = torch.arange(8 * 3).reshape(8, 3)
    parts = [DistContext(rank=r, world_size=4).shard(batch) for r in range(4)]
    assert torch.equal(torch.cat(parts), batch) and all(p.shape == (2, 3) for p in parts)
    assert DistContext().shard(batch) is batch
    rows = torch.arange(7)
    split = [DistContext(rank=r, world_size=3).split_rows(rows).tolist() for r in range(3)]
    assert split == [[0, 1, 2], [3, 4], [5, 6]]


def test_launcher_stays_on_loopback():
    cmd = distributed.torchrun_command(2, ["compare"])
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "127.0.0.1:0"
    assert cmd[cmd.index("--local-addr") + 1] == "127.0.0.1"
    assert cmd[-3:] == ["-m", "ffnlab", "compare"] and not any("localhost" in c for c in cmd)


@pytest.mark.parametrize("nproc, needle", [
    ("3", "does not split evenly over 3 processes"),
    ("16", "use at most 8 processes"),
    ("0", "--nproc must be a positive integer"),
])
def test_bad_nproc_is_refused_before_launching(workdir, capsys, nproc, needle):
    assert main(_argv(workdir, "bad", "--nproc", nproc)) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "bad").exists()


def test_nproc_under_torchrun_is_refused(workdir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(_argv(workdir, "bad", "--nproc", "2")) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err


def test_other_ranks_stay_quiet_on_usage_errors(workdir, capsys, monkeypatch):
    # Every rank validates the same options; rank 0 prints the problem, the others only exit 2.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    argv = _argv(workdir, "bad")
    argv[argv.index("--variants") + 1] = "swigl"
    assert main(argv) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 2
    assert "did you mean 'swiglu'" in capsys.readouterr().err


# --- two processes ------------------------------------------------------------------------------


def test_nproc_2_matches_one_process(workdir, single):
    assert main(_argv(workdir, "ddp", "--nproc", "2")) == 0
    res = _results(workdir, "ddp")
    assert res["status"] == "complete" and res["config"]["world_size"] == 2
    assert single["config"]["world_size"] == 1
    _assert_same_training(single, res)
    assert sorted(p.name for p in (workdir / "ddp" / "runs").iterdir()) == [
        "relu-s0.json", "swiglu-s0.json"]


PROBE = textwrap.dedent("""\
    # Records every file each rank writes (all lab files go through these two functions) and
    # the batch size of every training forward (eval runs without grad).
    import os
    import sys

    import torch

    from ffnlab import files
    from ffnlab.lab.train import model

    LOG = os.environ["FFNLAB_TEST_WRITES"] + "." + os.environ["RANK"]
    ROWS = os.environ["FFNLAB_TEST_WRITES"] + "-rows." + os.environ["RANK"]

    def logged(real):
        def write(path, data):
            with open(LOG, "a") as f:
                f.write(f"{path}\\n")
            return real(path, data)
        return write

    files.atomic_write_bytes = logged(files.atomic_write_bytes)
    forward = model.TinyGPT.forward

    def counted(self, tokens):
        if torch.is_grad_enabled():
            with open(ROWS, "a") as f:
                f.write(f"{tokens.shape[0]}\\n")
        return forward(self, tokens)

    model.TinyGPT.forward = counted

    from ffnlab.cli import main

    sys.exit(main(sys.argv[1:]))
""")


def test_torchrun_resumes_and_only_rank_0_writes(workdir, single, tmp_path, monkeypatch):
    import ffnlab.lab.train.loop as train_mod

    # A 1-process run interrupted after swiglu's step 2 leaves relu finished and swiglu's
    # checkpoint at step 2.
    real = train_mod.train_run

    def stop_early(variant, seed, *a, on_step=None, **kw):
        def hook(ev):
            on_step(ev)
            if variant == "swiglu" and ev["step"] == 2:
                raise KeyboardInterrupt
        return real(variant, seed, *a, on_step=hook, **kw)

    monkeypatch.setattr(train_mod, "train_run", stop_early)
    assert main(_argv(workdir, "resume")) == 130
    monkeypatch.setattr(train_mod, "train_run", real)
    ckpt = json.loads((workdir / "resume" / "checkpoints" / "swiglu-s0.json").read_text())
    assert ckpt["step"] == 2

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    logs = tmp_path / "logs"
    cmd = distributed.torchrun_command(2, ["ignored"])
    cmd = cmd[: cmd.index("-m", 3)] + ["--log-dir", str(logs), "--redirects", "3", str(probe),
                                       *_argv(workdir, "resume")]
    env = distributed.child_env(2)
    env["FFNLAB_TEST_WRITES"] = str(tmp_path / "writes")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    rank_logs = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert proc.returncode == 0, (proc.stderr[-3000:], rank_logs)

    res = _results(workdir, "resume")
    assert res["status"] == "complete" and res["config"]["world_size"] == 2
    _assert_same_training(single, res)
    swiglu = json.loads((workdir / "resume" / "runs" / "swiglu-s0.json").read_text())
    assert swiglu["resumed_from"] == 2
    written = (tmp_path / "writes.0").read_text().splitlines()
    assert any(p.endswith("results.json") for p in written)
    assert any(p.endswith("swiglu-s0.json") and "runs" in p for p in written)
    assert any(p.endswith("report.md") for p in written)
    assert not (tmp_path / "writes.1").exists(), "rank 1 wrote files"
    # Each rank trained swiglu's last 2 steps on half of the global batch of 8; rank 0 alone
    # also ran the side measurements first (saturation at initialisation: 5 forwards of 4 rows).
    rows = {rank: (tmp_path / f"writes-rows.{rank}").read_text().split() for rank in "01"}
    assert rows["1"] == ["4", "4"] and rows["0"][-2:] == ["4", "4"] and len(rows["0"]) == 7
    assert rank_logs.get("1", "") == "", "rank 1 printed"
    assert "Report:" in rank_logs["0"]
