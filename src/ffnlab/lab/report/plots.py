"""The lab report's figures, rendered to PNG bytes from a results dict.

Each ``plot_*`` function returns the PNG as ``bytes`` (or ``None`` when the results hold
nothing to draw), so :mod:`ffnlab.lab.report.document` can both write the files atomically and embed the
same bytes in the HTML. Figures are built with matplotlib's object API on an Agg canvas: no
display, no pyplot state, nothing global changed.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Callable, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ...numbers import as_float
from ..stats.table import good_runs, ranking
from ..verdicts import PairVerdict

__all__ = ["render_plots", "plot_learning_curves", "plot_quality_vs_time", "plot_final_bpb",
           "plot_speed", "plot_memory", "plot_dead_units", "plot_forest", "forest_rows",
           "plot_load_balance", "time_series", "PLOTS"]

PLAIN_COLOR, GATED_COLOR = "tab:blue", "tab:orange"


def figure(title: str, *, ncols: int = 1, size=(7.5, 4.5)):
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _points(curve) -> list[tuple[float, float]]:
    """Finite (step, bpb) pairs of a curve; anything malformed is skipped."""
    out = []
    for p in curve or []:
        if isinstance(p, (list, tuple)) and len(p) == 2:
            s, y = as_float(p[0]), as_float(p[1])
            if not (math.isnan(s) or math.isnan(y)):
                out.append((s, y))
    return out


def _band(v: Mapping) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """(steps, mean, low, high) over the seeds' curves at the steps they share; None if < 2."""
    curves = [dict(_points(r.get("curve"))) for r in v.get("runs") or [] if not r.get("diverged")]
    curves = [c for c in curves if c]
    if len(curves) < 2:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        return None
    cols = [[c[s] for c in curves] for s in steps]
    return (steps, [sum(c) / len(c) for c in cols], [min(c) for c in cols],
            [max(c) for c in cols])


def _mean_curve(v: Mapping) -> list[tuple[float, float]]:
    """The variant's mean curve over seeds (at the steps they share), else its stored curve."""
    band = _band(v)
    if band is not None:
        return list(zip(band[0], band[1], strict=True))
    return _points(v.get("curve"))


def _focus_ylim(ax, ys: list[float]) -> None:
    if ys:
        lo, hi = min(ys), max(ys)
        ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3))


def plot_learning_curves(results: Mapping) -> bytes | None:
    """Validation bpb against step, one line per variant (mean over seeds, min–max band)."""
    fig, (ax,) = figure("Learning curves: validation bits per byte (lower is better)")
    drawn, tail = 0, []
    for v in ranking(results):
        band = _band(v)
        if band is not None:
            steps, mean, lo, hi = band
            ax.fill_between(steps, lo, hi, alpha=0.15)
        else:
            pts = _points(v.get("curve"))
            if not pts:
                continue
            steps, mean = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(steps, mean, lw=1.5, label=v["name"], ls="--" if v.get("gated") else "-")
        tail += list(zip(steps, mean, strict=True))
        drawn += 1
    if not drawn:
        return None
    # Early evaluations (~8 bpb at step 0: uniform over 256 bytes) would flatten the part
    # where variants differ, so the y range covers the last three quarters of training.
    last = max(s for s, _ in tail)
    _focus_ylim(ax, [y for s, y in tail if s >= 0.25 * last] or [y for _, y in tail])
    ax.set_xlabel("step")
    ax.set_ylabel("val bits per byte")
    ax.legend(fontsize=8, ncol=2, title="dashed: gated", title_fontsize=8)
    return png(fig)


def _bars(results: Mapping, key: str, *, scale: float = 1.0, reverse: bool = False):
    rows = [(v["name"], as_float(v.get(key)) * scale, bool(v.get("gated")))
            for v in results.get("variants", [])]
    rows = [r for r in rows if not math.isnan(r[1])]
    return sorted(rows, key=lambda r: r[1], reverse=reverse)


