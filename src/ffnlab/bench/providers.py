"""What ``ffnlab bench`` measures: one :class:`ProviderRun` per provider, all sharing the same
weights.

A provider is a way to compute the FFN (the elementwise middle alone:
:mod:`ffnlab.bench.elementwise`):

=================  =====================================================================
``reference``      ``FeedForward(backend="reference")``: plain torch ops, autograd backward
``fused:<mode>``   ``FeedForward(backend="fused", recompute=<mode>)``, mode none/activation/full
``compile``        ``torch.compile`` of the reference module (inductor: C++ on CPU, Triton on CUDA)
``triton``         ``FeedForward(backend="triton")``: the Triton kernels, CUDA only here
``liger``          Liger-Kernel's ``LigerSiLUMulFunction`` / ``LigerGELUMulFunction`` between
                   the same three ``F.linear`` calls (what its ``LigerSwiGLUMLP`` does); CUDA only
``matmul``         the matrix products alone: the floor no FFN implementation can go under
=================  =====================================================================

A provider that cannot run here raises :class:`Skip` with the reason, which the benchmark
reports in place of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..errors import UsageError, check_choice
from ..ffn import FeedForward
from ..ops.memory import saved_tensor_bytes
from ..variants import get_variant
from .engines import unsupported_reason

__all__ = [
    "PROVIDERS",
    "DEFAULT_PROVIDERS",
    "MatmulFloor",
    "ProviderRun",
    "TRITON_CPU_REASON",
    "liger_function",
    "Skip",
    "Setup",
    "Inputs",
    "make_setup",
    "make_inputs",
    "build_run",
    "parse_providers",
]

PROVIDERS = (
    "reference",
    "fused:none",
    "fused:activation",
    "fused:full",
    "compile",
    "triton",
    "liger",
    "matmul",
)
# torch.compile is left out of the default set: inductor's C++ build takes tens of seconds per
# shape on a small CPU (docs/benchmarks.md, "Measurements behind the defaults").
DEFAULT_PROVIDERS = tuple(p for p in PROVIDERS if p != "compile")


TRITON_CPU_REASON = ("Triton kernels are timed on CUDA only (on CPU they run only in the "
               "TRITON_INTERPRET=1 interpreter, far too slow to time)")


class Skip(Exception):
    """A provider cannot run in this configuration; the message says why."""


def parse_providers(text: str | None) -> list[str]:
    """``"reference,fused:full"`` -> the list; ``None``/``""`` the default set, ``all`` every one."""
    if text is None or not text.strip():
        return list(DEFAULT_PROVIDERS)
    if text.strip() == "all":
        return list(PROVIDERS)
    out: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part == "fused":  # shorthand for the three recompute modes
            names = [p for p in PROVIDERS if p.startswith("fused:")]
        else:
            names = [check_choice("provider", part, PROVIDERS)]
        out.extend(n for n in names if n not in out)
    if not out:
        raise UsageError("--providers names no provider")
    return out


@dataclass
class Setup:
    """One FFN shape on one device: the reference module whose weights every provider uses."""

    variant: str
    dim: int
    hidden: int
    dtype: torch.dtype
    device: torch.device
    module: FeedForward
    # Compiled wrappers live as long as the setup so that each token count reuses them.
    cache: dict[str, object] = field(default_factory=dict)


@dataclass
class Inputs:
    """One token count: ``x [tokens, dim]`` (requires grad, as inside a network) and the
    upstream gradient ``dy [tokens, dim]``."""

    tokens: int
    x: torch.Tensor
    dy: torch.Tensor


def make_setup(
    variant: str, dim: int, hidden: int, *, dtype: torch.dtype, device: torch.device, seed: int
) -> Setup:
    """A reference ``FeedForward`` with weights ~ N(0, 1/fan_in) from a private generator
    (the global RNG is left alone)."""
    module = FeedForward(dim, hidden, variant, backend="reference", device=device, dtype=dtype)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else dim
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
    return Setup(get_variant(variant).name, dim, hidden, dtype, device, module)


def make_inputs(setup: Setup, tokens: int, *, seed: int) -> Inputs:
    gen = torch.Generator(device="cpu").manual_seed(seed + tokens)
    kw = {"dtype": setup.dtype, "device": setup.device}
    x = torch.randn(tokens, setup.dim, generator=gen).to(**kw).requires_grad_(True)
    dy = torch.randn(tokens, setup.dim, generator=gen).to(**kw)
    return Inputs(tokens, x, dy)


class ProviderRun:
    """A provider ready to run on one setup: ``fwd(inp)`` and ``fwd_bwd(inp)`` are timed."""

    def __init__(self, name: str, forward: Callable[[torch.Tensor], torch.Tensor],
                 params: list[torch.Tensor], backend: str | None = None) -> None:
        self.name = name
        self.forward = forward
        self.params = params
        self.backend = backend  # the concrete backend that ran, when there is one

    def zero_grad(self, inp: Inputs) -> None:
        inp.x.grad = None
        for p in self.params:
            p.grad = None

    def fwd(self, inp: Inputs) -> object:
        return self.forward(inp.x)

    def fwd_bwd(self, inp: Inputs) -> None:
        # set_to_none, as optimizer.zero_grad() does by default: each step allocates its grads.
        self.zero_grad(inp)
        self.forward(inp.x).backward(inp.dy)

    def saved_bytes(self, inp: Inputs) -> int | None:
        """Bytes autograd keeps for backward, parameters excluded (None if not measurable)."""
        try:
            nbytes, _ = saved_tensor_bytes(lambda: self.forward(inp.x), exclude=self.params)
        except Exception:  # e.g. a compiled graph that refuses saved-tensor hooks
            return None
        return nbytes


class MatmulFloor(ProviderRun):
    """The FFN's matrix products and nothing else, on precomputed hidden tensors.

    Forward, gated: ``x @ W1.T``, ``x @ W3.T``, ``a @ W2.T`` (plain: no W3). Backward:
    ``dy @ W2`` and ``dy.T @ a`` (down projection), ``dh1.T @ x`` and ``dh3.T @ x`` (weight
    grads), ``dx = dh1 @ W1 + dh3 @ W3``: twice the forward's FLOPs, as for any FFN.
    """

    def __init__(self, setup: Setup) -> None:
        m = setup.module
        self.w1, self.w2 = m.w1.weight.detach(), m.w2.weight.detach()
        self.w3 = None if m.w3 is None else m.w3.weight.detach()
        self._scratch: tuple[int, list[torch.Tensor]] | None = None
        super().__init__("matmul", self._forward, [])

    def hidden_tensors(self, inp: Inputs) -> list[torch.Tensor]:
        """``[a, dh1, dh3]``, random ``[tokens, hidden]`` tensors standing in for the hidden
        activation and its two gradients (made once per token count)."""
        if self._scratch is None or self._scratch[0] != inp.tokens:
            self._scratch = None  # free the previous token count's tensors first
            shape = (inp.tokens, self.w1.shape[0])
            kw = {"dtype": self.w1.dtype, "device": self.w1.device}
            self._scratch = (inp.tokens, [torch.randn(shape, **kw) for _ in range(3)])
        return self._scratch[1]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("MatmulFloor runs through fwd()/fwd_bwd()")  # never autograd

    def fwd(self, inp: Inputs) -> object:
        a, _, _ = self.hidden_tensors(inp)
        x = inp.x.detach()
        F.linear(x, self.w1)
        if self.w3 is not None:
            F.linear(x, self.w3)
        return F.linear(a, self.w2)

    def fwd_bwd(self, inp: Inputs) -> None:
        a, dh1, dh3 = self.hidden_tensors(inp)
        x, dy = inp.x.detach(), inp.dy
        self.fwd(inp)
        torch.mm(dy, self.w2)  # grad of the hidden activation
        torch.mm(dy.t(), a)  # dW2
        torch.mm(dh1.t(), x)  # dW1
        dx = torch.mm(dh1, self.w1)
        if self.w3 is not None:
            torch.mm(dh3.t(), x)  # dW3
            dx.addmm_(dh3, self.w3)

    def saved_bytes(self, inp: Inputs) -> int | None:
        return None


def _probe(setup: Setup) -> torch.Tensor:
    return torch.empty(2, setup.dim, dtype=setup.dtype, device=setup.device, requires_grad=True)


def _ffn_copy(setup: Setup, backend: str, recompute: str) -> FeedForward:
    m = FeedForward(setup.dim, setup.hidden, setup.variant, backend=backend, recompute=recompute,
                    device=setup.device, dtype=setup.dtype)
    m.load_state_dict(setup.module.state_dict())
    return m


def liger_function(variant: str):
    """Liger-Kernel's autograd function for ``variant``, or :class:`Skip` saying why not."""
    if variant == "geglu":
        raise Skip("Liger's GeGLU uses the tanh approximation of GELU: it is a fair peer "
                   "only for geglu_tanh, not for erf-GELU geglu")
    if variant not in ("swiglu", "geglu_tanh"):
        raise Skip(f"Liger-Kernel has no fused kernel for {variant}")
    try:
        if variant == "swiglu":
            from liger_kernel.ops.swiglu import LigerSiLUMulFunction as fn
        else:
            from liger_kernel.ops.geglu import LigerGELUMulFunction as fn
    except Exception as exc:  # ImportError, or triton failing to load inside it
        raise Skip(f"liger-kernel is not importable ({type(exc).__name__}: {exc})") from None
    return fn


