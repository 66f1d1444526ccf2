"""The lab's run loop: the side measurements, then every missing (variant, seed) training run.

A finished run is saved to ``OUT/runs/<variant>-s<seed>.json`` the moment it ends and its
checkpoint removed, so a later invocation with the same ``--out`` skips it; an unfinished one
resumes from ``OUT/checkpoints/<variant>-s<seed>`` (see :mod:`ffnlab.lab.train`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .. import files
from . import distributed, io
from .config import Preset
from .results import build_results, now

__all__ = ["CompareRunner"]


class CompareRunner:
    """Trains the missing (variant, seed) pairs of one compare invocation into ``out``.

    On several processes every rank runs the same loop (DDP inside each training run); rank 0
    alone measures, writes files and shows progress.
    """

    def __init__(self, *, out: Path, variants: list[str], seeds: list[int], preset: Preset,
                 preset_name: str, model_cfg, train_cfg, corpus, device: torch.device,
                 dtype: torch.dtype, backend: str, fingerprint: dict,
                 dist: distributed.DistContext = distributed.SINGLE) -> None:
        self.out, self.variants, self.seeds = out, variants, seeds
        self.preset, self.preset_name = preset, preset_name
        self.model_cfg, self.train_cfg, self.corpus = model_cfg, train_cfg, corpus
        self.device, self.dtype, self.backend, self.fingerprint = device, dtype, backend, fingerprint
        self.dist = dist
        self.measured: dict[str, dict[str, float]] = {}
        self.started = now()

    def run_path(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / f"{variant}-s{seed}.json"

    def finished(self, variant: str, seed: int) -> dict | None:
        """The saved record of a finished run, or None (absent, unreadable or not finished)."""
        path = self.run_path(variant, seed)
        try:
            rec = files.read_json(path)
        except (OSError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("key", {}).get("corpus_sha256") != self.corpus.sha256:
            return None
        return rec

    def measure(self) -> None:
        """Side-by-side speed and memory of every variant (fresh on each invocation)."""
        from .measure import activation_timings, ffn_timings, saved_bytes_per_token

        kw = {"device": self.device, "dtype": self.dtype}
        bs = self.train_cfg.batch_size
        self.measured["saved_bytes_per_token"] = {
            v: saved_bytes_per_token(v, self.model_cfg, batch_size=bs, backend=self.backend, **kw)
            for v in self.variants
        }
        self.measured["ffn_ms"] = ffn_timings(self.variants, self.model_cfg, batch_size=bs,
                                              reps=self.preset.timing_reps, backend=self.backend, **kw)
        self.measured["act_ns_per_element"] = activation_timings(
            self.variants, numel=self.preset.act_numel, reps=self.preset.timing_reps, **kw)

    def run_all(self) -> None:
        """Measure (rank 0), then train every pending pair with a progress display on stderr."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        from .train import train_run

        main = self.dist.is_main
        console = Console(stderr=True, quiet=not main)  # one progress display: rank 0's
        if main:
            # Rank 0 alone, while the others wait: timings without the other ranks' load.
            with console.status("measuring FFN and activation speed side by side..."):
                self.measure()
        pending = self.dist.agree(lambda: [
            [v, s] for s in self.seeds for v in self.variants if not self.finished(v, s)])
        steps = self.train_cfg.steps
        columns = (TextColumn("[bold]{task.description:<16}"), BarColumn(),
                   TextColumn("step {task.fields[step]:>5}/{task.fields[steps]}"),
                   TextColumn("loss {task.fields[loss]}"), TextColumn("run {task.fields[run]}"),
                   TimeRemainingColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("starting", total=max(1, len(pending) * steps), step=0,
                                     steps=steps, loss="-", run=f"0/{len(pending)}")
            for i, (variant, seed) in enumerate(pending):
                base = i * steps
                progress.update(task, description=f"{variant} s{seed}", completed=base,
                                step=0, loss="-", run=f"{i + 1}/{len(pending)}")

                def on_step(ev: dict, base: int = base) -> None:
                    progress.update(task, completed=base + ev["step"], step=ev["step"],
                                    loss=f"{ev['loss'] / math.log(2):.3f} bpb")

                stem = self.out / "checkpoints" / f"{variant}-s{seed}"
                rec = train_run(variant, seed, self.corpus, self.model_cfg, self.train_cfg,
                                device=self.device, dtype=self.dtype, backend=self.backend,
                                checkpoint=stem, fingerprint=self.fingerprint, on_step=on_step,
                                log=progress.console.print, dist=self.dist)
                if main:
                    files.atomic_write_json(self.run_path(variant, seed), rec)
                    io.remove_checkpoint(stem)
            progress.update(task, completed=max(1, len(pending) * steps))

    def results(self, status: str) -> dict[str, Any]:
        """results.json's content from the finished run files."""
        return build_results(
            status=status, preset_name=self.preset_name, variants=self.variants,
            seeds=self.seeds,
            runs={(v, s): self.finished(v, s) for v in self.variants for s in self.seeds},
            model_cfg=self.model_cfg, train_cfg=self.train_cfg, device=self.device,
            dtype_name=self.fingerprint["dtype"], backend=self.backend,
            world_size=self.dist.world_size, corpus_identity=self.corpus.identity(),
            measured=self.measured, started=self.started,
        )
