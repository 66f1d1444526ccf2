"""Choose and run an FFN backend.

Each backend declares what it needs; :func:`why_not` says in a sentence why one cannot run:

=============  ===========================================================================
backend         runs when
=============  ===========================================================================
``reference``   always (plain torch ops and autograd: the oracle)
``fused``       always: the custom autograd op of :mod:`ffnlab.ops.function`; its
                elementwise part uses the Triton kernels on CUDA when they can run; on CPU
                inductor-generated single-pass kernels (:mod:`ffnlab.ops.inductor_kernels`)
                from 2^20 hidden elements on, for the activations where they measured
                faster; the ATen engine (:mod:`ffnlab.ops.cpu`) otherwise
``triton``      triton imports, ``x`` is on CUDA (or on CPU with ``TRITON_INTERPRET=1``,
                Triton's interpreter, which is how CI tests the kernels), the activation
                has a kernel and the dtype is float32, float16, bfloat16 or float64
=============  ===========================================================================

``auto`` picks ``triton`` on CUDA when it can run, else ``fused``, else ``reference``. It never
picks the interpreter on CPU: interpreted kernels are orders of magnitude slower than the torch
engine. Forcing a backend that cannot run raises ``NotImplementedError`` with the reason.
"""

from __future__ import annotations

import os

import torch

from ..activations import get_activation
from ..errors import check_choice
from .function import RECOMPUTE_MODES, fused_feed_forward
from .reference import ffn_reference

__all__ = [
    "BACKENDS",
    "RECOMPUTE_MODES",
    "TRITON_ACTIVATIONS",
    "TRITON_DTYPES",
    "feed_forward",
    "plan",
    "resolve_backend",
    "why_not",
]

BACKENDS = ("auto", "reference", "fused", "triton")

# Activations with a Triton kernel (ffnlab.ops.triton_kernels.ACT_IDS; a test keeps them equal).
# Listed here so that asking does not import triton.
TRITON_ACTIVATIONS = frozenset(
    {"identity", "relu", "gelu", "gelu_tanh", "swish", "sigmoid", "tanh", "relu2"}
)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_DTYPES = FLOAT_DTYPES  # the dtypes the Triton kernels take: all of them


# Whether triton imports: '' if it does, else the reason; None until first asked. A plain module
# global rather than functools.cache, so that torch.compile reads it as a constant.
_triton_error: str | None = None


def _triton_import_error() -> str:
    """'' if triton imports, else why not (tried once per process, on first need)."""
    global _triton_error
    if _triton_error is None:
        try:
            import triton  # noqa: F401

            _triton_error = ""
        except Exception as e:  # ImportError, or a broken install raising anything else
            _triton_error = f"triton cannot be imported ({type(e).__name__}: {e})"
    return _triton_error


def _interpret_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_not(
    backend: str,
    x: torch.Tensor,
    *,
    activation: str | None = None,
) -> str | None:
    """Why ``backend`` cannot run on ``x`` (with ``activation``, when given): a sentence, or None.

    ``"auto"`` can always run (it falls back to the reference).
    """
    check_choice("backend", backend, BACKENDS)
    if backend in ("auto", "reference", "fused"):
        return None
    # triton
    if activation is not None:
        name = get_activation(activation).name
        if name not in TRITON_ACTIVATIONS:
            return f"there is no Triton kernel for activation {name!r}"
    if x.dtype not in TRITON_DTYPES:
        return f"the Triton kernels take float32, float16, bfloat16 or float64, not {x.dtype}"
    if x.device.type == "cpu":
        if not _interpret_enabled():
            return (
                "the input is on CPU and TRITON_INTERPRET=1 is not set "
                "(Triton runs on CUDA, or on CPU through its interpreter)"
            )
    elif x.device.type != "cuda":
        return f"Triton runs on CUDA (or CPU with TRITON_INTERPRET=1), not on {x.device.type}"
    err = _triton_import_error()
    return err or None


def _cpu_kernel(
    x: torch.Tensor, hidden: int | None, activation: str | None, gated: bool | None
) -> str:
    """The fused op's elementwise engine on CPU: inductor's single-pass kernels for large
    inputs where they beat ATen (see :mod:`ffnlab.ops.inductor_kernels` for the measured gains
    and the threshold), the ATen engine for small inputs, for activations where ATen is faster,
    or when compilation failed earlier in this process."""
    if hidden is None or x.device.type != "cpu" or x.dtype not in FLOAT_DTYPES:
        return "torch"
    from . import inductor_kernels

    rows = x.numel() // max(1, x.shape[-1]) if x.dim() else 0
    if rows * hidden < inductor_kernels.MIN_ELEMENTS or inductor_kernels.unavailable_reason():
        return "torch"
    if activation is not None and gated is not None:
        if not inductor_kernels.helps(get_activation(activation).name, gated):
            return "torch"
    return "inductor"


def plan(
    backend: str,
    x: torch.Tensor,
    *,
    activation: str | None = None,
    hidden: int | None = None,
    gated: bool | None = None,
) -> tuple[str, str | None]:
    """``(concrete backend, elementwise kernel)`` for running ``backend`` on ``x``.

    The backend is ``reference``, ``fused`` or ``triton``; the kernel is the fused op's
    elementwise engine (``"triton"``, ``"inductor"`` or ``"torch"``; None for the reference),
    chosen by size when ``hidden`` (the number of hidden units) is given, and by activation
    when ``activation`` and ``gated`` are. Forcing a backend
    that cannot run raises ``NotImplementedError`` with the reason.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "reference":
        return "reference", None
    if backend == "fused" or backend == "auto":
        # The Triton kernels on CUDA when they can run; on CPU inductor's kernels for large
        # inputs, else the ATen engine.
        on_cuda = x.device.type == "cuda"
        if on_cuda and why_not("triton", x, activation=activation) is None:
            return ("triton" if backend == "auto" else "fused"), "triton"
        return "fused", _cpu_kernel(x, hidden, activation, gated)
    reason = why_not(backend, x, activation=activation)
    if reason is not None:
        raise NotImplementedError(f"backend={backend!r} cannot run here: {reason}")
    return "triton", "triton"


def resolve_backend(backend: str, x: torch.Tensor, *, activation: str | None = None) -> str:
    """The concrete backend (``reference``, ``fused`` or ``triton``) that runs ``backend``."""
    return plan(backend, x, activation=activation)[0]


def feed_forward(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    b3: torch.Tensor | None = None,
    *,
    activation: str,
    beta: float | torch.Tensor = 1.0,
    backend: str = "auto",
    recompute: str = "activation",
) -> torch.Tensor:
    """Run the FFN with the chosen backend. Shapes as :func:`ffn_reference`.

    ``recompute`` applies to the fused backends; the reference keeps what eager autograd keeps.
    """
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    chosen, kernel = plan(
        backend, x, activation=activation, hidden=w1.shape[0], gated=w3 is not None
    )
    if chosen == "reference":
        return ffn_reference(x, w1, w2, w3, b1, b2, b3, activation=activation, beta=beta)
    return fused_feed_forward(
        x, w1, w2, w3, b1, b2, b3,
        activation=activation, beta=beta, recompute=recompute, kernel=kernel,
    )  # fmt: skip
