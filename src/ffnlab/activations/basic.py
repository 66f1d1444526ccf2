"""Scalar activation functions and their analytic derivatives, in pure torch.

Every function takes a tensor of any shape and returns one of the same shape and dtype.
Half-precision inputs (float16, bfloat16) are evaluated in float32 and rounded once at the
end: this is what the fused kernels do too, and it keeps the functions finite wherever the
mathematical function is finite (for instance ``swish_grad_beta`` needs ``x**2``, which
overflows float16 from |x| = 256 on).

The ``*_grad`` functions return d act / d x evaluated at ``x`` (same shape and dtype).
``swish_grad_beta`` returns d swish / d beta elementwise (summing it is the caller's job).

Equivalences with ``torch.nn.functional`` (checked by the tests):

=============  ===============================================
ffnlab          torch
=============  ===============================================
relu            ``F.relu(x)``
gelu            ``F.gelu(x)`` (erf form, exact)
gelu_tanh       ``F.gelu(x, approximate="tanh")``
quick_gelu      ``x * torch.sigmoid(1.702 * x)``
swish / silu    ``F.silu(x)`` when beta == 1
sigmoid         ``torch.sigmoid(x)``
tanh            ``torch.tanh(x)``
relu2           ``F.relu(x) ** 2``
identity        ``x``
=============  ===============================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "QUICK_GELU_BETA",
    "compute_dtype",
    "upcast",
    "relu",
    "relu_grad",
    "gelu",
    "gelu_grad",
    "gelu_value_and_grad",
    "gelu_tanh",
    "gelu_tanh_grad",
    "gelu_tanh_value_and_grad",
    "quick_gelu",
    "quick_gelu_grad",
    "swish",
    "swish_grad",
    "swish_value_and_grad",
    "swish_grad_beta",
    "silu",
    "sigmoid",
    "sigmoid_grad",
    "tanh",
    "tanh_grad",
    "relu2",
    "relu2_grad",
    "identity",
    "identity_grad",
]

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_TANH_C = 0.044715
QUICK_GELU_BETA = 1.702


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the elementwise maths runs in for inputs of ``dtype``: float32 for the half
    dtypes (float16, bfloat16), ``dtype`` itself otherwise. Every engine of the fused op and
    the functions here use it, so all round each result once, from the same precision."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def upcast(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Evaluate ``fn`` in float32 for half inputs and cast the result back."""

    def wrapper(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        cd = compute_dtype(x.dtype)
        if cd == x.dtype:
            return fn(x, *args, **kwargs)
        return fn(x.to(cd), *args, **kwargs).to(x.dtype)

    wrapper.__name__ = fn.__name__
    wrapper.__qualname__ = fn.__qualname__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# --- ReLU family -------------------------------------------------------------------------


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(0, x)."""
    return torch.relu(x)


def relu_grad(x: torch.Tensor) -> torch.Tensor:
    """1 where x > 0, else 0 (the subgradient at 0 is taken as 0, as autograd does)."""
    return (x > 0).to(x.dtype)


@upcast
def relu2(x: torch.Tensor) -> torch.Tensor:
    """max(0, x)**2 (squared ReLU, So et al. 2021, "Primer")."""
    r = torch.relu(x)
    return r * r


@upcast
def relu2_grad(x: torch.Tensor) -> torch.Tensor:
    """2 * max(0, x)."""
    return 2.0 * torch.relu(x)


# --- GELU family -------------------------------------------------------------------------


@upcast
def gelu(x: torch.Tensor) -> torch.Tensor:
    """x * Phi(x) with Phi the standard normal CDF (erf form, exact)."""
    return F.gelu(x)


def gelu_value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu(x), gelu'(x))`` sharing Φ(x), in ``x``'s dtype (no upcast)."""
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT_2))
    # exp(-x^2/2) underflows to 0 for |x| > ~38 in fp32; x * 0 is 0, never NaN for finite x.
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return x * cdf, cdf + x * pdf


