"""Tensor parallelism for FeedForward on torch.distributed's DTensor (Megatron-LM's FFN split).

Over a 1-D device mesh of ``n`` ranks the hidden units are split in ``n`` contiguous blocks:
W1 and W3 ``[hidden, dim]`` are sharded by rows (``ColwiseParallel``: column-wise in the
``x @ W1ᵀ`` view), W2 ``[dim, hidden]`` by columns (``RowwiseParallel``). Rank ``r`` then holds
everything its hidden block needs, so the whole elementwise middle, and with it the fused op
and its recompute policy, runs unchanged on local shards::

    y_r = W2[:, block_r] · (act(W1[block_r] x + b1[block_r]) ⊙ (W3[block_r] x + b3[block_r]))
    y   = all_reduce_sum(y_r) + b2

One all-reduce forward (of ``y``) and one backward (of the input gradient), as in Megatron-LM.
``FeedForward.forward`` notices DTensor weights and calls :func:`sharded_forward`; the
``nn.Linear`` hooks that ``ColwiseParallel``/``RowwiseParallel`` install are not used, since
FeedForward reads the weights rather than calling the Linear layers.

Input: a plain tensor holding the same (replicated) ``[..., dim]`` on every rank, or a DTensor
(redistributed to replicated first). Output: the same type, replicated. Dropout on the output
draws from each rank's own generator: seed the ranks alike (or use ``dropout=0``).

Nothing here imports ``torch.distributed`` until it is used.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import UsageError
from .ops.dispatch import feed_forward

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "tensor_parallel",
    "tp_plan",
    "is_sharded",
    "sharded_forward",
    "check_divisible",
    "check_mesh",
]


def _dtensor_module():
    # A weight can only be a DTensor if torch.distributed.tensor was imported already.
    return sys.modules.get("torch.distributed.tensor")


def is_sharded(ffn: nn.Module) -> bool:
    """Whether ``ffn``'s W1 weight is a DTensor (the FFN was parallelized)."""
    mod = _dtensor_module()
    return mod is not None and isinstance(ffn.w1.weight, mod.DTensor)


def check_divisible(hidden: int, n: int, where: str) -> None:
    """UsageError unless the hidden size ``hidden`` splits evenly over ``n`` ranks."""
    if hidden % n:
        raise UsageError(
            f"{where}: hidden size {hidden} does not divide by the tensor-parallel mesh size "
            f"{n}; choose hidden_dim as a multiple of {n} (e.g. multiple_of={n})"
        )


def check_mesh(mesh: DeviceMesh) -> int:
    """The size of a 1-D DeviceMesh; TypeError/UsageError for anything else."""
    from torch.distributed.device_mesh import DeviceMesh

    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"expected a torch DeviceMesh, got {type(mesh).__name__}")
    if mesh.ndim != 1:
        raise UsageError(
            f"tensor parallelism needs a 1-D device mesh, got {mesh.ndim}-D; slice it first "
            f"(e.g. mesh['tp'])"
        )
    return mesh.size()


def __getattr__(name: str):
    # PEP 562: load the ParallelStyle subclass (and torch.distributed) only when asked for.
    if name == "PrepareFeedForward":
        from .parallel_style import PrepareFeedForward

        return PrepareFeedForward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def tp_plan(prefix: str = "") -> dict:
    """A ``parallelize_module`` plan for the FeedForward(s) at ``prefix``.

    ``prefix`` is the FeedForward's path in the model (``""`` for the FFN itself); it may hold
    ``fnmatch`` wildcards, which ``parallelize_module`` expands per path component, e.g.
    ``tp_plan("layers.*.ffn")``. The plan::

        {prefix: PrepareFeedForward(),         # divisibility check, shards a per-unit beta
         f"{prefix}.w[13]": ColwiseParallel(), # W1 and, when gated, W3 (a glob: no warning
                                               # for plain variants, which have no w3)
         f"{prefix}.w2": RowwiseParallel()}

    Use: ``parallelize_module(model, mesh, tp_plan("layers.*.ffn"))``; merge it with the
    plan of the rest of the model (attention ...) as usual.
    """
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    from .parallel_style import PrepareFeedForward

    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
    dot = f"{prefix}." if prefix else ""
    return {
        prefix: PrepareFeedForward(),
        f"{dot}w[13]": ColwiseParallel(),
        f"{dot}w2": RowwiseParallel(),
    }


