"""ffnlab's grouped experts as transformers' experts implementation ``"ffnlab"`` (register_hf),
and patch_hf keeping the experts implementation a user chooses.

Tiny random models built in code (width 32, two layers, 4 experts, top-2), float64 against
transformers' eager expert loop; the interface's function is wrapped in a ``Mock`` (as
transformers' own test of its implementations does) so that each test sees it run.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from unittest.mock import Mock, patch

import pytest
import torch
from torch import nn

import ffnlab
from ffnlab.errors import UsageError
from ffnlab.interop.hf_experts import experts_forward, experts_plan
from ffnlab.interop.hf_moe import HFMoE

transformers = pytest.importorskip("transformers")
moe_api = pytest.importorskip("transformers.integrations.moe")

MAPPING = "transformers.integrations.moe.ALL_EXPERTS_FUNCTIONS._global_mapping"
SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=64, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)  # fmt: skip
CONFIGS = {
    "mixtral": lambda **kw: transformers.MixtralConfig(
        **SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2, **kw),
    "qwen3_moe": lambda **kw: transformers.Qwen3MoeConfig(
        **SMALL, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        norm_topk_prob=True, **kw),
    # interleaved [E, dim, 2I] with biases and the clamped SwiGLU of its own _apply_gate
    "gpt_oss": lambda **kw: transformers.GptOssConfig(
        **SMALL, head_dim=8, num_local_experts=4, num_experts_per_tok=2, **kw),
    # sigmoid routing with a correction bias, 2 groups, shared experts; layer 1 is the MoE
    "deepseek_v3": lambda **kw: transformers.DeepseekV3Config(
        **SMALL, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
        first_k_dense_replace=1, n_group=2, topk_group=1, kv_lora_rank=8, q_lora_rank=8,
        qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, **kw),
}  # fmt: skip
IDS = torch.randint(3, 64, (2, 7), generator=torch.Generator().manual_seed(3))
# Families whose experts ffnlab cannot compute, with what it names: a clamp on both halves
# without GPT-OSS's alpha and +1 (SiLU(min(g, limit)) * clamp(u)); Beam's gate rounds to float32
# whatever the model's dtype (not the float64 function ffnlab computes).
UNSUPPORTED = {"deepseek_v4": "_apply_gate", "hy_v4": "_apply_gate", "beam": "_apply_gate"}
# What puts a mixture of experts in the tiny two-layer models of these families.
WITH_EXPERTS = {
    "gemma4_text": dict(enable_moe_block=True, top_k_experts=2),
    "flint": dict(mlp_only_layers=[0]),
    "beam": dict(mlp_layer_types=["dense", "sparse"], n_group=2, topk_group=1),
    "bailing_hybrid": dict(first_k_dense_replace=1, n_group=2, topk_group=1),
}


@pytest.fixture(autouse=True)
def _registered():
    ffnlab.register_hf()


def _model(family: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family](**kw))
    return model.to(torch.float64).eval()


def _logits_and_grads(model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    logits = model(IDS, use_cache=False).logits
    logits.pow(2).mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    scale = max(a.abs().max().item(), 1e-30)
    assert (a - b).abs().max().item() <= tol * scale


def _ffnlab_runs():
    """A context in which the interface's ``"ffnlab"`` is a Mock wrapping it (call counts)."""
    mock = Mock(wraps=experts_forward)
    return mock, patch.dict(MAPPING, {"ffnlab": mock})


@pytest.mark.parametrize("family", list(CONFIGS))
@pytest.mark.parametrize("route", ["config", "set"])
def test_ffnlab_matches_eager_logits_and_gradients(family, route):
    eager = _model(family)
    eager.set_experts_implementation("eager")
    want, want_grads = _logits_and_grads(eager)
    if route == "config":
        model = _model(family, experts_implementation="ffnlab")
    else:
        model = _model(family)
        model.set_experts_implementation("ffnlab")
    assert model.get_experts_implementation()[""] == "ffnlab"
    mock, ctx = _ffnlab_runs()
    with ctx:
        got, grads = _logits_and_grads(model)
    assert mock.call_count >= 1
    _close(want, got)
    assert grads.keys() == want_grads.keys()
    for k in want_grads:
        _close(want_grads[k], grads[k])


