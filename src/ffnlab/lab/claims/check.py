"""Every claim of the sources checked against one results dict (:func:`check_claims`)."""

from __future__ import annotations

from collections.abc import Mapping

from ..names import is_moe
from .quality import (
    claim_glu_best,
    claim_glu_quality,
    claim_relu_dies,
    claim_saturation,
    claim_smooth_beats_relu,
    claim_swish_beta,
)
from .speed import claim_glu_compute, claim_sigmoid_cost, claim_speed_order
from .verdict import Verdict

__all__ = ["ALL_CLAIMS", "check_claims"]

ALL_CLAIMS = (claim_speed_order, claim_sigmoid_cost, claim_smooth_beats_relu, claim_relu_dies,
              claim_saturation, claim_swish_beta, claim_glu_quality, claim_glu_compute,
              claim_glu_best)


def _dense_only(results: Mapping) -> Mapping:
    """``results`` without its mixture-of-experts variants and their comparisons: the sources'
    claims are about the dense FFNs (an MoE of SwiGLU is not a contender for "the best FFN")."""
    variants = results.get("variants")
    if not isinstance(variants, list) or not any(
            isinstance(v, Mapping) and is_moe(v.get("name")) for v in variants):
        return results
    comps = results.get("comparisons")
    out = dict(results)
    out["variants"] = [v for v in variants if not (isinstance(v, Mapping) and is_moe(v.get("name")))]
    if isinstance(comps, list):
        out["comparisons"] = [c for c in comps if not (isinstance(c, Mapping) and (
            is_moe(c.get("a")) or is_moe(c.get("b"))))]
    return out


def check_claims(results: Mapping) -> list[Verdict]:
    """Every claim of the sources checked against ``results``, in a fixed order (mixture of
    experts variants left out: :func:`_dense_only`)."""
    results = _dense_only(results)
    return [check(results) for check in ALL_CLAIMS]


