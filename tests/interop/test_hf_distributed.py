"""patch_hf on distributed transformers models, over 2 CPU processes with gloo.

As tests/test_parallel.py: the test runs this file as a script once; it forks two ranks on
127.0.0.1 and each runs every case; rank 0 writes the outcome per case to a JSON file. Each
case builds a tiny random model alike on both ranks (same seed), distributes it the way a user
does (transformers' own ``maybe_distribute_model`` with a ``DistributedConfig``: the layout
``from_pretrained(..., tp_plan="auto")`` sets up, which needs ``accelerate``; or torch's
``fully_shard``), and compares the patched model's logits and parameter gradients with the
same sharded model's before patching: float64 within 1e-10, float32 within 1e-5 (the MoE
models' default grouped_mm experts have no float64 CPU kernel; their eager experts, which
the expert-parallel cases run in float64, have one).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gloo_cases import ranks_results, run_ranks

WORLD = 2
TOL64 = {"rtol": 1e-10, "atol": 1e-10}


# --- the worker side -----------------------------------------------------------------------


def _llama(dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, head_dim=8)  # fmt: skip
    return LlamaForCausalLM(cfg).to(dtype)


def _phi3():
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    cfg = Phi3Config(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, pad_token_id=0)  # fmt: skip
    return Phi3ForCausalLM(cfg).to(torch.float64)


def _qwen3_moe(mlp_only_layers=()):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                         moe_intermediate_size=8, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                         decoder_sparse_step=1, mlp_only_layers=list(mlp_only_layers))  # fmt: skip
    return Qwen3MoeForCausalLM(cfg)


def _distribute(model, **config):
    """transformers' own layout for ``DistributedConfig(**config)`` (what from_pretrained
    applies before loading the weights; here the weights are the seeded ones, alike on every
    rank, and each rank keeps its shard)."""
    from transformers.distributed import DistributedConfig

    dc, _, meshes = type(model).prepare_distribute_model(DistributedConfig(**config))
    return type(model).maybe_distribute_model(model, dc, meshes)


def _outputs(model):
    """Logits of a fixed batch, and the same under no_grad followed by the gradients of their
    sum of squares (local shards)."""
    from torch.distributed.tensor import DTensor

    ids = torch.arange(14).reshape(2, 7) * 5 % 64  # the same on both ranks
    with torch.no_grad():  # transformers' projections take their local inference path
        inference = model(ids).logits
    logits = model(ids).logits
    logits.pow(2).sum().backward()  # backward, not autograd.grad: FSDP2 reduces .grad
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    return logits.detach(), [inference, *(g.to_local() if isinstance(g, DTensor) else g
                                          for g in grads)]  # fmt: skip


def _patch(model, **kw):
    import ffnlab

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = ffnlab.patch_hf(model, **kw)
    return n, " ".join(str(w.message) for w in caught if "ffnlab" in str(w.message))


def _same(before, after, tol) -> None:
    torch.testing.assert_close(after[0], before[0], **tol)
    for a, b in zip(after[1], before[1], strict=True):
        torch.testing.assert_close(a, b, **tol)


def _wrappers(model):
    from ffnlab.interop.hf_modules import HFMLP

    return [m for m in model.modules() if isinstance(m, HFMLP)]


def case_tp_plan_local_shards(mesh):
    # Llama's base_model_tp_plan: gate/up "colwise" (Shard(0)), down "rowwise" (Shard(1))
    from torch.distributed.tensor import DTensor

    model = _distribute(_llama(), tp_size=WORLD)
    assert isinstance(model.model.layers[0].mlp.gate_proj.weight, DTensor)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert all(w.tensor_parallel for w in _wrappers(model))  # fused op on local shards
    _same(before, _outputs(model), TOL64)


def case_tp_plan_overridden_layouts(mesh):
    # the weights keep Shard(0)/Shard(1) while the projections gather and re-split their
    # activations: the local-shard sum is still the MLP's function
    model = _distribute(_llama(), tp_size=WORLD, tp_plan={
        "model.layers.*.mlp.gate_proj": "colwise_gather_output",
        "model.layers.*.mlp.up_proj": "colwise_gather_output",
        "model.layers.*.mlp.down_proj": "rowwise_split_input"})  # fmt: skip
    before = _outputs(model)
    n, warned = _patch(model, backend="reference")
    assert n == 2 and not warned, (n, warned)
    assert all(w.tensor_parallel for w in _wrappers(model))
    _same(before, _outputs(model), TOL64)


def case_tp_plan_packed_through_projections(mesh):
    # Phi-3's packed gate_up_proj "colwise_gather_output": rank r holds rows of the packed
    # weight that are not its hidden block of both halves, so the wrapper calls the
    # projections (transformers' layout transforms run) instead of reading local shards
    model = _distribute(_phi3(), tp_size=WORLD)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert not any(w.tensor_parallel for w in _wrappers(model))
    _same(before, _outputs(model), TOL64)


def case_tp_plan_moe_model(mesh):
    # Qwen3-MoE under tp_size=2: layer 0's dense MLP is tensor-parallel (local shards), layer
    # 1's experts are replicated (its plan shards none of them) and patched as usual
    from ffnlab.interop.hf_moe import HFMoE

    model = _distribute(_qwen3_moe(mlp_only_layers=[0]), tp_size=WORLD)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert [w.tensor_parallel for w in _wrappers(model)] == [True]
    assert isinstance(model.model.layers[1].mlp, HFMoE)
    _same(before, _outputs(model), {"rtol": 1e-5, "atol": 1e-5})


def case_torch_parallel_styles(mesh):
    # torch's own ColwiseParallel/RowwiseParallel (hooks, not transformers' forwards)
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = _llama()
    plan = {"model.layers.*.mlp.gate_proj": ColwiseParallel(),
            "model.layers.*.mlp.up_proj": ColwiseParallel(),
            "model.layers.*.mlp.down_proj": RowwiseParallel()}  # fmt: skip
    parallelize_module(model, mesh, plan)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert all(w.tensor_parallel for w in _wrappers(model))
    _same(before, _outputs(model), TOL64)


def _fully_shard_layers(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)


def case_fsdp2_before_patch(mesh):
    from torch.distributed.tensor import DTensor

    model = _llama()
    _fully_shard_layers(model)
    assert isinstance(model.model.layers[0].mlp.down_proj.weight, DTensor)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    _same(before, _outputs(model), TOL64)


def case_fsdp2_after_patch(mesh):
    model = _llama()
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    _fully_shard_layers(model)
    patched = _outputs(model)
    plain = _llama()
    _fully_shard_layers(plain)
    _same(_outputs(plain), patched, TOL64)


def case_fsdp2_transformers_plan(mesh):
    model = _distribute(_llama(), fsdp_size=WORLD)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    _same(before, _outputs(model), TOL64)


def case_fsdp2_moe_before_patch(mesh):
    from ffnlab.interop.hf_moe import HFMoE

    model = _qwen3_moe()
    _fully_shard_layers(model)
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert all(isinstance(layer.mlp, HFMoE) for layer in model.model.layers)
    _same(before, _outputs(model), {"rtol": 1e-5, "atol": 1e-5})


def case_fsdp2_unit_declined(mesh):
    from torch.distributed.fsdp import fully_shard

    model = _llama()
    fully_shard(model.model.layers[0].mlp)  # the MLP itself is an FSDP2 unit
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 1, n  # layer 1's MLP only
    assert "model.layers.0.mlp (FSDPLlamaMLP: fully_shard was applied to this module itself" in warned, warned
    assert "down_proj.weight: Shard(dim=0) over 2 ranks" in warned, warned
    _same(before, _outputs(model), TOL64)


def _qwen3_moe_ep(dtype, experts="eager", **distribute):
    model = _qwen3_moe()
    model.set_experts_implementation(experts)
    return _distribute(model.to(dtype), ep_size=WORLD, tp_plan={}, **distribute)


def _mixtral_ep(dtype, experts="eager"):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=64, hidden_size=16, intermediate_size=8, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                        num_local_experts=4, num_experts_per_tok=2)  # fmt: skip
    model = MixtralForCausalLM(cfg)
    model.set_experts_implementation(experts)
    return _distribute(model.to(dtype), ep_size=WORLD, tp_plan={})


class _CountCalls:
    """Counts the calls of ffnlab's grouped experts op made by the "ffnlab" experts function."""

    def __enter__(self):
        from ffnlab.interop import hf_experts

        self.module, self.fn, self.calls = hf_experts, hf_experts.grouped_feed_forward, 0

        def counted(*args, **kw):
            self.calls += 1
            return self.fn(*args, **kw)

        hf_experts.grouped_feed_forward = counted
        return self

    def __exit__(self, *exc):
        self.module.grouped_feed_forward = self.fn


