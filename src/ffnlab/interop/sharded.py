"""Distributed transformers modules: what :func:`ffnlab.patch_hf` runs on sharded weights.

Three ways of distributing a model meet ``patch_hf``:

* **FSDP2** (``torch.distributed.fsdp.fully_shard`` on the decoder layers or the whole model,
  by hand or through transformers' ``DistributedConfig(fsdp_size=...)``): the parameters are
  DTensor shards between forwards and FSDP2 all-gathers them in the pre-forward hook of the
  module it wrapped. A wrapper that shares the original ``nn.Parameter`` slots (it registers
  the same projection modules) then reads the gathered weights, so an MLP inside a wrapped
  layer is patched like an unsharded one, before or after ``fully_shard``. Only an MLP that is
  itself an FSDP2 unit (``fully_shard(layer.mlp)`` before patching) is declined
  (:func:`declined_layout`): its replacement would not carry FSDP2's hooks.
* **Tensor parallelism** (transformers' ``tp_plan``: ``"colwise"`` W1/W3, ``"rowwise"`` W2,
  each projection's ``forward`` replaced by transformers' layout transforms; or torch's
  ``ColwiseParallel``/``RowwiseParallel`` hooks): with the Megatron-LM split
  (:func:`ffnlab.local_shards.tensor_parallel_mesh`) the wrapper runs ffnlab's fused op on the
  local shards and one all-reduce (``HFFeedForward.tensor_parallel``); any other layout runs
  through the projection modules, so the plan's own transforms run. Either is checked on the
  ranks before the module is replaced (:func:`sharded_difference`), else the module is left
  with the placements named.
* **Expert parallelism** (transformers' ``ep_plan``: experts sharded ``Shard(0)`` over the EP
  mesh, their ``forward`` replaced by its token dispatch): declined with the placements named.
  The dispatch calls the experts' own forward on this rank's experts, which runs the experts
  implementation the model was given (transformers' ``ExpertsInterface``); ffnlab's own expert
  parallelism is :func:`ffnlab.parallel.expert_parallel`.

The checks that run collectives are called by every rank in the same order (``patch_hf`` walks
the same model on each rank), as ``from_pretrained`` with a ``tp_plan`` is.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from ..local_shards import tensor_parallel_mesh
from .recognise import projection_shape
from .verify import relative_difference

__all__ = ["declined_layout", "placements", "sharded_difference", "sharded_reason"]

#: Largest accepted difference on the ranks, relative, by the weights' dtype (the local-shard
#: sum runs in another order than the projections' own all-reduce: ~1e-16 in float64 and
#: ~1e-7 in float32 measured on the tests' tiny models).
TOLERANCES = {torch.float64: 1e-10, torch.float32: 1e-5}
TOLERANCE_HALF = 1e-2


def _dtensor_type():
    mod = sys.modules.get("torch.distributed.tensor")
    return None if mod is None else mod.DTensor


def placements(module: nn.Module) -> dict[str, str]:
    """``{parameter path: "Shard(dim=0) over 2 ranks"}`` for every DTensor parameter of
    ``module`` (empty when none is)."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return {}
    return {
        name: f"{', '.join(map(repr, p.placements))} over {p.device_mesh.size()} ranks"
        for name, p in module.named_parameters()
        if isinstance(p, dtensor)
    }


def _has_parallel_forward(module: nn.Module) -> bool:
    """Whether a submodule's call is wrapped by a parallel layout: transformers' installed
    ``forward`` (marked ``_is_hooked``) or a forward (pre-)hook, on a module holding DTensors."""
    dtensor = _dtensor_type()
    for m in module.modules():
        owns = any(isinstance(p, dtensor) for p in m.parameters(recurse=False))
        hooked = getattr(m, "_is_hooked", False) or m._forward_hooks or m._forward_pre_hooks
        if owns and hooked:
            return True
    return False


