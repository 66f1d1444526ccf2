"""The claims a sweep decides (``OUT/sweep.json``'s ``claims``), from each setting's results.

* ``width`` — "small tasks / limited resources: ReLU or Swish first; large models: try GELU or a
  gated FFN" (first source). Read as: the advantage of GELU and the gated FFNs over ReLU is
  there at the largest width and grows with width. Two parts, each from paired intervals:
  (i) at the largest width, each advanced variant − relu (``a better`` for at least half, none
  worse); (ii) the trend, per advanced variant, of its difference against relu between the
  smallest and the largest width: per seed ``t_s = d_small(s) − d_large(s)`` (``d = bpb_adv −
  bpb_relu``), Student-t over the seeds both widths ran. ``t > 0`` means the advantage is
  larger at the larger width.
* ``glu_small_data`` — "a GLU ... on data of modest size may overfit or bring no clear gain"
  (first source). Per gated variant and its plain twin (swiglu/swish, geglu/gelu, ...): the
  gated − plain interval at the smallest data fraction and the trend of that difference
  between the smallest and the largest fraction, read the same way; the train-minus-validation
  gap is reported as the overfitting measure.

Verdicts follow the lab's rule: a claim is inconclusive only when the intervals it rests on
are wider than the resolution (see :mod:`ffnlab.lab.stats.comparisons`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from ...numbers import as_float
from ..names import BASELINE, GATED_TWINS
from ..stats.comparisons import Comparison, compare
from ..stats.paired import paired_difference
from ..stats.table import ranking, variants_by_name
from ..stats.trend import Trend, fit_trend
from ..verdicts import ClaimVerdict, PairVerdict
from .robust import optimizer_of, robust_claims, robust_comparisons
from .verdict import Verdict

__all__ = ["sweep_content", "claim_width", "claim_small_data", "trend", "ADVANCED_PLAIN",
           "SWEEP_SCHEMA_VERSION"]

SWEEP_SCHEMA_VERSION = 1
ADVANCED_PLAIN = ("gelu", "gelu_tanh")
"""Plain variants the source counts as the "large model" choice, with every gated variant."""

WIDTH_SRC = ("小规模任务/资源有限:可以先用 ReLU 或者 Swish,实现简单、速度快。"
             "大模型/追求极致性能:可以尝试 GeLU 或者带门控机制的 FFN")
DATA_SRC = "在数据规模不大时,可能出现过拟合或收益不明显"


def _size(results: Mapping, key: str) -> float:
    cfg = results.get("config") or {}
    if key in ("dim", "n_layers"):
        default = 1 if key == "n_layers" else None
        return as_float((cfg.get("model") or {}).get(key, default))
    return as_float(cfg.get("data_fraction", 1.0))


def _shape(results: Mapping) -> tuple[float, float]:
    """``(width, depth)`` of the model."""
    return (_size(results, "dim"), _size(results, "n_layers"))


def _scale(results: Mapping) -> float:
    """A number proportional to the model's FFN parameters: width² × depth."""
    dim, layers = _shape(results)
    return dim * dim * layers


def _shape_label(results: Mapping) -> int | str:
    """The width (an int) for a one-layer model, else ``"<width>x<depth>"``."""
    dim, layers = _shape(results)
    return int(dim) if layers == 1 or math.isnan(layers) else f"{dim:g}x{layers:g}"


def _per_seed(results: Mapping, a: str, b: str) -> dict[int, float]:
    by = variants_by_name(results)
    if a not in by or b not in by:
        return {}
    pd = paired_difference(results, a, b)
    return dict(zip(pd.seeds, pd.diffs, strict=True))


def trend(small: Mapping, large: Mapping, a: str, b: str, resolution: float) -> Comparison:
    """Per seed, ``(a − b at small) − (a − b at large)``, as a Comparison (its ``ci95``);
    positive: ``a``'s advantage over ``b`` is larger in the large setting."""
    ds, dl = _per_seed(small, a, b), _per_seed(large, a, b)
    seeds = tuple(sorted(set(ds) & set(dl)))
    return Comparison(f"{a}−{b} (small)", f"{a}−{b} (large)", seeds,
                      tuple(ds[s] - dl[s] for s in seeds), resolution)


def _slope_text(t: Trend | None) -> str:
    if t is None:
        return "no fit (too few points)"
    lo, hi = t.slope_ci95
    text = f"slope {t.slope:+.4f} [{lo:+.4f}, {hi:+.4f}] bpb per doubling of FFN parameters"
    if t.crossing is not None and math.isfinite(t.crossing):
        where = "extrapolated" if t.extrapolated else "inside the ladder"
        ci = ("no bounded interval" if t.crossing_ci95 is None
              else f"[{t.crossing_ci95[0]:.3g}, {t.crossing_ci95[1]:.3g}]")
        text += f", crossing 0 at {t.crossing:.3g} parameters ({ci}; {where})"
    return text