def _expert_parallel_patched(model, tol, previous):
    # transformers' dispatch stays; each block's experts run "ffnlab" on this rank's experts
    import ffnlab
    from ffnlab.interop.hf_moe import HFMoE

    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    assert not any(isinstance(m, HFMoE) for m in model.modules())
    assert model.get_experts_implementation()[""] == "ffnlab"
    with _CountCalls() as counter:
        after = _outputs(model)
    assert counter.calls == 4, counter.calls  # 2 layers x (no_grad forward + forward)
    _same(before, after, tol)
    assert _patch(model)[0] == 0  # patched once
    assert ffnlab.unpatch_hf(model) == 2
    assert model.get_experts_implementation()[""] == previous
    with _CountCalls() as counter:
        _same(before, _outputs(model), {"rtol": 0, "atol": 0})
    assert counter.calls == 0


def case_expert_parallel_qwen3_moe_float64(mesh):
    # eager has float64 CPU kernels (F.linear per expert); grouped_mm has none
    _expert_parallel_patched(_qwen3_moe_ep(torch.float64), TOL64, "eager")


def case_expert_parallel_mixtral_float64(mesh):
    _expert_parallel_patched(_mixtral_ep(torch.float64), TOL64, "eager")


def case_expert_parallel_grouped_mm_float32(mesh):
    # transformers' default experts implementation, in float32
    model = _qwen3_moe_ep(torch.float32, experts="grouped_mm")
    _expert_parallel_patched(model, {"rtol": 1e-5, "atol": 1e-5}, "grouped_mm")