def tensor_parallel(ffn: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
    """Shard one :class:`ffnlab.FeedForward` over a 1-D ``device_mesh``, in place; returns it.

    W1/W3 (and their biases, and a per-unit learnable beta) are split by hidden rows, W2 by
    hidden columns; b2 and a scalar beta stay replicated. The FFN then takes the replicated
    input ``[..., dim]`` on every rank and returns the replicated output. Raises a UsageError
    when the hidden size does not divide by the mesh size or the FFN is already sharded.
    """
    from torch.distributed.tensor.parallel import parallelize_module

    from .ffn import FeedForward

    if not isinstance(ffn, FeedForward):
        raise TypeError(f"tensor_parallel expects an ffnlab.FeedForward, got {type(ffn).__name__}")
    n = check_mesh(device_mesh)
    check_divisible(ffn.hidden_dim, n, "tensor_parallel")
    if is_sharded(ffn):
        raise UsageError("this FeedForward is already sharded (its weights are DTensors)")
    return parallelize_module(ffn, device_mesh, tp_plan())


def sharded_forward(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The FFN on local shards, then one all-reduce: ``x [..., dim]`` -> ``[..., dim]``, before
    the FeedForward's output dropout. Called by ``FeedForward.forward`` for DTensor weights.

    Equivalent PyTorch on one device: ``ffn_reference(x, W1, W2, W3, b1, b2, b3, ...)`` with the
    full (gathered) weights.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    w1 = ffn.w1.weight
    mesh = w1.device_mesh
    n = check_mesh(mesh)
    check_divisible(w1.shape[0], n, "FeedForward forward")
    want = {"w1": Shard(0), "w3": Shard(0), "w2": Shard(1)}
    for name, placement in want.items():
        lin = getattr(ffn, name)
        if lin is None:
            continue
        got = getattr(lin.weight, "placements", None)
        if got != (placement,):
            raise UsageError(
                f"FeedForward.{name}.weight must be sharded as {placement} over the hidden "
                f"units (ColwiseParallel for w1/w3, RowwiseParallel for w2), got {got}; "
                f"use ffnlab.parallel.tp_plan or tensor_parallel"
            )

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    def replicated_input(t: torch.Tensor) -> torch.Tensor:
        # Identity forward; backward all-reduces the gradient, because each rank's gradient
        # only covers its own hidden block (Megatron's "f" operator).
        if isinstance(t, DTensor):
            t = t.redistribute(mesh, [Replicate()])
        else:
            t = DTensor.from_local(t, mesh, [Replicate()], run_check=False)
        return t.to_local(grad_placements=[Partial()])

    beta = ffn.beta_tensor_or_value()
    if isinstance(beta, DTensor):  # per-unit beta, sharded like W1's rows
        beta = beta.to_local()
    elif isinstance(beta, torch.Tensor):
        if beta.dim() != 0:
            raise UsageError(
                "a per-unit learnable beta must be sharded with the hidden units; "
                "ffnlab.parallel.tensor_parallel and tp_plan do that"
            )
        beta = replicated_input(beta)

    w3, b3 = (None, None) if ffn.w3 is None else (ffn.w3.weight, ffn.w3.bias)
    y_partial = feed_forward(
        replicated_input(x),
        w1.to_local(),
        local(ffn.w2.weight),
        local(w3),
        local(ffn.w1.bias),
        None,  # b2 is added once, after the sum over ranks
        local(b3),
        activation=ffn.activation,
        beta=beta,
        backend=ffn.backend,
        recompute=ffn.recompute,
    )
    y = DTensor.from_local(y_partial, mesh, [Partial()], run_check=False)
    y = y.redistribute(mesh, [Replicate()]).to_local()
    if ffn.w2.bias is not None:
        y = y + local(ffn.w2.bias)
    if isinstance(x, DTensor):
        return DTensor.from_local(y, mesh, [Replicate()], run_check=False)
    return y