@pytest.mark.parametrize("family", list(CONFIGS))
def test_from_pretrained_with_experts_implementation_ffnlab(family, tmp_path):
    model = _model(family)
    model.save_pretrained(tmp_path)
    model.set_experts_implementation("eager")
    want = model(IDS).logits.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, experts_implementation="ffnlab", dtype=torch.float64
        ).eval()
    assert loaded.config._experts_implementation == "ffnlab"
    mock, ctx = _ffnlab_runs()
    with ctx, torch.no_grad():
        got = loaded(IDS).logits
    assert mock.call_count >= 1
    _close(want, got)


def _decorated_families() -> list[str]:
    """Causal-LM families whose modeling file uses transformers' experts interface."""
    import importlib
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    out = []
    for family in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        name = CONFIG_MAPPING[family].__module__.replace(".configuration_", ".modeling_")
        try:
            source = inspect.getsource(importlib.import_module(name))
        except Exception:  # noqa: BLE001 - a family that does not import is not listed
            continue
        if "@use_experts_implementation" in source:
            out.append(family)
    return out


@pytest.mark.parametrize("family", _decorated_families())
def test_every_family_of_the_interface(families, family):
    """Every causal-LM family using the interface: eager's float64 logits, or a UsageError
    naming what ffnlab cannot compute for the families listed in UNSUPPORTED."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = families.build_model(family, dtype=torch.float64,
                                         **WITH_EXPERTS.get(family, {}))  # fmt: skip
        inputs = families.inputs_for(model)
        one = {"input_ids": inputs["input_ids"][:1, :1]}  # a decoding step: the routes loop
        model.set_experts_implementation("eager")
        with torch.no_grad():
            want, want_one = families.logits(model, inputs), families.logits(model, one)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"{family} does not build or run tinily in float64: {exc}"[:200])
    if not any(hasattr(m, "has_gate") for m in model.modules()):
        pytest.skip(f"{family}'s tiny model has no experts (its mixture-of-experts layers start later)")
    model.set_experts_implementation("ffnlab")
    mock, ctx = _ffnlab_runs()
    if family in UNSUPPORTED:
        with ctx, pytest.raises(UsageError, match=UNSUPPORTED[family]):
            families.logits(model, inputs)
        return
    with ctx, torch.no_grad():
        got, got_one = families.logits(model, inputs), families.logits(model, one)
    assert mock.call_count >= 2
    _close(want, got)
    _close(want_one, got_one)


def test_register_is_explicit_idempotent_and_imports_nothing_at_import_time():
    code = (
        "import sys, ffnlab\n"
        "assert 'transformers' not in sys.modules\n"
        "from transformers.integrations.moe import ExpertsInterface\n"
        "assert 'ffnlab' not in ExpertsInterface()\n"
        "assert ffnlab.register_hf() == ffnlab.register_hf() == 'ffnlab'\n"
        "from ffnlab.interop.hf_experts import experts_forward\n"
        "assert ExpertsInterface()['ffnlab'] is experts_forward\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_register_without_transformers_is_a_usage_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers.integrations.moe", None)
    with pytest.raises(UsageError, match="needs transformers 5"):
        ffnlab.register_hf()


def test_register_over_another_function_is_a_usage_error():
    with patch.dict(MAPPING, {"ffnlab": lambda *a: None}):
        with pytest.raises(UsageError, match="already holds another function"):
            ffnlab.register_hf()


def _experts_class(**flags):
    """A tiny experts class decorated with ``flags`` (gate_up [E, 2I, dim], SiLU)."""

    class Experts(nn.Module):
        def __init__(self, config):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.num_experts = 3
            self.gate_up_proj = nn.Parameter(torch.randn(3, 8, 6, generator=g, dtype=torch.float64))
            self.down_proj = nn.Parameter(torch.randn(3, 6, 4, generator=g, dtype=torch.float64))
            self.act_fn = nn.SiLU()
            self.post_expert_norm = nn.RMSNorm(6, eps=1e-6, dtype=torch.float64)

        def forward(self, x, idx, w):  # the eager loop, with the output norm where flagged
            out = torch.zeros_like(x)
            for e in range(self.num_experts):
                t, j = torch.where(idx == e)
                gate, up = nn.functional.linear(x[t], self.gate_up_proj[e]).chunk(2, dim=-1)
                y = nn.functional.linear(self.act_fn(gate) * up, self.down_proj[e])
                if self.has_post_expert_norm:
                    y = self.post_expert_norm(y)
                out.index_add_(0, t, y * w[t, j, None])
            return out

    return moe_api.use_experts_implementation(Experts, **flags)


def _experts(**flags) -> nn.Module:
    config = transformers.PretrainedConfig()
    config._experts_implementation = "eager"
    module = _experts_class(**flags)(config)
    with torch.no_grad():
        module.post_expert_norm.weight.uniform_(0.5, 1.5)
    return module


def _routes(tokens: int = 5):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tokens, 6, generator=g, dtype=torch.float64)
    idx = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(tokens)])
    return x, idx, torch.rand(tokens, 2, generator=g, dtype=torch.float64)


def test_post_expert_norm_runs_on_each_route():
    experts = _experts(has_post_expert_norm=True)
    x, idx, w = _routes()
    _close(experts(x, idx, w), experts_forward(experts, x, idx, w))
    plain = _experts()
    _close(plain(x, idx, w), experts_forward(plain, x, idx, w))
    assert (experts(x, idx, w) - plain(x, idx, w)).abs().max() > 1e-3  # the norm mattered


@pytest.mark.parametrize("flagged", [True, False])
@pytest.mark.parametrize("tokens", [6, 1])  # the grouped op; one token's routes loop
def test_expert_parallel_sentinels_are_dropped_as_batched_mm_drops_them(flagged, tokens):
    """ids >= num_experts belong to other ranks (weight 0), whether or not the experts carry
    transformers' ``_is_expert_parallel`` flag (its releases before the flag send them too)."""
    experts = _experts()
    experts._is_expert_parallel = flagged
    x, idx, w = _routes(tokens)
    idx[0, 1] = 3
    if tokens > 3:
        idx[3, 0] = 3
    w = w.masked_fill(idx >= 3, 0.0)
    experts._is_expert_parallel = True  # what batched_mm needs to drop them
    want = moe_api.batched_mm_experts_forward(experts, x, idx, w)
    experts._is_expert_parallel = flagged
    with torch.no_grad():
        _close(want, experts_forward(experts, x, idx, w))
        negative = idx.masked_fill(idx >= 3, -1)  # dropped too, never an error on one rank
        _close(want, experts_forward(experts, x, negative, w))


