"""Recommend an FFN variant from a lab run's measurements on this machine.

Reads a ``results.json`` written by ``ffnlab compare`` (``--results PATH``; by default
``runs/demo/results.json`` or ``runs/compare/results.json``) and names the variant that best
fits ``--priority``, with the trade-off in measured numbers and the runner-up.

Rules (ties are decided by the next criterion, never by order in the file):

* quality: lowest validation bits per byte;
* speed: highest training tokens/s; variants within the 5 % timing noise of the fastest are
  treated as equally fast and the best quality among them wins;
* memory: fewest bytes saved for backward per token; equal byte counts (within 1 %) are
  decided by quality.

``--dim N`` adds what the pick and the runner-up cost per layer at model width N.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import files
from ..errors import check_choice, check_positive_int
from ..lab.advise import PRIORITIES, find_results, find_robustness, load_results, recommend

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=None, metavar="PATH",
                   help="results.json of a lab run (default: runs/demo or runs/compare)")
    p.add_argument("--priority", default="quality",
                   help="quality, speed or memory (default: quality)")
    p.add_argument("--dim", type=int, default=None,
                   help="also show parameters, FLOPs and memory at this model width")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _print_text(rec: dict, path: Path) -> None:
    m = rec["measured_on"]
    print(f"Recommended for {rec['priority']}: {rec['pick']}")
    for r in rec["reasons"]:
        print(f"  {r}")
    if rec["runner_up"]:
        print(f"  {rec['runner_up']['text']}")
    for name, d in (rec.get("at_dim") or {}).items():
        if d is None:
            continue
        est = d.get("saved_bytes_per_token_est")
        mem = f", ~{est:,} saved bytes/token (scaled from the run)" if est is not None else ""
        print(f"  At dim {d['dim']}: {name} hidden {d['hidden']}, {d['params']:,} params per "
              f"layer, {d['matmul_flops_per_token']:,} matmul FLOPs/token, elementwise "
              f"{d['elementwise_share']:.2%} of FLOPs{mem}.")
    if rec.get("other_priorities"):
        print("  For other priorities: " + ", ".join(
            f"{p} -> {name}" for p, name in rec["other_priorities"].items()) + ".")
    print(f"  Measured: {path} ({m.get('preset')} preset, {m.get('steps')} steps, "
          f"{m.get('device')}, {m.get('dtype')}). Small runs; re-check at your scale.")


def run(args: argparse.Namespace) -> int:
    check_choice("priority", args.priority, PRIORITIES)
    if args.dim is not None:
        check_positive_int("--dim", args.dim)
    path = find_results(args.results)
    rec = recommend(load_results(path), args.priority, args.dim, robust=find_robustness(path))
    if args.json:
        print(json.dumps(files.json_safe({"results": str(path), **rec}), indent=2, allow_nan=False))
    else:
        _print_text(rec, path)
    return 0
