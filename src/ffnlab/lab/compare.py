"""Train a small byte-level language model once per FFN variant and seed, and write a report.

Every variant gets the same model around its FFN, an equal FFN parameter budget, the same
initialisation outside the FFN and the same batches for a given seed (see ``ffnlab.lab.train.model``
and ``ffnlab.lab.train.loop``). Results go to ``OUT/results.json``, one file per finished run to
``OUT/runs/<variant>-s<seed>.json``, checkpoints to ``OUT/checkpoints/``, and the report to
``OUT/report.md`` / ``report.html``. Running the same configuration again with the same
``out`` skips finished runs and resumes unfinished ones; a different configuration is refused.

Under torchrun every run trains with DistributedDataParallel, each process on its share of
the same global batches; rank 0 alone writes files and shows progress (see
``ffnlab.lab.train.distributed``). ``ffnlab compare --nproc N`` checks everything once with
:func:`prepare_launch`, then starts N such processes itself.

Entry points: :func:`run_compare` (``CompareConfig -> Results``), :func:`check_config`,
:func:`prepare_launch`.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from .. import files
from ..errors import UsageError
from .config import CompareConfig
from .run.results import Results
from .run.runner import CompareRunner
from .train import distributed

__all__ = ["check_config", "prepare_launch", "run_compare"]

# Fields whose change makes old runs incomparable (variants and seeds may change freely).
_FINGERPRINT_FIELDS = ("preset", "model", "train", "corpus_sha256", "device", "dtype", "backend",
                       "data_fraction")


def check_config(cfg: CompareConfig, *, world_size: int) -> None:
    """What depends on the machine: ``world_size`` processes split the global batch, and one
    run's estimated peak memory fits in what is free on ``cfg.device``; else a UsageError."""
    from .measure.memory import available_memory_bytes, estimate_memory_bytes
    from .train.variant import lab_variant

    _, model_cfg, train_cfg = cfg.resolved()
    distributed.check_world_size(world_size, train_cfg.batch_size)
    ffn = max((lab_variant(v).params_total(model_cfg.dim) for v in cfg.variants), default=None)
    need = estimate_memory_bytes(model_cfg, batch_size=train_cfg.batch_size, dtype=cfg.dtype,
                                 ffn_params=ffn)
    free = available_memory_bytes(cfg.device)
    if free is not None and need > free:
        raise UsageError(
            f"preset {cfg.preset!r} needs about {need / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is available on {cfg.device}; try a smaller preset"
        )


def _check_fingerprint(out: Path, fingerprint: dict) -> None:
    path = out / "config.json"
    if path.exists():
        try:
            old = files.read_json(path)
        except ValueError:
            old = None  # unreadable: written atomically, so only a hand edit gets here
        if isinstance(old, dict):
            diff = [k for k in _FINGERPRINT_FIELDS if old.get(k) != fingerprint.get(k)]
            if diff:
                raise UsageError(
                    f"{out} holds runs made with a different {', '.join(diff)}; use another "
                    f"--out or delete {out} to start over"
                )
    files.atomic_write_json(path, fingerprint)


def _prepare_out(cfg: CompareConfig):
    """Read the corpus, create ``out`` and check its fingerprint: ``(corpus, out, fingerprint)``."""
    from .train.data import load_corpus

    _, model_cfg, train_cfg = cfg.resolved()
    corpus = load_corpus(cfg.data, seq_len=model_cfg.seq_len, train_fraction=cfg.data_fraction)
    out = files.prepare_out_dir(cfg.out)
    fingerprint = {
        "preset": cfg.preset, "model": model_cfg.as_dict(), "train": train_cfg.as_dict(),
        "corpus_sha256": corpus.sha256, "device": cfg.device.type, "dtype": cfg.dtype_name,
        "backend": cfg.backend, "data_fraction": cfg.data_fraction,
    }
    _check_fingerprint(out, fingerprint)
    files.remove_stale_temps(out)  # half-written temp files of a killed earlier invocation
    return corpus, out, fingerprint


