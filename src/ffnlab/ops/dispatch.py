"""Choose and run an FFN backend.

=============  ===========================================================================
backend         what runs
=============  ===========================================================================
``reference``   plain torch ops and autograd (the oracle); always runs
``fused``       the custom autograd op of :mod:`ffnlab.ops.function`; always runs. Its
                elementwise middle runs on the engine the engines table
                (:mod:`ffnlab.ops.engines`) chooses per direction: Triton on CUDA where it
                can run, on CPU inductor's generated loops for large inputs where they
                measured faster, ATen otherwise
``triton``      the fused op with the Triton engine named: on CUDA, or on CPU with
                ``TRITON_INTERPRET=1`` (Triton's interpreter, which is how CI tests the
                kernels); ``NotImplementedError`` with the reasons where it cannot run
``auto``        the fused op (it runs everywhere); a caller that can run the plain PyTorch
                computation itself asks :func:`choose` first (below)
=============  ===========================================================================

:func:`plan` says what a backend runs as ``(backend, engine)``: the concrete backend is
``"reference"`` or ``"fused"`` (``auto`` and ``triton`` are both the fused op) and the engine
names the elementwise loop inside it (``aten``, ``inductor`` or ``triton``). ``auto`` never
picks the Triton interpreter on CPU: interpreted kernels are orders of magnitude slower than
ATen.

**Choosing by the work at hand** (:func:`choose`). The fused op has a fixed cost per call
(argument checks, the engines table, the ``autograd.Function``) and pays off only where its
saved memory passes and, with gradients, its smaller set of saved tensors matter: from
:data:`FUSED_MIN_ELEMENTS` hidden elements per call (rows x hidden units) on. Below that
``auto`` is the plain computation (``reference``: the ``F.linear`` calls and the activation the
original module runs), with or without gradients. Measured on the 2-core CPU (float32, torch
2.13): one decoding step's Llama MLP (1 row, dim 512, hidden 1408, no grad) took 471 µs plain
and 1,271 µs through the fused op, 2 threads (with one thread under load, 530 against 683 µs);
the lab's tiny model (2048 rows x dim 64) trained as fast or 10% faster with the reference;
from 2^20 elements on the fused op's forward + backward took 0.90-0.98x the reference's
(SwiGLU, 2048 x 1536, docs/benchmarks.md "Engine selection on CPU"), which is also the size
from which the inductor engine is chosen. The same count holds with and without gradients
(without them the fused op does the reference's work plus its fixed cost, and its elementwise
forward gains only where an engine other than ATen is chosen, from the same size on) and on
every device (no CUDA measurement has been taken). Forced backends keep their meaning:
``fused`` and ``triton`` always run the fused op.
"""

from __future__ import annotations

import torch

from ..errors import UsageError, check_choice
from .engines import TRITON, select
from .function import RECOMPUTE_MODES, fused_feed_forward
from .reference import ActivationArg, ffn_reference

__all__ = [
    "BACKENDS",
    "FUSED_MIN_ELEMENTS",
    "RECOMPUTE_MODES",
    "backend_unsupported_reasons",
    "choose",
    "device_type",
    "feed_forward",
    "plan",
]

BACKENDS = ("auto", "reference", "fused", "triton")

#: Hidden elements per call (rows x hidden units) from which ``auto`` runs the fused op rather
#: than the plain computation (:func:`choose`; the measurements are in the module docstring).
FUSED_MIN_ELEMENTS = 1 << 20


def device_type(x: torch.Tensor) -> str:
    """``x.device.type``, without building a ``torch.device`` on a CPU: after a decoding step's
    matrix-vector products that attribute read took 12.7 us cold, ``x.is_cpu`` about 1 us (idle
    2-core Xeon, 2026-12-07); callers on the decoding path ask this."""
    return "cpu" if x.is_cpu else x.device.type


