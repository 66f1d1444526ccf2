import math

import pytest
import torch
import torch.nn.functional as F

from ffnlab import activations as A

X64 = torch.linspace(-8, 8, 1601, dtype=torch.float64)

TORCH_EQUIV = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "swish": F.silu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu2": lambda x: F.relu(x) ** 2,
    "identity": lambda x: x,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_accurate": lambda x: F.gelu(x, approximate="tanh"),
    "hardswish": F.hardswish,
    "laplace": lambda x: 0.5 * (1 + torch.erf((x - 0.707107) / (0.282095 * math.sqrt(2)))),
    "leaky_relu": F.leaky_relu,
    "leaky_relu2": lambda x: F.leaky_relu(x, 0.5) ** 2,
    "mish": lambda x: x * torch.tanh(F.softplus(x)),
    "relu6": F.relu6,
    "xielu": lambda x: torch.where(x > 0, 0.8 * x * x + 0.5 * x,
                                   (torch.expm1(torch.clamp(x, max=-1e-6)) - x) * 0.8 + 0.5 * x),
    "clamped_swish": lambda x: x.clamp(max=7) * torch.sigmoid(1.702 * x.clamp(max=7)),
}

# Independent textbook formulas (math module, float64) for the functions.
TEXTBOOK = {
    "relu": lambda v: max(0.0, v),
    "gelu": lambda v: v * 0.5 * (1 + math.erf(v / math.sqrt(2))),
    "gelu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "quick_gelu": lambda v: v / (1 + math.exp(-1.702 * v)),
    "swish": lambda v: v / (1 + math.exp(-v)),
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
    "tanh": math.tanh,
    "relu2": lambda v: max(0.0, v) ** 2,
    "identity": lambda v: v,
    "gelu_10": lambda v: min(10.0, v * 0.5 * (1 + math.erf(v / math.sqrt(2)))),
    "gelu_accurate": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "hardswish": lambda v: v * min(max(v + 3, 0.0), 6.0) / 6,
    "laplace": lambda v: 0.5 * (1 + math.erf((v - 0.707107) / (0.282095 * math.sqrt(2)))),
    "leaky_relu": lambda v: v if v > 0 else 0.01 * v,
    "leaky_relu2": lambda v: (v if v > 0 else 0.5 * v) ** 2,
    "mish": lambda v: v * math.tanh(math.log1p(math.exp(v))),
    "relu6": lambda v: min(max(v, 0.0), 6.0),
    "xielu": lambda v: 0.8 * v * v + 0.5 * v if v > 0 else (math.expm1(min(v, -1e-6)) - v) * 0.8 + 0.5 * v,
    "clamped_swish": lambda v: min(v, 7.0) / (1 + math.exp(-1.702 * min(v, 7.0))),
}


def test_table_covers_all():
    assert set(A.ACTIVATIONS) == set(TORCH_EQUIV)
    assert A.get_activation("silu") is A.ACTIVATIONS["swish"]


@pytest.mark.parametrize("name", sorted(TORCH_EQUIV))
def test_matches_torch_and_textbook(name):
    act = A.get_activation(name)
    torch.testing.assert_close(act.fn(X64), TORCH_EQUIV[name](X64), rtol=1e-12, atol=1e-12)
    pts = [-5.5, -1.3, -0.2, 0.0, 0.4, 1.7, 6.1]
    got = act.fn(torch.tensor(pts, dtype=torch.float64)).tolist()
    want = [TEXTBOOK[name](p) for p in pts]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name", sorted(TORCH_EQUIV))
def test_analytic_derivative_matches_autograd(name):
    act = A.get_activation(name)
    x = X64[X64 != 0].clone().requires_grad_(True)  # relu-type kinks at 0
    (g,) = torch.autograd.grad(act.fn(x).sum(), x)
    torch.testing.assert_close(act.grad(x.detach()), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("beta", [1e-4, 0.3, 1.0, 2.5, 50.0])
def test_swish_beta_and_its_gradients(beta):
    x = X64.clone().requires_grad_(True)
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    y = A.swish(x, b)
    torch.testing.assert_close(y, x * torch.sigmoid(beta * x))
    gx, gb = torch.autograd.grad(y.sum(), (x, b))
    torch.testing.assert_close(A.swish_grad(x.detach(), beta), gx)
    torch.testing.assert_close(A.swish_grad_beta(x.detach(), beta).sum(), gb)


def test_swish_limits():
    assert torch.allclose(A.swish(X64, 1e-9), X64 / 2, atol=1e-8)
    assert torch.allclose(A.swish(X64, 1e4), F.relu(X64), atol=1e-4)
    assert A.silu is A.swish


def test_swish_per_unit_beta_broadcasts():
    x = torch.randn(5, 3, dtype=torch.float64)
    beta = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(A.swish(x, beta), x * torch.sigmoid(x * beta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(TORCH_EQUIV))
def test_finite_at_extremes(name, dtype):
    act = A.get_activation(name)
    limit = 1e4 if dtype != torch.float16 else 6e4
    x = torch.tensor([-limit, -1e3, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e3, limit], dtype=dtype)
    for fn in (act.fn, act.grad):
        y = fn(x)
        assert y.dtype == dtype and y.shape == x.shape
        # The function may legitimately overflow the dtype (relu2(1e4) in fp16), but never NaN.
        assert not torch.isnan(y).any(), (name, fn.__name__, y)
        if dtype != torch.float16 and name != "relu2":
            assert torch.isfinite(y).all(), (name, fn.__name__, y)
    if name == "swish":
        assert torch.isfinite(A.swish_grad_beta(x.float())).all()


@pytest.mark.parametrize("name", sorted(TORCH_EQUIV))
def test_half_precision_close_to_float64(name):
    act = A.get_activation(name)
    x = torch.linspace(-6, 6, 301)
    want = act.fn(x.double())
    got = act.fn(x.to(torch.bfloat16)).double()
    # bf16 has 8 mantissa bits: 2**-8 relative on the input and output roundings.
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_unknown_activation_suggests():
    with pytest.raises(ValueError, match="did you mean 'gelu'"):
        A.get_activation("gelux")


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "swish"])
def test_value_and_grad_equals_fn_and_grad(name):
    act = A.get_activation(name)
    assert act.value_and_grad is not None
    x = torch.linspace(-30, 30, 1001, dtype=torch.float64)
    args = (x, 0.7) if act.has_beta else (x,)
    a, da = act.value_and_grad(*args)
    torch.testing.assert_close(a, act.fn(*args), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(da, act.grad(*args), rtol=0, atol=0)  # grad is built on it


def test_compute_dtype_is_float32_for_half_inputs_only():
    assert A.compute_dtype(torch.float16) == torch.float32
    assert A.compute_dtype(torch.bfloat16) == torch.float32
    assert A.compute_dtype(torch.float32) == torch.float32
    assert A.compute_dtype(torch.float64) == torch.float64
