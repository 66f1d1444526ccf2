"""MoEFeedForward: the fused path against the reference loop, routers, shared experts, the
state dict, auxiliary losses, update_bias, bad input and torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

import ffnlab
from ffnlab import MoEFeedForward
from ffnlab.errors import UsageError

# rtol, atol of the output and the input gradient per dtype; parameter gradients sum over
# tokens, so their atol is 4x
TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5), torch.bfloat16: (3e-2, 3e-2)}


def _pair(dtype=torch.float64, **kw):
    """A fused MoE and a reference one with the same state."""
    torch.manual_seed(0)
    kw = {"dim": 8, "hidden_dim": 12, "n_experts": 4, "top_k": 2, **kw}
    fused = MoEFeedForward(**kw, backend="fused", dtype=dtype)
    ref = MoEFeedForward(**kw, backend="reference", dtype=dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _match(fused, ref, x, dtype):
    rtol, atol = TOL[dtype]
    xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yr = fused(xf), ref(xr)
    torch.testing.assert_close(y, yr, rtol=rtol, atol=atol)
    g = torch.randn_like(y)
    y.backward(g)
    yr.backward(g)
    torch.testing.assert_close(xf.grad, xr.grad, rtol=rtol, atol=atol)
    for (name, p), q in zip(fused.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=4 * atol, msg=name)
    assert torch.equal(fused.tokens_per_expert, ref.tokens_per_expert)


# dim 8 / hidden 12 are aligned for torch._grouped_mm in float32 and bfloat16; 15 tokens
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("router", ["softmax", "sigmoid", "sigmoid_input"])
def test_fused_matches_reference_per_dtype(dtype, router):
    fused, ref = _pair(dtype, router=router, n_shared=1, variant="swiglu")
    torch.manual_seed(3)
    _match(fused, ref, torch.randn(3, 5, 8, dtype=dtype), dtype)


@pytest.mark.parametrize("variant", list(ffnlab.VARIANTS))
def test_every_variant(variant):
    # dim 6 / hidden 10 in float64: the per-segment fallback; an odd number of tokens (7)
    fused, ref = _pair(variant=variant, dim=6, hidden_dim=10, n_experts=3, top_k=2)
    assert fused.experts.gated == ffnlab.get_variant(variant).gated
    torch.manual_seed(3)
    _match(fused, ref, torch.randn(7, 6, dtype=torch.float64), torch.float64)


@pytest.mark.parametrize("top_k", [1, 4])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_top_k_extremes_and_recompute(top_k, recompute):
    fused, ref = _pair(top_k=top_k, recompute=recompute, variant="geglu")
    torch.manual_seed(4)
    _match(fused, ref, torch.randn(9, 8, dtype=torch.float64), torch.float64)
    assert fused.tokens_per_expert.sum() == 9 * top_k
    if top_k == 4:
        assert fused.tokens_per_expert.tolist() == [9, 9, 9, 9]


def test_expert_with_no_token_and_bias_update():
    fused, ref = _pair(router="softmax", router_bias=True, norm_topk=False, routed_scaling=2.0)
    for m in (fused, ref):
        with torch.no_grad():
            m.router.bias.copy_(torch.tensor([0.0, 0.0, 0.0, -10.0]))  # softmax p <= 1
    torch.manual_seed(5)
    _match(fused, ref, torch.randn(6, 8, dtype=torch.float64), torch.float64)
    counts = fused.tokens_per_expert
    assert counts[3] == 0 and counts.sum() == 12
    assert torch.all(fused.experts.w1.grad[3] == 0)
    before = fused.router.bias.clone()
    fused.update_bias(0.01)
    mean = counts.double().mean()
    torch.testing.assert_close(fused.router.bias - before, 0.01 * torch.sign(mean - counts.double()))
    assert fused.router.bias[3] > before[3]  # the starved expert becomes more likely
    fused.update_bias(0.5, counts=torch.tensor([3, 3, 3, 3]))  # balanced: no change
    torch.testing.assert_close(fused.router.bias - before, 0.01 * torch.sign(mean - counts.double()))
    with pytest.raises(UsageError, match="needs a router bias"):
        MoEFeedForward(8, 12, 4, 2).update_bias(0.1)


def test_gradcheck_fused_float64():
    torch.manual_seed(6)
    m = MoEFeedForward(4, 6, 3, 2, "swiglu", router="sigmoid", n_shared=1, shared_gate=True,
                       backend="fused", dtype=torch.float64)  # fmt: skip
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)


def test_shared_experts_and_gate_by_hand():
    torch.manual_seed(7)
    m = MoEFeedForward(8, 12, 4, 2, "swiglu", n_shared=2, shared_hidden_dim=5, shared_gate=True,
                       dtype=torch.float64)  # fmt: skip
    assert m.shared.hidden_dim == 10
    x = torch.randn(6, 8, dtype=torch.float64)
    routed = m.experts(x, m.router(x), backend="reference")
    want = routed + torch.sigmoid(x @ m.shared_gate.weight.T) * m.shared(x)
    torch.testing.assert_close(m(x), want)
    # two shared experts of 5 units each = one FFN of their 10 concatenated units
    sh = m.shared
    parts = [ffnlab.ops.ffn_reference(x, sh.w1.weight[s], sh.w2.weight[:, s], sh.w3.weight[s],
                                      activation="swish") for s in (slice(0, 5), slice(5, 10))]  # fmt: skip
    torch.testing.assert_close(sh(x), parts[0] + parts[1])


def test_state_dict_keys():
    m = MoEFeedForward(8, 12, 4, 2, "swiglu", router="sigmoid", n_shared=1, shared_gate=True)
    shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "router.weight": [4, 8], "router.bias": [4],
        "experts.w1": [4, 12, 8], "experts.w2": [4, 8, 12], "experts.w3": [4, 12, 8],
        "shared.w1.weight": [12, 8], "shared.w2.weight": [8, 12], "shared.w3.weight": [12, 8],
        "shared_gate.weight": [1, 8],
    }  # fmt: skip
    plain = MoEFeedForward(8, 12, 4, 2, "gelu")
    assert {k: list(v.shape) for k, v in plain.state_dict().items()} == {
        "router.weight": [4, 8], "experts.w1": [4, 12, 8], "experts.w2": [4, 8, 12],
        "experts.b1": [4, 12], "experts.b2": [4, 8],
    }  # fmt: skip


def test_aux_losses_by_hand():
    torch.manual_seed(8)
    m = MoEFeedForward(8, 12, 4, 2, dtype=torch.float64)
    x = torch.randn(10, 8, dtype=torch.float64)
    m(x)
    logits = x @ m.router.weight.T
    p = logits.softmax(-1)
    counts = torch.zeros(4, dtype=torch.float64)
    for row in p.topk(2, -1).indices:
        counts[row] += 1
    torch.testing.assert_close(m.tokens_per_expert.double(), counts)
    torch.testing.assert_close(m.aux_losses["load_balance"], 4 * ((counts / 10) * p.mean(0)).sum())
    torch.testing.assert_close(m.aux_losses["z_loss"], (torch.logsumexp(logits, -1) ** 2).mean())
    sum(m.aux_losses.values()).backward()
    assert m.router.weight.grad.abs().sum() > 0
    # uniform router: the balance loss is top_k, the z-loss log(E)^2
    with torch.no_grad():
        m.router.weight.zero_()
    m(x)
    torch.testing.assert_close(m.aux_losses["load_balance"].item(), 2.0)
    torch.testing.assert_close(m.aux_losses["z_loss"].item(), math.log(4) ** 2)


def test_bad_input():
    with pytest.raises(UsageError, match="top_k=5 exceeds n_experts=4"):
        MoEFeedForward(8, 12, 4, 5)
    with pytest.raises(UsageError, match="n_experts must be an integer >= 1, got 0"):
        MoEFeedForward(8, 12, 0, 1)
    with pytest.raises(ValueError, match=r"unknown router 'sigmod'; did you mean 'sigmoid'"):
        MoEFeedForward(8, 12, 4, 2, router="sigmod")
    with pytest.raises(ValueError, match="unknown variant"):
        MoEFeedForward(8, 12, 4, 2, "swiglux")
    with pytest.raises(ValueError, match="unknown act_kwargs 'alpha'.*accepted keys: none"):
        MoEFeedForward(8, 12, 4, 2, act_kwargs={"alpha": 1.0})
    with pytest.raises(UsageError, match="give n_shared >= 1"):
        MoEFeedForward(8, 12, 4, 2, shared_gate=True)
    with pytest.raises(ValueError, match="unknown backend 'triton'"):
        MoEFeedForward(8, 12, 4, 2, backend="triton")
    m = MoEFeedForward(8, 12, 4, 2)
    with pytest.raises(ValueError, match=r"expects input \[..., 8\], got shape \[3, 7\]"):
        m(torch.randn(3, 7))
    with pytest.raises(TypeError, match="float input"):
        m(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="does not match"):
        m(torch.randn(3, 8, dtype=torch.float64))
    with pytest.raises(UsageError, match="needs a forward first"):
        MoEFeedForward(8, 12, 4, 2, router="sigmoid").update_bias()


def test_compile_fullgraph_fused():
    """The fused path is one graph: routing, sort and un-permute trace as plain ops; the
    grouped FFN is a custom op with a fake implementation (it hides the fallback's host
    synchronisation). aot_eager checks tracing and the backward graph without inductor's
    code generation (about 20 s on this machine)."""
    torch._dynamo.reset()
    m = MoEFeedForward(8, 12, 4, 2, router="sigmoid", n_shared=1)
    x = torch.randn(2, 7, 8, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    g = x.grad.clone()
    x.grad = None
    torch.testing.assert_close(y, m(x))
    m(x).sum().backward()
    torch.testing.assert_close(g, x.grad)
    assert compiled.aux_losses["load_balance"].ndim == 0


def test_compile_fullgraph_with_act_kwargs():
    """The activation's options travel through the grouped custom op (a list of floats) and
    its backward under torch.compile, and equal the reference loop's."""
    torch._dynamo.reset()
    fused, ref = _pair(torch.float32, variant="clamped_swiglu", act_kwargs={"limit": 0.5})
    torch.manual_seed(2)
    x = torch.randn(9, 8) * 3
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    xc, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yr = compiled(xc), ref(xr)
    y.sum().backward()
    yr.sum().backward()
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.experts.w1.grad, ref.experts.w1.grad, rtol=1e-5, atol=4e-5)
    xs, offsets = torch.randn(6, 8), torch.tensor([2, 2, 5, 6], dtype=torch.int32)
    ex = fused.experts
    torch.library.opcheck(torch.ops.ffnlab.grouped_ffn_forward.default,
                          (xs, offsets, ex.w1, ex.w2, ex.w3, None, None, None, "clamped_swish",
                           1.0, "activation", "aten", [1.702, 0.5]))  # fmt: skip