def _ival(c: Comparison) -> str:
    if c.n < 2:
        return f"{c.mean:+.4f} ({c.n} seed{'s' if c.n != 1 else ''}, no interval)"
    lo, hi = c.ci95
    return f"{c.mean:+.4f} [{lo:+.4f}, {hi:+.4f}] ({c.n} seeds)"


def _trend_call(c: Comparison) -> str:
    """``grows`` / ``shrinks`` / ``flat`` (within ±resolution) / ``unresolved``."""
    v = c.verdict  # a − b in Comparison terms: here small − large
    return {PairVerdict.B_BETTER: "grows", PairVerdict.A_BETTER: "shrinks", PairVerdict.EQUIVALENT: "flat",
            PairVerdict.UNRESOLVED: "unresolved"}[v]


def _gap(results: Mapping, name: str) -> float:
    """Mean over seeds of val bpb minus final training loss in bits (overfitting shows as a
    growing gap); NaN when not recorded."""
    by = variants_by_name(results)
    gaps = []
    for r in (by.get(name) or {}).get("runs") or []:
        v, t = as_float(r.get("val_bpb")), as_float(r.get("final_train_loss"))
        if not (math.isnan(v) or math.isnan(t) or r.get("diverged")):
            gaps.append(v - t / math.log(2))
    return statistics.fmean(gaps) if gaps else math.nan


def ladder_points(settings: Sequence[Mapping], a: str, b: str) -> list[tuple[float, float]]:
    """``(FFN parameters of the model, a − b)`` for every seed of every setting that ran both:
    the points a size trend is fitted to (:func:`ffnlab.lab.stats.trend.fit_trend`). FFN
    parameters count every layer (per-layer parameters x depth), so width and depth both move
    along the axis."""
    pts = []
    for r in settings:
        by = variants_by_name(r)
        if a not in by or b not in by:
            continue
        layers = as_float(((r.get("config") or {}).get("model") or {}).get("n_layers", 1))
        params = as_float(by[a].get("params")) * (layers if math.isfinite(layers) else 1.0)
        if not (math.isfinite(params) and params > 0):
            continue
        pts += [(params, d) for d in _per_seed(r, a, b).values()]
    return pts


def size_trends(settings: Sequence[Mapping]) -> list[dict]:
    """Every comparison's fitted trend over the sizes of ``settings`` (those with enough points):
    :meth:`ffnlab.lab.stats.trend.Trend.to_dict` items, in the comparisons' order."""
    pairs = list(dict.fromkeys((c.get("a"), c.get("b")) for r in settings
                               for c in r.get("comparisons") or [] if isinstance(c, Mapping)))
    return [t.to_dict() for a, b in pairs if (t := _fit(settings, a, b)) is not None]


def _slope_call(t: Trend | None, resolution: float) -> str:
    """A fitted trend read like a trend between two sizes: ``grows`` (the slope's interval lies
    below 0: ``a``'s advantage grows with size), ``shrinks`` (above 0), ``flat`` (the change
    over the whole ladder lies within ±resolution), else ``unresolved``."""
    if t is None:
        return "unresolved"
    lo, hi = t.slope_ci95
    span = math.log2(t.sizes[-1] / t.sizes[0])
    if -resolution <= lo * span and hi * span <= resolution:
        return "flat"
    if hi < 0:
        return "grows"
    if lo > 0:
        return "shrinks"
    return "unresolved"


def _fit(settings: Sequence[Mapping], a: str, b: str) -> Trend | None:
    try:
        return fit_trend(a, b, ladder_points(settings, a, b))
    except ValueError:
        return None


def _decide(at_end: Sequence[Comparison], tr: Sequence[str]) -> str:
    """Supported: the gain is there where the claim says (``a better`` for at least half of
    ``at_end``, none worse) and grows (at least half ``grows``, none ``shrinks``/``flat``).
    Not supported: a comparison at the end is worse or equivalent for most, or a trend is
    ``shrinks`` / ``flat`` for most. Else inconclusive."""
    n = len(at_end)
    end = [c.verdict for c in at_end]
    if end.count(PairVerdict.B_BETTER) or 2 * (end.count(PairVerdict.EQUIVALENT)) > n:
        return ClaimVerdict.NOT_SUPPORTED
    if 2 * (tr.count("shrinks") + tr.count("flat")) > n:
        return ClaimVerdict.NOT_SUPPORTED
    if (2 * end.count(PairVerdict.A_BETTER) >= n and 2 * tr.count("grows") >= n
            and not tr.count("shrinks") and not tr.count("flat")):
        return ClaimVerdict.SUPPORTED
    return ClaimVerdict.INCONCLUSIVE


