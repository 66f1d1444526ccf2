"""Reading and printing numbers from results files: one rule for every table and report.

JSON results hold numbers that may be missing (``None``), not finite (a diverged run), or not
numbers at all (a hand-edited file); tables print them all the same way.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_float", "fmt_number"]


def as_float(x: Any) -> float:
    """A finite float, or NaN for None, booleans, non-numbers and infinities.

    >>> as_float(3), as_float(None), as_float(float("inf"))
    (3.0, nan, nan)
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return math.nan
    x = float(x)
    return x if math.isfinite(x) else math.nan


def fmt_number(x: Any, spec: str = ".3f", *, na: str = "n/a", suffix: str = "",
               scale: float = 1.0) -> str:
    """``format(x * scale, spec) + suffix``, or ``na`` where :func:`as_float` gives NaN.

    >>> fmt_number(0.1234, ".1f", scale=100, suffix="%"), fmt_number(None, na="-")
    ('12.3%', '-')
    """
    v = as_float(x)
    return na if math.isnan(v) else f"{v * scale:{spec}}{suffix}"
