"""Speed and memory of every FFN variant and provider, forward and forward+backward.

For each variant, hidden size and token count, every provider (reference, fused with each
recompute mode, torch.compile, Triton, Liger-Kernel, and the matmul-only floor) runs on the
same weights and inputs. Times are medians over repeats after warm-up, with the providers
interleaved round-robin inside each repeat so that drift (clock boost, other processes) hits
them all alike; a ratio between two providers is the median of their per-repeat ratios
(paired), which cancels the load changes that a ratio of two medians keeps. Also measured: bytes saved for backward per token, peak memory on CUDA, and
this device's copy bandwidth and matmul rate, so each row reads as a share of the roofline.

Writes bench.json, bench.md and bench.png into --out and prints a table and the targets.
``--variants moe:<variant>:<E>x<k>`` (e.g. ``moe:swiglu:8x2``, the spelling ``ffnlab compare``
takes: :mod:`ffnlab.moe_spelling`) instead times that mixture of experts, fused against the
reference loop (:mod:`ffnlab.bench.moe`), and writes moe_bench.json and moe_bench.md. The old
``--moe EXPERTSxTOPK`` still works, as a deprecated alias printing one line on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import files
from ..bench import BenchConfig, run_bench
from ..bench import report as R
from ..bench.moe import MoEBenchConfig, format_moe_rows, run_moe_bench
from ..bench.providers import PROVIDERS, parse_providers
from ..errors import UsageError, check_positive_int
from ..moe_spelling import MOE_PREFIX, VariantSpelling, is_moe_spelling, parse_variant_spelling
from .common import (
    add_common,
    parse_device,
    parse_dtype,
    parse_int_list,
    parse_variants,
    prepare_out_dir,
    print_json,
)

# The defaults of the flags are BenchConfig's own.
_DEFAULT = {f.name: f.default for f in dataclasses.fields(BenchConfig)}


def _comma(values) -> str:
    return ",".join(map(str, values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    variants = _comma(_DEFAULT["variants"])
    add_common(p, out="runs/bench", variants=False, dtype="float32", seed=True)
    p.add_argument("--variants", default=variants,
                   help=f"comma-separated variant names, or all (default: {variants}); or one "
                        f"mixture of experts, moe:<variant>:<experts>x<top_k> (e.g. "
                        f"moe:swiglu:8x2), timed fused against the reference loop with expert "
                        f"hidden size --hidden (default: --dim) and the first --tokens")
    p.add_argument("--dim", type=int, default=_DEFAULT["dim"],
                   help=f"model width (default: {_DEFAULT['dim']})")
    p.add_argument("--hidden", default=None,
                   help="hidden size(s), comma list (default: 4*dim plain, LLaMA rule gated)")
    p.add_argument("--multiple-of", type=int, default=_DEFAULT["multiple_of"],
                   help="the default gated hidden size is rounded up to this "
                        f"(default: {_DEFAULT['multiple_of']})")
    p.add_argument("--tokens", default=_comma(_DEFAULT["tokens"]),
                   help=f"tokens per batch, comma list (default: {_comma(_DEFAULT['tokens'])})")
    p.add_argument("--providers", default=None,
                   help=f"comma list from {', '.join(PROVIDERS)}; 'fused' = the three modes; "
                        f"'all' (default: all but compile)")
    p.add_argument("--repeats", type=int, default=_DEFAULT["repeats"],
                   help=f"timed repeats, median reported (default: {_DEFAULT['repeats']})")
    p.add_argument("--warmup", type=int, default=_DEFAULT["warmup"],
                   help=f"untimed calls first (default: {_DEFAULT['warmup']})")
    p.add_argument("--elementwise", action=argparse.BooleanOptionalAction,
                   default=_DEFAULT["elementwise"],
                   help="also time the elementwise middle alone (default: on)")
    p.add_argument("--moe", default=None, metavar="EXPERTSxTOPK",
                   help="deprecated: --moe 8x2 is --variants moe:swiglu:8x2 (with --variants "
                        "naming one variant, moe:<that variant>:8x2)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the command line asks for; a UsageError naming the flag."""
    warmup = args.warmup
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UsageError(f"--warmup must be a non-negative integer, got {warmup!r}")
    return BenchConfig(
        variants=parse_variants(args.variants),
        dim=check_positive_int("--dim", args.dim),
        hidden=None if args.hidden is None else parse_int_list("--hidden", args.hidden),
        multiple_of=check_positive_int("--multiple-of", args.multiple_of),
        tokens=parse_int_list("--tokens", args.tokens),
        dtype=parse_dtype(args.dtype),
        device=parse_device(args.device),
        providers=parse_providers(args.providers),
        repeats=check_positive_int("--repeats", args.repeats),
        warmup=warmup,
        seed=args.seed,
        elementwise=args.elementwise,
    )


