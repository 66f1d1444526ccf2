"""The sources' speed claims, checked from paired time ratios read against a band.

* ``speed_order`` and ``sigmoid_cost`` rest on ``measured.activation_cost``
  (:func:`.measure.activation_cost`): medians of per-round paired time ratios of the activation
  alone with 95 % intervals.
* ``glu_compute`` rests on ``measured.ffn_ratios``: the whole FFN's forward+backward, gated
  against its plain twin at equal parameters, paired by round.

A ratio is called slower / faster only when its whole interval lies outside ±:data:`SPEED_BAND`
around 1 (:func:`ratio_call`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ...numbers import as_float
from ..stats.table import variants_by_name
from ..verdicts import SPEED_BAND, ClaimVerdict, SpeedCall
from .verdict import Verdict, label, metric, twins

__all__ = ["ratio_call", "speed_verdict", "claim_speed_order", "claim_sigmoid_cost",
           "claim_glu_compute"]

def ratio_call(ci95: Sequence[float], band: float = SPEED_BAND) -> SpeedCall:
    """How ``b`` compares with ``a`` from the interval of the time ratio ``t_b / t_a``:
    ``"slower"`` (whole interval above ``1 + band``), ``"faster"`` (below ``1 / (1 + band)``),
    ``"≈"`` (whole interval inside the band), else ``"unresolved"`` (it straddles an edge, or
    there is no interval)."""
    lo, hi = (as_float(v) for v in ci95) if len(ci95) == 2 else (math.nan, math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return SpeedCall.UNDECIDED
    up, down = 1.0 + band, 1.0 / (1.0 + band)
    if lo > up:
        return SpeedCall.SLOWER
    if hi < down:
        return SpeedCall.FASTER
    if lo >= down and hi <= up:
        return SpeedCall.SAME
    return SpeedCall.UNDECIDED


def _cost(results: Mapping) -> Mapping | None:
    cost = (results.get("measured") or {}).get("activation_cost")
    return cost if isinstance(cost, Mapping) and isinstance(cost.get("ratios"), Mapping) else None


def _ratio(cost: Mapping, b: str, a: str) -> dict | None:
    """``t_b / t_a`` as ``{"median", "ci95"}`` from ``cost["ratios"]`` (inverting ``a/b``)."""
    ratios = cost["ratios"]
    if isinstance(ratios.get(f"{b}/{a}"), Mapping):
        r = ratios[f"{b}/{a}"]
        return {"median": as_float(r.get("median")),
                "ci95": [as_float(v) for v in r.get("ci95") or []]}
    if isinstance(ratios.get(f"{a}/{b}"), Mapping):
        r = ratios[f"{a}/{b}"]
        ci = [as_float(v) for v in r.get("ci95") or []]
        inv = [1 / ci[1], 1 / ci[0]] if len(ci) == 2 and all(v > 0 for v in ci) else [math.nan] * 2
        m = as_float(r.get("median"))
        return {"median": 1 / m if m > 0 else math.nan, "ci95": inv}
    return None


def _fmt_ratio(b: str, a: str, r: Mapping) -> str:
    lo, hi = r["ci95"] if len(r["ci95"]) == 2 else (math.nan, math.nan)
    return (f"{label(b)}/{label(a)} time {r['median']:.2f}× [{lo:.2f}, {hi:.2f}]"
            f" ({r['call']})")


def _cost_setting(cost: Mapping) -> str:
    n = cost.get("numel")
    where = f"{n:,} {cost.get('device', '?')} {cost.get('dtype', '?')} elements" if n else "?"
    return (f"forward+backward of the activation alone on {where}; median of "
            f"{cost.get('reps', '?')} paired rounds with its 95 % interval; "
            f"band ±{SPEED_BAND:.0%}")


def _speed_pairs(cost: Mapping, pairs: Sequence[tuple[str, str]]) -> dict[str, dict] | None:
    """``"b/a" -> {"median", "ci95", "call"}`` for each ``(a, b)``; None if one is missing."""
    out = {}
    for a, b in pairs:
        r = _ratio(cost, b, a)
        if r is None:
            return None
        out[f"{b}/{a}"] = {**r, "call": ratio_call(r["ci95"])}
    return out


def speed_verdict(calls: Sequence[str]) -> ClaimVerdict:
    """Each call is the claim's "b is slower than a": all slower -> supported; any resolved
    call that is not (faster or ≈) -> not supported; else inconclusive."""
    if all(c == SpeedCall.SLOWER for c in calls):
        return ClaimVerdict.SUPPORTED
    if any(c in (SpeedCall.FASTER, SpeedCall.SAME) for c in calls):
        return ClaimVerdict.NOT_SUPPORTED
    return ClaimVerdict.INCONCLUSIVE


def _cost_pairs(results: Mapping, cid: str, claim: str, src: str,
                pairs: Sequence[tuple[str, str]]) -> tuple[Mapping, dict, dict] | Verdict:
    """``(activation_cost, {"b/a": ratio}, numbers)`` for a speed claim, or its "not measured"
    verdict when the run has no activation_cost or lacks one of the activations."""
    cost = _cost(results)
    if cost is None:
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: this results.json has no "
                       "measured.activation_cost (written before it existed, or not measured).",
                       {})
    got = _speed_pairs(cost, pairs)
    if got is None:
        names = sorted({n for pair in pairs for n in pair})
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: activation_cost lacks "
                       f"{', '.join(names[:-1])} or {names[-1]}.", {"activation_cost": dict(cost)})
    nums: dict = {"ratios": got, "band": SPEED_BAND,
                  "ns_per_element": dict(cost.get("ns_per_element") or {})}
    return cost, got, nums


def claim_speed_order(results: Mapping) -> Verdict:
    cid, claim = "speed_order", "Speed: ReLU is fastest, Swish next, GELU slowest."
    src = "速度:ReLU 最快,Swish 次之,GeLU 较慢"
    got = _cost_pairs(results, cid, claim, src, [("relu", "swish"), ("swish", "gelu"),
                                                 ("relu", "gelu")])
    if isinstance(got, Verdict):
        return got
    cost, pairs, nums = got
    verdict = speed_verdict([p["call"] for p in pairs.values()])
    shown = "; ".join(_fmt_ratio(*k.split("/"), p) for k, p in pairs.items())
    tail = {ClaimVerdict.SUPPORTED: "each pair in the claimed order beyond the band",
            ClaimVerdict.NOT_SUPPORTED: "at least one pair is not in the claimed order",
            ClaimVerdict.INCONCLUSIVE: "an interval straddles a band edge"}[verdict]
    extra = ""
    if (gt := _ratio(cost, "gelu_tanh", "relu")) is not None:
        extra = (f" The tanh approximation the blog quotes: GELU-tanh/ReLU {gt['median']:.2f}× "
                 f"[{gt['ci95'][0]:.2f}, {gt['ci95'][1]:.2f}].")
    why = f"{shown}: {tail} ({_cost_setting(cost)}).{extra}"
    return Verdict(cid, claim, src, verdict, why + _ffn_note(results, nums), nums)


def _ffn_note(results: Mapping, nums: dict) -> str:
    """The whole FFN's time at the model's size, when the run trained relu, swish and gelu."""
    by = variants_by_name(results)
    names = ("relu", "swish", "gelu")
    ffn = {n: metric(by, n, "ffn_ms") for n in names}
    if any(math.isnan(t) or t <= 0 for t in ffn.values()):
        return ""
    spread = (max(ffn.values()) - min(ffn.values())) / min(ffn.values())
    shares = {n: _matmul_share(results, n) for n in names}
    nums.update(ffn_ms=ffn, ffn_ms_spread=spread, matmul_flop_share=shares)
    share = min(shares.values())
    flops = f"; matmuls are {share:.1%} of the FFN's FLOPs" if not math.isnan(share) else ""
    if spread <= SPEED_BAND:
        return (f" At the model's size the whole FFN (fwd+bwd) takes {ffn['relu']:.2f}/"
                f"{ffn['swish']:.2f}/{ffn['gelu']:.2f} ms, within {spread:.1%} of each other: "
                f"the activation's cost is invisible there{flops}.")
    return (f" Whole FFN (fwd+bwd): {ffn['relu']:.2f}/{ffn['swish']:.2f}/{ffn['gelu']:.2f} ms, "
            f"a {spread:.1%} spread{flops}.")


def _flops(by: Mapping, name: str, part: str) -> float:
    """``variants[name].flops_per_token[part]`` (forward FLOPs per token; NaN when absent)."""
    f = (by.get(name) or {}).get("flops_per_token")
    return as_float(f.get(part)) if isinstance(f, Mapping) else math.nan


def _matmul_share(results: Mapping, name: str) -> float:
    """Share of the FFN's forward FLOPs spent in matmuls."""
    by = variants_by_name(results)
    return _flops(by, name, "matmul") / _flops(by, name, "total")


