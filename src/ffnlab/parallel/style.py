"""The entries of :func:`ffnlab.parallel.tp_plan`: ``ParallelStyle`` subclasses.

Kept apart from :mod:`ffnlab.parallel` because defining a ``ParallelStyle`` subclass imports
``torch.distributed.tensor.parallel``, slow enough that ``import ffnlab`` should not pay it;
:mod:`ffnlab.parallel` imports this module on first use.

A FeedForward reads its projections' weights instead of calling them, so hooks on the
projections would never run. The projection entries therefore only shard the weights and
install no hooks, and the layouts that torch's ``ColwiseParallel``/``RowwiseParallel`` would
install as hooks are given to :class:`PrepareFeedForward`, which records them on the module;
its local-shard forward (:mod:`ffnlab.local_shards`) honours them and refuses hooked
projections.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from ..errors import UsageError
from ..ffn import FeedForward
from ..local_shards import check_divisible, check_layout, check_mesh

__all__ = ["PrepareFeedForward", "ColwiseWeights", "RowwiseWeights"]


class PrepareFeedForward(ParallelStyle):
    """Plan entry for the FeedForward itself (see :func:`ffnlab.parallel.tp_plan`).

    Checks that the mesh is 1-D and the hidden size divides by its size, records the input
    and output layouts on the module (``FeedForward.shard_layouts``) and shards a per-unit
    learnable beta ``[hidden]`` like W1's rows (``Shard(0)``). Weights are left to the
    :class:`ColwiseWeights`/:class:`RowwiseWeights` entries of the same plan.

    Args:
        input_layouts: placement of the input ``[..., dim]`` on the mesh: ``Replicate()``
            (default: every rank holds all of it) or ``Shard(d)``, ``d`` not the last dimension
            (e.g. ``Shard(1)``, the sequence of ``[batch, seq, dim]``: sequence parallelism).
        output_layouts: placement of the output ``[..., out_dim]``, the same choices.
    """

    def __init__(
        self, *, input_layouts: Placement | None = None, output_layouts: Placement | None = None
    ) -> None:
        super().__init__()
        self.input_layouts = _layout(input_layouts, "input_layouts")
        self.output_layouts = _layout(output_layouts, "output_layouts")

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        if not isinstance(module, FeedForward):
            raise TypeError(
                f"PrepareFeedForward applies to ffnlab.FeedForward, got {type(module).__name__}"
            )
        check_divisible(module.hidden_dim, check_mesh(device_mesh), "tensor_parallel")
        module.shard_layouts = (self.input_layouts, self.output_layouts)
        beta = module.beta
        if beta is not None and beta.dim() == 1 and not isinstance(beta, DTensor):
            module.beta = nn.Parameter(
                distribute_tensor(
                    beta.detach(), device_mesh, [Shard(0)], src_data_rank=self.src_data_rank
                )
            )
        return module

    def __repr__(self) -> str:
        return (
            f"PrepareFeedForward(input_layouts={self.input_layouts}, "
            f"output_layouts={self.output_layouts})"
        )


def _layout(layout: Placement | None, name: str) -> Placement:
    if layout is None:
        return Replicate()
    layout = check_layout(layout, name)
    if layout.is_shard() and layout.dim == -1:
        raise UsageError(f"{name}=Shard(-1) shards the features; shard another dimension")
    return layout


def _shard_linear(style: ParallelStyle, module: nn.Module, mesh: DeviceMesh, rows: bool) -> None:
    if not isinstance(module, nn.Linear):
        raise TypeError(
            f"{type(style).__name__} applies to an nn.Linear, got {type(module).__name__}"
        )
    weight = Shard(0) if rows else Shard(1)
    bias = Shard(0) if rows else Replicate()
    for name, placement in (("weight", weight), ("bias", bias)):
        p = module._parameters.get(name)
        if p is None or isinstance(p, DTensor):
            continue
        shard = distribute_tensor(p.detach(), mesh, [placement], src_data_rank=style.src_data_rank)
        module.register_parameter(name, nn.Parameter(shard, requires_grad=p.requires_grad))


class ColwiseWeights(ColwiseParallel):
    """W1/W3 entry: shards an ``nn.Linear``'s weight ``[hidden, dim]`` and bias ``[hidden]`` by
    hidden rows (``Shard(0)``), as ``ColwiseParallel`` does, and installs no hooks (layouts
    belong to :class:`PrepareFeedForward`)."""

    def __init__(self) -> None:
        super().__init__()

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _shard_linear(self, module, device_mesh, rows=True)
        return module


class RowwiseWeights(RowwiseParallel):
    """W2 entry: shards an ``nn.Linear``'s weight ``[out, hidden]`` by hidden columns
    (``Shard(1)``) and replicates its bias ``[out]``, as ``RowwiseParallel`` does, and installs
    no hooks (layouts belong to :class:`PrepareFeedForward`)."""

    def __init__(self) -> None:
        super().__init__()

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        _shard_linear(self, module, device_mesh, rows=False)
        return module
