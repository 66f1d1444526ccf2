"""The lab report: ``report.md``, a self-contained ``report.html`` and the PNG figures.

:func:`write_report` is what ``ffnlab compare`` calls at the end of a run (also for a partial
run after an interruption). The report is first built as a short list of blocks (heading,
paragraph, list, table, image), then rendered twice, as Markdown and as HTML, so the two never
disagree. Every file is written atomically with :func:`ffnlab.lab.files.atomic_write_bytes`
(a temporary file in the same folder, fsync, then ``os.replace``), so a reader never sees half
a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ... import files
from ...numbers import as_float, fmt_number
from ..claims.check import check_claims
from ..stats import paired
from ..stats import table as A
from ..verdicts import PairVerdict
from .moe import moe_blocks
from .plots import PLOTS, render_plots
from .render import Block, render_html, render_markdown
from .tuning import plot_lr_tuning, tuning_blocks

__all__ = ["write_report", "build_blocks", "render_markdown", "render_html"]  # the last two: .render



def _config_lines(results: Mapping) -> list[str]:
    cfg = results.get("config") or {}
    model = cfg.get("model") or {}
    corpus = results.get("corpus") or {}
    versions = cfg.get("versions") or {}
    seeds = cfg.get("seeds") or []
    lines = [
        f"Preset **{cfg.get('preset', '?')}**: {cfg.get('steps', '?')} steps, seeds "
        f"{', '.join(map(str, seeds)) or '?'}, optimizer {cfg.get('optimizer', 'adamw')}, "
        f"lr {cfg.get('lr', '?')}, warmup "
        f"{cfg.get('warmup', '?')}, {cfg.get('tokens_per_run', '?')} tokens per run, "
        f"evaluation every {cfg.get('eval_every', '?')} steps.",
        f"Model: dim {model.get('dim', '?')}, {model.get('n_layers', '?')} layers, "
        f"{model.get('n_heads', '?')} heads, context {model.get('seq_len', '?')}, batch "
        f"{model.get('batch_size', '?')}, vocabulary {model.get('vocab', '?')} (bytes); FFN "
        f"hidden {model.get('plain_hidden', '?')} plain / {model.get('gated_hidden', '?')} "
        "gated (equal FFN parameters).",
        f"Corpus: `{corpus.get('name', '?')}`, {corpus.get('bytes', '?')} bytes "
        f"({corpus.get('train_bytes', '?')} train / {corpus.get('val_bytes', '?')} validation), "
        f"sha256 `{corpus.get('sha256', '?')}`.",
        f"Device `{cfg.get('device', '?')}`, dtype `{cfg.get('dtype', '?')}`; "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f"; started {cfg.get('started', '?')}, finished {cfg.get('finished', '?')}.",
    ]
    return lines


def _ranking_table(results: Mapping) -> tuple[list[str], list[list[str]]]:
    vs_relu = paired.paired_vs_baseline(results, "relu")
    # With a mixture of experts, "FFN params" is the total and the active count gets a column.
    moe = any(isinstance(v.get("moe"), Mapping) for v in results.get("variants", []))
    headers = ["rank", "variant", "gated", *(["FFN params total", "FFN params active"] if moe
                                             else ["FFN params"]), "val bpb (mean ± std)",
               "Δ vs ReLU, paired (mean ± std)", "Δ 95% t-interval", "tokens/s",
               "saved B/token", "dead %"]
    rows = []
    for i, v in enumerate(A.ranking(results), 1):
        name = v["name"]
        mean = as_float(v.get("val_bpb_mean"))
        n_ok = len(A.good_runs(v)) if v.get("runs") else 0
        if math.isnan(mean):
            bpb = "diverged"
        elif n_ok == 1:
            bpb = f"{mean:.4f} (1 seed)"  # a std of 0.0 from one run would read as certainty
        else:
            bpb = f"{mean:.4f} ± {fmt_number(v.get('val_bpb_std'), '.4f')}"
        interval = "n/a"
        if name == "relu":
            delta = interval = "baseline"
        elif name not in vs_relu or vs_relu[name].n == 0:
            delta = "n/a"
        else:
            pd = vs_relu[name]
            spread = f" ± {pd.std:.4f}" if pd.n >= 2 else " (1 seed)"
            delta = f"{pd.mean:+.4f}{spread}" + (" *" if pd.distinguishable else "")
            if pd.n >= 2:
                lo, hi = pd.ci95
                interval = f"[{lo:+.4f}, {hi:+.4f}]"
        params = v.get("params")
        active = [] if not moe else [f"{x:,}" if isinstance(x := v.get("params_active", params), int)
                                     else "n/a"]
        rows.append([str(i) if not math.isnan(mean) else "–", f"`{name}`",
                     "yes" if v.get("gated") else "no",
                     f"{params:,}" if isinstance(params, int) else "n/a", *active, bpb, delta,
                     interval,
                     fmt_number(v.get("tokens_per_s"), ",.0f"),
                     fmt_number(v.get("saved_bytes_per_token"), ",.0f"),
                     fmt_number(v.get("dead_fraction"), ".1f", scale=100)])
    return headers, rows


def _best_paragraph(results: Mapping) -> str:
    best, runner, pd = paired.best_variant(results)
    by = A.variants_by_name(results)
    if best is None:
        return "No variant finished with a finite validation loss, so none can be named best."
    text = f"Best variant: **{best}** ({fmt_number(by[best].get('val_bpb_mean'), '.4f')} bpb)."
    if runner is None:
        return text + " It is the only variant with a result, so nothing was compared."
    gap = f"{best} − {runner} = {pd.mean:+.4f} bpb" if pd.n else f"{best} vs {runner}"
    if pd.n >= 2:
        gap += f" ± {pd.std:.4f} over {pd.n} paired seeds"
    if pd.distinguishable:
        text += f" Runner-up **{runner}**: {gap}, beyond seed noise."
    else:
        text += (f" Caution: the runner-up **{runner}** is not distinguishable from it "
                 f"({gap}); treat them as tied on this run.")
    if pd.caution:
        text += f" ({pd.caution}.)"
    return text


# Figures shown in a section of their own, not under "Figures" (PLOTS' order places the rest:
# the quality-against-time figure follows the learning curves).
_OWN_SECTION = {"forest", "load_balance", "lr_tuning"}


def _seeds_per_variant(results: Mapping) -> str:
    counts = [(v["name"], len(v.get("runs") or [])) for v in results.get("variants", [])]
    if counts and len({n for _, n in counts}) == 1:
        return f"{counts[0][1]} for every variant"
    return ", ".join(f"{name} {n}" for name, n in counts) or "none"


def _seeding_text(results: Mapping) -> str:
    """One sentence on adaptive seeding, or '' when the run used a fixed number of seeds."""
    seeding = (results.get("config") or {}).get("seeding")
    if not isinstance(seeding, Mapping):
        return ""
    initial, top = seeding.get("initial"), seeding.get("max")
    if not (isinstance(initial, int) and isinstance(top, int) and top > initial):
        return ""
    rounds = seeding.get("rounds")
    text = (f" Adaptive seeding: {initial} seeds per variant to start, more for the variants of a "
            f"comparison whose interval was too wide, up to {top}")
    if isinstance(rounds, int):
        text += f", in {rounds} round{'s' if rounds != 1 else ''}"
    budget = seeding.get("time_budget_s")
    why = {"resolved": "every interval reached the resolution",
           "max seeds": "the variants of the remaining wide intervals reached the maximum",
           "time budget": (f"the time budget ({budget:g} s) was spent" if isinstance(budget, (int, float))
                           else "the time budget was spent")}.get(seeding.get("stopped"))
    if seeding.get("complete") is True and why:
        return text + f"; it stopped because {why}."
    if seeding.get("complete") is True:
        return text + "; it finished (every interval resolved, or its variants at the maximum)."
    if seeding.get("complete") is False:
        return text + "; it did **not** finish: planned runs are missing."
    return text + "."


def _comparison_row(c: Mapping, res: float) -> list[str]:
    a, b = str(c.get("a", "?")), str(c.get("b", "?"))
    n, diffs = c.get("n"), c.get("diffs")
    if not isinstance(n, int) or isinstance(n, bool):
        n = len(diffs) if isinstance(diffs, list) else 0
    mean, half = as_float(c.get("mean")), as_float(c.get("half_width"))
    ci = c.get("ci95") if isinstance(c.get("ci95"), (list, tuple)) else ()
    lo, hi = (as_float(x) for x in ci) if len(ci) == 2 else (math.nan, math.nan)
    interval = "n/a" if math.isnan(lo) or math.isnan(hi) else f"[{lo:+.4f}, {hi:+.4f}]"
    if math.isnan(half):
        width = "n/a"
    elif math.isnan(res):
        width = f"{half:.4f}"
    else:
        width = f"{half:.4f} {'≤' if half <= res else '>'} {res:g}"
    verdict = PairVerdict.of(c.get("verdict"), PairVerdict.UNRESOLVED)
    named = {PairVerdict.A_BETTER: f" (`{a}`)", PairVerdict.B_BETTER: f" (`{b}`)"}.get(verdict, "")
    if n < 2 and verdict == PairVerdict.UNRESOLVED:
        named = " (fewer than 2 seeds)"
    return [f"`{a}` − `{b}`", str(n), "n/a" if math.isnan(mean) else f"{mean:+.4f}", interval,
            width, f"**{verdict}**{named}"]


def _comparison_blocks(results: Mapping, plots: Mapping[str, bytes]) -> list[Block]:
    blocks: list[Block] = [("h2", "Comparisons")]
    comps = results.get("comparisons")
    if not isinstance(comps, list):
        return blocks + [("p", "This results file has no paired comparisons (it predates them); "
                               "the ranking's Δ vs ReLU, when ReLU ran, is paired by seed.")]
    comps = [c for c in comps if isinstance(c, Mapping)]
    if not comps:
        return blocks + [("p", "No pair to compare: that needs `relu`, or a gated variant "
                               "together with its plain twin (e.g. `swiglu` with `swish`).")]
    res = as_float((results.get("config") or {}).get("resolution_bpb"))
    seeds = f"seeds per variant: {_seeds_per_variant(results)}."
    if math.isnan(res):
        text = f"The resolution was not recorded, so no interval is judged against it; {seeds}"
    else:
        reached = sum(as_float(c.get("half_width")) <= res for c in comps)
        text = (f"Resolution: **{res:g} bpb**, the smallest difference this run sets out to "
                f"resolve. {reached} of {len(comps)} paired intervals have a half-width ≤ "
                f"{res:g} bpb; {seeds}")
    blocks.append(("p", text + _seeding_text(results)))
    blocks.append(("table", ["a − b", "seeds n", "mean", "95 % interval", "half-width",
                             "verdict"], [_comparison_row(c, res) for c in comps]))
    blocks.append(("p", "Each row is paired by seed (a − b in val bpb; negative: a better) with "
                        "a Student-t 95 % interval. **equivalent**: the whole interval lies "
                        "within ± the resolution, so no difference that large is compatible "
                        "with the data; **a better** / **b better**: the interval lies below / "
                        "above 0 (a half-width above the resolution means the size of the gap "
                        "is still loose); **unresolved**: neither, or fewer than 2 seeds."))
    if "forest" in plots:
        blocks.append(("img", "forest", PLOTS["forest"][1]))
    return blocks


def _claim_items(results: Mapping) -> list[str]:
    """The claims as recorded in results.json, or checked now for a file without them."""
    stored = results.get("claims")
    if isinstance(stored, list):
        rows = [tuple(str(c.get(k, "?")) for k in ("claim", "verdict", "explanation", "source"))
                for c in stored if isinstance(c, Mapping)]
    else:
        rows = [(v.claim, v.verdict, v.explanation, v.source) for v in check_claims(results)]
    return [f"**{claim}** — **{verdict}**. {why} (source: 「{src}」)"
            for claim, verdict, why, src in rows]


def _missing_lines(results: Mapping) -> list[str]:
    miss = A.missing_runs(results)
    lines = []
    if results.get("status") == "partial":
        lines.append("This run is **partial** (interrupted): the numbers above come from the "
                     "runs that finished; resume the run to complete it.")
    if miss["absent"]:
        lines.append(f"Variants with no finished run: {', '.join(miss['absent'])}.")
    if miss["missing"]:
        pairs = ", ".join(f"{n} seed {s}" for n, s in miss["missing"])
        lines.append(f"Missing (variant, seed) runs: {pairs}.")
    if miss["diverged"]:
        pairs = ", ".join(f"{n} seed {s}" for n, s in miss["diverged"])
        lines.append(f"Diverged or non-finite runs (left out of every mean and difference): "
                     f"{pairs}.")
    if miss["not_needed"]:
        per: dict[str, list] = {}
        for n, s in miss["not_needed"]:
            per.setdefault(n, []).append(s)
        shown = "; ".join(f"{n} seeds {', '.join(map(str, ss))}" for n, ss in per.items())
        lines.append(f"Not needed (adaptive seeding stopped adding seeds once this variant's "
                     f"intervals were decided; nothing failed): {shown}.")
    return lines


def build_blocks(results: Mapping, plots: Mapping[str, bytes]) -> list[Block]:
    """The report's content as blocks (see the module docstring); ``plots`` are the PNGs."""
    blocks: list[Block] = [("h1", "ffnlab: feed-forward variants compared on this machine")]
    status = results.get("status", "complete")
    blocks.append(("p", f"Status: **{status}**. Lower bits per byte (bpb) is better."))
    blocks += [("h2", "Configuration"), ("ul", _config_lines(results))]
    headers, rows = _ranking_table(results)
    blocks += [("h2", "Ranking"), ("table", headers, rows), ("p", _best_paragraph(results))]
    baseline = ("Δ vs ReLU is paired by seed: each seed gives every variant the same batches "
                "and the same non-FFN initialisation, so the difference is taken seed by seed "
                "and its std is over those per-seed differences; the interval is the Student-t 95 % "
                "interval of the mean (wide with few seeds: t = 12.7 for 2, 4.3 for 3). `*` "
                "marks a difference beyond seed noise (its 95 % interval excludes zero, at least 2 "
                "seeds).")
    if "relu" not in A.variants_by_name(results):
        baseline = "ReLU is not in this run, so there is no paired baseline column."
    blocks.append(("p", baseline))
    blocks += _comparison_blocks(results, plots)
    blocks += tuning_blocks(results, plots)
    blocks += moe_blocks(results, plots, PLOTS["load_balance"][1])
    blocks.append(("h2", "The sources' claims, checked"))
    blocks.append(("ul", _claim_items(results)))
    figures = [stem for stem in plots if stem not in _OWN_SECTION]
    if figures:
        blocks.append(("h2", "Figures"))
        blocks += [("img", stem, PLOTS[stem][1]) for stem in figures]
    missing = _missing_lines(results)
    if missing:
        blocks += [("h2", "Runs missing, failed or not needed"), ("ul", missing)]
    return blocks


def write_report(results: dict, out_dir: Path) -> list[Path]:
    """Write ``report.md``, ``report.html`` and one PNG per figure into ``out_dir``.

    ``results`` is the dict of ``results.json`` (complete or partial). Returns the paths
    written, Markdown first. Raises ValueError if ``results`` is not a results dict at all;
    degenerate content (one variant or seed, no ReLU, diverged runs, empty curves) is reported,
    not fatal.
    """
    results = A.check_results(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = render_plots(results)
    if (lr_plot := plot_lr_tuning(results)) is not None:
        plots["lr_tuning"] = lr_plot
    blocks = build_blocks(results, plots)
    write = files.atomic_write_bytes
    written = [write(out_dir / "report.md", render_markdown(blocks).encode("utf-8")),
               write(out_dir / "report.html", render_html(blocks, plots).encode("utf-8"))]
    written += [write(out_dir / f"{stem}.png", png) for stem, png in plots.items()]
    return written
