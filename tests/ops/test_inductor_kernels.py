"""Inductor's single-pass CPU elementwise kernels against the reference formulas.

Each kernel is compiled on first use (~1-2 s each on a 2-core CPU, cached on disk after), so
the sizes are small and the cases chosen to compile each (activation, layout) pair once per
dtype that matters.

Tolerance (per element: |error| <= tol * (1 + |expected| + |factor|), ``factor`` the
multiplier of act' in a gradient): float64 1e-12 (float64 maths; erf/exp a few ulps apart),
float32 1e-5 (inductor's vectorised exp/erf/tanh differ from ATen's by a few ulps of 2^-24),
bfloat16 1e-2 (maths in float32, each output rounded once: 2^-9 relative, plus margin).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ffnlab
from ffnlab.ops import dispatch, inductor_kernels
from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.reference import ffn_reference, hidden_activation

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}
VARIANTS = list(ffnlab.VARIANTS)


def _check(actual, expected, dtype, what="", factor=None):
    assert actual.dtype == dtype and actual.shape == expected.shape, what
    bound = 1.0 + expected.abs()
    if factor is not None:
        bound = bound + factor.double().abs()
    err = (actual.double() - expected).abs() / bound
    if err.numel():
        assert err.max().item() <= TOL[dtype], f"{what}: {err.max():.3g} > {TOL[dtype]}"


def _reference(activation, h1, h3, beta, dm):
    """m, dh1, dh3, dbeta in float64 by autograd through the reference formulas."""
    x = h1.detach().double().requires_grad_()
    v = None if h3 is None else h3.detach().double().requires_grad_()
    b = beta.detach().double().requires_grad_() if isinstance(beta, torch.Tensor) else beta
    m = hidden_activation(activation, x, v, b)
    m.backward(dm.double())
    dbeta = b.grad if isinstance(b, torch.Tensor) else None
    return m.detach(), x.grad, None if v is None else v.grad, dbeta


def _inputs(variant, rows, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    gated = ffnlab.get_variant(variant).gated
    h1, h3, dm = (torch.randn(rows, hidden, generator=g, dtype=torch.float64) * 3 for _ in "abc")
    return h1.to(dtype), (h3.to(dtype) if gated else None), dm.to(dtype)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_float64(variant):
    act = ffnlab.get_variant(variant).activation
    h1, h3, dm = _inputs(variant, 37, 19, torch.float64)
    m_ref, dh1_ref, dh3_ref, _ = _reference(act, h1, h3, 1.0, dm)
    m, _ = inductor_kernels.hidden_forward(act, h1, h3, only_if_faster=False)
    _check(m, m_ref, torch.float64, "m")
    dh1, dh3, m2, _ = inductor_kernels.hidden_backward(act, dm.clone(), h1, h3,
                                                            only_if_faster=False)
    factor = dm if h3 is None else dm * h3
    _check(dh1, dh1_ref, torch.float64, "dh1", factor)
    _check(m2, m_ref, torch.float64, "recomputed m")
    if h3 is not None:
        _check(dh3, dh3_ref, torch.float64, "dh3", dm)
    else:
        assert dh3 is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["swiglu", "geglu"])
@pytest.mark.parametrize("rows", [1, 123])
def test_dtypes_and_odd_shapes(variant, dtype, rows):
    act = ffnlab.get_variant(variant).activation
    h1, h3, dm = _inputs(variant, rows, 33, dtype, seed=rows)
    m_ref, dh1_ref, dh3_ref, _ = _reference(act, h1, h3, 1.0, dm)
    m, a = inductor_kernels.hidden_forward(act, h1, h3, keep_act=True,
                                            only_if_faster=False)
    _check(m, m_ref, dtype, "m")
    _check(a, hidden_activation(act, h1.double(), None), dtype, "kept act(h1)")
    dh1, dh3, _, _ = inductor_kernels.hidden_backward(act, dm, h1, h3, a=a, need_m=False,
                                                    only_if_faster=False)
    _check(dh1, dh1_ref, dtype, "dh1", dm.double() * h3.double())
    _check(dh3, dh3_ref, dtype, "dh3", dm)


@pytest.mark.parametrize("kind", ["value", "scalar", "per_unit"])
def test_swish_beta_and_its_gradient(kind):
    h1, h3, dm = _inputs("swiglu", 29, 17, torch.float64, seed=3)
    if kind == "value":
        beta = 0.7
    elif kind == "scalar":
        beta = torch.tensor(1.3, dtype=torch.float64)
    else:
        beta = torch.rand(17, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.5
    m_ref, dh1_ref, dh3_ref, db_ref = _reference("swish", h1, h3, beta, dm)
    m, _ = inductor_kernels.hidden_forward("swish", h1, h3, beta, only_if_faster=False)
    _check(m, m_ref, torch.float64, "m")
    need = isinstance(beta, torch.Tensor)
    dh1, dh3, _, dbeta = inductor_kernels.hidden_backward("swish", dm, h1, h3, beta,
                                                          need_dbeta=need, only_if_faster=False)
    _check(dh1, dh1_ref, torch.float64, "dh1", dm * h3)
    _check(dh3, dh3_ref, torch.float64, "dh3", dm)
    if need:
        # summed over rows here; the fused op sums a scalar beta's [hidden] result itself
        got = dbeta if beta.dim() == 1 else dbeta.sum()
        torch.testing.assert_close(got, db_ref, rtol=1e-10, atol=1e-10)
    else:
        assert dbeta is None


@pytest.mark.parametrize("mode", ["none", "activation", "full"])
def test_gradcheck_through_the_fused_op(mode):
    g = torch.Generator().manual_seed(11)
    x, w1, w3 = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((6, 4), (7, 4), (7, 4)))
    w2, b1 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    beta = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
    args = [t.requires_grad_() for t in (x, w1, w2, w3, b1, beta)]

    def f(x, w1, w2, w3, b1, beta):
        return fused_feed_forward(x, w1, w2, w3, b1, activation="swish", beta=beta,
                                  recompute=mode, kernel="inductor")

    assert torch.autograd.gradcheck(f, args)


def test_dispatch_chooses_by_size(monkeypatch):
    small = torch.zeros(4, 8)
    assert dispatch.plan("auto", small, hidden=16) == ("fused", "torch")
    monkeypatch.setattr(inductor_kernels, "MIN_ELEMENTS", 64)
    assert dispatch.plan("auto", small, hidden=16) == ("fused", "inductor")
    assert dispatch.plan("fused", small, hidden=15) == ("fused", "torch")
    assert dispatch.plan("auto", small) == ("fused", "torch")  # hidden unknown: no guess
    assert dispatch.plan("auto", small.int(), hidden=16) == ("fused", "torch")
    # by activation, when told: ATen wins both directions of plain tanh
    assert dispatch.plan("auto", small, activation="tanh", hidden=16, gated=False)[1] == "torch"
    assert dispatch.plan("auto", small, activation="silu", hidden=16, gated=True)[1] == "inductor"
    monkeypatch.setattr(inductor_kernels, "_failure", "RuntimeError: no compiler")
    assert dispatch.plan("auto", small, hidden=16) == ("fused", "torch")


def test_feed_forward_above_threshold_matches_reference(monkeypatch):
    monkeypatch.setattr(inductor_kernels, "MIN_ELEMENTS", 1)
    ffn = ffnlab.FeedForward(12, variant="swiglu", dtype=torch.float64)
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    y = ffn(x)
    y.square().sum().backward()
    grads = [x.grad.clone(), *(p.grad.clone() for p in ffn.parameters())]
    w = [ffn.w1.weight, ffn.w2.weight, ffn.w3.weight]
    x2 = x.detach().requires_grad_()
    w64 = [t.detach().requires_grad_() for t in w]
    y2 = ffn_reference(x2, *w64, activation="swish")
    y2.square().sum().backward()
    torch.testing.assert_close(y, y2, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, [x2.grad, *(t.grad for t in w64)], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_compiled_feed_forward_with_inductor_kernels(monkeypatch):
    # The outer torch.compile traces the custom op (opaque); at run time the op calls the
    # engine's own compiled kernels.
    monkeypatch.setattr(inductor_kernels, "MIN_ELEMENTS", 1)
    torch._dynamo.reset()
    ffn = ffnlab.FeedForward(16, 24, "geglu", backend="fused")
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = torch.compile(ffn, fullgraph=True)(x)
    y.square().sum().backward()
    gx = x.grad.clone()
    x.grad = None
    ye = ffn_reference(x, ffn.w1.weight, ffn.w2.weight, ffn.w3.weight, activation="gelu")
    ye.square().sum().backward()
    torch.testing.assert_close(y, ye, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, x.grad, rtol=1e-5, atol=1e-5)


def test_compilation_failure_falls_back_with_one_warning(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(inductor_kernels, "_compiled", {})
    monkeypatch.setattr(inductor_kernels, "_failure", "")
    monkeypatch.setattr(inductor_kernels.torch, "compile", lambda fn, **kw: broken)
    h1, h3, dm = _inputs("swiglu", 9, 5, torch.float64)
    with pytest.warns(RuntimeWarning, match=r"no C\+\+ compiler found\); using the ATen engine"):
        m, _ = inductor_kernels.hidden_forward("swish", h1, h3)
    assert inductor_kernels.unavailable_reason() == "RuntimeError: no C++ compiler found"
    m_ref, dh1_ref, _, _ = _reference("swish", h1, h3, 1.0, dm)
    _check(m, m_ref, torch.float64, "m after fallback")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: the second call is silent
        dh1, _, _, _ = inductor_kernels.hidden_backward("swish", dm.clone(), h1, h3)
    _check(dh1, dh1_ref, torch.float64, "dh1 after fallback", dm * h3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_scratch_dm_is_overwritten_with_dh1(dtype):
    h1, h3, dm = _inputs("geglu_tanh", 21, 13, dtype, seed=9)
    _, dh1_ref, dh3_ref, _ = _reference("gelu_tanh", h1, h3, 1.0, dm)
    scratch = dm.clone()
    dh1, dh3, _, _ = inductor_kernels.hidden_backward("gelu_tanh", scratch, h1, h3,
                                                      dm_is_scratch=True, only_if_faster=False)
    assert dh1.data_ptr() == scratch.data_ptr()
    _check(dh1, dh1_ref, dtype, "dh1", dm.double() * h3.double())
    _check(dh3, dh3_ref, dtype, "dh3", dm)
    kept = dm.clone()
    inductor_kernels.hidden_backward("gelu_tanh", kept, h1, h3,  # not scratch: left alone
                                     only_if_faster=False)
    assert torch.equal(kept, dm)


def test_identity_forward_never_aliases_its_input():
    h1 = torch.randn(5, 3, dtype=torch.float64)
    m, _ = inductor_kernels.hidden_forward("identity", h1, None, only_if_faster=False)
    assert torch.equal(m, h1) and m.data_ptr() != h1.data_ptr()


def test_aten_engine_runs_where_it_measured_faster(monkeypatch):
    # Forward gelu and tanh stay on ATen (faster erf/tanh); a compile attempt would fail here.
    monkeypatch.setattr(inductor_kernels, "_kernel", lambda *a: pytest.fail("compiled"))
    h1, h3, dm = _inputs("geglu", 6, 5, torch.float64)
    assert ("gelu", True) not in inductor_kernels.FASTER_FORWARD
    m, _ = inductor_kernels.hidden_forward("gelu", h1, h3)
    torch.testing.assert_close(m, hidden_activation("gelu", h1, h3))
    inductor_kernels.hidden_backward("tanh", dm.clone(), h1, None)
    with pytest.raises(pytest.fail.Exception):
        inductor_kernels.hidden_forward("swish", h1, h3)  # listed: it would compile


@given(
    rows=st.integers(0, 300),
    hidden=st.integers(1, 200),
    variant=st.sampled_from(["swiglu", "geglu", "reglu"]),
    transposed=st.booleans(),
)
def test_any_shape_and_layout(rows, hidden, variant, transposed):
    # One compiled kernel per (variant, layout) serves every size: the vectorised loops' tails
    # (hidden not a multiple of the vector width) and empty inputs must come out right.
    act = ffnlab.get_variant(variant).activation
    h1, h3, dm = _inputs(variant, rows, hidden, torch.float32, seed=rows * 1000 + hidden)
    if transposed:  # strided views, as a caller might pass
        h1, h3 = h1.t().contiguous().t(), h3.t().contiguous().t()
    m_ref, dh1_ref, dh3_ref, _ = _reference(act, h1, h3, 1.0, dm)
    m, _ = inductor_kernels.hidden_forward(act, h1, h3, only_if_faster=False)
    _check(m, m_ref, torch.float32, "m")
    dh1, dh3, m2, _ = inductor_kernels.hidden_backward(act, dm.clone(), h1, h3, dm_is_scratch=True,
                                                       only_if_faster=False)
    _check(dh1, dh1_ref, torch.float32, "dh1", dm.double() * h3.double())
    _check(dh3, dh3_ref, torch.float32, "dh3", dm)
    _check(m2, m_ref, torch.float32, "recomputed m")


@pytest.mark.parametrize("variant", ["swiglu", "geglu", "geglu_tanh", "glu", "reglu"])
def test_extreme_values_stay_finite(variant):
    # Pre-activations of +-1e4 (and 0): the saturated tails of act and act', in float32.
    act = ffnlab.get_variant(variant).activation
    h1 = torch.tensor([[-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4]] * 3, dtype=torch.float32)
    h3 = torch.full_like(h1, 3.0)
    dm = torch.full_like(h1, -2.0)
    m_ref, dh1_ref, dh3_ref, _ = _reference(act, h1, h3, 1.0, dm)
    m, _ = inductor_kernels.hidden_forward(act, h1, h3, only_if_faster=False)
    dh1, dh3, _, _ = inductor_kernels.hidden_backward(act, dm.clone(), h1, h3,
                                                      only_if_faster=False)
    for got, want in ((m, m_ref), (dh1, dh1_ref), (dh3, dh3_ref)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_repeatable_bit_for_bit():
    # Including the beta gradient, a reduction over rows inside the generated loop.
    h1, h3, dm = _inputs("swiglu", 513, 67, torch.float32, seed=21)
    beta = torch.linspace(0.5, 1.5, 67)
    runs = [inductor_kernels.hidden_backward("swish", dm.clone(), h1, h3, beta, need_dbeta=True,
                                             only_if_faster=False) for _ in range(3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            assert torch.equal(a, b)


def test_failure_to_build_a_kernel_also_falls_back(monkeypatch):
    def unbuildable(fn, name):
        raise TypeError("replace() got an unexpected keyword argument")

    monkeypatch.setattr(inductor_kernels, "_compiled", {})
    monkeypatch.setattr(inductor_kernels, "_failure", "")
    monkeypatch.setattr(inductor_kernels, "_named", unbuildable)
    h1, h3, _ = _inputs("swiglu", 4, 3, torch.float64)
    with pytest.warns(RuntimeWarning, match="TypeError: replace"):
        m, _ = inductor_kernels.hidden_forward("swish", h1, h3)
    torch.testing.assert_close(m, hidden_activation("swish", h1, h3))