def test_autocast_bfloat16():
    """A float32 module under CPU autocast: both paths run their products in bfloat16."""
    fused, ref = _pair(torch.float32, n_shared=1)
    x = torch.randn(11, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yr = fused(x), ref(x)
    assert y.dtype == yr.dtype == torch.bfloat16
    torch.testing.assert_close(y, yr, rtol=3e-2, atol=3e-2)


def test_non_contiguous_and_extreme_inputs():
    fused, ref = _pair(router="sigmoid", variant="swiglu")
    torch.manual_seed(9)
    x = torch.randn(8, 5, dtype=torch.float64).T  # [5, 8], not contiguous
    assert not x.is_contiguous()
    _match(fused, ref, x, torch.float64)
    big = torch.randn(6, 8, dtype=torch.float64) * 1e3  # saturated router, huge hidden values
    y, yr = fused(big), ref(big)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, yr, rtol=1e-10, atol=1e-6)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_empty_batch(backend):
    m = MoEFeedForward(8, 12, 4, 2, backend=backend)
    x = torch.randn(2, 0, 8, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 0, 8)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.all(m.experts.w1.grad == 0)
    assert m.aux_losses["load_balance"].item() == 0 and m.aux_losses["z_loss"].item() == 0
    assert m.tokens_per_expert.tolist() == [0, 0, 0, 0]


