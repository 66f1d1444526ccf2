"""Train a small byte-level language model once per FFN variant and seed, and write a report.

Every variant gets the same model around its FFN, an equal FFN parameter budget, the same
initialisation outside the FFN and the same batches for a given seed (see ``ffnlab.lab.model``
and ``ffnlab.lab.train``). Results go to ``OUT/results.json``, one file per finished run to
``OUT/runs/<variant>-s<seed>.json``, checkpoints to ``OUT/checkpoints/``, and the report to
``OUT/report.md`` / ``report.html``. Re-running the same command with the same ``--out``
skips finished runs and resumes unfinished ones; a different configuration is refused.

Under torchrun (or with ``--nproc N``, which starts torchrun itself) every run trains with
DistributedDataParallel, each process on its share of the same global batches; rank 0 alone
writes files and shows progress (see ``ffnlab.lab.distributed``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..commands.common import (
    add_common,
    parse_device,
    parse_dtype,
    parse_variants,
    prepare_out_dir,
    print_json,
)
from ..errors import UsageError, check_choice, check_positive_int
from ..sizing import ffn_params
from ..variants import get_variant
from . import distributed, io

SCHEMA_VERSION = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class Preset:
    """A model size, optimisation settings and measurement effort."""

    model: dict
    train: dict
    seeds: int
    timing_reps: int
    act_numel: int


# Sized for a 2-core CPU (see docs/lab.md for measured wall times): smoke checks the pipeline
# in under two minutes; quick reaches well below the corpus' unigram entropy (4.70 bits/byte)
# in under ten; full wants a GPU or an afternoon.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        model={"dim": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
        train={"steps": 20, "batch_size": 8, "lr": 1e-2, "warmup": 4, "eval_every": 10,
               "eval_tokens": 1024, "ckpt_every": 10},
        seeds=1, timing_reps=5, act_numel=1 << 16,
    ),
    "quick": Preset(
        model={"dim": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64},
        train={"steps": 600, "batch_size": 16, "lr": 5e-3, "warmup": 60, "eval_every": 50,
               "eval_tokens": 8192, "ckpt_every": 50},
        seeds=2, timing_reps=10, act_numel=1 << 20,
    ),
    "full": Preset(
        model={"dim": 256, "n_layers": 4, "n_heads": 8, "seq_len": 256},
        train={"steps": 3000, "batch_size": 32, "lr": 3e-3, "warmup": 200, "eval_every": 250,
               "eval_tokens": 65536, "ckpt_every": 250},
        seeds=3, timing_reps=20, act_numel=1 << 22,
    ),
}

# Fields whose change makes old runs incomparable (variants and seeds may change freely).
_FINGERPRINT_FIELDS = ("preset", "model", "train", "corpus_sha256", "device", "dtype", "backend")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out="runs/compare", dtype="float32", seed=True, json_flag=False)
    p.add_argument("--preset", default="quick", help="smoke, quick or full (default: quick)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--data", default=None, help="a text file or a folder of them (default: pydoc_data.topics)")
    p.add_argument("--backend", default="auto", help="FeedForward backend (default: auto)")
    p.add_argument("--json", action="store_true", help="print results.json when done")
    p.add_argument("--nproc", type=int, default=None,
                   help="train data-parallel on N local processes (starts torchrun on 127.0.0.1)")
    p.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the others before giving up (default: 600)")


def resolve_config(preset_name: str, *, steps: int | None = None):
    """``(preset, ModelConfig, TrainConfig)`` for a preset and an optional step override.

    With ``steps`` given, warm-up stays at most 10% of it and evaluation happens at least 4 times.
    """
    from .model import ModelConfig
    from .train import TrainConfig

    check_choice("preset", preset_name, PRESETS)
    preset = PRESETS[preset_name]
    train = TrainConfig(**preset.train)
    if steps is not None:
        check_positive_int("--steps", steps)
        train = replace(
            train, steps=steps, warmup=min(train.warmup, steps // 10),
            eval_every=max(1, min(train.eval_every, steps // 4)),
            ckpt_every=max(1, min(train.ckpt_every, steps // 4)),
        )
    return preset, ModelConfig(**preset.model), train


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_fingerprint(out: Path, fingerprint: dict) -> None:
    path = out / "config.json"
    if path.exists():
        try:
            old = io.read_json(path)
        except ValueError:
            old = None  # unreadable: written atomically, so only a hand edit gets here
        if isinstance(old, dict):
            diff = [k for k in _FINGERPRINT_FIELDS if old.get(k) != fingerprint.get(k)]
            if diff:
                raise UsageError(
                    f"{out} holds runs made with a different {', '.join(diff)}; use another "
                    f"--out or delete {out} to start over"
                )
    io.atomic_write_json(path, fingerprint)


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return launch_nproc(args)
    try:
        settings = _settings(args, world_size=distributed.env_world_size())
    except UsageError:
        if distributed.env_rank() != 0:
            return EXIT_USAGE  # every rank finds the same problem; rank 0 says it
        raise
    ctx = distributed.init_from_env(settings["device"], timeout_s=args.dist_timeout)
    orderly = False
    try:
        rc = _run(args, ctx, **settings)
        orderly = True
        return rc
    except distributed.PeerError:
        return EXIT_USAGE  # rank 0 refused the run and printed why
    finally:
        distributed.shutdown(ctx, orderly=orderly)


def launch_nproc(args: argparse.Namespace) -> int:
    """``--nproc N``: check everything here (errors exit 2 once), then run torchrun."""
    if distributed.env_world_size() > 1:
        raise UsageError("--nproc starts its own processes; under torchrun leave it out")
    check_positive_int("--nproc", args.nproc)
    s = _settings(args, world_size=args.nproc)
    _prepare_out(args, s["model_cfg"], s["train_cfg"], s["device"], s["dtype"])
    argv = ["compare", "--preset", args.preset, "--out", str(Path(args.out).resolve()),
            "--variants", args.variants, "--device", args.device, "--dtype", args.dtype,
            "--seed", str(args.seed), "--backend", args.backend,
            "--dist-timeout", repr(float(args.dist_timeout))]
    for flag, value in (("--seeds", args.seeds), ("--steps", args.steps)):
        if value is not None:
            argv += [flag, str(value)]
    if args.data is not None:
        argv += ["--data", str(Path(args.data).resolve())]
    if args.json:
        argv.append("--json")
    return distributed.launch(args.nproc, argv)


def _settings(args: argparse.Namespace, *, world_size: int) -> dict[str, Any]:
    """Validate the options (no files touched); the keyword arguments of :func:`_run`."""
    from .measure import available_memory_bytes, estimate_memory_bytes

    preset, model_cfg, train_cfg = resolve_config(args.preset, steps=args.steps)
    distributed.check_world_size(world_size, train_cfg.batch_size)
    variants = parse_variants(args.variants)
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    n_seeds = preset.seeds if args.seeds is None else check_positive_int("--seeds", args.seeds)
    if args.seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {args.seed}")
    seeds = [args.seed + i for i in range(n_seeds)]
    from ..ops.dispatch import BACKENDS

    check_choice("backend", args.backend, BACKENDS)
    need = estimate_memory_bytes(model_cfg, batch_size=train_cfg.batch_size, dtype=dtype)
    free = available_memory_bytes(device)
    if free is not None and need > free:
        raise UsageError(
            f"preset {args.preset!r} needs about {need / 2**30:.1f} GiB but only "
            f"{free / 2**30:.1f} GiB is available on {device}; try a smaller preset"
        )
    return {"preset": preset, "model_cfg": model_cfg, "train_cfg": train_cfg,
            "variants": variants, "device": device, "dtype": dtype, "seeds": seeds}


def _prepare_out(args, model_cfg, train_cfg, device, dtype):
    """Read the corpus, create ``--out`` and check its fingerprint: ``(corpus, out, fingerprint)``."""
    from .data import load_corpus

    corpus = load_corpus(args.data, seq_len=model_cfg.seq_len)
    out = prepare_out_dir(args.out)
    fingerprint = {
        "preset": args.preset, "model": model_cfg.as_dict(), "train": train_cfg.as_dict(),
        "corpus_sha256": corpus.sha256, "device": device.type, "dtype": str(dtype).removeprefix("torch."),
        "backend": args.backend,
    }
    _check_fingerprint(out, fingerprint)
    io.remove_stale_temps(out)  # half-written temp files of a killed earlier invocation
    return corpus, out, fingerprint


def _run(args, ctx: distributed.DistContext, *, preset, model_cfg, train_cfg, variants, device,
         dtype, seeds) -> int:
    from .data import load_corpus

    device = ctx.device  # under torchrun with cuda: this rank's GPU
    if ctx.distributed:
        # Every rank trains on its own copy of the corpus (on several machines, each reads its
        # own --data); rank 0 alone touches --out, and all must hold the same bytes.
        corpus = load_corpus(args.data, seq_len=model_cfg.seq_len)
        fingerprint = ctx.agree(lambda: _prepare_out(args, model_cfg, train_cfg, device, dtype)[2])
        if corpus.sha256 != fingerprint["corpus_sha256"]:
            raise UsageError(f"rank {ctx.rank} reads a different corpus than rank 0 "
                             f"(sha256 {corpus.sha256[:12]} vs {fingerprint['corpus_sha256'][:12]})")
        out = Path(args.out)
    else:
        corpus, out, fingerprint = _prepare_out(args, model_cfg, train_cfg, device, dtype)
    runner = Runner(out=out, variants=variants, seeds=seeds, preset=preset, model_cfg=model_cfg,
                    train_cfg=train_cfg, corpus=corpus, device=device, dtype=dtype,
                    backend=args.backend, fingerprint=fingerprint, preset_name=args.preset,
                    dist=ctx)
    status = "complete"
    try:
        runner.run_all()
    except KeyboardInterrupt:
        status = "partial"
        if ctx.is_main:
            print("ffnlab compare: interrupted; writing a partial report "
                  "(run the same command again to resume)", file=sys.stderr)
    if not ctx.is_main:
        return 130 if status == "partial" else 0
    from .report import write_report  # matplotlib: imported only when a report is written

    results = runner.results(status)
    io.atomic_write_json(out / "results.json", results)
    write_report(results, out)
    if args.json:
        print_json(results)
    print(f"Report: {out / 'report.md'}  (results: {out / 'results.json'})", file=sys.stderr)
    return 130 if status == "partial" else 0


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def aggregate_variant(name: str, runs: list[dict], *, dim: int, measured: dict) -> dict[str, Any]:
    """One ``variants`` item of results.json from the variant's finished runs."""
    from .model import ffn_hidden

    v = get_variant(name)
    hidden = ffn_hidden(name, dim)
    # Quality numbers (bpb, curve, dead units) come from the runs that did not diverge: a seed
    # that blew up mid-run would otherwise shift every later point of the mean curve.
    ok = [r for r in runs if not r["diverged"]]
    bpbs = [r["val_bpb"] for r in ok if r["val_bpb"] is not None]
    by_step: dict[int, list[float]] = {}
    for r in ok:
        for step, bpb in r["curve"]:
            if bpb is not None:
                by_step.setdefault(step, []).append(bpb)
    public = ("seed", "val_bpb", "curve", "tokens_per_s", "dead_fraction", "final_train_loss",
              "wall_s", "diverged")
    return {
        "name": name, "gated": v.gated, "activation": v.activation, "hidden": hidden,
        "params": ffn_params(name, dim, hidden, bias=False),
        "val_bpb_mean": _mean(bpbs),
        "val_bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else (0.0 if bpbs else None),
        "tokens_per_s": _mean([r["tokens_per_s"] for r in runs]) or 0.0,
        "ffn_ms": measured.get("ffn_ms", {}).get(name),
        "act_ns_per_element": measured.get("act_ns_per_element", {}).get(name),
        "saved_bytes_per_token": measured.get("saved_bytes_per_token", {}).get(name),
        "dead_fraction": _mean([r["dead_fraction"] for r in ok]),
        "curve": [[s, statistics.fmean(b)] for s, b in sorted(by_step.items())],
        "diverged_runs": sum(bool(r["diverged"]) for r in runs),
        "runs": [{k: r[k] for k in public} for r in sorted(runs, key=lambda r: r["seed"])],
    }


