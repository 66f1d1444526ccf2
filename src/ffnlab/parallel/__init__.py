"""Tensor parallelism for FeedForward on DTensor (Megatron-LM's FFN split), expert parallelism for MoE.

* :func:`tp_plan` and :func:`tensor_parallel` (:mod:`.tensor`) build and apply the plan;
* :class:`PrepareFeedForward`, :class:`ColwiseWeights` and :class:`RowwiseWeights`
  (:mod:`.style`) are its entries;
* :func:`expert_parallel` (:mod:`.expert`) places whole experts of a ``MoEFeedForward`` on
  ranks and exchanges tokens all-to-all;
* how a sharded FeedForward then runs (local shards, one all-reduce, sequence-parallel
  layouts) is the module's own business: :mod:`ffnlab.local_shards`.

``import ffnlab.parallel`` does not import ``torch.distributed.tensor.parallel``: the styles
are loaded on first use.
"""

from __future__ import annotations

from ..local_shards import check_divisible, check_mesh, is_sharded
from .expert import ExpertParallelExperts, expert_parallel
from .tensor import tensor_parallel, tp_plan

__all__ = [
    "ColwiseWeights",
    "ExpertParallelExperts",
    "PrepareFeedForward",
    "RowwiseWeights",
    "check_divisible",
    "check_mesh",
    "expert_parallel",
    "is_sharded",
    "tensor_parallel",
    "tp_plan",
]

_STYLES = ("PrepareFeedForward", "ColwiseWeights", "RowwiseWeights")


def __getattr__(name: str):
    # PEP 562: defining a ParallelStyle subclass imports torch.distributed.tensor.parallel,
    # slow enough (docs/benchmarks.md) that `import ffnlab` should not pay it.
    if name in _STYLES:
        from . import style

        return getattr(style, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