def test_layouts_ffnlab_cannot_run_are_usage_errors_naming_them():
    x, idx, w = _routes()
    with pytest.raises(UsageError, match="is_concatenated=False"):
        experts_forward(_experts(is_concatenated=False), x, idx, w)
    odd = _experts()
    del odd.act_fn
    odd.act_fn = lambda t: t * torch.tanh(t)  # no ffnlab name
    with pytest.raises(UsageError, match="act_fn"):
        experts_forward(odd, x, idx, w)
    with pytest.raises(UsageError, match="'has_gate'"):
        experts_plan(nn.Linear(2, 2))


# --- patch_hf keeps the experts implementation the user chooses -----------------------------


def _patched(family: str, dtype=torch.float32) -> nn.Module:
    model = _model(family).to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ffnlab.patch_hf(model) > 0
    return model


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_eager_matches_batched_and_grouped_inference_on_a_patched_model(family, tmp_path):
    """What transformers' test_eager_matches_batched_and_grouped_inference (fp32) checks, on a
    patched model: each implementation set after patching is the one that runs."""
    model = _patched(family)
    assert model.config._experts_implementation == "ffnlab"  # what runs, as the model says
    batched = Mock(wraps=moe_api.batched_mm_experts_forward)
    grouped = Mock(wraps=moe_api.grouped_mm_experts_forward)
    outputs = {}
    with torch.no_grad(), patch.dict(MAPPING, {"batched_mm": batched, "grouped_mm": grouped}):
        for name in ("eager", "batched_mm", "grouped_mm", "ffnlab"):
            batched.reset_mock()
            grouped.reset_mock()
            model.set_experts_implementation(name)
            assert model.config._experts_implementation == name
            outputs[name] = model(IDS).logits
            assert batched.called == (name == "batched_mm")
            # "ffnlab" at these (decoding) sizes runs the block with the implementation it
            # replaced, grouped_mm (test_small_calls_run_the_implementation_patching_replaced)
            assert grouped.called == (name in ("grouped_mm", "ffnlab"))
    assert any(isinstance(m, HFMoE) for m in model.modules())
    for name in ("batched_mm", "grouped_mm", "ffnlab"):
        torch.testing.assert_close(outputs["eager"], outputs[name], rtol=1e-4, atol=1e-4)