def _is_fsdp_unit(module: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def _describe(module: nn.Module) -> str:
    return "; ".join(f"{n}: {p}" for n, p in placements(module).items())


def declined_layout(module: nn.Module, *, moe: bool = False) -> str | None:
    """Why ``module`` (an MLP, or a mixture-of-experts block when ``moe``) is left unpatched
    because of how it is distributed, naming the parameters and their placements; None when
    its layout does not decide (unsharded, or FSDP2 shards gathered by an enclosing unit).
    Runs no collective."""
    if _dtensor_type() is None:
        return None
    if _is_fsdp_unit(module):
        return ("fully_shard was applied to this module itself, whose FSDP2 hooks a "
                "replacement would not carry: apply fully_shard to the layers holding it (or "
                f"after patch_hf) [{_describe(module)}]")  # fmt: skip
    if moe and _has_parallel_forward(module):
        return ("its experts are expert- or tensor-parallel (transformers' parallel forward "
                f"on sharded weights: {_describe(module)}), which ffnlab's MoE does not run: the "
                "block stays with transformers' token dispatch, which runs the experts "
                "implementation the model was given (experts_implementation=)")  # fmt: skip
    return None


def _seeded(shape: tuple[int, ...], dtype: torch.dtype, device, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)  # the same on every rank
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)


def _run(module: nn.Module, x: torch.Tensor, cot: torch.Tensor, params: list[torch.Tensor]):
    dtensor = _dtensor_type()
    with torch.enable_grad():
        y = module(x)
        grads = torch.autograd.grad(y, [x, *params], cot, allow_unused=True)
    y = y.to_local() if isinstance(y, dtensor) else y
    return [y, *(g.to_local() if isinstance(g, dtensor) else g for g in grads)]


def sharded_difference(original: nn.Module, wrapper: nn.Module, dim: int) -> float:
    """The largest relative difference between ``original`` and ``wrapper`` (output, input
    gradient, each parameter's local gradient) on an input ``[2, 3, dim]`` drawn alike on every
    rank, with the real (sharded) weights, taken as the maximum over all ranks (one
    all-reduce); ``inf`` where either fails. Gradients are returned, not accumulated."""
    import torch.distributed as dist

    params = [p for p in original.parameters() if p.requires_grad]
    p0 = next(original.parameters())
    local = p0.to_local() if isinstance(p0, _dtensor_type()) else p0
    try:
        x = _seeded((2, 3, dim), local.dtype, local.device, seed=1).requires_grad_()
        ref = _run(original, x, _seeded((2, 3, dim), local.dtype, local.device, 2), params)
        got = _run(wrapper, x, _seeded((2, 3, dim), local.dtype, local.device, 2), params)
        diff = max(relative_difference(a, b) for a, b in zip(ref, got, strict=True))
    except Exception:  # noqa: BLE001 - a path that fails on the ranks does not match
        diff = math.inf
    worst = torch.tensor([diff if not math.isnan(diff) else math.inf], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def sharded_reason(original: nn.Module, wrapper: nn.Module) -> str | None:
    """None when ``wrapper`` may replace ``original`` on its sharded weights (then
    ``wrapper.tensor_parallel`` says whether the fused op runs on the local shards), else why
    not, with the placements. Modules without a parallel forward on DTensor weights (unsharded,
    or FSDP2 shards gathered by an enclosing unit) return None at once, without a collective.
    """
    if _dtensor_type() is None or not _has_parallel_forward(original):
        return None
    dim = projection_shape(wrapper._modules[wrapper.spec.down])[1]
    try:  # a packed weight is sliced, which a DTensor may refuse or gather: not local shards
        weights = wrapper.ffn_weights() if not wrapper.spec.packed else None
    except Exception:  # noqa: BLE001 - then the projections are called
        weights = None
    tol = TOLERANCES.get(next(original.parameters()).dtype, TOLERANCE_HALF)
    diff = math.inf
    if weights is not None and tensor_parallel_mesh(*weights) is not None:
        wrapper.tensor_parallel = True
        diff = sharded_difference(original, wrapper, dim)
        if diff <= tol:
            return None
    wrapper.tensor_parallel = False  # through the projection modules and their layouts
    diff = min(diff, sharded_difference(original, wrapper, dim))
    if diff <= tol:
        return None
    return (f"its sharded weights ({_describe(original)}) run neither as local shards nor "
            f"through its projections within {tol:g}: relative difference {diff:.2g}")  # fmt: skip
