"""The sources' claims, each checked against a lab ``results.json`` dict.

Every checker takes the results dict and returns one :class:`Verdict`: ``supported``, ``not
supported`` or ``inconclusive``. The rule: a claim is inconclusive only when a measurement it
rests on is not resolved (an interval wider than the resolution, one that straddles a band
edge) and the resolved ones do not already decide it, or when the run did not measure it at
all ("Not measured: ..."). A difference shown to be smaller than the resolution is an answer:
for a claim that X beats Y, "equivalent within ±r" means ``not supported``.

* Quality claims rest on the paired comparisons of :mod:`.comparisons` (Student-t 95 %
  intervals of ``a − b`` in val bits per byte, verdicts at ``config.resolution_bpb``).
* Speed claims (:mod:`.claims_speed`) rest on paired time ratios with 95 % intervals, read
  against a band of ±:data:`SPEED_BAND` around 1.
* ``swish_beta`` and ``saturation`` rest on ``measured.swish_beta`` (:mod:`.swish_beta`) and
  ``measured.saturation`` (:func:`.measure.saturation`), computed without training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ...numbers import as_float
from ..stats.comparisons import Comparison, compare
from ..stats.table import good_runs, ranking, variants_by_name
from ..verdicts import DEFAULT_RESOLUTION, ClaimVerdict, PairVerdict
from .verdict import Verdict, label, metric, not_measured, twins

__all__ = ["DEAD_MIN", "PARAM_MATCH", "resolution", "claim_smooth_beats_relu", "claim_relu_dies",
           "claim_glu_quality", "claim_glu_best", "claim_saturation", "claim_swish_beta"]

DEAD_MIN = 0.01
"""Dead-unit share below which we say units did not die (1 % of the hidden units)."""


PARAM_MATCH = 0.05
"""Largest relative FFN-parameter gap for a gated/plain pair to count as parameter-matched
(2/3-hidden rounding leaves well under 1 %)."""


SHAZEER_2020 = {"geglu": 1.942, "swiglu": 1.944, "relu": 1.997}


def resolution(results: Mapping) -> float:
    """``config.resolution_bpb`` (bits per byte), or :data:`DEFAULT_RESOLUTION`."""
    r = as_float((results.get("config") or {}).get("resolution_bpb", DEFAULT_RESOLUTION))
    return r if math.isfinite(r) and r > 0 else DEFAULT_RESOLUTION


def _fmt_cmp(c: Comparison) -> str:
    """``a − b`` as text: the interval and what it says at the resolution."""
    head = f"{label(c.a)} − {label(c.b)}"
    if c.n == 0:
        return f"{head}: unresolved, no seed where both runs finished"
    if c.n == 1:
        return f"{head} = {c.mean:+.4f} bpb: unresolved, one seed only (no interval)"
    lo, hi = c.ci95
    ival = f"the 95 % interval [{lo:+.4f}, {hi:+.4f}] bpb ({c.n} seeds)"
    r = c.resolution
    return f"{head} = {c.mean:+.4f}: " + {
        PairVerdict.A_BETTER: f"{label(c.a)} better, {ival} lies below 0",
        PairVerdict.B_BETTER: f"{label(c.b)} better, {ival} lies above 0",
        PairVerdict.EQUIVALENT: f"no measurable difference: {ival} lies within ±{r:g}",
        PairVerdict.UNRESOLVED: f"unresolved: {ival} straddles 0 and reaches past ±{r:g}",
    }[c.verdict]


def _better_verdict(cs: Sequence[Comparison]) -> str:
    """For "a beats b" in every comparison: all "a better" -> supported; any "b better" or
    "equivalent" -> not supported; else (some unresolved) inconclusive."""
    if all(c.verdict == PairVerdict.A_BETTER for c in cs):
        return ClaimVerdict.SUPPORTED
    if any(c.verdict in (PairVerdict.B_BETTER, PairVerdict.EQUIVALENT) for c in cs):
        return ClaimVerdict.NOT_SUPPORTED
    return ClaimVerdict.INCONCLUSIVE


def claim_smooth_beats_relu(results: Mapping) -> Verdict:
    cid, claim = "smooth_beats_relu", "Quality: GELU and Swish beat ReLU."
    src = "性能:在 NLP 任务上,GeLU 与 Swish 往往能在一定程度上优于 ReLU"
    by = variants_by_name(results)
    if (v := not_measured(cid, claim, src, ("relu", "gelu", "swish"), by)) is not None:
        return v
    r = resolution(results)
    cs = {n: compare(results, n, "relu", r) for n in ("gelu", "swish")}
    nums = {"resolution_bpb": r, **{f"{n}_minus_relu": c.to_dict() for n, c in cs.items()}}
    verdict = _better_verdict(list(cs.values()))
    tail = {ClaimVerdict.SUPPORTED: "both better than ReLU",
            ClaimVerdict.NOT_SUPPORTED: "at least one is not better than ReLU",
            ClaimVerdict.INCONCLUSIVE: "not resolved at this resolution: more seeds would decide"}[verdict]
    text = "; ".join(_fmt_cmp(c) for c in cs.values())
    why = f"Paired by seed: {text}. {tail[0].upper()}{tail[1:]}."
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_relu_dies(results: Mapping) -> Verdict:
    cid, claim = "relu_dies", "ReLU units die (never fire); GELU and Swish do not."
    src = "稳定性:ReLU 有神经元死亡问题"
    by = variants_by_name(results)
    if (v := not_measured(cid, claim, src, ("relu",), by)) is not None:
        return v
    cfg = results.get("config") or {}
    thr = as_float(cfg.get("dead_threshold"))
    rule = (f"a unit counts as dead if its activation never exceeds {thr:g} on the validation "
            "set" if not math.isnan(thr) else "dead threshold not recorded")
    if isinstance(cfg.get("dead_rule"), str):  # the training side's own wording, when given
        rule = f"dead threshold {thr:g}: {cfg['dead_rule']}"
    dead = {n: metric(by, n, "dead_fraction") for n in ("relu", "gelu", "swish") if n in by}
    nums = {"dead_fraction": dead, "dead_threshold": thr, "min_share": DEAD_MIN}
    if "runs" in by["relu"] and not good_runs(by["relu"]):
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "No ReLU run finished.", nums)
    if math.isnan(dead["relu"]):
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "No dead-unit count was recorded.", nums)
    others = {n: d for n, d in dead.items() if n != "relu" and not math.isnan(d)}
    shown = ", ".join(f"{n} {d:.1%}" for n, d in dead.items() if not math.isnan(d))
    if dead["relu"] < DEAD_MIN:
        verdict, why = ClaimVerdict.NOT_SUPPORTED, f"ReLU units did not die here ({shown}; {rule})."
    elif any(d >= dead["relu"] for d in others.values()):
        verdict, why = ClaimVerdict.NOT_SUPPORTED, f"Others die as often as ReLU ({shown}; {rule})."
    else:
        extra = "" if others else " GELU/Swish were not measured for comparison."
        verdict, why = ClaimVerdict.SUPPORTED, f"Dead hidden units: {shown} ({rule}).{extra}"
    return Verdict(cid, claim, src, verdict, why, nums)


def claim_glu_quality(results: Mapping) -> Verdict:
    cid = "glu_quality"
    claim = "GLU variants are better per parameter than the plain FFN with the same activation."
    src = "GLU 优点:增强表示能力……有时能带来性能收益"
    by = variants_by_name(results)
    pairs = twins(by)
    if not pairs:
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: no gated variant ran "
                       "together with its plain twin (e.g. swiglu with swish).", {})
    r = resolution(results)
    cs = {g: compare(results, g, p, r) for g, p in pairs}
    ratio = {g: metric(by, g, "params") / metric(by, p, "params") for g, p in pairs}
    nums = {"resolution_bpb": r,
            "pairs": {g: {"plain": p, "comparison": cs[g].to_dict(), "param_ratio": ratio[g]}
                      for g, p in pairs}}
    count = {v: sum(c.verdict == v for c in cs.values()) for v in (PairVerdict.A_BETTER, PairVerdict.B_BETTER,
                                                                  PairVerdict.EQUIVALENT, PairVerdict.UNRESOLVED)}
    nums["counts"] = count
    n, better, unresolved = len(pairs), count[PairVerdict.A_BETTER], count[PairVerdict.UNRESOLVED]
    # The claim holds when at least half of the pairs are better and none is worse; an
    # equivalent pair is an answer (not better), an unresolved one could still go either way.
    if count[PairVerdict.B_BETTER] or 2 * (better + unresolved) < n:
        verdict = ClaimVerdict.NOT_SUPPORTED
    elif 2 * better >= n:
        verdict = ClaimVerdict.SUPPORTED
    else:
        verdict = ClaimVerdict.INCONCLUSIVE
    text = "; ".join(f"{_fmt_cmp(cs[g])}, at {ratio[g]:.3f}× the params" for g, _ in pairs)
    why = (f"Paired by seed: {text}. Gated better in {better} of {n} pairs, plain better in "
           f"{count[PairVerdict.B_BETTER]}, no measurable difference in {count[PairVerdict.EQUIVALENT]}, unresolved in "
           f"{unresolved} (the claim needs at least half better and none worse).")
    unmatched = [g for g, x in ratio.items() if not abs(x - 1) <= PARAM_MATCH]
    if unmatched:  # then "per parameter" does not hold for those pairs
        why += (f" Caution: FFN parameters differ by more than {PARAM_MATCH:.0%} between "
                f"{', '.join(unmatched)} and the plain twin.")
    return Verdict(cid, claim, src, verdict, why, nums)


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
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE,
                       f"Not measured: neither geglu nor swiglu ran. ({ref}.)", nums)
    best_fam = next((n for n in ranked if n in fam), None)
    best_other = next((n for n in ranked if n not in fam), None)
    if best_fam is None or best_other is None:
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Nothing to compare against "
                       f"(usable variants: {', '.join(ranked) or 'none'}). ({ref}.)", nums)
    r = resolution(results)
    c = compare(results, best_fam, best_other, r)
    nums.update(resolution_bpb=r, comparison=c.to_dict())
    verdict = {PairVerdict.A_BETTER: ClaimVerdict.SUPPORTED, PairVerdict.B_BETTER: ClaimVerdict.NOT_SUPPORTED, PairVerdict.EQUIVALENT: ClaimVerdict.NOT_SUPPORTED,
               PairVerdict.UNRESOLVED: ClaimVerdict.INCONCLUSIVE}[c.verdict]
    text = (f"best of the family by mean: {best_fam}, best outside it: {best_other}; "
            f"{_fmt_cmp(c)}")
    return Verdict(cid, claim, src, verdict, f"Top-ranked: {ranked[0]}; {text}. ({ref}.)", nums)


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
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: this results.json has no "
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
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: measured.saturation lacks "
                       f"one of {', '.join(names)} or the unit-variance setting.", {})
    # The claim, at initialisation: in both settings each saturating activation has more
    # saturated units than every non-saturating one, and a smaller gradient reaching W1.
    fails = [f"{label(s)} vs {label(o)} ({where})" for where in ("model", "random")
             for s in SATURATING for o in NON_SATURATING
             if not (share[where][s] > share[where][o] and grad[where][s] < grad[where][o])]
    verdict = ClaimVerdict.NOT_SUPPORTED if fails else ClaimVerdict.SUPPORTED
    thr = as_float(sat.get("threshold"))
    rel = {n: grad["model"][n] / grad["model"]["relu"] for n in names}
    nums = {"at": "initialisation (no training)", "threshold": thr, "share": share,
            "w1_grad_norm": grad, "w1_grad_vs_relu_model": rel, "failed_pairs": fails}
    pct = ", ".join(f"{label(n)} {_pct(share['model'][n])}" for n in names)
    grads = ", ".join(f"{label(n)} {rel[n]:.2f}×" for n in SATURATING + ("gelu", "swish"))
    why = (f"Measured at initialisation, not after training. In the lab's model (seed "
           f"{sat.get('seed', '?')}, random bytes) the share of hidden activations with |act'| "
           f"below {thr:.0%} of its maximum is {pct} (ReLU's is its exact-zero half); "
           f"unit-variance random pre-activations agree. The gradient reaching W1, relative to "
           f"ReLU's: {grads}.")
    stds = [as_float(x) for x in rnd.get("std") or []]
    if len(stds) > 1:
        try:
            grow = "; ".join(
                f"{label(n)} " + " / ".join(_pct(as_float(v)) for v in rnd["share"][n])
                for n in ("sigmoid", "tanh", "relu"))
            why += (f" Saturation grows with the pre-activations' scale: at std "
                    f"{' / '.join(f'{x:g}' for x in stds)} the shares are {grow}.")
        except (KeyError, TypeError, ValueError):
            pass
    if verdict == ClaimVerdict.NOT_SUPPORTED:
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
        return Verdict(cid, claim, src, ClaimVerdict.INCONCLUSIVE, "Not measured: this results.json has no "
                       "measured.swish_beta.", {})
    verdict = ClaimVerdict.SUPPORTED if all(holds) else ClaimVerdict.NOT_SUPPORTED
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
