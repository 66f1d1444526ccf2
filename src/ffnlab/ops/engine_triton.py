"""The ``triton`` engine: Triton kernels for the elementwise middle of the FFN, forward and
backward.

This module imports triton; nothing else in ffnlab imports it except on demand (the engines
table, :mod:`ffnlab.ops.engines`, when the fused op runs this engine). The kernels run on CUDA
tensors and, with ``TRITON_INTERPRET=1`` set before this module is imported, on CPU tensors
through Triton's interpreter (how the tests check them without a GPU).

It is one of the fused op's engines, with the contract of :mod:`ffnlab.ops.engine_aten`:
``hidden_forward`` and ``hidden_backward`` over 2-D ``[N, hidden]`` tensors (made contiguous
here), float32 / float16 / bfloat16 in, all maths in float32 registers (float64 inputs: in
float64), every result rounded
once to the input dtype. Each program handles a ``BLOCK_R x BLOCK_C`` tile; the tails of both
dimensions are masked, so any row count and hidden size work.

Equivalent PyTorch of the two kernels (``act`` one of :data:`ACT_IDS`)::

    # forward
    a = act(h1); m = a * h3            # gated; plain: m = a
    # backward, given dm = dL/dm
    dh3 = dm * act(h1)
    dh1 = dm * h3 * act'(h1)           # plain: dm * act'(h1)
    m = act(h1) * h3                   # recomputed for W2's gradient when asked
    dbeta = (dm * h3 * h1**2 * s * (1 - s)).sum(0), s = sigmoid(beta * h1)   # Swish only
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..activations import compute_dtype

__all__ = ["ACT_IDS", "hidden_forward", "hidden_backward", "interpreted"]

ACT_IDS = {
    "identity": 0,
    "relu": 1,
    "gelu": 2,  # erf form, exact (tl.math.erf; never the tanh approximation)
    "gelu_tanh": 3,
    "swish": 4,
    "sigmoid": 5,
    "tanh": 6,
    "relu2": 7,
}

# beta modes: a Python float (compile-time argument), one learnable value, one per unit.
_BETA_CONST, _BETA_SCALAR, _BETA_PER_UNIT = 0, 1, 2


@triton.jit
def _sigmoid(x):
    # exp(-x) = inf for x < -88 in fp32: 1 / inf = 0, the right limit, never NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh_sech2(x):
    """(tanh(x), 1 - tanh(x)^2) from e = exp(-2|x|) in (0, 1]: never overflows, and sech^2 =
    4e / (1 + e)^2 has no cancellation (1 - t*t loses all digits where t rounds to +-1)."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0.0, -t, t)
    return t, 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _tanh(x):
    t, _ = _tanh_sech2(x)
    return t


@triton.jit
def _act(x, beta, ACT: tl.constexpr):
    """act(x), in x's (float32 or float64) dtype."""
    if ACT == 0:
        y = x
    elif ACT == 1:
        y = tl.where(x < 0.0, 0.0, x)  # not (x > 0 ? x : 0): NaN must stay NaN, as in torch.relu
    elif ACT == 2:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACT == 4:
        y = x * _sigmoid(beta * x)
    elif ACT == 5:
        y = _sigmoid(x)
    elif ACT == 6:
        y = _tanh(x)
    else:
        r = tl.where(x < 0.0, 0.0, x)
        y = r * r
    return y


@triton.jit
def _act_grad(x, beta, ACT: tl.constexpr):
    """act'(x) in x's dtype; the formulas of ffnlab.activations.*_grad, same operation order."""
    if ACT == 0:
        d = tl.full(x.shape, 1.0, x.dtype)
    elif ACT == 1:
        d = tl.where(x <= 0.0, 0.0, 1.0)  # torch's threshold_backward: 0 only where x <= 0
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        d = cdf + x * (tl.exp(-0.5 * x * x) * 0.3989422804014327)
    elif ACT == 3:
        t, sech2 = _tanh_sech2(0.7978845608028654 * (x + 0.044715 * x * x * x))
        du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
        # (x * sech2) first: sech2 underflows to 0 before du (~x^2) can matter.
        d = 0.5 * (1.0 + t) + 0.5 * (x * sech2) * du
    elif ACT == 4:
        s = _sigmoid(beta * x)
        d = s + beta * (x * (s * (1.0 - s)))
    elif ACT == 5:
        s = _sigmoid(x)
        d = s * (1.0 - s)
    elif ACT == 6:
        _, d = _tanh_sech2(x)
    else:
        d = 2.0 * tl.where(x < 0.0, 0.0, x)
    return d


