"""The ``ffnlab`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them together and turns bad input into one
clear line on stderr with exit status 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .commands.common import EXIT_USAGE, guarded
from .errors import UsageError

# name -> (module, one-line help). Modules are imported when the parser is built.
COMMANDS: dict[str, tuple[str, str]] = {
    "variants": ("ffnlab.commands.variants", "table of FFN variants: formula, params, FLOPs"),
    "plot": ("ffnlab.commands.plot", "plot activation curves and their derivatives"),
    "bench": ("ffnlab.commands.bench", "speed and memory of every variant and backend"),
    "compare": ("ffnlab.commands.compare", "train a small LM per variant and write a report"),
    "advise": ("ffnlab.commands.advise", "recommend a variant from measurements"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``ffnlab CMD: error: ...``, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ffnlab",
        description="The Transformer feed-forward block: variants, kernels, and a lab.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"ffnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _command=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)

    def run() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "_run", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args._run(args)

    return guarded(f"ffnlab {command}" if command else "ffnlab", run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
