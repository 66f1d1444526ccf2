"""patch_hf on a tiny random model of every causal-LM family of the installed transformers.

Each family is built once (``scripts/interop_families.py``'s ``build_model``: width 32, two
layers); one test per family checks the FFN count (a mixture-of-experts block counts as one),
logits (float32 rtol 1e-5, float64 1e-10), gradients of every parameter, the state-dict keys
and ``unpatch_hf``. Families whose config does not build offline, or whose tiny model does not
run on ``input_ids``, are skipped with the reason; a family with an FFN ffnlab leaves must be
listed in ``NOT_PATCHED`` with why, so a family transformers adds later fails here until it is
patched or listed.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import pytest
import torch

import ffnlab
from ffnlab.interop.hf_modules import HFFeedForward
from ffnlab.interop.hf_moe import HFMoE

transformers = pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "interop_families", ROOT / "scripts" / "interop_families.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("interop_families", module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["interop_families"])
    return sys.modules["interop_families"]


survey = _load_script()

# Families left (wholly or partly) unpatched, with the reason the survey reports.
NOT_PATCHED = {
    # mixture-of-experts blocks left, with the reason patch_hf_report gives
    # hash routing (tid2eid: experts by token id) on its first layers
    "deepseek_v4": "no router, expert layout or return form of ffnlab runs on the probe",
    # shared experts stacked 3-D too; a router weight [6, dim] for 4 experts, a global scale
    "inkling_text": "InklingMoE: holds 2 stacks of 3-D experts (experts, shared_experts)",
    "zaya": "its child gate (ZayaRouter) has no known role",  # an MLP router
    "inkling2_text": "its experts' activation Inkling2SoftcappedSwiGLU has no ffnlab",
    "inkling2_loop_text": "its experts' activation Inkling2LoopSoftcappedSwiGLU has no ffnlab",
    # SwiGLU with clamps but no +1 on the value branch: not GPT-OSS's clamped_swiglu
    "minimax_m3_vl_text": "hold no activation module ffnlab can name",
    "hy_v4": "HYV4MoE: its experts (HYV4Experts) hold no activation module ffnlab can name",
    # top-k of logits + bias, sigmoid gates on the output: no ffnlab router
    "kolibri1": "Kolibri1SparseMoeBlock: no candidate matches it",
    "kolibri1_1": "Kolibri1_1SparseMoeBlock: no candidate matches it",  # kolibri1's router
    # router weight [E + zero experts, dim]: zero-computation (identity) experts, no FFN
    "longcat_flash": "its child router (LongcatFlashTopkRouter) has no known role",
    **dict.fromkeys(
        ["bart", "bigbird_pegasus", "biogpt", "blenderbot", "blenderbot-small", "marian",
         "mbart", "mvp", "opt", "pegasus", "plbart", "trocr", "whisper", "xglm"],
        "the FFN is written inline"),
    **dict.fromkeys(["mamba", "mamba2", "falcon_mamba"], "no module holds an MLP's projections"),
    "cpmant": "CpmAntFFNBlock: holds no two or three projections",  # nested gated projection
    "rwkv": "fit no plain, gated or packed MLP",  # receptance-gated, token-shifted
    "dory": "no candidate matches it",  # learnable per-unit scales on both branches
    "xlnet": "no candidate matches it",  # residual and LayerNorm inside the FFN module
    "gemma4": "Gemma4AudioFeedForward: no candidate matches it",  # clamps, norms, residual
    "zamba2": "Zamba2MLP: holds no two or three projections",  # per-layer LoRA adapter list
    "reformer": "ChunkReformerFeedForward: holds no two or three projections",  # nested
}  # fmt: skip
# The model itself rounds to float32 inside the MLP (BeamMLP computes act(gate.float())), so
# its float64 logits cannot agree to 1e-10; float32 still must.
# Likewise the MoE blocks that round to float32 whatever the input: routers taking the top-k
# logits' softmax in float32 (ffnlab computes the same in exact arithmetic as renormalised
# probabilities), HY-V3's float32 sum of routed and shared experts, Nemotron-H's float32
# accumulator of the routed experts; ~1e-8 in float64.
FLOAT64_ROUNDS = {"beam", "cohere2_moe", "granitemoe", "granitemoe_swa", "granitemoeshared",
                  "granitemoehybrid", "jetmoe", "lfm2_moe", "hy_v3", "nemotron_h"}  # fmt: skip
# Families whose MLPs exercise one feature of the recognition: what their specs must say.
FEATURES = {
    "falcon_h1": lambda specs: all(s.gate_scale and s.out_scale for s in specs),
    "bitnet": lambda specs: all(s.hidden_norm == "ffn_sub_norm" for s in specs),
    # layer 0 has activation sparsity 0.95 (OVERRIDES of the script), layer 1 none
    "gemma3n_text": lambda specs: [s.gate_transform for s in specs] == ["_gaussian_topk", None],
    "bloom": lambda specs: all(s.residual for s in specs),
    "mpt": lambda specs: all(s.residual for s in specs),
    "phi3": lambda specs: all(s.packed and s.gate_first for s in specs),
    "gpt2": lambda specs: all(s.out_dropout == "dropout" for s in specs),
    "lfm2": lambda specs: all(s.act_attr is None and s.activation == "swish" for s in specs),
    "apertus": lambda specs: all(s.activation is None for s in specs),  # xIELU, learnable
    "granitemoehybrid": lambda specs: len(specs) == 2,  # each layer's shared_mlp
    "qwen3_next": lambda specs: len(specs) == 1,  # the dense layer (mlp_only_layers=[0])
}
# Families whose mixture-of-experts blocks exercise one feature: what their MoESpecs must say.
MOE_FEATURES = {
    "gpt_oss": lambda specs: all(s.interleaved and s.biases and s.returns == "gates"
                                 and s.logit_bias for s in specs),  # fmt: skip
    "llama4_text": lambda specs: all(s.kind == "sigmoid_input" and s.flat and s.transposed
                                     and s.returns == "logits" for s in specs),  # fmt: skip
    "deepseek_v3": lambda specs: [(s.kind, s.n_group, s.selection_bias) for s in specs]
    == [("sigmoid", 2, "gate.e_score_correction_bias")],
    "minimax_m2": lambda specs: all(s.selection_bias == "e_score_correction_bias" for s in specs),
    "qwen2_moe": lambda specs: all(s.shared_gate and not s.norm_topk for s in specs),
    "hunyuan_v1_moe": lambda specs: all(s.router_weight == "gate.wg.weight" for s in specs),
    "jetmoe": lambda specs: all(s.up == "input_linear.weight" and s.output_bias == "bias"
                                and s.router_weight == "router.layer.weight" for s in specs),  # fmt: skip
    "nemotron_h": lambda specs: all(not s.gated and s.activation == "relu2" for s in specs),
    # ReLU² experts stored [E, dim, I], a float32 RMSNorm per expert on each route's output
    "ergo": lambda specs: all(s.expert_norm == "experts.post_expert_norm.weight"
                              and s.norm_float32 and s.transposed and not s.gated
                              and s.float32 == "logits" for s in specs),  # fmt: skip
    "axk1": lambda specs: all(s.out_norm == "post_mlp_layernorm" and s.n_group == 2
                              for s in specs),  # fmt: skip
    "phimoe": lambda specs: all(s.kind == "sparsemixer" and s.top_k == 2 for s in specs),
    "ernie4_5_moe": lambda specs: all(
        s.selection_bias == "gate.moe_statics.e_score_correction_bias" for s in specs),
}


def _families() -> list[str]:
    try:
        return survey.family_names()
    except ImportError:
        return []


@pytest.fixture(scope="module")
def built():
    """family -> (model, inputs) or the reason it is skipped; each family built once."""
    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = survey.build_model(family)
                    inputs = survey.inputs_for(model)
                    with torch.no_grad():
                        survey.logits(model, inputs)
                cache[family] = (model, inputs)
            except Exception as e:  # noqa: BLE001 - reported as the skip reason
                cache[family] = f"does not build or run offline: {type(e).__name__}: {e}"[:300]
        return cache[family]

    return get


def _grads(model, inputs) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    survey.logits(model, inputs).float().pow(2).mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _wrappers(model):
    return [m for m in model.modules() if isinstance(m, HFFeedForward) and m.counts_as_mlp]


# "auto" runs these tiny calls as the plain computation (and, without gradients, one token's
# MoE blocks as the routes loop, more tokens' as the original blocks), "fused" the fused ops:
# both must give the model's function.
@pytest.mark.parametrize("backend", ["auto", "fused"])
@pytest.mark.parametrize("family", _families())
def test_family(built, family, backend):
    got = built(family)
    if isinstance(got, str):
        pytest.skip(got)
    model, inputs = got
    one = {k: v[:1, :1] for k, v in inputs.items()}  # a decoding step's size
    with torch.no_grad():
        want32, want_one = survey.logits(model, inputs), survey.logits(model, one)
    try:
        want_grads = _grads(model, inputs)
    except Exception:  # Reformer's backward needs train mode; it is left alone anyway
        if family not in NOT_PATCHED:
            raise
        want_grads = None
    want64 = survey._float64_logits(model, inputs)
    keys = list(model.state_dict())
    originals = dict(model.named_modules())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        n = ffnlab.patch_hf(model, backend=backend)
    left = [str(w.message) for w in record if "ffnlab.patch_hf" in str(w.message)]
    if family in NOT_PATCHED:
        assert NOT_PATCHED[family] in " ".join(left) + survey._why_none(model), (n, left)
    else:
        assert n > 0 and not left, left
    if n == 0:
        return
    assert n == len(_wrappers(model))
    if family in FEATURES:
        assert FEATURES[family]([w.spec for w in _wrappers(model) if not isinstance(w, HFMoE)])
    if family in MOE_FEATURES:
        assert MOE_FEATURES[family]([w.spec for w in _wrappers(model) if isinstance(w, HFMoE)])
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(survey.logits(model, inputs), want32, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(survey.logits(model, one), want_one, rtol=1e-5, atol=1e-6)
    got_grads = _grads(model, inputs) if want_grads is not None else {}
    assert got_grads.keys() == (want_grads or {}).keys()
    for k in got_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=1e-4, atol=1e-6, msg=k)
    if want64 is not None:
        tol = 1e-6 if family in FLOAT64_ROUNDS else 1e-10
        got64 = survey._float64_logits(model, inputs)
        torch.testing.assert_close(got64, want64, rtol=tol, atol=tol)
    assert ffnlab.unpatch_hf(model) == n
    restored = dict(model.named_modules())
    assert restored.keys() == originals.keys()
    assert all(restored[k] is m for k, m in originals.items())


def _act2fn_names() -> list[str]:
    try:
        from transformers.activations import ACT2CLS
    except ImportError:
        return []
    return [n for n in ACT2CLS if n != "sqrtsoftplus"]  # a router's score function


@pytest.mark.parametrize("name", _act2fn_names())
def test_every_act2fn_activation_is_patched_exactly(name):
    """A tiny LLaMA with ``hidden_act=name``: patched, float64 logits equal to 1e-10 (by the
    ffnlab activation of that name, or the model's own callable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = survey.build_model("llama", dtype=torch.float64, hidden_act=name)
    inputs = survey.inputs_for(model)
    with torch.no_grad():
        want = survey.logits(model, inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ffnlab.patch_hf(model) == 2
        got = survey.logits(model, inputs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
