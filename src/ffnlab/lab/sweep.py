"""A lab comparison repeated over model widths, data sizes or optimizers: ``ffnlab compare --dims
32,64,128``, ``--data-fraction 0.25,1`` or ``--optimizers adamw,muon``.

Two advices of the sources depend on a size, not on one run: "small tasks: ReLU or Swish; large
models: GELU or a gated FFN", and "on small data a GLU may bring no gain". A sweep answers them
by running the whole comparison (:func:`ffnlab.lab.compare.run_compare`: paired seeds, adaptive
seeding, its own report) once per setting, each in its own folder ``OUT/dim-64`` /
``OUT/data-0.25``, then reading every setting's paired intervals side by side
(:mod:`ffnlab.lab.claims.sweep`) into ``OUT/sweep.json`` and ``OUT/sweep.md`` with a plot of each
difference against the swept size (:mod:`ffnlab.lab.report.sweep`). With several optimizers
each comparison is also read across them: *robust* when every optimizer gives it the same
verdict, *recipe-dependent* otherwise (``sweep.json``'s ``robust`` list).

Every setting is an ordinary compare folder, so an interrupted sweep resumes setting by setting
with the runs it had, and the time budget and seed limits apply to each setting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import files
from ..errors import UsageError, check_choice, check_positive_int
from .config import CompareConfig

__all__ = ["SweepConfig", "Setting", "SweepResults", "run_sweep", "sweep_preset"]


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: a width, a data fraction and/or an optimizer (``None``: the base
    config's)."""

    dim: int | None
    data_fraction: float | None
    optimizer: str | None = None
    layers: int | None = None

    @property
    def label(self) -> str:
        """The folder name: ``dim-64``, ``data-0.25``, ``opt-muon`` or a combination
        (``dim-64-data-0.25-opt-adamw``)."""
        parts = []
        if self.dim is not None:
            parts.append(f"dim-{self.dim}")
        if self.layers is not None:
            parts.append(f"L{self.layers}")
        if self.data_fraction is not None:
            parts.append(f"data-{self.data_fraction:g}")
        if self.optimizer is not None:
            parts.append(f"opt-{self.optimizer}")
        return "-".join(parts) or "base"


@dataclass(frozen=True)
class SweepConfig:
    """A base :class:`CompareConfig` and the sizes to sweep (at least one list non-empty).

    ``dims``: model widths (each divisible by the preset's head count); ``depths``: numbers of
    layers; ``data_fractions``:
    shares of the training split in (0, 1]; ``optimizers``: names of
    :data:`ffnlab.lab.train.optim.OPTIMIZERS`, in the order given. Several given: every
    combination. Sizes are sorted; every list is de-duplicated; a sweep needs two or more
    settings. ``small_data``: shares of the training split run besides, at one size only (the
    widest of ``dims`` at the fewest of ``depths``; the base's where not swept) under every
    optimizer: what decides the small-data claim without a whole ladder per share.
    """

    base: CompareConfig
    dims: tuple[int, ...] = ()
    data_fractions: tuple[float, ...] = ()
    optimizers: tuple[str, ...] = ()
    depths: tuple[int, ...] = ()
    small_data: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        dims = tuple(sorted({check_positive_int("--dims", d) for d in self.dims}))
        object.__setattr__(self, "depths", tuple(sorted({check_positive_int("--depths", d)
                                                         for d in self.depths})))
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "data_fractions", _fractions(self.data_fractions))
        object.__setattr__(self, "small_data", _fractions(self.small_data))
        from .train.optim import OPTIMIZERS

        opts = tuple(dict.fromkeys(check_choice("--optimizers", o, OPTIMIZERS)
                                   for o in self.optimizers))
        object.__setattr__(self, "optimizers", opts)
        if self.base.nproc is not None:
            raise UsageError("a sweep (--dims, --optimizers, several --data-fraction values) runs "
                             "its settings one after another; leave out --nproc")
        if len(self.settings()) < 2:
            raise UsageError("a sweep needs at least two settings (e.g. --dims 32,64,128, "
                             "--data-fraction 0.25,1 or --optimizers adamw,muon)")
        for s in self.settings():
            self.config_for(s)  # every width checked against the heads before anything runs

    def settings(self) -> list[Setting]:
        dims = self.dims or (None,)
        depths = self.depths or (None,)
        fracs = self.data_fractions or (None,)
        opts = self.optimizers or (None,)
        ladder = [Setting(d, f, o, n)
                  for d, n, f, o in itertools.product(dims, depths, fracs, opts)]
        arm = [Setting(dims[-1], f, o, depths[0]) for f in self.small_data for o in opts
               if f not in fracs and f != self.base.data_fraction]  # not the ladder's own share
        return list(dict.fromkeys(ladder + arm))

    def config_for(self, s: Setting) -> CompareConfig:
        """The compare configuration of one setting (its own folder under ``base.out``)."""
        kw: dict[str, Any] = {"out": Path(self.base.out) / s.label, "json": False}
        if s.dim is not None:
            kw["dim"] = s.dim
        if s.layers is not None:
            kw["layers"] = s.layers
        if s.data_fraction is not None:
            kw["data_fraction"] = s.data_fraction
        if s.optimizer is not None:
            kw["optimizer"] = s.optimizer
        return replace(self.base, **kw)