def _barh(ax, rows, xlabel: str, fmt: str) -> None:
    names = [r[0] for r in rows]
    vals = [r[1] for r in rows]
    colors = [GATED_COLOR if r[2] else PLAIN_COLOR for r in rows]
    ax.barh(names, vals, color=colors)
    ax.invert_yaxis()  # first row on top
    for i, x in enumerate(vals):
        ax.text(x, i, " " + format(x, fmt), va="center", fontsize=7)
    ax.set_xlabel(xlabel)
    ax.margins(x=0.18)


def plot_final_bpb(results: Mapping) -> bytes | None:
    """Final validation bpb per variant, mean with ±std error bars and each seed as a dot."""
    ranked = [v for v in ranking(results) if not math.isnan(as_float(v.get("val_bpb_mean")))]
    if not ranked:
        return None
    fig, (ax,) = figure("Final validation bits per byte (mean ± std over seeds; dots: seeds)")
    for i, v in enumerate(ranked):
        std = as_float(v.get("val_bpb_std"))
        color = GATED_COLOR if v.get("gated") else PLAIN_COLOR
        ax.errorbar(as_float(v["val_bpb_mean"]), i, xerr=0.0 if math.isnan(std) else std, fmt="o",
                    color=color, capsize=4, ms=7)
        seeds = [as_float(r.get("val_bpb")) for r in v.get("runs") or [] if not r.get("diverged")]
        seeds = [s for s in seeds if not math.isnan(s)]
        ax.plot(seeds, [i + 0.18] * len(seeds), ".", color="0.4", ms=4)
    ax.set_yticks(range(len(ranked)), [v["name"] for v in ranked])
    ax.invert_yaxis()
    ax.set_xlabel("val bits per byte (lower is better; orange: gated)")
    return png(fig)


def plot_speed(results: Mapping) -> bytes | None:
    """Training throughput (tokens/s) and FFN-only fwd+bwd time (ms), side by side."""
    tps = _bars(results, "tokens_per_s", reverse=True)
    ms = _bars(results, "ffn_ms")
    if not tps and not ms:
        return None
    fig, axes = figure("Speed on this machine (orange: gated)", ncols=2, size=(10, 4.5))
    if tps:
        _barh(axes[0], tps, "training tokens / s (higher is faster)", ".0f")
    if ms:
        _barh(axes[1], ms, "FFN fwd+bwd, ms (lower is faster)", ".2f")
    return png(fig)


def plot_memory(results: Mapping) -> bytes | None:
    """Bytes the FFNs save for backward per token (parameters excluded)."""
    rows = _bars(results, "saved_bytes_per_token")
    if not rows:
        return None
    fig, (ax,) = figure("Activation memory: bytes saved for backward per token")
    _barh(ax, rows, "bytes / token (lower is better; orange: gated)", ".0f")
    return png(fig)


def plot_dead_units(results: Mapping) -> bytes | None:
    """Share of FFN hidden units (gate branch for gated) that never fire on the validation set."""
    rows = _bars(results, "dead_fraction", scale=100.0, reverse=True)
    if not rows:
        return None
    thr = as_float((results.get("config") or {}).get("dead_threshold"))
    note = f" (activation never > {thr:g})" if not math.isnan(thr) else ""
    fig, (ax,) = figure(f"Dead hidden units{note}")
    _barh(ax, rows, "% of hidden units (orange: gated, gate branch)", ".1f")
    return png(fig)


