"""Error helpers shared by the library and the command line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UsageError(ValueError):
    """A bad argument from a user: the CLI prints its message on one line and exits 2."""


def unknown_choice(kind: str, value: object, choices: Iterable[str]) -> ValueError:
    """A ValueError for an unknown ``kind`` naming close matches among ``choices``.

    >>> str(unknown_choice("variant", "swigl", ["swiglu", "geglu"]))
    "unknown variant 'swigl'; did you mean 'swiglu'? (choices: swiglu, geglu)"
    """
    choices = list(choices)
    close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UsageError(f"unknown {kind} {value!r}{hint} (choices: {', '.join(choices)})")


def check_choice(kind: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise :func:`unknown_choice`."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        raise unknown_choice(kind, value, choices)
    return value


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is a positive integer, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value
