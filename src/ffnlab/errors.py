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


def check_sizes_not_names(call: str, **sizes: object) -> None:
    """A UsageError when a size argument of ``call`` is a string: a variant name given one
    positional slot early (``FeedForward(64, "swiglu")``). The message names the argument and
    shows ``call``, the constructor's signature, where the variant comes after the sizes:
    ``hidden_dim is a size, got the string 'geglu': the variant comes after the sizes,
    FeedForward(dim, hidden_dim=None, variant='swiglu', *, ...); pass variant='geglu'``.
    """
    for name, value in sizes.items():
        if isinstance(value, str):
            raise UsageError(f"{name} is a size, got the string {value!r}: the variant comes "
                             f"after the sizes, {call}; pass variant={value!r}")  # fmt: skip


def check_positive_int(name: str, value: object) -> int:
    """``value`` as an int if it is a positive integer, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value
