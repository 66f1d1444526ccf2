"""The report's "Learning rates" section, for runs that tuned each variant's rate: the rate each
variant chose, bits per byte against learning rate (one line per variant, the chosen rate
marked), and every comparison at the shared rate beside the same comparison at the tuned rates,
so a reader sees what tuning changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ...numbers import as_float
from ..stats.table import variants_by_name
from ..verdicts import PairVerdict
from .plots import figure, png

__all__ = ["plot_lr_tuning", "tuning_blocks", "TUNING_CAPTION"]

TUNING_CAPTION = "Bits per byte against learning rate (tuning seeds); star: the chosen rate"


def _tuned(results: Mapping) -> list[Mapping]:
    return [v for v in results.get("variants") or []
            if isinstance(v, Mapping) and isinstance(v.get("tuning"), Mapping)]


def plot_lr_tuning(results: Mapping) -> bytes | None:
    """Mean final bpb over the tuning seeds at each grid rate, one line per variant (log x),
    a star at the chosen rate (at the verdict runs' mean bpb there); None without tuning."""
    tuned = _tuned(results)
    if not tuned:
        return None
    fig, (ax,) = figure("Learning rate tuning: mean final bits per byte over the tuning seeds")
    for i, v in enumerate(tuned):
        t = v["tuning"]
        pts = [(as_float(lr), as_float(m)) for lr, m in t.get("means") or []]
        pts = [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y)]
        if not pts:
            continue
        color = f"C{i % 10}"
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=color, label=v["name"],
                alpha=0.8)
        chosen, at = as_float(t.get("chosen")), as_float(v.get("val_bpb_mean"))
        if math.isfinite(chosen) and math.isfinite(at):
            ax.plot([chosen], [at], "*", color=color, markersize=14, markeredgecolor="black")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel("final val bits per byte")
    ax.legend(fontsize=8, ncols=2)
    return png(fig)


def _cell(c: Mapping | None) -> str:
    if c is None:
        return "n/a"
    n = c.get("n") if isinstance(c.get("n"), int) else 0
    mean = as_float(c.get("mean"))
    ci = c.get("ci95") if isinstance(c.get("ci95"), (list, tuple)) else ()
    lo, hi = (as_float(x) for x in ci) if len(ci) == 2 else (math.nan, math.nan)
    ival = "no interval" if math.isnan(lo) or math.isnan(hi) else f"[{lo:+.4f}, {hi:+.4f}]"
    verdict = PairVerdict.of(c.get("verdict"), PairVerdict.UNRESOLVED)
    shown = "n/a" if math.isnan(mean) else f"{mean:+.4f}"
    return f"{shown} {ival}, n={n}: **{verdict}**"


def tuning_blocks(results: Mapping, plots: Mapping[str, bytes]) -> list[tuple]:
    """The section's blocks (none when the run did not tune)."""
    tuned = _tuned(results)
    if not tuned:
        return []
    cfg = (results.get("config") or {}).get("tuning") or {}
    grid = ", ".join(f"{as_float(x):g}" for x in cfg.get("grid") or [])
    seeds = cfg.get("seeds") or []
    shared = as_float(cfg.get("shared_lr"))
    blocks: list[tuple] = [("h2", "Learning rates: each variant at its own")]
    blocks.append(("p", f"Every variant was trained on the grid {grid} (widened past an edge "
                        f"where its best rate sat on one) with {len(seeds)} tuning seed(s) "
                        f"({', '.join(map(str, seeds))}), which no verdict uses. Its rate is the "
                        f"lowest point of the parabola in log(lr) through its best grid rate and "
                        f"the two neighbours; the comparisons above train fresh seeds at these "
                        f"rates, so a rate is never judged on the runs that chose it."))
    rows = []
    for v in tuned:
        t = v["tuning"]
        rows.append([f"`{v['name']}`", ", ".join(f"{as_float(x):g}" for x in t.get("grid") or []),
                     f"{as_float(t.get('chosen')):g}", "yes" if t.get("at_edge") else "no",
                     f"{as_float(v.get('val_bpb_mean')):.4f}"])
    blocks.append(("table", ["variant", "grid", "chosen rate", "at the grid's edge",
                             "val bpb at the chosen rate (verdict seeds)"], rows))
    if "lr_tuning" in plots:
        blocks.append(("img", "lr_tuning", TUNING_CAPTION))
    at_shared = {(c.get("a"), c.get("b")): c for c in results.get("comparisons_shared_rate") or []
                 if isinstance(c, Mapping)}
    pairs = [c for c in results.get("comparisons") or [] if isinstance(c, Mapping)]
    if pairs:
        names = variants_by_name(results)
        rows = []
        for c in pairs:
            key = (c.get("a"), c.get("b"))
            s = at_shared.get(key)
            changed = (s is not None and PairVerdict.of(s.get("verdict"))
                       != PairVerdict.of(c.get("verdict")))
            rates = " / ".join(f"{as_float((names.get(n) or {}).get('lr')):g}" for n in key)
            rows.append([f"`{key[0]}` − `{key[1]}`", _cell(s), rates, _cell(c),
                         "yes" if changed else "no"])
        blocks.append(("p", f"Each comparison at the shared rate {shared:g} (the tuning seeds' "
                            f"runs there: few seeds, so wide intervals) and at the tuned rates "
                            f"(the verdict seeds): a verdict that differs is one the shared rate "
                            f"decided, not the FFNs."))
        blocks.append(("table", ["a − b", f"at the shared rate {shared:g}", "tuned rates a / b",
                                 "at the tuned rates", "verdict changed"], rows))
    return blocks
