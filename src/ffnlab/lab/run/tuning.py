"""The tuning phase of a comparison: every variant's learning rate, chosen before any verdict run.

Each variant trains on the same grid of learning rates (``CompareConfig.tuning_grid``) on the
tuning seeds (``CompareConfig.tuning_seed_list``, never a verdict's); its rate is then chosen by
:func:`ffnlab.lab.stats.tuning.choose_rate`, and a variant whose best rate sits on an edge of its
grid gets one more point past that edge, up to :data:`~ffnlab.lab.stats.tuning.MAX_WIDEN` times.
Tuning runs are saved to ``OUT/tuning/<variant>-lr<lr>-s<seed>.json`` as they finish, like every
run, so an interrupted phase resumes and replays the same choices.

:func:`tuning_content` turns the saved runs into results.json's per-variant ``tuning`` and the
comparisons at the shared rate (the recipe's own, which every grid holds), so the report can set
the verdicts at the tuned rates beside those at one shared rate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..names import file_stem
from ..stats.comparisons import comparisons
from ..stats.tuning import MAX_WIDEN, RateChoice, choose_rate, widen

__all__ = ["tuning_path", "tune", "tuning_content", "Record"]

Record = dict


def tuning_path(out: Path, variant: str, lr: float, seed: int) -> Path:
    """Where the tuning run of ``variant`` at ``lr`` with ``seed`` is saved."""
    return out / "tuning" / f"{file_stem(variant)}-lr{lr:g}-s{seed}.json"


def _table(variant: str, grid: Sequence[float], seeds: Sequence[int],
           finished: Callable[[str, float, int], Record | None]) -> dict[float, dict[int, float | None]]:
    """``bpb[lr][seed]`` of the finished tuning runs of ``variant`` on ``grid``."""
    out: dict[float, dict[int, float | None]] = {}
    for lr in grid:
        for s in seeds:
            rec = finished(variant, lr, s)
            if rec is not None:
                out.setdefault(lr, {})[s] = None if rec.get("diverged") else rec.get("val_bpb")
    return out


def _agree_here(fn: Callable[[], object]) -> object:
    return fn()


def tune(variants: Sequence[str], grid: Sequence[float], seeds: Sequence[int], *,
         finished: Callable[[str, float, int], Record | None],
         run: Callable[[list[tuple[str, float, int]]], None],
         agree: Callable[[Callable[[], object]], object] = _agree_here) -> dict[str, RateChoice]:
    """Every variant's rate: run the missing tuning runs of each grid (``run([(variant, lr,
    seed)])`` trains and saves them; ``finished(variant, lr, seed)`` reads one back), choose,
    widen the grids whose choice is on an edge, and again. Deterministic given the saved runs.

    ``agree(fn)``: in a process group, rank 0's ``fn()`` on every rank (what is missing and what
    is chosen are decided from rank 0's files); JSON values only pass through it.
    """
    grids = {v: tuple(grid) for v in variants}
    choices: dict[str, RateChoice] = {}
    for rnd in range(MAX_WIDEN + 1):
        missing = agree(lambda: [[v, lr, s] for v in variants for lr in grids[v] for s in seeds
                                 if finished(v, lr, s) is None])
        if missing:
            run([(v, float(lr), int(s)) for v, lr, s in missing])
        chosen = agree(lambda: {v: choose_rate(_table(v, grids[v], seeds, finished)).to_dict()
                                for v in variants})
        choices = {v: RateChoice.from_dict(d) for v, d in chosen.items()}
        edge = [v for v, c in choices.items() if c.at_edge]
        if not edge or rnd == MAX_WIDEN:
            break
        for v in edge:
            grids[v] = widen(grids[v], choices[v].chosen)
    return choices


def tuning_content(choices: Mapping[str, RateChoice], *, shared_lr: float, seeds: Sequence[int],
                   finished: Callable[[str, float, int], Record | None],
                   resolution: float) -> tuple[dict[str, dict], list[dict]]:
    """``(per-variant tuning, comparisons at the shared rate)`` for results.json.

    A variant's ``tuning``: its ``grid``, every tuning run as ``{lr, seed, val_bpb}``, the
    ``chosen`` rate, ``at_edge`` and the per-rate ``means``. The shared-rate comparisons are
    the usual pairs over the tuning seeds' runs at ``shared_lr``.
    """
    per: dict[str, dict] = {}
    view = []
    for v, c in choices.items():
        table = _table(v, c.grid, seeds, finished)
        runs = [{"lr": lr, "seed": s, "val_bpb": bpb}
                for lr in sorted(table) for s, bpb in sorted(table[lr].items())]
        per[v] = {**c.to_dict(), "runs": runs}
        at_shared = table.get(shared_lr, {})
        view.append({"name": v, "runs": [{"seed": s, "val_bpb": bpb, "diverged": bpb is None}
                                         for s, bpb in sorted(at_shared.items())]})
    shared = [{**c.to_dict(), "shared_lr": shared_lr}
              for c in comparisons({"variants": view}, resolution)]
    return per, shared
