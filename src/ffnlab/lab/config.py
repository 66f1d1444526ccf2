"""What one ``ffnlab compare`` invocation runs: the presets and :class:`CompareConfig`.

A :class:`CompareConfig` holds every option of the lab as a typed value (the command line turns
strings into these; Python callers build one directly). It validates itself on construction,
and round-trips through JSON (:meth:`CompareConfig.to_json` / :meth:`CompareConfig.from_json`),
which is how ``--nproc N`` hands the whole configuration to the processes it starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError, check_choice, check_positive_int
from ..variants import variant_names
from .presets import DEFAULT_VARIANTS, PRESETS, SWEEP_PRESETS, TUNING_SEED_OFFSET, Preset
from .train.distributed import DEFAULT_TIMEOUT_S
from .train.precision import FLOAT_DTYPES
from .verdicts import DEFAULT_RESOLUTION

__all__ = ["CompareConfig", "PRESETS", "Preset", "DEFAULT_OUT", "DEFAULT_VARIANTS", "resolve_config",
           "TUNING_SEED_OFFSET"]

DEFAULT_OUT = Path("runs/compare")


def resolve_config(preset_name: str, *, steps: int | None = None, dim: int | None = None,
                   layers: int | None = None,
                   optimizer: str | None = None):
    """``(preset, ModelConfig, TrainConfig)`` for a preset and optional step and width overrides.

    With ``steps`` given, warm-up stays at most 10% of it and evaluation happens at least 4 times.
    ``dim`` replaces the preset's model width (heads, depth and the recipe stay the preset's);
    a width the head count does not divide is a UsageError naming both. ``optimizer``
    (``"adamw"`` or ``"muon"``, :mod:`ffnlab.lab.train.optim`) replaces the preset's.
    """
    from .train.loop import TrainConfig
    from .train.model import ModelConfig
    from .train.optim import OPTIMIZERS

    if preset_name in SWEEP_PRESETS:
        raise UsageError(f"preset {preset_name!r} is a sweep ({SWEEP_PRESETS[preset_name].about}):"
                         f" run it with `ffnlab compare --preset {preset_name}` or "
                         f"ffnlab.lab.sweep.sweep_preset")
    check_choice("preset", preset_name, [*PRESETS, *SWEEP_PRESETS])
    preset = PRESETS[preset_name]
    train = TrainConfig(**preset.train)
    if optimizer is not None:
        train = replace(train, optimizer=check_choice("--optimizer", optimizer, OPTIMIZERS))
    if steps is not None:
        check_positive_int("--steps", steps)
        train = replace(
            train, steps=steps, warmup=min(train.warmup, steps // 10),
            eval_every=max(1, min(train.eval_every, steps // 4)),
            ckpt_every=max(1, min(train.ckpt_every, steps // 4)),
        )
    model = dict(preset.model)
    if dim is not None:
        check_positive_int("--dims", dim)
        if dim % model["n_heads"]:
            raise UsageError(f"--dims: width {dim} is not divisible by the {model['n_heads']} "
                             f"attention heads of preset {preset_name!r}")
        model["dim"] = dim
    if layers is not None:
        check_positive_int("--depths", layers)
        model["n_layers"] = layers
    return preset, ModelConfig(**model), train


def _variant_list(names: tuple[str, ...], preset: str) -> tuple[str, ...]:
    if tuple(names) == ("all",):
        return tuple(variant_names())
    if not names:
        default = PRESETS[preset].variants if preset in PRESETS else DEFAULT_VARIANTS
        return tuple(default) or tuple(variant_names())
    from .train.variant import canonical_name

    return tuple(dict.fromkeys(canonical_name(v) for v in names))


@dataclass(frozen=True)
class CompareConfig:
    """Every option of one lab invocation (the ``ffnlab compare`` flags, typed).

    ``variants`` are canonical names (registry names, or ``moe:<variant>:<E>x<k>`` for a
    mixture of experts: :mod:`ffnlab.lab.train.variant`; ``()``: the preset's list, :data:`DEFAULT_VARIANTS` for
    quick and full, every variant for smoke; ``("all",)`` every variant); ``seeds`` is the number
    of seeds every variant starts with, ``None`` for the preset's, and the seeds run are
    ``seed, seed + 1, ...``; ``max_seeds`` (``None``: the preset's) is how many adaptive seeding
    may reach while a comparison's 95 % interval is wider than ``resolution`` bits per byte;
    ``steps``, ``dim`` (model width) and ``layers`` (depth) ``None`` keep the preset's. ``workers``: independent runs train on that many
    local processes with one torch thread each (``None``: one per CPU core on cpu, 1 on cuda; 1:
    this process). ``data_fraction``: the share of the training split used. ``time_budget``:
    seconds of wall time after which adaptive seeding adds no seeds, and rounds are cut to what
    fits (``None``: the preset's; quick has 570 s, so that the default run ends within ten
    minutes with its measurements and report). ``ray``: a Ray cluster address (``auto``,
    ``ray://host:port``, ``local``); the runs of each round become Ray tasks
    (:mod:`ffnlab.lab.run.ray_cluster`) instead of local workers. ``nproc`` asks for that many data-parallel processes on this
    machine (``None``: this process, or the group torchrun started). ``json``: the command
    prints results.json when done. Paths are kept as given (relative to the current folder).
    """

    preset: str = "quick"
    out: Path = DEFAULT_OUT
    variants: tuple[str, ...] = ()
    resolution: float = DEFAULT_RESOLUTION
    max_seeds: int | None = None
    workers: int | None = None
    data_fraction: float = 1.0
    time_budget: float | None = None
    ray: str | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    seed: int = 0
    seeds: int | None = None
    steps: int | None = None
    dim: int | None = None
    layers: int | None = None
    data: Path | None = None
    backend: str = "auto"
    optimizer: str | None = None
    nproc: int | None = None
    dist_timeout: float = DEFAULT_TIMEOUT_S
    tune: bool | None = None
    lr_grid: tuple[float, ...] | None = None
    tuning_seeds: int | None = None
    json: bool = False

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ (strings to paths and devices, aliases
        # to canonical variant names) so equal configurations compare equal.
        normal = {
            "out": Path(self.out),
            "data": None if self.data is None else Path(self.data),
            "device": torch.device(self.device),
            "variants": _variant_list(self.variants, self.preset),
            "dist_timeout": float(self.dist_timeout),
        }
        for name, value in normal.items():
            object.__setattr__(self, name, value)
        self.resolved()  # preset name, --steps, --dims and --optimizer
        if self.device.type not in ("cpu", "cuda"):
            raise UsageError(f"device {str(self.device)!r} is not supported (use cpu or cuda)")
        if self.dtype not in FLOAT_DTYPES.values():
            raise UsageError(f"dtype {self.dtype} is not supported "
                             f"(use one of {', '.join(FLOAT_DTYPES)})")
        if self.seeds is not None:
            check_positive_int("--seeds", self.seeds)
        if self.lr_grid is not None:
            from .stats.tuning import check_grid

            object.__setattr__(self, "lr_grid", check_grid(self.lr_grid))
        if self.tuning_seeds is not None:
            check_positive_int("--tuning-seeds", self.tuning_seeds)
        if self.tune is not None and not isinstance(self.tune, bool):
            raise UsageError(f"tune is true or false, got {self.tune!r}")
        if self.tuning and self.seed_budget >= TUNING_SEED_OFFSET:
            raise UsageError(f"--max-seeds must stay below {TUNING_SEED_OFFSET} when rates are "
                             f"tuned (tuning runs use seeds from seed + {TUNING_SEED_OFFSET})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed}")
        from ..ops.dispatch import BACKENDS

        check_choice("backend", self.backend, BACKENDS)
        if self.nproc is not None:
            check_positive_int("--nproc", self.nproc)
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, (int, float)) \
                or not (self.resolution > 0 and math.isfinite(self.resolution)):
            raise UsageError(f"--resolution must be a positive number of bits per byte, "
                             f"got {self.resolution!r}")
        object.__setattr__(self, "resolution", float(self.resolution))
        if self.max_seeds is not None:
            if isinstance(self.max_seeds, bool) or not isinstance(self.max_seeds, int) \
                    or self.max_seeds < 2:
                raise UsageError(f"--max-seeds must be an integer >= 2 (an interval needs two "
                                 f"paired seeds), got {self.max_seeds!r}")
            if self.max_seeds < self.initial_seeds:
                raise UsageError(f"--max-seeds ({self.max_seeds}) is below --seeds "
                                 f"({self.initial_seeds})")
        if self.workers is not None:
            check_positive_int("--workers", self.workers)
            if self.nproc is not None and self.workers > 1:
                raise UsageError("--workers and --nproc exclude each other: --nproc trains one "
                                 "run at a time on N processes, --workers N runs at a time")
        if self.ray is not None:
            if not isinstance(self.ray, str) or not self.ray.strip():
                raise UsageError(f"--ray takes a Ray address (auto, ray://host:port, local), "
                                 f"got {self.ray!r}")
            if self.nproc is not None or self.workers is not None:
                raise UsageError("--ray schedules the runs itself: leave out --nproc and --workers")
        if isinstance(self.data_fraction, bool) or not isinstance(self.data_fraction, (int, float)) \
                or not 0.0 < self.data_fraction <= 1.0:
            raise UsageError(f"--data-fraction must be in (0, 1], got {self.data_fraction!r}")
        object.__setattr__(self, "data_fraction", float(self.data_fraction))
        if self.time_budget is not None:
            if isinstance(self.time_budget, bool) or not isinstance(self.time_budget, (int, float)) \
                    or not self.time_budget > 0:
                raise UsageError(f"--time-budget must be a positive number of seconds, got "
                                 f"{self.time_budget!r}")
            object.__setattr__(self, "time_budget", float(self.time_budget))

    # --- derived values -------------------------------------------------------------------------

    @property
    def dtype_name(self) -> str:
        """``"float32"``, ``"bfloat16"``, ... (as results.json and the fingerprint record it)."""
        return str(self.dtype).removeprefix("torch.")

    def resolved(self):
        """``(preset, ModelConfig, TrainConfig)`` of this configuration."""
        return resolve_config(self.preset, steps=self.steps, dim=self.dim, layers=self.layers,
                              optimizer=self.optimizer_name)

    @property
    def optimizer_name(self) -> str:
        """The optimizer in force: ``optimizer``, else the preset's (Muon takes a mixture of
        experts' stacks expert by expert: :mod:`ffnlab.lab.train.optim`, so dense and MoE runs
        share it)."""
        if self.optimizer is not None:
            return self.optimizer
        return PRESETS[self.preset].train.get("optimizer", "adamw") \
            if self.preset in PRESETS else "adamw"

    @property
    def initial_seeds(self) -> int:
        """Seeds every variant starts with (``seeds``, else the preset's)."""
        return PRESETS[self.preset].seeds if self.seeds is None else self.seeds

    @property
    def seed_budget(self) -> int:
        """The most seeds a variant gets (``max_seeds``, else the preset's, never below the
        initial count)."""
        budget = PRESETS[self.preset].seed_budget if self.max_seeds is None else self.max_seeds
        return max(budget, self.initial_seeds)

    @property
    def tuning(self) -> bool:
        """Whether each variant's learning rate is tuned (``tune``, else the preset's; a grid
        or a tuning seed count given asks for it)."""
        if self.tune is not None:
            return self.tune
        if self.lr_grid is not None or self.tuning_seeds is not None:
            return True
        return PRESETS[self.preset].tune if self.preset in PRESETS else False

    def tuning_grid(self) -> tuple[float, ...]:
        """The learning rates every variant is tuned on first (``lr_grid``, else three points a
        factor 2 apart around the recipe's rate)."""
        from .stats.tuning import log_grid

        if self.lr_grid is not None:
            return self.lr_grid
        return log_grid(self.resolved()[2].lr)

    def tuning_seed_list(self) -> list[int]:
        """The seeds of the tuning runs: ``seed + TUNING_SEED_OFFSET + i``, never a verdict's."""
        n = self.tuning_seeds if self.tuning_seeds is not None else (
            PRESETS[self.preset].tuning_seeds if self.preset in PRESETS else 2)
        return [self.seed + TUNING_SEED_OFFSET + i for i in range(n)]

    def seed_list(self) -> list[int]:
        """The seeds every variant starts with: ``seed, seed + 1, ...``."""
        return [self.seed + i for i in range(self.initial_seeds)]

    @property
    def time_budget_s(self) -> float | None:
        """The time budget in force (``time_budget``, else the preset's; inf: none)."""
        t = PRESETS[self.preset].time_budget_s if self.time_budget is None else self.time_budget
        return None if t is None or math.isinf(t) else t

    def worker_count(self) -> int:
        """Processes that train runs side by side (see ``workers``)."""
        if self.workers is not None:
            return self.workers
        if self.nproc is not None or self.device.type != "cpu":
            return 1
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON value: paths and the device as strings, the dtype by name."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Path, torch.device)):
                value = str(value)
            elif isinstance(value, torch.dtype):
                value = self.dtype_name
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareConfig:
        """The inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown compare option(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(names))})")
        kw = dict(data)
        if "dtype" in kw:
            check_choice("dtype", kw["dtype"], FLOAT_DTYPES)
            kw["dtype"] = FLOAT_DTYPES[kw["dtype"]]
        if "variants" in kw:
            kw["variants"] = tuple(kw["variants"])
        if kw.get("lr_grid") is not None:
            kw["lr_grid"] = tuple(kw["lr_grid"])
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> CompareConfig:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise UsageError(f"a compare configuration is a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)
