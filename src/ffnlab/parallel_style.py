"""``PrepareFeedForward``: the tensor-parallel plan entry for a FeedForward module itself.

Kept apart from :mod:`ffnlab.parallel` because defining a ``ParallelStyle`` subclass imports
``torch.distributed.tensor.parallel`` (about 1.5 s measured on a 2-core CPU machine), which
``import ffnlab`` should not pay; :mod:`ffnlab.parallel` imports this module on first use.
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ParallelStyle

__all__ = ["PrepareFeedForward"]


class PrepareFeedForward(ParallelStyle):
    """Plan entry for the FeedForward itself (see :func:`ffnlab.parallel.tp_plan`): checks
    that the mesh is 1-D and the hidden size divides by its size, and shards a per-unit
    learnable beta ``[hidden]`` like W1's rows (``Shard(0)``). Weights are left to the
    ``ColwiseParallel``/``RowwiseParallel`` entries of the same plan."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        from .ffn import FeedForward
        from .parallel import check_divisible, check_mesh

        if not isinstance(module, FeedForward):
            raise TypeError(
                f"PrepareFeedForward applies to ffnlab.FeedForward, got {type(module).__name__}"
            )
        check_divisible(module.hidden_dim, check_mesh(device_mesh), "tensor_parallel")
        beta = module.beta
        if beta is not None and beta.dim() == 1 and not isinstance(beta, DTensor):
            module.beta = nn.Parameter(
                distribute_tensor(
                    beta.detach(), device_mesh, [Shard(0)], src_data_rank=self.src_data_rank
                )
            )
        return module
