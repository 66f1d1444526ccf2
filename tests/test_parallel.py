"""Tensor parallelism (ffnlab.parallel) over 2 CPU processes with the gloo backend.

The test launches this file as a script once (module-scoped fixture); the script spawns two
ranks on 127.0.0.1, each checks every case against an unsharded float64 copy and rank 0
writes the outcome per case to a JSON file that the tests below read. Running every case in
one launch keeps the cost of starting torch three times (~5 s) paid once.
"""

from __future__ import annotations

import copy
import importlib
import subprocess
import sys

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab import FeedForward
from ffnlab.parallel import tensor_parallel, tp_plan
from gloo_cases import ranks_results, run_ranks

WORLD = 2
DIM, HIDDEN = 12, 20  # HIDDEN even: splits over 2 ranks; 15 does not


# --- the worker side -----------------------------------------------------------------------


def _compare_forward_backward(ref: nn.Module, sharded: nn.Module, x: torch.Tensor) -> None:
    """Same output, input grad and (gathered) parameter grads as the unsharded ``ref``."""
    from torch.distributed.tensor import DTensor

    g = torch.randn(*x.shape[:-1], DIM, dtype=x.dtype)  # same on both ranks (same seed)
    x_ref, x_tp = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_tp = ref(x_ref), sharded(x_tp)
    assert not isinstance(y_tp, DTensor)
    torch.testing.assert_close(y_tp, y_ref, rtol=1e-10, atol=1e-10)
    y_ref.backward(g)
    y_tp.backward(g)
    torch.testing.assert_close(x_tp.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    ref_params = dict(ref.named_parameters())
    tp_params = dict(sharded.named_parameters())
    assert ref_params.keys() == tp_params.keys(), (ref_params.keys(), tp_params.keys())
    for name, p in tp_params.items():
        grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        torch.testing.assert_close(grad, ref_params[name].grad, rtol=1e-10, atol=1e-10, msg=name)


def _ffn(variant: str, **kw) -> FeedForward:
    torch.manual_seed(1)
    ffn = FeedForward(DIM, HIDDEN, variant, dtype=torch.float64, **kw)
    if ffn.beta is not None:  # a non-trivial beta, different per unit when per-unit
        with torch.no_grad():
            ffn.beta.copy_(torch.rand(ffn.beta.shape, dtype=torch.float64) + 0.5)
    return ffn


def case_gated(mesh):
    ref = _ffn("swiglu", backend="auto")
    sharded = tensor_parallel(copy.deepcopy(ref), mesh)
    from torch.distributed.tensor import DTensor

    assert isinstance(sharded.w1.weight, DTensor)
    assert sharded.w1.weight.to_local().shape == (HIDDEN // WORLD, DIM)
    assert sharded.w2.weight.to_local().shape == (DIM, HIDDEN // WORLD)
    _compare_forward_backward(ref, sharded, torch.randn(3, 5, DIM, dtype=torch.float64))
    # a DTensor input (here sharded over the batch) comes back as a replicated DTensor
    from torch.distributed.tensor import Shard, distribute_tensor

    x = torch.randn(4, DIM, dtype=torch.float64)
    y = sharded(distribute_tensor(x, sharded.w1.weight.device_mesh, [Shard(0)]))
    assert isinstance(y, DTensor) and y.placements[0].is_replicate()
    torch.testing.assert_close(y.to_local(), ref(x), rtol=1e-10, atol=1e-10)


def case_plain_bias(mesh):
    ref = _ffn("gelu", backend="reference")  # plain variants have biases on by default
    sharded = tensor_parallel(copy.deepcopy(ref), mesh)
    _compare_forward_backward(ref, sharded, torch.randn(7, DIM, dtype=torch.float64))


def case_scalar_beta(mesh):
    ref = _ffn("swiglu", learnable_beta=True, backend="reference")
    _compare_forward_backward(ref, tensor_parallel(copy.deepcopy(ref), mesh),
                              torch.randn(4, DIM, dtype=torch.float64))  # fmt: skip


def case_per_unit_beta(mesh):
    ref = _ffn("swish", learnable_beta="per_unit", backend="reference")
    sharded = tensor_parallel(copy.deepcopy(ref), mesh)
    assert sharded.beta.to_local().shape == (HIDDEN // WORLD,)
    _compare_forward_backward(ref, sharded, torch.randn(4, DIM, dtype=torch.float64))


def case_per_unit_beta_unsharded_refused(mesh):
    from torch.distributed.tensor.parallel import parallelize_module

    from ffnlab.parallel import ColwiseWeights, RowwiseWeights

    ffn = _ffn("swiglu", learnable_beta="per_unit", backend="reference")
    plan = {"w1": ColwiseWeights(), "w3": ColwiseWeights(), "w2": RowwiseWeights()}
    parallelize_module(ffn, mesh, plan)  # no PrepareFeedForward: beta stays whole
    try:
        ffn(torch.randn(2, DIM, dtype=torch.float64))
    except ffnlab.UsageError as e:
        assert "per-unit learnable beta" in str(e), e
    else:
        raise AssertionError("an unsharded per-unit beta was accepted")


def case_indivisible(mesh):
    ffn = FeedForward(DIM, 15, "swiglu")
    try:
        tensor_parallel(ffn, mesh)
    except ffnlab.UsageError as e:
        assert "15" in str(e) and "does not divide" in str(e), e
    else:
        raise AssertionError("hidden 15 over 2 ranks was accepted")
    try:
        tensor_parallel(nn.Linear(4, 4), mesh)
    except TypeError as e:
        assert "FeedForward" in str(e), e
    else:
        raise AssertionError("a Linear was accepted")


class _Block(nn.Module):
    def __init__(self, variant: str):
        super().__init__()
        self.ffn = _ffn(variant, backend="reference")

    def forward(self, x):
        return x + self.ffn(x)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([_Block("geglu"), _Block("relu"), _Block("swiglu")])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def case_plan_with_wildcard(mesh):
    import warnings

    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.parallel import parallelize_module

    ref = _Model()
    sharded = copy.deepcopy(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the w[13] glob must not warn for the plain layer
        parallelize_module(sharded, mesh, tp_plan("layers.*.ffn"))
    for layer in sharded.layers:
        assert isinstance(layer.ffn.w1.weight, DTensor)
    _compare_forward_backward(ref, sharded, torch.randn(2, 3, DIM, dtype=torch.float64))


def _compare_sharded_layouts(ref, sharded, x, in_dim, out_dim):
    """Sequence-parallel layouts: rank r passes its block of ``x`` along ``in_dim`` (all of
    ``x`` when None) and gets its block of the output along ``out_dim``; the gradients of the
    input blocks and the (gathered) parameters equal the unsharded ``ref``'s."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    rank = dist.get_rank()

    def block(t, d):
        return t if d is None else t.chunk(WORLD, d)[rank]

    x_ref = x.clone().requires_grad_()
    y_ref = ref(x_ref)
    g = torch.randn_like(y_ref)  # same on both ranks (same seed)
    x_tp = block(x, in_dim).clone().requires_grad_()
    y_tp = sharded(x_tp)
    assert not isinstance(y_tp, DTensor)
    torch.testing.assert_close(y_tp, block(y_ref, out_dim), rtol=1e-10, atol=1e-10)
    y_ref.backward(g)
    y_tp.backward(block(g, out_dim))
    torch.testing.assert_close(x_tp.grad, block(x_ref.grad, in_dim), rtol=1e-10, atol=1e-10)
    ref_params = dict(ref.named_parameters())
    for name, p in sharded.named_parameters():
        grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
        torch.testing.assert_close(grad, ref_params[name].grad, rtol=1e-10, atol=1e-10, msg=name)


def case_sequence_parallel(mesh):
    from torch.distributed.tensor import Shard

    # [batch 2, seq 4, dim]: the sequence (dim 1) split over the ranks, in and out
    for variant, kw in (("swiglu", {"learnable_beta": "per_unit"}), ("gelu", {"out_dim": 7}),
                        ("swish", {"learnable_beta": True})):  # fmt: skip
        ref = _ffn(variant, backend="reference", **kw)
        sharded = tensor_parallel(copy.deepcopy(ref), mesh, input_layouts=Shard(1),
                                  output_layouts=Shard(1))  # fmt: skip
        assert sharded.shard_layouts == (Shard(1), Shard(1))
        _compare_sharded_layouts(ref, sharded, torch.randn(2, 4, DIM, dtype=torch.float64), 1, 1)


def case_mixed_layouts(mesh):
    from torch.distributed.tensor import Replicate, Shard

    ref = _ffn("geglu", backend="auto", bias=True)
    x = torch.randn(4, 6, DIM, dtype=torch.float64)
    for inp, out, in_dim, out_dim in ((Shard(1), Replicate(), 1, None),
                                      (Replicate(), Shard(0), None, 0),
                                      (Shard(-2), Shard(-3), 1, 0)):  # fmt: skip
        ref.zero_grad(set_to_none=True)
        sharded = tensor_parallel(copy.deepcopy(ref), mesh, input_layouts=inp,
                                  output_layouts=out)  # fmt: skip
        _compare_sharded_layouts(ref, sharded, x, in_dim, out_dim)


def case_sequence_parallel_plan(mesh):
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import parallelize_module

    ref = _Model()
    sharded = copy.deepcopy(ref)
    plan = tp_plan("layers.*.ffn", input_layouts=Shard(1), output_layouts=Shard(1))
    parallelize_module(sharded, mesh, plan)
    # each block's residual stream stays split along the sequence
    _compare_sharded_layouts(ref, sharded, torch.randn(2, 4, DIM, dtype=torch.float64), 1, 1)


def case_feature_layout_refused(mesh):
    from torch.distributed.tensor import Shard

    sharded = tensor_parallel(_ffn("swiglu"), mesh, input_layouts=Shard(2))
    try:
        sharded(torch.randn(2, 3, DIM, dtype=torch.float64))
    except ffnlab.UsageError as e:
        assert "Shard(2) shards the features" in str(e), e
    else:
        raise AssertionError("an input sharded over its features was accepted")


def case_torch_style_layouts_refused(mesh):
    # torch's own styles install their layouts as hooks on the Linears, which the local-shard
    # forward does not call: refused, never silently ignored.
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    ffn = _ffn("swiglu", backend="reference")
    plan = {"w[13]": ColwiseParallel(input_layouts=Shard(1)),
            "w2": RowwiseParallel(output_layouts=Shard(1))}  # fmt: skip
    parallelize_module(ffn, mesh, plan)
    try:
        ffn(torch.randn(2, 2, DIM, dtype=torch.float64))
    except ffnlab.UsageError as e:
        assert "carries forward hooks" in str(e) and "PrepareFeedForward" in str(e), e
    else:
        raise AssertionError("ColwiseParallel(input_layouts=Shard(1)) was silently ignored")


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


# --- the pytest side -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tp_results(tmp_path_factory):
    return ranks_results(__file__, tmp_path_factory.mktemp("tp"))


@pytest.mark.parametrize("case", list(CASES))
def test_tensor_parallel_case(tp_results, case):
    assert tp_results[case] == "ok", tp_results[case]


def test_tp_plan_keys():
    plan = tp_plan("layers.*.ffn")
    assert list(plan) == ["layers.*.ffn", "layers.*.ffn.w[13]", "layers.*.ffn.w2"]
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    assert isinstance(plan["layers.*.ffn.w[13]"], ColwiseParallel)
    assert isinstance(plan["layers.*.ffn.w2"], RowwiseParallel)
    assert list(tp_plan()) == ["", "w[13]", "w2"]
    with pytest.raises(TypeError):
        tp_plan(3)


def test_plan_entries_install_no_hooks_and_check_layouts():
    from torch.distributed.tensor import Partial, Replicate, Shard

    from ffnlab.parallel import PrepareFeedForward

    plan = tp_plan(input_layouts=Shard(1), output_layouts=Shard(1))
    assert (plan[""].input_layouts, plan[""].output_layouts) == (Shard(1), Shard(1))
    assert (tp_plan()[""].input_layouts, tp_plan()[""].output_layouts) == (Replicate(),) * 2
    with pytest.raises(ValueError, match="input_layouts must be Replicate"):
        PrepareFeedForward(input_layouts=Partial())
    with pytest.raises(ValueError, match="shards the features"):
        PrepareFeedForward(output_layouts=Shard(-1))
    with pytest.raises(TypeError):
        ffnlab.parallel.ColwiseWeights(input_layouts=Shard(1))


def test_import_ffnlab_does_not_import_tensor_parallel():
    code = ("import sys, ffnlab, ffnlab.parallel; "
            "assert 'torch.distributed.tensor.parallel' not in sys.modules")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unsharded_ffn_is_not_sharded():
    assert not ffnlab.parallel.is_sharded(FeedForward(8, 16))


if __name__ == "__main__":
    importlib.import_module("torch.distributed.tensor.parallel")  # once, before the fork
    run_ranks(CASES, world=WORLD)
