"""A learned RMSNorm per expert on each route's output, before the gate-weighted sum.

Ergo's mixture of experts normalises every expert's output with that expert's own RMSNorm
scale (``weight [E, dim]``) before the gates weight the routes:

    y_t = Σ_j g_j · w[e_j] ⊙ rms_norm(FFN_{e_j}(x_t))

:class:`OutputNorm` is that step; the reference loop (:mod:`ffnlab.ops.moe_reference`) applies it
to each expert's rows with ``weight[e]``, the grouped path (:func:`ffnlab.experts.run_experts`)
to all sorted rows at once with each row's expert's scale. It is plain autograd ops around the
fused expert op (one ``F.rms_norm`` and one product), so both paths compute the same function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import compute_dtype

__all__ = ["OutputNorm"]


@dataclass(frozen=True)
class OutputNorm:
    """The per-expert RMSNorm ``weight [E, dim]`` with ``eps``, computed in ``dtype``.

    ``dtype``: where the normalisation is computed; None: float32 for half-precision outputs,
    else the output's dtype (:func:`ffnlab.activations.compute_dtype`). A model that rounds it
    to float32 whatever its dtype (Ergo's ``rms_norm(h.float())``) gives ``torch.float32``.
    """

    weight: Tensor
    eps: float
    dtype: torch.dtype | None = None

    def __call__(self, y: Tensor, experts: Tensor | int) -> Tensor:
        """``y [N, dim]`` (rows of the experts ``experts``: an expert id, or one id per row
        ``[N]``) -> ``(rms_norm(y) * weight[experts])`` in ``y``'s dtype. Equivalent PyTorch::

            h = y.to(dtype)
            (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight[experts]).to(y.dtype)
        """
        cd = compute_dtype(y.dtype) if self.dtype is None else self.dtype
        if isinstance(experts, int):
            scale = self.weight[experts]
        else:
            scale = self.weight.index_select(0, experts)
        normed = F.rms_norm(y.to(cd), (y.shape[-1],), eps=self.eps)
        return (normed * scale).to(y.dtype)
