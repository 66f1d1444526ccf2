import math

import pytest
import torch

import ffnlab
from ffnlab import FeedForward


def _sig(v):
    return 1.0 / (1.0 + math.exp(-v))


# Textbook scalar activations, written independently of ffnlab (plain math, float64).
SCALAR = {
    "relu": lambda v: max(v, 0.0),
    "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
    "gelu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "swish": lambda v: v * _sig(v),
    "sigmoid": _sig,
    "tanh": math.tanh,
    "relu2": lambda v: max(v, 0.0) ** 2,
    "glu": _sig,
    "bilinear": lambda v: v,
    "reglu": lambda v: max(v, 0.0),
    "geglu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
    "geglu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "swiglu": lambda v: v * _sig(v),
    "quick_gelu": lambda v: v * _sig(1.702 * v),
    "leaky_relu2": lambda v: (v if v > 0 else 0.5 * v) ** 2,
    # xIELU at its initial alphas (0.8, 0.8), beta 0.5, eps -1e-6
    "xielu": lambda v: 0.8 * v * v + 0.5 * v if v > 0 else (math.expm1(min(v, -1e-6)) - v) * 0.8 + 0.5 * v,
    "qgeglu": lambda v: v * _sig(1.702 * v),
    "clamped_swiglu": lambda v: min(v, 7.0) * _sig(1.702 * min(v, 7.0)),
}
# The value branch's transform (GPT-OSS clamps it and adds one); identity elsewhere.
VALUE = {"clamped_swiglu": lambda v: min(max(v, -7.0), 7.0) + 1.0}


def textbook(sd, x, name, gated):
    """y = W2 act(W1 x + b1) (* (W3 x + b3)) + b2 from the state_dict, elementwise in python."""
    w1, w2 = sd["w1.weight"], sd["w2.weight"]
    h1 = x @ w1.T + sd.get("w1.bias", 0)
    a = h1.clone().apply_(SCALAR[name])
    if gated:
        h3 = x @ sd["w3.weight"].T + sd.get("w3.bias", 0)
        a = a * (h3.clone().apply_(VALUE[name]) if name in VALUE else h3)
    return a @ w2.T + sd.get("w2.bias", 0)


@pytest.mark.parametrize("name", list(ffnlab.VARIANTS))
@pytest.mark.parametrize("bias", [None, True])
def test_equals_textbook_formula_float64(name, bias):
    ffn = FeedForward(12, 20, name, bias=bias, dtype=torch.float64)
    x = torch.randn(7, 12, dtype=torch.float64) * (2 if name != "clamped_swiglu" else 12)
    sd = ffn.state_dict()
    want = textbook(sd, x, name, ffnlab.get_variant(name).gated)
    torch.testing.assert_close(ffn(x), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(ffnlab.VARIANTS))
