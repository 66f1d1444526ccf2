"""A sweep's report: ``sweep.md`` and one PNG per swept size (``gain_vs_dim.png``,
``gain_vs_data.png``): each paired difference against its baseline, with its 95 % interval,
as a function of the size, over the ±resolution band. Each setting keeps its own full report
in its folder."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ... import files
from ...numbers import as_float
from .plots import figure, png

__all__ = ["write_sweep_report", "plot_gain", "plot_trends", "render_sweep_markdown"]

_AXES = {"dim": ("model width (dim)", "gain_vs_dim"),
         "data_fraction": ("share of the training split", "gain_vs_data")}


def _series(rows, key: str, other: str, other_value) -> dict[str, list[tuple[float, float, float, float]]]:
    """``"a − b" -> [(size, mean, low, high)]`` over the rows whose ``other`` size is fixed."""
    out: dict[str, list] = {}
    several = len({row.get("optimizer") for row in rows}) > 1
    for row in rows:
        if row.get(other) != other_value:
            continue
        tag = f" ({row.get('optimizer')})" if several else ""
        for c in row.get("comparisons") or []:
            lo, hi = (as_float(x) for x in (c.get("ci95") or [math.nan, math.nan]))
            mean = as_float(c.get("mean"))
            if math.isnan(mean):
                continue
            out.setdefault(f"{c['a']} − {c['b']}{tag}", []).append(
                (as_float(row[key]), mean, lo, hi))
    return {k: sorted(v) for k, v in out.items() if len(v) >= 2}


def plot_gain(content: Mapping, key: str) -> bytes | None:
    """The differences against the swept ``key`` ("dim" or "data_fraction"); None when fewer
    than two values of it were run."""
    rows = content.get("settings") or []
    values = sorted({row.get(key) for row in rows})
    if len(values) < 2:
        return None
    other = "data_fraction" if key == "dim" else "dim"
    fixed = max({row.get(other) for row in rows})
    series = _series(rows, key, other, fixed)
    if not series:
        return None
    label, _ = _AXES[key]
    r = as_float(content.get("resolution_bpb"))
    fig, (ax,) = figure(f"Paired differences (a − b, val bpb) against the {label}", size=(8, 5))
    if math.isfinite(r):
        ax.axhspan(-r, r, color="tab:blue", alpha=0.08, label=f"±{r:g} (resolution)")
    ax.axhline(0, color="0.3", lw=0.8)
    n = len(series)
    for i, (name, pts) in enumerate(sorted(series.items())):
        xs = [p[0] for p in pts]
        # Spread the markers a little sideways so that intervals at one size do not overlap.
        shift = [x * (1 + 0.02 * (i - (n - 1) / 2)) if key == "dim" else
                 x + 0.01 * (i - (n - 1) / 2) for x in xs]
        ys = [p[1] for p in pts]
        err = [[max(0.0, p[1] - p[2]) if math.isfinite(p[2]) else 0.0 for p in pts],
               [max(0.0, p[3] - p[1]) if math.isfinite(p[3]) else 0.0 for p in pts]]
        ax.errorbar(shift, ys, yerr=err, marker="o", ms=4, capsize=3, lw=1.2,
                    ls="--" if not name.split(" − ")[1].startswith("relu") else "-", label=name)
    if key == "dim":
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [str(v) for v in values])
    ax.set_xlabel(f"{label} (negative: a better; bars: 95 % Student-t intervals over seeds)")
    ax.set_ylabel("a − b, val bits per byte")
    ax.legend(fontsize=7, ncol=2)
    return png(fig)


def plot_trends(content: Mapping) -> bytes | None:
    """Each comparison's per-seed differences against the model's FFN parameters (log2 axis)
    with its fitted line; None without trends."""
    trends = [t for t in content.get("trends") or [] if isinstance(t, Mapping) and t.get("points")]
    if not trends:
        return None
    r = as_float(content.get("resolution_bpb"))
    fig, (ax,) = figure("Paired differences against model size, with the fitted lines",
                        size=(8, 5))
    if math.isfinite(r):
        ax.axhspan(-r, r, color="tab:blue", alpha=0.08, label=f"±{r:g} (resolution)")
    ax.axhline(0, color="0.3", lw=0.8)
    for i, t in enumerate(trends):
        color = f"C{i % 10}"
        pts = [(as_float(p), as_float(d)) for p, d in t["points"]]
        ax.scatter([p for p, _ in pts], [d for _, d in pts], s=10, color=color, alpha=0.5)
        sizes = [as_float(x) for x in t.get("sizes") or []]
        slope, icpt = as_float(t.get("slope_per_doubling")), as_float(t.get("intercept"))
        xs = [sizes[0], sizes[-1]]
        opt = f" ({t['optimizer']})" if t.get("optimizer") else ""
        ax.plot(xs, [icpt + slope * math.log2(x) for x in xs], color=color,
                label=f"{t.get('a')} − {t.get('b')}{opt}: {slope:+.4f}/doubling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("FFN parameters of the model (log scale)")
    ax.set_ylabel("a − b, val bits per byte (negative: a better)")
    ax.legend(fontsize=7, ncol=2)
    return png(fig)


def _cell(row: Mapping, c: Mapping) -> str:
    m, h = as_float(c.get("mean")), as_float(c.get("half_width"))
    return f"{m:+.3f} ± {h:.3f}" if math.isfinite(h) else f"{m:+.3f}"


def render_sweep_markdown(content: Mapping, images: list[tuple[str, str]]) -> str:
    rows = content.get("settings") or []
    pairs = list(dict.fromkeys(f"{c['a']} − {c['b']}" for row in rows
                               for c in row.get("comparisons") or []))
    lines = ["# ffnlab compare: sweep", "",
             f"Status: {content.get('status')}. Resolution ±{as_float(content.get('resolution_bpb')):g} "
             "bits per byte. Each setting's own report is in its folder.", "",
             "| setting | best | " + " | ".join(pairs) + " |",
             "|---" * (len(pairs) + 2) + "|"]
    for row in rows:
        by = {f"{c['a']} − {c['b']}": c for c in row.get("comparisons") or []}
        cells = [_cell(row, by[p]) if p in by else "—" for p in pairs]
        lines.append(f"| [{row['label']}]({row['label']}/report.md) | {row.get('best') or '—'} | "
                     + " | ".join(cells) + " |")
    lines += ["", "Cells: mean a − b with the half-width of its 95 % interval (paired seeds).", "",
              "## Claims", ""]
    for c in content.get("claims") or []:
        lines.append(f"- **{c['verdict']}**: {c['claim']} ({c['source']}) {c['explanation']}")
    if not content.get("claims"):
        lines.append("- No size claim: that needs two or more widths or data fractions.")
    lines += _trend_lines(content)
    lines += _robust_lines(content)
    for stem, caption in images:
        lines += ["", f"![{caption}]({stem}.png)"]
    return "\n".join(lines) + "\n"


def _trend_lines(content: Mapping) -> list[str]:
    """The "Trend with size" section: each comparison's slope per doubling of FFN parameters
    and where its line crosses zero."""
    trends = [t for t in content.get("trends") or [] if isinstance(t, Mapping)]
    if not trends:
        return []
    lines = ["", "## Trend with size", "",
             "A straight line through every seed's paired difference against log2(FFN "
             "parameters of the model): the slope is the change of a − b per doubling "
             "(negative: a's advantage grows with size), with its 95 % interval; the crossing is "
             "where the line reaches 0, with Fieller's 95 % interval (none when the slope is not "
             "resolved), marked *extrapolated* outside the measured sizes.", "",
             "| a − b | optimizer | sizes (FFN params) | slope per doubling | 95 % interval | "
             "crosses 0 at | its 95 % interval |", "|---|---|---|---|---|---|---|"]
    for t in trends:
        lo, hi = (as_float(x) for x in t.get("ci95") or [math.nan, math.nan])
        sizes = ", ".join(f"{as_float(x):,.0f}" for x in t.get("sizes") or [])
        cross = as_float(t.get("crossing_params"))
        cross_text = "—" if not math.isfinite(cross) else f"{cross:.3g}"
        if math.isfinite(cross) and t.get("extrapolated"):
            cross_text += " (*extrapolated*)"
        ci = t.get("crossing_ci95")
        ci_text = "unbounded" if not ci else f"[{as_float(ci[0]):.3g}, {as_float(ci[1]):.3g}]"
        lines.append(f"| {t.get('a')} − {t.get('b')} | {t.get('optimizer') or '—'} | {sizes} | "
                     f"{as_float(t.get('slope_per_doubling')):+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                     f"{cross_text} | {ci_text} |")
    return lines


def _interval(p: Mapping) -> str:
    ci = p.get("ci95") if isinstance(p.get("ci95"), (list, tuple)) else ()
    lo, hi = (as_float(x) for x in ci) if len(ci) == 2 else (math.nan, math.nan)
    mean = as_float(p.get("mean"))
    ival = "" if math.isnan(lo) or math.isnan(hi) else f" [{lo:+.3f}, {hi:+.3f}]"
    return f"{mean:+.3f}{ival}: **{p.get('verdict')}**"


def _robust_lines(content: Mapping) -> list[str]:
    """The "Across optimizers" section: each comparison and claim, robust or recipe-dependent."""
    robust = [r for r in content.get("robust") or [] if isinstance(r, Mapping)]
    if not robust:
        return []
    opts = list(dict.fromkeys(o for r in robust for o in r.get("by_optimizer") or {}))
    lines = ["", "## Across optimizers", "",
             "Each comparison under every optimizer, each a tuned comparison of its own: "
             "**robust** when the verdict is the same under each, **recipe-dependent** when it "
             "changes (then the verdict is an answer about the recipe as much as about the FFNs, "
             "and both intervals are shown).", "",
             "| a − b | dim | data | " + " | ".join(opts) + " | across optimizers |",
             "|---" * (len(opts) + 4) + "|"]
    for r in robust:
        cells = [_interval(r["by_optimizer"][o]) if o in r["by_optimizer"] else "—" for o in opts]
        call = "robust" if r.get("robust") else "recipe-dependent"
        lines.append(f"| {r['a']} − {r['b']} | {as_float(r.get('dim')):g} | "
                     f"{as_float(r.get('data_fraction')):g} | " + " | ".join(cells)
                     + f" | **{call}** |")
    n_robust = sum(bool(r.get("robust")) for r in robust)
    lines += ["", f"{n_robust} of {len(robust)} comparisons are robust to the optimizer."]
    claims = [c for c in content.get("robust_claims") or [] if isinstance(c, Mapping)]
    if claims:
        lines += ["", "The sources' claims under each optimizer:", ""]
        for c in claims:
            per = ", ".join(f"{o}: {v}" for o, v in (c.get("by_optimizer") or {}).items())
            call = (f"robust, **{c.get('verdict')}**" if c.get("robust")
                    else "**recipe-dependent**")
            lines.append(f"- {c.get('claim')} ({per}): {call}")
    return lines


def write_sweep_report(content: Mapping, out: Path) -> list[Path]:
    """Write the plots and ``sweep.md`` into ``out``; the paths written."""
    written, images = [], []
    for key, (label, stem) in _AXES.items():
        png = plot_gain(content, key)
        if png is not None:
            path = out / f"{stem}.png"
            files.atomic_write_bytes(path, png)
            written.append(path)
            images.append((stem, f"paired differences against the {label}"))
    if (trend_png := plot_trends(content)) is not None:
        path = out / "trend_vs_params.png"
        files.atomic_write_bytes(path, trend_png)
        written.append(path)
        images.append(("trend_vs_params", "paired differences against FFN parameters, fitted"))
    md = out / "sweep.md"
    files.atomic_write_bytes(md, render_sweep_markdown(content, images).encode())
    return [*written, md]
