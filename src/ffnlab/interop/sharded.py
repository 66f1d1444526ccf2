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
* **Hook-based tensor parallelism** (transformers' trees around 5.15: the weights are plain
  local ``nn.Parameter`` slices, no DTensor, and each style's communication is a forward
  (pre-)hook on the module it names, marked ``_hf_tp_plan``, :func:`tp_plans`): an MLP is
  checked on the ranks as above (its wrapper calls the hooked projections). Qwen3-MoE's experts
  (``"moe_tp_experts"``: ``gate_up_proj`` ``"packed_colwise"``, ``down_proj`` ``"rowwise"``, the
  experts' partial output all-reduced by a hook on the experts module) are treated as expert
  parallelism below: the block and the hooks stay, the experts implementation may become
  ``"ffnlab"`` after the check on the ranks. A block replaced whole would skip those hooks
  (each rank would return its partial sum), so any other block holding such a style is left
  (:func:`declined_layout`).
* **Expert parallelism** (transformers' ``ep_plan``: experts sharded ``Shard(0)`` over the EP
  mesh, their ``forward`` replaced by its token dispatch): the block stays, router and
  dispatch included. The dispatch calls the experts' own forward on this rank's experts
  (local tensors, local expert ids; at inference on a shared batch, other ranks' routes as id
  ``num_experts`` with weight 0, then one all-reduce; else an all-to-all there and back), and
  that forward runs the experts implementation on the model's config (transformers'
  ``ExpertsInterface``). Where that choice is transformers' default (``grouped_mm``/``eager``),
  it becomes ``"ffnlab"`` (:func:`ffnlab.register_hf`) once the block's output and gradients
  with it equal the previous choice's on the ranks (:func:`expert_parallel_reason`; with and
  without gradients, which take different dispatches), for every expert-parallel block reading
  that config (the choice is the config's, shared by the blocks);
  :func:`give_back_expert_parallel` puts the previous choice back. ffnlab's own expert
  parallelism is :func:`ffnlab.parallel.expert_parallel`.

The checks that run collectives are called by every rank in the same order (``patch_hf`` walks
the same model on each rank), as ``from_pretrained`` with a ``tp_plan`` is.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import nn

from ..errors import UsageError
from ..local_shards import tensor_parallel_mesh
from .hf_experts import EXPERTS_NAME, experts_plan, register_hf
from .hf_moe import experts_choice
from .recognise import projection_shape
from .verify import relative_difference

__all__ = [
    "ExpertParallelBlocks",
    "declined_layout",
    "expert_parallel_difference",
    "expert_parallel_experts",
    "expert_parallel_reason",
    "give_back_expert_parallel",
    "is_switched",
    "layout_name",
    "placements",
    "sharded_difference",
    "sharded_reason",
    "tp_plans",
]

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


def tp_plans(module: nn.Module) -> dict[str, str]:
    """``{submodule path: style}`` of the submodules of ``module`` (``""`` itself) that
    transformers' hook-based tensor parallelism gave a style: the layout that shards the weights
    as plain local ``nn.Parameter`` slices (no DTensor) and installs the style's communication
    as forward (pre-)hooks on the module, marking it ``_hf_tp_plan`` (transformers' trees around
    5.15: ``"moe_tp_experts"`` on Qwen3-MoE's experts all-reduces their partial output,
    ``"packed_colwise"``/``"rowwise"`` slice ``gate_up_proj``/``down_proj``)."""
    return {name: plan for name, m in module.named_modules()
            if isinstance(plan := m.__dict__.get("_hf_tp_plan"), str)}  # fmt: skip


def _has_parallel_forward(module: nn.Module) -> bool:
    """Whether a submodule's call is wrapped by a parallel layout: transformers' installed
    ``forward`` (marked ``_is_hooked``) or a forward (pre-)hook, on a module holding DTensors;
    or a style of transformers' hook-based tensor parallelism on plain local shards
    (:func:`tp_plans`), which no DTensor reveals."""
    if tp_plans(module):
        return True
    dtensor = _dtensor_type()
    if dtensor is None:
        return False
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
    """The placements of its DTensor parameters, or the hook-based styles of its submodules
    and the shapes of the local shards their parameters hold."""
    parts = [f"{n}: {p}" for n, p in placements(module).items()]
    for path, plan in tp_plans(module).items():
        owner = module.get_submodule(path)
        shards = ", ".join(f"{(path + '.' if path else '') + n} {list(p.shape)}"
                           for n, p in owner.named_parameters(recurse=False))  # fmt: skip
        where = path or "the module"
        parts.append(f"{where}: transformers' {plan!r} hooks" + (f" on local shards {shards}"
                                                                  if shards else ""))  # fmt: skip
    return "; ".join(parts)


def declined_layout(module: nn.Module, *, moe: bool = False) -> str | None:
    """Why ``module`` (an MLP, or a mixture-of-experts block when ``moe``) is left unpatched
    because of how it is distributed, naming the parameters and their placements; None when
    its layout does not decide (unsharded, or FSDP2 shards gathered by an enclosing unit).
    Runs no collective."""
    if moe and tp_plans(module):  # plain local shards: no DTensor says so
        return ("it is distributed by transformers' hook-based parallel layout ("
                f"{_describe(module)}), which ffnlab's MoE does not run: the block stays with "
                "transformers' forward and its hooks, which run the experts implementation the "
                "model was given (experts_implementation=)")  # fmt: skip
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
        y = y[0] if isinstance(y, tuple) else y  # (output, router logits) blocks
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
    if not _has_parallel_forward(original):
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


# --- expert parallelism: the experts implementation the dispatch runs -----------------------

#: Where an expert-parallel experts module keeps the implementation it ran before ``patch_hf``
#: made it ``"ffnlab"`` (:func:`give_back_expert_parallel` puts it back).
_REPLACED_ATTR = "_ffnlab_replaced_experts_choice"


def _experts_layout(child: nn.Module) -> str | None:
    """How transformers distributes an experts module: ``"expert-parallel"`` (its
    ``_is_expert_parallel``, set by the ``grouped_gemm`` sharding), ``"distributed by
    transformers' parallel hooks"`` (a hook-based style on the module itself, :func:`tp_plans`:
    ``"moe_tp_experts"``'s all-reduce of the partial output over local ``gate_up_proj`` and
    ``down_proj`` slices), or None."""
    if getattr(child, "_is_expert_parallel", False) is True:
        return "expert-parallel"
    return "distributed by transformers' parallel hooks" if "" in tp_plans(child) else None


def expert_parallel_experts(block: nn.Module) -> nn.Module | None:
    """The experts child of ``block`` that transformers' expert or tensor parallelism
    distributes (:func:`_experts_layout`) and that runs through the experts interface
    (:func:`~.hf_moe.experts_choice`), or None. Its block stays (router, dispatch and the
    layout's hooks); only the experts implementation it calls may change, after a check on the
    ranks (:func:`expert_parallel_reason`)."""
    return next((c for c in block.children() if _experts_layout(c) is not None
                 and experts_choice(c) is not None), None)  # fmt: skip


def layout_name(experts: nn.Module) -> str:
    """What distributes ``experts``: ``"expert parallelism"`` or ``"transformers' parallel
    hooks"``."""
    layout = _experts_layout(experts)
    hooks = layout not in (None, "expert-parallel")
    return "transformers' parallel hooks" if hooks else "expert parallelism"


def is_switched(experts: nn.Module) -> bool:
    """Whether ``patch_hf`` made ``experts`` (expert-parallel) run ``"ffnlab"``."""
    return _REPLACED_ATTR in experts.__dict__


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, _dtensor_type()) else t