def case_expert_parallel_shared_batch_float64(mesh):
    # ep_size == tp_size: at inference every rank runs its experts on the whole batch, other
    # ranks' routes as placeholder id num_experts with weight 0, then one all-reduce
    model = _qwen3_moe_ep(torch.float64, tp_size=WORLD)
    _expert_parallel_patched(model, TOL64, "eager")


class _Perturbed(_CountCalls):
    """ffnlab's grouped experts op, off by a relative 1e-6."""

    def __enter__(self):
        super().__enter__()
        fn = self.module.grouped_feed_forward
        self.module.grouped_feed_forward = lambda *a, **kw: fn(*a, **kw) * (1 + 1e-6)
        return self


def case_expert_parallel_mismatch_declined(mesh):
    # the check on the ranks is what decides: an experts function off by 1e-6 is declined
    model = _qwen3_moe_ep(torch.float64)
    before = _outputs(model)
    with _Perturbed():
        n, warned = _patch(model, backend="auto")
    assert n == 0, n
    assert ("model.layers.1.mlp (Qwen3MoeSparseMoeBlock: its experts are expert-parallel "
            "(experts.gate_up_proj: Shard(dim=0) over 2 ranks") in warned, warned  # fmt: skip
    assert "and stay with 'eager': with experts_implementation='ffnlab'" in warned, warned
    assert "differ on the ranks by 1e-06 > 1e-10" in warned, warned
    assert model.get_experts_implementation()[""] == "eager"
    _same(before, _outputs(model), {"rtol": 0, "atol": 0})


def case_expert_parallel_explicit_choice_kept(mesh):
    model = _qwen3_moe_ep(torch.float32, experts="batched_mm")
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 0, n
    for i in range(2):
        assert (f"model.layers.{i}.mlp (Qwen3MoeSparseMoeBlock: its experts run "
                "experts_implementation='batched_mm', chosen for this model: kept") in warned, warned  # fmt: skip
    assert "under expert parallelism" in warned, warned
    assert model.get_experts_implementation()[""] == "batched_mm"
    with _CountCalls() as counter:
        _same(before, _outputs(model), {"rtol": 0, "atol": 0})
    assert counter.calls == 0


