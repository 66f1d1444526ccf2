"""One of the processes ``ffnlab compare --nproc N`` starts.

Run as ``python -m ffnlab.commands.compare_worker CONFIG.json`` under torchrun (which sets
``RANK``, ``WORLD_SIZE`` and the rendezvous address). The parent checked the options and wrote the whole :class:`~ffnlab.lab.config.CompareConfig`
to ``CONFIG.json``, so every process runs exactly the parent's configuration: no flag is
rebuilt by hand. What each process prints and its exit status are those of ``ffnlab compare``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import UsageError
from ..lab.config import CompareConfig
from .common import guarded
from .compare import run_process

PROG = "ffnlab compare"


def load_config(path: str) -> CompareConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the compare configuration {path!r}: {exc.strerror}") from None
    return CompareConfig.from_json(text)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        if len(argv) != 1:
            raise UsageError(f"expected one argument, the configuration file; got {len(argv)}")
        return run_process(lambda: load_config(argv[0]))

    return guarded(PROG, run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
