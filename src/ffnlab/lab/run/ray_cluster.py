"""Training runs as Ray tasks: the lab's runs spread over a cluster (``ffnlab[ray]``).

``ffnlab compare --ray ADDRESS`` (``auto``, ``ray://host:10001``, or ``local`` for a Ray
instance started in this process) sends each (variant, seed) run of a round to Ray as one task
needing ``threads`` CPUs, and saves each record the moment it comes back, exactly as the local
pool does (:mod:`ffnlab.lab.run.pool`): the same folder layout, the same resume, the same
numbers. What a cluster needs: ffnlab and torch installed on every node, ``--data`` readable at
the same path on every node (the embedded corpus needs nothing), and ``--out`` on a filesystem
every node shares, because the tasks write their checkpoints there.

Ray reports no per-step progress: the progress display advances as runs finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ...errors import UsageError
from .job import Event, RunJob, execute

__all__ = ["RayExecutor", "connect"]


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'ffnlab[ray]'") from None
    return ray


def _probe(address: str, timeout_s: float) -> None:
    """A TCP connection to ``host:port`` (or ``ray://host:port``): Ray itself retries a dead
    address for minutes, printing as it goes; this fails in ``timeout_s`` with one line."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and the like: Ray finds the address itself
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UsageError(f"--ray {address!r}: the Ray cluster does not answer "
                         f"({exc.strerror or exc})") from None


def connect(address: str, *, timeout_s: float = 10.0) -> None:
    """Join the Ray cluster at ``address`` (``local``: start one in this process); a
    UsageError in one line when it does not answer."""
    ray = _ray()
    if ray.is_initialized():
        return
    kw = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address != "local":
        _probe(address, timeout_s)
    try:
        if address == "local":
            ray.init(**kw)
        else:
            ray.init(address=address, **kw)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ... by version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"--ray {address!r}: the Ray cluster does not answer ({first})") from None


def _task(job_dict: dict) -> dict:
    return execute(RunJob(**job_dict))


class RayExecutor:
    """Each job as one Ray task with ``threads`` CPUs; records as they finish."""

    def __init__(self, address: str, *, threads: int = 1) -> None:
        connect(address)
        ray = _ray()
        self.threads = threads
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, cpus // threads)  # runs side by side, for the time budget
        self._remote = ray.remote(num_cpus=threads, max_retries=0)(_task)

    def run(self, jobs: Iterable[RunJob]) -> Iterator[Event]:
        ray = _ray()
        refs = {self._remote.remote(job.to_dict()): job for job in jobs}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        rec = ray.get(ref)
                    except Exception as exc:
                        raise RuntimeError(f"run {job.variant} seed {job.seed} failed in a Ray "
                                           f"task: {type(exc).__name__}: {exc}") from exc
                    yield ("done", job, rec)
        finally:
            for ref in refs:  # interrupted: stop what is still running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Nothing to stop: the cluster's workers belong to Ray (the same method as the
        local pool's, so callers close whichever executor they have)."""
