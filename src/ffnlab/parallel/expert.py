"""Expert parallelism: whole experts of a ``MoEFeedForward`` on each rank, tokens exchanged all-to-all.

``expert_parallel(moe, mesh)`` keeps experts ``r·L … (r+1)·L − 1`` (``L = E / R``) on rank ``r``
of a 1-D mesh of ``R`` ranks and replaces ``moe.experts`` by an :class:`ExpertParallelExperts`
holding only those (``experts.w1`` is then ``[L, hidden, dim]``). The router, the shared experts
and their gate stay replicated. Each rank routes its own tokens; a forward then

1. sorts its (token, expert) pairs by expert: they are contiguous per destination rank;
2. exchanges the per-expert counts (one ``all_to_all_single`` of ``R·L`` integers), then the
   rows (``all_to_all_single`` with uneven splits);
3. orders the received rows by local expert and runs them as grouped products
   (:func:`ffnlab.ops.grouped_function.grouped_feed_forward`);
4. sends the outputs back (the inverse exchange) and sums them into token order with the gates.

The exchanges are differentiable (the backward of an all-to-all is the all-to-all with the
splits swapped), so each rank's expert gradients sum over every rank's tokens: outputs and
gradients equal the unsharded module's on the concatenated batch, with the replicated
parameters' gradients summed over ranks (what data parallelism's all-reduce does).
gloo on the CPU supports ``all_to_all_single`` with uneven splits (checked on torch 2.13);
its list form ``all_to_all`` needs equal sizes, so it is not used. The counts exchange needs a
host synchronisation, so an expert-parallel forward is not one ``torch.compile`` graph.

``moe.tokens_per_expert`` and ``moe.aux_losses`` then describe this rank's tokens: sum the counts
over ranks (``dist.all_reduce``) and pass them to ``moe.update_bias(rate, counts=...)`` so that
every replica's router bias moves alike.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import UsageError
from ..experts import Experts
from ..moe import MoEFeedForward
from ..ops.grouped import permute_tokens, sort_by_expert, unpermute_tokens
from ..routers import Routing

__all__ = ["ExpertParallelExperts", "expert_parallel"]


class _AllToAll(torch.autograd.Function):
    """``x [sum(in_splits), dim]`` -> ``[sum(out_splits), dim]``: row block ``i`` goes to rank
    ``i``, block ``j`` of the result came from rank ``j``. Backward: the same with the splits
    swapped. Equivalent ``torch.distributed`` call::

        dist.all_to_all_single(out, x, out_splits, in_splits, group=group)
    """

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        gx = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(gx, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return gx, None, None, None


class ExpertParallelExperts(Experts):
    """This rank's ``n_local`` experts of ``n_experts`` (a slice of an :class:`Experts`), and
    the all-to-all exchange that brings them their tokens from every rank of ``group``.

    ``n_experts`` stays the global count (the routing's); the parameters are ``[n_local, ...]``.
    """

    def __init__(self, experts: Experts, rank: int, world: int, group) -> None:
        nn.Module.__init__(self)
        self.n_experts, self.dim, self.hidden_dim = experts.n_experts, experts.dim, experts.hidden_dim
        self.activation, self.beta = experts.activation, experts.beta
        self.options = experts.options
        self.norm_eps = experts.norm_eps
        self.rank, self.world, self.group = rank, world, group
        self.n_local = experts.n_experts // world
        first = rank * self.n_local
        for name in ("w1", "w2", "w3", "b1", "b2", "b3", "norm"):
            p = getattr(experts, name)
            local = None if p is None else p.detach()[first : first + self.n_local].clone()
            setattr(self, name, None if local is None else nn.Parameter(local, p.requires_grad))

    def forward(
        self, x: Tensor, routing: Routing, *, backend: str = "fused", recompute: str = "activation"
    ) -> Tensor:
        """``x [T, dim]`` (this rank's tokens) -> ``[T, dim]``. Both backends run the local
        experts as grouped products (the per-expert loop is the unsharded module's)."""
        idx, gates = routing.expert_idx, routing.gates
        t, k = idx.shape
        x = self.autocast_input(x)
        order, counts, _ = sort_by_expert(idx, self.n_experts)
        xs = permute_tokens(x, order, k, gates if routing.gate_input else None)
        send = counts.reshape(self.world, self.n_local)  # [R, L]: rows for rank r's experts
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.group)  # [R, L]: rows from rank r
        in_splits, out_splits = send.sum(1).tolist(), recv.sum(1).tolist()
        xr = _AllToAll.apply(xs, out_splits, in_splits, self.group)  # by source, local expert
        local_of_row = torch.arange(self.n_local, device=x.device).repeat(self.world)
        local_of_row = torch.repeat_interleave(local_of_row, recv.reshape(-1))
        perm = torch.argsort(local_of_row, stable=True)  # by local expert, then source rank
        offsets = recv.sum(0).cumsum(0).to(torch.int32)
        ys_local = self.run_sorted(xr.index_select(0, perm), offsets, recompute=recompute)
        yr = ys_local.index_select(0, torch.argsort(perm))  # back to (source, local expert)
        ys = _AllToAll.apply(yr, in_splits, out_splits, self.group)
        return unpermute_tokens(ys, order, t, k, None if routing.gate_input else gates)

    def extra_repr(self) -> str:
        return (f"experts {self.rank * self.n_local}..{(self.rank + 1) * self.n_local - 1} of "
                f"{self.n_experts} on rank {self.rank}/{self.world}, {super().extra_repr()}")


def expert_parallel(moe: MoEFeedForward, device_mesh) -> MoEFeedForward:
    """Shard ``moe``'s routed experts over the 1-D ``device_mesh`` (in place; returns ``moe``).

    ``moe.experts`` is replaced by this rank's :class:`ExpertParallelExperts`. UsageError when
    the mesh is not 1-D, is larger than the number of experts, or does not divide it.
    """
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(moe, MoEFeedForward):
        raise TypeError(f"expert_parallel shards a MoEFeedForward, got {type(moe).__name__}")
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(f"expected a torch DeviceMesh, got {type(device_mesh).__name__}")
    if device_mesh.ndim != 1:
        raise UsageError(f"expert parallelism needs a 1-D device mesh, got {device_mesh.ndim}-D; "
                         f"slice it first (e.g. mesh['ep'])")  # fmt: skip
    if isinstance(moe.experts, ExpertParallelExperts):
        raise UsageError("this MoEFeedForward is already expert-parallel")
    world, n = device_mesh.size(), moe.n_experts
    if world > n:
        raise UsageError(f"the expert-parallel mesh has {world} ranks but the MoE has only "
                         f"{n} experts: every rank needs at least one whole expert")  # fmt: skip
    if n % world:
        raise UsageError(f"n_experts={n} does not divide by the expert-parallel mesh size "
                         f"{world}; choose n_experts as a multiple of {world}")  # fmt: skip
    moe.experts = ExpertParallelExperts(
        moe.experts, device_mesh.get_local_rank(), world, device_mesh.get_group()
    )
    return moe
