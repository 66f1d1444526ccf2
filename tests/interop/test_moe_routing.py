"""patch_hf on transformers' routers that are more than a top-k: PhiMoE's sparsemixer and the
group-limited routing of DeepSeek-V2/V3, GLM-4.5 and A.X-K2, in every configuration tried here.

Models come from ``scripts/interop_families.py`` (width 32, two layers); float64 runs use
transformers' eager experts. Each test compares the patched model with the unpatched one:
float64 logits to 1e-12 and every parameter's gradient to 1e-10.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import ffnlab
from ffnlab.interop.hf_moe import HFMoE
from moe_models import build, grads

transformers = pytest.importorskip("transformers")


def _patch(model) -> list[HFMoE]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every block patched: no warning
        ffnlab.patch_hf(model)
    return [m for m in model.modules() if isinstance(m, HFMoE)]


def _same_model(model, inputs, families, *, tol=1e-12, seed=None) -> list[HFMoE]:
    """Patch ``model``; its logits and gradients equal the unpatched ones (``seed``: drawn
    again before each run, for train-mode sampling)."""

    def run():
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            out = families.logits(model, inputs)
        if seed is not None:
            torch.manual_seed(seed)
        return out, grads(model, inputs, families)

    want, want_grads = run()
    blocks = _patch(model)
    assert blocks
    got, got_grads = run()
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert got_grads.keys() == want_grads.keys()
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=max(tol, 1e-10),
                                   atol=max(tol, 1e-10), msg=k)  # fmt: skip
    return blocks


# --- PhiMoE: sparsemixer -------------------------------------------------------------------


def test_phimoe_is_patched_with_the_sparsemixer_router(families):
    model, inputs = build(families, "phimoe")
    blocks = _same_model(model, inputs, families)
    assert len(blocks) == 2
    assert all(b.spec.kind == "sparsemixer" and b.spec.top_k == 2
               and dict(b.spec.router_options) == {"jitter_eps": 0.01} for b in blocks)  # fmt: skip


def test_phimoe_float32(families):
    model, inputs = build(families, "phimoe", dtype=torch.float32)
    with torch.no_grad():
        want = families.logits(model, inputs)
        assert len(_patch(model)) == 2
        got = families.logits(model, inputs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("jitter", [0.0, 0.01, 0.5])
def test_phimoe_train_mode_draws_as_transformers_does(families, jitter):
    """Training mode samples the experts (Gumbel) and scales gates by 1 or 1/3 at random: with
    the generator seeded alike, the patched model draws the same numbers in the same order, so
    its logits and its (straight-through) gradients are the unpatched model's."""
    model, inputs = build(families, "phimoe", router_jitter_noise=jitter)
    model.train()
    with torch.no_grad():
        eval_logits = families.logits(model.eval(), inputs)
        torch.manual_seed(5)
        train_logits = families.logits(model.train(), inputs)
    if jitter == 0.5:  # the sampling and the 1/3 scaling happen: this test can fail
        assert not torch.allclose(train_logits, eval_logits)
    _same_model(model, inputs, families, seed=5)


# --- group-limited routing -----------------------------------------------------------------

# (experts, top_k, n_group, topk_group): transformers' DeepSeek-V3 test config first (8 of 8
# experts with only the 4 of one group selectable), then top_k below, at and above the
# selectable experts, groups of 2, 4 and 8 experts.
GROUP_CONFIGS = [(8, 8, 2, 1), (8, 6, 2, 1), (8, 4, 2, 1), (8, 2, 2, 1), (8, 3, 4, 2),
                 (8, 6, 4, 1), (8, 5, 4, 3), (16, 6, 4, 2), (16, 12, 2, 1), (4, 2, 2, 2)]  # fmt: skip


def _experts(e: int) -> dict:
    return dict(n_routed_experts=e, num_local_experts=e, num_experts=e)


def _bias(model) -> None:
    """A correction bias ``N(-1, 1)``: most selection scores ``sigmoid + bias`` fall below 0,
    where filling the other groups with 0 instead of -inf changes the choice."""
    g = torch.Generator().manual_seed(11)
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buf.copy_(torch.randn(buf.shape, generator=g, dtype=buf.dtype) - 1.0)


