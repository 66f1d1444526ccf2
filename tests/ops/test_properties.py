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

Backward (``test_backward_matches_float64_reference``): every gradient (input, weights, biases,
learnable beta) against float64 autograd through the reference, elementwise, relative to the
bound of ``_grad_bounds`` (the backward's products in absolute values). ``BWD_TOL``, with the
largest err/bound seen over the thorough profile (500 examples per backend, fused and triton):

========  =======  =========  =========================================================
dtype     tol      max seen   why
========  =======  =========  =========================================================
float64   1e-14    1.8e-16    ~1.6 units of 2^-53; tol leaves room for longer sums
float32   1e-6     2.9e-7     ~5 units of 2^-24 (relu2's 2·h1 slope adds one rounding)
bfloat16  3e-2     8.6e-3     ~2 units of 2^-8: dm, dh1/dh3 and the matmul output rounded
float16   4e-3     4.3e-4     ~1 unit of 2^-11, same roundings
========  =======  =========  =========================================================

The bound is ~100-300x the typical gradient (sums of random-sign terms), so in float32/64 a
relative error above ~1e-4 of a gradient fails; in half precision only gross errors (a wrong
formula) are caught here, the exact checks being ``tests/ops/test_function.py``'s.

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
        if not dispatch.backend_unsupported_reasons(b, probe):
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


# --- backward --------------------------------------------------------------------------------

# Unit roundoff of each dtype: a value near zero whose sign rounding can flip (see below).
EPS = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8,
       torch.float16: 2.0**-11}
BWD_TOL = {torch.float64: 1e-14, torch.float32: 1e-6, torch.bfloat16: 3e-2, torch.float16: 4e-3}
# Activations whose derivative jumps, and where: relu (and so reglu) and xielu (by αn) at 0,
# GPT-OSS's clamped gate at its limit 7 (and its value branch at ±7, see _grad_bounds).
KINKED = {"relu": 0.0, "xielu": 0.0, "clamped_swish": 7.0}


def _grad_bounds(ffn64: FeedForward, x64: torch.Tensor, g64: torch.Tensor, dtype) -> dict:
    """Elementwise magnitude of every gradient, float64, keyed like ``named_parameters`` + "x".

    Built like ``_bound``: the backward's products with every factor replaced by its absolute
    value, and ``|act'(h1)|`` by ``2·max(1, β)·(|h1| + 1)`` (covers every activation here:
    slopes <= 1.13, relu2's 2|h1|, swish's β scaling). For kinked activations, a unit whose
    h1 is within rounding of 0 may take the other side of the kink in low precision, a jump
    of the whole slope: such entries get a bound of 1/tol times their size, i.e. no check.
    """
    t = lambda lin: lin.weight.abs()
    beta = max(1.0, float(ffn64.beta_value) if ffn64.beta is None else float(ffn64.beta.abs().max()))
    x_abs, g_abs = x64.abs(), g64.abs()
    h1 = F.linear(x64, ffn64.w1.weight, ffn64.w1.bias)
    h1_mag = x_abs @ t(ffn64.w1).T + (ffn64.w1.bias.abs() if ffn64.w1.bias is not None else 0)
    h3_mag = 1.0
    if ffn64.w3 is not None:
        h3_mag = x_abs @ t(ffn64.w3).T + (ffn64.w3.bias.abs() if ffn64.w3.bias is not None else 0)
        if ffn64.activation == "clamped_swish":  # GPT-OSS multiplies by (clamp(h3) + 1)
            h3_mag = h3_mag + 1.0
    a_abs = hidden_activation(ffn64.activation, h1, None, ffn64.beta_value).abs()
    dm = g_abs @ t(ffn64.w2)  # [.., hidden]
    slope = 2.0 * beta * (h1_mag + 1.0)
    if ffn64.activation in KINKED:
        at = KINKED[ffn64.activation]
        near_zero = (h1 - at).abs() <= 16 * EPS[dtype] * (h1_mag + 1e-300)
        slope = slope + near_zero / BWD_TOL[dtype]
    dh1 = dm * slope * h3_mag
    dh3 = dm * (a_abs + h1_mag + 1.0) if ffn64.w3 is not None else None
    if dh3 is not None and ffn64.activation == "clamped_swish":  # the value clamp's jump at ±7
        h3 = F.linear(x64, ffn64.w3.weight, ffn64.w3.bias)
        dh3 = dh3 + dm * ((h3.abs() - 7.0).abs() <= 16 * EPS[dtype] * (h3_mag + 1e-300)) / BWD_TOL[dtype]
    rows = lambda a: a.reshape(-1, a.shape[-1])
    m_abs = (a_abs + h1_mag + 1.0) * h3_mag
    out = {
        "x": dh1 @ t(ffn64.w1) + (dh3 @ t(ffn64.w3) if dh3 is not None else 0),
        "w1.weight": rows(dh1).T @ rows(x_abs),
        "w2.weight": rows(g_abs).T @ rows(m_abs),
        "w1.bias": rows(dh1).sum(0),
        "w2.bias": rows(g_abs).sum(0),
    }
    if dh3 is not None:
        out["w3.weight"] = rows(dh3).T @ rows(x_abs)
        out["w3.bias"] = rows(dh3).sum(0)
    # d act / d beta = h1² σ'(β h1) <= h1² / 4: bounded by slope * |h1| for the sum
    out["beta"] = (rows(dm * h3_mag * slope * (h1_mag + 1.0))).sum(0)
    # xielu's raw alphas: |d act / d p| <= h1², |d act / d n| <= |expm1(min(h1, ε)) - h1|
    out["alpha_p"] = out["alpha_n"] = rows(dm * h3_mag * (h1_mag + 1.0) ** 2).sum().reshape(1)
    return out


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@given(
    variant=st.sampled_from(VARIANTS),
    shape=st.tuples(st.integers(0, 2), st.integers(1, 70), st.integers(1, 20), st.integers(1, 33)),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]),
    scale=st.sampled_from([1.0, 30.0]),
    bias=st.booleans(),
    learnable_beta=st.sampled_from([False, "scalar", "per_unit"]),
    beta=st.sampled_from([1.0, 0.5, 20.0]),
    layout=st.sampled_from(["contiguous", "transposed"]),
    recompute=st.sampled_from(dispatch.RECOMPUTE_MODES),
)
def test_backward_matches_float64_reference(
    backend, variant, shape, dtype, scale, bias, learnable_beta, beta, layout, recompute
):
    """Input, weight, bias and learnable-beta gradients, elementwise within ``BWD_TOL`` of the bound."""
    extra, rows, dim, hidden = shape
    if dtype == torch.float16:
        scale = 1.0  # keeps h1·h3·W2 products inside float16's range
    if not ffnlab.get_variant(variant).has_beta:
        beta, learnable_beta = 1.0, False
    if backend == "triton":
        rows = min(rows, 24)  # the interpreter is slow
    kw = dict(bias=bias, beta=beta, learnable_beta=learnable_beta)
    ffn64 = FeedForward(dim, hidden, variant, dtype=torch.float64, backend="reference", **kw)
    ffn = FeedForward(dim, hidden, variant, dtype=dtype, backend=backend, recompute=recompute, **kw)
    ffn.load_state_dict({k: v.to(dtype) for k, v in ffn64.state_dict().items()})
    ffn64.load_state_dict({k: v.double() for k, v in ffn.state_dict().items()})
    gen = torch.Generator().manual_seed(rows * 1000 + dim * 10 + hidden)
    lead = (2,) * extra
    if layout == "transposed":
        x64 = torch.randn(*lead, dim, rows, generator=gen, dtype=torch.float64).transpose(-1, -2)
    else:
        x64 = torch.randn(*lead, rows, dim, generator=gen, dtype=torch.float64)
    x = (x64 * scale).to(dtype).requires_grad_(True)
    x64 = x.detach().double().requires_grad_(True)
    g = torch.randn(*lead, rows, dim, generator=gen, dtype=torch.float64).to(dtype)
    ffn(x).backward(g)
    ffn64(x64).backward(g.double())
    with torch.no_grad():
        bounds = _grad_bounds(ffn64, x64.detach(), g.double(), dtype)
    got = {"x": x.grad, **{n: p.grad for n, p in ffn.named_parameters()}}
    want = {"x": x64.grad, **{n: p.grad for n, p in ffn64.named_parameters()}}
    assert set(got) == set(want)
    for name, grad in got.items():
        assert grad is not None and grad.dtype == dtype and grad.shape == want[name].shape, name
        bound = bounds[name].reshape(want[name].shape) if name == "beta" and want[name].dim() else (
            bounds[name].sum() if name == "beta" else bounds[name])
        err = (grad.double() - want[name]).abs()
        ratio = (err / (bound + 1e-300)).max().item()
        tol = BWD_TOL[dtype]
        assert (err <= tol * bound + 1e-30).all(), f"{name}: max err/bound {ratio:.3g} > {tol}"
