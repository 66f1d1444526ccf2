"""The lab report's figures, rendered to PNG bytes from a results dict.

Each ``plot_*`` function returns the PNG as ``bytes`` (or ``None`` when the results hold
nothing to draw), so :mod:`ffnlab.lab.report` can both write the files atomically and embed the
same bytes in the HTML. Figures are built with matplotlib's object API on an Agg canvas: no
display, no pyplot state, nothing global changed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..numbers import as_float
from .analysis import ranking

__all__ = ["render_plots", "plot_learning_curves", "plot_final_bpb", "plot_speed",
           "plot_memory", "plot_dead_units", "PLOTS"]

PLAIN_COLOR, GATED_COLOR = "tab:blue", "tab:orange"


def _figure(title: str, *, ncols: int = 1, size=(7.5, 4.5)):
    fig = Figure(figsize=size, dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title)
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def _png(fig: Figure) -> bytes:
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


def plot_learning_curves(results: Mapping) -> bytes | None:
    """Validation bpb against step, one line per variant (mean over seeds, min–max band)."""
    fig, (ax,) = _figure("Learning curves: validation bits per byte (lower is better)")
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
    ys = [y for s, y in tail if s >= 0.25 * last] or [y for _, y in tail]
    lo, hi = min(ys), max(ys)
    ax.set_ylim(lo - 0.05 * (hi - lo + 1e-3), hi + 0.05 * (hi - lo + 1e-3))
    ax.set_xlabel("step")
    ax.set_ylabel("val bits per byte")
    ax.legend(fontsize=8, ncol=2, title="dashed: gated", title_fontsize=8)
    return _png(fig)


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
    fig, (ax,) = _figure("Final validation bits per byte (mean ± std over seeds; dots: seeds)")
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
    return _png(fig)


def plot_speed(results: Mapping) -> bytes | None:
    """Training throughput (tokens/s) and FFN-only fwd+bwd time (ms), side by side."""
    tps = _bars(results, "tokens_per_s", reverse=True)
    ms = _bars(results, "ffn_ms")
    if not tps and not ms:
        return None
    fig, axes = _figure("Speed on this machine (orange: gated)", ncols=2, size=(10, 4.5))
    if tps:
        _barh(axes[0], tps, "training tokens / s (higher is faster)", ".0f")
    if ms:
        _barh(axes[1], ms, "FFN fwd+bwd, ms (lower is faster)", ".2f")
    return _png(fig)


def plot_memory(results: Mapping) -> bytes | None:
    """Bytes the FFNs save for backward per token (parameters excluded)."""
    rows = _bars(results, "saved_bytes_per_token")
    if not rows:
        return None
    fig, (ax,) = _figure("Activation memory: bytes saved for backward per token")
    _barh(ax, rows, "bytes / token (lower is better; orange: gated)", ".0f")
    return _png(fig)


def plot_dead_units(results: Mapping) -> bytes | None:
    """Share of FFN hidden units (gate branch for gated) that never fire on the validation set."""
    rows = _bars(results, "dead_fraction", scale=100.0, reverse=True)
    if not rows:
        return None
    thr = as_float((results.get("config") or {}).get("dead_threshold"))
    note = f" (activation never > {thr:g})" if not math.isnan(thr) else ""
    fig, (ax,) = _figure(f"Dead hidden units{note}")
    _barh(ax, rows, "% of hidden units (orange: gated, gate branch)", ".1f")
    return _png(fig)


PLOTS: dict[str, tuple[Callable[[Mapping], bytes | None], str]] = {
    "learning_curves": (plot_learning_curves, "Learning curves"),
    "final_bpb": (plot_final_bpb, "Final bits per byte"),
    "speed": (plot_speed, "Speed"),
    "memory": (plot_memory, "Memory saved for backward"),
    "dead_units": (plot_dead_units, "Dead units"),
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