def case_expert_parallel_unrunnable_declined(mesh):
    # an activation ffnlab has no kernel for: named, and the block keeps its choice
    from torch import nn

    class Cube(nn.Module):
        def forward(self, x):
            return x**3

    model = _qwen3_moe_ep(torch.float64)
    for layer in model.model.layers:
        layer.mlp.experts.act_fn = Cube()
    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 0, n
    assert ("model.layers.0.mlp (Qwen3MoeSparseMoeBlock: its experts are expert-parallel "
            "(experts.gate_up_proj: Shard(dim=0) over 2 ranks") in warned, warned  # fmt: skip
    assert "and stay with 'eager'" in warned and "Cube" in warned, warned
    assert model.get_experts_implementation()[""] == "eager"
    _same(before, _outputs(model), {"rtol": 0, "atol": 0})


# --- transformers' hook-based tensor parallelism (its trees around 5.15), built by hand ------
#
# There the weights are plain nn.Parameter slices (no DTensor) and each style's communication
# is a forward (pre-)hook on the module it names, marked _hf_tp_plan. Qwen3-MoE's plan shards
# its experts: gate_up_proj "packed_colwise" (rank r keeps its block of the gate half and of the
# up half), down_proj "rowwise", and "moe_tp_experts" on the experts module all-reduces their
# partial output (and, backward, the gradients of its hidden-states and routing-weights inputs).


class _AllReduceForward(torch.autograd.Function):
    """Sum over the ranks forward, identity backward (after a rowwise layer)."""

    @staticmethod
    def forward(ctx, x):
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad


class _AllReduceBackward(torch.autograd.Function):
    """Identity forward, sum over the ranks backward (before a colwise layer)."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def _slice(module, name, dim, *, packed=False):
    """Replace ``module.name`` by rank r's block along ``dim`` (of each half when ``packed``)."""
    import torch.distributed as dist
    from torch import nn

    rank, full = dist.get_rank(), getattr(module, name).detach()
    parts = full.chunk(2, dim) if packed else (full,)
    local = torch.cat([p.chunk(WORLD, dim)[rank] for p in parts], dim).contiguous()
    setattr(module, name, nn.Parameter(local))


def _hook_tp(model, style, pre=None, post=None):
    model._hf_tp_plan = style
    if pre is not None:
        model.register_forward_pre_hook(pre)
    if post is not None:
        model.register_forward_hook(lambda mod, args, out: _AllReduceForward.apply(out))


def _hook_tensor_parallel(model):
    """The 5.15 layout of Qwen3-MoE's MLPs: dense ones colwise/rowwise, experts as above."""
    for layer in model.model.layers:
        mlp = layer.mlp
        if hasattr(mlp, "experts"):
            _slice(mlp.experts, "gate_up_proj", 1, packed=True)
            _slice(mlp.experts, "down_proj", 2)
            _hook_tp(mlp.experts, "moe_tp_experts", post=True, pre=lambda mod, args: (
                _AllReduceBackward.apply(args[0]), args[1], _AllReduceBackward.apply(args[2])))  # fmt: skip
            continue
        for name in ("gate_proj", "up_proj"):
            _slice(getattr(mlp, name), "weight", 0)
            _hook_tp(getattr(mlp, name), "colwise",
                     pre=lambda mod, args: (_AllReduceBackward.apply(args[0]),))  # fmt: skip
        _slice(mlp.down_proj, "weight", 1)
        _hook_tp(mlp.down_proj, "rowwise", post=True)
    return model


def _qwen3_moe_hook_tp(dtype, experts="eager"):
    model = _qwen3_moe(mlp_only_layers=[0])
    model.set_experts_implementation(experts)
    return _hook_tensor_parallel(model.to(dtype))


def _hook_tp_patched(model, tol, previous):
    # the block and the layout's hooks stay; the experts run "ffnlab" on this rank's slices
    import ffnlab
    from ffnlab.interop.hf_moe import HFMoE

    before = _outputs(model)
    n, warned = _patch(model, backend="auto")
    assert n == 2 and not warned, (n, warned)
    with _CountCalls() as counter:
        after = _outputs(model)
    _same(before, after, tol)
    assert counter.calls == 2, counter.calls  # 1 MoE layer x (no_grad forward + forward)
    assert not any(isinstance(m, HFMoE) for m in model.modules())
    assert [w.tensor_parallel for w in _wrappers(model)] == [False]  # through the hooked Linears
    assert model.get_experts_implementation()[""] == "ffnlab"
    assert ffnlab.unpatch_hf(model) == 2
    assert model.get_experts_implementation()[""] == previous


