"""A pool of local worker processes for the lab's training runs (:class:`PoolExecutor`).

Jobs (:mod:`.job`) run on ``workers`` spawned processes with ``threads`` torch threads each
(default 1: two processes with two OpenMP threads each on two cores spin-wait for each other and
run 4-8x slower). A run's numbers depend only on its job and the thread count, so a pool gives
bit for bit what one process with the same thread count gives.
"""

from __future__ import annotations

import os
import queue as queue_mod
from collections.abc import Iterable, Iterator

from .allocator import keep_freed_memory
from .job import Event, RunJob, execute

__all__ = ["PoolExecutor", "STEP_EVENT_EVERY"]

STEP_EVENT_EVERY = 10  # a worker reports progress every 10 optimizer steps

# --- a pool of local worker processes ------------------------------------------------------------

_EVENTS = None  # in a pool worker: the queue step events go to
_PARENT = None  # in a pool worker: the pid of the process that started it


def _init_worker(events, threads: int, keep_memory: bool) -> None:
    import torch

    global _EVENTS, _PARENT
    _EVENTS, _PARENT = events, os.getppid()
    torch.set_num_threads(threads)
    if keep_memory:  # the worker is the lab's own process: 13 % less CPU per step (allocator)
        keep_freed_memory()


def _pool_task(job_dict: dict) -> dict:
    job = RunJob(**job_dict)

    def on_step(ev: dict) -> None:
        # A parent killed with SIGKILL cannot stop its pool: without this check the worker
        # would train on, writing checkpoints that the next invocation also writes.
        if _PARENT is not None and os.getppid() != _PARENT:
            os._exit(1)
        if _EVENTS is not None and ev["step"] % STEP_EVENT_EVERY == 0:
            _EVENTS.put((job.key, {"step": ev["step"], "loss": ev["loss"]}))

    return execute(job, on_step=on_step)


class PoolExecutor:
    """Jobs spread over ``workers`` spawned processes with ``threads`` torch threads each.

    The processes start on the first :meth:`run` and serve every later one until
    :meth:`close` (or the end of a ``with`` block): a fresh pool per adaptive round would pay
    the workers' start (importing torch and reading the corpus, about 2.7 s here) once per round.
    Records come back as runs finish (not in job order). An exception in a run is raised here
    with the run named; Ctrl-C (or any exit from the iteration before its end) terminates the
    workers, whose last checkpoints stay for the next invocation.

    ``keep_memory``: the workers keep freed memory for reuse (:mod:`.allocator`); ``False``
    leaves the C library's defaults (what ``benchmarks/lab_bench.py`` measures against).
    """

    def __init__(self, workers: int, *, threads: int = 1, poll_s: float = 0.2,
                 keep_memory: bool = True) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers, self.threads, self.poll_s = workers, threads, poll_s
        self.keep_memory = bool(keep_memory)
        self._pool = None
        self._events = None

    def _start(self) -> None:
        import multiprocessing as mp

        if self._pool is None:
            ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks
            self._events = ctx.Queue()
            self._pool = ctx.Pool(self.workers, initializer=_init_worker,
                                  initargs=(self._events, self.threads, self.keep_memory))

    def run(self, jobs: Iterable[RunJob]) -> Iterator[Event]:
        jobs = list(jobs)
        if not jobs:
            return
        self._start()
        pool, events = self._pool, self._events
        finished = False
        keys = [job.key for job in jobs]
        if len(set(keys)) != len(keys):
            twice = sorted({f"{k[0]} seed {k[1]}" for k in keys if keys.count(k) > 1})
            raise ValueError(f"the same run was submitted twice: {', '.join(twice)}")
        try:
            pending = {job.key: (job, pool.apply_async(_pool_task, (job.to_dict(),)))
                       for job in jobs}
            while pending:
                try:
                    key, ev = events.get(timeout=self.poll_s)
                    if tuple(key) in pending:
                        yield ("step", pending[tuple(key)][0], ev)
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
