"""The sources' claims, each checked against a lab ``results.json`` dict.

Every checker takes the results dict and returns one :class:`Verdict`: ``supported``, ``not
supported`` or ``inconclusive``. The rule: a claim is inconclusive only when a measurement it
rests on is not resolved (an interval wider than the resolution, one that straddles a band
edge) and the resolved ones do not already decide it, or when the run did not measure it at
all ("Not measured: ..."). A difference shown to be smaller than the resolution is an answer:
for a claim that X beats Y, "equivalent within ±r" means ``not supported``.

* Quality claims rest on the paired comparisons of :mod:`.comparisons` (Student-t 95 %
  intervals of ``a − b`` in val bits per byte, verdicts at ``config.resolution_bpb``).
* Speed claims rest on ``measured.activation_cost`` (:func:`.measure.activation_cost`):
  medians of per-round paired time ratios with 95 % intervals, read against a band of
  ±:data:`SPEED_BAND` around 1.
* ``swish_beta`` and ``saturation`` rest on ``measured.swish_beta`` (:mod:`.swish_beta`) and
  ``measured.saturation`` (:func:`.measure.saturation`), computed without training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..numbers import as_float
from .analysis import TIMING_NOISE, good_runs, ranking, variants_by_name
from .comparisons import (
    A_BETTER,
    B_BETTER,
    EQUIVALENT,
    GATED_TWINS,
    UNRESOLVED,
    Comparison,
    compare,
)
from .moe_variant import is_moe

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

DEAD_MIN = 0.01
"""Dead-unit share below which we say units did not die (1 % of the hidden units)."""

PARAM_MATCH = 0.05
"""Largest relative FFN-parameter gap for a gated/plain pair to count as parameter-matched
(2/3-hidden rounding leaves well under 1 %)."""

# Shazeer 2020, "GLU Variants Improve Transformer", table 1: log-perplexity on C4 after
# 65,536 steps (T5-base sized models). Quoted for scale; the lab's runs are far smaller.
SHAZEER_2020 = {"geglu": 1.942, "swiglu": 1.944, "relu": 1.997}

DEFAULT_RESOLUTION = 0.02
"""bpb; what :func:`resolution` falls back to when ``config.resolution_bpb`` is absent (the value
of ``results.DEFAULT_RESOLUTION``, not imported: :mod:`.results` imports this module)."""

SPEED_BAND = TIMING_NOISE
"""A time ratio counts as different from 1 only when its whole 95 % interval lies outside
``[1/(1+SPEED_BAND), 1+SPEED_BAND]``, and as "≈" when the whole interval lies inside.