def case_hook_tp_moe_float64(mesh):
    # replaced whole, the block skipped the experts' all-reduce: each rank returned its partial
    # sum, and the probe (hooks dropped, local slices) could not see it
    _hook_tp_patched(_qwen3_moe_hook_tp(torch.float64), TOL64, "eager")


def case_hook_tp_moe_grouped_mm_float32(mesh):
    # what from_pretrained(..., tp_plan) gives in those trees: grouped_mm experts, float32
    model = _qwen3_moe_hook_tp(torch.float32, experts="grouped_mm")
    _hook_tp_patched(model, {"rtol": 1e-5, "atol": 1e-5}, "grouped_mm")


def case_hook_tp_moe_interface_without_norm_flag(mesh):
    # those trees' experts interface sets no has_post_expert_norm (it has no such step)
    model = _qwen3_moe_hook_tp(torch.float64)
    del model.model.layers[1].mlp.experts.has_post_expert_norm
    _hook_tp_patched(model, TOL64, "eager")


def case_hook_tp_moe_mismatch_declined(mesh):
    model = _qwen3_moe_hook_tp(torch.float64)
    before = _outputs(model)
    with _Perturbed():
        n, warned = _patch(model, backend="auto")
    assert n == 1, n  # the dense MLP
    assert ("model.layers.1.mlp (Qwen3MoeSparseMoeBlock: its experts are distributed by "
            "transformers' parallel hooks (experts: transformers' 'moe_tp_experts' hooks on local "
            "shards experts.gate_up_proj [4, 8, 16], experts.down_proj [4, 16, 4]) and stay with "
            "'eager'") in warned, warned  # fmt: skip
    assert "differ on the ranks by 1e-06 > 1e-10" in warned, warned
    assert model.get_experts_implementation()[""] == "eager"
    _same(before, _outputs(model), TOL64)


def case_hook_tp_other_module_declined(mesh):
    # a hook-based style on another module of the block (a router's, say): left whole, named
    from ffnlab.interop.hf_moe import HFMoE

    model = _qwen3_moe()
    model.model.layers[1].mlp.gate._hf_tp_plan = "ep_router"
    n, warned = _patch(model, backend="auto")
    assert n == 1, n
    assert ("model.layers.1.mlp (Qwen3MoeSparseMoeBlock: it is distributed by transformers' "
            "hook-based parallel layout (gate: transformers' 'ep_router' hooks on local shards "
            "gate.weight [4, 16])") in warned, warned  # fmt: skip
    assert not isinstance(model.model.layers[1].mlp, HFMoE)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


# --- the pytest side -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    pytest.importorskip("transformers")
    return ranks_results(__file__, tmp_path_factory.mktemp("hf_dist"))


@pytest.mark.parametrize("case", list(CASES))
def test_distributed_case(dist_results, case):
    assert dist_results[case] == "ok", dist_results[case]


def test_local_shards_need_the_megatron_layout():
    import ffnlab
    from ffnlab.local_shards import tensor_parallel_feed_forward, tensor_parallel_mesh

    w1, w2 = torch.randn(8, 4), torch.randn(4, 8)
    assert tensor_parallel_mesh(w1, w2) is None  # plain tensors: no mesh
    with pytest.raises(ffnlab.UsageError, match="W1/W3 .* Shard\\(0\\), W2 Shard\\(1\\)"):
        tensor_parallel_feed_forward(torch.randn(2, 4), w1, w2, activation="relu")


if __name__ == "__main__":
    import transformers  # noqa: F401 - once, before the fork (see tests/gloo_cases.py)
    from transformers import (  # noqa: F401
        LlamaForCausalLM,
        MixtralForCausalLM,
        Phi3ForCausalLM,
        Qwen3MoeForCausalLM,
    )

    import ffnlab  # noqa: F401

    run_ranks(CASES, world=WORLD)
