"""What every claim check returns: a :class:`Verdict`, with the helpers the checks share.

The checks themselves are in :mod:`.quality` (quality, dead units, saturation, Swish's β) and
:mod:`.speed` (time ratios against a band); :mod:`.check` runs them all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ...numbers import as_float
from ..names import GATED_TWINS, label
from ..verdicts import ClaimVerdict

__all__ = ["Verdict", "label", "metric", "not_measured", "twins"]


@dataclass(frozen=True)
class Verdict:
    """One claim of the sources, checked: ``verdict`` is supported / not supported / inconclusive."""

    claim_id: str
    claim: str
    source: str
    verdict: ClaimVerdict
    explanation: str
    numbers: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.claim_id, "claim": self.claim, "source": self.source,
                "verdict": self.verdict, "explanation": self.explanation, "numbers": self.numbers}


def metric(by: Mapping, name: str, key: str) -> float:
    """``by[name][key]`` as a float (NaN when the variant or the value is absent)."""
    return as_float(by[name].get(key)) if name in by else math.nan


def not_measured(cid: str, claim: str, source: str, needed: Sequence[str], by: Mapping,
                 what: str = "") -> Verdict | None:
    """The inconclusive verdict of a claim whose variants ``needed`` are not all in ``by``,
    else None."""
    absent = [n for n in needed if n not in by]
    if absent:
        return Verdict(cid, claim, source, ClaimVerdict.INCONCLUSIVE,
                       f"Not measured: {', '.join(absent)} not in this run{what}.",
                       {"missing": absent})
    return None


def twins(by: Mapping) -> list[tuple[str, str]]:
    """``(gated, plain)`` pairs of :data:`.comparisons.GATED_TWINS` with both in ``by``."""
    return [(g, p) for g, p in GATED_TWINS.items() if g in by and p in by]
