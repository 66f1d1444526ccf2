"""Presenting a ``bench.json`` result: the targets, a rich table, Markdown and a PNG chart.

Ratios are *time* ratios, provider / reference (below 1 is faster); "speedup" targets are
the inverse, reference / provider, as the issue states them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .. import files
from ..numbers import as_float, fmt_number

__all__ = ["evaluate_targets", "print_report", "to_markdown", "write_chart", "write_files", "FUSED_DEFAULT"]

# The fused provider the targets hold to account: FeedForward's default recompute mode.
FUSED_DEFAULT = "fused:activation"
# Elementwise providers that are fused GPU kernels (the bandwidth target applies to them).
FUSED_ELEMENTWISE = ("triton",)

CPU_POINT = {"variant": "swiglu", "dim": 512, "tokens": 2048, "dtype": "float32"}
GPU_POINT = {"variant": "swiglu", "dim": 4096, "hidden": (11008, 14336),
             "tokens": (8192, 32768), "dtype": "bfloat16"}


def _target(name: str, value: float | None, op: str, limit: float, note: str = "") -> dict:
    if value is None:
        status = "n/a"
    else:
        status = "PASS" if (value <= limit if op == "<=" else value >= limit) else "FAIL"
    return {"name": name, "value": value, "op": op, "limit": limit, "status": status, "note": note}


def _ok_by_provider(rows: list[dict]) -> tuple[dict, dict]:
    ok = {r["provider"]: r for r in rows if r["status"] == "ok"}
    skipped = {r["provider"]: r.get("reason") for r in rows if r["status"] != "ok"}
    return ok, skipped


# Time ratios the rows carry as paired (per-round) medians: provider b -> the row field.
_PAIRED = {("fwd_bwd_ms", "reference"): "fwd_bwd_vs_reference",
           ("fwd_bwd_ms", "matmul"): "fwd_bwd_vs_matmul"}


def _row_ratio(ok: dict, a: str, b: str, key: str, invert: bool = False) -> float | None:
    """``ok[a][key] / ok[b][key]`` (inverted if asked); for the time ratios a row carries as a
    paired median (``_PAIRED``), that value."""
    if a not in ok or b not in ok:
        return None
    paired = ok[a].get(_PAIRED.get((key, b), ""))
    if paired:
        return 1 / paired if invert else paired
    if ok[a].get(key) in (None, 0) or ok[b].get(key) in (None, 0):
        return None
    x, y = ok[a][key], ok[b][key]
    return y / x if invert else x / y


def _missing_note(ok: dict, skipped: dict, needed: tuple[str, ...], where: str) -> str:
    for name in needed:
        if name not in ok:
            why = skipped.get(name)
            return f"{name} {'skipped: ' + why if why else 'not measured'} ({where})"
    return ""


def _cpu_targets(result: dict) -> list[dict]:
    cfg = result["config"]
    where = "SwiGLU, dim 512, 2048 tokens, float32, fwd+bwd"
    rows = [r for r in result["rows"] if r["variant"] == CPU_POINT["variant"]
            and r["dim"] == CPU_POINT["dim"] and r["tokens"] == CPU_POINT["tokens"]]
    if cfg["dtype"] != CPU_POINT["dtype"]:
        rows = []
    if rows:  # the first hidden size measured (the default one unless --hidden was given)
        rows = [r for r in rows if r["hidden"] == rows[0]["hidden"]]
    ok, skipped = _ok_by_provider(rows)
    specs = [
        ("fused fwd+bwd time / reference", FUSED_DEFAULT, "reference", "fwd_bwd_ms", 1.00),
        ("fused fwd+bwd time / matmul floor", FUSED_DEFAULT, "matmul", "fwd_bwd_ms", 1.05),
        ("saved bytes, recompute=activation / reference", "fused:activation", "reference",
         "saved_bytes_per_token", 0.55),
        ("saved bytes, recompute=full / reference", "fused:full", "reference",
         "saved_bytes_per_token", 0.10),
    ]
    out = []
    for name, a, b, key, limit in specs:
        value = _row_ratio(ok, a, b, key)
        if value is None:
            note = _missing_note(ok, skipped, (a, b), where) if rows else f"not in this run ({where})"
        else:
            note = where + _noise_note(ok, a, b, key)
        out.append(_target(name, value, "<=", limit, note))
    return out


def _noise_note(ok: dict, a: str, b: str, key: str) -> str:
    """For a time ratio: the same ratio of the fastest calls, and the spreads behind it."""
    if not key.endswith("_ms"):
        return ""
    base = key[: -len("_ms")]
    fast = _row_ratio(ok, a, b, f"{key}_min")
    spreads = [ok[n].get(f"{base}_spread") for n in (a, b)]
    if fast is None or None in spreads:
        return ""
    return (f"; fastest calls {fast:.3f}, spread {100 * spreads[0]:.0f}% / "
            f"{100 * spreads[1]:.0f}%")


def _gpu_targets(result: dict) -> list[dict]:
    cfg = result["config"]
    lo, hi = GPU_POINT["tokens"]
    out = []
    if cfg["dtype"] == GPU_POINT["dtype"]:
        shapes = sorted({(r["hidden"], r["tokens"]) for r in result["rows"]
                         if r["variant"] == "swiglu" and r["dim"] == GPU_POINT["dim"]
                         and r["hidden"] in GPU_POINT["hidden"] and lo <= r["tokens"] <= hi})
    else:
        shapes = []
    for hidden, tokens in shapes:
        rows = [r for r in result["rows"] if r["variant"] == "swiglu" and r["dim"] == 4096
                and r["hidden"] == hidden and r["tokens"] == tokens]
        ok, skipped = _ok_by_provider(rows)
        where = f"SwiGLU bf16, dim 4096, hidden {hidden}, {tokens} tokens"
        for name, b, key, op, limit, inv in (
            ("fwd+bwd speedup of fused over eager", "reference", "fwd_bwd_ms", ">=", 1.1, True),
            ("fwd+bwd speedup of fused over Liger", "liger", "fwd_bwd_ms", ">=", 1.0, True),
            ("saved bytes, fused / Liger", "liger", "saved_bytes_per_token", "<=", 1.0, False),
        ):
            value = _row_ratio(ok, FUSED_DEFAULT, b, key, invert=inv)
            note = (where + _noise_note(ok, b, FUSED_DEFAULT, key) if value is not None
                    else _missing_note(ok, skipped, (FUSED_DEFAULT, b), where))
            out.append(_target(name, value, op, limit, note))
    if not shapes:
        out.append(_target("FFN fwd+bwd vs eager and Liger", None, ">=", 1.1,
                           "not in this run (needs swiglu, bfloat16, dim 4096, hidden 11008 or "
                           "14336, 8192-32768 tokens)"))
    fused_ew = [r for r in result.get("elementwise", [])
                if r["provider"] in FUSED_ELEMENTWISE and r["status"] == "ok"]
    for r in fused_ew:
        for k in ("fwd", "fwd_bwd"):
            out.append(_target(f"elementwise {k.replace('_', '+')} share of copy bandwidth",
                               r[f"{k}_copy_share"], ">=", 0.85,
                               f"{r['provider']} {r['variant']}, hidden {r['hidden']}, "
                               f"{r['tokens']} tokens"))
    if not fused_ew:
        out.append(_target("elementwise share of copy bandwidth", None, ">=", 0.85,
                           "no fused elementwise kernel measured in this run"))
    return out


def evaluate_targets(result: dict) -> list[dict]:
    """The issue's targets, PASS/FAIL/n/a, computed from this result's own rows."""
    if str(result["config"]["device"]).startswith("cuda"):
        return _gpu_targets(result)
    return _cpu_targets(result)


# ---------------------------------------------------------------- formatting


def _cell(key: str, spec: str, suffix: str = "", *, scale: float = 1.0) -> Callable[[dict], str]:
    """A column formatter: ``row[key]`` as ``spec`` (times ``scale``) + ``suffix``; ``-`` where
    the value is missing or not a finite number."""
    return lambda r: fmt_number(r.get(key), spec, na="-", suffix=suffix, scale=scale)


def _provider_label(r: dict) -> str:
    """``fused:activation [aten]``: the provider and, for the fused op, the engine that ran."""
    return r["provider"] + (f" [{r['engine']}]" if r.get("engine") else "")


# The columns that name a row, shared by both tables.
_ID_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("variant", lambda r: r["variant"]),
    ("hidden", lambda r: str(r["hidden"])),
    ("tokens", lambda r: str(r["tokens"])),
    ("provider", _provider_label),
]
FFN_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    *_ID_COLUMNS,
    ("fwd ms", _cell("fwd_ms", ".2f")),
    ("fwd+bwd ms", _cell("fwd_bwd_ms", ".2f")),
    ("fwd ×ref", _cell("fwd_vs_reference", ".2f", "×")),
    ("fwd ×floor", _cell("fwd_vs_matmul", ".2f", "×")),
    ("f+b ×ref", _cell("fwd_bwd_vs_reference", ".2f", "×")),
    ("f+b ×floor", _cell("fwd_bwd_vs_matmul", ".2f", "×")),
    ("f+b % mm peak", _cell("fwd_bwd_matmul_share", ".0f", "%", scale=100)),
    ("saved B/tok", _cell("saved_bytes_per_token", ",.0f")),
    ("saved ×ref", _cell("saved_vs_reference", ".2f", "×")),
    ("rel err", _cell("max_rel_err", ".0e")),
    ("f+b spread", _cell("fwd_bwd_spread", ".0f", "%", scale=100)),
]
PEAK_COLUMN = ("peak MiB", _cell("peak_bytes", ",.0f", scale=2**-20))
EW_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    *_ID_COLUMNS,
    ("fwd ms", _cell("fwd_ms", ".3f")),
    ("fwd+bwd ms", _cell("fwd_bwd_ms", ".3f")),
    # divided (not scaled by 1e-9) as it always was, so that no printed digit moves
    ("fwd GB/s", lambda r: fmt_number(as_float(r.get("fwd_bytes_per_s")) / 1e9, ".1f", na="-")),
    ("fwd % copy", _cell("fwd_copy_share", ".0f", "%", scale=100)),
    ("f+b % copy", _cell("fwd_bwd_copy_share", ".0f", "%", scale=100)),
    ("f+b ×ref", _cell("fwd_bwd_vs_reference", ".2f", "×")),
]


def _columns(result: dict) -> list:
    cols = list(FFN_COLUMNS)
    if any(r.get("peak_bytes") is not None for r in result["rows"]):
        cols.append(PEAK_COLUMN)
    return cols


def _skips(result: dict) -> list[str]:
    seen: dict[str, list[str]] = {}
    for r in result["rows"] + result.get("elementwise", []):
        if r["status"] != "ok":
            key = f"{r['provider']}: {r.get('reason')}"
            label = r["variant"] if r["kind"] == "ffn" else f"{r['variant']} (elementwise)"
            if label not in seen.setdefault(key, []):
                seen[key].append(label)
    return [f"{k}  [{', '.join(v)}]" for k, v in seen.items()]


def _header(result: dict) -> str:
    m, c, cfg = result["machine"], result["ceilings"], result["config"]
    return (f"{m['device_name']} ({m['device']}, {m['torch_threads']} torch threads), "
            f"torch {m['torch']}, triton {m['triton']}, python {m['python']}, {m['date']}; "
            f"dtype {cfg['dtype']}, dim {cfg['dim']}, median of {cfg['repeats']} after "
            f"{cfg['warmup']} warm-up. Ceilings: copy {c['copy_bytes_per_s'] / 1e9:.1f} GB/s, "
            f"matmul {c['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s ({c['matmul_dtype']}, "
            f"n={c['matmul_n']}).")


def _target_line(t: dict) -> str:
    value = fmt_number(t["value"], ".3f", na="-")
    return f"{t['status']:4}  {t['name']}: {value} (target {t['op']} {t['limit']:g})  {t['note']}"


def print_report(result: dict, console) -> None:
    """The tables, skipped providers and targets, on a rich console."""
    from rich.table import Table

    console.print(_header(result))
    # One table per shape, so that variant/hidden/tokens need no columns and it fits 100 columns.
    cols = _columns(result)[3:]
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    for shape in dict.fromkeys((r["variant"], r["hidden"], r["tokens"]) for r in ok):
        t = Table(title=f"{shape[0]}: dim {result['config']['dim']}, hidden {shape[1]}, "
                        f"{shape[2]} tokens", title_justify="left")
        for name, _ in cols:
            t.add_column(name, justify="left" if name == "provider" else "right")
        for r in ok:
            if (r["variant"], r["hidden"], r["tokens"]) == shape:
                t.add_row(*(fmt(r) for _, fmt in cols))
        console.print(t)
    ew = [r for r in result.get("elementwise", []) if r["status"] == "ok"]
    if ew:
        te = Table(title="Elementwise middle alone (activation and gate)", title_justify="left")
        for name, _ in EW_COLUMNS:
            te.add_column(name, justify="left" if name in ("variant", "provider") else "right")
        for r in ew:
            te.add_row(*(fmt(r) for _, fmt in EW_COLUMNS))
        console.print(te)
    skips = _skips(result)
    if skips:
        console.print("[bold]Skipped[/bold]")
        for line in skips:
            console.print(f"  {line}", markup=False, highlight=False)
    console.print("[bold]Targets[/bold]")
    for tg in result["targets"]:
        style = {"PASS": "green", "FAIL": "red"}.get(tg["status"], "yellow")
        console.print(f"[{style}]{tg['status']:4}[/{style}]", end="")
        console.print(_target_line(tg)[4:], markup=False, highlight=False)


def _md_table(cols, rows) -> list[str]:
    lines = ["| " + " | ".join(n for n, _ in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r) for _, fmt in cols) + " |" for r in rows]
    return lines


def to_markdown(result: dict) -> str:
    """A self-contained Markdown summary (what ``benchmarks/results/*.md`` hold)."""
    lines = ["# ffnlab bench", "", _header(result), "", "## FFN", ""]
    lines += _md_table(_columns(result), [r for r in result["rows"] if r["status"] == "ok"])
    ew = [r for r in result.get("elementwise", []) if r["status"] == "ok"]
    if ew:
        lines += ["", "## Elementwise middle alone", ""] + _md_table(EW_COLUMNS, ew)
    skips = _skips(result)
    if skips:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in skips]
    lines += ["", "## Targets", ""] + [f"- {_target_line(t)}" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def write_chart(result: dict, path: Path) -> None:
    """Two panels per variant (largest token count, first hidden size): fwd+bwd time and
    saved bytes, each relative to the reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in result["rows"] if r["status"] == "ok"]
    variants = list(dict.fromkeys(r["variant"] for r in ok))
    providers = list(dict.fromkeys(r["provider"] for r in ok))
    pick = {}
    for v in variants:
        rs = [r for r in ok if r["variant"] == v]
        hidden, tokens = rs[0]["hidden"], max(r["tokens"] for r in rs)
        pick[v] = {r["provider"]: r for r in rs if r["hidden"] == hidden and r["tokens"] == tokens}
    fig = Figure(figsize=(11, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    width = 0.8 / max(1, len(providers))
    for ax, key, title in zip(
        fig.subplots(1, 2),
        ("fwd_bwd_vs_reference", "saved_vs_reference"),
        ("fwd+bwd time / reference (lower is better)", "bytes saved for backward / reference"),
        strict=True,
    ):
        for i, p in enumerate(providers):
            ys = [pick[v].get(p, {}).get(key) for v in variants]
            xs = [j + (i - (len(providers) - 1) / 2) * width for j in range(len(variants))]
            ax.bar([x for x, y in zip(xs, ys, strict=True) if y is not None],
                   [y for y in ys if y is not None], width, label=p)
        ax.axhline(1.0, color="0.3", lw=0.8, ls="--")
        ax.set_xticks(range(len(variants)), variants)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8,
               frameon=False)
    cfg = result["config"]
    fig.suptitle(f"ffnlab bench: {result['machine']['device_name']}, {cfg['dtype']}, dim {cfg['dim']}",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))  # room for the legend below the panels
    fig.savefig(path)


def write_files(result: dict, out: Path) -> str:
    """Write ``bench.json`` (strict JSON: a NaN/inf measurement is null), ``bench.md`` and
    ``bench.png`` into ``out``; returns the chart's name, or why there is none."""
    files.atomic_write_json(out / "bench.json", files.json_safe(result))
    files.atomic_write_bytes(out / "bench.md", to_markdown(result).encode("utf-8"))
    try:
        write_chart(result, out / "bench.png")
    except ImportError as exc:  # a bare GPU machine without matplotlib: keep the numbers
        return f"no chart ({exc.name} is not installed)"
    return "bench.png"