Why 5 %: it is the lab's threshold for timing differences (:data:`.analysis.TIMING_NOISE`), and
a smaller gap in the elementwise part is not worth a claim: at the lab's sizes matmuls are over
95 % of an FFN's FLOPs, so 5 % of the activation is a fraction of a percent of the FFN. It is
not a bound on run-to-run drift under load: on the 2-core development machine, shared with
another measuring job, the median sigmoid/relu ratio at 64K elements moved between 1.20 and
1.90 over thirteen runs, far more than each run's interval. The verdicts were the same in every run
there because every ratio the claims read lay well outside the band; a ratio near a band edge
would flip between a call and "inconclusive" from run to run."""


@dataclass(frozen=True)
class Verdict:
    """One claim of the sources, checked: ``verdict`` is supported / not supported / inconclusive."""

    claim_id: str
    claim: str
    source: str
    verdict: str
    explanation: str
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.claim_id, "claim": self.claim, "source": self.source,
                "verdict": self.verdict, "explanation": self.explanation, "numbers": self.numbers}



# ---------------------------------------------------------------------------------------------
# The sources' claims. Each checker takes the results dict and returns one Verdict; a claim
# about variants the run did not include is "inconclusive" ("not measured").

def _metric(by: Mapping, name: str, key: str) -> float:
    return as_float(by[name].get(key)) if name in by else math.nan


def _not_measured(cid: str, claim: str, source: str, needed: Sequence[str], by: Mapping,
                  what: str = "") -> Verdict | None:
    absent = [n for n in needed if n not in by]
    if absent:
        return Verdict(cid, claim, source, INCONCLUSIVE,
                       f"Not measured: {', '.join(absent)} not in this run{what}.",
                       {"missing": absent})
    return None


def _matmul_share(results: Mapping, name: str) -> float:
    """Share of the FFN's forward FLOPs spent in matmuls (ffnlab.sizing's convention)."""
    from ..sizing import ffn_flops_per_token

    dim = ((results.get("config") or {}).get("model") or {}).get("dim")
    hidden = variants_by_name(results)[name].get("hidden")
    try:
        f = ffn_flops_per_token(name, dim, hidden)
    except (ValueError, TypeError, KeyError):
        return math.nan
    return f["matmul"] / f["total"]


# --- speed: paired time ratios against a band ---------------------------------------------

FASTER, SLOWER, SAME, UNDECIDED = "faster", "slower", "≈", "unresolved"


def ratio_call(ci95: Sequence[float], band: float = SPEED_BAND) -> str:
    """How ``b`` compares with ``a`` from the interval of the time ratio ``t_b / t_a``:
    ``"slower"`` (whole interval above ``1 + band``), ``"faster"`` (below ``1 / (1 + band)``),
    ``"≈"`` (whole interval inside the band), else ``"unresolved"`` (it straddles an edge, or
    there is no interval)."""
    lo, hi = (as_float(v) for v in ci95) if len(ci95) == 2 else (math.nan, math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        return UNDECIDED
    up, down = 1.0 + band, 1.0 / (1.0 + band)
    if lo > up:
        return SLOWER
    if hi < down:
        return FASTER
    if lo >= down and hi <= up:
        return SAME
    return UNDECIDED


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


LABEL = {"relu": "ReLU", "swish": "Swish", "gelu": "GELU", "gelu_tanh": "GELU-tanh",
         "sigmoid": "sigmoid", "tanh": "tanh", "geglu": "GeGLU", "swiglu": "SwiGLU",
         "reglu": "ReGLU", "glu": "GLU", "geglu_tanh": "GeGLU-tanh"}


def _label(name: str) -> str:
    return LABEL.get(name, name)


def _fmt_ratio(b: str, a: str, r: Mapping) -> str:
    lo, hi = r["ci95"] if len(r["ci95"]) == 2 else (math.nan, math.nan)
    return (f"{_label(b)}/{_label(a)} time {r['median']:.2f}× [{lo:.2f}, {hi:.2f}]"
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


def _speed_verdict(calls: Sequence[str]) -> str:
    """Each call is the claim's "b is slower than a": all slower -> supported; any resolved
    call that is not (faster or ≈) -> not supported; else inconclusive."""
    if all(c == SLOWER for c in calls):
        return SUPPORTED
    if any(c in (FASTER, SAME) for c in calls):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def _cost_pairs(results: Mapping, cid: str, claim: str, src: str,
                pairs: Sequence[tuple[str, str]]) -> tuple[Mapping, dict, dict] | Verdict:
    """``(activation_cost, {"b/a": ratio}, numbers)`` for a speed claim, or its "not measured"
    verdict when the run has no activation_cost or lacks one of the activations."""
    cost = _cost(results)
    if cost is None:
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: this results.json has no "
                       "measured.activation_cost (written before it existed, or not measured).",
                       {})
    got = _speed_pairs(cost, pairs)
    if got is None:
        names = sorted({n for pair in pairs for n in pair})
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: activation_cost lacks "
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
    verdict = _speed_verdict([p["call"] for p in pairs.values()])
    shown = "; ".join(_fmt_ratio(*k.split("/"), p) for k, p in pairs.items())
    tail = {SUPPORTED: "each pair in the claimed order beyond the band",
            NOT_SUPPORTED: "at least one pair is not in the claimed order",
            INCONCLUSIVE: "an interval straddles a band edge"}[verdict]
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
    ffn = {n: _metric(by, n, "ffn_ms") for n in names}
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


def claim_sigmoid_cost(results: Mapping) -> Verdict:
    cid, claim = "sigmoid_cost", "Sigmoid costs more to compute than ReLU."
    src = "相比于ReLU,Sigmoid涉及到指数运算和除法,计算复杂度更高"
    got = _cost_pairs(results, cid, claim, src, [("relu", "sigmoid")])
    if isinstance(got, Verdict):
        return got
    cost, pairs, nums = got
    (p,) = pairs.values()
    verdict = _speed_verdict([p["call"]])
    tail = {SUPPORTED: "sigmoid is slower beyond the band",
            NOT_SUPPORTED: ("no measurable difference: the interval lies within the band"
                            if p["call"] == SAME else "sigmoid is faster beyond the band"),
            INCONCLUSIVE: "the interval straddles a band edge"}[verdict]
    why = f"{_fmt_ratio('sigmoid', 'relu', p)}: {tail} ({_cost_setting(cost)})."
    if (t := _ratio(cost, "tanh", "relu")) is not None:
        nums["ratios"]["tanh/relu"] = {**t, "call": ratio_call(t["ci95"])}
        why += (f" For comparison tanh/ReLU: {t['median']:.2f}× "
                f"[{t['ci95'][0]:.2f}, {t['ci95'][1]:.2f}].")
    return Verdict(cid, claim, src, verdict, why, nums)


# --- quality: paired comparisons at the run's resolution ------------------------------------

def resolution(results: Mapping) -> float:
    """``config.resolution_bpb`` (bits per byte), or :data:`DEFAULT_RESOLUTION`."""
    r = as_float((results.get("config") or {}).get("resolution_bpb", DEFAULT_RESOLUTION))
    return r if math.isfinite(r) and r > 0 else DEFAULT_RESOLUTION


def _fmt_cmp(c: Comparison) -> str:
    """``a − b`` as text: the interval and what it says at the resolution."""
    head = f"{_label(c.a)} − {_label(c.b)}"
    if c.n == 0:
        return f"{head}: unresolved, no seed where both runs finished"
    if c.n == 1:
        return f"{head} = {c.mean:+.4f} bpb: unresolved, one seed only (no interval)"
    lo, hi = c.ci95
    ival = f"the 95 % interval [{lo:+.4f}, {hi:+.4f}] bpb ({c.n} seeds)"
    r = c.resolution
    return f"{head} = {c.mean:+.4f}: " + {
        A_BETTER: f"{_label(c.a)} better, {ival} lies below 0",
        B_BETTER: f"{_label(c.b)} better, {ival} lies above 0",
        EQUIVALENT: f"no measurable difference: {ival} lies within ±{r:g}",
        UNRESOLVED: f"unresolved: {ival} straddles 0 and reaches past ±{r:g}",
    }[c.verdict]


def _better_verdict(cs: Sequence[Comparison]) -> str:
    """For "a beats b" in every comparison: all "a better" -> supported; any "b better" or
    "equivalent" -> not supported; else (some unresolved) inconclusive."""
    if all(c.verdict == A_BETTER for c in cs):
        return SUPPORTED
    if any(c.verdict in (B_BETTER, EQUIVALENT) for c in cs):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def claim_smooth_beats_relu(results: Mapping) -> Verdict:
    cid, claim = "smooth_beats_relu", "Quality: GELU and Swish beat ReLU."
    src = "性能:在 NLP 任务上,GeLU 与 Swish 往往能在一定程度上优于 ReLU"
    by = variants_by_name(results)
    if (v := _not_measured(cid, claim, src, ("relu", "gelu", "swish"), by)) is not None:
        return v
    r = resolution(results)
    cs = {n: compare(results, n, "relu", r) for n in ("gelu", "swish")}
    nums = {"resolution_bpb": r, **{f"{n}_minus_relu": c.to_dict() for n, c in cs.items()}}
    verdict = _better_verdict(list(cs.values()))
    tail = {SUPPORTED: "both better than ReLU",
            NOT_SUPPORTED: "at least one is not better than ReLU",
            INCONCLUSIVE: "not resolved at this resolution: more seeds would decide"}[verdict]
    text = "; ".join(_fmt_cmp(c) for c in cs.values())
    why = f"Paired by seed: {text}. {tail[0].upper()}{tail[1:]}."
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_relu_dies(results: Mapping) -> Verdict:
    cid, claim = "relu_dies", "ReLU units die (never fire); GELU and Swish do not."
    src = "稳定性:ReLU 有神经元死亡问题"
    by = variants_by_name(results)
    if (v := _not_measured(cid, claim, src, ("relu",), by)) is not None:
        return v
    cfg = results.get("config") or {}
    thr = as_float(cfg.get("dead_threshold"))
    rule = (f"a unit counts as dead if its activation never exceeds {thr:g} on the validation "
            "set" if not math.isnan(thr) else "dead threshold not recorded")
    if isinstance(cfg.get("dead_rule"), str):  # the training side's own wording, when given
        rule = f"dead threshold {thr:g}: {cfg['dead_rule']}"
    dead = {n: _metric(by, n, "dead_fraction") for n in ("relu", "gelu", "swish") if n in by}
    nums = {"dead_fraction": dead, "dead_threshold": thr, "min_share": DEAD_MIN}
    if "runs" in by["relu"] and not good_runs(by["relu"]):
        return Verdict(cid, claim, src, INCONCLUSIVE, "No ReLU run finished.", nums)
    if math.isnan(dead["relu"]):
        return Verdict(cid, claim, src, INCONCLUSIVE, "No dead-unit count was recorded.", nums)
    others = {n: d for n, d in dead.items() if n != "relu" and not math.isnan(d)}
    shown = ", ".join(f"{n} {d:.1%}" for n, d in dead.items() if not math.isnan(d))
    if dead["relu"] < DEAD_MIN:
        verdict, why = NOT_SUPPORTED, f"ReLU units did not die here ({shown}; {rule})."
    elif any(d >= dead["relu"] for d in others.values()):
        verdict, why = NOT_SUPPORTED, f"Others die as often as ReLU ({shown}; {rule})."
    else:
        extra = "" if others else " GELU/Swish were not measured for comparison."
        verdict, why = SUPPORTED, f"Dead hidden units: {shown} ({rule}).{extra}"
    return Verdict(cid, claim, src, verdict, why, nums)


def _twins(by: Mapping) -> list[tuple[str, str]]:
    return [(g, p) for g, p in GATED_TWINS.items() if g in by and p in by]


def claim_glu_quality(results: Mapping) -> Verdict:
    cid = "glu_quality"
    claim = "GLU variants are better per parameter than the plain FFN with the same activation."
    src = "GLU 优点:增强表示能力……有时能带来性能收益"
    by = variants_by_name(results)
    pairs = _twins(by)
    if not pairs:
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: no gated variant ran "
                       "together with its plain twin (e.g. swiglu with swish).", {})
    r = resolution(results)
    cs = {g: compare(results, g, p, r) for g, p in pairs}
    ratio = {g: _metric(by, g, "params") / _metric(by, p, "params") for g, p in pairs}
    nums = {"resolution_bpb": r,
            "pairs": {g: {"plain": p, "comparison": cs[g].to_dict(), "param_ratio": ratio[g]}
                      for g, p in pairs}}
    count = {v: sum(c.verdict == v for c in cs.values()) for v in (A_BETTER, B_BETTER,
                                                                  EQUIVALENT, UNRESOLVED)}
    nums["counts"] = count
    n, better, unresolved = len(pairs), count[A_BETTER], count[UNRESOLVED]
    # The claim holds when at least half of the pairs are better and none is worse; an
    # equivalent pair is an answer (not better), an unresolved one could still go either way.
    if count[B_BETTER] or 2 * (better + unresolved) < n:
        verdict = NOT_SUPPORTED
    elif 2 * better >= n:
        verdict = SUPPORTED
    else:
        verdict = INCONCLUSIVE
    text = "; ".join(f"{_fmt_cmp(cs[g])}, at {ratio[g]:.3f}× the params" for g, _ in pairs)
    why = (f"Paired by seed: {text}. Gated better in {better} of {n} pairs, plain better in "
           f"{count[B_BETTER]}, no measurable difference in {count[EQUIVALENT]}, unresolved in "
           f"{unresolved} (the claim needs at least half better and none worse).")
    unmatched = [g for g, x in ratio.items() if not abs(x - 1) <= PARAM_MATCH]
    if unmatched:  # then "per parameter" does not hold for those pairs
        why += (f" Caution: FFN parameters differ by more than {PARAM_MATCH:.0%} between "
                f"{', '.join(unmatched)} and the plain twin.")
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_glu_compute(results: Mapping) -> Verdict:
    """Gated vs plain FFN time at equal parameters, from the paired per-round ratios of the
    whole FFN's forward+backward (``measured.ffn_ratios``) and their intervals."""
    cid = "glu_compute"
    claim = "GLU variants cost more compute than the plain FFN."
    src = "缺点:计算量更大,参数量也可能更多"
    by = variants_by_name(results)
    ratios = ((results.get("measured") or {}).get("ffn_ratios") or {})
    pairs = [(g, p) for g, p in _twins(by) if isinstance(ratios.get(f"{g}/{p}"), Mapping)]
    if not pairs:
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: no gated variant was timed "
                       "together with its plain twin.", {})
    from ..sizing import ffn_flops_per_token

    dim = ((results.get("config") or {}).get("model") or {}).get("dim")
    nums: dict = {"pairs": {}, "band": SPEED_BAND}
    calls, parts = [], []
    for g, p in pairs:
        r = ratios[f"{g}/{p}"]
        call = ratio_call(r.get("ci95") or [])
        try:
            flops = (ffn_flops_per_token(g, dim, by[g]["hidden"])["matmul"]
                     / ffn_flops_per_token(p, dim, by[p]["hidden"])["matmul"])
        except (ValueError, TypeError, KeyError):
            flops = math.nan
        nums["pairs"][g] = {"plain": p, "ffn_time_ratio": r, "call": call,
                            "matmul_flops_ratio": flops}
        calls.append(call)
        lo, hi = (as_float(x) for x in (r.get("ci95") or [math.nan, math.nan]))
        parts.append(f"{g}/{p}: FFN time {as_float(r.get('median')):.2f}× [{lo:.2f}, {hi:.2f}] "
                     f"({call}), matmul FLOPs {flops:.2f}×")
    verdict = _speed_verdict(calls)
    tail = {SUPPORTED: "the gated FFN is measurably slower at equal parameters",
            NOT_SUPPORTED: (f"at equal parameters (gated hidden ≈ 2/3) a gated FFN is not slower "
                            f"beyond the ±{SPEED_BAND:.0%} band; it is 1.5× the FLOPs only at "
                            "equal hidden size"),
            INCONCLUSIVE: f"an interval straddles the ±{SPEED_BAND:.0%} band"}[verdict]
    return Verdict(cid, claim, src, verdict,
                   f"Paired per-round ratios, median with 95 % interval: {'; '.join(parts)}: "
                   f"{tail}.", nums)


