"""patch_hf on the mixture-of-experts blocks of transformers' MoE families (tiny random models).

Models come from ``scripts/interop_families.py`` (width 32, two layers, 4 experts, top-2). In
float64 the unpatched model runs transformers' eager expert loop (its default ``grouped_mm``
has no float64 kernel on the CPU); the patched one runs ffnlab's fused grouped op (float64:
its per-expert product loop) or the reference loop, and with ``backend="auto"`` the original
block for small calls without gradients.
"""

from __future__ import annotations

import copy
import warnings
from unittest.mock import Mock

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab.interop import hf_moe
from ffnlab.interop.hf import patch_hf_report
from ffnlab.interop.hf_moe import HFMoE
from ffnlab.ops import dispatch
from ffnlab.ops.routes_loop import ROUTES_LOOP_MAX
from moe_models import build, grads

transformers = pytest.importorskip("transformers")

# family -> float64 tolerance of the logits (relative): 1e-12 where ffnlab computes what the
# block computes; GraniteMoE's softmax of the top-k logits is ffnlab's renormalised softmax
# (the same in exact arithmetic) rounded to float32 by the block, so only ~1e-7 there.
FAMILIES = {
    "mixtral": 1e-12,
    "qwen2_moe": 1e-12,  # shared expert + sigmoid shared gate, no renormalisation
    "qwen3_moe": 1e-12,
    "olmoe": 1e-12,
    "deepseek_v3": 1e-12,  # sigmoid + correction bias, 2 groups, shared experts
    "deepseek_v2": 1e-12,
    "gpt_oss": 1e-12,  # logit bias, interleaved [E, dim, 2I], biases, clamped SwiGLU
    "llama4_text": 1e-12,  # gates on the input, [T, dim] output, returns router logits
    "granitemoe": 1e-6,
    "minimax": 1e-12,
    "hunyuan_v1_moe": 1e-12,  # router weight inside gate.wg
    "jetmoe": 1e-6,  # experts in two children, output bias; top-k logits' softmax in float32
    "ergo": 1e-12,  # ReLU² experts, a learned RMSNorm per expert, shared expert with a norm
    "axk1": 1e-12,  # DeepSeek-V3's block with an RMSNorm of its output
}
# families whose first layer is dense (one MoE block in the two layers)
DENSE_FIRST = {"deepseek_v3", "ergo", "axk1"}


def _blocks(model) -> list[HFMoE]:
    return [m for m in model.modules() if isinstance(m, HFMoE)]


# "auto" runs the original block for calls without gradients this small (HFMoE.plain_size),
# "fused" always ffnlab's router and grouped experts: both must give the block's function.
@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_float64_logits_gradients_keys_and_unpatch(families, family, backend):
    model, inputs = build(families, family)
    with torch.no_grad():
        want = families.logits(model, inputs)
    want_grads = grads(model, inputs, families)
    keys = list(model.state_dict())
    params = {k: p for k, p in model.named_parameters()}
    originals = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left: no warning
        n = ffnlab.patch_hf(model, backend=backend)
    blocks = _blocks(model)
    # one MoE block per layer; DeepSeek-V3's and Ergo's layer 0 is dense
    assert len(blocks) == (1 if family in DENSE_FIRST else 2)
    assert n == len(blocks) + (family in DENSE_FIRST)
    assert list(model.state_dict()) == keys
    assert all(params[k] is p for k, p in model.named_parameters())  # shared, not copied
    stored = blocks[0].get_parameter(blocks[0].spec.up)
    w1 = blocks[0].expert_weights()[0]
    assert w1.untyped_storage().data_ptr() == stored.untyped_storage().data_ptr()
    tol = FAMILIES[family]
    with torch.no_grad():
        torch.testing.assert_close(families.logits(model, inputs), want, rtol=tol, atol=tol)
    got_grads = grads(model, inputs, families)
    assert got_grads.keys() == want_grads.keys()
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=max(tol, 1e-10),
                                   atol=max(tol, 1e-10), msg=k)  # fmt: skip
    assert ffnlab.unpatch_hf(model) == n
    restored = dict(model.named_modules())
    assert restored.keys() == originals.keys()
    assert all(restored[k] is m for k, m in originals.items())


