"""Run the benchmark: speed and memory of every FFN variant and provider, forward and
forward+backward, as one result object (what ``bench.json`` holds).

For each variant, hidden size and token count, every provider (reference, fused with each
recompute mode, torch.compile, Triton, Liger-Kernel, and the matmul-only floor) runs on the
same weights and inputs. Times are medians over repeats after warm-up, with the providers
interleaved round-robin inside each repeat so that drift (clock boost, other processes) hits
them all alike; a ratio between two providers is the median of their per-repeat ratios
(paired), which cancels the load changes that a ratio of two medians keeps. Also measured:
bytes saved for backward per token, peak memory on CUDA, and this device's copy bandwidth and
matmul rate, so each row reads as a share of the roofline.

Every row times something distinct: a provider that would run the same code as another one in
the same run (on CUDA, ``triton`` is what ``fused:activation`` runs) is reported as skipped,
naming the row that times it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..sizing import ffn_flops_per_token
from ..variants import get_variant
from . import elementwise as E
from . import providers as P
from .config import BenchConfig
from .engines import fused_engine
from .machine import best_ceilings, device_ceilings, machine_info
from .report import evaluate_targets
from .timing import median, paired_ratio, round_robin, spread, synchronize

__all__ = ["duplicate_providers", "run_bench", "time_providers"]


def time_providers(runs: Mapping[str, object], inp, cfg: BenchConfig,
                   tick: Callable[[], None]) -> tuple[dict, dict]:
    """Each run's ``fwd(inp)`` and ``fwd_bwd(inp)``, timed round-robin ``cfg.repeats`` times
    after ``cfg.warmup`` untimed calls. Returns ``(times, failed)``: seconds per repeat
    (``times[name]["fwd"]``, ``["fwd_bwd"]``) and the reason each failing run was dropped."""
    calls = {name: {"fwd": lambda r=r: r.fwd(inp), "fwd_bwd": lambda r=r: r.fwd_bwd(inp)}
             for name, r in runs.items()}
    return round_robin(calls, cfg.device, repeats=cfg.repeats, warmup=cfg.warmup, tick=tick)


def _peak_bytes(run, inp, device: torch.device) -> int | None:
    """Extra CUDA memory one forward+backward needs above what was already allocated."""
    if device.type != "cuda":
        return None
    run.zero_grad(inp)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run.fwd_bwd(inp)
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _max_rel_err(run, inp, y_ref: torch.Tensor) -> float | None:
    """``max|y - y_ref| / max|y_ref|`` of one forward: a fast wrong kernel must not go unseen."""
    if isinstance(run, P.MatmulFloor):
        return None
    y = run.forward(inp.x).detach().double()
    return float((y - y_ref.double()).abs().max() / y_ref.double().abs().max().clamp_min(1e-30))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


# provider -> (the provider that times the same code, the engine at which they coincide).
# ``triton`` is FeedForward(backend="triton", recompute="activation"): the fused op with the
# Triton engine, which is what ``fused:activation`` runs wherever the fused op picks that engine.
_SAME_CODE = {"triton": ("fused:activation", "triton")}


def _engines(runs: Mapping[str, P.ProviderRun], setup: P.Setup, x: torch.Tensor) -> dict:
    """The elementwise engine each fused-op provider runs on ``x`` (None for the others)."""
    v = get_variant(setup.variant)
    return {n: fused_engine(r.backend, x, activation=v.activation, hidden=setup.hidden,
                            gated=v.gated) if r.backend in ("fused", "triton") else None
            for n, r in runs.items()}


def duplicate_providers(runs: Mapping[str, object],
                        engines: Mapping[str, str | None]) -> dict[str, str]:
    """Providers of this run that would time code another of its providers already times,
    with the reason they are skipped."""
    out = {}
    for name, (twin, engine) in _SAME_CODE.items():
        if name in runs and twin in runs and engines.get(twin) == engine:
            out[name] = f"same code as {twin} (engine {engine})"
    return out


def _ffn_rows(cfg, setup, tokens, runs, skipped, times, failed, inp, engines) -> list[dict]:
    flops = ffn_flops_per_token(setup.variant, setup.dim, setup.hidden)["matmul"] * tokens
    med = {n: {k: median(v) for k, v in t.items()} for n, t in times.items()}
    saved = {n: runs[n].saved_bytes(inp) for n in med}
    y_ref = setup.module(inp.x).detach()  # the oracle, to check every provider's output
    rows = []
    for name in cfg.providers:
        row = {"kind": "ffn", "variant": setup.variant, "dim": setup.dim, "hidden": setup.hidden,
               "tokens": tokens, "provider": name}
        reason = skipped.get(name) or failed.get(name)
        if name not in med:
            rows.append({**row, "status": "skipped", "reason": reason})
            continue
        m = med[name]
        ref, floor = times.get("reference"), times.get("matmul")
        t = times[name]
        backend = runs[name].backend
        if engines.get(name) is not None:  # which elementwise engine ran at this size
            row["engine"] = engines[name]
        row.update(status="ok", backend=backend,
                   fwd_ms=m["fwd"] * 1e3, fwd_bwd_ms=m["fwd_bwd"] * 1e3,
                   # the fastest call and the spread: on a shared machine contention only ever
                   # adds time, so a wide spread says how far to trust the median
                   fwd_ms_min=min(t["fwd"]) * 1e3, fwd_bwd_ms_min=min(t["fwd_bwd"]) * 1e3,
                   fwd_spread=spread(t["fwd"]), fwd_bwd_spread=spread(t["fwd_bwd"]))
        for k, mult in (("fwd", 1), ("fwd_bwd", 3)):
            rate = mult * flops / m[k]
            row[f"{k}_flops_per_s"] = rate
            row[f"{k}_vs_reference"] = paired_ratio(t[k], ref and ref[k])
            row[f"{k}_vs_matmul"] = paired_ratio(t[k], floor and floor[k])
        s = saved[name]
        row["saved_bytes_per_token"] = None if s is None else s / tokens
        row["saved_vs_reference"] = _ratio(s, saved.get("reference"))
        row["peak_bytes"] = _peak_bytes(runs[name], inp, cfg.device)
        row["max_rel_err"] = _max_rel_err(runs[name], inp, y_ref)
        rows.append(row)
    return rows


def _elementwise_rows(cfg, setup, tokens, tick) -> list[dict]:
    names = list(dict.fromkeys(n for n in map(E.elementwise_provider, cfg.providers) if n))
    if not names:
        return []
    runs, skipped = {}, {}
    for name in names:
        try:
            runs[name] = E.build_elementwise(name, setup)
        except P.Skip as exc:
            skipped[name] = str(exc)
    gated = get_variant(setup.variant).gated
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    kw = {"dtype": setup.dtype, "device": setup.device}

    def t():
        return torch.randn(tokens, setup.hidden, generator=gen).to(**kw)

    inp = E.HiddenInputs(t().requires_grad_(), t().requires_grad_() if gated else None, t())
    times, failed = time_providers(runs, inp, cfg, tick)
    n_in = 2 if gated else 1
    unit = tokens * setup.hidden * setup.dtype.itemsize
    # The least any implementation must move: forward reads the inputs and writes the output;
    # backward reads the upstream gradient and the inputs and writes one gradient per input.
    moved = {"fwd": (n_in + 1) * unit, "fwd_bwd": (n_in + 1 + 1 + 2 * n_in) * unit}
    ref = times.get("reference")
    rows = []
    for name in names:
        row = {"kind": "elementwise", "variant": setup.variant, "hidden": setup.hidden,
               "tokens": tokens, "provider": name}
        if name not in times:
            rows.append({**row, "status": "skipped", "reason": skipped.get(name) or failed.get(name)})
            continue
        row["status"] = "ok"
        for k in ("fwd", "fwd_bwd"):
            sec = median(times[name][k])
            row[f"{k}_ms"] = sec * 1e3
            row[f"{k}_bytes"] = moved[k]
            row[f"{k}_bytes_per_s"] = moved[k] / sec
            row[f"{k}_vs_reference"] = paired_ratio(times[name][k], ref and ref[k])
        rows.append(row)
    return rows


def _add_shares(rows: list[dict], elementwise: list[dict], ceilings: dict) -> None:
    """Each row's rate as a share of this device's ceiling (matmul FLOP/s, copy bytes/s)."""
    for r in rows:
        for k in ("fwd", "fwd_bwd"):
            if f"{k}_flops_per_s" in r:
                r[f"{k}_matmul_share"] = r[f"{k}_flops_per_s"] / ceilings["matmul_flops_per_s"]
    for r in elementwise:
        for k in ("fwd", "fwd_bwd"):
            if f"{k}_bytes_per_s" in r:
                r[f"{k}_copy_share"] = r[f"{k}_bytes_per_s"] / ceilings["copy_bytes_per_s"]


def run_bench(cfg: BenchConfig, tick: Callable[[], None] = lambda: None) -> dict:
    """Run the whole benchmark; returns what ``bench.json`` holds.

    Keys: ``machine`` (where it ran), ``config`` (:meth:`BenchConfig.to_json`), ``ceilings``
    (copy bytes/s, matmul FLOP/s), ``rows`` (one per variant, hidden size, token count and
    provider, ``status`` ``ok`` with the timings or ``skipped`` with a ``reason``),
    ``elementwise`` (the same for the elementwise middle alone) and ``targets`` (each PASS,
    FAIL or n/a). ``tick()`` is called once per timed round, :meth:`BenchConfig.progress_steps`
    times in all.
    """
    before = device_ceilings(cfg.device, cfg.dtype)
    rows: list[dict] = []
    elementwise: list[dict] = []
    for variant in cfg.variants:
        for hidden in cfg.hiddens(variant):
            setup = P.make_setup(variant, cfg.dim, hidden, dtype=cfg.dtype, device=cfg.device,
                                 seed=cfg.seed)
            runs, skipped = {}, {}
            for name in cfg.providers:
                try:
                    runs[name] = P.build_run(name, setup)
                except P.Skip as exc:
                    skipped[name] = str(exc)
            for tokens in cfg.tokens:
                inp = P.make_inputs(setup, tokens, seed=cfg.seed)
                engines = _engines(runs, setup, inp.x)
                same = duplicate_providers(runs, engines)
                timed = {n: r for n, r in runs.items() if n not in same}
                times, failed = time_providers(timed, inp, cfg, tick)
                rows += _ffn_rows(cfg, setup, tokens, runs, {**skipped, **same}, times,
                                  failed, inp, engines)
                if cfg.elementwise:
                    elementwise += _elementwise_rows(cfg, setup, tokens, tick)
                del inp
    ceilings = best_ceilings(before, device_ceilings(cfg.device, cfg.dtype))
    _add_shares(rows, elementwise, ceilings)
    result = {"machine": machine_info(cfg.device), "config": cfg.to_json(),
              "ceilings": ceilings, "rows": rows, "elementwise": elementwise}
    result["targets"] = evaluate_targets(result)
    return result


