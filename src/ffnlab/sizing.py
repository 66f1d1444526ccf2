"""Hidden-size rules, parameter counts and FLOPs per token."""

from __future__ import annotations

from .activations import get_activation
from .errors import UsageError, check_positive_int
from .variants import get_variant

__all__ = [
    "llama_hidden_dim",
    "default_hidden_dim",
    "ffn_params",
    "ffn_flops_per_token",
    "ELEMENTWISE_FLOPS",
]


def llama_hidden_dim(
    dim: int,
    hidden_dim: int | None = None,
    multiple_of: int = 256,
    ffn_dim_multiplier: float | None = None,
) -> int:
    """LLaMA's parameter-matched hidden size for a gated FFN.

    ``h = hidden_dim or 4*dim; h = int(2*h/3); h = int(ffn_dim_multiplier*h) if given;``
    ``h = multiple_of * ceil(h / multiple_of)``.

    >>> llama_hidden_dim(4096, multiple_of=256)
    11008
    >>> llama_hidden_dim(128, hidden_dim=256, multiple_of=16)
    176
    """
    check_positive_int("dim", dim)
    check_positive_int("multiple_of", multiple_of)
    h = 4 * dim if hidden_dim is None else check_positive_int("hidden_dim", hidden_dim)
    h = (2 * h) // 3  # == int(2*h/3) for positive ints, without float rounding
    if ffn_dim_multiplier is not None:
        if not ffn_dim_multiplier > 0:
            raise UsageError(f"ffn_dim_multiplier must be > 0, got {ffn_dim_multiplier!r}")
        h = int(ffn_dim_multiplier * h)
    h = max(h, 1)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def default_hidden_dim(
    variant: str,
    dim: int,
    *,
    multiple_of: int = 1,
    ffn_dim_multiplier: float | None = None,
) -> int:
    """Hidden size when none is given: ``4*dim`` for plain variants, LLaMA's rule for gated.

    Both are rounded up to ``multiple_of``; ``ffn_dim_multiplier`` scales either.
    """
    if get_variant(variant).gated:
        return llama_hidden_dim(
            dim, multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier
        )
    check_positive_int("dim", dim)
    check_positive_int("multiple_of", multiple_of)
    h = 4 * dim
    if ffn_dim_multiplier is not None:
        if not ffn_dim_multiplier > 0:
            raise UsageError(f"ffn_dim_multiplier must be > 0, got {ffn_dim_multiplier!r}")
        h = max(int(ffn_dim_multiplier * h), 1)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def ffn_params(variant: str, dim: int, hidden_dim: int, *, bias: bool | None = None) -> int:
    """Parameters of one FFN of width ``dim``: ``(2 or 3) * dim * hidden_dim`` plus biases
    (``[hidden_dim]`` on W1 and W3, ``[dim]`` on W2).

    ``bias=None`` means the variant's default (on for plain, off for gated; on for GPT-OSS's
    clamped_swiglu). An activation's learnable parameters (xielu's two) are counted too.
    """
    v = get_variant(variant)
    check_positive_int("dim", dim)
    check_positive_int("hidden_dim", hidden_dim)
    if bias is None:
        bias = v.default_bias
    n = v.matrices * dim * hidden_dim + get_activation(v.activation).n_params
    if bias:
        n += hidden_dim * (v.matrices - 1) + dim
    return n


# Forward FLOPs per hidden unit of the elementwise part, counting one per add, multiply,
# compare and transcendental (exp, erf, tanh). A convention for comparison, not a measurement.
ELEMENTWISE_FLOPS: dict[str, int] = {
    "identity": 0,
    "relu": 1,
    "relu2": 2,
    "sigmoid": 4,  # exp, add, reciprocal, negate
    "tanh": 1,
    "swish": 6,  # beta*x, sigmoid (4), multiply
    "gelu": 6,  # x/sqrt2, erf, +1, *0.5, *x
    "gelu_tanh": 9,  # x^3 (2), fma, *c, tanh, +1, *0.5, *x
    "quick_gelu": 6,
    "leaky_relu2": 3,  # compare, select, square
    "xielu": 9,  # min, expm1, sub, mul, x^2, fma (2), compare, select
    "clamped_swish": 10,  # min, swish (6), value clamp (2), +1
}


def ffn_flops_per_token(variant: str, dim: int, hidden_dim: int) -> dict[str, int]:
    """Forward FLOPs per token: ``{"matmul": ..., "elementwise": ..., "total": ...}``.

    A matrix product ``[dim] x [dim, hidden_dim]`` costs ``2*dim*hidden_dim`` FLOPs; gated
    variants do three, plain ones two. The elementwise part uses :data:`ELEMENTWISE_FLOPS` per
    hidden unit, plus one multiply for the gate. Forward+backward is about three times the
    matmul part.
    """
    v = get_variant(variant)
    check_positive_int("dim", dim)
    check_positive_int("hidden_dim", hidden_dim)
    matmul = 2 * dim * hidden_dim * v.matrices
    elementwise = hidden_dim * (ELEMENTWISE_FLOPS[v.activation] + (1 if v.gated else 0))
    return {"matmul": matmul, "elementwise": elementwise, "total": matmul + elementwise}
