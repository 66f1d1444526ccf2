"""Check a replacement against the module it replaces, on a probe, before it is made.

:class:`Probe` runs a module and a candidate replacement on a float64 copy whose
parameters are redrawn at random (seeded), so the check tests the *function of the weights*,
not one set of weights that might hide a wrong role (zero-initialised or tied projections): an
input ``[2, 3, dim]``, the output and the gradients of the input and of every parameter. When
the module has an active dropout, a seeded train-mode forward is compared too (same random
numbers in the same order). :func:`verified_spec` returns the first candidate of
:func:`ffnlab.interop.recognise.candidates` whose difference is within :data:`TOLERANCE`.

The copy is made once per call, in float64 on the module's device: for one LLaMA-7B MLP
(135 M parameters) that is 1.1 GB, once per distinct MLP shape (:mod:`.hf` caches results).
The check uses the reference backend: the other backends are tested against it elsewhere.

A distributed module (FSDP2's or tensor/expert parallelism's DTensor parameters, transformers'
parallel forwards installed on its projections) is probed through :func:`plain_copy`: the
same module with plain parameters of the full (global) shape and its own forwards, which the
redrawn weights make a probe of the function, the layout aside. How the sharded weights then
run is checked on the ranks themselves (:mod:`ffnlab.interop.sharded`).
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable

import torch
from torch import nn

from .recognise import MLPSpec, candidates, forward_inputs, projection_shape

__all__ = [
    "TOLERANCE",
    "Probe",
    "plain_copy",
    "verified_spec",
    "randomise_parameters",
    "relative_difference",
]

#: Largest accepted difference, relative to the largest magnitude of the compared tensor, in
#: float64 (the float64 reference and transformers' modules agree to ~1e-16 on the probes).
TOLERANCE = 1e-10
#: Accepted in the float32 check, made only for candidates within :data:`NEAR` in float64.
TOLERANCE_FLOAT32 = 1e-5
NEAR = 1e-5


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` in which every DTensor parameter (FSDP2's shards, a tensor- or
    expert-parallel layout) is a plain, uninitialised parameter of the DTensor's full shape on
    the local device, and every forward that transformers' tensor/expert parallelism installed
    on a submodule (an instance ``forward`` on a module it marks ``_is_hooked``) is dropped, as
    are the forward hooks of a module that held DTensors (torch's parallel styles) or that
    transformers' hook-based tensor parallelism marks ``_hf_tp_plan`` (its parameters stay the
    local slices they are), so the copy runs on one process; other hooks are kept. Its values are meant to be redrawn
    (:func:`randomise_parameters`). No collective runs: each rank copies alone."""
    dtensor = sys.modules.get("torch.distributed.tensor")
    memo: dict[int, object] = {}
    if dtensor is not None:
        for t in [*module.parameters(), *module.buffers()]:
            if isinstance(t, dtensor.DTensor):
                local = t.to_local()
                plain = torch.empty(t.shape, dtype=t.dtype, device=local.device)
                memo[id(t)] = (nn.Parameter(plain, requires_grad=t.requires_grad)
                               if isinstance(t, nn.Parameter) else plain)  # fmt: skip
    # before deepcopy, which enters every object it copies into memo: after it, these ids
    # would name every parameter of the copy, and every hook would be dropped
    plain = {id(t) for t in memo.values()}
    twin = copy.deepcopy(module, memo)
    for m in twin.modules():
        if getattr(m, "_is_hooked", False):
            m.__dict__.pop("forward", None)
        hook_layout = isinstance(m.__dict__.get("_hf_tp_plan"), str)
        if hook_layout or any(id(p) in plain for p in m.parameters(recurse=False)):
            # torch's parallel styles (ColwiseParallel ...) and transformers' hook-based
            # tensor parallelism (_hf_tp_plan, on plain local shards) install their layouts,
            # collectives included, as hooks
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
    return twin


