"""How a tensor-parallel :class:`ffnlab.FeedForward` runs: the FFN on its DTensor local shards.

Over a 1-D device mesh of ``n`` ranks the hidden units are split in ``n`` contiguous blocks
(Megatron-LM's FFN split): W1 and W3 ``[hidden, dim]`` are sharded by rows (``Shard(0)``), W2
``[out, hidden]`` by columns (``Shard(1)``). Rank ``r`` then holds everything its hidden block
needs, so the whole elementwise middle, and with it the fused op and its recompute policy,
runs unchanged on local shards::

    y_r = W2[:, block_r] · (act(W1[block_r] x + b1[block_r]) ⊙ (W3[block_r] x + b3[block_r]))
    y   = all_reduce_sum(y_r) + b2

Layouts of the input and output (``FeedForward.shard_layouts``, set by
``ffnlab.parallel.PrepareFeedForward``), each ``Replicate()`` or ``Shard(d)`` with ``d`` any
dimension but the last (the features), e.g. the sequence dimension:

* ``Replicate()`` (the default): every rank holds the same ``[..., dim]``; forward is an
  identity, backward all-reduces the input gradient. The output is all-reduced.
* ``Shard(d)`` (sequence parallelism): each rank holds its block of ``x`` along ``d``; it is
  all-gathered before the FFN (backward: reduce-scatter). The output is reduce-scattered along
  ``d``, so each rank gets its block of ``y`` (backward: all-gather).

A DTensor input carries its own placement (it is redistributed to replicated first) and the
output is a DTensor with the output layout. Dropout on the output draws from each rank's own
generator: seed the ranks alike (or use ``dropout=0``).

This module imports ``torch.distributed`` only when a sharded FFN runs.
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
    from torch.distributed.tensor import Placement

__all__ = [
    "is_sharded",
    "check_divisible",
    "check_mesh",
    "check_layout",
    "sharded_forward",
    "tensor_parallel_mesh",
    "tensor_parallel_feed_forward",
]


def is_sharded(ffn: nn.Module) -> bool:
    """Whether ``ffn``'s W1 weight is a DTensor (the FFN was parallelized)."""
    # A weight can only be a DTensor if torch.distributed.tensor was imported already.
    mod = sys.modules.get("torch.distributed.tensor")
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


def check_layout(layout: object, name: str) -> Placement:
    """``layout`` if it is ``Replicate()`` or ``Shard(d)``, else a UsageError naming ``name``."""
    from torch.distributed.tensor import Replicate, Shard

    if type(layout) is Replicate or type(layout) is Shard:
        return layout
    raise UsageError(
        f"{name} must be Replicate() or Shard(d) (d: a dimension of x other than the last, "
        f"e.g. the sequence dimension), got {layout!r}"
    )


def _shard_dim(layout: Placement, ndim: int, name: str) -> int | None:
    """The dimension ``layout`` shards for an ``ndim``-D tensor, None when replicated."""
    if layout.is_replicate():
        return None
    d = layout.dim
    if not -ndim <= d < ndim:
        raise UsageError(f"{name} Shard({d}) does not fit an input of {ndim} dimensions")
    if d % ndim == ndim - 1:
        raise UsageError(
            f"{name} Shard({d}) shards the features (the last dimension); shard another "
            f"dimension, e.g. the sequence dimension"
        )
    return d % ndim


def _check_placements(ffn: nn.Module, n: int) -> None:
    from torch.distributed.tensor import Shard

    check_divisible(ffn.w1.weight.shape[0], n, "FeedForward forward")
    for name, placement in {"w1": Shard(0), "w3": Shard(0), "w2": Shard(1)}.items():
        lin = ffn._modules.get(name)
        if lin is None:
            continue
        got = getattr(lin.weight, "placements", None)
        if got != (placement,):
            raise UsageError(
                f"FeedForward.{name}.weight must be sharded as {placement} over the hidden "
                f"units (ColwiseParallel for w1/w3, RowwiseParallel for w2), got {got}; "
                f"use ffnlab.parallel.tp_plan or tensor_parallel"
            )


def _check_no_hooks(ffn: nn.Module) -> None:
    # The local shards are read as weights, so hooks on the projections would never run;
    # torch's ColwiseParallel/RowwiseParallel install their input and output layouts as such
    # hooks. Refuse them rather than ignore a layout silently.
    for name in ("w1", "w2", "w3"):
        lin = ffn._modules.get(name)
        if lin is not None and (lin._forward_hooks or lin._forward_pre_hooks):
            raise UsageError(
                f"FeedForward.{name} of a tensor-parallel FeedForward carries forward hooks "
                f"(torch's ColwiseParallel/RowwiseParallel install their layouts that way), "
                f"which its local-shard forward would not run; use ffnlab.parallel.tp_plan or "
                f"tensor_parallel, and give input/output layouts to PrepareFeedForward"
            )


