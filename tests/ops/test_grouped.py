"""Grouped expert products, token permutation and the grouped fused FFN (ffnlab.ops.grouped,
ffnlab.ops.grouped_function) against per-segment loops of plain torch ops."""

from __future__ import annotations

import pytest
import torch

from ffnlab.errors import UsageError
from ffnlab.ops.grouped import (
    grouped_mm,
    grouped_mm_unsupported_reasons,
    grouped_mm_weight,
    packed_halves,
    permute_tokens,
    sort_by_expert,
    unpermute_tokens,
)
from ffnlab.ops.grouped_function import grouped_feed_forward
from ffnlab.ops.reference import ffn_reference

# rtol, atol per dtype for one product / one FFN (bfloat16: 8 bits of mantissa)
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2)}


def _offsets(counts):
    return torch.tensor(counts).cumsum(0).to(torch.int32)


def _loop_mm(a, b, counts):
    return torch.cat([s @ b[e] for e, s in enumerate(a.split(counts))])


def _loop_weight(a, b, counts):
    return torch.stack([sa.T @ sb for sa, sb in zip(a.split(counts), b.split(counts), strict=True)])


# counts with an empty expert in the middle and at both ends; 16 / 8 columns are aligned
# for torch._grouped_mm, 6 / 5 are not (the per-segment fallback runs)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k, n", [(16, 8), (6, 5)])
def test_grouped_mm_matches_loop(dtype, k, n):
    torch.manual_seed(0)
    counts = [0, 3, 0, 4, 0]
    a = torch.randn(sum(counts), k, dtype=dtype)
    w = torch.randn(len(counts), n, k, dtype=dtype)  # [E, N, K], used transposed as the FFN does
    rtol, atol = TOL[dtype]
    got = grouped_mm(a, w.transpose(1, 2), _offsets(counts))
    want = _loop_mm(a.double(), w.transpose(1, 2).double(), counts)
    torch.testing.assert_close(got.double(), want, rtol=rtol * 10, atol=atol * 10)
    g = torch.randn(sum(counts), n, dtype=dtype)
    got_w = grouped_mm_weight(g, a, _offsets(counts))
    want_w = _loop_weight(g.double(), a.double(), counts)
    assert got_w.shape == (len(counts), n, k)
    assert torch.all(got_w[[0, 2, 4]] == 0)  # an expert with no row gets a zero gradient
    torch.testing.assert_close(got_w.double(), want_w, rtol=rtol * 10, atol=atol * 10)


def test_grouped_mm_unsupported_reasons():
    a32, b32 = torch.randn(4, 8), torch.randn(2, 8, 8)
    assert grouped_mm_unsupported_reasons(a32, b32) == []
    assert "not torch.float64" in grouped_mm_unsupported_reasons(a32.double(), b32.double())[0]
    assert "16 bytes" in grouped_mm_unsupported_reasons(torch.randn(4, 6), torch.randn(2, 6, 8))[0]
    # a non-contiguous view (no unit stride) takes the per-segment fallback, same result
    a = torch.randn(5, 16)[:, ::2]
    assert grouped_mm_unsupported_reasons(a, b32)
    torch.testing.assert_close(grouped_mm(a, b32, _offsets([2, 3])), _loop_mm(a, b32, [2, 3]))
    # the zero-row case never reaches torch._grouped_mm
    assert grouped_mm(torch.randn(0, 8), b32, _offsets([0, 0])).shape == (0, 8)


