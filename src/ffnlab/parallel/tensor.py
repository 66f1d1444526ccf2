"""The tensor-parallel plan of a FeedForward, and applying it to one FeedForward.

Over a 1-D device mesh of ``n`` ranks, W1 and W3 ``[hidden, dim]`` are sharded by rows
(column-wise in the ``x @ W1ᵀ`` view), W2 ``[out, hidden]`` by columns; the FeedForward then
runs on its local shards with one all-reduce forward and one backward (or, with
sequence-parallel layouts, an all-gather and a reduce-scatter): see :mod:`ffnlab.local_shards`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from ..errors import UsageError
from ..ffn import FeedForward
from ..local_shards import check_divisible, check_mesh, is_sharded

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Placement

__all__ = ["tp_plan", "tensor_parallel"]


def tp_plan(
    prefix: str = "",
    *,
    input_layouts: Placement | None = None,
    output_layouts: Placement | None = None,
) -> dict:
    """A ``parallelize_module`` plan for the FeedForward(s) at ``prefix``.

    ``prefix`` is the FeedForward's path in the model (``""`` for the FFN itself); it may hold
    ``fnmatch`` wildcards, which ``parallelize_module`` expands per path component, e.g.
    ``tp_plan("layers.*.ffn")``. ``input_layouts``/``output_layouts``: the placement of the
    FFN's input and output, ``Replicate()`` (default) or ``Shard(d)`` along a dimension other
    than the features, e.g. ``Shard(1)`` for the sequence of ``[batch, seq, dim]``
    (sequence parallelism). The plan::

        {prefix: PrepareFeedForward(input_layouts, output_layouts),  # checks, records layouts,
                                                                     # shards a per-unit beta
         f"{prefix}.w[13]": ColwiseWeights(),  # W1 and, when gated, W3 (a glob: no warning
                                               # for plain variants, which have no w3)
         f"{prefix}.w2": RowwiseWeights()}

    Use: ``parallelize_module(model, mesh, tp_plan("layers.*.ffn"))``; merge it with the
    plan of the rest of the model (attention ...) as usual.
    """
    from .style import ColwiseWeights, PrepareFeedForward, RowwiseWeights

    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    dot = f"{prefix}." if prefix else ""
    return {
        prefix: PrepareFeedForward(input_layouts=input_layouts, output_layouts=output_layouts),
        f"{dot}w[13]": ColwiseWeights(),
        f"{dot}w2": RowwiseWeights(),
    }


def tensor_parallel(
    ffn: nn.Module,
    device_mesh: DeviceMesh,
    *,
    input_layouts: Placement | None = None,
    output_layouts: Placement | None = None,
) -> nn.Module:
    """Shard one :class:`ffnlab.FeedForward` over a 1-D ``device_mesh``, in place; returns it.

    W1/W3 (and their biases, and a per-unit learnable beta) are split by hidden rows, W2 by
    hidden columns; b2 and a scalar beta stay replicated. By default the FFN then takes the
    replicated input ``[..., dim]`` on every rank and returns the replicated output
    ``[..., out_dim]``; ``input_layouts``/``output_layouts`` as in :func:`tp_plan`. Raises a
    UsageError when the hidden size does not divide by the mesh size or the FFN is already
    sharded.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    if not isinstance(ffn, FeedForward):
        raise TypeError(f"tensor_parallel expects an ffnlab.FeedForward, got {type(ffn).__name__}")
    n = check_mesh(device_mesh)
    check_divisible(ffn.hidden_dim, n, "tensor_parallel")
    if is_sharded(ffn):
        raise UsageError("this FeedForward is already sharded (its weights are DTensors)")
    plan = tp_plan(input_layouts=input_layouts, output_layouts=output_layouts)
    return parallelize_module(ffn, device_mesh, plan)