def claim_glu_best(results: Mapping) -> Verdict:
    cid, claim = "glu_best", "GeGLU / SwiGLU give the best quality."
    src = "大模型/追求极致性能:可以尝试 GeLU 或者带门控机制的 FFN(比如 GLU + GeLU)"
    by = variants_by_name(results)
    ref = ("Shazeer 2020 (C4, 65k steps): log-perplexity GEGLU 1.942, SwiGLU 1.944, ReLU 1.997; "
           "this run is far smaller")
    fam = [n for n in ("geglu", "swiglu", "geglu_tanh") if n in by]
    ranked = [v["name"] for v in ranking(results) if not math.isnan(as_float(v.get("val_bpb_mean")))]
    nums: dict = {"shazeer_2020_log_ppl": SHAZEER_2020, "ranking": ranked}
    if not fam:
        return Verdict(cid, claim, src, INCONCLUSIVE,
                       f"Not measured: neither geglu nor swiglu ran. ({ref}.)", nums)
    best_fam = next((n for n in ranked if n in fam), None)
    best_other = next((n for n in ranked if n not in fam), None)
    if best_fam is None or best_other is None:
        return Verdict(cid, claim, src, INCONCLUSIVE, "Nothing to compare against "
                       f"(usable variants: {', '.join(ranked) or 'none'}). ({ref}.)", nums)
    r = resolution(results)
    c = compare(results, best_fam, best_other, r)
    nums.update(resolution_bpb=r, comparison=c.to_dict())
    verdict = {A_BETTER: SUPPORTED, B_BETTER: NOT_SUPPORTED, EQUIVALENT: NOT_SUPPORTED,
               UNRESOLVED: INCONCLUSIVE}[c.verdict]
    text = (f"best of the family by mean: {best_fam}, best outside it: {best_other}; "
            f"{_fmt_cmp(c)}")
    return Verdict(cid, claim, src, verdict, f"Top-ranked: {ranked[0]}; {text}. ({ref}.)", nums)


