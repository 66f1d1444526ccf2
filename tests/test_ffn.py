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
}


def textbook(sd, x, name, gated):
    """y = W2 act(W1 x + b1) (* (W3 x + b3)) + b2 from the state_dict, elementwise in python."""
    w1, w2 = sd["w1.weight"], sd["w2.weight"]
    h1 = x @ w1.T + sd.get("w1.bias", 0)
    a = h1.clone().apply_(SCALAR[name])
    if gated:
        a = a * (x @ sd["w3.weight"].T + sd.get("w3.bias", 0))
    return a @ w2.T + sd.get("w2.bias", 0)


@pytest.mark.parametrize("name", list(ffnlab.VARIANTS))
@pytest.mark.parametrize("bias", [None, True])
def test_equals_textbook_formula_float64(name, bias):
    ffn = FeedForward(12, 20, name, bias=bias, dtype=torch.float64)
    x = torch.randn(7, 12, dtype=torch.float64) * 2
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
    else:  # biases default on for plain variants, off for gated
        want.update({"w1.bias": (40,), "w2.bias": (16,)})
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


def test_first_source_worked_case():
    """dim 128, un-shrunk hidden 256, multiple_of 16 -> 176; the source's printout (4, 128)."""
    h = ffnlab.llama_hidden_dim(128, hidden_dim=256, multiple_of=16)
    ffn = FeedForward(128, h, "swiglu", dropout=0.1)
    assert (ffn.w1.weight.shape, ffn.w3.weight.shape, ffn.w2.weight.shape) == (
        (176, 128),
        (176, 128),
        (128, 176),
    )
    assert ffn(torch.randn(4, 128)).shape == (4, 128)


class SecondSourceSwiGLU(torch.nn.Module):
    """The second source's code, verbatim in substance: x * sigmoid(linear1(x))."""

    def __init__(self, d_model, d_ffn):
        super().__init__()
        self.linear1 = torch.nn.Linear(d_model, d_ffn)
        self.linear2 = torch.nn.Linear(d_model, d_ffn)
        self.linear3 = torch.nn.Linear(d_ffn, d_model)

    def forward(self, x):
        swish = x * torch.sigmoid(self.linear1(x))
        return self.linear3(swish * self.linear2(x))


def test_second_source_swiglu_is_wrong():
    # With d_model != d_ffn it cannot even run (x [.., d_model] times [.., d_ffn]).
    with pytest.raises(RuntimeError):
        SecondSourceSwiGLU(8, 16)(torch.randn(2, 8))
    # With d_model == d_ffn it runs but is not SwiGLU: same weights, different outputs.
    wrong = SecondSourceSwiGLU(8, 8).double()
    ours = FeedForward(8, 8, "swiglu", bias=True, dtype=torch.float64)
    with torch.no_grad():
        ours.w1.weight.copy_(wrong.linear1.weight)
        ours.w1.bias.copy_(wrong.linear1.bias)
        ours.w3.weight.copy_(wrong.linear2.weight)
        ours.w3.bias.copy_(wrong.linear2.bias)
        ours.w2.weight.copy_(wrong.linear3.weight)
        ours.w2.bias.copy_(wrong.linear3.bias)
    x = torch.randn(5, 8, dtype=torch.float64)
    assert (ours(x) - wrong(x)).abs().max() > 1e-3
    # ... and ours is the correct gate: swish(W1 x) = (W1 x) sigma(W1 x).
    h1, h3 = wrong.linear1(x), wrong.linear2(x)
    torch.testing.assert_close(ours(x), wrong.linear3(h1 * torch.sigmoid(h1) * h3))


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


def test_init_schemes():
    torch.manual_seed(0)
    ffn = FeedForward(256, 512, "swiglu", init="small_down", init_std=0.02, num_layers=8)
    assert abs(ffn.w1.weight.std().item() - 0.02) < 2e-3
    assert abs(ffn.w2.weight.std().item() - 0.02 / 4) < 5e-4
    with pytest.raises(ValueError, match="init scheme"):
        FeedForward(8, variant="relu", init="xavierr")


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
