"""Table of FFN variants: formula, gated, hidden size at a given dim, parameters, FLOPs/token."""

from __future__ import annotations

import argparse

from ..errors import check_positive_int
from ..sizing import default_hidden_dim, ffn_flops_per_token, ffn_params
from ..variants import get_variant
from .common import add_common, parse_variants, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dim", type=int, default=4096, help="model width (default: 4096)")
    p.add_argument("--multiple-of", type=int, default=256, help="gated hidden rounding (default: 256)")
    add_common(p, device=False)


def rows(names: list[str], dim: int, multiple_of: int) -> list[dict]:
    out = []
    for name in names:
        v = get_variant(name)
        hidden = default_hidden_dim(name, dim, multiple_of=multiple_of)
        flops = ffn_flops_per_token(name, dim, hidden)
        out.append(
            {
                "name": name,
                "gated": v.gated,
                "activation": v.activation,
                "formula": v.formula,
                "source": v.source,
                "dim": dim,
                "hidden": hidden,
                "params": ffn_params(name, dim, hidden),
                "flops_per_token": flops["total"],
                "matmul_flops_per_token": flops["matmul"],
            }
        )
    return out


def run(args: argparse.Namespace) -> int:
    dim = check_positive_int("--dim", args.dim)
    multiple_of = check_positive_int("--multiple-of", args.multiple_of)
    data = rows(parse_variants(args.variants), dim, multiple_of)
    if args.json:
        print_json(data)
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"FFN variants at dim={dim} (gated hidden: LLaMA rule, multiple_of={multiple_of})")
    for col, kw in (
        ("variant", {}),
        ("gated", {}),
        ("formula", {}),
        ("hidden", {"justify": "right"}),
        ("params", {"justify": "right"}),
        ("GFLOP/token", {"justify": "right"}),
        ("source", {}),
    ):
        t.add_column(col, **kw)
    for r in data:
        t.add_row(
            r["name"],
            "yes" if r["gated"] else "no",
            r["formula"],
            f"{r['hidden']:,}",
            f"{r['params']:,}",
            f"{r['flops_per_token'] / 1e9:.4f}",
            r["source"],
        )
    Console().print(t)
    return 0