def versions() -> dict[str, str]:
    from .. import __version__

    return {"ffnlab": __version__, "torch": torch.__version__, "python": platform.python_version()}


class Runner:
    """Runs the missing (variant, seed) pairs into ``out`` and assembles results.json."""

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
        self.started = _now()

    def run_path(self, variant: str, seed: int) -> Path:
        return self.out / "runs" / f"{variant}-s{seed}.json"

    def finished(self, variant: str, seed: int) -> dict | None:
        """The saved record of a finished run, or None (absent, unreadable or not finished)."""
        path = self.run_path(variant, seed)
        try:
            rec = io.read_json(path)
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
                    io.atomic_write_json(self.run_path(variant, seed), rec)
                    io.remove_checkpoint(stem)
            progress.update(task, completed=max(1, len(pending) * steps))

    def results(self, status: str) -> dict[str, Any]:
        """results.json's content from the finished run files (see docs/lab.md for the schema)."""
        from .train import DEAD_THRESHOLD

        runs = {(v, s): self.finished(v, s) for v in self.variants for s in self.seeds}
        missing = [{"variant": v, "seed": s} for (v, s), r in runs.items() if r is None]
        if missing:
            status = "partial"
        m, t = self.model_cfg, self.train_cfg
        from .model import ffn_hidden

        config = {
            "preset": self.preset_name, "steps": t.steps, "seeds": self.seeds,
            "variants": list(self.variants),
            "device": self.device.type, "dtype": self.fingerprint["dtype"], "backend": self.backend,
            "world_size": self.dist.world_size,
            "model": {**m.as_dict(), "batch_size": t.batch_size,
                      "plain_hidden": ffn_hidden("relu", m.dim),
                      "gated_hidden": ffn_hidden("swiglu", m.dim)},
            "lr": t.lr, "warmup": t.warmup, "min_lr_ratio": t.min_lr_ratio,
            "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
            "tokens_per_run": t.steps * t.batch_size * m.seq_len,
            "eval_every": t.eval_every, "eval_tokens": t.eval_tokens,
            "dead_threshold": DEAD_THRESHOLD,
            "dead_rule": "a unit is dead if |act(W1 x)| <= threshold on every validation token; "
                         "threshold 0 for relu/relu2/reglu, else dead_threshold x the layer's "
                         "largest |act(W1 x)|",
            "versions": versions(), "started": self.started, "finished": _now(),
        }
        variants = []
        for v in self.variants:
            done = [r for s in self.seeds if (r := runs[(v, s)]) is not None]
            if done:
                variants.append(aggregate_variant(v, done, dim=m.dim, measured=self.measured))
        return {"schema_version": SCHEMA_VERSION, "status": status, "config": config,
                "corpus": self.corpus.identity(), "variants": variants, "missing": missing}
