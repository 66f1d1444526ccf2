"""Grouped expert products and the token permutation of a mixture of experts.

A mixture-of-experts layer sends each of ``T`` tokens to ``k`` of ``E`` experts. Sorting the
``T*k`` (token, expert) pairs by expert once makes every expert's tokens one contiguous segment
of rows; ``offsets [E]`` (int32) holds the cumulative segment ends, so expert ``e`` owns rows
``offsets[e-1]:offsets[e]`` (``offsets[-1] == M``, the number of rows). Then

* :func:`grouped_mm` multiplies each segment by its expert's matrix (the FFN's projections),
* :func:`grouped_mm_weight` sums each segment's outer products (the weight gradients),
* :func:`sort_by_expert`, :func:`permute_tokens` and :func:`unpermute_tokens` sort the
  tokens and bring the expert outputs back to token order with their gate weights.

The grouped products run ``torch._grouped_mm`` where the installed torch has it for the
operands' device, dtype and alignment (:func:`grouped_mm_unsupported_reasons`), else one
``torch.mm`` per non-empty segment. Measured on torch 2.13 (CPU): ``torch._grouped_mm`` takes
float32, bfloat16 and float16 (not float64) and needs every row stride and data pointer a
multiple of 16 bytes (``dim`` and ``hidden`` multiples of 4 in float32, of 8 in bfloat16); it has
no autograd formula on the CPU, which is why :mod:`ffnlab.ops.grouped_function` writes the
backward itself.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "grouped_mm",
    "grouped_mm_unsupported_reasons",
    "grouped_mm_weight",
    "packed_halves",
    "permute_tokens",
    "row_experts",
    "segment_rows",
    "sort_by_expert",
    "unpermute_tokens",
]

_GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _aligned(t: Tensor) -> bool:
    """A 2-D or 3-D operand ``torch._grouped_mm`` accepts: unit stride in one of the last two
    dims, the other stride and the data pointer multiples of 16 bytes."""
    s = t.stride()[-2:]
    if 1 not in s:
        return False
    other = s[0] if s[1] == 1 else s[1]
    batch_ok = t.dim() == 2 or (t.stride(0) * t.element_size()) % 16 == 0
    return (other * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0 and batch_ok


def grouped_mm_unsupported_reasons(*operands: Tensor) -> list[str]:
    """Why ``torch._grouped_mm`` cannot multiply ``operands`` here: sentences, empty if it can.

    The rules are this torch's, as measured (module docstring): on the CPU float32, bfloat16
    and float16 with 16-byte aligned strides; on CUDA only bfloat16 on compute capability 9.0
    and above (the devices its CUTLASS kernels are built for).
    """
    if not hasattr(torch, "_grouped_mm"):
        return [f"torch {torch.__version__} has no torch._grouped_mm"]
    t = operands[0]
    reasons = []
    if t.device.type == "cpu":
        if t.dtype not in _GROUPED_DTYPES:
            reasons.append(f"torch._grouped_mm takes float32, bfloat16 or float16, not {t.dtype}")
    elif t.device.type == "cuda":
        if t.dtype != torch.bfloat16:
            reasons.append(f"torch._grouped_mm on CUDA is used for bfloat16 only, not {t.dtype}")
        elif torch.cuda.get_device_capability(t.device) < (9, 0):
            reasons.append("torch._grouped_mm needs compute capability 9.0 or above")
    else:
        reasons.append(f"torch._grouped_mm is not used on {t.device.type}")
    if not reasons and not all(_aligned(o) for o in operands):
        reasons.append("an operand's row stride or data pointer is not a multiple of 16 bytes")
    return reasons


def segment_rows(offsets: Tensor) -> list[tuple[int, int, int]]:
    """``[(expert, start, end), ...]`` for the non-empty segments of ``offsets [E]`` (one
    host synchronisation: ``offsets.tolist()``)."""
    out, start = [], 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            out.append((e, start, end))
        start = end
    return out


def row_experts(offsets: Tensor, n_rows: int) -> Tensor:
    """``[M]`` (int64): the expert owning each of the ``n_rows`` sorted rows of ``offsets [E]``
    (no host synchronisation). Equivalent PyTorch::

        torch.repeat_interleave(torch.arange(E), torch.diff(offsets, prepend=[0]))
    """
    counts = torch.diff(offsets, prepend=offsets.new_zeros(1)).long()
    return torch.repeat_interleave(torch.arange(offsets.shape[0], device=offsets.device),
                                   counts, output_size=n_rows)  # fmt: skip


def grouped_mm(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """``a [M, K]`` by ``b [E, K, N]`` segment-wise -> ``[M, N]``.

    Rows ``offsets[e-1]:offsets[e]`` of ``a`` are multiplied by ``b[e]`` (``b`` may be a
    transposed view such as ``w.transpose(1, 2)`` of ``w [E, N, K]``). Equivalent PyTorch::

        out = torch.empty(M, N)
        start = 0
        for e, end in enumerate(offsets.tolist()):
            out[start:end] = a[start:end] @ b[e]
            start = end
    """
    if a.shape[0] == 0:
        return a.new_zeros(0, b.shape[-1])
    if not grouped_mm_unsupported_reasons(a, b):
        return torch._grouped_mm(a, b, offs=offsets)
    out = a.new_zeros(a.shape[0], b.shape[-1])
    for e, start, end in segment_rows(offsets):
        torch.mm(a[start:end], b[e], out=out[start:end])
    return out


def grouped_mm_weight(a: Tensor, b: Tensor, offsets: Tensor) -> Tensor:
    """Per-segment ``a^T b``: ``a [M, P]``, ``b [M, Q]`` -> ``[E, P, Q]`` (zero for an empty
    segment). The weight gradients of :func:`grouped_mm`. Equivalent PyTorch::

        out = torch.zeros(E, P, Q)
        start = 0
        for e, end in enumerate(offsets.tolist()):
            out[e] = a[start:end].T @ b[start:end]
            start = end
    """
    n_groups = offsets.shape[0]
    at = a.t()  # [P, M]: the strides _grouped_mm needs for a sum over segments of M
    if a.shape[0] > 0 and not grouped_mm_unsupported_reasons(at, b):
        return torch._grouped_mm(at, b, offs=offsets)
    out = a.new_zeros(n_groups, a.shape[1], b.shape[1])
    for e, start, end in segment_rows(offsets):
        torch.mm(at[:, start:end], b[start:end], out=out[e])
    return out


def sort_by_expert(expert_idx: Tensor, n_experts: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sort the (token, slot) pairs of ``expert_idx [T, k]`` (int64 expert ids) by expert.

    Returns ``(order, counts, offsets)``: ``order [T*k]`` the flat pair indices sorted by
    expert (stable: ties keep token order), ``counts [E]`` (int64) tokens per expert and
    ``offsets [E]`` (int32) their cumulative sum. Pair ``i`` is token ``i // k``, slot
    ``i % k``. Equivalent PyTorch::

        flat = expert_idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        offsets = counts.cumsum(0).int()

    ``index_add_`` replaces ``bincount``: its output size does not depend on the data, so
    ``torch.compile`` traces it without a graph break.
    """
    flat = expert_idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = flat.new_zeros(n_experts).index_add_(0, flat, torch.ones_like(flat))
    return order, counts, counts.cumsum(0).to(torch.int32)


