"""The ``triton`` engine's kernels against float64 autograd on the reference formulas.

They run on CUDA when there is one, else on CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, which ``make test`` sets); without either the module is skipped.
Interpreted programs run in Python, so sizes stay at a few hundred rows.

Tolerance (per element: |error| <= tol * (1 + |expected| + |factor|), ``factor`` the
multiplier of act' in a gradient, see ``_check``): float32 1e-5 (fp32 maths, a few
roundings of 2^-24, and exp/erf implementations differing by a few ulps); bfloat16 1e-2 and
float16 2e-3: the inputs are exact in both, the maths runs in float32, and each output is
rounded once (half an ulp: 2^-9 and 2^-12 relative), with a margin for the float32 maths;
float64 1e-12: float64 maths throughout (erf/exp a few ulps of 2^-53 apart).
"""

from __future__ import annotations

import os

import pytest
import torch

import ffnlab
from ffnlab.activations import get_activation
from ffnlab.ops import engines
from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.reference import ffn_reference, hidden_activation

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)
tk = pytest.importorskip("ffnlab.ops.engine_triton", reason="triton is not importable")

# exp(+-1e4) overflows to inf inside sigmoid/tanh by design (1/inf = 0 is the right limit);
# the interpreter evaluates exp with numpy, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = list(TOL)
ACTS = list(tk.ACT_IDS)


def _check(actual, expected, dtype, what="", factor=None):
    """|actual - expected| <= tol * (1 + |expected| + |factor|) elementwise: ``factor`` is the
    multiplier of a derivative (dm or dm * h3), which scales its absolute rounding error."""
    assert actual.dtype == dtype and actual.shape == expected.shape, what
    bound = 1.0 + expected.abs()
    if factor is not None:
        bound = bound + factor.double().abs()
    err = (actual.double() - expected).abs() / bound
    assert err.max().item() <= TOL[dtype] if err.numel() else True, f"{what}: {err.max():.3g}"


def reference_grads(activation, h1, h3, beta, dm):
    """m, dh1, dh3, dbeta in float64 by autograd through the reference formulas."""
    x = h1.detach().double().requires_grad_()
    v = None if h3 is None else h3.detach().double().requires_grad_()
    b = beta.detach().double().requires_grad_() if isinstance(beta, torch.Tensor) else beta
    m = hidden_activation(activation, x, v, b)
    m.backward(dm.double())
    return (m.detach(), x.grad, None if v is None else v.grad,
            b.grad if isinstance(b, torch.Tensor) else None)  # fmt: skip


