"""Speed and memory measurement of the FFN: what ``ffnlab bench`` runs, usable from Python.

>>> from ffnlab.bench import BenchConfig, run_bench
>>> result = run_bench(BenchConfig(variants=("swiglu",), dim=64, tokens=(128,)))  # doctest: +SKIP

Modules: :mod:`~ffnlab.bench.config` (what to measure), :mod:`~ffnlab.bench.run` (the run,
one result object), :mod:`~ffnlab.bench.providers` and :mod:`~ffnlab.bench.elementwise` (what
each row times), :mod:`~ffnlab.bench.timing` (timed calls, round-robin, medians),
:mod:`~ffnlab.bench.machine` (ceilings, machine identity), :mod:`~ffnlab.bench.engines` (what
the ops layer says about engines) and :mod:`~ffnlab.bench.report` (targets, tables, chart).
"""

from .config import BenchConfig
from .run import run_bench

__all__ = ["BenchConfig", "run_bench"]
