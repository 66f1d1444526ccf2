"""The elementwise middle alone, ``m = act(h1) ⊙ h3`` (plain: ``act(h1)``), as ``ffnlab bench``
times it: on ``[tokens, hidden]`` tensors, without the matmuls, to set against copy bandwidth.

==============  ==========================================================================
``reference``   ``ffnlab.ops.reference.hidden_activation`` (torch ops), autograd backward
``fused``       the engines the fused op's table picks on CPU at this size, per direction,
                called directly: inductor's loops (``ffnlab.ops.engine_inductor``) from 2^20
                elements on where they measured faster, else the ATen engine
                (``ffnlab.ops.engine_aten``); CPU only, since on CUDA the fused op runs the
                Triton kernels (the ``triton`` row)
``triton``      the Triton kernels (``ffnlab.ops.engine_triton``), CUDA only
``compile``     ``torch.compile`` of the reference function
``liger``       Liger-Kernel's ``LigerSiLUMulFunction`` / ``LigerGELUMulFunction``, CUDA only
==============  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from ..errors import check_choice
from ..ops.reference import hidden_activation
from ..variants import get_variant
from .engines import TRITON, Engine, picked_engine, unsupported_reason
from .providers import TRITON_CPU_REASON, Setup, Skip, liger_function

__all__ = [
    "ELEMENTWISE_PROVIDERS",
    "ElementwiseRun",
    "EngineRun",
    "HiddenInputs",
    "PrivateInputs",
    "build_elementwise",
    "elementwise_provider",
]

ELEMENTWISE_PROVIDERS = ("reference", "fused", "compile", "triton", "liger")


@dataclass
class HiddenInputs:
    """One token count: ``h1``, ``h3`` (None for plain variants) ``[tokens, hidden]``, both
    requiring grad, and the upstream gradient ``g [tokens, hidden]``."""

    h1: torch.Tensor
    h3: torch.Tensor | None
    g: torch.Tensor


class ElementwiseRun:
    """The elementwise middle alone, ``m = act(h1) * h3`` on ``[tokens, hidden]`` tensors, through
    an autograd function ``fn(h1, h3)``; ``fwd``/``fwd_bwd`` take an object with ``h1``, ``h3``
    (None for plain variants) and the upstream gradient ``g``."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn

    def fwd(self, inp) -> object:
        return self.fn(inp.h1, inp.h3)

    def fwd_bwd(self, inp) -> None:
        inp.h1.grad = None
        if inp.h3 is not None:
            inp.h3.grad = None
        self.fn(inp.h1, inp.h3).backward(inp.g)


class EngineRun(ElementwiseRun):
    """The fused op's elementwise engines (``ffnlab.ops.engines``) called directly:
    ``hidden_forward``, and for fwd+bwd also ``hidden_backward`` with ``need_m=False``
    (gradients only), so that the bytes moved are exactly the minimum the benchmark counts
    (gated: 3 tensors forward, 5 backward). ``engine`` is an engine of the table, or
    ``"auto"``: per direction, the one the fused op's table picks for these tensors."""

    def __init__(self, engine: Engine | str, activation: str) -> None:
        self.engine, self.activation = engine, activation

    def _engine(self, h1: torch.Tensor, h3: torch.Tensor | None, direction: str) -> Engine:
        if self.engine == "auto":
            return picked_engine(h1, h3, self.activation, direction)
        return self.engine

    def fwd(self, inp) -> object:
        h3 = None if inp.h3 is None else inp.h3.detach()
        h1 = inp.h1.detach()
        return self._engine(h1, h3, "forward").hidden_forward(self.activation, h1, h3)

    def fwd_bwd(self, inp) -> None:
        h1, h3 = inp.h1.detach(), None if inp.h3 is None else inp.h3.detach()
        self._engine(h1, h3, "forward").hidden_forward(self.activation, h1, h3)
        self._engine(h1, h3, "backward").hidden_backward(self.activation, inp.g, h1, h3,
                                                         need_m=False)  # fmt: skip


def elementwise_provider(name: str) -> str | None:
    """The elementwise form of FFN provider ``name`` (``fused:*`` -> ``fused``), or None."""
    base = "fused" if name.startswith("fused:") else name
    return base if base in ELEMENTWISE_PROVIDERS else None


def build_elementwise(name: str, setup: Setup):
    """A run of the elementwise middle with provider ``name``; :class:`Skip` when it
    cannot run here."""
    check_choice("elementwise provider", name, ELEMENTWISE_PROVIDERS)
    act = get_variant(setup.variant).activation
    ref = partial(hidden_activation, act)
    cuda = setup.device.type == "cuda"
    if name == "reference":
        return ElementwiseRun(ref)
    if name == "fused":
        if cuda:  # the fused backend runs the Triton kernels there: one row is enough
            raise Skip("on CUDA the fused op's elementwise part is the Triton kernels "
                       "(the triton row)")
        return EngineRun("auto", act)
    if name == "triton":
        if not cuda:
            raise Skip(TRITON_CPU_REASON)
        probe = torch.empty(2, setup.hidden, dtype=setup.dtype, device=setup.device)
        reason = unsupported_reason("triton", probe)
        if reason is not None:
            raise Skip(reason)
        try:
            from ..ops import engine_triton  # noqa: F401  (imports triton, which may fail)
        except Exception as exc:
            raise Skip(f"the Triton kernels do not import ({type(exc).__name__}: {exc})") from None
        return EngineRun(TRITON, act)
    if name == "compile":
        key = "compile:elementwise"
        if key not in setup.cache:
            try:
                setup.cache[key] = torch.compile(ref)
            except Exception as exc:
                raise Skip(f"torch.compile failed: {type(exc).__name__}: {exc}") from None
        return ElementwiseRun(setup.cache[key])  # type: ignore[arg-type]
    if not cuda:
        raise Skip("Liger-Kernel runs on CUDA only")
    fn = liger_function(setup.variant)
    return PrivateInputs(ElementwiseRun(lambda h1, h3: fn.apply(h1, h3)))


class PrivateInputs:
    """Runs ``inner`` on its own copy of the inputs.

    Liger's backward writes the two input gradients into the storage of its inputs (saving
    two allocations): inside its MLP those are temporaries, but here the inputs are shared by
    every provider, so Liger gets a copy, made on the first (untimed, warm-up) call.
    """

    def __init__(self, inner: ElementwiseRun) -> None:
        self.inner = inner
        self._src: object | None = None
        self._own: object | None = None

    def _inputs(self, inp):
        if self._src is not inp:
            self._own = None  # drop the previous copy before making the next one
            clone = lambda t: None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
            self._own = type(inp)(clone(inp.h1), clone(inp.h3), inp.g)
            self._src = inp
        return self._own

    def fwd(self, inp) -> object:
        return self.inner.fwd(self._inputs(inp))

    def fwd_bwd(self, inp) -> None:
        self.inner.fwd_bwd(self._inputs(inp))
