"""Patch a tiny random model of every causal-LM family of the installed transformers and write
the family table of docs/interop.md (between its two ``interop-families`` markers).

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/interop_families.py [--check] [FAMILY ...]

:func:`tiny_config` builds a small random configuration of a family offline (width 32, two
layers, vocabulary 128 ...: only the fields the family's config has), :func:`survey_family`
patches a model built from it and measures the logits before and after, in float32 and
float64. The script runs it over
``transformers.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` and writes, per
family: FFNs found (patched + left; a mixture-of-experts block, shared experts included, is
one), patched, how many of those are mixture-of-experts blocks, the relative max difference of
the logits in float32 and float64, and the reason for anything left. ``--check`` (or naming
families) prints the table without writing. ``tests/interop/test_families.py`` builds its models with this
module. It lives outside the package because ffnlab never imports transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ffnlab.interop.hf import patch_hf_report
from ffnlab.interop.hf_moe import HFMoE
from ffnlab.interop.recognise import is_moe_block

#: Field values of a tiny configuration; each is passed only where the config has the field.
SMALL: dict[str, object] = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, vocab_size=128, max_position_embeddings=128,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
    n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, d_model=32, d_ff=64,
    ffn_dim=64, num_layers=2, num_heads=4, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
    decoder_ffn_dim=64, moe_intermediate_size=16, shared_expert_intermediate_size=16,
    n_routed_experts=4, num_experts=4, num_local_experts=4, num_experts_per_tok=2,
    kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
    mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_expand=2,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
    linear_value_head_dim=8, image_size=32, patch_size=8, num_channels=3, rotary_dim=4,
    dff=64, d_inner=64, vocab_size_per_layer_input=128, hidden_size_per_layer_input=8,
    shape_vocab_size=32, pronunciation_vocab_size=32,
)  # fmt: skip
#: Per-family fields on top of :data:`SMALL`: what their validators need at the tiny sizes, or
#: what makes the interesting MLP appear (Qwen3-Next's dense layers, Falcon-H1's multipliers,
#: Gemma-3n's per-layer widths and gate sparsity).
OVERRIDES: dict[str, dict] = {
    "falcon_h1": dict(mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8,
                      mlp_multipliers=[0.5, 2.0]),
    "qwen3_next": dict(mlp_only_layers=[0]),
    "glm4_moe_lite": dict(qk_rope_head_dim=8, head_dim=4),
    "kimi_linear": dict(linear_head_dim=8, linear_num_heads=4),
    "gemma3n_text": dict(intermediate_size=[64, 48], activation_sparsity_pattern=[0.95, 0.0],
                         num_kv_shared_layers=0, layer_types=["sliding_attention",
                                                              "full_attention"]),
    "dots3_note_text": dict(num_key_value_heads=4),
    "reformer": dict(is_decoder=True, axial_pos_shape=[8, 16], axial_pos_embds_dim=[16, 16],
                     attn_layers=["local", "lsh"], feed_forward_size=64, attention_head_size=8),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "zamba2": dict(layers_block_type=["mamba", "hybrid"], mamba_headdim=8, n_mamba_heads=8),
    "zamba": dict(num_hidden_layers=3, layers_block_type=["mamba", "hybrid", "hybrid"],
                  mamba_d_state=8, n_mamba_heads=4),
    "dots1": dict(first_k_dense_replace=1, n_shared_experts=1, topk_group=1, n_group=1),
    "lfm2_moe": dict(layer_types=["full_attention", "conv"], num_dense_layers=1),
    "mamba2": dict(num_heads=8, head_dim=8, n_groups=1),
    "zaya": dict(num_experts_per_tok=1),
    # one mixture-of-experts layer (the default 3 dense layers would leave none), 2 groups
    "deepseek_v3": dict(first_k_dense_replace=1, n_group=2, topk_group=1),
    # its own names for the dense and shared widths (defaults 32768 and 8192)
    "ergo": dict(first_dense_intermediate_size=64, shared_intermediate_size=16),
    # multi-head latent attention wants as many key/value heads as query heads; a mixture of
    # experts in layer 1; 2 groups of the 4 experts (the default 8 leaves none per group)
    "deepseek_v32": dict(num_key_value_heads=4, first_k_dense_replace=1, n_group=2,
                         topk_group=1),
    "glm_moe_dsa": dict(num_key_value_heads=4, first_k_dense_replace=1),
    "axk1": dict(n_group=2, topk_group=1),
    "axk2": dict(num_key_value_heads=4),
    # NVFP4 keys need head_dim % 16 == 0; index heads within the query heads of a key head;
    # the default mlp_only_layers (0, 1) would leave no mixture of experts in two layers
    "kolibri1_1": dict(head_dim=16, index_num_heads=2, index_topk=4, index_pool_size=16,
                       index_compression=4, index_num_local_tokens=2, index_num_sink_tokens=1,
                       mlp_only_layers=[0], mlp_only_intermediate_size=64),
    # rotary part of the head (qk_rope_head_dim 4) as head_dim; 2 zero (identity) experts
    "longcat_flash": dict(head_dim=4, zero_expert_num=2, expert_ffn_hidden_size=16, moe_topk=2,
                          ffn_hidden_size=64),
}  # fmt: skip
#: Largest model (parameters) built from a tiny config; a family above it is reported.
MAX_PARAMS = 20_000_000


def family_names() -> list[str]:
    """Model types of transformers' causal-LM registry, in its order."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _fields(cls) -> set[str]:
    try:
        names = {f.name for f in dataclasses.fields(cls)}
    except TypeError:
        names = set()
    return names | set(getattr(cls, "attribute_map", {}))