def test_state_dict_layout(name):
    gated = ffnlab.get_variant(name).gated
    ffn = FeedForward(16, 40, name)
    sd = ffn.state_dict()
    want = {"w1.weight": (40, 16), "w2.weight": (16, 40)}
    if gated:
        want["w3.weight"] = (40, 16)
    if ffnlab.get_variant(name).default_bias:  # on for plain variants and GPT-OSS's
        want.update({"w1.bias": (40,), "w2.bias": (16,)} | ({"w3.bias": (40,)} if gated else {}))
    if name == "xielu":  # the raw alphas, [1] each as transformers stores them
        want.update({"alpha_p": (1,), "alpha_n": (1,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == want


@pytest.mark.parametrize("shape", [(9,), (3, 9), (2, 3, 9), (2, 1, 3, 9), (0, 9)])
def test_shapes(shape):
    ffn = FeedForward(9, variant="geglu")
    y = ffn(torch.randn(shape))
    assert y.shape == shape


@pytest.mark.parametrize("name", list(ffnlab.VARIANTS))
def test_gradcheck(name):
    ffn = FeedForward(5, 7, name, bias=True, dtype=torch.float64)
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    params = tuple(ffn.parameters())

    def f(x, *ps):
        return torch.func.functional_call(ffn, dict(zip(dict(ffn.named_parameters()), ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params))


def test_default_hidden_sizes():
    assert FeedForward(64, variant="relu").hidden_dim == 256
    assert FeedForward(64, variant="swiglu").hidden_dim == 170
    assert FeedForward(4096, variant="swiglu", multiple_of=256, device="meta").hidden_dim == 11008
    assert FeedForward(64, 100, "swiglu").hidden_dim == 100  # explicit is exact


def test_first_blog_post_worked_case():
    """dim 128, un-shrunk hidden 256, multiple_of 16 -> 176; the post's printout (4, 128)."""
    h = ffnlab.llama_hidden_dim(128, hidden_dim=256, multiple_of=16)
    ffn = FeedForward(128, h, "swiglu", dropout=0.1)
    assert (ffn.w1.weight.shape, ffn.w3.weight.shape, ffn.w2.weight.shape) == (
        (176, 128),
        (176, 128),
        (128, 176),
    )
    assert ffn(torch.randn(4, 128)).shape == (4, 128)


@pytest.mark.parametrize("mode", [True, "scalar", "per_unit"])
def test_learnable_beta(mode):
    ffn = FeedForward(6, 10, "swiglu", beta=1.5, learnable_beta=mode, dtype=torch.float64)
    assert "beta" in dict(ffn.named_parameters())
    assert ffn.beta.shape == (() if mode != "per_unit" else (10,))
    x = torch.randn(4, 6, dtype=torch.float64)
    h1 = x @ ffn.w1.weight.T
    want = (h1 * torch.sigmoid(1.5 * h1) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), want)
    ffn(x).sum().backward()
    assert ffn.beta.grad is not None and torch.isfinite(ffn.beta.grad).all()


def test_fixed_beta_changes_output():
    x = torch.randn(4, 6)
    a = FeedForward(6, 10, "swish", beta=1.0)
    b = FeedForward(6, 10, "swish", beta=3.0)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x), b(x))


def test_dropout_on_output():
    ffn = FeedForward(16, 32, "swiglu", dropout=0.5)
    x = torch.randn(64, 16)
    ffn.eval()
    y_eval = ffn(x)
    ffn.train()
    y = ffn(x)
    zero = y == 0
    assert 0.3 < zero.float().mean() < 0.7
    torch.testing.assert_close(y[~zero], 2 * y_eval[~zero])


def test_reset_parameters_normal_and_scaled_down():
    torch.manual_seed(0)
    ffn = FeedForward(256, 512, "swiglu")
    ffn.reset_parameters(std=0.02, num_layers=8)
    assert abs(ffn.w1.weight.std().item() - 0.02) < 2e-3
    assert abs(ffn.w3.weight.std().item() - 0.02) < 2e-3
    assert abs(ffn.w2.weight.std().item() - 0.02 / 4) < 5e-4  # 0.02 / sqrt(2 * 8)
    ffn.reset_parameters(std=0.02)  # num_layers=1: W2 like the others
    assert abs(ffn.w2.weight.std().item() - 0.02) < 2e-3
    plain = FeedForward(64, 128, "relu")
    plain.reset_parameters(std=0.5)
    assert plain.w1.bias.abs().max() == 0 and plain.w2.bias.abs().max() == 0
    assert abs(plain.w1.weight.std().item() - 0.5) < 0.05


def test_reset_parameters_default_is_linear_init():
    torch.manual_seed(0)
    ffn = FeedForward(64, 128, "gelu")
    ffn.reset_parameters(std=1.0)
    ffn.reset_parameters()
    for lin, fan_in in ((ffn.w1, 64), (ffn.w2, 128)):
        bound = 1 / math.sqrt(fan_in)
        assert lin.weight.abs().max() <= bound and lin.weight.abs().max() > 0.9 * bound
        assert lin.bias.abs().max() <= bound and lin.bias.abs().max() > 0
    beta = FeedForward(8, 16, "swiglu", beta=1.5, learnable_beta="per_unit")
    with torch.no_grad():
        beta.beta.add_(1.0)
    beta.reset_parameters()
    assert torch.equal(beta.beta, torch.full((16,), 1.5))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(std=0.0), "std must be"),
        (dict(std=-1.0), "std must be"),
        (dict(std="0.02"), "std must be"),
        (dict(num_layers=0), "num_layers"),
        (dict(num_layers=4), "give std"),
    ],
)
def test_reset_parameters_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeedForward(8, variant="relu").reset_parameters(**kwargs)


