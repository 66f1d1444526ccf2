"""Timing for the benchmarks: one timed call, several callables timed round-robin, and the
statistics the tables report (median, spread, paired ratio).

Times are wall-clock seconds of one call. On CUDA they come from a pair of CUDA events around
the call (the GPU's own clock, no host overhead after the launch); on the CPU from
``time.perf_counter``. Either way the device is synchronised before the call starts, so a
previous call's queued work is never billed to this one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = [
    "failure_reason",
    "median",
    "paired_ratio",
    "round_robin",
    "spread",
    "synchronize",
    "time_call",
]

# One timed entry: name -> phase -> a call without arguments (e.g. {"fwd": f, "fwd_bwd": g}).
Calls = Mapping[str, Mapping[str, Callable[[], object]]]
# Its timings: name -> phase -> seconds of each repeat, in repeat order.
Times = dict[str, dict[str, list[float]]]


def synchronize(device: torch.device) -> None:
    """Wait for every queued kernel on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn()`` takes on ``device``."""
    synchronize(device)
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def failure_reason(exc: BaseException) -> str:
    """``"TypeName: first line of the message"`` (at most 240 characters of it)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:240]}"


def round_robin(
    calls: Calls,
    device: torch.device,
    *,
    repeats: int,
    warmup: int = 1,
    tick: Callable[[], None] | None = None,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> tuple[Times, dict[str, str]]:
    """Time every entry of ``calls``, interleaved, ``repeats`` times. Returns ``(times, failed)``.

    Each entry first runs all its phases ``max(1, warmup)`` times untimed (allocator, kernel
    caches, compilation). Then each repeat (a *round*) times every phase of every entry once,
    the first entry rotating from round to round, so that drift (clock boost, other processes)
    hits them all alike and the i-th times of two entries come from the same round (see
    :func:`paired_ratio`). ``tick()`` is called after each round.

    An entry that raises one of ``errors`` (by default any ``Exception``: a provider that cannot
    run these inputs, or runs out of memory on a later call) is dropped and reported in
    ``failed`` as ``name -> reason``; pass ``errors=()`` to let exceptions propagate.
    """
    live = dict(calls)
    failed: dict[str, str] = {}
    for name, phases in list(live.items()):
        try:
            for _ in range(max(1, warmup)):
                for fn in phases.values():
                    fn()
            synchronize(device)
        except errors as exc:
            failed[name] = failure_reason(exc)
            del live[name]
    times: Times = {name: {phase: [] for phase in phases} for name, phases in live.items()}
    names = list(live)
    for rep in range(repeats):
        k = rep % len(names) if names else 0
        for name in names[k:] + names[:k]:  # rotate who goes first
            if name in failed:
                continue
            try:
                for phase, fn in live[name].items():
                    times[name][phase].append(time_call(fn, device))
            except errors as exc:
                failed[name] = failure_reason(exc)
                del times[name]
        if tick is not None:
            tick()
    return times, failed


def median(values: Sequence[float]) -> float:
    """The median; the benchmarks report it because one slow outlier (a page fault, another
    process on a shared machine) moves a mean but not a median."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """Interquartile range / median: how noisy a set of timings is (0 for fewer than 4).

    A CPU shared with other work shows it here first (docs/benchmarks.md, "Measurements behind
    the defaults", quotes the spreads seen on the development machine).
    """
    if len(values) < 4:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return float((q[2] - q[0]) / statistics.median(values))


def paired_ratio(a: Sequence[float], b: Sequence[float] | None) -> float | None:
    """Median of ``a[i] / b[i]`` over repeats timed in the same round (:func:`round_robin`);
    entries that ran every round have aligned lists. Falls back to the ratio of medians when
    the lengths differ (one failed part-way); None when either is missing or empty."""
    if not a or not b:
        return None
    if len(a) != len(b):
        mb = median(b)
        return None if mb == 0 else median(a) / mb
    return median([x / y for x, y in zip(a, b, strict=True) if y > 0])