def _output(y):
    return y[0] if isinstance(y, tuple) else y


def expert_parallel_difference(block: nn.Module, experts: nn.Module, previous: str) -> float:
    """The largest relative difference between ``block`` run with its experts' config set to
    ``previous`` and to ``"ffnlab"``: output, input gradient and each parameter's local gradient
    (the dispatch's all-to-all path), and the output under ``no_grad`` (its all-reduce path on a
    shared batch, with other ranks' routes as placeholder ids), on an input ``[2, 8, dim]`` drawn
    alike on every rank, taken as the maximum over all ranks (one all-reduce); ``inf`` where
    either fails. The config's choice is left as found; gradients are returned, not accumulated.
    """
    import torch.distributed as dist

    config = experts.config
    found = config._experts_implementation
    down = experts.down_proj  # [E, dim, I], or [E, I, dim] transposed: dim is never sharded
    shape = (2, 8, down.shape[2] if experts.is_transposed else down.shape[1])
    dtype, device = _local(down).dtype, down.device
    params = [p for p in block.parameters() if p.requires_grad]

    def outputs(name: str) -> list[torch.Tensor]:
        config._experts_implementation = name
        x = _seeded(shape, dtype, device, seed=1).requires_grad_()
        got = _run(block, x, _seeded(shape, dtype, device, seed=2), params)
        with torch.no_grad():
            got.append(_local(_output(block(x.detach()))))
        return got

    try:
        ref, got = outputs(previous), outputs(EXPERTS_NAME)
        diff = max(relative_difference(a, b) for a, b in zip(ref, got, strict=True))
    except Exception:  # noqa: BLE001 - a path that fails on the ranks does not match
        diff = math.inf
    finally:
        config._experts_implementation = found
    worst = torch.tensor([diff if not math.isnan(diff) else math.inf], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return worst.item()


def expert_parallel_reason(block: nn.Module, experts: nn.Module, previous: str) -> str | None:
    """None when ``block``'s expert-parallel ``experts`` may run ``"ffnlab"`` instead of
    ``previous`` (:func:`expert_parallel_difference` within :data:`TOLERANCES`), else why not,
    with the placements. Registers ``"ffnlab"`` (:func:`ffnlab.register_hf`). Every rank takes
    the same branch (the same model, no rank-dependent check before the collective)."""
    where = f"its experts are {_experts_layout(experts) or 'expert-parallel'} ({_describe(block)})"
    try:
        register_hf()
        experts_plan(experts)  # what ffnlab cannot compute is named without running anything
    except UsageError as exc:
        return f"{where} and stay with {previous!r}: {exc}"
    tol = TOLERANCES.get(_local(experts.down_proj).dtype, TOLERANCE_HALF)
    diff = expert_parallel_difference(block, experts, previous)
    if diff <= tol:
        return None
    how = ("the block fails on a rank (an error, or a non-finite value)" if math.isinf(diff) else
           f"the block's output or gradients differ on the ranks by {diff:.2g} > {tol:g}")  # fmt: skip
    return (f"{where} and stay with {previous!r}: with experts_implementation={EXPERTS_NAME!r} "
            f"under transformers' dispatch {how}")  # fmt: skip


class ExpertParallelBlocks:
    """The expert-parallel blocks ``patch_hf`` meets, grouped by the config whose experts choice
    they read: a config is switched to ``"ffnlab"`` only when every such block verifies, since
    transformers reads the choice from the config each block shares."""

    def __init__(self) -> None:
        # id(config) -> (config, the choice found first, [(path, class, experts, reason)])
        self.groups: dict[int, tuple[object, str, list[tuple]]] = {}

    def add(self, block: nn.Module, experts: nn.Module, path: str) -> None:
        """Verify ``block`` (collectives: every rank calls it in the same order)."""
        config = experts.config
        entry = (config, experts_choice(experts), [])
        _, previous, items = self.groups.setdefault(id(config), entry)
        items.append((path, type(block).__name__, experts,
                      expert_parallel_reason(block, experts, previous)))  # fmt: skip

    def finish(self) -> tuple[int, list[str]]:
        """Switch the configs whose blocks all verified; ``(blocks switched, left)`` with
        ``left`` as ``"path (Class: reason)"``."""
        count, left = 0, []
        for config, previous, items in self.groups.values():
            failed = next(((p, r) for p, _, _, r in items if r is not None), None)
            if failed is None:
                config._experts_implementation = EXPERTS_NAME
                for _, _, experts, _ in items:
                    experts.__dict__[_REPLACED_ATTR] = previous
                count += len(items)
                continue
            for path, cls, _, reason in items:
                left.append(f"{path} ({cls}: " + (reason or (
                    f"its distributed experts verify with {EXPERTS_NAME!r}, but share "
                    f"their config's experts choice with {failed[0]}, which does not: all stay "
                    f"with {previous!r}")) + ")")  # fmt: skip
        return count, left


def give_back_expert_parallel(model: nn.Module) -> int:
    """Put back the experts implementation ``patch_hf`` replaced by ``"ffnlab"`` on the
    expert-parallel blocks of ``model`` (where ``"ffnlab"`` is still the choice); return how
    many blocks were given back."""
    count = 0
    for m in model.modules():
        previous = m.__dict__.pop(_REPLACED_ATTR, None)
        if previous is None:
            continue
        if experts_choice(m) == EXPERTS_NAME:
            m.config._experts_implementation = previous
        count += 1
    return count