def _fractions(values) -> tuple[float, ...]:
    """Shares of the training split, checked, sorted and de-duplicated."""
    for f in values:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
            raise UsageError(f"--data-fraction must be in (0, 1], got {f!r}")
    return tuple(sorted({float(f) for f in values}))


def sweep_preset(name: str, base: CompareConfig, *, dims: tuple[int, ...] = (),
                 optimizers: tuple[str, ...] = (), depths: tuple[int, ...] = ()) -> SweepConfig:
    """The sweep a preset of :data:`ffnlab.lab.presets.SWEEP_PRESETS` stands for, on ``base``
    (its options; its preset is replaced by the sweep's base preset); ``dims`` / ``optimizers``
    given replace the preset's."""
    from .presets import SWEEP_PRESETS

    sp = SWEEP_PRESETS[check_choice("preset", name, SWEEP_PRESETS)]
    return SweepConfig(replace(base, preset=sp.base), dims=tuple(dims) or sp.dims,
                       optimizers=tuple(optimizers) or sp.optimizers,
                       depths=tuple(depths) or sp.depths, small_data=sp.small_data)


@dataclass(frozen=True)
class SweepResults:
    """What :func:`run_sweep` produced: ``OUT/sweep.json``'s content; ``interrupted``."""

    out: Path
    interrupted: bool
    content: dict[str, Any]

    @property
    def report_path(self) -> Path:
        return self.out / "sweep.md"


def run_sweep(cfg: SweepConfig) -> SweepResults:
    """Run the comparison of every setting in turn (each resumable on its own), then write
    ``sweep.json``, ``sweep.md`` and the plots. Ctrl-C stops after the setting that was
    running wrote its partial report; the sweep files then cover the settings done so far."""
    from .claims.sweep import sweep_content
    from .compare import run_compare
    from .report.sweep import write_sweep_report
    from .run.results import now

    out = files.prepare_out_dir(cfg.base.out)
    done: list[tuple[Setting, dict]] = []
    interrupted = False
    for s in cfg.settings():
        res = run_compare(cfg.config_for(s))
        if res.content is not None:
            done.append((s, res.content))
        if res.interrupted:
            interrupted = True
            break
    content = sweep_content(done, status="partial" if interrupted else "complete", finished=now(),
                            resolution=cfg.base.resolution)
    files.atomic_write_json(out / "sweep.json", content)
    write_sweep_report(content, out)
    return SweepResults(out=out, interrupted=interrupted, content=content)