def sharded_forward(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The FFN on local shards: ``x [..., dim]`` -> ``[..., out]``, laid out as
    ``ffn.shard_layouts`` says (see the module docstring), before the output dropout.

    Equivalent PyTorch on one device: ``ffn_reference(x, W1, W2, W3, b1, b2, b3, ...)`` with the
    full (gathered) weights and inputs.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard

    w1 = ffn.w1.weight
    mesh = w1.device_mesh
    _check_placements(ffn, check_mesh(mesh))
    _check_no_hooks(ffn)
    in_layout, out_layout = ffn.shard_layouts or (Replicate(), Replicate())
    in_dim = _shard_dim(check_layout(in_layout, "input layout"), x.dim(), "input layout")
    out_dim = _shard_dim(check_layout(out_layout, "output layout"), x.dim(), "output layout")

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    def gathered(t: torch.Tensor, placement) -> torch.Tensor:
        # Each rank's gradient covers only its own hidden block, so the input's gradient is a
        # partial sum: backward all-reduces it (Megatron's "f"), or reduce-scatters it back to
        # the input's shards.
        if not isinstance(t, DTensor):
            t = DTensor.from_local(t, mesh, [placement], run_check=False)
        return t.redistribute(mesh, [Replicate()]).to_local(grad_placements=[Partial()])

    beta = ffn.beta_tensor_or_value()
    if isinstance(beta, DTensor):  # per-unit beta, sharded like W1's rows
        beta = beta.to_local()
    elif isinstance(beta, torch.Tensor):
        if beta.dim() != 0 and "alpha_p" not in ffn._parameters:  # xielu's [2] is replicated
            raise UsageError(
                "a per-unit learnable beta must be sharded with the hidden units; "
                "ffnlab.parallel.tensor_parallel and tp_plan do that"
            )
        beta = gathered(beta, Replicate())

    in_placement = Replicate() if in_dim is None else Shard(in_dim)
    w3, b3 = (None, None) if ffn.w3 is None else (ffn.w3.weight, ffn.w3.bias)
    y_partial = feed_forward(
        gathered(x, in_placement),
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
        options=ffn.act_options,
    )
    out_placement = Replicate() if out_dim is None else Shard(out_dim)
    y = DTensor.from_local(y_partial, mesh, [Partial()], run_check=False)
    y = y.redistribute(mesh, [out_placement]).to_local()
    if ffn.w2.bias is not None:
        # With a sharded output each rank's bias gradient covers only its own rows: a partial
        # sum, all-reduced like the input's; with a replicated one every rank has all rows.
        b2 = ffn.w2.bias
        y = y + (local(b2) if out_dim is None else gathered(b2, Replicate()))
    if isinstance(x, DTensor):
        return DTensor.from_local(y, mesh, [out_placement], run_check=False)
    return y


def _placement(t: torch.Tensor | None):
    """``t``'s single placement on a 1-D mesh, ``"plain"`` for a plain tensor (or None)."""
    mod = sys.modules.get("torch.distributed.tensor")
    if t is None or mod is None or not isinstance(t, mod.DTensor):
        return "plain"
    return t.placements[0] if t.device_mesh.ndim == 1 else None


def tensor_parallel_mesh(w1, w2, w3=None, b1=None, b2=None, b3=None):
    """The 1-D mesh when ``(w1, w2, w3, b1, b2, b3)`` are laid out as Megatron-LM's FFN split,
    else None: W1/W3 ``[hidden, dim]`` and b1/b3 ``[hidden]`` ``Shard(0)``, W2 ``[out,
    hidden]`` ``Shard(1)``, b2 ``Replicate()``, all DTensors on one 1-D mesh with an even split
    of the hidden units. That is the layout transformers' ``"colwise"``/``"rowwise"`` plan
    entries (and torch's ``ColwiseParallel``/``RowwiseParallel``) give an MLP's projections.
    A packed or strided shard (``_StridedShard``) is not this layout."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(w1, DTensor):
        return None
    mesh = w1.device_mesh
    want = ((w1, Shard(0)), (w3, Shard(0)), (b1, Shard(0)), (b3, Shard(0)), (w2, Shard(1)),
            (b2, Replicate()))  # fmt: skip
    for t, placement in want:
        if t is None:
            continue
        got = _placement(t)
        if type(got) is not type(placement) or got != placement or t.device_mesh != mesh:
            return None
    if mesh.ndim != 1 or w1.shape[0] % mesh.size():
        return None
    return mesh


def tensor_parallel_feed_forward(
    x: torch.Tensor, w1, w2, w3=None, b1=None, b2=None, b3=None, *, activation,
    beta: float | torch.Tensor = 1.0, backend: str = "auto", recompute: str = "activation",
    options: tuple[float, ...] = (),
) -> torch.Tensor:
    """The FFN on the local shards of weights laid out as :func:`tensor_parallel_mesh` checks:
    ``x [..., dim]`` replicated on every rank (a plain tensor, or a DTensor redistributed to
    ``Replicate()`` first) -> ``[..., out]`` replicated, a plain tensor::

        y = all_reduce_sum(ffn(x, W1[block_r], W2[:, block_r], W3[block_r], b1[block_r],
                               None, b3[block_r])) + b2

    Backward all-reduces the input gradient (each rank's covers only its hidden block); each
    weight's gradient is its local shard's. Equivalent PyTorch on one device:
    ``ffn_reference(x, W1, W2, W3, b1, b2, b3, ...)`` with the full weights. UsageError when
    the weights are not so laid out.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate

    mesh = tensor_parallel_mesh(w1, w2, w3, b1, b2, b3)
    if mesh is None:
        raise UsageError(
            "tensor_parallel_feed_forward needs W1/W3 (and b1/b3) sharded Shard(0), W2 Shard(1) "
            "and b2 replicated on one 1-D device mesh, with the hidden size divisible by its size"
        )

    def local(t):
        return t.to_local() if isinstance(t, DTensor) else t

    if not isinstance(x, DTensor):
        x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
    x = x.redistribute(mesh, [Replicate()]).to_local(grad_placements=[Partial()])
    y_partial = feed_forward(
        x, local(w1), local(w2), local(w3), local(b1), None, local(b3), activation=activation,
        beta=beta, backend=backend, recompute=recompute, options=options,
    )  # fmt: skip
    y = DTensor.from_local(y_partial, mesh, [Partial()], run_check=False)
    y = y.redistribute(mesh, [Replicate()]).to_local()
    return y if b2 is None else y + local(b2)
