"""Property tests: every variant and every backend that can run here, against the float64 reference.

Tolerance table (max error / magnitude bound, see ``_bound``):

========  ======  ==============================================================================
dtype     tol     why
========  ======  ==============================================================================
float64   1e-10   same maths, different summation order: ~k·2^-53 with k <= a few hundred
float32   5e-5    matmuls of length <= 64 in fp32 (2^-24 each) plus fp32 activation internals
bfloat16  5e-2    8 mantissa bits: inputs, h1/h3 and the hidden product are each rounded (2^-8)
float16   1e-2    11 mantissa bits: the same three roundings (2^-11), plus fp16 accumulation
========  ======  ==============================================================================

The bound is ``|W2|·(|a| + |h1|·(|h3| + 1)) + |b2|`` computed in float64 from absolute values,
so a relative tolerance on it covers cancellation in the output and the propagation of the
rounding of h1 through the activation (whose slope is at most ~1.13 for every activation
here, and 2|h1| for relu2, covered by the |h1| factor). A wrong formula gives an error of the
order of the bound itself, far above any entry of the table.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (default, 25 examples per test) or ``thorough`` (500).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import ffnlab
from ffnlab import FeedForward
from ffnlab.ops import dispatch
from ffnlab.ops.reference import hidden_activation

TOL = {torch.float64: 1e-10, torch.float32: 5e-5, torch.bfloat16: 5e-2, torch.float16: 1e-2}
VARIANTS = list(ffnlab.VARIANTS)


def _backends() -> list[str]:
    probe = torch.zeros(1, 1)
    names = []
    for b in dispatch.BACKENDS:
        if b == "auto":
            continue
        if b == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            continue
        if dispatch.why_not(b, probe) is None:
            names.append(b)
    return names


BACKENDS = _backends()


def _bound(ffn64: FeedForward, x64: torch.Tensor) -> torch.Tensor:
    """|W2|·(|a| + |h1|·(|h3| + 1)) + |b2| in float64, shape like the output."""

    def absolute(lin, inp):  # |W| |inp| + |b|
        return inp.abs() @ lin.weight.abs().T + (lin.bias.abs() if lin.bias is not None else 0)

    h1 = F.linear(x64, ffn64.w1.weight, ffn64.w1.bias)
    h3 = None if ffn64.w3 is None else F.linear(x64, ffn64.w3.weight, ffn64.w3.bias)
    a = hidden_activation(ffn64.activation, h1, h3, ffn64.beta_value).abs()
    h3_mag = 1.0 if ffn64.w3 is None else absolute(ffn64.w3, x64)
    return absolute(ffn64.w2, a + absolute(ffn64.w1, x64) * (h3_mag + 1.0))


def _make(variant, dim, hidden, bias, beta, dtype, backend, recompute):
    ffn64 = FeedForward(dim, hidden, variant, bias=bias, beta=beta, dtype=torch.float64,
                        backend="reference")
    ffn = FeedForward(dim, hidden, variant, bias=bias, beta=beta, dtype=dtype, backend=backend,
                      recompute=recompute)
    ffn.load_state_dict({k: v.to(dtype) for k, v in ffn64.state_dict().items()})
    # The oracle sees exactly the (rounded) weights the tested module sees.
    ffn64.load_state_dict({k: v.double() for k, v in ffn.state_dict().items()})
    return ffn64, ffn


shapes = st.tuples(
    st.integers(0, 3),  # leading dims beyond rows: 0..3 extra singleton-ish dims
    st.integers(0, 300),  # rows
    st.integers(1, 24),  # dim
    st.integers(1, 40),  # hidden (not a multiple of anything in particular)
)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    variant=st.sampled_from(VARIANTS),
    shape=shapes,
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    bias=st.booleans(),
    beta=st.sampled_from([1.0, 1e-3, 0.5, 20.0]),
    layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    recompute=st.sampled_from(dispatch.RECOMPUTE_MODES),
)
def test_forward_matches_float64_reference(
    backend, variant, shape, dtype, scale, bias, beta, layout, recompute
):
    extra, rows, dim, hidden = shape
    if dtype == torch.float16 and scale > 30:
        scale = 30.0  # 1e4-sized inputs overflow float16's 65504 in the matmuls themselves
    if not ffnlab.get_variant(variant).has_beta:
        beta = 1.0
    if backend == "triton":
        rows = min(rows, 64)  # the interpreter is slow
    ffn64, ffn = _make(variant, dim, hidden, bias, beta, dtype, backend, recompute)
    gen = torch.Generator().manual_seed(rows * 1000 + dim * 10 + hidden)
    lead = (2,) * extra
    if layout == "transposed":
        x64 = (torch.randn(*lead, dim, rows, generator=gen, dtype=torch.float64) * scale).transpose(-1, -2)
    elif layout == "strided":
        x64 = (torch.randn(*lead, rows, 2 * dim, generator=gen, dtype=torch.float64) * scale)[..., ::2]
    else:
        x64 = torch.randn(*lead, rows, dim, generator=gen, dtype=torch.float64) * scale
    x = x64.to(dtype)
    x64 = x.double()  # the oracle's input is the rounded input
    with torch.no_grad():
        y = ffn(x)
        want = ffn64(x64)
        bound = _bound(ffn64, x64)
    assert y.shape == want.shape and y.dtype == dtype
    err = (y.double() - want).abs()
    finite = torch.isfinite(want)
    assert not torch.isnan(y[finite]).any(), "NaN where the reference is finite"
    assert (err[finite] <= TOL[dtype] * bound[finite] + 1e-30).all(), (
        f"max err/bound {(err[finite] / bound[finite]).max().item():.3g} > {TOL[dtype]}"
    )


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    variant=st.sampled_from(VARIANTS),
    rows=st.integers(1, 40),
    special=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    where=st.integers(0, 10_000),
)
def test_nan_and_inf_propagate_like_the_reference(backend, variant, rows, special, dtype, where):
    dim, hidden = 6, 10
    ffn64, ffn = _make(variant, dim, hidden, None, 1.0, dtype, backend, "activation")
    x = torch.randn(rows, dim, dtype=dtype)
    x.view(-1)[where % x.numel()] = special
    with torch.no_grad():
        y = ffn(x)
        want = ffn64(x.double())
    assert torch.equal(torch.isnan(y), torch.isnan(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(y.double()[finite], want[finite], rtol=1e-4, atol=1e-4)