def time_series(results: Mapping) -> list[dict]:
    """Per variant with timed runs (ranking order): its mean curve against wall seconds.

    A variant's seconds per step are the mean ``wall_s`` of its runs that did not diverge over
    ``config.steps`` (its curve's last step when that is missing). Each item: ``name``,
    ``gated``, ``curve`` [(seconds, bpb)], ``wall`` / ``wall_std`` (seconds, mean and std over
    those runs) and ``bpb`` / ``bpb_std`` (final val bpb over the usable seeds; NaN if none).
    """
    total = as_float((results.get("config") or {}).get("steps"))
    out = []
    for v in ranking(results):
        walls = [as_float(r.get("wall_s")) for r in v.get("runs") or [] if not r.get("diverged")]
        walls = [w for w in walls if w > 0]
        if not walls:
            continue
        wall = statistics.fmean(walls)
        curve = _mean_curve(v)
        steps = total if total > 0 else max((s for s, _ in curve), default=math.nan)
        per_step = wall / steps if steps > 0 else math.nan
        bpbs = list(good_runs(v).values())
        out.append({
            "name": v["name"], "gated": bool(v.get("gated")), "wall": wall,
            "wall_std": statistics.stdev(walls) if len(walls) > 1 else math.nan,
            "curve": [] if math.isnan(per_step) else [(s * per_step, y) for s, y in curve],
            "bpb": statistics.fmean(bpbs) if bpbs else math.nan,
            "bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else math.nan})
    return out


def plot_quality_vs_time(results: Mapping) -> bytes | None:
    """Mean learning curve per variant against training wall time; final bpb ± std at the end.

    Equal FFN parameters do not mean equal time: a gated FFN or a costlier activation reaches
    the same step later, which this figure shows and the step-axis learning curves hide.
    """
    series = time_series(results)
    if not series:
        return None
    fig, (ax,) = figure("Quality against training wall time (mean over seeds)")
    ys = []
    for s in series:
        color = None
        if s["curve"]:
            xs, cys = zip(*s["curve"], strict=True)
            (line,) = ax.plot(xs, cys, lw=1.5, ls="--" if s["gated"] else "-", label=s["name"])
            color = line.get_color()
            ys += [y for x, y in s["curve"] if x >= 0.25 * s["wall"]]
        if math.isnan(s["bpb"]):
            continue
        yerr, xerr = (0.0 if math.isnan(e) else e for e in (s["bpb_std"], s["wall_std"]))
        ax.errorbar(s["wall"], s["bpb"], yerr=yerr, xerr=xerr, fmt="o", color=color, ms=5,
                    capsize=3, label="_nolegend_" if s["curve"] else s["name"])
        ys += [s["bpb"] - yerr, s["bpb"] + yerr]
    _focus_ylim(ax, ys)
    ax.set_xlim(left=0)
    ax.set_xlabel("training wall time, s (dot: final bpb ± std over seeds, at the mean time "
                  "± std)")
    ax.set_ylabel("val bits per byte")
    ax.legend(fontsize=8, ncol=2, title="dashed: gated", title_fontsize=8)
    return png(fig)


# verdict -> (colour, marker) in the forest plot
_VERDICT_STYLE = {PairVerdict.A_BETTER: ("tab:green", "o"), PairVerdict.B_BETTER: ("tab:red", "s"),
                  PairVerdict.EQUIVALENT: ("tab:blue", "D"), PairVerdict.UNRESOLVED: ("0.45", "^")}


def forest_rows(results: Mapping) -> list[tuple[str, float, float, float, str]]:
    """``(label "a − b", mean, low, high, verdict)`` per comparison with a finite interval."""
    rows = []
    for c in results.get("comparisons") or []:
        ci = c.get("ci95") if isinstance(c, Mapping) else None
        if not isinstance(ci, (list, tuple)) or len(ci) != 2:
            continue
        lo, hi, mean = as_float(ci[0]), as_float(ci[1]), as_float(c.get("mean"))
        if math.isnan(lo) or math.isnan(hi) or math.isnan(mean):
            continue
        verdict = PairVerdict.of(c.get("verdict"), PairVerdict.UNRESOLVED)
        rows.append((f"{c.get('a', '?')} − {c.get('b', '?')}", mean, lo, hi, verdict))
    return rows


def plot_forest(results: Mapping) -> bytes | None:
    """Each paired comparison's mean and 95 % interval, against a ±resolution band around 0."""
    rows = forest_rows(results)
    if not rows:
        return None
    skipped = len(results.get("comparisons") or []) - len(rows)
    title = "Paired differences a − b: mean and 95 % interval over seeds"
    if skipped:
        title += (f"\n({skipped} comparison{'s' if skipped > 1 else ''} with fewer than 2 "
                  f"paired seeds, no interval: not shown)")
    fig, (ax,) = figure(title, size=(8.5, max(3.0, 1.4 + 0.36 * len(rows))))
    res = as_float((results.get("config") or {}).get("resolution_bpb"))
    if res > 0:
        ax.axvspan(-res, res, color="0.8", alpha=0.5, lw=0, label=f"±{res:g} (resolution)")
    ax.axvline(0.0, color="0.2", lw=1)
    seen = set()
    for i, (_label, mean, lo, hi, verdict) in enumerate(rows):
        color, marker = _VERDICT_STYLE[verdict]
        ax.hlines(i, lo, hi, color=color, lw=2)
        ax.plot([mean], [i], ls="none", marker=marker, color=color, ms=6,
                label="_nolegend_" if verdict in seen else verdict)
        seen.add(verdict)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    ax.set_xlabel("difference in val bits per byte (negative: a better)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside, not over rows
    return png(fig)


def _sorted_shares(v: Mapping) -> list[list[float]]:
    """Every (run, layer) load of an MoE variant, each sorted busiest first."""
    out = []
    for r in v.get("runs") or []:
        lb = r.get("load_balance") if isinstance(r, Mapping) else None
        shares = lb.get("share") if isinstance(lb, Mapping) else None
        for layer in shares if isinstance(shares, list) else []:
            xs = [as_float(x) for x in layer] if isinstance(layer, list) else []
            if xs and not any(math.isnan(x) for x in xs):
                out.append(sorted(xs, reverse=True))
    return out


def plot_load_balance(results: Mapping) -> bytes | None:
    """Per MoE variant: the share of routed tokens of each expert on the validation set at the
    end of training, busiest first (bars: mean over seeds and layers; dots: each seed's layer),
    against the uniform share 1/E."""
    rows = [(v, _sorted_shares(v)) for v in results.get("variants", [])
            if isinstance(v.get("load_balance"), Mapping)]
    rows = [(v, s) for v, s in rows if s]
    if not rows:
        return None
    fig, axes = figure("Load balance: share of routed tokens per expert\n(validation set, end "
                        "of training)", ncols=len(rows), size=(max(6.5, 4.5 * len(rows)), 4.5))
    for ax, (v, shares) in zip(axes, rows, strict=True):
        n = len(shares[0])
        mean = [statistics.fmean(col) for col in zip(*shares, strict=True)]
        ax.bar(range(n), mean, color=GATED_COLOR if v.get("gated") else PLAIN_COLOR, alpha=0.8)
        for row in shares:
            ax.plot(range(n), row, ".", color="0.25", ms=4)
        ax.axhline(1.0 / n, color="0.2", ls="--", lw=1, label=f"uniform 1/{n}")
        lb = v["load_balance"]
        cv, mom = as_float(lb.get("cv")), as_float(lb.get("max_over_mean"))
        ax.set_title(f"{v['name']}: cv {cv:.2f}, max/mean {mom:.2f}", fontsize=9)
        ax.set_xticks(range(n), [str(i + 1) for i in range(n)])
        ax.set_xlabel("expert, busiest first")
        ax.set_ylabel("share of routed (token, expert) slots")
        ax.legend(fontsize=8)
    return png(fig)


PLOTS: dict[str, tuple[Callable[[Mapping], bytes | None], str]] = {
    "learning_curves": (plot_learning_curves, "Learning curves"),
    "quality_vs_time": (plot_quality_vs_time, "Quality against training wall time"),
    "final_bpb": (plot_final_bpb, "Final bits per byte"),
    "speed": (plot_speed, "Speed"),
    "memory": (plot_memory, "Memory saved for backward"),
    "dead_units": (plot_dead_units, "Dead units"),
    "forest": (plot_forest, "Paired comparisons: 95 % intervals against the resolution"),
    "load_balance": (plot_load_balance, "Mixture of experts: load per expert"),
}
"""stem -> (plot function, caption)."""


def render_plots(results: Mapping) -> dict[str, bytes]:
    """stem -> PNG bytes for every plot that has something to draw."""
    out = {}
    for stem, (fn, _caption) in PLOTS.items():
        png = fn(results)
        if png is not None:
            out[stem] = png
    return out