def moe_spelling_from_args(args: argparse.Namespace) -> VariantSpelling | None:
    """The mixture of experts ``--variants`` names (``moe:swiglu:8x2``), or that of the
    deprecated ``--moe 8x2`` (printing one deprecation line on stderr); None for dense
    variants. A mixture of experts is timed on its own: UsageError when ``--variants`` names
    anything else too."""
    parts = [p.strip() for p in str(args.variants).split(",") if p.strip()]
    moes = [p for p in parts if is_moe_spelling(p)]
    if args.moe is not None:
        if moes:
            raise UsageError(f"--moe is the old spelling of --variants {moes[0]}: give one of them")
        if args.variants == _comma(_DEFAULT["variants"]):
            base = "swiglu"
        else:
            variants = parse_variants(args.variants)
            if len(variants) != 1:
                raise UsageError(f"--moe times one variant; --variants names {len(variants)}")
            base = variants[0]
        spelling = parse_variant_spelling(f"{MOE_PREFIX}:{base}:{args.moe}")
        print(f"ffnlab bench: --moe is deprecated; write --variants {spelling.name}",
              file=sys.stderr)  # fmt: skip
        return spelling
    if not moes:
        return None
    if len(parts) != 1:
        raise UsageError(f"a mixture of experts is timed on its own, fused against the reference "
                         f"loop: give --variants {moes[0]} alone (--variants names {len(parts)})")  # fmt: skip
    return parse_variant_spelling(moes[0])


def moe_config_from_args(args: argparse.Namespace, spelling: VariantSpelling) -> MoEBenchConfig:
    """The :class:`MoEBenchConfig` timing ``spelling`` (a mixture of experts, from
    :func:`moe_spelling_from_args`); a UsageError naming the flag."""
    hidden = [args.dim] if args.hidden is None else parse_int_list("--hidden", args.hidden)
    tokens = parse_int_list("--tokens", args.tokens)
    if len(hidden) > 1 or len(tokens) > 1:
        raise UsageError(f"{spelling.name} is timed at one shape: give one --hidden and one "
                         f"--tokens")  # fmt: skip
    return MoEBenchConfig(
        n_experts=spelling.n_experts, top_k=spelling.top_k, variant=spelling.base,
        dim=check_positive_int("--dim", args.dim), hidden=hidden[0], tokens=tokens[0],
        dtype=parse_dtype(args.dtype), device=parse_device(args.device),
        repeats=check_positive_int("--repeats", args.repeats),
        warmup=max(1, args.warmup), seed=args.seed,
    )  # fmt: skip


def _run_moe(args: argparse.Namespace, spelling: VariantSpelling) -> int:
    cfg = moe_config_from_args(args, spelling)
    out = prepare_out_dir(args.out)
    result = files.json_safe(run_moe_bench(cfg))
    (Path(out) / "moe_bench.json").write_text(json.dumps(result, indent=1))
    table = format_moe_rows(result)
    (Path(out) / "moe_bench.md").write_text(f"# ffnlab bench --variants {spelling.name}\n\n"
                                            f"{table}\n")  # fmt: skip
    if args.json:
        print_json(result)
        return 0
    print(table)
    print(f"wrote {Path(out) / 'moe_bench.json'}, moe_bench.md")
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    spelling = moe_spelling_from_args(args)
    if spelling is not None:
        return _run_moe(args, spelling)
    cfg = config_from_args(args)
    out = prepare_out_dir(args.out)
    err = Console(stderr=True)
    with Progress(TextColumn("bench"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("bench", total=cfg.progress_steps())
        result = run_bench(cfg, tick=lambda: progress.advance(task))
    chart = R.write_files(result, out)
    if args.json:
        print_json(files.json_safe(result))
        return 0
    console = Console()
    if not console.is_terminal:  # piped into a file: do not squeeze the tables to 80 columns
        console = Console(width=140)
    R.print_report(result, console)
    console.print(f"wrote {Path(out) / 'bench.json'}, bench.md, {chart}")
    return 0