def permute_tokens(x: Tensor, order: Tensor, top_k: int, scale: Tensor | None = None) -> Tensor:
    """The rows of ``x [T, dim]`` in expert order: ``[T*k, dim]``, row ``j`` is token
    ``order[j] // k``, multiplied by ``scale.reshape(-1)[order[j]]`` when ``scale [T, k]`` is
    given (Llama 4 gates the expert input). Equivalent PyTorch::

        xs = x[order // top_k]
        if scale is not None:
            xs = xs * scale.reshape(-1)[order, None]
    """
    xs = x.index_select(0, torch.div(order, top_k, rounding_mode="floor"))
    if scale is not None:
        xs = xs * scale.reshape(-1).index_select(0, order).unsqueeze(1).to(xs.dtype)
    return xs


def unpermute_tokens(
    ys: Tensor, order: Tensor, n_tokens: int, top_k: int, weights: Tensor | None = None
) -> Tensor:
    """Sum the expert outputs ``ys [T*k, dim]`` (expert order) back to ``[T, dim]``, each
    weighted by its gate ``weights [T, k]`` (None: weight 1), in one ``index_add``.
    Equivalent PyTorch::

        out = torch.zeros(T, dim)
        w = weights.reshape(-1)[order] if weights is not None else 1
        out.index_add_(0, order // top_k, ys * w[:, None])
    """
    if weights is not None:
        ys = ys * weights.reshape(-1).index_select(0, order).unsqueeze(1).to(ys.dtype)
    token = torch.div(order, top_k, rounding_mode="floor")
    return ys.new_zeros(n_tokens, ys.shape[1]).index_add(0, token, ys)


def packed_halves(t: Tensor, interleaved: bool, gate_first: bool, dim: int) -> tuple[Tensor, Tensor]:
    """The gate and up halves of packed experts' ``t`` along ``dim`` (``gate_up_proj``, its
    bias, or a product's output): views, the two halves concatenated or every other row
    (``interleaved``), returned gate first whichever comes first in ``t``."""
    n = t.shape[dim]
    if interleaved:
        idx = [slice(None)] * t.dim()
        idx[dim] = slice(0, None, 2)
        first = t[tuple(idx)]
        idx[dim] = slice(1, None, 2)
        second = t[tuple(idx)]
    else:
        first, second = t.narrow(dim, 0, n // 2), t.narrow(dim, n // 2, n - n // 2)
    return (first, second) if gate_first else (second, first)