def claim_width(settings: Sequence[Mapping], resolution: float) -> Verdict:
    """See the module docstring; ``settings`` are results dicts of different widths."""
    cid, claim = "width", ("Small models: ReLU or Swish is enough; large models gain from GELU "
                           "or a gated FFN (the gain over ReLU grows with width).")
    runs = sorted(settings, key=_scale)
    small, large = runs[0], runs[-1]
    names = set(variants_by_name(small)) & set(variants_by_name(large))
    adv = [n for n in variants_by_name(large) if n in names and n != BASELINE
           and (n in ADVANCED_PLAIN or n in GATED_TWINS)]
    if BASELINE not in names or not adv:
        return Verdict(cid, claim, WIDTH_SRC, ClaimVerdict.INCONCLUSIVE, "Not measured: the sweep needs relu "
                       "and GELU or a gated variant at every width.", {})
    ws = [_shape_label(r) for r in runs]
    per_width = {_shape_label(r): {n: compare(r, n, BASELINE, resolution).to_dict()
                                   for n in adv if n in variants_by_name(r)} for r in runs}
    at_large = [compare(large, n, BASELINE, resolution) for n in adv]
    fits = [_fit(runs, n, BASELINE) for n in adv]
    calls = [_slope_call(t, resolution) for t in fits]
    verdict = _decide(at_large, calls)
    parts = [f"{n}: at dim {ws[-1]} {n} − relu = {_ival(c)} ({c.verdict}); over the widths the "
             f"advantage {call}, {_slope_text(t)}"
             for n, c, t, call in zip(adv, at_large, fits, calls, strict=True)]
    best = {_shape_label(r): (ranking(r) or [{}])[0].get("name") for r in runs}
    why = (f"Sizes (width or width x depth) {', '.join(map(str, ws))}; best by mean: "
           f"{', '.join(f'dim {w}: {b}' for w, b in best.items())}. " + "; ".join(parts) +
           f". Resolution ±{resolution:g} bpb.")
    nums = {"widths": ws, "resolution_bpb": resolution, "vs_relu": per_width,
            "trend": {n: None if t is None else t.to_dict() for n, t in zip(adv, fits, strict=True)},
            "best": best}
    return Verdict(cid, claim, WIDTH_SRC, verdict, why, nums)


def claim_small_data(settings: Sequence[Mapping], resolution: float) -> Verdict:
    """See the module docstring; ``settings`` are results dicts of different data fractions."""
    cid, claim = "glu_small_data", ("On little data a GLU may bring no clear gain over the plain "
                                    "FFN (its gain grows with the data).")
    runs = sorted(settings, key=lambda r: _size(r, "data_fraction"))
    small, large = runs[0], runs[-1]
    names = set(variants_by_name(small)) & set(variants_by_name(large))
    pairs = [(g, p) for g, p in GATED_TWINS.items() if g in names and p in names]
    if not pairs:
        return Verdict(cid, claim, DATA_SRC, ClaimVerdict.INCONCLUSIVE, "Not measured: the sweep needs a gated "
                       "variant and its plain twin (e.g. swiglu and swish).", {})
    fr = [_size(r, "data_fraction") for r in runs]
    at_small = [compare(small, g, p, resolution) for g, p in pairs]
    at_large = [compare(large, g, p, resolution) for g, p in pairs]
    trends = [trend(small, large, g, p, resolution) for g, p in pairs]
    # The claim is "no clear gain on little data": it holds where the small-data comparison is
    # not "a better", or where the gain grows with data; it fails where the gated FFN is
    # already clearly better on little data and the gain does not grow.
    calls = []
    for cs, t in zip(at_small, trends, strict=True):
        if cs.verdict in (PairVerdict.EQUIVALENT, PairVerdict.B_BETTER) or _trend_call(t) == "grows":
            calls.append(ClaimVerdict.SUPPORTED)
        elif cs.verdict == PairVerdict.A_BETTER and _trend_call(t) in ("flat", "shrinks"):
            calls.append(ClaimVerdict.NOT_SUPPORTED)
        else:
            calls.append(ClaimVerdict.INCONCLUSIVE)
    if 2 * calls.count(ClaimVerdict.SUPPORTED) > len(calls):
        verdict = ClaimVerdict.SUPPORTED
    elif 2 * calls.count(ClaimVerdict.NOT_SUPPORTED) > len(calls):
        verdict = ClaimVerdict.NOT_SUPPORTED
    else:
        verdict = ClaimVerdict.INCONCLUSIVE
    parts = []
    for (g, p), cs, cl, t in zip(pairs, at_small, at_large, trends, strict=True):
        parts.append(f"{g} − {p}: at {fr[0]:.0%} of the data {_ival(cs)} ({cs.verdict}), at "
                     f"{fr[-1]:.0%} {_ival(cl)} ({cl.verdict}); the gain {_trend_call(t)} with "
                     f"more data, (small − large) = {_ival(t)}; val − train gap "
                     f"{_gap(small, g):+.3f} / {_gap(large, g):+.3f} bpb")
    why = "; ".join(parts) + f". Resolution ±{resolution:g} bpb."
    nums = {"fractions": fr, "resolution_bpb": resolution,
            "pairs": {g: {"plain": p, "small": cs.to_dict(), "large": cl.to_dict(),
                          "trend": t.to_dict(), "gap_small": _gap(small, g),
                          "gap_large": _gap(large, g)}
                      for (g, p), cs, cl, t in zip(pairs, at_small, at_large, trends, strict=True)}}
    return Verdict(cid, claim, DATA_SRC, verdict, why, nums)


