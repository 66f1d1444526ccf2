"""The newer activations: the rest of transformers' ``ACT2FN`` names and the activations of
recent FFN variants, in pure torch with their analytic derivatives.

Shapes and dtypes as :mod:`ffnlab.activations.basic`: any shape in, the same shape and dtype
out, half inputs evaluated in float32 and rounded once. Each ``*_grad`` is d act / d x, with
the subgradient autograd uses at kinks (noted per function).

==================  ===========================================================================
ffnlab              formula (transformers' class, where there is one)
==================  ===========================================================================
gelu_10             clip(gelu(x), -10, 10) (``ClippedGELUActivation(-10, 10)``)
gelu_accurate       0.5x(1+tanh(√(2/π)(x+0.044715x³))) (``AccurateGELUActivation``)
hardswish           x·relu6(x+3)/6 (``nn.Hardswish``)
laplace             0.5(1+erf((x-μ)/(σ√2))), μ=0.707107, σ=0.282095 (``LaplaceActivation``)
leaky_relu          x if x > 0 else slope·x, slope 0.01 (``nn.LeakyReLU``)
leaky_relu2         leaky_relu(x, slope)², slope 0.5 (modded-nanogpt)
mish                x·tanh(softplus(x)) (``MishActivation``)
relu6               min(max(0, x), 6) (``nn.ReLU6``)
xielu               x>0: αp·x²+β·x; else (expm1(min(x, ε))−x)·αn+β·x (``XIELUActivation``)
clamped_swish       a'·σ(α·a'), a' = min(x, limit): GPT-OSS's gate (α 1.702, limit 7)
clamped_value       clamp(x, -limit, limit) + 1: GPT-OSS's value branch
==================  ===========================================================================
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .basic import gelu_tanh_value_and_grad, gelu_value_and_grad, swish_value_and_grad, upcast

__all__ = [
    "LAPLACE_MU",
    "LAPLACE_SIGMA",
    "XIELU_BETA",
    "XIELU_EPS",
    "clamped_swish",
    "clamped_swish_grad",
    "clamped_value",
    "clamped_value_grad",
    "gelu_10",
    "gelu_10_grad",
    "gelu_accurate",
    "gelu_accurate_grad",
    "hardswish",
    "hardswish_grad",
    "laplace",
    "laplace_grad",
    "leaky_relu",
    "leaky_relu_grad",
    "leaky_relu2",
    "leaky_relu2_grad",
    "mish",
    "mish_grad",
    "relu6",
    "relu6_grad",
    "xielu",
    "xielu_grad",
    "xielu_packed",
    "xielu_packed_grad",
    "xielu_packed_param_grads",
    "xielu_raw_init",
]

LAPLACE_MU = 0.707107
LAPLACE_SIGMA = 0.282095
XIELU_BETA = 0.5
XIELU_EPS = -1e-6
_GELU_CLIP = 10.0


# --- GELU relatives ----------------------------------------------------------------------


@upcast
def gelu_10(x: torch.Tensor) -> torch.Tensor:
    """clip(gelu(x), -10, 10) (transformers' ``gelu_10``; gelu never goes below -0.17)."""
    return torch.clamp(F.gelu(x), -_GELU_CLIP, _GELU_CLIP)


@upcast
def gelu_10_grad(x: torch.Tensor) -> torch.Tensor:
    """gelu'(x) where |gelu(x)| <= 10 (the clip's subgradient is 1 at the bound, as torch's)."""
    g, d = gelu_value_and_grad(x)
    return torch.where(g <= _GELU_CLIP, d, torch.zeros_like(d))


@upcast
def gelu_accurate(x: torch.Tensor) -> torch.Tensor:
    """0.5x(1 + tanh(√(2/π)(x + 0.044715x³))): transformers' ``AccurateGELUActivation``, the
    same function as ``gelu_tanh`` written out (the two agree to rounding)."""
    return gelu_tanh_value_and_grad(x)[0]


@upcast
def gelu_accurate_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx gelu_accurate (= gelu_tanh')."""
    return gelu_tanh_value_and_grad(x)[1]


@upcast
def laplace(x: torch.Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA) -> torch.Tensor:
    """0.5 (1 + erf((x - μ) / (σ√2))): the normal CDF of mean μ, std σ (MEGA's laplace)."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


@upcast
def laplace_grad(
    x: torch.Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA
) -> torch.Tensor:
    """exp(-((x-μ)/σ)²/2) / (σ√(2π))."""
    z = (x - mu) / sigma
    return torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2.0 * math.pi))


@upcast
def mish(x: torch.Tensor) -> torch.Tensor:
    """x·tanh(softplus(x)) (Misra 2019)."""
    return F.mish(x)


@upcast
def mish_grad(x: torch.Tensor) -> torch.Tensor:
    """tanh(sp) + x·σ(x)·(1 - tanh(sp)²), sp = softplus(x)."""
    t = torch.tanh(F.softplus(x))
    # (x * σ(x)) first: σ(x) is 0 for x < -745 in float64 and x * 0 stays 0.
    return t + (x * torch.sigmoid(x)) * (1.0 - t * t)


# --- piecewise linear / quadratic --------------------------------------------------------


@upcast
def hardswish(x: torch.Tensor) -> torch.Tensor:
    """x·relu6(x + 3)/6 (Howard et al. 2019, MobileNetV3)."""
    return F.hardswish(x)


@upcast
def hardswish_grad(x: torch.Tensor) -> torch.Tensor:
    """0 for x <= -3, x/3 + 1/2 for -3 < x < 3, 1 from 3 on (torch's hardswish_backward)."""
    mid = x / 3.0 + 0.5
    return torch.where(x <= -3.0, torch.zeros_like(x), torch.where(x < 3.0, mid, torch.ones_like(x)))


def relu6(x: torch.Tensor) -> torch.Tensor:
    """min(max(0, x), 6)."""
    return F.relu6(x)


def relu6_grad(x: torch.Tensor) -> torch.Tensor:
    """1 for 0 < x < 6, else 0 (0 at both kinks, as torch's hardtanh_backward)."""
    return ((x > 0) & (x < 6)).to(x.dtype)


def leaky_relu(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """x for x > 0, slope·x otherwise (torch's ``negative_slope``, default 0.01)."""
    return F.leaky_relu(x, slope)


def leaky_relu_grad(x: torch.Tensor, slope: float = 0.01) -> torch.Tensor:
    """1 for x > 0, slope otherwise (slope at 0, as torch)."""
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, slope))


@upcast
def leaky_relu2(x: torch.Tensor, slope: float = 0.5) -> torch.Tensor:
    """leaky_relu(x, slope)² (modded-nanogpt's squared leaky ReLU; slope 0.5 by default)."""
    r = F.leaky_relu(x, slope)
    return r * r


@upcast
def leaky_relu2_grad(x: torch.Tensor, slope: float = 0.5) -> torch.Tensor:
    """2·x for x > 0, 2·slope²·x otherwise."""
    return torch.where(x > 0, 2.0 * x, (2.0 * slope * slope) * x)


# --- xIELU (Apertus) ---------------------------------------------------------------------


def _xielu_parts(x, alpha_p, alpha_n, beta, eps):
    neg = x <= 0
    xm = torch.clamp(x, max=eps)  # min(x, eps)
    em = torch.expm1(xm)
    return neg, xm, em


@upcast
def xielu(
    x: torch.Tensor,
    alpha_p: float | torch.Tensor = 0.8,
    alpha_n: float | torch.Tensor = 0.8,
    beta: float = XIELU_BETA,
    eps: float = XIELU_EPS,
) -> torch.Tensor:
    """xIELU (Huang et al. 2025, Apertus) with effective coefficients αp, αn:
    x > 0: αp·x² + β·x; x <= 0: (expm1(min(x, ε)) - x)·αn + β·x."""
    neg, _, em = _xielu_parts(x, alpha_p, alpha_n, beta, eps)
    return torch.where(neg, (em - x) * alpha_n + beta * x, alpha_p * x * x + beta * x)


@upcast
def xielu_grad(
    x: torch.Tensor,
    alpha_p: float | torch.Tensor = 0.8,
    alpha_n: float | torch.Tensor = 0.8,
    beta: float = XIELU_BETA,
    eps: float = XIELU_EPS,
) -> torch.Tensor:
    """x > 0: 2αp·x + β; ε < x <= 0: β - αn; x < ε: αn·expm1(x) + β (min's subgradient at
    x = ε goes to x, as torch.clamp's)."""
    neg, xm, em = _xielu_parts(x, alpha_p, alpha_n, beta, eps)
    dneg = torch.where(x <= eps, alpha_n * em, -alpha_n * torch.ones_like(x)) + beta
    return torch.where(neg, dneg, 2.0 * alpha_p * x + beta)


def xielu_raw_init(alpha_p: float = 0.8, alpha_n: float = 0.8, beta: float = XIELU_BETA):
    """The raw parameters ``(p, n)`` with softplus(p) = αp and β + softplus(n) = αn
    (transformers' ``XIELUActivation`` stores these, as ``alpha_p`` and ``alpha_n``)."""
    return math.log(math.expm1(alpha_p)), math.log(math.expm1(alpha_n - beta))


def _theta(theta: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The packed raw parameters in ``x``'s dtype; None: their initial values (αp = αn = 0.8)."""
    if theta is None:
        return torch.tensor(xielu_raw_init(), dtype=x.dtype, device=x.device)
    return theta.to(x.dtype)


def _alphas(theta: torch.Tensor | None, x: torch.Tensor, beta: float):
    t = _theta(theta, x)
    return F.softplus(t[0]), beta + F.softplus(t[1])


@upcast
def xielu_packed(x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """xIELU from the raw parameters ``theta = [p, n]`` (shape ``[2]``): αp = softplus(p),
    αn = β + softplus(n), β = 0.5, ε = -1e-6 (the registry variant's form); None: the initial
    values, αp = αn = 0.8."""
    ap, an = _alphas(theta, x, XIELU_BETA)
    return xielu(x, ap, an)


@upcast
def xielu_packed_grad(x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
    """d/dx xielu_packed."""
    ap, an = _alphas(theta, x, XIELU_BETA)
    return xielu_grad(x, ap, an)


@upcast
def xielu_packed_param_grads(
    x: torch.Tensor, theta: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """Elementwise (d/dp, d/dn) of xielu_packed: σ(p)·x² for x > 0 (else 0) and
    σ(n)·(expm1(min(x, ε)) - x) for x <= 0 (else 0); the caller sums them."""
    t = _theta(theta, x)
    neg, _, em = _xielu_parts(x, None, None, XIELU_BETA, XIELU_EPS)
    zero = torch.zeros_like(x)
    dp = torch.where(neg, zero, torch.sigmoid(t[0]) * (x * x))
    dn = torch.where(neg, torch.sigmoid(t[1]) * (em - x), zero)
    return dp, dn


# --- GPT-OSS's clamped SwiGLU ------------------------------------------------------------


@upcast
def clamped_swish(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """a'·σ(α·a'), a' = min(x, limit) (GPT-OSS's gate: ``gate.clamp(max=limit)``, then
    ``gate * sigmoid(alpha * gate)``)."""
    xc = torch.clamp(x, max=limit)
    return xc * torch.sigmoid(alpha * xc)


@upcast
def clamped_swish_grad(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """swish'(x; α) for x <= limit, 0 above (the clamp passes the gradient at the bound)."""
    xc = torch.clamp(x, max=limit)
    d = swish_value_and_grad(xc, alpha)[1]
    return torch.where(x <= limit, d, torch.zeros_like(d))


@upcast
def clamped_value(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """clamp(x, -limit, limit) + 1 (GPT-OSS's value branch; ``alpha`` is unused, accepted so
    that the gate and the value take the same options)."""
    return torch.clamp(x, -limit, limit) + 1.0


def clamped_value_grad(x: torch.Tensor, alpha: float = 1.702, limit: float = 7.0) -> torch.Tensor:
    """1 for -limit <= x <= limit, else 0 (torch.clamp's gradient)."""
    return ((x >= -limit) & (x <= limit)).to(x.dtype)