def tiny_config(model_type: str, **overrides):
    """A small configuration of ``model_type`` (sub-configurations made small too)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return _tiny(CONFIG_MAPPING[model_type], {**OVERRIDES.get(model_type, {}), **overrides})


def _tiny(cls, overrides: dict):
    names = _fields(cls)
    kw = {k: v for k, v in SMALL.items() if k in names}
    for name, sub in (getattr(cls, "sub_configs", None) or {}).items():
        if name not in names or not isinstance(sub, type):
            continue
        if sub.__name__ == "AutoConfig":  # the default's own sub-config class
            sub = type(getattr(cls(), name, None))
        if hasattr(sub, "model_type"):
            kw[name] = _tiny(sub, {})
    kw.update({k: v for k, v in overrides.items() if k in names})
    return cls(**kw)


def build_model(model_type: str, *, dtype: torch.dtype = torch.float32, seed: int = 0,
                **overrides) -> nn.Module:  # fmt: skip
    """The causal-LM model of ``model_type`` from :func:`tiny_config`, seeded, in eval mode.

    Raises ``ValueError`` when it would exceed :data:`MAX_PARAMS` parameters."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type, **overrides)
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in meta.parameters())
    if n > MAX_PARAMS:
        raise ValueError(f"{n / 1e6:.0f} M parameters at the tiny sizes")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def inputs_for(model: nn.Module, seq: int = 7) -> dict[str, torch.Tensor]:
    """``input_ids [2, seq]`` below the model's vocabulary (fixed seed)."""
    vocab = getattr(model.get_input_embeddings(), "num_embeddings", 128)
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(3, max(vocab, 4), (2, seq), generator=g)}


def logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    """The model's logits (the first tensor output where there is no ``logits``)."""
    out = model(**inputs, use_cache=False)
    got = getattr(out, "logits", None)
    if got is None:
        got = out[0] if isinstance(out, tuple) else out
    return got


@dataclass
class FamilyReport:
    """What patching one family did. ``status``: ``"patched"``, ``"none"`` (no MLP patched),
    ``"partly"`` (some left), ``"config"`` (config does not build offline), ``"large"``
    (above :data:`MAX_PARAMS`), ``"forward"`` (the tiny model does not run on input_ids)."""

    family: str
    status: str
    found: int = 0
    patched: int = 0
    moe: int = 0
    diff32: float | None = None
    diff64: float | None = None
    left: list[str] = field(default_factory=list)
    reason: str = ""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item()