@pytest.mark.parametrize("flag", ["init", "init_std", "num_layers"])
def test_no_init_flags_in_constructor(flag):
    with pytest.raises(TypeError):
        FeedForward(8, variant="relu", **{flag: 1})


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(dim=0), ValueError, "dim must be a positive integer"),
        (dict(dim=8, hidden_dim=-1), ValueError, "hidden_dim"),
        (dict(dim=8, variant="swigluu"), ValueError, "did you mean 'swiglu'"),
        (dict(dim=8, backend="fast"), ValueError, "unknown backend"),
        (dict(dim=8, recompute="some"), ValueError, "unknown recompute mode"),
        (dict(dim=8, dropout=1.5), ValueError, "dropout"),
        (dict(dim=8, variant="relu", beta=2.0), ValueError, "beta applies only"),
        (dict(dim=8, learnable_beta="yes"), ValueError, "learnable_beta"),
        (dict(dim=8, dtype=torch.int32), TypeError, "float dtype"),
    ],
)
def test_constructor_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        FeedForward(**kwargs)


def test_input_errors():
    ffn = FeedForward(8, variant="swiglu")
    with pytest.raises(ValueError, match=r"expects input \[\.\.\., 8\], got shape \[2, 7\]"):
        ffn(torch.randn(2, 7))
    with pytest.raises(TypeError, match="float input"):
        ffn(torch.ones(2, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="does not match"):
        ffn(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="got shape"):
        ffn(torch.tensor(1.0))


def test_any_float_dtype():
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        ffn = FeedForward(8, variant="geglu", dtype=dt)
        assert ffn(torch.randn(3, 8, dtype=dt)).dtype == dt


def test_repr_names_variant():
    assert "variant='swiglu'" in repr(FeedForward(8))
    assert "out_dim" not in repr(FeedForward(8))
    assert "out_dim=3" in repr(FeedForward(8, out_dim=3))


def _backends():
    from ffnlab.ops.dispatch import backend_unsupported_reasons

    x = torch.zeros(1, dtype=torch.float64)
    out = ["auto", "reference", "fused"]
    triton_runs = not backend_unsupported_reasons("triton", x, activation="swish")
    return out + (["triton"] if triton_runs else [])


@pytest.mark.parametrize("backend", ["auto", "reference", "fused", "triton"])
@pytest.mark.parametrize("name", ["swiglu", "gelu", "relu2"])
@pytest.mark.parametrize("recompute", ["none", "activation", "full"])
def test_out_dim_every_backend_equals_reference(backend, name, recompute):
    if backend not in _backends():
        pytest.skip("the triton backend cannot run here (TRITON_INTERPRET=1 runs it on CPU)")
    torch.manual_seed(0)
    ffn = FeedForward(12, 20, name, out_dim=5, bias=True, backend=backend, recompute=recompute,
                      dtype=torch.float64)  # fmt: skip
    ref = FeedForward(12, 20, name, out_dim=5, bias=True, backend="reference", dtype=torch.float64)
    ref.load_state_dict(ffn.state_dict())
    assert ffn.w2.weight.shape == (5, 20) and ffn.w2.bias.shape == (5,)
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    y, y_ref = ffn(x), ref(x)
    assert y.shape == (2, 3, 5)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, textbook(ffn.state_dict(), x.detach(), name, ffn.gated),
                               rtol=1e-10, atol=1e-10)  # fmt: skip
    g = torch.randn_like(y)
    gx, *gp = torch.autograd.grad(y, (x, *ffn.parameters()), g)
    gx_ref, *gp_ref = torch.autograd.grad(y_ref, (x, *ref.parameters()), g)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(gp, gp_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("name", ["swiglu", "gelu"])
def test_out_dim_gradcheck(backend, name):
    ffn = FeedForward(5, 7, name, out_dim=3, bias=True, backend=backend, dtype=torch.float64)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in ffn.named_parameters()]

    def f(x, *ps):
        return torch.func.functional_call(ffn, dict(zip(names, ps, strict=True)), (x,))

    assert torch.autograd.gradcheck(f, (x, *ffn.parameters()))


def test_out_dim_errors_and_default():
    assert FeedForward(8, 16).out_dim == 8
    with pytest.raises(ValueError, match="out_dim must be a positive integer"):
        FeedForward(8, 16, out_dim=0)
    ffn = FeedForward(8, 16, out_dim=4)
    with pytest.raises(ValueError, match=r"expects input \[\.\.\., 8\]"):
        ffn(torch.randn(2, 4))


