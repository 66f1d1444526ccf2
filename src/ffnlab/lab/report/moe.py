"""The report's "Dense vs mixture of experts" section, for runs with an MoE lab variant.

One table row per MoE variant next to its dense variant (parameters total and active, tokens/s,
the paired quality interval, the load balance), then one sentence per pair saying whether
routing pays at this size, read off the paired 95 % interval of ``moe − dense`` (results.json's
``comparisons``) with both throughputs. Blocks as in :mod:`ffnlab.lab.report.document`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ...numbers import as_float, fmt_number
from ..stats.table import variants_by_name
from ..verdicts import PairVerdict

__all__ = ["moe_blocks", "routing_sentence"]


def _comparison(results: Mapping, a: str, b: str) -> Mapping | None:
    for c in results.get("comparisons") or []:
        if isinstance(c, Mapping) and c.get("a") == a and c.get("b") == b:
            return c
    return None


def _interval(c: Mapping | None) -> tuple[float, float, float, int]:
    """``(mean, low, high, n)`` of a stored comparison (NaN where missing)."""
    if c is None:
        return math.nan, math.nan, math.nan, 0
    ci = c.get("ci95") if isinstance(c.get("ci95"), (list, tuple)) else ()
    lo, hi = (as_float(x) for x in ci) if len(ci) == 2 else (math.nan, math.nan)
    n = c.get("n") if isinstance(c.get("n"), int) and not isinstance(c.get("n"), bool) else 0
    return as_float(c.get("mean")), lo, hi, n


def _pairs(results: Mapping) -> list[tuple[Mapping, Mapping | None]]:
    """``(moe variant, its dense variant or None)`` for every MoE variant of ``results``."""
    by = variants_by_name(results)
    out = []
    for v in results.get("variants", []):
        moe = v.get("moe")
        if isinstance(moe, Mapping):
            out.append((v, by.get(moe.get("base"))))
    return out


def routing_sentence(results: Mapping, moe: Mapping, dense: Mapping | None) -> str:
    """Whether routing pays at this size, from the paired interval of ``moe − dense``."""
    a = moe["name"]
    if dense is None:
        return (f"`{a}` ran without its dense variant `{moe['moe'].get('base')}`, so nothing "
                f"says whether routing pays at this size.")
    b = dense["name"]
    tps_a, tps_b = as_float(moe.get("tokens_per_s")), as_float(dense.get("tokens_per_s"))
    speed = f"{fmt_number(tps_a, ',.0f')} vs {fmt_number(tps_b, ',.0f')} tokens/s"
    if tps_a > 0 and tps_b > 0:
        speed += f" ({tps_a / tps_b:.2f}× the dense speed)"
    c = _comparison(results, a, b)
    mean, lo, hi, n = _interval(c)
    res = as_float((results.get("config") or {}).get("resolution_bpb"))
    verdict = PairVerdict.of(c.get("verdict"), PairVerdict.UNRESOLVED) if c is not None else PairVerdict.UNRESOLVED
    if n < 2 or math.isnan(lo) or math.isnan(hi):
        return (f"Whether routing pays at this size is not known: `{a}` − `{b}` has {n} paired "
                f"seed{'s' if n != 1 else ''}, too few for an interval; {speed}.")
    gap = f"`{a}` − `{b}` = {mean:+.4f} bpb, 95 % interval [{lo:+.4f}, {hi:+.4f}] over {n} seeds"
    if verdict == PairVerdict.A_BETTER:
        return f"Routing pays in quality at this size: {gap}, at {speed}."
    if verdict == PairVerdict.B_BETTER:
        return f"Routing does not pay at this size: the MoE is worse, {gap}, at {speed}."
    if verdict == PairVerdict.EQUIVALENT:
        return (f"Routing buys no measurable quality at this size: {gap}, inside ±{res:g} bpb, "
                f"at {speed}.")
    return (f"Whether routing pays at this size is not resolved: {gap} straddles 0 and reaches "
            f"past ±{res:g} bpb (more seeds would narrow it), at {speed}.")


def _row(results: Mapping, moe: Mapping, dense: Mapping | None) -> list[str]:
    m = moe["moe"]
    lb = moe.get("load_balance") if isinstance(moe.get("load_balance"), Mapping) else {}
    mean, lo, hi, _ = _interval(None if dense is None else _comparison(results, moe["name"],
                                                                        dense["name"]))
    interval = "n/a" if math.isnan(lo) else f"{mean:+.4f} [{lo:+.4f}, {hi:+.4f}]"

    def count(v: Mapping | None, key: str) -> str:
        x = None if v is None else v.get(key, v.get("params"))
        return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else "n/a"

    return [f"`{moe['name']}`", "n/a" if dense is None else f"`{dense['name']}`",
            f"{m.get('n_experts')} × {m.get('expert_hidden')}, top {m.get('top_k')}",
            f"{count(moe, 'params_total')} / {count(moe, 'params_active')}",
            f"{count(dense, 'params_total')}",
            f"{fmt_number(moe.get('tokens_per_s'), ',.0f')} / "
            f"{fmt_number(None if dense is None else dense.get('tokens_per_s'), ',.0f')}",
            interval, fmt_number(lb.get("cv"), ".3f"), fmt_number(lb.get("max_over_mean"), ".2f")]


def moe_blocks(results: Mapping, plots: Mapping[str, bytes], caption: str) -> list[tuple]:
    """The section's blocks (none when no MoE variant ran); ``caption``: the load-balance
    figure's, shown when ``plots`` has it."""
    pairs = _pairs(results)
    if not pairs:
        return []
    coef = next((p[0]["moe"].get("load_balance_coef") for p in pairs), None)
    blocks: list[tuple] = [("h2", "Dense vs mixture of experts"), (
        "p", "`moe:V:ExK` is a mixture of E experts of variant V, K per token (softmax router, "
             "no biases), each expert of the dense hidden size / K, so a token passes through "
             "as many expert weights as the dense FFN holds; the router (E × dim weights) comes "
             f"on top. Its training loss adds {fmt_number(coef, 'g')} × the Switch "
             "load-balancing loss. Parameters are per layer: total (every expert and the "
             "router) / active (the K experts one token uses, and the router).")]
    headers = ["MoE", "dense", "experts", "MoE params total / active", "dense params",
               "tokens/s MoE / dense", "Δ bpb MoE − dense [95 %]", "load cv", "max/mean"]
    blocks.append(("table", headers, [_row(results, v, d) for v, d in pairs]))
    blocks.append(("ul", [routing_sentence(results, v, d) for v, d in pairs]))
    blocks.append(("p", "Load balance: each expert's share of the routed (token, expert) slots "
                        "on the validation set at the end of training; cv is their std / mean "
                        "(0: balanced), max/mean the busiest expert's load over the mean (1: "
                        "balanced); both averaged over seeds (the worst layer for max/mean). "
                        "Dead units are not measured for an MoE (an expert's units see only "
                        "its tokens)."))
    if "load_balance" in plots:
        blocks.append(("img", "load_balance", caption))
    return blocks
