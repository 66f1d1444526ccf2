"""Reading a lab ``results.json`` dict: its variants, their usable runs, the ranking, and the
runs that are missing, failed or were never needed.

Pure functions over the dict that ``ffnlab compare`` writes (schema in docs/lab.md); they never
touch files or the training code. Bits per byte (bpb): lower is better. The paired statistics
over these runs are in :mod:`.paired`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ...numbers import as_float

__all__ = ["check_results", "variants_by_name", "ranking", "good_runs", "missing_runs"]

def check_results(results: Any) -> dict:
    """``results`` if it looks like a lab results dict, else a ValueError naming what is wrong."""
    if not isinstance(results, Mapping):
        raise ValueError(f"results must be a JSON object, got {type(results).__name__}")
    variants = results.get("variants")
    if not isinstance(variants, list):
        raise ValueError("results has no 'variants' list")
    for i, v in enumerate(variants):
        if not isinstance(v, Mapping) or not isinstance(v.get("name"), str):
            raise ValueError(f"results variants[{i}] is not an object with a 'name'")
    return dict(results)


def variants_by_name(results: Mapping) -> dict[str, Mapping]:
    return {v["name"]: v for v in results.get("variants", [])}


def ranking(results: Mapping) -> list[Mapping]:
    """Variants sorted by ``val_bpb_mean`` (best first); NaN / diverged ones last, by name."""
    def key(v):
        m = as_float(v.get("val_bpb_mean"))
        return (math.isnan(m), m if not math.isnan(m) else 0.0, v["name"])
    return sorted(results.get("variants", []), key=key)


def good_runs(v: Mapping) -> dict[int, float]:
    """seed -> final val bpb for the runs that finished with a finite value and did not diverge."""
    out = {}
    for r in v.get("runs") or []:
        bpb = as_float(r.get("val_bpb"))
        if r.get("diverged") or math.isnan(bpb) or not isinstance(r.get("seed"), int):
            continue
        out[r["seed"]] = bpb
    return out


def missing_runs(results: Mapping) -> dict[str, list]:
    """``{"missing": [(variant, seed)], "diverged": [(variant, seed)], "absent": [variant],
    "not_needed": [(variant, seed)]}``.

    Expected variants come from ``config.variants``. Expected seeds: the first
    ``config.seeding.counts[variant]`` of ``config.seeds`` when adaptive seeding recorded its
    counts (a variant whose intervals were narrow enough stops early: the seeds the others got
    are ``not_needed`` for it, not missing), else every seed of ``config.seeds``. The results'
    own ``missing`` list (unfinished runs, when recorded) is merged in.
    """
    cfg = results.get("config") or {}
    seeds = sorted(s for s in cfg.get("seeds") or [] if isinstance(s, int))
    counts = (cfg.get("seeding") or {}).get("counts") or {}

    def expected(name: str) -> list[int]:
        n = counts.get(name) if isinstance(counts, Mapping) else None
        return seeds[:n] if isinstance(n, int) and n >= 0 else seeds

    by = variants_by_name(results)
    missing, diverged, not_needed = [], [], []
    for name, v in by.items():
        have = {r.get("seed") for r in v.get("runs") or []}
        want = expected(name)
        missing += [(name, s) for s in want if s not in have]
        not_needed += [(name, s) for s in seeds if s not in want and s not in have]
        diverged += [(name, r.get("seed")) for r in v.get("runs") or []
                     if r.get("diverged") or math.isnan(as_float(r.get("val_bpb")))]
    wanted = [n for n in cfg.get("variants") or [] if isinstance(n, str)]
    absent = [n for n in wanted if n not in by]
    missing += [(n, s) for n in absent for s in expected(n)]
    # The training side also lists the runs it did not finish, as {"variant", "seed"} objects.
    for m in results.get("missing") or []:
        if isinstance(m, Mapping) and isinstance(m.get("variant"), str):
            pair = (m["variant"], m.get("seed"))
            if pair not in missing:
                missing.append(pair)
            if pair in not_needed:
                not_needed.remove(pair)
            if m["variant"] not in by and m["variant"] not in absent:
                absent.append(m["variant"])
    return {"missing": missing, "diverged": diverged, "absent": absent, "not_needed": not_needed}