def _setting_row(results: Mapping, label: str) -> dict:
    rk = ranking(results)
    return {
        "label": label, "dim": int(_size(results, "dim")),
        "layers": int(_size(results, "n_layers")), "optimizer": optimizer_of(results),
        "data_fraction": _size(results, "data_fraction"), "status": results.get("status"),
        "best": rk[0]["name"] if rk else None,
        "val_bpb_mean": {v["name"]: v.get("val_bpb_mean") for v in results.get("variants") or []},
        "comparisons": results.get("comparisons") or [],
        "seeding": (results.get("config") or {}).get("seeding") or {},
    }


def _sweep_claims_across(claims: Sequence[Mapping]) -> list[dict]:
    """The claims the sweep itself decides (width, small data), each decided within one optimizer,
    set side by side across optimizers like :func:`.robust.robust_claims` (``dim``,
    ``layers`` and ``data_fraction`` ``None``: the claim spans the swept sizes)."""
    by_id: dict[str, dict[str, Mapping]] = {}
    for c in claims:
        if c.get("optimizer") is not None:
            by_id.setdefault(c["id"], {})[c["optimizer"]] = c
    out = []
    for cid, per in by_id.items():
        if len(per) < 2:
            continue
        verdicts = {opt: c.get("verdict") for opt, c in per.items()}
        robust = len(set(verdicts.values())) == 1
        out.append({"id": cid, "claim": next(iter(per.values())).get("claim"), "dim": None,
                    "layers": None, "data_fraction": None, "by_optimizer": verdicts,
                    "robust": robust, "verdict": next(iter(verdicts.values())) if robust else None})
    return out


def sweep_content(done: Sequence[tuple], *, status: str, resolution: float,
                  finished: str | None = None) -> dict:
    """``sweep.json``: one row per finished setting ``(Setting, results)`` and the claims the
    swept sizes decide (width with two or more widths, small data with two or more fractions);
    ``finished``: the time stamp to record."""
    results = [r for _, r in done]
    rows = [_setting_row(r, s.label) for s, r in done]
    claims, trends = [], []
    # The size claims are read within one optimizer at a time (each its own recipe).
    for opt in dict.fromkeys(optimizer_of(r) for r in results):
        same = [r for r in results if optimizer_of(r) == opt]
        shapes = {_shape(r) for r in same}
        fracs = {_size(r, "data_fraction") for r in same}
        tag = {} if opt is None else {"optimizer": opt}
        if len(shapes) >= 2:
            for f in sorted(fracs):
                group = [r for r in same if _size(r, "data_fraction") == f]
                if len({_scale(r) for r in group}) >= 2:
                    claims.append({**claim_width(group, resolution).to_dict(), **tag})
                    trends += [{**t, **tag, "data_fraction": f} for t in size_trends(group)]
        if len(fracs) >= 2:
            for d in sorted(shapes):
                group = [r for r in same if _shape(r) == d]
                if len({_size(r, "data_fraction") for r in group}) >= 2:
                    claims.append({**claim_small_data(group, resolution).to_dict(), **tag})
    content = {"schema_version": SWEEP_SCHEMA_VERSION, "status": status, "finished": finished,
               "resolution_bpb": resolution, "settings": rows, "claims": claims}
    if trends:
        content["trends"] = trends
    if len({optimizer_of(r) for r in results}) >= 2:
        content["robust"] = robust_comparisons(results)
        content["robust_claims"] = robust_claims(results) + _sweep_claims_across(claims)
    return content
