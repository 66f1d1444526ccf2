"""Run-level parallelism: a pool of worker processes gives what one process gives, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from ffnlab.lab.run import job as J
from ffnlab.lab.run import pool as E
from ffnlab.lab.train.loop import TrainConfig
from ffnlab.lab.train.model import ModelConfig

pytestmark = pytest.mark.slow

QUALITY = ("val_bpb", "curve", "dead_fraction", "final_train_loss", "diverged", "steps_done")


def _job(tmp_path, variant: str, seed: int, data) -> J.RunJob:
    return J.RunJob(
        variant=variant, seed=seed,
        model=ModelConfig(dim=16, n_layers=1, n_heads=2, seq_len=16).as_dict(),
        train=TrainConfig(steps=6, batch_size=4, lr=1e-2, warmup=1, eval_every=3,
                          eval_tokens=256, ckpt_every=2).as_dict(),
        data=str(data), data_fraction=1.0, device="cpu", dtype="float32", backend="reference",
        checkpoint=str(tmp_path / "ck" / f"{variant}-s{seed}"), fingerprint={"t": 1}, threads=1)


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    return p


def test_pool_equals_one_process_bit_for_bit(tmp_path, corpus):
    jobs = [_job(tmp_path / "pool", v, s, corpus) for v in ("relu", "swiglu") for s in (0, 1)]
    events = list(E.PoolExecutor(2).run(jobs))
    done = {job.key: rec for kind, job, rec in events if kind == "done"}
    assert set(done) == {j.key for j in jobs}
    assert [k for k, *_ in events].count("done") == 4  # each run once

    threads = torch.get_num_threads()
    try:
        for job in jobs:
            here = J.execute(J.RunJob(**{**job.to_dict(),
                                         "checkpoint": str(tmp_path / "here" / job.variant)}))
            assert {k: here[k] for k in QUALITY} == {k: done[job.key][k] for k in QUALITY}
    finally:
        torch.set_num_threads(threads)
    # JSON-able: a job travels to another process (or machine) as plain data
    assert J.RunJob(**json.loads(json.dumps(jobs[0].to_dict()))) == jobs[0]


def test_a_failing_run_is_named(tmp_path, corpus):
    bad = J.RunJob(**{**_job(tmp_path, "relu", 0, corpus).to_dict(), "data": str(tmp_path / "nope")})
    with pytest.raises(RuntimeError, match="run relu seed 0 failed in a worker.*does not exist"):
        list(E.PoolExecutor(1).run([bad]))


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be a positive integer, got 0"):
        E.PoolExecutor(0)


def test_the_pool_serves_every_round_until_closed(tmp_path, corpus):
    with E.PoolExecutor(2) as ex:
        first = [k for k, *_ in ex.run([_job(tmp_path, "relu", 0, corpus)])]
        pids = sorted(p.pid for p in ex._pool._pool)
        second = [k for k, *_ in ex.run([_job(tmp_path, "relu", 1, corpus),
                                         _job(tmp_path, "swiglu", 0, corpus)])]
        assert sorted(p.pid for p in ex._pool._pool) == pids  # no new workers per round
    assert first.count("done") == 1 and second.count("done") == 2
    assert ex._pool is None  # closed with the block


def test_leaving_a_round_early_stops_the_workers(tmp_path, corpus):
    ex = E.PoolExecutor(1)
    events = ex.run([_job(tmp_path, "relu", 0, corpus)])
    next(events)  # the first event, then the consumer goes away (Ctrl-C in the caller)
    events.close()
    assert ex._pool is None
    ex.close()  # idempotent


def test_jobs_differing_only_in_their_recipe_all_come_back(tmp_path, corpus):
    """A job's identity includes everything that changes its result: 2 learning rates x 2
    variants x 1 seed are 4 jobs, none replacing another (it used to key by (variant, seed))."""
    base = [_job(tmp_path, v, 0, corpus) for v in ("relu", "gelu")]
    jobs = [J.RunJob(**{**j.to_dict(), "train": {**j.train, "lr": lr},
                        "checkpoint": f"{j.checkpoint}-lr{lr}"})
            for j in base for lr in (1e-2, 3e-3)]
    assert len({j.key for j in jobs}) == 4
    assert jobs[0].key != J.RunJob(**{**jobs[0].to_dict(), "train": {**jobs[0].train, "lr": 5e-3}}).key
    assert jobs[0].key == J.RunJob(**{**jobs[0].to_dict(), "threads": 2}).key  # where it runs
    done = [(job, rec) for kind, job, rec in E.PoolExecutor(2).run(jobs) if kind == "done"]
    assert sorted(job.key for job, _ in done) == sorted(j.key for j in jobs)
    by_lr = {(job.variant, job.train["lr"]): rec["val_bpb"] for job, rec in done}
    assert by_lr[("relu", 1e-2)] != by_lr[("relu", 3e-3)]


def test_the_same_job_twice_is_refused(tmp_path, corpus):
    job = _job(tmp_path, "relu", 0, corpus)
    with pytest.raises(ValueError, match="submitted twice: relu seed 0"):
        list(E.PoolExecutor(1).run([job, job]))
