"""Train a small byte-level language model once per FFN variant and seed, and write a report.

Every variant gets the same model around its FFN, an equal FFN parameter budget, the same
initialisation outside the FFN and the same batches for a given seed. Results go to
``OUT/results.json``, one file per finished run to ``OUT/runs/<variant>-s<seed>.json``,
checkpoints to ``OUT/checkpoints/``, and the report to ``OUT/report.md`` / ``report.html``.
Re-running the same command with the same ``--out`` skips finished runs and resumes unfinished
ones; a different configuration is refused.

Under torchrun (or with ``--nproc N``, which starts torchrun itself) every run trains with
DistributedDataParallel, each process on its share of the same global batches; rank 0 alone
writes files and shows progress.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError
from ..lab.compare import prepare_launch, run_compare
from ..lab.config import DEFAULT_OUT, DEFAULT_VARIANTS, CompareConfig
from ..lab.presets import SWEEP_PRESETS
from ..lab.sweep import SweepConfig, run_sweep, sweep_preset
from ..lab.train import distributed
from ..lab.train.variant import parse_lab_variants
from ..lab.verdicts import DEFAULT_RESOLUTION
from .common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_common,
    parse_device,
    parse_dtype,
    parse_int_list,
    print_json,
)

# What each process of ``--nproc N`` runs: ``python -m WORKER_MODULE CONFIG.json``.
WORKER_MODULE = "ffnlab.commands.compare_worker"

__all__ = ["add_arguments", "config_from_args", "sweep_from_args", "run", "run_sweep_command", "run_process", "launch", "WORKER_MODULE"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out=str(DEFAULT_OUT), variants=False, dtype="float32", seed=True,
               json_flag=False)
    p.add_argument("--variants", default=None,
                   help="comma-separated variant names, or all (default: "
                        f"{','.join(DEFAULT_VARIANTS)}; every variant for --preset smoke); "
                        "moe:VARIANT:ExK is a mixture of E experts of VARIANT, K per token, "
                        "with the dense variant's active FFN parameters (e.g. moe:swiglu:8x2)")
    p.add_argument("--preset", default="quick",
                   help="smoke, quick or full (default: quick); thorough is a sweep: quick "
                        "(tuned) at widths 32, 64 and depths 1, 2 under adamw and muon")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds every variant starts with (default: the preset's)")
    p.add_argument("--max-seeds", type=int, default=None,
                   help="adaptive seeding adds seeds up to this many while an interval is wider "
                        "than --resolution (default: the preset's)")
    p.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION,
                   help="bits per byte: the half-width every paired 95%% interval should reach, "
                        f"and the band called equivalent (default: {DEFAULT_RESOLUTION})")
    p.add_argument("--workers", type=int, default=None,
                   help="train independent runs on N local processes, one thread each "
                        "(default: one per CPU core on cpu; 1 trains in this process)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds after which adaptive seeding starts no new round and cuts the "
                        "last to what fits; inf for none (default: the preset's, 570 for quick)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the training runs as tasks on a Ray cluster (auto, "
                        "ray://host:port, or local); needs ffnlab[ray]")
    p.add_argument("--data-fraction", default="1",
                   help="train on this share of the training split, in (0, 1] (default: 1); "
                        "several values (0.25,1) run the comparison at each and decide the "
                        "small-data claim (a sweep)")
    p.add_argument("--depths", dest="layers", default=None,
                   help="model depth(s), layers (default: the preset's); several (1,2) run the "
                        "comparison at each depth (a sweep; with --dims, every combination)")
    p.add_argument("--dims", dest="dim", default=None,
                   help="model width(s) (default: the preset's); several (32,64,128) run the "
                        "comparison at each width and decide the width claim (a sweep)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--data", default=None, help="a text file or a folder of them (default: pydoc_data.topics)")
    p.add_argument("--backend", default="auto", help="FeedForward backend (default: auto)")
    p.add_argument("--optimizer", "--optimizers", dest="optimizer", default=None,
                   help="adamw, or muon (Muon on the blocks' matrices, each expert's on its own "
                        "in a mixture of experts; AdamW on embeddings and gains); default: the "
                        "preset's (quick: muon). Several (adamw,muon) run the comparison under "
                        "each and say which verdicts survive the change of recipe (a sweep)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=None,
                   help="train each variant at its own learning rate, chosen on tuning seeds "
                        "from a grid around the recipe's (default: the preset's; quick tunes)")
    p.add_argument("--lr-grid", default=None, metavar="LR,LR,LR",
                   help="the learning rates every variant is tuned on first: at least 3, "
                        "neighbours at most a factor 2 apart (default: the recipe's rate /2, x1, "
                        "x2); implies --tune")
    p.add_argument("--tuning-seeds", type=int, default=None,
                   help="seeds of each tuning grid point (default: the preset's, 2); implies --tune")
    p.add_argument("--json", action="store_true", help="print results.json when done")
    p.add_argument("--nproc", type=int, default=None,
                   help="train data-parallel on N local processes (starts torchrun on 127.0.0.1)")
    p.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT_S,
                   help="seconds a process waits for the others before giving up (default: 600)")


def _fractions(text: str) -> list[float]:
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--data-fraction takes numbers in (0, 1], got {part!r}") from None
        if not 0.0 < value <= 1.0:
            raise UsageError(f"--data-fraction must be in (0, 1], got {value!r}")
        out.append(value)
    if not out:
        raise UsageError("--data-fraction needs a number in (0, 1]")
    return out


def _optimizers(text: str | None) -> list[str]:
    return [] if text is None else list(dict.fromkeys(
        p.strip() for p in str(text).split(",") if p.strip()))


def sweep_from_args(args: argparse.Namespace) -> SweepConfig | None:
    """A :class:`SweepConfig` when ``--dims``, ``--data-fraction`` or ``--optimizers`` lists
    several values, else None (one comparison)."""
    dims = [] if args.dim is None else parse_int_list("--dims", args.dim)
    fracs = _fractions(args.data_fraction)
    opts = _optimizers(args.optimizer)
    depths = [] if args.layers is None else parse_int_list("--depths", args.layers)
    if args.preset in SWEEP_PRESETS:
        sp = SWEEP_PRESETS[args.preset]
        base = config_from_args(argparse.Namespace(**{**vars(args), "preset": sp.base}),
                                dim=None, layers=None, optimizer=None,
                                data_fraction=fracs[0] if len(fracs) == 1 else 1.0)
        return sweep_preset(args.preset, base, dims=tuple(dims), optimizers=tuple(opts),
                            depths=tuple(depths))
    if len(dims) < 2 and len(fracs) < 2 and len(opts) < 2 and len(depths) < 2:
        return None
    base = config_from_args(args, dim=dims[0] if len(dims) == 1 else None,
                            layers=depths[0] if len(depths) == 1 else None,
                            data_fraction=fracs[0] if len(fracs) == 1 else 1.0,
                            optimizer=opts[0] if len(opts) == 1 else None)
    return SweepConfig(base, dims=tuple(dims) if len(dims) > 1 else (),
                       depths=tuple(depths) if len(depths) > 1 else (),
                       data_fractions=tuple(fracs) if len(fracs) > 1 else (),
                       optimizers=tuple(opts) if len(opts) > 1 else ())


_FROM_ARGS = object()  # config_from_args: take the value from the parsed flags


def _one(flag: str, values: list):
    """The one value of a list-valued flag (None when empty); several make a sweep, which
    :func:`sweep_from_args` handles."""
    if len(values) > 1:
        raise UsageError(f"{flag} with several values is a sweep (see sweep_from_args)")
    return values[0] if values else None


def config_from_args(args: argparse.Namespace, *, dim=_FROM_ARGS, layers=_FROM_ARGS,
                     data_fraction=_FROM_ARGS, optimizer=_FROM_ARGS) -> CompareConfig:
    """The parsed flags as a validated :class:`CompareConfig` (UsageError naming the flag);
    ``dim`` / ``data_fraction``, when given, replace a list-valued ``--dims`` /
    ``--data-fraction`` (what a sweep does for each setting)."""
    if dim is _FROM_ARGS:
        dim = _one("--dims", [] if args.dim is None else parse_int_list("--dims", args.dim))
    if data_fraction is _FROM_ARGS:
        data_fraction = _one("--data-fraction", _fractions(args.data_fraction))
    if layers is _FROM_ARGS:
        layers = _one("--depths",
                      [] if args.layers is None else parse_int_list("--depths", args.layers))
    if optimizer is _FROM_ARGS:
        optimizer = _one("--optimizers", _optimizers(args.optimizer))
    return CompareConfig(
        preset=args.preset, out=Path(args.out), variants=_variants(args.variants),
        resolution=args.resolution, max_seeds=args.max_seeds, workers=args.workers,
        data_fraction=data_fraction, dim=dim, layers=layers, time_budget=args.time_budget,
        ray=args.ray,
        device=parse_device(args.device), dtype=parse_dtype(args.dtype), seed=args.seed,
        seeds=args.seeds, steps=args.steps, data=None if args.data is None else Path(args.data),
        backend=args.backend, optimizer=optimizer, nproc=args.nproc,
        dist_timeout=args.dist_timeout, json=args.json, tune=args.tune,
        lr_grid=None if args.lr_grid is None else _rates(args.lr_grid),
        tuning_seeds=args.tuning_seeds,
    )


def _rates(text: str) -> tuple[float, ...]:
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            out.append(float(part))
        except ValueError:
            raise UsageError(f"--lr-grid takes learning rates separated by commas, got "
                             f"{part!r}") from None
    return tuple(out)


def _variants(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()  # the preset's list
    if text.strip() == "all":
        return ("all",)
    return tuple(parse_lab_variants(text))


def run(args: argparse.Namespace) -> int:
    sweep = sweep_from_args(args)
    if sweep is not None:
        return run_sweep_command(sweep)
    if args.nproc is not None:
        return launch(config_from_args(args))
    return run_process(lambda: config_from_args(args))


def run_process(load_config: Callable[[], CompareConfig]) -> int:
    """One process of the run: alone, or one rank of a torchrun group (``--nproc`` or by hand).

    Every rank reads and checks the same options; when they are bad, rank 0 says why and the
    other ranks exit with the same status silently.
    """
    try:
        cfg = load_config()
    except UsageError:
        if distributed.env_rank() != 0:
            return EXIT_USAGE
        raise
    try:
        results = run_compare(cfg)
    except distributed.PeerError:
        return EXIT_USAGE  # rank 0 refused the run and printed why
    if results.content is not None:  # rank 0
        if cfg.json:
            print_json(results.content)
        print(f"Report: {results.report_path}  (results: {results.results_path})", file=sys.stderr)
    return EXIT_INTERRUPTED if results.interrupted else 0


def run_sweep_command(cfg: SweepConfig) -> int:
    """Every setting's comparison in turn, then the sweep's report (see ffnlab.lab.sweep)."""
    res = run_sweep(cfg)
    if cfg.base.json:
        print_json(res.content)
    print(f"Sweep report: {res.report_path}  (each setting's report in its folder)",
          file=sys.stderr)
    return EXIT_INTERRUPTED if res.interrupted else 0


def launch(cfg: CompareConfig) -> int:
    """``--nproc N``: check everything here (an error is said once), then start N processes,
    each reading the whole configuration from one JSON file; their exit status."""
    worker_cfg = prepare_launch(cfg)
    with tempfile.TemporaryDirectory(prefix="ffnlab-compare-") as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(worker_cfg.to_json(), encoding="utf-8")
        return distributed.launch(cfg.nproc, [str(path)], module=WORKER_MODULE)
