"""The fused op's elementwise engines: one table, each engine saying what it supports and why not.

The fused op (:mod:`ffnlab.ops.function`) computes its elementwise middle, ``m = act(h1) * h3``
(plain variants: ``act(h1)``) and its gradients, with one of three engines of the same contract
(``hidden_forward`` / ``hidden_backward`` over ``[N, hidden]`` tensors):

============  ==============================  ================================================
engine        implementation                  can run when
============  ==============================  ================================================
``triton``    :mod:`~.engine_triton`          triton imports, the input is on CUDA (or on CPU
                                              with ``TRITON_INTERPRET=1``, Triton's
                                              interpreter), the activation has a kernel, the
                                              dtype is float32, float16, bfloat16 or float64
``inductor``  :mod:`~.engine_inductor`        the input is a CPU float tensor and compiling
                                              the generated loops has not failed in this
                                              process
``aten``      :mod:`~.engine_aten`            always (ATen operations, any device and dtype)
============  ==============================  ================================================

:data:`ENGINES` holds them in priority order. :func:`select` with ``engine="auto"`` gives the
first whose :meth:`Engine.unsupported_reasons` is empty; given a name it checks that engine and
raises ``NotImplementedError`` with the reasons if it cannot run.

Reasons come in two kinds. What an engine cannot do (device, dtype, activation, a failed import
or compilation) rules it out always. Where it can run but measured slower than ATen, it is left
out of the automatic choice only (``forced=False``): the Triton interpreter on CPU, and the
inductor loops below :attr:`InductorEngine.min_elements` hidden elements or, per direction
(forward / backward), for the (activation, gated) pairs outside its ``faster_forward`` /
``faster_backward`` sets. So ``auto`` runs, per direction, the same engine as a per-direction
speed table would; naming an engine (``engine="inductor"``) runs it in both directions at any
size, which is how the tests exercise the generated loops for every activation.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from ..activations import get_activation
from ..errors import check_choice

__all__ = [
    "ATEN",
    "DIRECTIONS",
    "ENGINES",
    "FLOAT_DTYPES",
    "INDUCTOR",
    "TRITON",
    "Engine",
    "InductorEngine",
    "TritonEngine",
    "interpret_enabled",
    "select",
    "triton_import_error",
]

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DIRECTIONS = ("forward", "backward")
_FLOAT_NAMES = "float32, float16, bfloat16 or float64"


def interpret_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Whether triton imports: '' if it does, else the reason; None until first asked. A plain module
# global rather than functools.cache, so that torch.compile reads it as a constant.
_triton_error: str | None = None


def triton_import_error() -> str:
    """'' if triton imports, else why not (tried once per process, on first need)."""
    global _triton_error
    if _triton_error is None:
        try:
            import triton  # noqa: F401

            _triton_error = ""
        except Exception as e:  # ImportError, or a broken install raising anything else
            _triton_error = f"triton cannot be imported ({type(e).__name__}: {e})"
    return _triton_error


def _rows(x: torch.Tensor) -> int:
    """The number of rows of ``x [..., last]`` (all leading dims together)."""
    return x.numel() // max(1, x.shape[-1]) if x.dim() else 0


@dataclass(frozen=True)
class Engine:
    """One elementwise engine: its name and the module implementing it.

    ``module_name`` names a module of :mod:`ffnlab.ops` with ``hidden_forward`` and
    ``hidden_backward``; it is imported on first use (the Triton one imports triton).
    The base class is the ATen engine: it runs everywhere.
    """

    name: str
    module_name: str

    def unsupported_reasons(
        self,
        x: torch.Tensor,
        *,
        hidden_dim: int | None = None,
        activation: str | None = None,
        gated: bool | None = None,
        direction: str | None = None,
        forced: bool = False,
    ) -> list[str]:
        """Why this engine does not run for the FFN on ``x``: sentences; empty if it does.

        ``x`` is the FFN input ``[..., dim]`` or its hidden tensor ``h1 [..., hidden]``: its
        device and dtype are read, and its leading dims count the rows. ``hidden_dim`` is the
        number of hidden units (None: unknown), ``activation`` / ``gated`` the variant's (None:
        unknown, no per-activation rule applies), ``direction`` ``"forward"``, ``"backward"``
        or None (either: a per-direction rule applies only if it holds for both).
        ``forced=True`` asks only what the engine cannot do, leaving out where it measured
        slower than ATen.
        """
        return []

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"{__package__}.{self.module_name}")

    def hidden_forward(self, activation, h1, h3, beta=1.0, *, keep_act=False, options=()):
        """``(m, a)`` for ``h1, h3 [N, hidden]``: this engine's ``hidden_forward`` (contract in
        :func:`ffnlab.ops.engine_aten.hidden_forward`). Equivalent PyTorch::

            a = act(h1); m = a * h3 if h3 is not None else a
        """
        return self.module.hidden_forward(activation, h1, h3, beta, keep_act=keep_act,
                                          options=options)

    def hidden_backward(self, activation, dm, h1, h3, beta=1.0, **options):
        """``(dh1, dh3, m, dbeta)`` from ``dm = dL/dm [N, hidden]``: this engine's
        ``hidden_backward`` (options and contract in
        :func:`ffnlab.ops.engine_aten.hidden_backward`). Equivalent PyTorch (gated)::

            dh3 = dm * act(h1); dh1 = dm * h3 * act'(h1); m = act(h1) * h3
        """
        return self.module.hidden_backward(activation, dm, h1, h3, beta, **options)


@dataclass(frozen=True)
class TritonEngine(Engine):
    """The Triton kernels: CUDA, or CPU through the interpreter when named."""

    # Activations with a kernel (engine_triton.ACT_IDS; a test keeps them equal), listed here
    # so that asking does not import triton.
    activations: frozenset[str] = frozenset()

    def unsupported_reasons(self, x, *, hidden_dim=None, activation=None, gated=None,
                            direction=None, forced=False) -> list[str]:  # fmt: skip
        reasons = []
        if activation is not None:
            name = get_activation(activation).name
            if name not in self.activations:
                reasons.append(f"there is no Triton kernel for activation {name!r}")
        if x.dtype not in FLOAT_DTYPES:
            reasons.append(f"the Triton kernels take {_FLOAT_NAMES}, not {x.dtype}")
        if x.device.type == "cpu":
            if not interpret_enabled():
                reasons.append("the input is on CPU and TRITON_INTERPRET=1 is not set "
                               "(Triton runs on CUDA, or on CPU through its interpreter)")
            elif not forced:
                reasons.append("on CPU the Triton kernels run in Triton's interpreter, orders of "
                               "magnitude slower than ATen: only when asked for by name")
        elif x.device.type != "cuda":
            reasons.append(
                f"Triton runs on CUDA (or CPU with TRITON_INTERPRET=1), not on {x.device.type}"
            )
        if not reasons:  # importing triton takes seconds: only when nothing else rules it out
            err = triton_import_error()
            if err:
                reasons.append(err)
        return reasons


@dataclass(frozen=True)
class InductorEngine(Engine):
    """TorchInductor's generated single-pass CPU loops.

    Chosen automatically from ``min_elements`` hidden elements (rows x hidden units) on: below
    that the compilation and the compiled call's fixed cost are not repaid. Per direction it is
    chosen only for the ``(activation, gated)`` pairs where it measured faster than ATen.
    The measurements behind both are in docs/benchmarks.md, "Engine selection on CPU".
    """

    min_elements: int = 1 << 20
    faster_forward: frozenset[tuple[str, bool]] = frozenset()
    faster_backward: frozenset[tuple[str, bool]] = frozenset()

    def unsupported_reasons(self, x, *, hidden_dim=None, activation=None, gated=None,
                            direction=None, forced=False) -> list[str]:  # fmt: skip
        reasons = []
        if x.device.type != "cpu":
            reasons.append(f"the generated loops run on CPU tensors, not on {x.device.type}")
        if x.dtype not in FLOAT_DTYPES:
            reasons.append(f"the generated loops take {_FLOAT_NAMES}, not {x.dtype}")
        if not reasons:
            from . import engine_inductor  # its compiled-kernel state, not the compiler stack

            failure = engine_inductor.unavailable_reason()
            if failure:
                reasons.append(f"compiling the generated loops failed in this process ({failure})")
        if forced:
            return reasons
        if hidden_dim is None:
            reasons.append("the hidden size is not given (the loops pay off on large inputs only)")
        elif _rows(x) * hidden_dim < self.min_elements:
            reasons.append(f"{_rows(x) * hidden_dim} hidden elements are fewer than the "
                           f"{self.min_elements} from which the loops beat ATen")
        if activation is not None and gated is not None:
            name = get_activation(activation).name
            slower = self.slower_directions(name, gated)
            if slower and (direction in slower or (direction is None and len(slower) == 2)):
                kind = "gated" if gated else "plain"
                which = direction or "forward and backward"
                reasons.append(f"ATen measured faster for the {which} of {kind} {name}")
        return reasons

    def slower_directions(self, activation: str, gated: bool) -> tuple[str, ...]:
        """The directions in which ATen measured faster than these loops for the variant."""
        faster = {"forward": self.faster_forward, "backward": self.faster_backward}
        return tuple(d for d in DIRECTIONS if (activation, gated) not in faster[d])


TRITON = TritonEngine(
    "triton",
    "engine_triton",
    activations=frozenset(
        {"identity", "relu", "gelu", "gelu_tanh", "swish", "sigmoid", "tanh", "relu2"}
    ),
)
INDUCTOR = InductorEngine(
    "inductor",
    "engine_inductor",
    # Where the generated loop beat the ATen engine; measured gains in docs/benchmarks.md.
    # Elsewhere ATen's single-op kernels win (its erf and tanh are vectorised better, and a
    # plain forward is one op anyway).
    faster_forward=frozenset(
        {("identity", True), ("relu", True), ("swish", True), ("sigmoid", True),
         ("relu2", True), ("relu2", False)}
    ),  # fmt: skip
    faster_backward=frozenset(
        {(a, True) for a in ("identity", "relu", "gelu", "gelu_tanh", "swish", "sigmoid", "relu2")}
        | {(a, False) for a in ("gelu_tanh", "swish", "sigmoid", "relu2")}
    ),
)
ATEN = Engine("aten", "engine_aten")

# Name -> engine, in priority order: automatic choice runs the first that can.
ENGINES: dict[str, Engine] = {e.name: e for e in (TRITON, INDUCTOR, ATEN)}


def select(
    engine: str,
    x: torch.Tensor,
    *,
    hidden_dim: int | None = None,
    activation: str | None = None,
    gated: bool | None = None,
    direction: str | None = None,
) -> Engine:
    """The engine that runs: for ``engine="auto"`` the first of :data:`ENGINES` whose
    :meth:`~Engine.unsupported_reasons` is empty; for a name, that engine, or
    ``NotImplementedError`` naming what it cannot do. Arguments as ``unsupported_reasons``.
    """
    check_choice("engine", engine, ("auto", *ENGINES))
    kw = dict(hidden_dim=hidden_dim, activation=activation, gated=gated, direction=direction)
    if engine != "auto":
        reasons = ENGINES[engine].unsupported_reasons(x, forced=True, **kw)
        if reasons:
            raise NotImplementedError(f"engine={engine!r} cannot run here: " + "; ".join(reasons))
        return ENGINES[engine]
    return next(e for e in ENGINES.values() if not e.unsupported_reasons(x, **kw))
