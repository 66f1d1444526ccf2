"""MoE forward+backward on the CPU: ffnlab's fused and reference experts against transformers'
own Qwen3-MoE sparse block (its "eager" loop and its "grouped_mm" experts implementation), all
on the same weights and input.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/moe_hf.py --out benchmarks/results

Writes moe-cpu-<date>.json and .md. Needs transformers (>= 5, with experts implementations).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import torch

from ffnlab import MoEFeedForward
from ffnlab.bench.machine import machine_info, matmul_rate
from ffnlab.bench.moe import MoEBenchConfig, moe_flops_per_token
from ffnlab.bench.timing import median, paired_ratio, round_robin, spread


def hf_block(moe: MoEFeedForward, implementation: str):
    """transformers' Qwen3MoeSparseMoeBlock with ``moe``'s weights (softmax, norm_topk)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = Qwen3MoeConfig(hidden_size=moe.dim, moe_intermediate_size=moe.hidden_dim,
                         num_experts=moe.n_experts, num_experts_per_tok=moe.top_k,
                         norm_topk_prob=True, hidden_act="silu")  # fmt: skip
    cfg._experts_implementation = implementation
    block = Qwen3MoeSparseMoeBlock(cfg)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([moe.experts.w1, moe.experts.w3], dim=1))
        block.experts.down_proj.copy_(moe.experts.w2)
    return block


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    cfg = MoEBenchConfig(n_experts=a.experts, top_k=a.top_k, dim=a.dim, hidden=a.hidden,
                         tokens=a.tokens, repeats=a.repeats)  # fmt: skip
    torch.manual_seed(0)
    mods = {
        "ffnlab reference": MoEFeedForward(a.dim, a.hidden, a.experts, a.top_k, backend="reference"),
        "ffnlab fused": MoEFeedForward(a.dim, a.hidden, a.experts, a.top_k, backend="fused"),
    }
    mods["ffnlab fused"].load_state_dict(mods["ffnlab reference"].state_dict())
    for impl in ("eager", "grouped_mm"):
        mods[f"transformers {impl}"] = hf_block(mods["ffnlab reference"], impl)
    x = torch.randn(1, a.tokens, a.dim, requires_grad=True)
    g = torch.randn_like(x)

    def calls(m):
        def fwd():
            with torch.no_grad():
                m(x)

        def fwd_bwd():
            m(x).backward(g)
            x.grad = None
            for q in m.parameters():
                q.grad = None

        return {"fwd": fwd, "fwd_bwd": fwd_bwd}

    with torch.no_grad():
        y_ref = mods["ffnlab reference"](x)
        diffs = {n: float((m(x) - y_ref).abs().max()) for n, m in mods.items()}
    times, failed = round_robin({n: calls(m) for n, m in mods.items()}, cfg.device,
                                repeats=a.repeats, warmup=1)  # fmt: skip
    ceiling = matmul_rate(cfg.device, torch.float32)["flops_per_s"]
    flops = moe_flops_per_token(cfg) * a.tokens
    rows = []
    for n in mods:
        if n not in times:
            rows.append({"provider": n, "failed": failed.get(n)})
            continue
        fb = median(times[n]["fwd_bwd"])
        rows.append({"provider": n, "fwd_ms": median(times[n]["fwd"]) * 1e3,
                     "fwd_bwd_ms": fb * 1e3, "tokens_per_s": a.tokens / fb,
                     "fwd_bwd_matmul_share": 3 * flops / fb / ceiling,
                     "fwd_bwd_vs_ffnlab_reference": paired_ratio(
                         times[n]["fwd_bwd"], times["ffnlab reference"]["fwd_bwd"]),
                     "spread": spread(times[n]["fwd_bwd"]), "max_abs_diff": diffs[n]})  # fmt: skip
    info = machine_info(cfg.device)
    result = {"config": cfg.to_json(), "machine": info, "ceiling_flops_per_s": ceiling,
              "rows": rows}  # fmt: skip
    day = dt.date.today().isoformat()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"moe-cpu-{day}.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# MoE forward+backward on the CPU",
        "",
        f"{info['cpu']} ({info['cpu_count']} cores, {info['torch_threads']} torch thread(s)), "
        f"torch {info['torch']}, transformers {__import__('transformers').__version__}, "
        f"{info['date']}. MoE {a.experts}x{a.top_k} SwiGLU, softmax router with norm_topk, "
        f"dim {a.dim}, expert hidden {a.hidden}, {a.tokens} tokens, float32, median of "
        f"{a.repeats} (round-robin). Matmul ceiling {ceiling / 1e9:.1f} GFLOP/s; % is the "
        f"active experts' and router's matmul FLOP rate (3x forward) over it.",
        "",
        "| provider | fwd ms | fwd+bwd ms | tokens/s (f+b) | % mm ceiling | ×ffnlab ref (f+b) "
        "| spread | max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['provider']} | failed: {r['failed']} |||||||")
            continue
        lines.append(f"| {r['provider']} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
                     f"{r['tokens_per_s']:,.0f} | {100 * r['fwd_bwd_matmul_share']:.0f}% | "
                     f"{r['fwd_bwd_vs_ffnlab_reference']:.2f}× | {100 * r['spread']:.0f}% | "
                     f"{r['max_abs_diff']:.1e} |")  # fmt: skip
    (out / f"moe-cpu-{day}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