def test_sort_permute_unpermute():
    idx = torch.tensor([[2, 0], [0, 1], [2, 1]])  # T=3 tokens, k=2, E=4 (expert 3 gets none)
    order, counts, offsets = sort_by_expert(idx, 4)
    assert counts.tolist() == [2, 2, 2, 0]
    assert offsets.tolist() == [2, 4, 6, 6] and offsets.dtype == torch.int32
    assert idx.reshape(-1)[order].tolist() == [0, 0, 1, 1, 2, 2]
    assert (order // 2).tolist() == [0, 1, 1, 2, 0, 2]  # stable: token order within an expert
    x = torch.arange(3.0).unsqueeze(1).repeat(1, 2)  # token t's row is [t, t]
    scale = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    xs = permute_tokens(x, order, 2, scale)
    assert xs[:, 0].tolist() == [0 * 2, 1 * 3, 1 * 4, 2 * 6, 0 * 1, 2 * 5]
    back = unpermute_tokens(permute_tokens(x, order, 2), order, 3, 2, scale)
    torch.testing.assert_close(back, x * scale.sum(1, keepdim=True))


def _loop_ffn(xs, counts, w1, w2, w3, b1, b2, b3, activation):
    outs, start = [], 0
    for e, c in enumerate(counts):
        pick = lambda t: None if t is None else t[e]  # noqa: B023
        outs.append(ffn_reference(xs[start : start + c], w1[e], w2[e], pick(w3), pick(b1),
                                  pick(b2), pick(b3), activation=activation))  # fmt: skip
        start += c
    return torch.cat(outs)


def _weights(e, dim, hidden, gated, bias, dtype, grad=True):
    torch.manual_seed(1)
    mk = lambda *s: (torch.randn(*s, dtype=dtype) * 0.5).requires_grad_(grad)
    w1, w2 = mk(e, hidden, dim), mk(e, dim, hidden)
    w3 = mk(e, hidden, dim) if gated else None
    b1, b2 = (mk(e, hidden), mk(e, dim)) if bias else (None, None)
    b3 = mk(e, hidden) if bias and gated else None
    return w1, w2, w3, b1, b2, b3


@pytest.mark.parametrize("recompute", ["none", "activation", "full"])
@pytest.mark.parametrize("activation, gated, bias", [("swish", True, False), ("gelu", False, True),
                                                     ("identity", True, True)])  # fmt: skip
def test_grouped_feed_forward_gradcheck(recompute, activation, gated, bias):
    counts = [2, 0, 3]
    xs = torch.randn(sum(counts), 3, dtype=torch.float64, requires_grad=True)
    ws = _weights(3, 3, 4, gated, bias, torch.float64)
    fn = lambda x, *w: grouped_feed_forward(x, _offsets(counts), *w, activation=activation,
                                            recompute=recompute)  # fmt: skip
    torch.testing.assert_close(fn(xs, *ws), _loop_ffn(xs, counts, *ws, activation))
    assert torch.autograd.gradcheck(fn, (xs, *ws), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_feed_forward_dtypes_aligned(dtype):
    """dim 16 / hidden 24: torch._grouped_mm runs; forward and backward match the loop."""
    counts = [5, 0, 2, 6]
    assert grouped_mm_unsupported_reasons(torch.randn(1, 16, dtype=dtype)) == []
    ws = _weights(4, 16, 24, True, False, dtype)
    xs = torch.randn(sum(counts), 16, dtype=dtype, requires_grad=True)
    y = grouped_feed_forward(xs, _offsets(counts), *ws, activation="swish")
    yr = _loop_ffn(xs, counts, *ws, "swish")
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y, yr, rtol=rtol * 5, atol=atol * 5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [xs, ws[0], ws[1], ws[2]], g)
    want = torch.autograd.grad(yr, [xs, ws[0], ws[1], ws[2]], g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol * 5, atol=atol * 20)


def test_grouped_feed_forward_bad_shapes():
    ws = _weights(2, 4, 6, True, False, torch.float32, grad=False)
    with pytest.raises(UsageError, match=r"offsets must be \[2\]"):
        grouped_feed_forward(torch.randn(3, 4), _offsets([3]), *ws, activation="swish")
    with pytest.raises(UsageError, match=r"xs must be \[M, 4\]"):
        grouped_feed_forward(torch.randn(3, 5), _offsets([1, 2]), *ws, activation="swish")
    with pytest.raises(UsageError, match="beta applies only to swish"):
        grouped_feed_forward(torch.randn(3, 4), _offsets([1, 2]), *ws, activation="gelu", beta=2.0)


def test_recompute_modes_save_what_they_say():
    """Bytes saved by the grouped op: none > activation > full, by the [M, hidden] tensors of
    the table in ffnlab.ops.function (gated: h1, h3, a, m / h1, h3 / none)."""
    from ffnlab.ops.memory import saved_tensor_bytes

    counts, hidden = [4, 0, 5], 6
    ws = _weights(3, 4, hidden, True, False, torch.float64)
    xs = torch.randn(sum(counts), 4, dtype=torch.float64, requires_grad=True)
    saved = {}
    for mode in ("none", "activation", "full"):
        saved[mode], _ = saved_tensor_bytes(
            lambda m=mode: grouped_feed_forward(xs, _offsets(counts), *ws, activation="swish",
                                                recompute=m),
            exclude=[xs, *(w for w in ws if w is not None)],
        )  # fmt: skip
    row = sum(counts) * hidden * 8  # one [M, hidden] float64 tensor
    offsets_bytes = 3 * 4
    assert saved["full"] == offsets_bytes
    assert saved["activation"] == offsets_bytes + 2 * row
    assert saved["none"] == offsets_bytes + 4 * row


@pytest.mark.parametrize("dim", [1, -1])
def test_packed_halves_are_views_of_either_layout_gate_first(dim):
    t = torch.arange(2 * 6 * 3, dtype=torch.float64).reshape(2, 6, 3)
    t = t if dim == 1 else t.transpose(1, 2)  # halves along the last dim
    rows = torch.arange(6)
    gate_rows, up_rows = rows[:3], rows[3:]
    for interleaved, gate_first in ((False, True), (False, False), (True, True), (True, False)):
        if interleaved:
            first, second = rows[0::2], rows[1::2]
        else:
            first, second = gate_rows, up_rows
        want_gate, want_up = (first, second) if gate_first else (second, first)
        gate, up = packed_halves(t, interleaved, gate_first, dim=dim)
        assert torch.equal(gate, t.index_select(dim, want_gate))
        assert torch.equal(up, t.index_select(dim, want_up))
        assert gate.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()  # a view