def claim_sigmoid_cost(results: Mapping) -> Verdict:
    cid, claim = "sigmoid_cost", "Sigmoid costs more to compute than ReLU."
    src = "相比于ReLU,Sigmoid涉及到指数运算和除法,计算复杂度更高"
    got = _cost_pairs(results, cid, claim, src, [("relu", "sigmoid")])
    if isinstance(got, Verdict):
        return got
    cost, pairs, nums = got
    (p,) = pairs.values()
    verdict = speed_verdict([p["call"]])
    tail = {ClaimVerdict.SUPPORTED: "sigmoid is slower beyond the band",
            ClaimVerdict.NOT_SUPPORTED: ("no measurable difference: the interval lies within the band"
                            if p["call"] == SpeedCall.SAME else "sigmoid is faster beyond the band"),
            ClaimVerdict.INCONCLUSIVE: "the interval straddles a band edge"}[verdict]
    why = f"{_fmt_ratio('sigmoid', 'relu', p)}: {tail} ({_cost_setting(cost)})."
    if (t := _ratio(cost, "tanh", "relu")) is not None:
        nums["ratios"]["tanh/relu"] = {**t, "call": ratio_call(t["ci95"])}
        why += (f" For comparison tanh/ReLU: {t['median']:.2f}× "
                f"[{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}].")
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_glu_compute(results: Mapping) -> Verdict:
    """Gated vs plain FFN time at equal parameters, from the paired per-round ratios of the
    whole FFN's forward+backward (``measured.ffn_ratios``) and their intervals."""
    cid = "glu_compute"
    claim = "GLU variants cost more compute than the plain FFN."
    src = "缺点:计算量更大,参数量也可能更多"
    by = variants_by_name(results)
    ratios = ((results.get("measured") or {}).get("ffn_ratios") or {})
    pairs = [(g, p) for g, p in twins(by) if isinstance(ratios.get(f"{g}/{p}"), Mapping)]
    if not pairs:
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: no gated variant was timed "
                       "together with its plain twin.", {})
    nums: dict = {"pairs": {}, "band": SPEED_BAND}
    calls, parts = [], []
    for g, p in pairs:
        r = ratios[f"{g}/{p}"]
        call = ratio_call(r.get("ci95") or [])
        flops = _flops(by, g, "matmul") / _flops(by, p, "matmul")
        nums["pairs"][g] = {"plain": p, "ffn_time_ratio": r, "call": call,
                            "matmul_flops_ratio": flops}
        calls.append(call)
        lo, hi = (as_float(x) for x in (r.get("ci95") or [math.nan, math.nan]))
        parts.append(f"{g}/{p}: FFN time {as_float(r.get('median')):.2f}× [{lo:.2f}, {hi:.2f}] "
                     f"({call}), matmul FLOPs {flops:.2f}×")
    verdict = speed_verdict(calls)
    tail = {ClaimVerdict.SUPPORTED: "the gated FFN is measurably slower at equal parameters",
            ClaimVerdict.NOT_SUPPORTED: (f"at equal parameters (gated hidden ≈ 2/3) a gated FFN is not slower "
                            f"beyond the ±{SPEED_BAND:.0%} band; it is 1.5× the FLOPs only at "
                            "equal hidden size"),
            ClaimVerdict.INCONCLUSIVE: f"an interval straddles the ±{SPEED_BAND:.0%} band"}[verdict]
    return Verdict(cid, claim, src, verdict,
                   f"Paired per-round ratios, median with 95 % interval: {'; '.join(parts)}: "
                   f"{tail}.", nums)
