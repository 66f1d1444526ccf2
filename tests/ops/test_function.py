"""The fused FFN op against the float64 reference, forward and backward: at these sizes on CPU
the engines table runs the ``aten`` engine (the others have their own test files).

Tolerance table (``_assert_close``: max |error| <= tol * max(1, max |expected|) per tensor):

========  ======  ==============================================================================
dtype     tol     why
========  ======  ==============================================================================
float64   1e-10   gradcheck covers exactness; here only the summation order differs (~k·2^-53)
float32   2e-5    matmuls of length <= 176 in fp32 (2^-24 each, ~sqrt(k) growth) and fp32
                  activation internals; the float32 reference itself is off by ~3e-6 here
bfloat16  4e-2    8 mantissa bits: x and the weights, h1/h3, the hidden product and the output
                  are each rounded once (2^-9 relative each), plus bf16 matmul accumulation
float16   6e-3    11 mantissa bits: the same four roundings (2^-12 each) plus accumulation
========  ======  ==============================================================================

Besides the table, every half-precision result must be within 1.5x (+ a few ulps) of the error
of the reference evaluated in the same dtype: the fused op may not be less accurate than
eager PyTorch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ffnlab
from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.memory import saved_tensor_bytes
from ffnlab.ops.reference import ffn_reference

TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 4e-2, torch.float16: 6e-3}
MODES = ("none", "activation", "full")
VARIANTS = list(ffnlab.VARIANTS)
GRAD_NAMES = ("x", "w1", "w2", "w3", "b1", "b2", "b3", "beta")


def make_args(variant, n_rows=5, dim=4, hidden=6, *, bias=True, beta="fixed", dtype=torch.float64,
              lead=None, scale=1.0):  # fmt: skip
    """Random (x, w1, w2, w3, b1, b2, b3, beta) leaves requiring grad; beta per ``beta``:
    ``fixed`` (a float 1.0), ``value`` (float 0.7), ``scalar`` ([] tensor), ``per_unit``."""
    v = ffnlab.get_variant(variant)
    g = torch.Generator().manual_seed(1234)

    def leaf(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).to(dtype).requires_grad_()

    x = leaf(*(lead or (n_rows,)), dim, s=scale)
    w1, w2 = leaf(hidden, dim, s=dim**-0.5), leaf(dim + 1, hidden, s=hidden**-0.5)
    w3 = leaf(hidden, dim, s=dim**-0.5) if v.gated else None
    b1, b2 = (leaf(hidden), leaf(dim + 1)) if bias else (None, None)
    b3 = leaf(hidden) if bias and v.gated else None
    if not v.has_beta or beta == "fixed":
        b = 1.0
    elif beta == "value":
        b = 0.7
    elif beta == "scalar":
        b = (torch.tensor(1.3, dtype=torch.float64)).to(dtype).requires_grad_()
    else:
        b = (torch.rand(hidden, generator=g, dtype=torch.float64) + 0.5).to(dtype).requires_grad_()
    return x, w1, w2, w3, b1, b2, b3, b


def run(fn, args, variant, **kw):
    """Forward + backward with a fixed random upstream gradient: (y, grads by name)."""
    for t in args:
        if isinstance(t, torch.Tensor):
            t.grad = None
    act = ffnlab.get_variant(variant).activation
    y = fn(*args[:7], activation=act, beta=args[7], **kw)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y.backward(gy.to(y.dtype))
    grads = {n: t.grad for n, t in zip(GRAD_NAMES, args, strict=True) if isinstance(t, torch.Tensor)}
    return y.detach(), grads


def as64(args):
    return tuple(
        t.detach().double().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args
    )


def _err(a, e):
    return (a.double() - e.double()).abs().max().item() / max(1.0, e.abs().max().item())


def _assert_close(actual, expected, dtype, what=""):
    assert actual.shape == expected.shape, what
    assert actual.dtype == dtype, what
    if actual.numel():
        err = _err(actual, expected)
        assert err <= TOL[dtype], f"{what}: error {err:.3g} > {TOL[dtype]} ({dtype})"


# --- exactness: gradcheck in float64 ------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_every_variant_and_mode(variant, mode):
    args = make_args(variant, bias=not ffnlab.get_variant(variant).gated)
    act = ffnlab.get_variant(variant).activation

    def f(*a):
        return fused_feed_forward(*a[:7], activation=act, beta=a[7], recompute=mode)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("variant", ["swiglu", "swish"])
@pytest.mark.parametrize("beta", ["value", "scalar", "per_unit"])
@pytest.mark.parametrize("mode", ["none", "full"])
def test_gradcheck_beta(variant, beta, mode):
    args = make_args(variant, lead=(2, 3), beta=beta)

    def f(*a):
        return fused_feed_forward(*a[:7], activation="swish", beta=a[7], recompute=mode)

    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize(("variant", "options"), [("leaky_relu2", (0.2,)),
                                                  ("clamped_swiglu", (1.3, 1.5)),
                                                  ("xielu", ())])
@pytest.mark.parametrize("mode", MODES)
def test_options_and_packed_parameters_every_mode(variant, options, mode):
    # Non-default options, and xielu's raw [p, n] learnt: gradcheck and the float64 reference.
    args = list(make_args(variant, lead=(2, 3), scale=3.0))
    if variant == "xielu":
        args[7] = torch.tensor([0.4, -0.3], dtype=torch.float64, requires_grad=True)
    act = ffnlab.get_variant(variant).activation

    def f(*a):
        return fused_feed_forward(*a[:7], activation=act, beta=a[7], recompute=mode,
                                  options=options)  # fmt: skip

    assert torch.autograd.gradcheck(f, tuple(args))
    y = f(*args)
    want = ffn_reference(*args[:7], activation=act, beta=args[7], options=options)
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    default = ffn_reference(*args[:7], activation=act)
    assert (want - default).abs().max() > 1e-3  # the options (xielu: the parameters) matter


def test_beta_gradient_sums_over_all_leading_dims():
    # [2, 3, 4] input: dbeta must add up the 6 rows, as the reference's autograd does.
    args = make_args("swiglu", lead=(2, 3), beta="per_unit")
    _, got = run(fused_feed_forward, args, "swiglu", recompute="activation")
    _, want = run(ffn_reference, as64(args), "swiglu")
    assert got["beta"].shape == (6,)
    torch.testing.assert_close(got["beta"], want["beta"], rtol=1e-10, atol=1e-12)
    assert got["beta"].abs().sum() > 0


# --- dtypes against the float64 reference --------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["swiglu", "geglu", "glu", "bilinear", "relu", "gelu_tanh",
                                     "relu2", "tanh"])  # fmt: skip
@pytest.mark.parametrize("mode", MODES)
def test_dtypes_match_float64_reference(dtype, variant, mode):
    args = make_args(variant, n_rows=37, dim=24, hidden=33, dtype=dtype)
    y, g = run(fused_feed_forward, args, variant, recompute=mode)
    y64, g64 = run(ffn_reference, as64(args), variant)
    yr, gr = run(ffn_reference, args, variant)  # eager in the same dtype
    _assert_close(y, y64, dtype, "y")
    assert _err(y, y64) <= 1.5 * _err(yr, y64) + 4 * TOL[dtype] / 100
    for name in g64:
        _assert_close(g[name], g64[name], dtype, f"d{name}")
        assert _err(g[name], g64[name]) <= 1.5 * _err(gr[name], g64[name]) + TOL[dtype] / 10, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("beta", ["value", "scalar", "per_unit"])
def test_learnable_beta_half_and_single(dtype, beta):
    args = make_args("swiglu", n_rows=20, dim=8, hidden=33, beta=beta, dtype=dtype)
    y, g = run(fused_feed_forward, args, "swiglu", recompute="activation")
    y64, g64 = run(ffn_reference, as64(args), "swiglu")
    _assert_close(y, y64, dtype, "y")
    for name in g64:
        _assert_close(g[name], g64[name], dtype, f"d{name}")


# --- shapes and layouts --------------------------------------------------------------------


@pytest.mark.parametrize("n_rows", [1, 7, 123, 1000])
@pytest.mark.parametrize("hidden", [1, 33, 176])
def test_odd_shapes(n_rows, hidden):
    args = make_args("swiglu", n_rows=n_rows, dim=16, hidden=hidden, dtype=torch.float32)
    y, g = run(fused_feed_forward, args, "swiglu", recompute="activation")
    y64, g64 = run(ffn_reference, as64(args), "swiglu")
    _assert_close(y, y64, torch.float32, "y")
    for name in g64:
        _assert_close(g[name], g64[name], torch.float32, f"d{name}")


@pytest.mark.parametrize("mode", MODES)
def test_non_contiguous_input(mode):
    args = make_args("geglu", n_rows=12, dim=8, hidden=10, dtype=torch.float32)
    base = torch.randn(8, 12, 3, dtype=torch.float32)
    x = base[..., 1].t().requires_grad_()  # [12, 8], strides (1, 36)
    assert not x.is_contiguous()
    args = (x, *args[1:])
    y, g = run(fused_feed_forward, args, "geglu", recompute=mode)
    y64, g64 = run(ffn_reference, as64(args), "geglu")
    _assert_close(y, y64, torch.float32, "y")
    for name in g64:
        _assert_close(g[name], g64[name], torch.float32, f"d{name}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", ["swiglu", "relu"])
def test_empty_batch(mode, variant):
    args = make_args(variant, lead=(0, 3), dtype=torch.float32, beta="per_unit")
    y, g = run(fused_feed_forward, args, variant, recompute=mode)
    assert y.shape == (0, 3, 5)
    for name, t in zip(GRAD_NAMES, args, strict=True):
        if isinstance(t, torch.Tensor):
            assert g[name].shape == t.shape and not g[name].any(), name


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_values_no_nan_where_reference_finite(variant, dtype):
    # Pre-activations of about +-1e4: the tails of every activation and of its derivative.
    args = make_args(variant, n_rows=16, dim=4, hidden=8, dtype=dtype, scale=1e4 * 4**0.5)
    y, g = run(fused_feed_forward, args, variant, recompute="activation")
    y64, g64 = run(ffn_reference, as64(args), variant)
    finite = torch.isfinite(y64)
    assert not torch.isnan(y[finite.to(y.device)]).any()
    for name in g64:
        ok = torch.isfinite(g64[name])
        assert not torch.isnan(g[name][ok]).any(), name
        if dtype == torch.float32 and ok.all():
            assert torch.isfinite(g[name]).all(), name


def test_only_some_inputs_need_grad():
    x, w1, w2, w3, *_ = make_args("swiglu", bias=False, dtype=torch.float32)
    x = x.detach()
    w1.requires_grad_(False)
    y = fused_feed_forward(x, w1, w2, w3, activation="swish", recompute="full")
    y.sum().backward()
    assert w1.grad is None and x.grad is None
    w2.grad, w3.grad = None, None
    ffn_reference(x, w1, w2, w3, activation="swish").sum().backward()
    assert w2.grad is not None and w3.grad is not None


def test_no_grad_forward_matches():
    args = make_args("reglu", dtype=torch.float32)
    with torch.no_grad():
        y = fused_feed_forward(*args[:7], activation="relu")
    torch.testing.assert_close(y, ffn_reference(*args[:7], activation="relu"))


# --- what backward keeps -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_saved_bytes_per_mode(mode):
    n, dim, hidden = 10, 16, 40
    x, w1, w2, w3, *_ = make_args("swiglu", n_rows=n, dim=dim, hidden=hidden, bias=False,
                                  dtype=torch.float32)  # fmt: skip
    params = [w1, w2, w3]
    nbytes, _ = saved_tensor_bytes(
        lambda: fused_feed_forward(x, w1, w2, w3, activation="swish", recompute=mode),
        exclude=params,
    )
    ref, _ = saved_tensor_bytes(lambda: ffn_reference(x, w1, w2, w3, activation="swish"), params)
    # none: x, h1, h3, act(h1), m (what eager keeps); activation: x, h1, h3; full: x.
    hidden_tensors = {"none": 4, "activation": 2, "full": 0}[mode]
    assert nbytes == 4 * (n * dim + hidden_tensors * n * hidden)
    if mode == "none":
        assert nbytes == ref


def test_saved_bytes_plain_variant():
    n, dim, hidden = 10, 16, 40
    x, w1, w2, _, b1, b2, _, _ = make_args("gelu", n_rows=n, dim=dim, hidden=hidden,
                                           dtype=torch.float32)  # fmt: skip
    params = [w1, w2, b1, b2]
    got = {
        m: saved_tensor_bytes(
            lambda m=m: fused_feed_forward(x, w1, w2, None, b1, b2, activation="gelu", recompute=m),
            params,
        )[0]
        for m in MODES
    }
    assert got == {"none": 4 * (n * dim + 2 * n * hidden),
                   "activation": 4 * (n * dim + n * hidden), "full": 4 * n * dim}  # fmt: skip


# --- torch.utils.checkpoint and torch.compile --------------------------------------------


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint(reentrant):
    ffn = ffnlab.FeedForward(8, 12, "swiglu", backend="fused", learnable_beta="per_unit")
    ref = ffnlab.FeedForward(8, 12, "swiglu", backend="reference", learnable_beta="per_unit")
    ref.load_state_dict(ffn.state_dict())
    x = torch.randn(3, 5, 8, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y = torch.utils.checkpoint.checkpoint(ffn, x, use_reentrant=reentrant)
    y.square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    for (name, p), q in zip(ffn.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    ffn = ffnlab.FeedForward(16, 24, "swiglu", backend="fused", learnable_beta="scalar")
    compiled = torch.compile(ffn, fullgraph=True)
    x = torch.randn(2, 5, 16, requires_grad=True)
    y = compiled(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in ffn.parameters()]
    gx = x.grad.clone()
    ffn.zero_grad()
    x.grad = None
    ye = ffn(x)
    ye.square().sum().backward()
    torch.testing.assert_close(y, ye)
    torch.testing.assert_close(gx, x.grad)
    for g, p in zip(grads, ffn.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def _through_custom_op(x, w1, w2, w3, b1, b2, b3, *, activation, beta, recompute):
    """The custom-op path that torch.compile takes, called eagerly."""
    bt = beta if isinstance(beta, torch.Tensor) else None
    bv = 1.0 if bt is not None else float(beta)
    return torch.ops.ffnlab.ffn_forward(
        x, w1, w2, w3, b1, b2, b3, bt, activation, bv, recompute, "aten", []
    )[0]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("variant", "beta"), [("swiglu", "per_unit"), ("gelu", "fixed"),
                                               ("swish", "scalar"), ("bilinear", "fixed")])
def test_custom_op_path_equals_eager_function_path(variant, beta, mode):
    # Eager calls go through an autograd.Function, compiled ones through the custom ops:
    # both must give the same bits, forward and every gradient.
    args = make_args(variant, n_rows=7, hidden=9, beta=beta, dtype=torch.float32)
    y_op, g_op = run(_through_custom_op, args, variant, recompute=mode)
    y_fn, g_fn = run(fused_feed_forward, args, variant, recompute=mode)
    torch.testing.assert_close(y_op, y_fn, rtol=0, atol=0)
    assert g_op.keys() == g_fn.keys()
    for name in g_op:
        torch.testing.assert_close(g_op[name], g_fn[name], rtol=0, atol=0, msg=name)


def test_eager_calls_skip_the_custom_op_dispatch():
    # The per-call cost of the custom-op wrapper is what the eager Function avoids.
    x, w1, w2, w3, *_ = make_args("swiglu", bias=False, dtype=torch.float32)
    with torch.profiler.profile() as prof:
        fused_feed_forward(x, w1, w2, w3, activation="swish").sum().backward()
    names = {e.name for e in prof.events()}
    assert "ffnlab::ffn_forward" not in names and "ffnlab::ffn_backward" not in names
    with torch.profiler.profile() as prof:
        _through_custom_op(x, w1, w2, w3, None, None, None, activation="swish", beta=1.0,
                           recompute="activation").sum().backward()
    assert "ffnlab::ffn_forward" in {e.name for e in prof.events()}


def test_opcheck():
    # torch.library's own consistency checks: schema, fake tensor, autograd registration.
    x, w1, w2, w3, *_ = make_args("swiglu", bias=False, dtype=torch.float32)
    beta = torch.tensor(1.2, requires_grad=True)
    for mode in MODES:
        torch.library.opcheck(
            torch.ops.ffnlab.ffn_forward.default,
            (x, w1, w2, w3, None, None, None, beta, "swish", 1.0, mode, "aten", []),
        )
    # an activation with options (clamped SwiGLU's alpha, limit): the options list is one
    # input to torch.library, whose backward gets one None for it
    torch.library.opcheck(
        torch.ops.ffnlab.ffn_forward.default,
        (x, w1, w2, w3, None, None, None, None, "clamped_swish", 1.0, "activation", "aten",
         [1.0, 0.3]),
    )  # fmt: skip


# --- bad input -----------------------------------------------------------------------------


def test_errors_name_the_problem():
    x, w1, w2, w3, *_ = make_args("swiglu", bias=False, dtype=torch.float32)
    with pytest.raises(ValueError, match="recompute mode"):
        fused_feed_forward(x, w1, w2, w3, activation="swish", recompute="some")
    with pytest.raises(ValueError, match=r"input must be \[\.\.\., 4\]"):
        fused_feed_forward(F.pad(x, (0, 1)), w1, w2, w3, activation="swish")
    with pytest.raises(ValueError, match="beta must be a scalar or"):
        fused_feed_forward(x, w1, w2, w3, activation="swish", beta=torch.ones(2, 6))
    with pytest.raises(ValueError, match="beta applies only to swish"):
        fused_feed_forward(x, w1, w2, w3, activation="gelu", beta=0.5)
    with pytest.raises(ValueError, match="w3 must have"):
        fused_feed_forward(x, w1, w2, w3[:, :2], activation="swish")