# --- without training: saturation at initialisation, Swish's beta -------------------------

def _pct(x: float) -> str:
    """A share as a percentage, with a second decimal below 1 % (0.03 %, not 0.0 %)."""
    return f"{x:.2%}" if abs(x) < 0.01 else f"{x:.1%}"


SATURATING = ("sigmoid", "tanh")
NON_SATURATING = ("relu", "gelu", "swish")


def claim_saturation(results: Mapping) -> Verdict:
    cid, claim = "saturation", ("Sigmoid and tanh saturate: their gradients vanish "
                                "(checked at initialisation, not after training).")
    src = "Sigmoid……缺点:易出现梯度饱和;Tanh……缺点:依然有可能饱和,使得梯度变小,不易训练"
    sat = (results.get("measured") or {}).get("saturation")
    if not isinstance(sat, Mapping):
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: this results.json has no "
                       "measured.saturation.", {})
    names = SATURATING + NON_SATURATING
    try:
        model, rnd = sat["model"], sat["random"]
        k = [as_float(x) for x in rnd["std"]].index(1.0)
        share = {"model": {n: as_float(model["share"][n]) for n in names},
                 "random": {n: as_float(rnd["share"][n][k]) for n in names}}
        grad = {"model": {n: as_float(model["w1_grad_norm"][n]) for n in names},
                "random": {n: as_float(rnd["w1_grad_norm"][n][k]) for n in names}}
    except (KeyError, TypeError, ValueError, IndexError):
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: measured.saturation lacks "
                       f"one of {', '.join(names)} or the unit-variance setting.", {})
    # The claim, at initialisation: in both settings each saturating activation has more
    # saturated units than every non-saturating one, and a smaller gradient reaching W1.
    fails = [f"{_label(s)} vs {_label(o)} ({where})" for where in ("model", "random")
             for s in SATURATING for o in NON_SATURATING
             if not (share[where][s] > share[where][o] and grad[where][s] < grad[where][o])]
    verdict = NOT_SUPPORTED if fails else SUPPORTED
    thr = as_float(sat.get("threshold"))
    rel = {n: grad["model"][n] / grad["model"]["relu"] for n in names}
    nums = {"at": "initialisation (no training)", "threshold": thr, "share": share,
            "w1_grad_norm": grad, "w1_grad_vs_relu_model": rel, "failed_pairs": fails}
    pct = ", ".join(f"{_label(n)} {_pct(share['model'][n])}" for n in names)
    grads = ", ".join(f"{_label(n)} {rel[n]:.2f}×" for n in SATURATING + ("gelu", "swish"))
    why = (f"Measured at initialisation, not after training. In the lab's model (seed "
           f"{sat.get('seed', '?')}, random bytes) the share of hidden activations with |act'| "
           f"below {thr:.0%} of its maximum is {pct} (ReLU's is its exact-zero half); "
           f"unit-variance random pre-activations agree. The gradient reaching W1, relative to "
           f"ReLU's: {grads}.")
    stds = [as_float(x) for x in rnd.get("std") or []]
    if len(stds) > 1:
        try:
            grow = "; ".join(
                f"{_label(n)} " + " / ".join(_pct(as_float(v)) for v in rnd["share"][n])
                for n in ("sigmoid", "tanh", "relu"))
            why += (f" Saturation grows with the pre-activations' scale: at std "
                    f"{' / '.join(f'{x:g}' for x in stds)} the shares are {grow}.")
        except (KeyError, TypeError, ValueError):
            pass
    if verdict == NOT_SUPPORTED:
        total = 2 * len(SATURATING) * len(NON_SATURATING)
        why += (" At initialisation sigmoid and tanh do not both saturate more and pass less "
                f"gradient than ReLU, GELU and Swish: {total - len(fails)} of {total} pairings "
                "(2 × 3 activations, 2 settings) show both; whether training drives their "
                "pre-activations into the flat tails is not measured here.")
    else:
        why += " Both saturate more, and pass less gradient, than every non-saturating one."
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_swish_beta(results: Mapping) -> Verdict:
    cid = "swish_beta"
    claim = ("Swish_β: β → 0 gives the linear x/2, β → ∞ gives ReLU, and some β makes it "
             "close to GELU.")
    # The stored copy of the blog lost its formulas (β and its limits); "……" marks them.
    src = "[β] 的作用:可以调整函数形状。当……时,Swish 的曲线与 GeLU 也相近;……时就变回线性函数;……时则趋近 ReLU"
    m = (results.get("measured") or {}).get("swish_beta")
    try:
        lin, rel, ge = m["linear"], m["relu"], m["gelu"]
        holds = [bool(lin["holds"]), bool(rel["holds"]), bool(ge["holds"])]
        grid = f"[{m['grid'][0]:g}, {m['grid'][1]:g}]"
    except (KeyError, TypeError, IndexError):
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: this results.json has no "
                       "measured.swish_beta.", {})
    verdict = SUPPORTED if all(holds) else NOT_SUPPORTED
    why = (f"On a grid of {grid} (float64): max |swish_β − x/2| = "
           f"{as_float(lin['max_gap']):.4f} at β = {as_float(lin['beta']):g} (tolerance "
           f"{as_float(lin['tol']):g}); "
           f"max |swish_β − relu| = {as_float(rel['max_gap']):.4f} at β = "
           f"{as_float(rel['beta']):g} (tolerance {as_float(rel['tol']):g}); "
           f"the β closest to GELU is {as_float(ge['best_beta']):.3f} with max "
           f"|swish_β − gelu| = {as_float(ge['max_gap']):.4f} (tolerance "
           f"{as_float(ge['tol']):g}; at β = 1, SiLU, it is "
           f"{as_float(ge.get('gap_at_beta_1')):.3f}; at quick-GELU's "
           f"{as_float(ge.get('quick_gelu_beta')):g}, "
           f"{as_float(ge.get('gap_at_quick_gelu_beta')):.4f}).")
    failed = [w for w, h in zip(("linear", "relu", "gelu"), holds, strict=True) if not h]
    why += (" All three hold." if not failed else f" Outside tolerance: {', '.join(failed)}.")
    return Verdict(cid, claim, src, verdict, why, dict(m))


