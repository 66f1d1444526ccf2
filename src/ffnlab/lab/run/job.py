"""One training run as plain data (:class:`RunJob`), and :func:`execute`, the whole of one run
wherever it lands (this process, a pool worker, a Ray task).

A job holds JSON values only, so that it can travel to another process or machine; ``execute``
reads the corpus (once per process), trains with :func:`ffnlab.lab.train.loop.train_run` and
returns the run's record. Executors (:mod:`.pool`, :mod:`.ray_cluster`) write nothing
themselves: the caller saves each record the moment it arrives, so a run lost with its worker is
simply run again (from its checkpoint) next time. They yield events, in the order they happen:

* ``("step", job, {"step", "loss"})`` now and then while a run trains (for progress displays);
* ``("done", job, record)`` when a run has finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["RunJob", "execute", "job_corpus", "Event"]

Event = tuple  # ("step", RunJob, dict) | ("done", RunJob, dict)


@dataclass(frozen=True)
class RunJob:
    """One (variant, seed) training run, as plain data.

    ``model`` / ``train``: :class:`~ffnlab.lab.train.model.ModelConfig` / :class:`TrainConfig` fields;
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
    def key(self) -> tuple[str, int, str]:
        """The job's identity: variant, seed and a digest of everything else that changes its
        result (model, recipe, data, device, dtype, backend, checkpoint). Two jobs of one
        (variant, seed) under different recipes are two jobs; ``threads`` is left out (where a
        run executes does not make it another run)."""
        rest = {k: v for k, v in self.to_dict().items() if k not in ("variant", "seed", "threads")}
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()
        return (self.variant, self.seed, digest[:16])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CORPORA: dict[tuple, Any] = {}  # per process: (data, seq_len, fraction) -> Corpus


def job_corpus(job: RunJob):
    """The corpus of ``job``, read once per process."""
    from ..train.data import load_corpus

    key = (job.data, int(job.model["seq_len"]), float(job.data_fraction))
    if key not in _CORPORA:
        _CORPORA.clear()  # one corpus per process at a time is all a worker needs
        _CORPORA[key] = load_corpus(job.data, seq_len=key[1], train_fraction=key[2])
    return _CORPORA[key]


def execute(job: RunJob, *, on_step: Callable[[dict], None] | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Run ``job`` in this process; its record (see :func:`ffnlab.lab.train.loop.train_run`)."""
    import torch

    from ..train.loop import TrainConfig, train_run
    from ..train.model import ModelConfig
    from ..train.precision import dtype_by_name

    if job.threads is not None and torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)
    return train_run(job.variant, job.seed, job_corpus(job), ModelConfig(**job.model),
                     TrainConfig(**job.train), device=torch.device(job.device),
                     dtype=dtype_by_name(job.dtype), backend=job.backend,
                     checkpoint=job.checkpoint, fingerprint=job.fingerprint, on_step=on_step,
                     log=log)
