"""Statistics over a lab ``results.json`` dict, and the sources' claims checked against it.

Pure functions: they read the dict that ``ffnlab compare`` writes (schema in DESIGN.md) and
never touch files or the training code. Conventions:

* bits per byte (bpb): lower is better; a difference ``a - b < 0`` means ``a`` is better.
* Differences between two variants are **paired by seed**: the same seed gives both runs the
  same batches and the same non-FFN initialisation, so most seed-to-seed variation cancels
  in ``bpb_a(seed) - bpb_b(seed)``. The spread reported is the sample std (ddof=1) of those
  per-seed differences, with a Student-t 95 % interval and the min/max.
* "Distinguishable from seed noise" means ``|mean| > 2 * std_error`` with at least 2 paired
  seeds; fewer than 3 seeds earns a caution, since a std from 2 numbers is itself very loose.
* Timings are single medians without a spread, so relative differences under
  :data:`TIMING_NOISE` are called "within noise".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SUPPORTED", "NOT_SUPPORTED", "INCONCLUSIVE", "TIMING_NOISE", "DEAD_MIN",
    "PairedDiff", "UnpairedDiff", "Verdict",
    "check_results", "variants_by_name", "ranking", "paired_difference",
    "unpaired_difference", "paired_vs_baseline", "best_variant", "missing_runs",
    "check_claims", "t_quantile_975", "ALL_CLAIMS", "GATED_TWINS", "SHAZEER_2020",
]

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

TIMING_NOISE = 0.05
"""Relative timing difference treated as noise: medians of repeated CPU timings on a shared
machine commonly move by a few percent between runs, so 5 % is the smallest gap we call real."""

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

_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Two-sided 95 % Student-t critical value for ``df`` degrees of freedom (table; 1.96 past 30)."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.96


def _num(x: Any) -> float:
    """A finite float, or NaN for None / non-numbers / inf."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan


def _std(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return math.nan
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


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
        m = _num(v.get("val_bpb_mean"))
        return (math.isnan(m), m if not math.isnan(m) else 0.0, v["name"])
    return sorted(results.get("variants", []), key=key)


def _good_runs(v: Mapping) -> dict[int, float]:
    """seed -> final val bpb for the runs that finished with a finite value and did not diverge."""
    out = {}
    for r in v.get("runs") or []:
        bpb = _num(r.get("val_bpb"))
        if r.get("diverged") or math.isnan(bpb) or not isinstance(r.get("seed"), int):
            continue
        out[r["seed"]] = bpb
    return out


@dataclass(frozen=True)
class PairedDiff:
    """Per-seed differences ``bpb[a] - bpb[b]`` over the seeds where both runs are usable."""

    a: str
    b: str
    seeds: tuple[int, ...] = ()
    diffs: tuple[float, ...] = ()
    dropped: tuple[int, ...] = ()  # seeds present for one side only, or diverged

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def mean(self) -> float:
        return sum(self.diffs) / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        return _std(self.diffs)

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n) if self.n >= 2 else math.nan

    @property
    def ci95(self) -> tuple[float, float]:
        """Student-t 95 % interval of the mean difference (NaN with fewer than 2 seeds)."""
        h = t_quantile_975(self.n - 1) * self.sem
        return (self.mean - h, self.mean + h)

    @property
    def min_max(self) -> tuple[float, float]:
        return (min(self.diffs), max(self.diffs)) if self.diffs else (math.nan, math.nan)

    @property
    def distinguishable(self) -> bool:
        """``|mean| > 2·std_error`` with at least 2 paired seeds."""
        if self.n < 2:
            return False
        return abs(self.mean) > 2 * self.sem if self.sem > 0 else self.mean != 0

    @property
    def caution(self) -> str:
        if self.n == 0:
            return "no seed where both runs finished"
        if self.n == 1:
            return "one seed only: seed noise cannot be estimated"
        if self.n < 3:
            return f"only {self.n} seeds: the spread itself is very uncertain"
        return ""

    def to_dict(self) -> dict:
        lo, hi = self.ci95
        mn, mx = self.min_max
        return {"a": self.a, "b": self.b, "n": self.n, "seeds": list(self.seeds),
                "diffs": list(self.diffs), "dropped": list(self.dropped), "mean": self.mean,
                "std": self.std, "sem": self.sem, "ci95": [lo, hi], "min": mn, "max": mx,
                "distinguishable": self.distinguishable, "caution": self.caution}


