"""The lab's run loop: the side measurements, then round after round of training runs.

The runs of a round (every missing (variant, seed) of the plan, :mod:`ffnlab.lab.run.seeding`) go to
an executor (:mod:`ffnlab.lab.run.pool`: a pool of worker processes, Ray) or run in this
process, which is also how a torchrun group trains (DDP inside each run).

A finished run is saved to ``OUT/runs/<variant>-s<seed>.json`` (``moe-swiglu-8x2-s0.json`` for
``moe:swiglu:8x2``: colons are not allowed in every file system's names) the moment it ends and its
checkpoint removed, so a later invocation with the same ``--out`` skips it; an unfinished one
resumes from ``OUT/checkpoints/<variant>-s<seed>`` (see :mod:`ffnlab.lab.train.loop`).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ... import files
from ..config import CompareConfig
from ..names import file_stem
from ..stats.tuning import RateChoice
from ..train import checkpoint as io
from ..train import distributed
from .job import RunJob
from .results import build_results, now
from .seeding import SeedPlan, plan, trim_round
from .tuning import tune, tuning_content, tuning_path

__all__ = ["CompareRunner"]


class CompareRunner:
    """Trains the missing (variant, seed) pairs of one compare invocation into ``out``.

    On several processes every rank runs the same loop (DDP inside each training run); rank 0
    alone measures, writes files and shows progress.
    """

    def __init__(self, cfg: CompareConfig, *, out: Path, corpus, fingerprint: dict,
                 executor=None, dist: distributed.DistContext = distributed.SINGLE,
                 device: torch.device | None = None) -> None:
        """``cfg``: what to run; ``out`` and ``corpus``: the prepared output folder and the corpus
        read for it (:func:`ffnlab.lab.compare.run_compare` prepares both), ``fingerprint``:
        what makes old runs comparable; ``executor``: where runs go (None: this process);
        ``device``: this process' device (under torchrun with CUDA, this rank's GPU; default
        ``cfg.device``)."""
        self.cfg, self.out, self.corpus, self.fingerprint = cfg, out, corpus, fingerprint
        self.preset, self.model_cfg, self.train_cfg = cfg.resolved()
        self.variants = list(cfg.variants)
        self.device = cfg.device if device is None else device
        self.executor, self.dist = executor, dist
        # What each run of a job gets, from the executor that runs it (None: this process).
        self.workers = 1 if executor is None else executor.workers
        self.threads = None if executor is None else executor.threads
        self.t0 = time.monotonic()
        self.stopped: str | None = None
        self.measured: dict[str, dict[str, float]] = {}
        self.started = now()
        # Tuning (run/tuning.py): each variant's chosen rate; the recipe's rate until then.
        self.choices: dict[str, RateChoice] = {}
        self._paths: dict[tuple, Path] = {}  # job key -> where its record is saved

    @property
    def seed0(self) -> int:
        return self.cfg.seed

    @property
    def dtype(self) -> torch.dtype:
        return self.cfg.dtype

    @property
    def backend(self) -> str:
        return self.cfg.backend

    def run_path(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / f"{file_stem(variant)}-s{seed}.json"

    def lr_of(self, variant: str) -> float:
        """The learning rate ``variant``'s verdict runs train at (its tuned one, when tuned)."""
        c = self.choices.get(variant)
        return self.train_cfg.lr if c is None else c.chosen

    def _read(self, path: Path, lr: float) -> dict | None:
        try:
            rec = files.read_json(path)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict):
            return None
        key = rec.get("key", {})
        if key.get("corpus_sha256") != self.corpus.sha256 or key.get("train", {}).get("lr") != lr:
            return None  # another corpus, or a rate this invocation does not train at
        return rec

    def finished(self, variant: str, seed: int) -> dict | None:
        """The saved record of a finished verdict run at the variant's rate, or None (absent,
        unreadable, not finished, or made at another rate)."""
        return self._read(self.run_path(variant, seed), self.lr_of(variant))

    def finished_tuning(self, variant: str, lr: float, seed: int) -> dict | None:
        """The saved record of a finished tuning run, or None."""
        return self._read(tuning_path(self.out, variant, lr, seed), lr)

    def measure(self) -> None:
        """Side-by-side speed and memory of every variant (fresh on each invocation), and the
        measurements behind the claims: each activation's cost with intervals, saturation at
        initialisation, Swish's β limits (the same whichever variants run)."""
        from ..measure import swish_beta
        from ..measure.memory import saved_bytes_per_token
        from ..measure.saturation import saturation
        from ..measure.timing import (
            ACTIVATION_COST_REPS,
            activation_cost,
            activation_cost_numel,
            activation_timings,
            ffn_timings,
            paired_ratios,
        )
        from ..names import GATED_TWINS

        kw = {"device": self.device, "dtype": self.dtype}
        bs = self.train_cfg.batch_size
        self.measured["saved_bytes_per_token"] = {
            v: saved_bytes_per_token(v, self.model_cfg, batch_size=bs, backend=self.backend, **kw)
            for v in self.variants
        }
        raw: dict = {}
        self.measured["ffn_ms"] = ffn_timings(self.variants, self.model_cfg, batch_size=bs,
                                              reps=self.preset.timing_reps, backend=self.backend,
                                              raw=raw, **kw)
        # gated / plain twin, paired by round: what the GLU-cost claim rests on
        self.measured["ffn_ratios"] = paired_ratios(
            raw, [(p, g) for g, p in GATED_TWINS.items() if g in raw and p in raw])
        self.measured["act_ns_per_element"] = activation_timings(
            self.variants, numel=self.preset.act_numel, reps=self.preset.timing_reps, **kw)
        self.measured["activation_cost"] = activation_cost(
            numel=activation_cost_numel(self.device), reps=ACTIVATION_COST_REPS, **kw)
        self.measured["saturation"] = saturation(self.model_cfg, device=self.device)
        self.measured["swish_beta"] = swish_beta.measure()

    # --- the runs ------------------------------------------------------------------------------

    @property
    def seeding_path(self) -> Path:
        return self.out / "seeding.json"

    def _seeding(self) -> dict:
        try:
            data = files.read_json(self.seeding_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def recorded_rounds(self) -> list[dict[str, int]]:
        """The adaptive rounds decided by earlier invocations (``OUT/seeding.json``)."""
        rounds = self._seeding().get("rounds")
        if not isinstance(rounds, list):
            return []
        return [{k: v for k, v in r.items() if isinstance(v, int)} for r in rounds
                if isinstance(r, dict)]

    def budget_spent_before(self) -> bool:
        """Whether an earlier invocation's time budget, at least as large as this one's, ended
        the adaptive rounds (``seeding.json``'s ``stopped_by_budget``). The same command
        again then adds no round: a finished comparison is not extended by being run twice
        (a larger ``--time-budget`` does extend it)."""
        spent = self._seeding().get("stopped_by_budget")
        budget = self.cfg.time_budget_s
        return (isinstance(spent, (int, float)) and budget is not None
                and budget <= float(spent))  # fmt: skip

    def _fit(self, counts, new, priority) -> dict[str, int]:
        """Cut a new round to what is left of the time budget (whole waves of runs)."""
        if self.cfg.time_budget_s is None:
            return dict(new)
        walls = [r["wall_s"] for v, n in counts.items() for i in range(n)
                 if (r := self.finished(v, self.seed0 + i)) is not None and r.get("wall_s")]
        if not walls:
            return dict(new)
        per_run = sum(walls) / len(walls)
        left = self.cfg.time_budget_s - (time.monotonic() - self.t0)
        waves = int(left // per_run)
        return trim_round(counts, new, waves * self.workers, priority)

    def plan(self, *, deciding: bool = False) -> SeedPlan:
        """The runs wanted now (adaptive seeding: :mod:`ffnlab.lab.run.seeding`). ``deciding``:
        this invocation may decide new rounds (they are recorded), with its time budget."""
        recorded = self.recorded_rounds()
        spent = deciding and self.budget_spent_before()
        p = plan(self.variants, self.seed0, initial=self.cfg.initial_seeds,
                 max_seeds=self.cfg.seed_budget, resolution=self.cfg.resolution,
                 finished=self.finished,
                 recorded=recorded, fit=self._fit if deciding else None,
                 decide=deciding and not spent, wave=self.workers)
        if deciding and (p.new_rounds or p.stopped == "time budget"):
            content: dict = {"rounds": [*recorded, *p.new_rounds]}
            if p.stopped == "time budget":
                content["stopped_by_budget"] = self.cfg.time_budget_s
            files.atomic_write_json(self.seeding_path, content)
        if deciding:
            self.stopped = "time budget" if spent and p.complete else p.stopped
        return p

    def job(self, variant: str, seed: int, *, tuning_lr: float | None = None) -> RunJob:
        """The verdict run of ``variant`` with ``seed`` at its rate, or its tuning run at
        ``tuning_lr``."""
        lr = self.lr_of(variant) if tuning_lr is None else tuning_lr
        train = {**self.train_cfg.as_dict(), "lr": lr}
        if tuning_lr is not None:
            # A tuning run is judged by its final bpb alone: evaluating on the way (100k tokens,
            # 0.3 s of a 13 s quick run, twice) buys a curve nobody reads. Evaluation changes
            # nothing in training, so the final bpb is the same either way.
            train["eval_every"] = train["steps"]
        stem = f"{file_stem(variant)}-s{seed}" if tuning_lr is None else \
            f"tune-{file_stem(variant)}-lr{lr:g}-s{seed}"
        job = RunJob(variant=variant, seed=seed, model=self.model_cfg.as_dict(),
                     train=train,
                     data=None if self.cfg.data is None else str(self.cfg.data),
                     data_fraction=self.cfg.data_fraction,
                     device=str(self.device), dtype=self.fingerprint["dtype"], backend=self.backend,
                     checkpoint=str(self.out / "checkpoints" / stem),
                     fingerprint=self.fingerprint, threads=self.threads)
        self._paths[job.key] = (self.run_path(variant, seed) if tuning_lr is None
                                else tuning_path(self.out, variant, lr, seed))
        return job

    def save(self, job: RunJob, rec: dict) -> None:
        files.atomic_write_json(self._paths[job.key], rec)
        io.remove_checkpoint(Path(job.checkpoint))

    def tune(self, console) -> None:
        """Choose every variant's rate (:mod:`.tuning`) before the verdict runs."""
        self.choices = tune(
            self.variants, self.cfg.tuning_grid(), self.cfg.tuning_seed_list(),
            finished=self.finished_tuning,
            run=lambda missing: self._run_round(
                [self.job(v, s, tuning_lr=lr) for v, lr, s in missing], console),
            agree=self.dist.agree)

    def run_all(self) -> None:
        """Measure (rank 0), then train round after round until the plan is complete."""
        from rich.console import Console

        main = self.dist.is_main
        console = Console(stderr=True, quiet=not main)  # one progress display: rank 0's
        if main:
            # Rank 0 alone, while the others wait: timings without the other ranks' load.
            with console.status("measuring FFN and activation speed side by side..."):
                self.measure()
        if self.cfg.tuning:
            self.tune(console)
        while True:
            # Every rank asks rank 0's files, so all agree on the round.
            pending = self.dist.agree(lambda: [
                [v, s] for v, s in self.plan(deciding=True).wanted(self.seed0)
                if not self.finished(v, s)])
            if not pending:
                return
            self._run_round([self.job(v, s) for v, s in pending], console)

    def _run_round(self, jobs: list[RunJob], console) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        steps = self.train_cfg.steps
        columns = (TextColumn("[bold]{task.description:<18}"), BarColumn(),
                   TextColumn("step {task.fields[step]:>5}/{task.fields[steps]}"),
                   TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
        # Two redraws a second, not rich's ten: the parent shares the cores with the workers,
        # and at ten it spent 7.7 s of CPU instead of 6.4 s on a 4-run quick job of 300 steps
        # (its own utime + stime, measurements and report included; 2026-12-03).
        with Progress(*columns, console=console, refresh_per_second=2) as progress:
            total = progress.add_task(f"{len(jobs)} runs", total=len(jobs) * steps, step=0,
                                      steps=steps * len(jobs), loss="-")
            done_steps: dict[tuple[str, int], int] = {}
            bars: dict[tuple[str, int], int] = {}

            def show(job: RunJob, ev: dict) -> None:
                if job.key not in bars:
                    name = (f"{job.variant} lr{job.train['lr']:g}" if job.key in self._paths
                            and self._paths[job.key].parent.name == "tuning" else job.variant)
                    bars[job.key] = progress.add_task(f"{name} s{job.seed}", total=steps,
                                                      step=0, steps=steps, loss="-")
                progress.update(bars[job.key], completed=ev["step"], step=ev["step"],
                                loss=f"{ev['loss'] / math.log(2):.3f} bpb")
                done_steps[job.key] = ev["step"]
                progress.update(total, completed=sum(done_steps.values()),
                                step=sum(done_steps.values()))

            def finish(job: RunJob, rec: dict) -> None:
                if self.dist.is_main:
                    self.save(job, rec)
                if job.key in bars:
                    progress.remove_task(bars.pop(job.key))
                done_steps[job.key] = steps
                progress.update(total, completed=sum(done_steps.values()),
                                step=sum(done_steps.values()))

            if self.executor is None:
                self._run_here(jobs, show, finish, progress.console.print)
            else:
                for kind, job, payload in self.executor.run(jobs):
                    (show if kind == "step" else finish)(job, payload)

    def _run_here(self, jobs, show, finish, log) -> None:
        """In this process (and, under torchrun, with the other ranks: DDP inside each run)."""
        from ..train.loop import TrainConfig, train_run

        for job in jobs:
            rec = train_run(job.variant, job.seed, self.corpus, self.model_cfg,
                            TrainConfig(**job.train),  # the job's rate: tuned, or a tuning one
                            device=self.device, dtype=self.dtype, backend=self.backend,
                            checkpoint=job.checkpoint, fingerprint=self.fingerprint,
                            on_step=lambda ev, job=job: show(job, ev), log=log, dist=self.dist)
            finish(job, rec)

    def results(self, status: str) -> dict[str, Any]:
        """results.json's content from the finished run files."""
        p = self.plan()
        wanted = p.wanted(self.seed0)
        seeds = sorted({s for _, s in wanted})
        tuning: dict = {}
        if self.cfg.tuning and self.choices:
            per, shared = tuning_content(self.choices, shared_lr=self.train_cfg.lr,
                                         seeds=self.cfg.tuning_seed_list(),
                                         finished=self.finished_tuning,
                                         resolution=self.cfg.resolution)
            tuning = {"per_variant": per, "shared_comparisons": shared,
                      "config": {"grid": list(self.cfg.tuning_grid()),
                                 "seeds": self.cfg.tuning_seed_list(),
                                 "shared_lr": self.train_cfg.lr}}
        return build_results(
            status=status, preset_name=self.cfg.preset, variants=self.variants,
            seeds=seeds, runs={(v, s): self.finished(v, s) for v, s in wanted},
            seeding={"initial": self.cfg.initial_seeds, "max": self.cfg.seed_budget,
                     "rounds": p.rounds, "complete": p.complete, "counts": p.counts,
                     "stopped": self.stopped if p.complete else None,
                     "time_budget_s": self.cfg.time_budget_s},
            resolution=self.cfg.resolution, data_fraction=self.cfg.data_fraction,
            model_cfg=self.model_cfg, train_cfg=self.train_cfg, device=self.device,
            dtype_name=self.fingerprint["dtype"], backend=self.backend,
            world_size=self.dist.world_size, corpus_identity=self.corpus.identity(),
            measured=self.measured, started=self.started,
            lrs={v: self.lr_of(v) for v in self.variants}, tuning=tuning,
        )
