"""Speed and memory of every FFN variant and provider, forward and forward+backward.

For each variant, hidden size and token count, every provider (reference, fused with each
recompute mode, torch.compile, Triton, Liger-Kernel, and the matmul-only floor) runs on the
same weights and inputs. Times are medians over repeats after warm-up, with the providers
interleaved round-robin inside each repeat so that drift (clock boost, other processes) hits
them all alike; a ratio between two providers is the median of their per-repeat ratios
(paired), which cancels the load changes that a ratio of two medians keeps. Also measured: bytes saved for backward per token, peak memory on CUDA, and
this device's copy bandwidth and matmul rate, so each row reads as a share of the roofline.

Writes bench.json, bench.md and bench.png into --out and prints a table and the targets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..commands.common import (
    add_common,
    parse_device,
    parse_dtype,
    parse_variants,
    prepare_out_dir,
    print_json,
)
from ..errors import UsageError, check_positive_int
from ..ops.dispatch import plan
from ..sizing import default_hidden_dim, ffn_flops_per_token
from ..variants import get_variant
from . import bench_elementwise as E
from . import bench_providers as P
from . import io
from .timing import (
    best_ceilings,
    device_ceilings,
    machine_info,
    median,
    spread,
    synchronize,
    time_call,
)

DEFAULT_VARIANTS = "relu,gelu,swish,geglu,swiglu"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common(p, out="runs/bench", variants=False, dtype="float32", seed=True)
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated variant names, or all (default: {DEFAULT_VARIANTS})")
    p.add_argument("--dim", type=int, default=512, help="model width (default: 512)")
    p.add_argument("--hidden", default=None,
                   help="hidden size(s), comma list (default: 4*dim plain, LLaMA rule gated)")
    p.add_argument("--multiple-of", type=int, default=256,
                   help="the default gated hidden size is rounded up to this (default: 256)")
    p.add_argument("--tokens", default="2048", help="tokens per batch, comma list (default: 2048)")
    p.add_argument("--providers", default=None,
                   help=f"comma list from {', '.join(P.PROVIDERS)}; 'fused' = the three modes; "
                        f"'all' (default: all but compile)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, median reported (default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: 2)")
    p.add_argument("--elementwise", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the elementwise middle alone (default: on)")


def _int_list(flag: str, text: str) -> list[int]:
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"{flag} takes positive integers, got {part!r}") from None
        out.append(check_positive_int(flag, value))
    if not out:
        raise UsageError(f"{flag} is empty")
    return list(dict.fromkeys(out))


@dataclass
class Config:
    variants: list[str]
    dim: int
    hidden: list[int] | None
    multiple_of: int
    tokens: list[int]
    dtype: torch.dtype
    device: torch.device
    providers: list[str]
    repeats: int
    warmup: int
    seed: int
    elementwise: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        warmup = args.warmup
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise UsageError(f"--warmup must be a non-negative integer, got {warmup!r}")
        return cls(
            variants=parse_variants(args.variants),
            dim=check_positive_int("--dim", args.dim),
            hidden=None if args.hidden is None else _int_list("--hidden", args.hidden),
            multiple_of=check_positive_int("--multiple-of", args.multiple_of),
            tokens=_int_list("--tokens", args.tokens),
            dtype=parse_dtype(args.dtype),
            device=parse_device(args.device),
            providers=P.parse_providers(args.providers),
            repeats=check_positive_int("--repeats", args.repeats),
            warmup=warmup,
            seed=args.seed,
            elementwise=args.elementwise,
        )

    def hiddens(self, variant: str) -> list[int]:
        if self.hidden is not None:
            return self.hidden
        # plain: exactly 4*dim; gated: LLaMA's rule, rounded up to --multiple-of
        multiple_of = self.multiple_of if get_variant(variant).gated else 1
        return [default_hidden_dim(variant, self.dim, multiple_of=multiple_of)]

    def to_json(self) -> dict:
        return {
            "variants": self.variants,
            "dim": self.dim,
            "hidden": {v: self.hiddens(v) for v in self.variants},
            "multiple_of": self.multiple_of,
            "tokens": self.tokens,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "providers": self.providers,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "seed": self.seed,
            "elementwise": self.elementwise,
        }


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:240]}"


@dataclass
class _HiddenInputs:
    h1: torch.Tensor
    h3: torch.Tensor | None
    g: torch.Tensor


def _time_round_robin(runners: dict, inp, cfg: Config, tick: Callable[[], None]) -> tuple[dict, dict]:
    """Warm up every runner (dropping those that fail, with the reason), then time them,
    interleaved, ``cfg.repeats`` times. Returns ``(times, failures)``."""
    live, failed = dict(runners), {}
    for name, r in list(live.items()):
        try:
            for _ in range(max(1, cfg.warmup)):
                r.fwd(inp)
                r.fwd_bwd(inp)
            synchronize(cfg.device)
        except Exception as exc:  # a backend that cannot run these inputs: report, go on
            failed[name] = _reason(exc)
            del live[name]
    times = {name: {"fwd": [], "fwd_bwd": []} for name in live}
    names = list(live)
    for rep in range(cfg.repeats):
        k = rep % len(names) if names else 0
        for name in names[k:] + names[:k]:  # rotate who goes first
            if name in failed:
                continue
            r = live[name]
            try:
                times[name]["fwd"].append(time_call(lambda r=r: r.fwd(inp), cfg.device))
                times[name]["fwd_bwd"].append(time_call(lambda r=r: r.fwd_bwd(inp), cfg.device))
            except Exception as exc:  # e.g. out of memory on a later call
                failed[name] = _reason(exc)
                del times[name]
        tick()
    return times, failed


def _peak_bytes(runner, inp, device: torch.device) -> int | None:
    """Extra CUDA memory one forward+backward needs above what was already allocated."""
    if device.type != "cuda":
        return None
    runner.zero_grad(inp)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    runner.fwd_bwd(inp)
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def _max_rel_err(runner, inp, y_ref: torch.Tensor) -> float | None:
    """``max|y - y_ref| / max|y_ref|`` of one forward: a fast wrong kernel must not go unseen."""
    if isinstance(runner, P.MatmulFloor):
        return None
    y = runner.forward(inp.x).detach().double()
    return float((y - y_ref.double()).abs().max() / y_ref.double().abs().max().clamp_min(1e-30))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _paired_ratio(a: list[float], b: list[float] | None) -> float | None:
    """Median of ``a[i] / b[i]`` over repeats timed in the same round; providers that ran
    every round have aligned lists. Falls back to the ratio of medians otherwise."""
    if not a or not b:
        return None
    if len(a) != len(b):
        return _ratio(median(a), median(b))
    return median([x / y for x, y in zip(a, b, strict=True) if y > 0])


def _ffn_rows(cfg, setup, tokens, runners, skipped, times, failed, inp) -> list[dict]:
    flops = ffn_flops_per_token(setup.variant, setup.dim, setup.hidden)["matmul"] * tokens
    med = {n: {k: median(v) for k, v in t.items()} for n, t in times.items()}
    saved = {n: runners[n].saved_bytes(inp) for n in med}
    y_ref = setup.module(inp.x).detach()  # the oracle, to check every provider's output
    rows = []
    for name in cfg.providers:
        row = {"kind": "ffn", "variant": setup.variant, "dim": setup.dim, "hidden": setup.hidden,
               "tokens": tokens, "provider": name}
        reason = skipped.get(name) or failed.get(name)
        if name not in med:
            rows.append({**row, "status": "skipped", "reason": reason})
            continue
        m = med[name]
        ref, floor = times.get("reference"), times.get("matmul")
        t = times[name]
        backend = runners[name].backend
        if backend in ("fused", "triton"):  # which elementwise engine ran at this size
            v = get_variant(setup.variant)
            row["kernel"] = plan(backend, inp.x, activation=v.activation,
                                 hidden_dim=setup.hidden, gated=v.gated)[1]
        row.update(status="ok", backend=backend,
                   fwd_ms=m["fwd"] * 1e3, fwd_bwd_ms=m["fwd_bwd"] * 1e3,
                   # the fastest call and the spread: on a shared machine contention only ever
                   # adds time, so a wide spread says how far to trust the median
                   fwd_ms_min=min(t["fwd"]) * 1e3, fwd_bwd_ms_min=min(t["fwd_bwd"]) * 1e3,
                   fwd_spread=spread(t["fwd"]), fwd_bwd_spread=spread(t["fwd_bwd"]))
        for k, mult in (("fwd", 1), ("fwd_bwd", 3)):
            rate = mult * flops / m[k]
            row[f"{k}_flops_per_s"] = rate
            row[f"{k}_vs_reference"] = _paired_ratio(t[k], ref and ref[k])
            row[f"{k}_vs_matmul"] = _paired_ratio(t[k], floor and floor[k])
        s = saved[name]
        row["saved_bytes_per_token"] = None if s is None else s / tokens
        row["saved_vs_reference"] = _ratio(s, saved.get("reference"))
        row["peak_bytes"] = _peak_bytes(runners[name], inp, cfg.device)
        row["max_rel_err"] = _max_rel_err(runners[name], inp, y_ref)
        rows.append(row)
    return rows


def _elementwise_rows(cfg, setup, tokens, tick) -> list[dict]:
    names = list(dict.fromkeys(n for n in map(E.elementwise_provider, cfg.providers) if n))
    if not names:
        return []
    runners, skipped = {}, {}
    for name in names:
        try:
            runners[name] = E.build_elementwise(name, setup)
        except P.Skip as exc:
            skipped[name] = str(exc)
    gated = get_variant(setup.variant).gated
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
    kw = {"dtype": setup.dtype, "device": setup.device}

    def t():
        return torch.randn(tokens, setup.hidden, generator=gen).to(**kw)

    inp = _HiddenInputs(t().requires_grad_(), t().requires_grad_() if gated else None, t())
    times, failed = _time_round_robin(runners, inp, cfg, tick)
    n_in = 2 if gated else 1
    unit = tokens * setup.hidden * setup.dtype.itemsize
    # The least any implementation must move: forward reads the inputs and writes the output;
    # backward reads the upstream gradient and the inputs and writes one gradient per input.
    moved = {"fwd": (n_in + 1) * unit, "fwd_bwd": (n_in + 1 + 1 + 2 * n_in) * unit}
    ref = times.get("reference")
    rows = []
    for name in names:
        row = {"kind": "elementwise", "variant": setup.variant, "hidden": setup.hidden,
               "tokens": tokens, "provider": name}
        if name not in times:
            rows.append({**row, "status": "skipped", "reason": skipped.get(name) or failed.get(name)})
            continue
        row["status"] = "ok"
        for k in ("fwd", "fwd_bwd"):
            sec = median(times[name][k])
            row[f"{k}_ms"] = sec * 1e3
            row[f"{k}_bytes"] = moved[k]
            row[f"{k}_bytes_per_s"] = moved[k] / sec
            row[f"{k}_vs_reference"] = _paired_ratio(times[name][k], ref and ref[k])
        rows.append(row)
    return rows


def _add_shares(rows: list[dict], elementwise: list[dict], ceilings: dict) -> None:
    """Each row's rate as a share of this device's ceiling (matmul FLOP/s, copy bytes/s)."""
    for r in rows:
        for k in ("fwd", "fwd_bwd"):
            if f"{k}_flops_per_s" in r:
                r[f"{k}_matmul_share"] = r[f"{k}_flops_per_s"] / ceilings["matmul_flops_per_s"]
    for r in elementwise:
        for k in ("fwd", "fwd_bwd"):
            if f"{k}_bytes_per_s" in r:
                r[f"{k}_copy_share"] = r[f"{k}_bytes_per_s"] / ceilings["copy_bytes_per_s"]


def measure(cfg: Config, tick: Callable[[], None] = lambda: None) -> dict:
    """Run the whole benchmark; returns the bench.json object (without targets)."""
    before = device_ceilings(cfg.device, cfg.dtype)
    rows: list[dict] = []
    elementwise: list[dict] = []
    for variant in cfg.variants:
        for hidden in cfg.hiddens(variant):
            setup = P.make_setup(variant, cfg.dim, hidden, dtype=cfg.dtype, device=cfg.device,
                                 seed=cfg.seed)
            runners, skipped = {}, {}
            for name in cfg.providers:
                try:
                    runners[name] = P.build_runner(name, setup)
                except P.Skip as exc:
                    skipped[name] = str(exc)
            for tokens in cfg.tokens:
                inp = P.make_inputs(setup, tokens, seed=cfg.seed)
                times, failed = _time_round_robin(runners, inp, cfg, tick)
                rows += _ffn_rows(cfg, setup, tokens, runners, skipped, times, failed, inp)
                if cfg.elementwise:
                    elementwise += _elementwise_rows(cfg, setup, tokens, tick)
                del inp
    ceilings = best_ceilings(before, device_ceilings(cfg.device, cfg.dtype))
    _add_shares(rows, elementwise, ceilings)
    return {"machine": machine_info(cfg.device), "config": cfg.to_json(), "ceilings": ceilings,
            "rows": rows, "elementwise": elementwise}


def _steps(cfg: Config) -> int:
    shapes = sum(len(cfg.hiddens(v)) for v in cfg.variants) * len(cfg.tokens)
    per_shape = cfg.repeats * (2 if cfg.elementwise else 1)
    return shapes * per_shape


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from . import bench_report as R

    cfg = Config.from_args(args)
    out = prepare_out_dir(args.out)
    err = Console(stderr=True)
    with Progress(TextColumn("bench"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("bench", total=_steps(cfg))
        result = measure(cfg, tick=lambda: progress.advance(task))
    result["targets"] = R.evaluate_targets(result)
    # Strict JSON: a NaN/inf measurement (a NaN output's error, say) is written as null.
    io.atomic_write_json(out / "bench.json", io.json_safe(result))
    io.atomic_write_bytes(out / "bench.md", R.to_markdown(result).encode("utf-8"))
    try:
        R.write_chart(result, out / "bench.png")
        chart = "bench.png"
    except ImportError as exc:  # a bare GPU machine without matplotlib: keep the numbers
        chart = f"no chart ({exc.name} is not installed)"
    if args.json:
        print_json(io.json_safe(result))
        return 0
    console = Console()
    if not console.is_terminal:  # piped into a file: do not squeeze the tables to 80 columns
        console = Console(width=140)
    R.print_report(result, console)
    console.print(f"wrote {Path(out) / 'bench.json'}, bench.md, {chart}")
    return 0