def test_run_experts_on_outside_weights_and_options():
    """``run_experts`` on another module's weights (a strided view, as of transformers'
    interleaved ``gate_up_proj``) equals ``Experts`` on copies; activation options run on the
    reference loop and on the fused op alike."""
    from ffnlab.experts import run_experts
    from ffnlab.ops.moe_reference import experts_reference

    torch.manual_seed(0)
    moe = MoEFeedForward(6, 5, 4, 2, "swiglu", backend="reference", dtype=torch.float64)
    x = torch.randn(9, 6, dtype=torch.float64)
    routing = moe.router(x)
    ex = moe.experts
    packed = torch.stack([ex.w1, ex.w3], dim=2).reshape(4, 10, 6)  # rows g0 u0 g1 u1 ...
    weights = (packed[:, 0::2], ex.w2, packed[:, 1::2], None, None, None)
    want = ex(x, routing, backend="reference")
    for backend in ("reference", "fused"):
        got = run_experts(x, routing, weights, activation="swish", backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    opts = (1.0, 0.3)  # clamped_swish: alpha 1, limit 0.3 (clamps bite at this scale)
    got = run_experts(x, routing, weights, activation="clamped_swish", backend="reference",
                      options=opts)  # fmt: skip
    want = experts_reference(x, routing.expert_idx, routing.gates, *weights,
                             activation="clamped_swish", options=opts)  # fmt: skip
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    default = run_experts(x, routing, weights, activation="clamped_swish", backend="reference")
    assert not torch.allclose(got, default)
    fused = run_experts(x, routing, weights, activation="clamped_swish", backend="fused",
                        options=opts)  # fmt: skip
    torch.testing.assert_close(fused, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"takes options \('alpha', 'limit'\), got 1 values"):
        run_experts(x, routing, weights, activation="clamped_swish", backend="fused",
                    options=(1.0,))  # fmt: skip


# --- act_kwargs: the variant's options reach every expert, on both backends -----------------


def _clamped_swiglu(h1, h3, alpha, limit):
    """GPT-OSS's expert middle: ``a' = min(a, L)``, ``b' = clamp(b, -L, L)``,
    ``(b' + 1) · a' · σ(α a')`` (DESIGN.md's table)."""
    a = h1.clamp(max=limit)
    return (h3.clamp(-limit, limit) + 1) * a * torch.sigmoid(alpha * a)


def _moe_by_hand(m, x, middle):
    """``m``'s output on ``x [T, dim]`` from its parameters and routing, written out: every
    token's gate-weighted experts plus the shared experts."""
    r = m.router(x)
    ex = m.experts
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(r.expert_idx.shape[1]):
            e = r.expert_idx[t, j]
            h = middle(ex.w1[e] @ x[t], ex.w3[e] @ x[t])
            y[t] += r.gates[t, j] * (ex.w2[e] @ h)
    if m.shared is not None:
        s = m.shared
        y += s.w2(middle(s.w1(x), s.w3(x)))
    return y


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("act_kwargs", [{"limit": 0.4}, {"alpha": 1.0, "limit": 0.3}])
def test_act_kwargs_reach_the_experts(backend, act_kwargs):
    """GPT-OSS's clamped SwiGLU with a limit: the limit (and alpha) given as act_kwargs are the
    ones the experts compute with, checked against the formula in float64, on both backends
    and in backward (fused against reference)."""
    torch.manual_seed(0)
    m = MoEFeedForward(8, 12, 4, 2, variant="clamped_swiglu", act_kwargs=act_kwargs,
                       n_shared=1, backend=backend, dtype=torch.float64)  # fmt: skip
    opts = {"alpha": 1.702, "limit": 7.0, **act_kwargs}
    assert m.experts.options == (opts["alpha"], opts["limit"])
    assert f"act_kwargs={opts}" in repr(m)
    x = torch.randn(11, 8, dtype=torch.float64) * 4  # large enough for the clamps to bite
    want = _moe_by_hand(m, x, lambda a, b: _clamped_swiglu(a, b, opts["alpha"], opts["limit"]))
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)
    default = MoEFeedForward(8, 12, 4, 2, variant="clamped_swiglu", n_shared=1, backend=backend,
                             dtype=torch.float64)  # fmt: skip
    default.load_state_dict(m.state_dict())
    assert (default(x) - want).abs().max() > 1e-3  # the options change the function
    fused, ref = _pair(variant="clamped_swiglu", act_kwargs=act_kwargs, n_shared=1)
    torch.manual_seed(1)
    _match(fused, ref, torch.randn(3, 5, 8, dtype=torch.float64) * 4, torch.float64)


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_act_kwargs_of_a_plain_variant(backend):
    torch.manual_seed(0)
    m = MoEFeedForward(6, 10, 3, 2, "leaky_relu2", act_kwargs={"slope": 0.1}, backend=backend,
                       dtype=torch.float64)  # fmt: skip
    x = torch.randn(7, 6, dtype=torch.float64)
    r = m.router(x)
    ex = m.experts
    want = torch.zeros_like(x)
    for t in range(7):
        for j in range(2):
            e = r.expert_idx[t, j]
            h = ex.w1[e] @ x[t] + ex.b1[e]
            want[t] += r.gates[t, j] * (ex.w2[e] @ torch.where(h > 0, h, 0.1 * h) ** 2 + ex.b2[e])
    torch.testing.assert_close(m(x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("variant", "kwargs", "error", "match"), [
    ("clamped_swiglu", {"limt": 7.0}, ValueError,
     "unknown act_kwargs 'limt' for activation 'clamped_swish'; accepted keys: 'alpha', 'limit'"),
    ("clamped_swiglu", {"limit": 0.0}, ValueError, "must be > 0.*accepted keys: 'alpha', 'limit'"),
    ("leaky_relu2", {"slope": float("inf")}, ValueError, "finite"),
    ("swiglu", {"limit": 7.0}, ValueError, "accepted keys: none"),
    ("clamped_swiglu", [("limit", 7.0)], TypeError, "act_kwargs must be a dict, got list"),
])
def test_act_kwargs_errors_name_the_keys(variant, kwargs, error, match):
    with pytest.raises(error, match=match):
        MoEFeedForward(8, 12, 4, 2, variant, act_kwargs=kwargs)


def test_variant_after_the_sizes_as_in_feedforward():
    """``variant`` follows the sizes in both constructors (``FeedForward(dim, hidden_dim,
    variant)``, ``MoEFeedForward(dim, hidden_dim, n_experts, top_k, variant)``) and the rest
    is keyword-only; a variant name one slot early is an error naming the signature."""
    import inspect

    for cls, sizes in ((ffnlab.FeedForward, ["dim", "hidden_dim"]),
                       (MoEFeedForward, ["dim", "hidden_dim", "n_experts", "top_k"])):  # fmt: skip
        params = list(inspect.signature(cls).parameters.values())
        assert [p.name for p in params[:len(sizes) + 1]] == [*sizes, "variant"]
        assert params[len(sizes)].default == "swiglu"
        assert all(p.kind is p.KEYWORD_ONLY for p in params[len(sizes) + 1:])
    assert MoEFeedForward(8, 12, 4, 2, "geglu").variant == "geglu"
    with pytest.raises(UsageError, match=r"top_k is a size, got the string 'geglu'.*"
                                         r"pass variant='geglu'"):
        MoEFeedForward(8, 12, 4, "geglu")
    with pytest.raises(TypeError, match="positional"):
        MoEFeedForward(8, 12, 4, 2, "geglu", "softmax")


def _norm_moe(backend, **kw):
    torch.manual_seed(9)
    kw = {"variant": "relu2", "router": "sigmoid", "routed_scaling": 2.0, **kw}
    m = MoEFeedForward(8, 12, 4, 2, expert_norm=True, norm_eps=1e-5, backend=backend,
                       dtype=torch.float64, **kw)  # fmt: skip
    with torch.no_grad():
        m.experts.norm.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("router", ["sigmoid", "sigmoid_input"])
def test_expert_norm_by_hand_and_fused(router):
    """Each route's output goes through its expert's RMSNorm before the gates weight it
    (Ergo); the fused path equals the reference loop, forward and backward."""
    ref = _norm_moe("reference", router=router, routed_scaling=1.0)
    ex = ref.experts
    assert ex.norm.shape == (4, 8) and "experts.norm" in ref.state_dict()
    x = torch.randn(7, 8, dtype=torch.float64)
    r = ref.router(x)
    want = torch.zeros_like(x)
    for t in range(7):
        for j in range(2):
            e, g = r.expert_idx[t, j].item(), r.gates[t, j]
            xe = x[t] * g if r.gate_input else x[t]
            h = torch.relu(xe @ ex.w1[e].T + ex.b1[e]).square() @ ex.w2[e].T + ex.b2[e]
            h = h * torch.rsqrt(h.square().mean() + 1e-5) * ex.norm[e]
            want[t] += h if r.gate_input else g * h
    torch.testing.assert_close(ref(x), want, rtol=1e-12, atol=1e-12)
    fused = _norm_moe("fused", router=router, routed_scaling=1.0)
    fused.load_state_dict(ref.state_dict())
    _match(fused, ref, torch.randn(3, 5, 8, dtype=torch.float64), torch.float64)
    assert fused.experts.norm.grad is not None and fused.experts.norm.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_norm_low_precision_and_gradcheck(dtype):
    fused, ref = _pair(dtype, variant="swiglu", expert_norm=True, n_shared=1)
    torch.manual_seed(10)
    _match(fused, ref, torch.randn(3, 5, 8, dtype=dtype), dtype)
    m = _norm_moe("fused", recompute="full")
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)
    with pytest.raises(UsageError, match="norm_eps"):
        MoEFeedForward(8, 12, 4, 2, expert_norm=True, norm_eps=-1.0)