def test_recompute_reaches_the_experts_and_shared_expert(families):
    """patch_hf(recompute=...) reaches a mixture-of-experts block's routed experts (the grouped
    fused op saves less under "full") and its patched shared expert."""
    from ffnlab.ops.memory import saved_tensor_bytes

    saved = {}
    for mode in ("none", "full"):
        model, _ = build(families, "qwen2_moe", dtype=torch.float32)
        assert patch_hf_report(model, backend="fused", recompute=mode)[1] == []
        block = _blocks(model)[0]
        assert block.recompute == mode and block.shared_expert.recompute == mode
        x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
        saved[mode], _ = saved_tensor_bytes(lambda b=block, x=x: b(x), exclude=model.parameters())
    assert saved["none"] > saved["full"], saved


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "gpt_oss", "deepseek_v3", "ergo"])
def test_float32_fused_and_reference_backends(families, family):
    """float32, transformers' default grouped_mm experts against ffnlab's fused grouped op
    (and the reference loop): logits ~1e-5, gradients ~1e-4."""
    model, inputs = build(families, family, dtype=torch.float32)
    with torch.no_grad():
        want = families.logits(model, inputs)
    want_grads = grads(model, inputs, families)
    for backend in ("fused", "reference"):  # "auto" would call the blocks at these sizes
        assert patch_hf_report(model, backend=backend)[1] == []
        assert all(b.backend == backend for b in _blocks(model))
        with torch.no_grad():
            torch.testing.assert_close(families.logits(model, inputs), want, rtol=1e-5,
                                       atol=1e-6)  # fmt: skip
        got = grads(model, inputs, families)
        for k in want_grads:
            torch.testing.assert_close(got[k], want_grads[k], rtol=1e-4, atol=1e-6, msg=k)
        ffnlab.unpatch_hf(model)


