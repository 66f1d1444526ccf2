"""Where the lab's training runs execute when not in the calling process: a pool of local
workers, or Ray (:mod:`ffnlab.lab.ray_executor`).

A run is described by a :class:`RunJob`, plain data (JSON values only) so that it can travel to
another process or machine; :func:`execute` is the whole of one run wherever it lands: it reads
the corpus (once per process), trains with :func:`ffnlab.lab.train.train_run` and returns the
run's record. An executor writes nothing itself: the caller saves each record the moment it
arrives, so a run lost with its worker is simply run again (from its checkpoint) next time.

Executors yield events, in the order they happen:

* ``("step", job, {"step", "loss"})`` now and then while a run trains (for progress displays);
* ``("done", job, record)`` when a run has finished.

:class:`PoolExecutor` runs jobs on ``workers`` spawned processes with ``threads`` torch threads
each (default 1: two processes with two OpenMP threads each on two cores spin-wait for each
other and run 4-8x slower). A run's numbers depend only on its job and the thread count, so a
pool gives bit for bit what one process with the same thread count gives.
"""

from __future__ import annotations

import dataclasses
import os
import queue as queue_mod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["RunJob", "execute", "job_corpus", "PoolExecutor", "Event", "STEP_EVENT_EVERY"]

STEP_EVENT_EVERY = 10  # a worker reports progress every 10 optimizer steps

Event = tuple  # ("step", RunJob, dict) | ("done", RunJob, dict)


@dataclass(frozen=True)
class RunJob:
    """One (variant, seed) training run, as plain data.

    ``model`` / ``train``: :class:`~ffnlab.lab.model.ModelConfig` / :class:`TrainConfig` fields;
    ``data``: the corpus path (``None``: the embedded corpus) and ``data_fraction`` the share of
    its training split used; ``checkpoint``: the path stem of the run's checkpoint; ``threads``:
    torch threads for the run (``None``: leave the process' setting).
    """

    variant: str
    seed: int
    model: dict
    train: dict
    data: str | None
    data_fraction: float
    device: str
    dtype: str
    backend: str
    checkpoint: str
    fingerprint: dict
    threads: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.variant, self.seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CORPORA: dict[tuple, Any] = {}  # per process: (data, seq_len, fraction) -> Corpus


def job_corpus(job: RunJob):
    """The corpus of ``job``, read once per process."""
    from .data import load_corpus

    key = (job.data, int(job.model["seq_len"]), float(job.data_fraction))
    if key not in _CORPORA:
        _CORPORA.clear()  # one corpus per process at a time is all a worker needs
        _CORPORA[key] = load_corpus(job.data, seq_len=key[1], train_fraction=key[2])
    return _CORPORA[key]


def execute(job: RunJob, *, on_step: Callable[[dict], None] | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Run ``job`` in this process; its record (see :func:`ffnlab.lab.train.train_run`)."""
    import torch

    from .model import ModelConfig
    from .precision import dtype_by_name
    from .train import TrainConfig, train_run

    if job.threads is not None and torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)
    return train_run(job.variant, job.seed, job_corpus(job), ModelConfig(**job.model),
                     TrainConfig(**job.train), device=torch.device(job.device),
                     dtype=dtype_by_name(job.dtype), backend=job.backend,
                     checkpoint=job.checkpoint, fingerprint=job.fingerprint, on_step=on_step,
                     log=log)


# --- a pool of local worker processes ------------------------------------------------------------

_EVENTS = None  # in a pool worker: the queue step events go to
_PARENT = None  # in a pool worker: the pid of the process that started it


def _init_worker(events, threads: int) -> None:
    import torch

    global _EVENTS, _PARENT
    _EVENTS, _PARENT = events, os.getppid()
    torch.set_num_threads(threads)


def _pool_task(job_dict: dict) -> dict:
    job = RunJob(**job_dict)

    def on_step(ev: dict) -> None:
        # A parent killed with SIGKILL cannot stop its pool: without this check the worker
        # would train on, writing checkpoints that the next invocation also writes.
        if _PARENT is not None and os.getppid() != _PARENT:
            os._exit(1)
        if _EVENTS is not None and ev["step"] % STEP_EVENT_EVERY == 0:
            _EVENTS.put((job.variant, job.seed, {"step": ev["step"], "loss": ev["loss"]}))

    return execute(job, on_step=on_step)


class PoolExecutor:
    """Jobs spread over ``workers`` spawned processes with ``threads`` torch threads each.

    The processes start on the first :meth:`run` and serve every later one until
    :meth:`close` (or the end of a ``with`` block): a fresh pool per adaptive round would pay
    the workers' start (importing torch and reading the corpus, about 2.7 s here) once per round.
    Records come back as runs finish (not in job order). An exception in a run is raised here
    with the run named; Ctrl-C (or any exit from the iteration before its end) terminates the
    workers, whose last checkpoints stay for the next invocation.
    """

    def __init__(self, workers: int, *, threads: int = 1, poll_s: float = 0.2) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers, self.threads, self.poll_s = workers, threads, poll_s
        self._pool = None
        self._events = None

    def _start(self) -> None:
        import multiprocessing as mp

        if self._pool is None:
            ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks
            self._events = ctx.Queue()
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(self._events, self.threads))

    def run(self, jobs: Iterable[RunJob]) -> Iterator[Event]:
        jobs = list(jobs)
        if not jobs:
            return
        self._start()
        pool, events = self._pool, self._events
        finished = False
        try:
            pending = {job.key: (job, pool.apply_async(_pool_task, (job.to_dict(),)))
                       for job in jobs}
            while pending:
                try:
                    variant, seed, ev = events.get(timeout=self.poll_s)
                    if (variant, seed) in pending:
                        yield ("step", pending[(variant, seed)][0], ev)
                except queue_mod.Empty:
                    pass
                for key in [k for k, (_, res) in pending.items() if res.ready()]:
                    job, res = pending.pop(key)
                    try:
                        rec = res.get()
                    except Exception as exc:
                        raise RuntimeError(f"run {job.variant} seed {job.seed} failed in a "
                                           f"worker: {type(exc).__name__}: {exc}") from exc
                    yield ("done", job, rec)
            finished = True
        finally:
            if not finished:
                self.close()

    def close(self) -> None:
        """Stop the workers (idempotent); a later :meth:`run` starts new ones."""
        pool, events, self._pool, self._events = self._pool, self._events, None, None
        if pool is not None:
            pool.terminate()
            pool.join()
        if events is not None:
            events.close()

    def __enter__(self) -> PoolExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