@triton.jit
def _load_beta(BETA, cols, n_cols, beta_value, BETA_MODE: tl.constexpr, CT: tl.constexpr):
    if BETA_MODE == 0:
        b = beta_value  # float32 (float64 inputs pass beta as a tensor)
    elif BETA_MODE == 1:
        b = tl.load(BETA).to(CT)
    else:
        b = tl.load(BETA + cols, mask=cols < n_cols, other=1.0).to(CT)[None, :]
    return b


@triton.jit
def _forward_kernel(
    H1, H3, BETA, OUT, A_OUT, n_rows, n_cols, beta_value,
    ACT: tl.constexpr, GATED: tl.constexpr, BETA_MODE: tl.constexpr, STORE_A: tl.constexpr,
    CT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    x = tl.load(H1 + offs, mask=mask, other=0.0).to(CT)
    beta = _load_beta(BETA, cols, n_cols, beta_value, BETA_MODE, CT)
    a = _act(x, beta, ACT)
    if STORE_A:
        tl.store(A_OUT + offs, a.to(A_OUT.dtype.element_ty), mask=mask)
    if GATED:
        a = a * tl.load(H3 + offs, mask=mask, other=0.0).to(CT)
    tl.store(OUT + offs, a.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    G, H1, H3, BETA, DH1, DH3, M, DBETA, n_rows, n_cols, beta_value,
    ACT: tl.constexpr, GATED: tl.constexpr, BETA_MODE: tl.constexpr, NEED_M: tl.constexpr,
    NEED_DBETA: tl.constexpr, CT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    pid_r = tl.program_id(0)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    offs = rows[:, None].to(tl.int64) * n_cols + cols[None, :]
    g = tl.load(G + offs, mask=mask, other=0.0).to(CT)
    x = tl.load(H1 + offs, mask=mask, other=0.0).to(CT)
    beta = _load_beta(BETA, cols, n_cols, beta_value, BETA_MODE, CT)
    a = _act(x, beta, ACT)
    if GATED:
        v = tl.load(H3 + offs, mask=mask, other=0.0).to(CT)
        tl.store(DH3 + offs, (g * a).to(DH3.dtype.element_ty), mask=mask)
        gv = g * v
        if NEED_M:
            tl.store(M + offs, (a * v).to(M.dtype.element_ty), mask=mask)
    else:
        gv = g
        if NEED_M:
            tl.store(M + offs, a.to(M.dtype.element_ty), mask=mask)
    tl.store(DH1 + offs, (gv * _act_grad(x, beta, ACT)).to(DH1.dtype.element_ty), mask=mask)
    if NEED_DBETA:
        s = _sigmoid(beta * x)
        # x * (x * s(1-s)): every intermediate stays finite (|x s(1-s)| <= |x| / 4).
        db = tl.where(mask, gv * (x * (x * (s * (1.0 - s)))), 0.0)
        # One partial sum per (row block, column); the caller adds the row blocks up.
        tl.store(DBETA + pid_r * n_cols + cols, tl.sum(db, axis=0), mask=cols < n_cols)


def interpreted() -> bool:
    """Whether the kernels were built for Triton's CPU interpreter."""
    return type(_forward_kernel).__name__ == "InterpretedFunction"


# The Triton type of activations.compute_dtype, in which every kernel does its maths.
_TL_TYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def _blocks(n_rows: int, n_cols: int) -> tuple[int, int]:
    # 4096-element tiles: enough work per program on a GPU, and few programs under the
    # interpreter (which runs each program in Python: fewer, larger tiles are faster there).
    block_c = min(256, triton.next_power_of_2(max(n_cols, 1)))
    block_r = max(1, min(triton.next_power_of_2(max(n_rows, 1)), 4096 // block_c))
    return block_r, block_c


def _beta_args(
    beta: float | torch.Tensor, like: torch.Tensor
) -> tuple[torch.Tensor, float, int]:
    if not isinstance(beta, torch.Tensor):
        if like.dtype != torch.float64:
            return like, float(beta), _BETA_CONST
        # A float argument reaches the kernel as float32: float64 needs beta in a tensor.
        beta = torch.tensor(float(beta), dtype=torch.float64)
    b = beta.detach().to(device=like.device).contiguous()
    return b, 1.0, _BETA_SCALAR if b.dim() == 0 else _BETA_PER_UNIT


def _check(activation: str, h1: torch.Tensor) -> int:
    if activation not in ACT_IDS:
        raise NotImplementedError(f"there is no Triton kernel for activation {activation!r}")
    if compute_dtype(h1.dtype) not in _TL_TYPES:
        raise NotImplementedError(f"the Triton kernels do not take dtype {h1.dtype}")
    if h1.dim() != 2:
        raise ValueError(f"expected a 2-D [N, hidden] tensor, got shape {list(h1.shape)}")
    return ACT_IDS[activation]


def hidden_forward(
    activation: str,
    h1: torch.Tensor,
    h3: torch.Tensor | None,
    beta: float | torch.Tensor = 1.0,
    *,
    keep_act: bool = False,
    options: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(m, a)``: ``m = act(h1) * h3`` (gated) or ``act(h1)``; ``a = act(h1)`` if ``keep_act``
    and gated, else None. Shapes ``[N, hidden]``, dtype of ``h1``.

    Equivalent PyTorch: ``ffnlab.ops.reference.hidden_activation(activation, h1, h3, beta)``.
    """
    act_id = _check(activation, h1)
    h1 = h1.contiguous()
    h3 = None if h3 is None else h3.contiguous()
    n_rows, n_cols = h1.shape
    out = torch.empty_like(h1)
    a = torch.empty_like(h1) if keep_act and h3 is not None else None
    if h1.numel() == 0:
        return out, a
    b, beta_value, beta_mode = _beta_args(beta, h1)
    br, bc = _blocks(n_rows, n_cols)
    grid = (triton.cdiv(n_rows, br), triton.cdiv(n_cols, bc))
    _forward_kernel[grid](
        h1, h1 if h3 is None else h3, b, out, out if a is None else a,
        n_rows, n_cols, beta_value,
        ACT=act_id, GATED=h3 is not None, BETA_MODE=beta_mode, STORE_A=a is not None,
        CT=_TL_TYPES[compute_dtype(h1.dtype)],
        BLOCK_R=br, BLOCK_C=bc,
    )  # fmt: skip
    return out, a


def hidden_backward(
    activation: str,
    dm: torch.Tensor,
    h1: torch.Tensor,
    h3: torch.Tensor | None,
    beta: float | torch.Tensor = 1.0,
    *,
    a: torch.Tensor | None = None,
    m: torch.Tensor | None = None,
    need_m: bool = True,
    need_dbeta: bool = False,
    dm_is_scratch: bool = False,
    options: tuple[float, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """``(dh1, dh3, m, dbeta)`` from ``dm = dL/dm``; the contract of
    :func:`ffnlab.ops.engine_aten.hidden_backward`. ``a`` is not needed (recomputed in registers, which
    costs less than reading it); ``m`` is recomputed only when ``need_m`` and not given.
    ``dm_is_scratch`` is accepted for the common contract: dh1 is written over ``dm`` then.
    """
    act_id = _check(activation, h1)
    dm = dm.contiguous()
    h1 = h1.contiguous()
    h3 = None if h3 is None else h3.contiguous()
    n_rows, n_cols = h1.shape
    gated = h3 is not None
    dh1 = dm if dm_is_scratch and dm.dtype == h1.dtype else torch.empty_like(h1)
    dh3 = torch.empty_like(h1) if gated else None
    store_m = need_m and m is None
    m_out = torch.empty_like(h1) if store_m else m
    br, bc = _blocks(n_rows, n_cols)
    n_row_blocks = triton.cdiv(n_rows, br)
    partial = (
        torch.zeros(max(n_row_blocks, 1), n_cols, device=h1.device,
                    dtype=compute_dtype(h1.dtype))
        if need_dbeta
        else None
    )
    if h1.numel() > 0:
        b, beta_value, beta_mode = _beta_args(beta, h1)
        _backward_kernel[(n_row_blocks, triton.cdiv(n_cols, bc))](
            dm, h1, h1 if h3 is None else h3, b, dh1, dh1 if dh3 is None else dh3,
            m_out if store_m else dh1, h1 if partial is None else partial,
            n_rows, n_cols, beta_value,
            ACT=act_id, GATED=gated, BETA_MODE=beta_mode, NEED_M=store_m,
            NEED_DBETA=need_dbeta, CT=_TL_TYPES[compute_dtype(h1.dtype)], BLOCK_R=br, BLOCK_C=bc,
        )  # fmt: skip
    dbeta = partial.sum(0) if partial is not None else None
    return dh1, dh3, m_out, dbeta
