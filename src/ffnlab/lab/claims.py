"""The sources' claims, each checked against a lab ``results.json`` dict.

Every checker takes the results dict and returns one :class:`Verdict` (supported / not
supported / inconclusive) with the numbers behind it; a claim about variants the run did not
include is "inconclusive" ("not measured"). Statistics come from :mod:`.analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..numbers import as_float
from .analysis import (
    TIMING_NOISE,
    PairedDiff,
    good_runs,
    paired_difference,
    ranking,
    variants_by_name,
)

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

DEAD_MIN = 0.01
"""Dead-unit share below which we say units did not die (1 % of the hidden units)."""

PARAM_MATCH = 0.05
"""Largest relative FFN-parameter gap for a gated/plain pair to count as parameter-matched
(2/3-hidden rounding leaves well under 1 %)."""

# Shazeer 2020, "GLU Variants Improve Transformer", table 1: log-perplexity on C4 after
# 65,536 steps (T5-base sized models). Quoted for scale; the lab's runs are far smaller.
SHAZEER_2020 = {"geglu": 1.942, "swiglu": 1.944, "relu": 1.997}

# gated variant -> the plain variant with the same activation (equal FFN parameters when the
# gated hidden is 2/3 of the plain one).
GATED_TWINS = {"reglu": "relu", "geglu": "gelu", "geglu_tanh": "gelu_tanh", "swiglu": "swish",
               "glu": "sigmoid"}


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


def _rel_order(ta: float, tb: float) -> str:
    """'<' if ta is faster than tb by more than TIMING_NOISE, '>' if slower, else '≈'."""
    rel = (tb - ta) / ta
    return "<" if rel > TIMING_NOISE else (">" if rel < -TIMING_NOISE else "≈")


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


def claim_speed_order(results: Mapping) -> Verdict:
    cid, claim = "speed_order", "Speed: ReLU is fastest, Swish next, GELU slowest."
    src = "速度:ReLU 最快,Swish 次之,GeLU 较慢"
    by = variants_by_name(results)
    names = ("relu", "swish", "gelu")
    if (v := _not_measured(cid, claim, src, names, by)) is not None:
        return v
    act = {n: _metric(by, n, "act_ns_per_element") for n in names}
    ffn = {n: _metric(by, n, "ffn_ms") for n in names}
    nums = {"act_ns_per_element": act, "ffn_ms": ffn, "noise": TIMING_NOISE,
            "matmul_flop_share": {n: _matmul_share(results, n) for n in names}}
    if any(math.isnan(t) or t <= 0 for t in act.values()):
        return Verdict(cid, claim, src, INCONCLUSIVE, "No activation timing was recorded.", nums)
    pairs = {"relu/swish": _rel_order(act["relu"], act["swish"]),
             "swish/gelu": _rel_order(act["swish"], act["gelu"]),
             "relu/gelu": _rel_order(act["relu"], act["gelu"])}
    nums["order"] = pairs
    shown = (f"activation alone: ReLU {act['relu']:.2f}, Swish {act['swish']:.2f}, "
             f"GELU {act['gelu']:.2f} ns/element (fwd+bwd)")
    if all(o == "<" for o in pairs.values()):
        verdict, why = SUPPORTED, f"Measured order matches: {shown}."
    elif any(o == ">" for o in pairs.values()):
        verdict, why = NOT_SUPPORTED, f"Measured order differs: {shown}."
    else:
        verdict, why = INCONCLUSIVE, (f"Some gaps are within the {TIMING_NOISE:.0%} timing "
                                      f"noise: {shown}.")
    model_note = ""
    if not any(math.isnan(t) or t <= 0 for t in ffn.values()):
        spread = (max(ffn.values()) - min(ffn.values())) / min(ffn.values())
        nums["ffn_ms_spread"] = spread
        share = min(nums["matmul_flop_share"].values())
        flops = f"; matmuls are {share:.1%} of the FFN's FLOPs" if not math.isnan(share) else ""
        if spread <= TIMING_NOISE:
            model_note = (f" At the model's size the whole FFN (fwd+bwd) takes "
                          f"{ffn['relu']:.2f}/{ffn['swish']:.2f}/{ffn['gelu']:.2f} ms, within "
                          f"{spread:.1%} of each other: the activation's cost is invisible there"
                          f"{flops}.")
        else:
            model_note = (f" Whole FFN (fwd+bwd): {ffn['relu']:.2f}/{ffn['swish']:.2f}/"
                          f"{ffn['gelu']:.2f} ms, a {spread:.1%} spread{flops}.")
    return Verdict(cid, claim, src, verdict, why + model_note, nums)


def _fmt_pd(pd: PairedDiff) -> str:
    """The paired difference in bpb, as text: mean, and std over seeds where there are 2+."""
    if pd.n == 0:
        return "n/a (no seed where both runs finished)"
    if pd.n == 1:
        return f"{pd.mean:+.4f} bpb (1 seed)"
    return f"{pd.mean:+.4f} bpb ± {pd.std:.4f} (std over {pd.n} seeds)"


def _pd_call(pds: Mapping[str, PairedDiff]) -> str:
    """supported if all are distinguishably negative, not supported if one is distinguishably
    positive, else inconclusive."""
    if all(p.distinguishable and p.mean < 0 for p in pds.values()):
        return SUPPORTED
    if any(p.distinguishable and p.mean > 0 for p in pds.values()):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def claim_smooth_beats_relu(results: Mapping) -> Verdict:
    cid, claim = "smooth_beats_relu", "Quality: GELU and Swish beat ReLU."
    src = "性能:在 NLP 任务上,GeLU 与 Swish 往往能在一定程度上优于 ReLU"
    by = variants_by_name(results)
    if (v := _not_measured(cid, claim, src, ("relu", "gelu", "swish"), by)) is not None:
        return v
    pds = {n: paired_difference(results, n, "relu") for n in ("gelu", "swish")}
    nums = {f"{n}_minus_relu": p.to_dict() for n, p in pds.items()}
    verdict = _pd_call(pds)
    label = {"gelu": "GELU", "swish": "Swish"}
    text = "; ".join(f"{label[n]} − ReLU = {_fmt_pd(p)}" for n, p in pds.items())
    caution = next((p.caution for p in pds.values() if p.caution), "")
    tail = {SUPPORTED: "both lower than ReLU beyond seed noise",
            NOT_SUPPORTED: "at least one is worse than ReLU beyond seed noise",
            INCONCLUSIVE: "not distinguishable from seed noise (|mean| ≤ 2·std-error)"}[verdict]
    why = f"Paired by seed: {text}; {tail}." + (f" Caution: {caution}." if caution else "")
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
    pds = {g: paired_difference(results, g, p) for g, p in pairs}
    ratio = {g: _metric(by, g, "params") / _metric(by, p, "params") for g, p in pairs}
    nums = {"pairs": {g: {"plain": p, "diff": pds[g].to_dict(), "param_ratio": ratio[g]}
                      for g, p in pairs}}
    better = [g for g, d in pds.items() if d.distinguishable and d.mean < 0]
    worse = [g for g, d in pds.items() if d.distinguishable and d.mean > 0]
    if better and not worse and 2 * len(better) >= len(pairs):
        verdict = SUPPORTED
    elif worse and len(worse) >= len(better):
        verdict = NOT_SUPPORTED
    else:
        verdict = INCONCLUSIVE
    text = "; ".join(f"{g} − {p} = {_fmt_pd(pds[g])} at {ratio[g]:.3f}× the params"
                     for g, p in pairs)
    why = (f"Paired by seed: {text}. Better beyond seed noise: {len(better)} of {len(pairs)}"
           f" pairs; worse: {len(worse)}.")
    unmatched = [g for g, x in ratio.items() if not abs(x - 1) <= PARAM_MATCH]
    if unmatched:  # then "per parameter" does not hold for those pairs
        why += (f" Caution: FFN parameters differ by more than {PARAM_MATCH:.0%} between "
                f"{', '.join(unmatched)} and the plain twin.")
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_glu_compute(results: Mapping) -> Verdict:
    cid = "glu_compute"
    claim = "GLU variants cost more compute than the plain FFN."
    src = "缺点:计算量更大,参数量也可能更多"
    by = variants_by_name(results)
    pairs = [(g, p) for g, p in _twins(by)
             if _metric(by, g, "ffn_ms") > 0 and _metric(by, p, "ffn_ms") > 0]
    if not pairs:
        return Verdict(cid, claim, src, INCONCLUSIVE, "Not measured: no gated variant was timed "
                       "together with its plain twin.", {})
    from ..sizing import ffn_flops_per_token

    dim = ((results.get("config") or {}).get("model") or {}).get("dim")
    nums: dict = {"pairs": {}, "noise": TIMING_NOISE}
    slower = 0
    parts = []
    for g, p in pairs:
        t = _metric(by, g, "ffn_ms") / _metric(by, p, "ffn_ms")
        tps = _metric(by, g, "tokens_per_s") / _metric(by, p, "tokens_per_s")
        try:
            flops = (ffn_flops_per_token(g, dim, by[g]["hidden"])["matmul"]
                     / ffn_flops_per_token(p, dim, by[p]["hidden"])["matmul"])
        except (ValueError, TypeError, KeyError):
            flops = math.nan
        nums["pairs"][g] = {"plain": p, "ffn_ms_ratio": t, "tokens_per_s_ratio": tps,
                            "matmul_flops_ratio": flops}
        slower += t > 1 + TIMING_NOISE
        parts.append(f"{g}/{p}: FFN time {t:.2f}×, throughput {tps:.2f}×, matmul FLOPs "
                     f"{flops:.2f}×")
    if 2 * slower > len(pairs):
        verdict, tail = SUPPORTED, "the gated FFN is measurably slower"
    elif slower == 0:
        verdict, tail = NOT_SUPPORTED, (f"at equal parameters (gated hidden ≈ 2/3) the gated "
                                        f"FFN costs the same within {TIMING_NOISE:.0%}; it is "
                                        "1.5× the FLOPs only at equal hidden size")
    else:
        verdict, tail = INCONCLUSIVE, "pairs disagree"
    return Verdict(cid, claim, src, verdict, f"{'; '.join(parts)}: {tail}.", nums)


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
    pd = paired_difference(results, best_fam, best_other)
    nums["diff"] = pd.to_dict()
    top = ranked[0]
    text = (f"top-ranked: {top}; {best_fam} − {best_other} (best outside the family) = "
            f"{_fmt_pd(pd)}")
    if top in fam and pd.distinguishable:
        verdict, tail = SUPPORTED, "ahead beyond seed noise"
    elif top not in fam and pd.distinguishable:
        verdict, tail = NOT_SUPPORTED, f"{best_other} is ahead beyond seed noise"
    else:
        verdict, tail = INCONCLUSIVE, "the gap is within seed noise"
    return Verdict(cid, claim, src, verdict, f"{text}: {tail}. ({ref}.)", nums)


ALL_CLAIMS = (claim_speed_order, claim_smooth_beats_relu, claim_relu_dies, claim_glu_quality,
              claim_glu_compute, claim_glu_best)


def check_claims(results: Mapping) -> list[Verdict]:
    """Every claim of the sources checked against ``results``, in a fixed order."""
    return [check(results) for check in ALL_CLAIMS]