def test_router_logits_and_aux_loss_unchanged(families):
    """transformers' recorded router logits (forward hooks on the router) and its
    load-balancing loss, with gradients to the router, are the same once patched."""
    model, inputs = build(families, "mixtral")
    labels = inputs["input_ids"]

    def run():
        model.zero_grad(set_to_none=True)
        out = model(**inputs, labels=labels, output_router_logits=True, use_cache=False)
        out.loss.backward()
        gate = model.model.layers[0].mlp.gate.weight.grad.clone()
        return out.loss.detach(), out.aux_loss.detach(), [r.detach() for r in out.router_logits], gate

    want = run()
    assert ffnlab.patch_hf(model) == 2
    got = run()
    assert isinstance(model.model.layers[0].mlp, HFMoE)
    for a, b in zip(got[:2], want[:2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert len(got[2]) == len(want[2]) == 2
    for a, b in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[3], want[3], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "family", ["gpt_oss", "minimax_m2", "afmoe", "llama4_text", "deepseek_v3", "jetmoe"]
)
def test_recorded_router_logits_of_other_router_calls(families, family):
    """Routers called with the block's input as it came (DeepSeek, AFMoE), with the block's
    own correction bias (MiniMax-M2, AFMoE), returning ``(scores, logits)`` (Llama 4) or five
    values (JetMoE): transformers records the same router logits once patched."""
    model, inputs = build(families, family)

    def recorded():
        with torch.no_grad():
            out = model(**inputs, output_router_logits=True, use_cache=False)
        return out.router_logits

    want = recorded()
    assert patch_hf_report(model)[1] == []
    got = recorded()
    assert len(got) == len(want) > 0
    tol = FAMILIES.get(family, 1e-12)  # JetMoE: later layers see its float32 rounding
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_gpt_oss_returns_its_gates(families):
    model, _ = build(families, "gpt_oss")
    block = model.model.layers[0].mlp
    x = torch.randn(2, 3, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    want_y, want_scores = block(x)
    ffnlab.patch_hf(model)
    wrapper = model.model.layers[0].mlp
    assert wrapper.spec.returns == "gates" and wrapper.spec.interleaved and wrapper.spec.biases
    y, scores = wrapper(x)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(scores, want_scores, rtol=1e-12, atol=1e-12)


class _HalfTemperatureRouter(nn.Module):
    """Mixtral's router with its logits doubled: a router no candidate computes."""

    def __init__(self, router: nn.Module) -> None:
        super().__init__()
        self.top_k, self.weight = router.top_k, router.weight

    def forward(self, x):
        logits = 2 * nn.functional.linear(x, self.weight)
        top, idx = logits.softmax(-1).topk(self.top_k, dim=-1)
        return logits, top / top.sum(-1, keepdim=True), idx


def test_a_block_that_fails_the_probe_is_left_with_the_reason(families):
    model, inputs = build(families, "mixtral")
    odd = model.model.layers[1].mlp
    odd.gate = _HalfTemperatureRouter(odd.gate)
    with torch.no_grad():
        want = families.logits(model, inputs)
    keys = list(model.state_dict())
    count, left = patch_hf_report(model)
    assert count == 1 and len(left) == 1
    assert left[0].startswith("model.layers.1.mlp (MixtralSparseMoeBlock: no candidate matches")
    assert model.model.layers[1].mlp is odd  # the original stays
    assert isinstance(model.model.layers[0].mlp, HFMoE)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(families.logits(model, inputs), want, rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning, match="left 1 MLP module"):
        assert ffnlab.patch_hf(model) == 0


@pytest.mark.parametrize("family", ["qwen2_moe", "ergo"])
def test_save_pretrained_round_trip(families, family, tmp_path):
    """A patched model saves what the unpatched one would: a fresh load gives its logits."""
    model, inputs = build(families, family, dtype=torch.float32)
    ffnlab.patch_hf(model)
    with torch.no_grad():
        for p in model.parameters():  # away from the seeded initialisation
            p.add_(0.01 * torch.randn_like(p))
        want = families.logits(model, inputs)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert not _blocks(loaded)
    with torch.no_grad():
        torch.testing.assert_close(families.logits(loaded, inputs), want, rtol=1e-5, atol=1e-6)


def test_ergo_expert_norm_and_shared_output_norm(families):
    """Ergo: each route's output through its expert's RMSNorm (computed in float32, as the
    block does) on the stored ``post_expert_norm.weight``, whose gradient flows; the shared
    expert, a ReLU² MLP followed by an RMSNorm, is an HFMLP with that norm on its output."""
    model, inputs = build(families, "ergo")
    assert ffnlab.patch_hf(model) == 2
    (block,) = _blocks(model)
    norm = block.out_norm()
    assert norm.weight is block.experts.post_expert_norm.weight and norm.dtype == torch.float32
    assert norm.eps == model.config.rms_norm_eps
    assert block.shared_experts.spec.out_norm == "norm"
    assert block.shared_experts.spec.input_norm is None
    grads(model, inputs, families)
    assert block.experts.post_expert_norm.weight.grad.abs().sum() > 0


# --- which path a call takes (backend "auto") ----------------------------------------------


def _counting_original(block: HFMoE) -> list[int]:
    """How many times the original block's forward ran (the wrapper calls it directly)."""
    calls = [0]
    forward = block.original.forward

    def counted(*args, **kw):
        calls[0] += 1
        return forward(*args, **kw)

    block.original.forward = counted
    return calls


def _counting_loop(monkeypatch) -> Mock:
    """The routes loop as HFMoE calls it, counting (``call_count``)."""
    spy = Mock(wraps=hf_moe.loop_routes)
    monkeypatch.setattr(hf_moe, "loop_routes", spy)
    return spy


@pytest.mark.parametrize("family", ["qwen3_moe", "qwen2_moe", "deepseek_v3"])
def test_small_calls_run_the_routes_loop_or_the_original_block(families, family, monkeypatch):
    """Without gradients on a CPU, a decoding step (a few routes) runs ffnlab's router and the
    routes loop; other small calls (more routes, or gradients) call the original block, which
    computes what ffnlab's reference does (float64, gradients too); once the calls count as
    large ffnlab's own path runs with the same result."""
    model, _ = build(families, family)
    ref_model, _ = build(families, family)
    assert ffnlab.patch_hf(ref_model, backend="reference") > 0 and ffnlab.patch_hf(model) > 0
    block, ref_block = _blocks(model)[0], _blocks(ref_model)[0]
    calls, loops = _counting_original(block), _counting_loop(monkeypatch)
    g = torch.Generator().manual_seed(0)
    looped = 0
    for shape in ((1, 1, 32), (3, 1, 32), (2, 5, 32)):
        x = torch.randn(shape, dtype=torch.float64, generator=g)
        with torch.no_grad():
            got, want = block(x), ref_block(x)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        tokens = shape[0] * shape[1]
        looped += tokens == 1 or tokens * block.spec.top_k <= ROUTES_LOOP_MAX
    assert looped >= 1 and loops.call_count == looped and calls[0] == 3 - looped
    x = torch.randn(1, 1, 32, dtype=torch.float64, generator=g, requires_grad=True)
    cot = torch.randn(1, 1, 32, dtype=torch.float64, generator=g)
    (gx,) = torch.autograd.grad(_first(block(x)), x, cot)
    (want_gx,) = torch.autograd.grad(_first(ref_block(x)), x, cot)
    torch.testing.assert_close(gx, want_gx, rtol=1e-12, atol=1e-12)
    assert calls[0] == 4 - looped and loops.call_count == looped  # with gradients: the block
    monkeypatch.setattr(dispatch, "FUSED_MIN_ELEMENTS", 1)
    with torch.no_grad():
        torch.testing.assert_close(block(x), ref_block(x), rtol=1e-12, atol=1e-12)
    (gx,) = torch.autograd.grad(_first(block(x)), x, cot)
    torch.testing.assert_close(gx, want_gx, rtol=1e-12, atol=1e-12)
    assert calls[0] == 4 - looped and loops.call_count == looped  # large: ffnlab's grouped path


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def test_forced_backends_never_call_the_original_block(families):
    for backend in ("fused", "reference"):
        model, _ = build(families, "qwen3_moe")
        ffnlab.patch_hf(model, backend=backend)
        block = _blocks(model)[0]
        calls = _counting_original(block)
        with torch.no_grad():
            block(torch.randn(1, 1, 32, dtype=torch.float64))
        assert calls[0] == 0, backend


def test_a_child_or_tensor_replaced_on_the_wrapper_is_what_runs(families):
    """Replacing the router on the wrapper after patching (or a tensor, as ``.to()`` replaces
    a block's own buffers on the wrapper only) stops the calls to the original block: the
    wrapper's router and tensors are what run."""
    model, _ = build(families, "qwen3_moe")
    ffnlab.patch_hf(model)
    block = _blocks(model)[0]
    calls = _counting_original(block)
    x = torch.randn(1, 1, 32, dtype=torch.float64)
    assert block.original_is_current()
    new_gate = copy.deepcopy(block.gate)
    with torch.no_grad():
        new_gate.weight.mul_(-3.0)
    block.gate = new_gate
    assert not block.original_is_current()
    with torch.no_grad():
        got = block(x)
    assert calls[0] == 0
    fused = copy.deepcopy(block)
    fused.backend = "fused"
    with torch.no_grad():
        torch.testing.assert_close(got, fused(x), rtol=1e-12, atol=1e-12)
    block.gate = block.original.gate
    assert block.original_is_current()
    block.register_buffer("extra", torch.zeros(1))  # not the original's: harmless
    assert block.original_is_current()
    block.original.register_buffer("scale", torch.ones(1))
    block.register_buffer("scale", torch.ones(1))  # a different tensor than the original's
    assert not block.original_is_current()


def test_outputs_follow_the_weights_after_training_and_load_state_dict(families):
    model, inputs = build(families, "qwen3_moe")
    ffnlab.patch_hf(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(2):
        grads(model, inputs, families)
        opt.step()
    fresh, _ = build(families, "qwen3_moe")
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        stepped = families.logits(model, inputs)
        torch.testing.assert_close(stepped, families.logits(fresh, inputs), rtol=1e-12,
                                   atol=1e-12)  # fmt: skip
        for p in fresh.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        got = families.logits(model, inputs)
        torch.testing.assert_close(got, families.logits(fresh, inputs), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, stepped)


def test_train_mode_reaches_the_original_block(families):
    model, _ = build(families, "qwen3_moe")
    ffnlab.patch_hf(model)
    block = _blocks(model)[0]
    model.train()  # with gradients a small call runs the block (without, the routes loop)
    block(torch.randn(1, 1, 32, dtype=torch.float64))
    assert block.original.training
    model.eval()
    block(torch.randn(1, 1, 32, dtype=torch.float64))
    assert not block.original.training
