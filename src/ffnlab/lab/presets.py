"""The lab's presets: the model size, the recipe and the seeding of ``smoke``, ``quick`` (the
default run) and ``full``, and the variants a run compares by default."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_VARIANTS", "Preset", "PRESETS", "TUNING_SEED_OFFSET", "SweepPreset",
           "SWEEP_PRESETS"]


DEFAULT_VARIANTS = ("relu", "gelu", "swish", "glu", "geglu", "swiglu", "relu2")
"""What ``ffnlab compare`` compares unless told otherwise: the six FFNs the first blog post
compares, and ReLU-squared, today's contender (modded-nanogpt and nanochat use it)."""


@dataclass(frozen=True)
class Preset:
    """A model size, optimisation settings and measurement effort.

    ``tune``: each variant trains at its own learning rate, chosen on ``tuning_seeds`` seeds
    from a grid around ``train["lr"]`` (:mod:`ffnlab.lab.stats.tuning`);
    ``seeds``: seeds every variant starts with; ``max_seeds``: how far adaptive seeding may go
    (equal to ``seeds``: no adaptive seeding); ``variants``: the default list (``()``: every
    registered variant); ``time_budget_s``: wall seconds after which adaptive seeding starts
    no new round (``None``: no limit).
    """

    model: dict
    train: dict
    seeds: int
    timing_reps: int
    act_numel: int
    max_seeds: int | None = None
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    time_budget_s: float | None = None
    tune: bool = False
    tuning_seeds: int = 2

    @property
    def seed_budget(self) -> int:
        return self.seeds if self.max_seeds is None else self.max_seeds


TUNING_SEED_OFFSET = 1000
"""Tuning runs use seeds from ``seed + 1000``: the verdicts' seeds (``seed, seed + 1, ...``,
at most ``max_seeds``) never reach them, so a rate is never judged on the seeds that chose it."""


# Sized for a 2-core CPU (docs/lab.md has the recipe sweep and the wall times): smoke checks the
# pipeline; quick is the default run: one layer at dim 64 (paired spread of swiglu - relu 0.018
# bpb over 5 seeds against 0.027-0.057 with two layers at equal wall time), batch 32, the whole
# validation split, learning rate to 0, Muon on the block matrices: 600 steps at lr 0.024 reach
# 2.10-2.12 bpb (AdamW: 2.19-2.24 after 1000 steps at its best rate, 6e-3) with paired spreads
# of 0.016-0.019 over 8 seeds (AdamW at 1000 steps: 0.022-0.031 over 6), so ten minutes buy
# about 60 runs instead of 40, each with less spread. 570 s of training leave about 15-25 s for
# start-up, measurements and the report; full wants a GPU or an afternoon.
PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        model={"dim": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
        train={"steps": 20, "batch_size": 8, "lr": 1e-2, "warmup": 4, "eval_every": 10,
               "eval_tokens": 1024, "ckpt_every": 10},
        seeds=1, timing_reps=5, act_numel=1 << 16, variants=(),
    ),
    "quick": Preset(
        model={"dim": 64, "n_layers": 1, "n_heads": 4, "seq_len": 64},
        train={"steps": 600, "batch_size": 32, "lr": 0.024, "warmup": 60, "eval_every": 200,
               "eval_tokens": 100_000, "ckpt_every": 100, "min_lr_ratio": 0.0,
               "optimizer": "muon"},
        seeds=5, max_seeds=10, timing_reps=30, act_numel=1 << 20, time_budget_s=570.0,
        tune=True, tuning_seeds=2,
    ),
    "full": Preset(
        model={"dim": 256, "n_layers": 4, "n_heads": 8, "seq_len": 256},
        train={"steps": 3000, "batch_size": 32, "lr": 3e-3, "warmup": 200, "eval_every": 250,
               "eval_tokens": 65536, "ckpt_every": 250},
        seeds=3, timing_reps=20, act_numel=1 << 22,
    ),
}


@dataclass(frozen=True)
class SweepPreset:
    """A preset that is a sweep (:mod:`ffnlab.lab.sweep`): the comparison of preset ``base``
    (tuned, as ``base`` is) at every width of ``dims`` and depth of ``depths`` under every optimizer
    of ``optimizers``; ``small_data``: shares of the training split also run at the ladder's
    widest one-layer size (:attr:`ffnlab.lab.sweep.SweepConfig.small_data`)."""

    base: str
    dims: tuple[int, ...] = ()
    optimizers: tuple[str, ...] = ()
    depths: tuple[int, ...] = ()
    small_data: tuple[float, ...] = ()
    about: str = ""


# thorough: the default comparison (seven FFNs, each at its own tuned rate) under AdamW and Muon
# on a ladder of widths 32 and 64 and depths 1 and 2 (the model's FFN parameters 8,192, 16,384,
# 32,768 and 65,536: 8x), so every verdict says whether it survives the change of recipe and
# how it moves with size; and at the default run's size (width 64, one layer) on a quarter of the
# training split too, which decides the small-data claim (two settings more: about 20 minutes).
SWEEP_PRESETS: dict[str, SweepPreset] = {
    "thorough": SweepPreset("quick", dims=(32, 64), depths=(1, 2), optimizers=("adamw", "muon"),
                            small_data=(0.25,),
                            about="quick at widths 32, 64 and depths 1, 2 under adamw and muon, "
                                  "and on 25 % of the data at width 64, depth 1"),
}