def test_unpatch_gives_back_the_replaced_choice():
    model = _patched("mixtral")
    assert model.config._experts_implementation == "ffnlab"
    ffnlab.unpatch_hf(model)
    assert model.config._experts_implementation == "grouped_mm"


def test_patched_float64_runs_ffnlab_and_a_later_eager_runs_eager():
    model = _model("mixtral")
    model.set_experts_implementation("eager")
    want, want_grads = _logits_and_grads(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # fused: ffnlab's grouped op at every size (auto hands these tiny calls to the original)
        ffnlab.patch_hf(model, backend="fused")
    got, grads = _logits_and_grads(model)
    _close(want, got)
    for k in want_grads:
        _close(want_grads[k], grads[k])
    assert model.config._experts_implementation == "ffnlab"
    calls = []
    for m in model.modules():
        if isinstance(m, HFMoE):
            m.experts.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        model(IDS)
    assert not calls  # ffnlab computes the experts itself
    model.set_experts_implementation("eager")
    with torch.no_grad():
        _close(want, model(IDS).logits)
    assert len(calls) == 2  # the experts module runs eager in each patched block


def test_an_explicit_choice_is_kept_and_reported():
    model = _model("qwen3_moe").float()
    model.set_experts_implementation("batched_mm")
    with pytest.warns(UserWarning, match="experts_implementation='batched_mm'"):
        ffnlab.patch_hf(model)
    assert not any(isinstance(m, HFMoE) for m in model.modules())
    assert model.config._experts_implementation == "batched_mm"


# --- benchmarks/hf_experts.py at tiny sizes ---------------------------------------------------


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "hf_experts.py"
    spec = importlib.util.spec_from_file_location("bench_hf_experts", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_hf_experts", module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["bench_hf_experts"])
    return sys.modules["bench_hf_experts"]


def test_benchmark_runs_at_tiny_sizes():
    bench = _bench_module()
    cfg = bench.HFExpertsBench(dim=16, hidden=8, experts=4, top_k=2, prefill_tokens=8,
                               repeats=2, batched_limit_gb=1e-5)  # fmt: skip
    result = bench.run(cfg)
    decode, prefill = result["phases"]["decode"]["rows"], result["phases"]["prefill"]["rows"]
    assert set(decode) == set(prefill) == set(bench.IMPLEMENTATIONS)
    for name in bench.IMPLEMENTATIONS:
        assert decode[name]["ms"] > 0 and decode[name]["max_abs_diff_vs_eager"] < 1e-5
    assert decode["ffnlab"]["vs_ffnlab"] == 1.0
    assert "gather" in prefill["batched_mm"]["skipped"]  # 8 x 2 routes x 1.5 kB > 10 kB
    text = bench.table(result)
    assert "ffnlab" in text and "skipped" in text
    with pytest.raises(ValueError, match="top_k"):
        bench.HFExpertsBench(experts=2, top_k=3)


def test_small_calls_run_the_implementation_patching_replaced():
    """At small sizes with gradients a patched block runs the original block
    (``HFMoE.plain_size``) with the implementation ``"ffnlab"`` replaced (transformers'
    ``grouped_mm`` by default), since that is the faster one there (without gradients on a CPU
    ffnlab's routes loop runs, neither implementation); the model's choice reads ``"ffnlab"``
    before, after and when the call fails."""
    model = _patched("qwen3_moe")
    grouped = Mock(wraps=moe_api.grouped_mm_experts_forward)
    ours = Mock(wraps=experts_forward)
    with patch.dict(MAPPING, {"grouped_mm": grouped, "ffnlab": ours}):
        with torch.no_grad():
            model(IDS[:, :1])
        assert not grouped.called and not ours.called
        model(IDS[:, :1])
        assert grouped.called and not ours.called
        assert model.config._experts_implementation == "ffnlab"
        grouped.side_effect = RuntimeError("boom")
        with pytest.raises(RuntimeError, match="boom"):
            model(IDS[:, :1])
    assert model.config._experts_implementation == "ffnlab"