@pytest.mark.parametrize("norm,scaling", [(True, 2.5), (False, 1.0)])
@pytest.mark.parametrize("e,k,n_group,topk_group", GROUP_CONFIGS)
def test_deepseek_v3_group_limited_routing(families, e, k, n_group, topk_group, norm, scaling):
    model, inputs = build(families, "deepseek_v3", num_experts_per_tok=k, n_group=n_group,
                           topk_group=topk_group, norm_topk_prob=norm,
                           routed_scaling_factor=scaling, **_experts(e))  # fmt: skip
    _bias(model)
    (block,) = _same_model(model, inputs, families)
    s = block.spec
    assert (s.kind, s.top_k, s.n_group, s.topk_group, s.norm_topk, s.routed_scaling) == (
        "sigmoid", k, n_group, topk_group, norm, scaling)
    assert dict(s.router_options) == {"group_score": "top2", "group_fill": "-inf"}


@pytest.mark.parametrize("e,k,n_group,topk_group", [(8, 3, 4, 2), (8, 6, 4, 1), (8, 8, 2, 1)])
def test_deepseek_v2_group_limited_greedy(families, e, k, n_group, topk_group):
    """DeepSeek-V2: softmax, a group scores its best expert, the other groups score 0 and weigh
    0 when top_k reaches them."""
    model, inputs = build(families, "deepseek_v2", num_experts_per_tok=k, n_group=n_group,
                           topk_group=topk_group, topk_method="group_limited_greedy",
                           **_experts(e))  # fmt: skip
    blocks = _same_model(model, inputs, families)
    assert all(dict(b.spec.router_options) == {"group_score": "max", "group_fill": "zero_gates"}
               and b.spec.n_group == n_group for b in blocks)  # fmt: skip


def test_deepseek_v2_greedy_ignores_its_groups(families):
    model, inputs = build(families, "deepseek_v2", num_experts_per_tok=3, n_group=4,
                           topk_group=1, topk_method="greedy", **_experts(8))  # fmt: skip
    blocks = _same_model(model, inputs, families)
    assert all(b.spec.n_group == 1 for b in blocks)


@pytest.mark.parametrize("family,fill", [("glm4_moe", "-inf"), ("axk2", "zero"),
                                         ("dots1", "-inf"), ("axk1", "-inf")])  # fmt: skip
@pytest.mark.parametrize("e,k,n_group,topk_group", [(8, 3, 4, 2), (8, 8, 2, 1)])
def test_other_group_limited_families(families, family, fill, e, k, n_group, topk_group):
    """GLM-4.5, dots1 and A.X-K1 route as DeepSeek-V3; A.X-K2 fills the other groups with 0
    (its biased scores below 0 then lose to them)."""
    model, inputs = build(families, family, num_experts_per_tok=k, n_group=n_group,
                           topk_group=topk_group, first_k_dense_replace=1,
                           **_experts(e))  # fmt: skip
    _bias(model)
    blocks = _same_model(model, inputs, families)
    assert all(dict(b.spec.router_options)["group_fill"] == fill for b in blocks)


@pytest.mark.parametrize("e,k,n_group,topk_group", [(8, 3, 4, 2), (8, 6, 4, 1)])
def test_mistral4_group_limited_softmax(families, e, k, n_group, topk_group):
    """Mistral 4 fills the other groups with 0 on softmax probabilities (all above 0): the same
    choice as -inf. Its causal LM is not in transformers' auto registry: built directly."""
    config = families.tiny_config("mistral4", num_experts_per_tok=k, n_group=n_group,
                                  topk_group=topk_group, num_key_value_heads=4,
                                  **_experts(e))  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.Mistral4ForCausalLM(config).double().eval()
    model.set_experts_implementation("eager")
    blocks = _same_model(model, families.inputs_for(model), families)
    assert len(blocks) == 2 and all(b.spec.n_group == n_group for b in blocks)
