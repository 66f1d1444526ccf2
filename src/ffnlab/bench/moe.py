"""Speed of a mixture-of-experts FFN: the fused grouped path against the reference loop.

``run_moe_bench(MoEBenchConfig(...))`` builds one :class:`ffnlab.MoEFeedForward` per backend
on the same weights and input, times forward and forward+backward round-robin (as
:func:`ffnlab.bench.run.run_bench` does) and reports, per backend, median milliseconds, tokens
per second and the share of this device's matmul rate (:func:`~ffnlab.bench.machine.matmul_rate`)
that the active experts' products reach. ``ffnlab bench --variants moe:swiglu:8x2`` runs it
(the spelling of :mod:`ffnlab.moe_spelling`, as ``ffnlab compare``'s).

Active matmul FLOPs per token: ``top_k`` experts (``ffn_flops_per_token(...)["matmul"]`` each)
plus the router's ``2·dim·E`` (and the shared experts' when on); forward+backward counts 3×.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError, check_choice, check_positive_int
from ..moe import MoEFeedForward
from ..moe_spelling import parse_experts
from ..ops.grouped import grouped_mm_unsupported_reasons
from ..routers import get_router
from ..sizing import ffn_flops_per_token
from ..variants import get_variant
from .machine import machine_info, matmul_rate
from .timing import median, paired_ratio, round_robin, spread

__all__ = ["MOE_PROVIDERS", "MoEBenchConfig", "format_moe_rows", "moe_flops_per_token",
           "parse_moe_shape", "run_moe_bench"]  # fmt: skip

MOE_PROVIDERS = ("reference", "fused")


def parse_moe_shape(text: str) -> tuple[int, int]:
    """``"8x2"`` -> ``(8, 2)``: experts × top-k (the ``<E>x<k>`` part of ``moe:swiglu:8x2``,
    :func:`ffnlab.moe_spelling.parse_experts`); UsageError naming the expected form."""
    return parse_experts(text, f"--moe {text}")


@dataclass(frozen=True)
class MoEBenchConfig:
    """One MoE bench: ``n_experts`` experts of ``variant`` (``hidden`` units), ``top_k`` per
    token, ``tokens`` tokens of width ``dim``. Invalid values raise UsageError naming them."""

    n_experts: int = 8
    top_k: int = 2
    variant: str = "swiglu"
    router: str = "softmax"
    dim: int = 256
    hidden: int = 512
    tokens: int = 2048
    dtype: torch.dtype = torch.float32
    device: torch.device = torch.device("cpu")
    providers: tuple[str, ...] = MOE_PROVIDERS
    repeats: int = 5
    warmup: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "variant", get_variant(self.variant).name)
        get_router(self.router)
        for name in ("n_experts", "top_k", "dim", "hidden", "tokens", "repeats"):
            check_positive_int(name, getattr(self, name))
        if self.top_k > self.n_experts:
            raise UsageError(f"top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if isinstance(self.providers, str) or not self.providers:
            raise UsageError(f"providers must be a non-empty sequence of {MOE_PROVIDERS}")
        for p in self.providers:
            check_choice("MoE provider", p, MOE_PROVIDERS)
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise UsageError(f"dtype must be a floating-point torch.dtype, got {self.dtype!r}")
        object.__setattr__(self, "device", torch.device(self.device))

    def to_json(self) -> dict:
        return {"n_experts": self.n_experts, "top_k": self.top_k, "variant": self.variant,
                "router": self.router, "dim": self.dim, "hidden": self.hidden,
                "tokens": self.tokens, "dtype": str(self.dtype).removeprefix("torch."),
                "device": str(self.device), "providers": list(self.providers),
                "repeats": self.repeats, "warmup": self.warmup, "seed": self.seed}  # fmt: skip


def moe_flops_per_token(cfg: MoEBenchConfig) -> int:
    """Forward matmul FLOPs per token of the active experts and the router."""
    expert = ffn_flops_per_token(cfg.variant, cfg.dim, cfg.hidden)["matmul"]
    return cfg.top_k * expert + 2 * cfg.dim * cfg.n_experts


def run_moe_bench(cfg: MoEBenchConfig, tick=lambda: None) -> dict:
    """Time each provider; returns ``{"config", "machine", "ceiling", "rows"}``.

    Each row: ``provider``, ``fwd_ms``, ``fwd_bwd_ms`` (medians), ``tokens_per_s``
    (forward+backward), ``fwd_bwd_matmul_share`` (active FLOP rate / matmul ceiling),
    ``fwd_bwd_vs_reference`` (paired ratio of times), ``spread`` and ``max_abs_diff`` (the
    output against the reference's), and ``grouped_mm`` (whether ``torch._grouped_mm`` ran).
    """
    torch.manual_seed(cfg.seed)
    kw = dict(router=cfg.router, device=cfg.device, dtype=cfg.dtype)
    mods = {p: MoEFeedForward(cfg.dim, cfg.hidden, cfg.n_experts, cfg.top_k, cfg.variant,
                              backend=p, **kw) for p in cfg.providers}  # fmt: skip
    first = next(iter(mods.values()))
    for m in mods.values():
        m.load_state_dict(first.state_dict())
    x = torch.randn(cfg.tokens, cfg.dim, device=cfg.device, dtype=cfg.dtype, requires_grad=True)
    g = torch.randn_like(x)

    def fwd(m):
        return lambda: m(x.detach())

    def fwd_bwd(m):
        def call():
            m(x).backward(g)
            x.grad = None
            for p in m.parameters():
                p.grad = None

        return call

    calls = {p: {"fwd": fwd(m), "fwd_bwd": fwd_bwd(m)} for p, m in mods.items()}
    times, failed = round_robin(calls, cfg.device, repeats=cfg.repeats, warmup=cfg.warmup,
                                tick=tick)  # fmt: skip
    ceiling = matmul_rate(cfg.device, cfg.dtype)["flops_per_s"]
    flops = moe_flops_per_token(cfg) * cfg.tokens
    with torch.no_grad():
        outs = {p: m(x).float() for p, m in mods.items()}
    ref_out = outs.get("reference")
    w = first.experts.w1
    grouped = not grouped_mm_unsupported_reasons(x.detach(), w.transpose(1, 2))
    rows = []
    for p in cfg.providers:
        if p not in times:
            rows.append({"provider": p, "status": "failed", "reason": failed.get(p)})
            continue
        t = times[p]
        fb = median(t["fwd_bwd"])
        rows.append({
            "provider": p, "status": "ok", "fwd_ms": median(t["fwd"]) * 1e3,
            "fwd_bwd_ms": fb * 1e3, "tokens_per_s": cfg.tokens / fb,
            "fwd_bwd_matmul_share": 3 * flops / fb / ceiling,
            "fwd_bwd_vs_reference": paired_ratio(t["fwd_bwd"], times.get("reference", {}).get("fwd_bwd")),
            "spread": spread(t["fwd_bwd"]),
            "max_abs_diff": None if ref_out is None else float((outs[p] - ref_out).abs().max()),
            "grouped_mm": grouped if p == "fused" else False,
        })  # fmt: skip
    return {"config": cfg.to_json(), "machine": machine_info(cfg.device),
            "ceiling": {"matmul_flops_per_s": ceiling}, "rows": rows}


def format_moe_rows(result: dict) -> str:
    """The rows as a Markdown table."""
    c = result["config"]
    head = (f"MoE {c['n_experts']}x{c['top_k']} {c['variant']} ({c['router']}), dim {c['dim']}, "
            f"hidden {c['hidden']}, {c['tokens']} tokens, {c['dtype']}, median of {c['repeats']}; "
            f"matmul ceiling {result['ceiling']['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s")  # fmt: skip
    lines = [head, "", "| provider | fwd ms | fwd+bwd ms | tokens/s (f+b) | % mm ceiling | "
             "×ref (f+b) | grouped_mm | max abs diff |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['provider']} | failed: {r['reason']} |||||||")
            continue
        ratio, diff = r["fwd_bwd_vs_reference"], r["max_abs_diff"]
        lines.append(
            f"| {r['provider']} | {r['fwd_ms']:.2f} | {r['fwd_bwd_ms']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {100 * r['fwd_bwd_matmul_share']:.0f}% | "
            f"{'-' if ratio is None else f'{ratio:.2f}×'} | {r['grouped_mm']} | "
            f"{'-' if diff is None else format(diff, '.1e')} |"
        )
    return "\n".join(lines)
