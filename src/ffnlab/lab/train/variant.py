"""The lab's variant spellings: a registry name (``swiglu``) or a mixture of experts of one
(``moe:swiglu:8x2``), and the FFN block each stands for.

``moe:<variant>:<E>x<k>`` is :class:`ffnlab.MoEFeedForward` with ``E`` routed experts of
``<variant>``, ``k`` per token, the softmax router and no biases. Sizing rule: each expert's
hidden size is the dense variant's lab hidden size divided by ``k``, rounded half up
(``(hidden + k // 2) // k``, at least 1), so that the ``k`` experts a token passes through hold
as many weights as the dense FFN: ``moe:swiglu:8x2`` at dim 64 has experts of 85 units
(``2 x 3 x 85 x 64 = 32640``, the dense 170-unit SwiGLU's count exactly); when ``k`` does not
divide the hidden size the gap is below ``k`` hidden units' worth of weights.

Parameters per layer (no biases): ``params_total = E * expert + E * dim`` (every expert and the
router ``[E, dim]``) and ``params_active = k * expert + E * dim`` (the experts one token uses,
and the router, which runs on every token). The dense FFN's ``params`` equals
``params_active - E * dim``: the router (512 weights at dim 64 with 8 experts, 1.6 % of the
dense 32640) is the only extra an MoE token pays for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...errors import UsageError
from ...ffn import FeedForward
from ...moe import MoEFeedForward
from ...moe_spelling import VariantSpelling, parse_variant_spelling
from ...sizing import default_hidden_dim, ffn_params

__all__ = ["LOAD_BALANCE_COEF", "LabVariant", "canonical_name", "lab_variant",
           "parse_lab_variants"]

LOAD_BALANCE_COEF = 0.01
"""Weight of Switch Transformer's load-balancing loss in the training loss of an MoE run (the
paper's alpha = 1e-2, summed over layers); dense runs add nothing."""

@dataclass(frozen=True)
class LabVariant(VariantSpelling):
    """One lab variant: a parsed spelling (``base``, dense when ``n_experts`` is None; its
    ``name`` and ``is_moe``) with the lab's sizing and the block it builds."""

    def dense_hidden(self, dim: int) -> int:
        """The dense variant's hidden size in the lab (equal FFN budgets, multiple_of 1)."""
        return default_hidden_dim(self.base, dim, multiple_of=1)

    def hidden(self, dim: int) -> int:
        """Hidden units of the FFN (dense) or of each expert (MoE: dense hidden / k, rounded)."""
        h = self.dense_hidden(dim)
        if not self.is_moe:
            return h
        return max(1, (h + self.top_k // 2) // self.top_k)

    def params_total(self, dim: int) -> int:
        """Every FFN weight of one layer (router included)."""
        if not self.is_moe:
            return ffn_params(self.base, dim, self.hidden(dim), bias=False)
        expert = ffn_params(self.base, dim, self.hidden(dim), bias=False)
        return self.n_experts * expert + self.n_experts * dim

    def params_active(self, dim: int) -> int:
        """The FFN weights one token uses in one layer (``k`` experts and the router)."""
        if not self.is_moe:
            return self.params_total(dim)
        expert = ffn_params(self.base, dim, self.hidden(dim), bias=False)
        return self.top_k * expert + self.n_experts * dim

    def build(self, dim: int, *, backend: str = "auto", device: torch.device | str | None = None,
              dtype: torch.dtype | None = None) -> nn.Module:
        """The FFN block: ``[..., dim] -> [..., dim]``, no biases.

        ``backend`` is the lab's FeedForward backend; an MoE takes ``reference`` as is and runs
        its fused experts for every other choice (it has no triton path).
        """
        if not self.is_moe:
            return FeedForward(dim, self.hidden(dim), self.base, bias=False, backend=backend,
                               device=device, dtype=dtype)
        return MoEFeedForward(dim, self.hidden(dim), self.n_experts, self.top_k, self.base,
                              router="softmax", bias=False,
                              backend="reference" if backend == "reference" else "auto",
                              device=device, dtype=dtype)


def lab_variant(name: str | LabVariant) -> LabVariant:
    """Parse a lab spelling: a registry name or alias (ValueError with close matches when
    unknown), or ``moe:<variant>:<E>x<k>`` with ``E >= 1`` and ``1 <= k <= E``: the parser
    :func:`ffnlab.moe_spelling.parse_variant_spelling`, which ``ffnlab bench`` shares."""
    if isinstance(name, LabVariant):
        return name
    s = parse_variant_spelling(name)
    return LabVariant(s.base, s.n_experts, s.top_k)


def canonical_name(name: str) -> str:
    """The canonical spelling of a lab variant name (see :func:`lab_variant`)."""
    return lab_variant(name).name


def parse_lab_variants(text: str) -> list[str]:
    """``"swiglu, moe:swiglu:8x2"`` -> canonical names, validated, no repeats; a UsageError
    for a list that names nothing."""
    out: list[str] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        name = canonical_name(part)
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"no variant named in {text!r} (give names separated by commas, or all)")
    return out
