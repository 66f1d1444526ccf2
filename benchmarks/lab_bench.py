"""The lab's training throughput and recipe sweep, measured side by side in one run.

    .venv/bin/python benchmarks/lab_bench.py throughput   # tokens/s and share of the matmul ceiling
    .venv/bin/python benchmarks/lab_bench.py sweep SPEC.json   # a recipe sweep (see docs/lab.md)

``throughput`` trains each setup for a few hundred steps and reports training tokens/s
(forward, backward, optimizer; evaluation excluded), the model's FLOPs per token (counted by
``torch.utils.flop_counter.FlopCounterMode`` on one forward+backward) and the achieved share of
the machine's matmul rate (``ffnlab.bench.machine.matmul_rate``, all threads): the old quick
recipe in one process with every thread, and the new one as the lab runs it, one run per core
with one thread each, all at once. ``sweep`` runs a list of (recipe, variant, seed) jobs through
the lab's own worker pool and prints per-recipe means and paired differences against relu with
their Student-t intervals. Results go to ``benchmarks/results/lab-<what>-<date>.json``; the
machine must be otherwise idle for the timings to mean anything.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ffnlab.bench.machine import machine_info, matmul_rate
from ffnlab.lab.config import PRESETS
from ffnlab.lab.run import job as J
from ffnlab.lab.run import pool as E
from ffnlab.lab.stats.student import t_quantile_975
from ffnlab.lab.train.model import ModelConfig, TinyGPT

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Setup:
    """One training setup timed by ``throughput``."""

    name: str
    model: dict
    batch_size: int
    processes: int  # runs side by side
    threads: int  # torch threads per run
    steps: int = 300
    optimizer: str = "adamw"
    lr: float = 5e-3
    keep_memory: bool = True  # pool workers keep freed memory (ffnlab.lab.run.allocator)


# The quick preset before the recipe sweep (2 layers, batch 16, one process with 2 threads) and
# the preset now (one process per core, one thread each).
OLD_QUICK = {"dim": 64, "n_layers": 2, "n_heads": 4, "seq_len": 64}


@dataclass(frozen=True)
class ThroughputConfig:
    setups: tuple[Setup, ...] = field(default_factory=lambda: (
        Setup("old quick: L2 b16, 1 process x 2 threads", OLD_QUICK, 16, 1, 2),
        Setup("old quick model, 2 processes x 1 thread", OLD_QUICK, 16, 2, 1),
        Setup("new quick: L1 b32, 2 processes x 1 thread", PRESETS["quick"].model,
              PRESETS["quick"].train["batch_size"], 2, 1),
        Setup("new quick model, 1 process x 2 threads", PRESETS["quick"].model,
              PRESETS["quick"].train["batch_size"], 1, 2),
        # The quick recipe as the default run trains it (Muon since 2026-12-03), with the C
        # library's allocator defaults (before 2026-12-07) and as the lab's workers now run.
        Setup("quick recipe (Muon), 2 x 1 thread, allocator defaults", PRESETS["quick"].model,
              PRESETS["quick"].train["batch_size"], 2, 1, optimizer="muon",
              lr=PRESETS["quick"].train["lr"], keep_memory=False),
        Setup("quick recipe (Muon), 2 processes x 1 thread", PRESETS["quick"].model,
              PRESETS["quick"].train["batch_size"], 2, 1, optimizer="muon",
              lr=PRESETS["quick"].train["lr"]),
        Setup("quick recipe (Muon), 1 process x 2 threads", PRESETS["quick"].model,
              PRESETS["quick"].train["batch_size"], 1, 2, optimizer="muon",
              lr=PRESETS["quick"].train["lr"]),
    ))
    variant: str = "swiglu"


def flops_per_token(model_cfg: dict, batch_size: int, variant: str) -> float:
    """Forward+backward FLOPs of the lab model per training token (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ModelConfig(**model_cfg)
    model = TinyGPT(cfg, variant)
    x = torch.randint(0, 256, (batch_size, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    return counter.get_total_flops() / (batch_size * cfg.seq_len)


def _job(setup: Setup, seed: int, variant: str, tmp: Path) -> J.RunJob:
    steps = setup.steps
    train = {"steps": steps, "batch_size": setup.batch_size, "lr": setup.lr,
             "warmup": steps // 10, "eval_every": steps, "eval_tokens": 4096, "ckpt_every": 10**9,
             "optimizer": setup.optimizer}
    return J.RunJob(variant=variant, seed=seed, model=dict(setup.model), train=train, data=None,
                    data_fraction=1.0, device="cpu", dtype="float32", backend="auto",
                    checkpoint=str(tmp / f"{setup.processes}-{seed}"), fingerprint={},
                    threads=setup.threads)


def throughput(cfg: ThroughputConfig) -> dict:
    import tempfile

    threads = torch.get_num_threads()
    ceiling = matmul_rate(torch.device("cpu"), torch.float32)["flops_per_s"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in cfg.setups:
            jobs = [_job(s, seed, cfg.variant, Path(tmp)) for seed in range(s.processes)]
            t0 = time.perf_counter()
            if s.processes == 1:
                torch.set_num_threads(s.threads)
                recs = [J.execute(jobs[0])]
                torch.set_num_threads(threads)
            else:
                pool = E.PoolExecutor(s.processes, threads=s.threads, keep_memory=s.keep_memory)
                with pool:
                    recs = [rec for kind, _, rec in pool.run(jobs) if kind == "done"]
            wall = time.perf_counter() - t0
            tps = sum(r["tokens_per_s"] for r in recs)
            fpt = flops_per_token(s.model, s.batch_size, cfg.variant)
            rows.append({**dataclasses.asdict(s), "tokens_per_s": tps, "wall_s": wall,
                         "flops_per_token": fpt, "achieved_flops_per_s": tps * fpt,
                         "share_of_matmul_ceiling": tps * fpt / ceiling})
            print(f"{s.name:<46} {tps:>9.0f} tok/s  {fpt / 1e6:.2f} MFLOP/token  "
                  f"{tps * fpt / 1e9:6.1f} GFLOP/s = {tps * fpt / ceiling:.1%} of "
                  f"{ceiling / 1e9:.0f}", flush=True)
    return {"what": "lab throughput", "variant": cfg.variant, "matmul_ceiling_flops_per_s": ceiling,
            "threads": threads, "machine": machine_info(torch.device("cpu")), "rows": rows}


def _interval(diffs: list[float]) -> tuple[float, float, float]:
    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return m, math.nan, math.nan
    sd = statistics.stdev(diffs)
    return m, sd, t_quantile_975(n - 1) * sd / math.sqrt(n)


def sweep(spec: list[dict], workers: int) -> dict:
    """``spec``: [{"tag", "variant", "seed", "model", "train"}]; every job through the pool."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        jobs = [J.RunJob(variant=j["variant"], seed=j["seed"], model=j["model"], train=j["train"],
                         data=j.get("data"), data_fraction=j.get("data_fraction", 1.0),
                         device="cpu", dtype="float32", backend="auto",
                         checkpoint=str(Path(tmp) / f"{i}"), fingerprint={"tag": j["tag"]},
                         threads=1) for i, j in enumerate(spec)]
        runs = []
        for kind, job, rec in E.PoolExecutor(workers).run(jobs):
            if kind == "done":
                runs.append({"tag": job.fingerprint["tag"], "variant": job.variant,
                             "seed": job.seed, "val_bpb": rec["val_bpb"],
                             "tokens_per_s": rec["tokens_per_s"], "wall_s": rec["wall_s"]})
                print(f"{runs[-1]['tag']} {job.variant} s{job.seed}: {rec['val_bpb']:.4f} bpb, "
                      f"{rec['tokens_per_s']:.0f} tok/s", flush=True)
    summary = {}
    for tag in dict.fromkeys(r["tag"] for r in runs):
        by = {(r["variant"], r["seed"]): r["val_bpb"] for r in runs if r["tag"] == tag}
        variants = sorted({v for v, _ in by})
        out = {"variants": {}, "vs_relu": {}}
        for v in variants:
            xs = [b for (vv, _), b in by.items() if vv == v]
            out["variants"][v] = {"mean": statistics.fmean(xs), "n": len(xs),
                                  "std": statistics.stdev(xs) if len(xs) > 1 else None}
        for v in variants:
            if v == "relu":
                continue
            d = [by[(v, s)] - by[("relu", s)] for (vv, s) in by if vv == v and ("relu", s) in by]
            m, sd, hw = _interval(d)
            out["vs_relu"][v] = {"n": len(d), "mean": m, "std": sd, "half_width": hw}
        summary[tag] = out
        print(json.dumps({tag: out}, indent=1))
    return {"what": "lab recipe sweep", "runs": runs, "summary": summary,
            "machine": machine_info(torch.device("cpu"))}


def _save(what: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**result, "date": dt.date.today().isoformat(), "torch": torch.__version__}
    path = RESULTS / f"lab-{what}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def main(argv: list[str]) -> int:
    if argv[:1] == ["throughput"]:
        print("saved", _save("throughput", throughput(ThroughputConfig())))
        return 0
    if argv[:1] == ["sweep"] and len(argv) == 2:
        spec = json.loads(Path(argv[1]).read_text())
        print("saved", _save("sweep", sweep(spec, workers=len(os.sched_getaffinity(0)))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