ALL_CLAIMS = (claim_speed_order, claim_sigmoid_cost, claim_smooth_beats_relu, claim_relu_dies,
              claim_saturation, claim_swish_beta, claim_glu_quality, claim_glu_compute,
              claim_glu_best)


def _dense_only(results: Mapping) -> Mapping:
    """``results`` without its mixture-of-experts variants and their comparisons: the sources'
    claims are about the dense FFNs (an MoE of SwiGLU is not a contender for "the best FFN")."""
    variants = results.get("variants")
    if not isinstance(variants, list) or not any(
            isinstance(v, Mapping) and is_moe(v.get("name")) for v in variants):
        return results
    comps = results.get("comparisons")
    out = dict(results)
    out["variants"] = [v for v in variants if not (isinstance(v, Mapping) and is_moe(v.get("name")))]
    if isinstance(comps, list):
        out["comparisons"] = [c for c in comps if not (isinstance(c, Mapping) and (
            is_moe(c.get("a")) or is_moe(c.get("b"))))]
    return out


def check_claims(results: Mapping) -> list[Verdict]:
    """Every claim of the sources checked against ``results``, in a fixed order (mixture of
    experts variants left out: :func:`_dense_only`)."""
    results = _dense_only(results)
    return [check(results) for check in ALL_CLAIMS]