def survey_family(model_type: str, backend: str = "auto") -> FamilyReport:
    """Build ``model_type`` tiny, patch it (float32, then a float64 copy) and report."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(model_type)
    except ValueError as e:
        if "parameters at the tiny sizes" in str(e):
            return FamilyReport(model_type, "large", reason=str(e))
        return FamilyReport(model_type, "config", reason=_short(e))
    except Exception as e:  # noqa: BLE001 - any failure is reported as such, with its message
        return FamilyReport(model_type, "config", reason=_short(e))
    inputs = inputs_for(model)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want32 = logits(model, inputs)
    except Exception as e:  # noqa: BLE001
        return FamilyReport(model_type, "forward", reason=_short(e))
    want64 = _float64_logits(model, inputs)
    try:
        count, left = patch_hf_report(model, backend=backend)
    except Exception as e:  # noqa: BLE001 - reported, so that the table shows it
        return FamilyReport(model_type, "error", reason=_short(e))
    report = FamilyReport(model_type, "none", found=count + len(left), patched=count, left=left,
                          moe=sum(isinstance(m, HFMoE) for m in model.modules()))  # fmt: skip
    if count:
        with torch.no_grad():
            report.diff32 = _rel(want32, logits(model, inputs))
            got64 = None if want64 is None else _float64_logits(model, inputs)
            report.diff64 = None if got64 is None else _rel(want64, got64)
        report.status = "partly" if left else "patched"
    elif not left:
        report.reason = _why_none(model)
    return report


def _why_none(model: nn.Module) -> str:
    if any(is_moe_block(m) for m in model.modules()):
        return "every FFN is a mixture of experts"
    inline = [m for m in model.modules() if {"fc1", "fc2"} <= set(m._modules)
              and len(m._modules) > 3]  # fmt: skip
    if inline:
        return (
            f"the FFN is written inline in {type(inline[0]).__name__} (fc1/fc2 are the "
            f"layer's own children): no module to replace"
        )
    return "no module holds an MLP's projections (no FFN, or one of another form)"


def _float64_logits(model: nn.Module, inputs: dict) -> torch.Tensor | None:
    """The logits of ``model`` in float64 (None where the model does not run in float64); the
    model is back in float32 afterwards. transformers' experts run their eager loop for it
    (its default ``grouped_mm`` has no float64 kernel on the CPU), then their own again."""
    config = getattr(model, "config", None)
    experts = getattr(config, "_experts_implementation", None)
    if experts == "ffnlab":  # a patched model's experts: ffnlab's op runs float64 itself
        experts = None
    try:
        if experts not in (None, "eager"):  # grouped_mm has no float64 kernel on the CPU
            model.set_experts_implementation("eager")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return logits(model.double(), inputs)
    except Exception:  # noqa: BLE001
        return None
    finally:
        model.float()
        if experts not in (None, "eager"):
            model.set_experts_implementation(experts)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:140]}"


# --- the table ----------------------------------------------------------------------------

BEGIN = "<!-- interop-families: begin (scripts/interop_families.py writes this table) -->"
END = "<!-- interop-families: end -->"
STATUS = {
    "patched": "patched",
    "partly": "partly",
    "none": "left",
    "config": "config does not build offline",
    "large": "too large at tiny sizes",
    "forward": "tiny model does not run",
    "error": "patch_hf failed",
}


def _num(x: float | None) -> str:
    return "" if x is None else ("0" if x == 0 else f"{x:.1e}")


def table(reports) -> str:
    counts = {}
    for r in reports:
        counts[r.status] = counts.get(r.status, 0) + 1
    built = sum(counts.get(k, 0) for k in ("patched", "partly", "none"))
    patched = counts.get("patched", 0) + counts.get("partly", 0)
    with_moe = sum(1 for r in reports if r.moe)
    import transformers

    lines = [
        f"transformers {transformers.__version__}: {len(reports)} causal-LM families; "
        f"{built} build and run offline at tiny sizes, {patched} of them patched "
        f"({counts.get('partly', 0)} partly; {with_moe} with mixture-of-experts blocks "
        f"patched), {counts.get('none', 0)} left.",
        "",
        "| family | status | FFNs found | patched | of them MoE | logits Δ float32 "
        "| logits Δ float64 | why left |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        why = r.reason or (r.left[0].split(" (", 1)[-1].removesuffix(")") if r.left else "")
        why = why.replace("|", "\\|")
        lines.append(
            f"| {r.family} | {STATUS[r.status]} | {r.found} | {r.patched} | {r.moe} | "
            f"{_num(r.diff32)} | {_num(r.diff64)} | {why} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help="model types (default: all)")
    parser.add_argument("--check", action="store_true", help="print the table, write nothing")
    parser.add_argument(
        "--doc", default=str(pathlib.Path(__file__).parents[1] / "docs" / "interop.md")
    )
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    reports = []
    start = time.perf_counter()
    for name in args.families or family_names():
        reports.append(survey_family(name))
        print(f"{name}: {reports[-1].status}", file=sys.stderr, flush=True)
    text = table(reports)
    print(f"{len(reports)} families in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if args.check or args.families:
        print(text)
        return 0
    doc = pathlib.Path(args.doc)
    body = doc.read_text()
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