class _LoRALinear(torch.nn.Linear):
    """A Linear with a low-rank update, as adapter libraries wrap projections."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         dtype=base.weight.dtype)
        self.load_state_dict(base.state_dict())
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, dtype=base.weight.dtype))
        self.b = torch.nn.Parameter(torch.randn(base.out_features, rank, dtype=base.weight.dtype))

    def forward(self, x):
        return super().forward(x) + (x @ self.a.T) @ self.b.T


@pytest.mark.parametrize("backend", ["auto", "reference", "fused"])
def test_replaced_projection_is_called(backend):
    ffn = FeedForward(6, 10, "swiglu", backend=backend, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64)
    base = ffn(x)
    ffn.w3 = _LoRALinear(ffn.w3)
    h1 = x @ ffn.w1.weight.T
    want = (torch.nn.functional.silu(h1) * ffn.w3(x)) @ ffn.w2.weight.T
    got = ffn(x)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, base)
    got.sum().backward()
    assert ffn.w3.a.grad is not None


def test_forward_hooks_on_projections_fire():
    ffn = FeedForward(6, 10, "geglu", backend="auto")
    seen = []
    ffn.w1.register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    x = torch.randn(2, 5, 6)
    y = ffn(x)
    assert seen == [torch.Size([2, 5, 10])]
    ref = FeedForward(6, 10, "geglu", backend="reference")
    ref.load_state_dict(ffn.state_dict())
    torch.testing.assert_close(y, ref(x))


# --- activation= and act_kwargs= ----------------------------------------------------------


def test_act_kwargs_change_the_function():
    x = torch.randn(6, 8, dtype=torch.float64) * 3
    base = FeedForward(8, 12, "leaky_relu2", dtype=torch.float64)
    other = FeedForward(8, 12, "leaky_relu2", act_kwargs={"slope": 0.1}, dtype=torch.float64)
    other.load_state_dict(base.state_dict())
    h = base.w1(x)
    want = base.w2((torch.where(h > 0, h, 0.1 * h)) ** 2)
    torch.testing.assert_close(other(x), want)
    assert (other(x) - base(x)).abs().max() > 1e-3
    assert "act_kwargs={'slope': 0.1}" in repr(other)


@pytest.mark.parametrize(("variant", "kwargs", "match"), [
    ("leaky_relu2", {"s": 0.3}, "accepted keys: 'slope'"),
    ("leaky_relu2", {"slope": -0.1}, "must be >= 0"),
    ("clamped_swiglu", {"limit": 0.0}, "must be > 0.*accepted keys: 'alpha', 'limit'"),
    ("clamped_swiglu", {"limit": float("nan")}, "finite"),
    ("swiglu", {"beta": 2.0}, "accepted keys: none"),
])
def test_act_kwargs_errors_name_the_keys(variant, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeedForward(8, 12, variant, act_kwargs=kwargs)


def test_activation_by_name_replaces_the_variants():
    x = torch.randn(5, 8, dtype=torch.float64)
    ffn = FeedForward(8, 12, "swiglu", activation="mish", dtype=torch.float64)
    assert ffn.gated and ffn.activation == "mish" and set(ffn.state_dict()) == {
        "w1.weight", "w2.weight", "w3.weight"}
    want = ffn.w2(torch.nn.functional.mish(ffn.w1(x)) * ffn.w3(x))
    torch.testing.assert_close(ffn(x), want)


def test_xielu_alphas_are_learnt_with_transformers_layout():
    ffn = FeedForward(8, 12, "xielu", dtype=torch.float64)
    sp = torch.nn.functional.softplus
    assert sp(ffn.alpha_p).item() == pytest.approx(0.8) and (0.5 + sp(ffn.alpha_n)).item() == pytest.approx(0.8)
    x = torch.randn(20, 8, dtype=torch.float64)
    ffn(x).square().sum().backward()
    assert ffn.alpha_p.grad.abs().item() > 0 and ffn.alpha_n.grad.abs().item() > 0
    with torch.no_grad():
        ffn.alpha_p.fill_(1.5)
    h = ffn.w1(x)
    ap, an = sp(ffn.alpha_p), 0.5 + sp(ffn.alpha_n)
    a = torch.where(h > 0, ap * h * h + 0.5 * h, (torch.expm1(h.clamp(max=-1e-6)) - h) * an + 0.5 * h)
    torch.testing.assert_close(ffn(x), ffn.w2(a))
    ffn.reset_parameters()
    assert sp(ffn.alpha_p).item() == pytest.approx(0.8)