def choose(backend: str, rows: int, hidden_dim: int, *, grad: bool = True,
           device_type: str = "cpu") -> str:
    """The backend to run for ``rows`` input rows and ``hidden_dim`` hidden units: ``backend``
    itself, except that ``"auto"`` becomes ``"reference"`` (the plain PyTorch computation)
    when the work is too small to repay the fused op's fixed cost, fewer than
    :data:`FUSED_MIN_ELEMENTS` hidden elements, or when no gradient is wanted on a CPU (the
    fused op's gain there is the activation memory it does not keep for backward: a patched
    Llama's no-grad prefill, 4 x 256 tokens at hidden 1408, took 1.05x the plain model's time
    through it, idle 2-core Xeon, 2 threads, 2026-12-07), and ``"fused"`` otherwise. Forced
    backends (``"fused"``, ``"triton"``, ``"reference"``) are returned unchanged; whether
    ``"triton"`` can run is :func:`plan`'s question. ``rows`` counts every leading dim of the
    FFN input ``[..., dim]`` together. A few comparisons: callers may ask it on every call.
    """
    if backend != "auto":
        return backend
    if not grad and device_type == "cpu":
        return "reference"
    return "fused" if rows * hidden_dim >= FUSED_MIN_ELEMENTS else "reference"


def backend_unsupported_reasons(
    backend: str,
    x: torch.Tensor,
    *,
    activation: str | None = None,
    hidden_dim: int | None = None,
    gated: bool | None = None,
) -> list[str]:
    """Why ``backend`` cannot run the FFN on ``x [..., dim]``: sentences, empty if it can.

    Only ``"triton"`` can fail (the Triton engine's reasons when named, see
    :meth:`ffnlab.ops.engines.Engine.unsupported_reasons`); the others always run.
    """
    check_choice("backend", backend, BACKENDS)
    if backend != "triton":
        return []
    return TRITON.unsupported_reasons(
        x, hidden_dim=hidden_dim, activation=activation, gated=gated, forced=True
    )


def plan(
    backend: str,
    x: torch.Tensor,
    *,
    activation: str | None = None,
    hidden_dim: int | None = None,
    gated: bool | None = None,
    direction: str | None = None,
) -> tuple[str, str | None]:
    """``(backend, engine)`` that running ``backend`` on ``x [..., dim]`` means.

    ``backend`` is ``"reference"`` (engine None) or ``"fused"``; ``engine`` the fused op's
    elementwise engine in ``direction`` (``"forward"``, ``"backward"``; None: the engine that
    runs at least one of them), chosen by size when ``hidden_dim`` is given and by activation
    when ``activation`` and ``gated`` are. ``backend="triton"`` is ``("fused", "triton")``
    where the Triton engine can run, else ``NotImplementedError`` with the reasons.
    """
    check_choice("backend", backend, BACKENDS)
    if backend == "reference":
        return "reference", None
    if backend == "triton":
        reasons = backend_unsupported_reasons(
            backend, x, activation=activation, hidden_dim=hidden_dim, gated=gated
        )
        if reasons:
            raise NotImplementedError(f"backend='triton' cannot run here: {'; '.join(reasons)}")
        return "fused", "triton"
    engine = select(
        "auto", x, hidden_dim=hidden_dim, activation=activation, gated=gated, direction=direction
    )
    return "fused", engine.name


def feed_forward(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    b3: torch.Tensor | None = None,
    *,
    activation: ActivationArg,
    beta: float | torch.Tensor = 1.0,
    backend: str = "auto",
    recompute: str = "activation",
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """Run the FFN with the chosen backend. Shapes as :func:`ffn_reference`.

    ``recompute`` applies to the fused op; the reference keeps what eager autograd keeps.
    ``auto`` and ``fused`` let the engines table choose the elementwise engine per direction
    (at run time, on the hidden tensor), ``triton`` names the Triton engine. ``activation``
    is a registry name or a callable (reference and fused only: ``UsageError`` for
    ``triton``); ``options`` the activation's option values. Equivalent PyTorch (any
    backend)::

        ffn_reference(x, w1, w2, w3, b1, b2, b3, activation=activation, beta=beta)
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("recompute mode", recompute, RECOMPUTE_MODES)
    if backend == "reference":
        return ffn_reference(x, w1, w2, w3, b1, b2, b3, activation=activation, beta=beta,
                             options=options)  # fmt: skip
    if backend == "triton":
        if callable(activation):
            raise UsageError(
                "backend='triton' runs only the registry's activations, not a callable "
                f"({type(activation).__name__}); use backend 'fused' or 'reference'"
            )
        plan(backend, x, activation=activation, hidden_dim=w1.shape[0], gated=w3 is not None)
    return fused_feed_forward(
        x, w1, w2, w3, b1, b2, b3, activation=activation, beta=beta, recompute=recompute,
        engine="triton" if backend == "triton" else "auto", options=options,
    )  # fmt: skip