def build_run(name: str, setup: Setup) -> ProviderRun:
    """The run of provider ``name`` on ``setup``, or :class:`Skip` with the reason."""
    check_choice("provider", name, PROVIDERS)
    ref = setup.module
    cuda = setup.device.type == "cuda"
    if name == "reference":
        return ProviderRun(name, ref, list(ref.parameters()), "reference")
    if name == "matmul":
        return MatmulFloor(setup)
    if name.startswith("fused:"):
        m = _ffn_copy(setup, "fused", name.split(":", 1)[1])
        return ProviderRun(name, m, list(m.parameters()), "fused")
    if name == "triton":
        if not cuda:
            raise Skip(TRITON_CPU_REASON)
        reason = unsupported_reason("triton", _probe(setup))
        if reason is not None:
            raise Skip(reason)
        m = _ffn_copy(setup, "triton", "activation")
        return ProviderRun(name, m, list(m.parameters()), "triton")
    if name == "compile":
        compiled = setup.cache.get("compile")
        if compiled is None:
            try:
                compiled = torch.compile(ref)
            except Exception as exc:
                raise Skip(f"torch.compile failed: {type(exc).__name__}: {exc}") from None
            setup.cache["compile"] = compiled
        return ProviderRun(name, compiled, list(ref.parameters()), "inductor")
    # liger
    if not cuda:
        raise Skip("Liger-Kernel runs on CUDA only")
    if get_variant(setup.variant).has_beta and ref.beta_value != 1.0:
        raise Skip("Liger's SiLU-mul has no beta (needs beta=1)")
    fn = liger_function(setup.variant)
    w1, w2, w3 = ref.w1.weight, ref.w2.weight, ref.w3.weight

    def liger_forward(x: torch.Tensor) -> torch.Tensor:
        return F.linear(fn.apply(F.linear(x, w1), F.linear(x, w3)), w2)

    return ProviderRun(name, liger_forward, list(ref.parameters()), "liger")