def randomise_parameters(module: nn.Module, seed: int) -> None:
    """Redraw every float parameter: ``N(0, 1/in)`` for matrices, ``N(1, 0.25)`` for norm
    weights, ``N(0, 0.25)`` otherwise (biases, learnable activation parameters)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for owner in module.modules():
            is_norm = "norm" in type(owner).__name__.lower()
            for p in owner.parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                r = torch.randn(p.shape, generator=g, dtype=torch.float64)
                if p.dim() == 2:
                    r = r / math.sqrt(p.shape[-1])
                else:
                    r = r * 0.5 + (1.0 if is_norm else 0.0)
                p.copy_(r.to(p.device))


def relative_difference(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """``max |a - b|`` over the larger of ``max |a|``, ``max |b|`` (0 when both are None, inf
    when one is, or when the shapes differ)."""
    if a is None or b is None:
        return 0.0 if a is None and b is None else math.inf
    if a.shape != b.shape:
        return math.inf
    scale = max(a.abs().max().item(), b.abs().max().item(), 1e-30)
    return (a - b).abs().max().item() / scale


def _has_dropout(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules()) or any(
        "dropout" in n and isinstance(v, float) and v > 0 for n, v in vars(module).items()
    )


class Probe:
    """A float64, randomised copy of ``module`` with an input ``[2, 3, dim]`` and its reference
    output and gradients (input and every parameter), computed once for all candidates."""

    def __init__(self, module: nn.Module, *, dim: int, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> None:  # fmt: skip
        self.module = plain_copy(module).to(dtype).eval()
        randomise_parameters(self.module, seed)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        device = self.params[0].device if self.params else torch.device("cpu")
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        self.seed = seed
        self.x = torch.randn(2, 3, dim, generator=g, dtype=torch.float64).to(device, dtype)
        self.x.requires_grad_()
        self.args = [self.x]
        if forward_inputs(module) == 2:
            self.args.append(
                torch.randn(2, 3, dim, generator=g, dtype=torch.float64).to(device, dtype)
            )
        self.dropout = _has_dropout(self.module)
        y, _ = self._run(self.module, None)
        self.cot = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device, dtype)
        self.y, self.grads = self._run(self.module, self.cot)
        self.y_train = self._train(self.module) if self.dropout else None

    def _run(self, m: nn.Module, cot: torch.Tensor | None):
        # enable_grad: patch_hf may be called under torch.no_grad(), the probe needs gradients
        with (
            torch.random.fork_rng(devices=[self.x.device] if self.x.is_cuda else []),
            torch.enable_grad(),
        ):
            torch.manual_seed(self.seed)
            y = m(*self.args)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"returns {type(y).__name__}, not a tensor")
        if cot is None:
            return y, []
        with torch.enable_grad():
            return y, torch.autograd.grad(y, [self.x, *self.params], cot, allow_unused=True)

    def _train(self, m: nn.Module) -> torch.Tensor:
        m.train()
        try:
            with torch.no_grad():
                return self._run(m, None)[0]
        finally:
            m.eval()

    def difference(self, replacement: nn.Module) -> float:
        """Largest relative difference of output and gradients (``inf`` if it fails)."""
        try:
            replacement.eval()
            y, grads = self._run(replacement, self.cot)
            worst = max([relative_difference(self.y, y)]
                        + [relative_difference(a, b)
                           for a, b in zip(self.grads, grads, strict=True)])
            if self.dropout:
                worst = max(worst, relative_difference(self.y_train, self._train(replacement)))
        except Exception:  # noqa: BLE001 - any failure of a candidate means "does not match"
            return math.inf
        return worst


def verified_spec(
    module: nn.Module, build: Callable[[nn.Module, MLPSpec], nn.Module]
) -> tuple[MLPSpec | None, float]:
    """``(spec, difference)`` of the first candidate within :data:`TOLERANCE`, or ``(None,
    smallest difference measured)`` (``inf`` when no candidate ran, or there was none).

    ``build(module, spec)`` makes a replacement; it is called on the probe's copy."""
    best, near = math.inf, []
    probes: dict[int, Probe | None] = {}
    for spec in candidates(module):
        dim = projection_shape(module._modules[spec.down])[1]
        if dim not in probes:
            probes[dim] = _probe(module, dim, torch.float64)
        if probes[dim] is None:
            continue
        diff = probes[dim].difference(build(probes[dim].module, spec))
        if diff <= TOLERANCE:
            return spec, diff
        if diff < NEAR:
            near.append((diff, spec))
        best = min(best, diff)
    # A forward that rounds to float32 on purpose (BeamMLP upcasts to float32 and back) cannot
    # match in float64: the closest candidates are checked again in float32.
    for _, spec in sorted(near, key=lambda t: t[0]):
        dim = projection_shape(module._modules[spec.down])[1]
        probe = _probe(module, dim, torch.float32)
        diff = math.inf if probe is None else probe.difference(build(probe.module, spec))
        if diff <= TOLERANCE_FLOAT32:
            return spec, diff
    return None, best


def _probe(module: nn.Module, dim: int, dtype: torch.dtype) -> Probe | None:
    try:
        return Probe(module, dim=dim, dtype=dtype)
    except Exception:  # noqa: BLE001 - the module does not take inputs of this width
        return None