def inputs(n, hidden, dtype, gated=True, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: (torch.randn(n, hidden, generator=g) * scale).to(dtype).to(DEVICE)
    return mk(), (mk() if gated else None), mk()


def test_activation_list_matches_the_engines_table():
    assert set(tk.ACT_IDS) == set(engines.TRITON.activations)
    for v in ffnlab.VARIANTS.values():  # every variant has a kernel
        assert v.activation in tk.ACT_IDS
    assert tk.interpreted() == (DEVICE == "cpu")


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gated", [True, False])
def test_forward_and_backward(activation, dtype, gated):
    h1, h3, dm = inputs(123, 33, dtype, gated)
    m, a = tk.hidden_forward(activation, h1, h3, keep_act=True)
    dh1, dh3, m2, dbeta = tk.hidden_backward(activation, dm, h1, h3, need_m=True)
    m64, dh1_64, dh3_64, _ = reference_grads(activation, h1, h3, 1.0, dm)
    _check(m, m64, dtype, "m")
    _check(m2, m64, dtype, "m (backward)")
    _check(dh1, dh1_64, dtype, "dh1", dm * h3 if gated else dm)
    if gated:
        _check(dh3, dh3_64, dtype, "dh3")
        _check(a, hidden_activation(activation, h1.double()), dtype, "act")
    else:
        assert a is None and dh3 is None
    assert dbeta is None


def test_gelu_is_erf_not_tanh():
    h1 = torch.linspace(-4, 4, 257, device=DEVICE).reshape(1, -1)
    m, _ = tk.hidden_forward("gelu", h1, None)
    exact = get_activation("gelu").fn(h1.double())
    approx = get_activation("gelu_tanh").fn(h1.double())
    assert (m.double() - exact).abs().max() < 1e-6
    assert (approx - exact).abs().max() > 1e-4  # the two differ: this test can tell them apart
    dh1, *_ = tk.hidden_backward("gelu", torch.ones_like(h1), h1, None, need_m=False)
    assert (dh1.double() - get_activation("gelu").grad(h1.double())).abs().max() < 1e-6


@pytest.mark.parametrize("beta", [0.6, "scalar", "per_unit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("gated", [True, False])
def test_swish_beta_and_its_gradient(beta, dtype, gated):
    # 300 rows x 33 units: five row blocks, so the per-block partial sums are exercised.
    h1, h3, dm = inputs(300, 33, dtype, gated, scale=2.0)
    if beta == "scalar":
        beta = torch.tensor(1.3, device=DEVICE)
    elif beta == "per_unit":
        beta = torch.linspace(0.2, 2.0, 33, device=DEVICE)
    need = isinstance(beta, torch.Tensor)
    m, _ = tk.hidden_forward("swish", h1, h3, beta)
    dh1, dh3, _, dbeta = tk.hidden_backward("swish", dm, h1, h3, beta, need_dbeta=need)
    m64, dh1_64, dh3_64, db64 = reference_grads("swish", h1, h3, beta, dm)
    _check(m, m64, dtype, "m")
    _check(dh1, dh1_64, dtype, "dh1", dm * h3 if gated else dm)
    if gated:
        _check(dh3, dh3_64, dtype, "dh3")
    if need:
        got = dbeta if beta.dim() == 1 else dbeta.sum()
        # A sum of 300 fp32 terms: relative error ~300 * 2^-24 at worst.
        torch.testing.assert_close(got.double(), db64, rtol=1e-4, atol=1e-4 * db64.abs().max().item())
    else:
        assert dbeta is None


@pytest.mark.parametrize("n_rows", [1, 7, 123])
@pytest.mark.parametrize("hidden", [1, 33, 176])
def test_odd_shapes(n_rows, hidden):
    h1, h3, dm = inputs(n_rows, hidden, torch.float32)
    m, _ = tk.hidden_forward("gelu_tanh", h1, h3)
    dh1, dh3, _, _ = tk.hidden_backward("gelu_tanh", dm, h1, h3, need_m=False)
    m64, dh1_64, dh3_64, _ = reference_grads("gelu_tanh", h1, h3, 1.0, dm)
    _check(m, m64, torch.float32, "m")
    _check(dh1, dh1_64, torch.float32, "dh1", dm * h3)
    _check(dh3, dh3_64, torch.float32, "dh3")


def test_non_contiguous_and_empty():
    base = torch.randn(40, 20, device=DEVICE)
    h1, h3 = base.t(), (base * 0.5).t()  # [20, 40] column-major views
    m, _ = tk.hidden_forward("swish", h1, h3)
    _check(m, hidden_activation("swish", h1.double(), h3.double()), torch.float32, "m")
    e = torch.empty(0, 7, device=DEVICE)
    m, _ = tk.hidden_forward("relu", e, e)
    dh1, dh3, m2, dbeta = tk.hidden_backward("swish", e, e, e, torch.ones(7, device=DEVICE),
                                             need_dbeta=True)  # fmt: skip
    assert m.shape == dh1.shape == dh3.shape == m2.shape == (0, 7)
    assert dbeta.shape == (7,) and not dbeta.any()


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extreme_values(activation, dtype):
    h1 = torch.tensor([[-1e4, -300.0, -40.0, -1.0, 0.0, 1.0, 40.0, 300.0, 1e4]], device=DEVICE)
    h1, h3 = h1.to(dtype), torch.ones_like(h1).to(dtype)
    dm = torch.ones_like(h1)
    beta = torch.tensor(1.5, device=DEVICE) if activation == "swish" else 1.0
    m, _ = tk.hidden_forward(activation, h1, h3, beta)
    dh1, dh3, _, dbeta = tk.hidden_backward(activation, dm, h1, h3, beta,
                                            need_dbeta=activation == "swish")  # fmt: skip
    m64, dh1_64, dh3_64, db64 = reference_grads(activation, h1, h3, beta, dm)
    for got, want in ((m, m64), (dh1, dh1_64), (dh3, dh3_64)):
        fin = torch.isfinite(want.to(dtype))
        assert not torch.isnan(got).any()
        torch.testing.assert_close(got[fin].double(), want.to(dtype)[fin].double(),
                                   rtol=TOL[dtype], atol=TOL[dtype])  # fmt: skip
    if dbeta is not None:
        assert torch.isfinite(dbeta).all()


@pytest.mark.parametrize("mode", ["none", "activation", "full"])
@pytest.mark.parametrize("variant,learn", [("swiglu", "per_unit"), ("geglu", None),
                                           ("relu2", None), ("swish", "scalar")])  # fmt: skip
def test_fused_op_with_triton_kernels(mode, variant, learn, match_reference):
    ffn = ffnlab.FeedForward(16, 40, variant, backend="triton", recompute=mode, bias=True,
                             learnable_beta=learn or False, device=DEVICE)  # fmt: skip
    match_reference(ffn, torch.randn(3, 37, 16, device=DEVICE), rtol=1e-5, atol=1e-5)


def test_fused_op_triton_bf16_against_float64():
    g = torch.Generator().manual_seed(3)
    x, w1, w2, w3 = (torch.randn(*s, generator=g) * 0.3 for s in ((50, 24), (33, 24), (24, 33),
                                                                  (33, 24)))  # fmt: skip
    args = [t.to(torch.bfloat16).to(DEVICE).requires_grad_() for t in (x, w1, w2, w3)]
    y = fused_feed_forward(*args, activation="swish", engine="triton", recompute="activation")
    y.float().square().sum().backward()
    a64 = [t.detach().double().requires_grad_() for t in args]
    y64 = ffn_reference(*a64, activation="swish")
    y64.square().sum().backward()
    scale = lambda t: max(1.0, t.abs().max().item())
    assert (y.double() - y64).abs().max() / scale(y64) < 4e-2
    for t, t64 in zip(args, a64, strict=True):
        assert (t.grad.double() - t64.grad).abs().max() / scale(t64.grad) < 4e-2


def test_compile_fullgraph_with_triton_backend():
    # The dispatch code (environment and import checks) is traced too: no graph break.
    torch._dynamo.reset()
    ffn = ffnlab.FeedForward(16, 24, "swiglu", backend="triton", learnable_beta="scalar",
                             device=DEVICE)  # fmt: skip
    compiled = torch.compile(ffn, fullgraph=True)
    x = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)
    y = compiled(x)
    y.sum().backward()
    gx, gb = x.grad.clone(), ffn.beta.grad.clone()
    x.grad, ffn.beta.grad = None, None
    ffn(x).sum().backward()
    torch.testing.assert_close(y, ffn(x))
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gb, ffn.beta.grad)


@pytest.mark.parametrize(("activation", "options"), [("leaky_relu2", (0.2,)),
                                                     ("clamped_swish", (1.3, 2.5))])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_options_reach_the_kernels(activation, options, dtype):
    # Non-default options: a kernel reading the defaults instead would fail here.
    h1, h3, dm = inputs(50, 33, dtype, True, scale=4.0)
    m, _ = tk.hidden_forward(activation, h1, h3, options=options)
    dh1, dh3, m2, _ = tk.hidden_backward(activation, dm, h1, h3, options=options)
    x = h1.double().requires_grad_()
    v = h3.double().requires_grad_()
    m64 = hidden_activation(activation, x, v, 1.0, options)
    m64.backward(dm.double())
    assert (m64 - hidden_activation(activation, x, v)).abs().max() > 1e-2
    _check(m, m64.detach(), dtype, "m")
    _check(m2, m64.detach(), dtype, "m (backward)")
    _check(dh1, x.grad, dtype, "dh1", dm * h3)
    _check(dh3, v.grad, dtype, "dh3")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_xielu_packed_parameters_and_their_gradient(dtype):
    # 300 rows: five row blocks of partial sums, for both parameters.
    h1, _, dm = inputs(300, 33, dtype, False, scale=2.0)
    theta = torch.tensor([0.3, -0.4], dtype=torch.float64, device=DEVICE)
    m, _ = tk.hidden_forward("xielu", h1, None, theta)
    dh1, _, _, dtheta = tk.hidden_backward("xielu", dm, h1, None, theta, need_dbeta=True)
    m64, dh1_64, _, dt64 = reference_grads("xielu", h1, None, theta, dm)
    _check(m, m64, dtype, "m")
    _check(dh1, dh1_64, dtype, "dh1", dm)
    assert dtheta.shape == (2,)
    torch.testing.assert_close(dtheta.double(), dt64, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                               atol=1e-4 * dt64.abs().max().item())


@pytest.mark.parametrize("variant", ["qgeglu", "leaky_relu2", "xielu", "clamped_swiglu"])
def test_fused_op_with_triton_kernels_new_variants(variant, match_reference):
    kw = {"act_kwargs": {"slope": 0.3}} if variant == "leaky_relu2" else {}
    ffn = ffnlab.FeedForward(16, 40, variant, backend="triton", bias=True, device=DEVICE, **kw)
    ref = ffnlab.FeedForward(16, 40, variant, backend="reference", bias=True, device=DEVICE, **kw)
    ref.load_state_dict(ffn.state_dict())
    x = torch.randn(3, 37, 16, device=DEVICE) * 4
    torch.testing.assert_close(ffn(x), ref(x), rtol=1e-5, atol=1e-5)
    if variant != "leaky_relu2":  # the fixture's copy is built without act_kwargs
        match_reference(ffn, x, rtol=1e-5, atol=1e-5)