@upcast
def gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx gelu = Φ(x) + x·φ(x)."""
    return gelu_value_and_grad(x)[1]


@upcast
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (GPT-2's "gelu_new")."""
    return F.gelu(x, approximate="tanh")


def gelu_tanh_value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu_tanh(x), gelu_tanh'(x))`` sharing the tanh, in ``x``'s dtype (no upcast)."""
    # For |x| > ~1e13 in fp32, x**3 overflows, tanh(inf) = 1 and (1 - t^2) = 0, but x^2 * 0
    # stays finite: the product below never forms inf * 0.
    u = _SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)
    t = torch.tanh(u)
    sech2 = 1.0 - t * t
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_C * x * x)
    # (x * sech2) first: where sech2 == 0, the product is 0 before du can be large.
    return 0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * (x * sech2) * du


@upcast
def gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx of the tanh approximation of GELU."""
    return gelu_tanh_value_and_grad(x)[1]


@upcast
def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(1.702 x) (CLIP's sigmoid approximation of GELU)."""
    return x * torch.sigmoid(QUICK_GELU_BETA * x)


def quick_gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """sigma(1.702x) + 1.702 x sigma(1.702x)(1 - sigma(1.702x))."""
    return swish_grad(x, QUICK_GELU_BETA)


# --- Swish / SiLU ------------------------------------------------------------------------


def _beta_like(beta: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    if isinstance(beta, torch.Tensor):
        return beta.to(device=x.device, dtype=x.dtype)
    return float(beta)


@upcast
def swish(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """x * sigmoid(beta x) (Ramachandran et al. 2017). beta=1 is SiLU.

    ``beta`` is a float or a tensor broadcastable to ``x`` (e.g. one value per hidden unit,
    shape ``[hidden]``). beta -> 0 gives x/2; beta -> inf gives ReLU.
    """
    b = _beta_like(beta, x)
    if isinstance(b, float) and b == 1.0:
        return F.silu(x)
    return x * torch.sigmoid(b * x)


def swish_value_and_grad(
    x: torch.Tensor, beta: float | torch.Tensor = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(swish(x, beta), d/dx swish)`` sharing σ(βx), in ``x``'s dtype (no upcast)."""
    b = _beta_like(beta, x)
    s = torch.sigmoid(b * x)
    # (x * s(1-s)) first: s(1-s) underflows to 0 before b*x can overflow.
    return x * s, s + b * (x * (s * (1.0 - s)))


@upcast
def swish_grad(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """d/dx swish = σ(βx) + βx·σ(βx)(1 − σ(βx))."""
    return swish_value_and_grad(x, beta)[1]


@upcast
def swish_grad_beta(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """d/dbeta [x sigma(bx)] = x^2 s (1 - s), s = sigma(bx), elementwise."""
    b = _beta_like(beta, x)
    s = torch.sigmoid(b * x)
    # x * (x * s(1-s)) keeps every intermediate finite: |x s(1-s)| <= 0.25 |x|.
    return x * (x * (s * (1.0 - s)))


silu = swish

# --- Saturating --------------------------------------------------------------------------


def sigmoid(x: torch.Tensor) -> torch.Tensor:
    """1 / (1 + exp(-x))."""
    return torch.sigmoid(x)


@upcast
def sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    """s (1 - s), s = sigma(x)."""
    s = torch.sigmoid(x)
    return s * (1.0 - s)


def tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh(x)."""
    return torch.tanh(x)


@upcast
def tanh_grad(x: torch.Tensor) -> torch.Tensor:
    """1 - tanh(x)^2."""
    t = torch.tanh(x)
    return 1.0 - t * t


def identity(x: torch.Tensor) -> torch.Tensor:
    """x (the bilinear variant's 'activation')."""
    return x


def identity_grad(x: torch.Tensor) -> torch.Tensor:
    """1."""
    return torch.ones_like(x)