def paired_difference(results: Mapping, a: str, b: str) -> PairedDiff:
    """Paired ``bpb[a] - bpb[b]`` per seed (both variants must be in ``results``)."""
    by = variants_by_name(results)
    ra, rb = _good_runs(by[a]), _good_runs(by[b])
    seeds = tuple(sorted(set(ra) & set(rb)))
    all_seeds = {r.get("seed") for v in (by[a], by[b]) for r in v.get("runs") or []}
    dropped = tuple(sorted(s for s in all_seeds if isinstance(s, int) and s not in seeds))
    return PairedDiff(a, b, seeds, tuple(ra[s] - rb[s] for s in seeds), dropped)


@dataclass(frozen=True)
class UnpairedDiff:
    """``mean(bpb[a]) - mean(bpb[b])`` ignoring seeds, with Welch's standard error."""

    a: str
    b: str
    mean: float
    se: float
    na: int
    nb: int

    @property
    def distinguishable(self) -> bool:
        return self.na >= 2 and self.nb >= 2 and abs(self.mean) > 2 * self.se


def unpaired_difference(results: Mapping, a: str, b: str) -> UnpairedDiff:
    """The comparison that ignores pairing, to show what pairing buys (for tests and notes)."""
    by = variants_by_name(results)
    xa, xb = list(_good_runs(by[a]).values()), list(_good_runs(by[b]).values())
    if not xa or not xb:
        return UnpairedDiff(a, b, math.nan, math.nan, len(xa), len(xb))
    se = math.sqrt(_std(xa) ** 2 / len(xa) + _std(xb) ** 2 / len(xb))
    return UnpairedDiff(a, b, sum(xa) / len(xa) - sum(xb) / len(xb), se, len(xa), len(xb))


def paired_vs_baseline(results: Mapping, baseline: str = "relu") -> dict[str, PairedDiff]:
    """name -> paired difference against ``baseline`` ({} when the baseline is absent)."""
    by = variants_by_name(results)
    if baseline not in by:
        return {}
    return {n: paired_difference(results, n, baseline) for n in by if n != baseline}


def best_variant(results: Mapping) -> tuple[str | None, str | None, PairedDiff | None]:
    """(best, runner-up, paired best − runner-up) by ``val_bpb_mean``; Nones where absent."""
    ranked = [v["name"] for v in ranking(results) if not math.isnan(_num(v.get("val_bpb_mean")))]
    if not ranked:
        return None, None, None
    if len(ranked) == 1:
        return ranked[0], None, None
    return ranked[0], ranked[1], paired_difference(results, ranked[0], ranked[1])


def missing_runs(results: Mapping) -> dict[str, list]:
    """``{"missing": [(variant, seed)], "diverged": [(variant, seed)], "absent": [variant]}``.

    Expected seeds come from ``config.seeds``, expected variants from ``config.variants``; the
    results' own ``missing`` list (unfinished runs, when recorded) is merged in.
    """
    cfg = results.get("config") or {}
    seeds = [s for s in cfg.get("seeds") or [] if isinstance(s, int)]
    by = variants_by_name(results)
    missing, diverged = [], []
    for name, v in by.items():
        have = {r.get("seed") for r in v.get("runs") or []}
        missing += [(name, s) for s in seeds if s not in have]
        diverged += [(name, r.get("seed")) for r in v.get("runs") or []
                     if r.get("diverged") or math.isnan(_num(r.get("val_bpb")))]
    wanted = [n for n in cfg.get("variants") or [] if isinstance(n, str)]
    absent = [n for n in wanted if n not in by]
    missing += [(n, s) for n in absent for s in seeds]
    # The training side also lists the runs it did not finish, as {"variant", "seed"} objects.
    for m in results.get("missing") or []:
        if isinstance(m, Mapping) and isinstance(m.get("variant"), str):
            pair = (m["variant"], m.get("seed"))
            if pair not in missing:
                missing.append(pair)
            if m["variant"] not in by and m["variant"] not in absent:
                absent.append(m["variant"])
    return {"missing": missing, "diverged": diverged, "absent": absent}


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
    return _num(by[name].get(key)) if name in by else math.nan


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
    thr = _num(cfg.get("dead_threshold"))
    rule = (f"a unit counts as dead if its activation never exceeds {thr:g} on the validation "
            "set" if not math.isnan(thr) else "dead threshold not recorded")
    if isinstance(cfg.get("dead_rule"), str):  # the training side's own wording, when given
        rule = f"dead threshold {thr:g}: {cfg['dead_rule']}"
    dead = {n: _metric(by, n, "dead_fraction") for n in ("relu", "gelu", "swish") if n in by}
    nums = {"dead_fraction": dead, "dead_threshold": thr, "min_share": DEAD_MIN}
    if "runs" in by["relu"] and not _good_runs(by["relu"]):
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
    ranked = [v["name"] for v in ranking(results) if not math.isnan(_num(v.get("val_bpb_mean")))]
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
