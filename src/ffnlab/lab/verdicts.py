"""Every word the lab decides with, in one place: the verdict of a paired comparison, of a
claim and of a speed ratio, and the default resolution.

The words are string enums: a member equals (and hashes as) its value, so results.json holds
the plain words (``"a better"``) and code that reads such a file compares them directly.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Word", "PairVerdict", "ClaimVerdict", "SpeedCall", "DEFAULT_RESOLUTION", "TIMING_NOISE",
           "SPEED_BAND"]

DEFAULT_RESOLUTION = 0.02
"""Bits per byte: a difference whose whole 95 % interval lies within ±0.02 is "equivalent"
(``--resolution``, results.json ``config.resolution_bpb``)."""

TIMING_NOISE = 0.05
"""Relative timing difference treated as noise: medians of repeated CPU timings on a shared
machine commonly move by a few percent between runs, so 5 % is the smallest gap called real."""

SPEED_BAND = TIMING_NOISE
"""A time ratio counts as different from 1 only when its whole 95 % interval lies outside
``[1/(1+SPEED_BAND), 1+SPEED_BAND]``, and as "≈" when the whole interval lies inside.

Why 5 %: it is the lab's threshold for timing differences (:data:`TIMING_NOISE`), and a smaller
gap in the elementwise part is not worth a claim: at the lab's sizes matmuls are over 95 % of an
FFN's FLOPs, so 5 % of the activation is a fraction of a percent of the FFN. It is not a bound on
run-to-run drift under load: on the 2-core development machine, shared with another measuring
job, the median sigmoid/relu ratio at 64K elements moved between 1.20 and 1.90 over thirteen
runs, far more than each run's interval. The verdicts were the same in every run there because
every ratio the claims read lay well outside the band; a ratio near a band edge would flip
between a call and "inconclusive" from run to run."""


class Word(str, Enum):
    """A verdict word: prints, formats and serialises as its value."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def of(cls, value: object, default: Word | None = None) -> Word | None:
        """The member whose value is ``value`` (a word read from JSON), else ``default``."""
        try:
            return cls(value)
        except ValueError:
            return default


class PairVerdict(Word):
    """A paired comparison ``a − b`` at a resolution ``r`` (lower bits per byte is better)."""

    A_BETTER = "a better"      # the interval lies below 0
    B_BETTER = "b better"      # the interval lies above 0
    EQUIVALENT = "equivalent"  # the whole interval lies within ±r
    UNRESOLVED = "unresolved"  # neither, or fewer than two paired seeds


class ClaimVerdict(Word):
    """A claim of the sources, decided on the comparisons and measurements."""

    SUPPORTED = "supported"
    NOT_SUPPORTED = "not supported"
    INCONCLUSIVE = "inconclusive"


class SpeedCall(Word):
    """A time ratio ``b / a`` read against ±:data:`SPEED_BAND` around 1."""

    SLOWER = "slower"       # the whole interval above 1 + band
    FASTER = "faster"       # the whole interval below 1 / (1 + band)
    SAME = "≈"              # the whole interval within the band
    UNDECIDED = "unresolved"  # the interval straddles a band edge