def prepare_launch(cfg: CompareConfig) -> CompareConfig:
    """Before starting ``cfg.nproc`` processes: check everything here (so an error is said
    once), create ``out``; the configuration the processes get (absolute paths)."""
    if distributed.env_world_size() > 1:
        raise UsageError("--nproc starts its own processes; under torchrun leave it out")
    if cfg.nproc is None:
        raise ValueError("prepare_launch needs a configuration with nproc set")
    check_config(cfg, world_size=cfg.nproc)
    _prepare_out(cfg)
    return replace(cfg, out=cfg.out.resolve(),
                   data=None if cfg.data is None else cfg.data.resolve())


def run_compare(cfg: CompareConfig) -> Results:
    """Run every missing (variant, seed) of ``cfg`` in this process, then write results.json
    and the report; alone, or as one rank of the process group torchrun describes.

    A bad configuration raises UsageError; on ranks other than 0 it is a
    :class:`~ffnlab.lab.train.distributed.PeerError` (rank 0 states the problem). Ctrl-C during
    training writes a partial results.json and report, then returns with ``interrupted``.
    """
    world = distributed.env_world_size()
    if cfg.nproc is not None and cfg.nproc != world:
        raise UsageError(f"nproc={cfg.nproc}: run_compare runs in this process; start "
                         f"{cfg.nproc} with `ffnlab compare --nproc {cfg.nproc}` or torchrun")
    try:
        check_config(cfg, world_size=world)
    except UsageError as exc:
        if distributed.env_rank() != 0:  # every rank finds the same problem; rank 0 says it
            raise distributed.PeerError(str(exc)) from None
        raise
    ctx = distributed.init_from_env(cfg.device, timeout_s=cfg.dist_timeout)
    orderly = False
    try:
        results = _run(cfg, ctx)
        orderly = True
        return results
    finally:
        distributed.shutdown(ctx, orderly=orderly)


def _executor(cfg: CompareConfig, ctx: distributed.DistContext):
    """Where the runs go: Ray, a local pool, or None (this process, and DDP under torchrun)."""
    if cfg.ray is not None:
        from .run.ray_cluster import RayExecutor

        return RayExecutor(cfg.ray, threads=1)  # connects now: before anything is written
    workers = 1 if ctx.distributed else cfg.worker_count()
    if workers > 1:
        from .run.pool import PoolExecutor

        return PoolExecutor(workers, threads=1)
    return None


def _run(cfg: CompareConfig, ctx: distributed.DistContext) -> Results:
    from .train.data import load_corpus

    _, model_cfg, _ = cfg.resolved()
    executor = _executor(cfg, ctx)
    if ctx.distributed:
        # Every rank trains on its own copy of the corpus (on several machines, each reads its
        # own --data); rank 0 alone touches out, and all must hold the same bytes.
        corpus = load_corpus(cfg.data, seq_len=model_cfg.seq_len, train_fraction=cfg.data_fraction)
        fingerprint = ctx.agree(lambda: _prepare_out(cfg)[2])
        if corpus.sha256 != fingerprint["corpus_sha256"]:
            raise UsageError(f"rank {ctx.rank} reads a different corpus than rank 0 "
                             f"(sha256 {corpus.sha256[:12]} vs {fingerprint['corpus_sha256'][:12]})")
        out = cfg.out
    else:
        corpus, out, fingerprint = _prepare_out(cfg)
    runner = CompareRunner(cfg, out=out, corpus=corpus, fingerprint=fingerprint,
                           executor=executor, dist=ctx,
                           device=ctx.device)  # under torchrun with cuda: this rank's GPU
    interrupted = False
    try:
        runner.run_all()
    except KeyboardInterrupt:
        interrupted = True
        if ctx.is_main:
            print("ffnlab compare: interrupted; writing a partial report "
                  "(run the same command again to resume)", file=sys.stderr)
    finally:
        if executor is not None:
            executor.close()
    if not ctx.is_main:
        return Results(out=out, interrupted=interrupted, content=None)
    from .report.document import write_report  # matplotlib: imported only when a report is written

    content = runner.results("partial" if interrupted else "complete")
    files.atomic_write_json(out / "results.json", content)
    write_report(content, out)
    return Results(out=out, interrupted=interrupted, content=content)
