"""Options, exit statuses and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import torch

from ..errors import UsageError, check_choice, check_positive_int
from ..files import prepare_out_dir
from ..variants import parse_variant_list

__all__ = [
    "DTYPES", "EXIT_INTERRUPTED", "EXIT_USAGE", "add_common", "guarded", "parse_device",
    "parse_dtype", "parse_variants", "prepare_out_dir", "print_json",
]

EXIT_USAGE = 2  # bad input: one line on stderr, never a traceback
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT (128 + 2)

# What a command may raise for bad input; each becomes one line on stderr and EXIT_USAGE.
USAGE_ERRORS = (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError,
                IsADirectoryError, PermissionError)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def add_common(
    p: argparse.ArgumentParser,
    *,
    out: str | None = None,
    variants: bool = True,
    device: bool = True,
    dtype: str | None = None,
    seed: bool = False,
    json_flag: bool = True,
) -> None:
    """Add the options every command spells the same way (only those a command uses)."""
    if out is not None:
        p.add_argument("--out", default=out, help=f"output folder (default: {out})")
    if variants:
        p.add_argument("--variants", default="all", help="comma-separated variant names, or all")
    if device:
        p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    if dtype is not None:
        p.add_argument("--dtype", default=dtype, help=f"float32, bfloat16, float16, float64 (default: {dtype})")
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def parse_variants(text: str | None) -> list[str]:
    return parse_variant_list(text)


def parse_int_list(flag: str, text: str) -> list[int]:
    """``"512, 2048"`` -> ``[512, 2048]``: positive integers, no repeats; a UsageError naming
    ``flag`` for anything else (or for an empty list)."""
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


def parse_dtype(text: str) -> torch.dtype:
    check_choice("dtype", text, DTYPES)
    return DTYPES[text]


def parse_device(text: str) -> torch.device:
    """A usable torch.device, or a UsageError saying why not (e.g. cuda with no GPU)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {text!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA GPU is available here")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {text!r} is not supported (use cpu or cuda)")
    return dev


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """``fn()``'s exit status, with bad input as ``PROG: error: MESSAGE`` on stderr (exit 2)
    and Ctrl-C as ``PROG: interrupted`` (exit 130)."""
    try:
        return int(fn() or 0)
    except USAGE_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
