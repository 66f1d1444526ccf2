"""transformers' experts implementations side by side on a Qwen3-MoE-like experts layer:
``ffnlab`` (:func:`ffnlab.register_hf`) against ``grouped_mm``, ``batched_mm`` and ``eager``, at
a decode step (1 token) and a prefill (4 x 256 tokens), inference (no gradients).

Each implementation runs transformers' own ``Qwen3MoeExperts`` module (the same parameters,
its config's ``experts_implementation`` set) on the same routed tokens, interleaved round by
round (:func:`ffnlab.bench.timing.round_robin`); ratios are per-round paired medians of
implementation / ffnlab (above 1: ffnlab is faster).

    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/hf_experts.py            # print
    PYTHONPATH=src OMP_NUM_THREADS=2 python benchmarks/hf_experts.py --save     # and record

``--save`` writes benchmarks/results/hf-experts-<date>.json. The defaults are Qwen3-30B-A3B's
experts (dim 2048, expert hidden 768, 128 experts, top-8; 2.4 GB of float32 weights).
``batched_mm`` gathers each route's expert weights (``[T*k, 2I, dim]``); where that exceeds
``batched_limit_gb`` it is reported as skipped, not run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import ffnlab
from ffnlab.bench.machine import machine_info
from ffnlab.bench.timing import median, paired_ratio, round_robin, spread

IMPLEMENTATIONS = ("ffnlab", "grouped_mm", "batched_mm", "eager")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HFExpertsBench:
    """One run: the experts layer's sizes, the token counts of the two phases, the repeats."""

    dim: int = 2048
    hidden: int = 768
    experts: int = 128
    top_k: int = 8
    decode_tokens: int = 1
    prefill_tokens: int = 4 * 256
    repeats: int = 15
    dtype: str = "float32"
    batched_limit_gb: float = 2.0

    def __post_init__(self) -> None:
        for name in ("dim", "hidden", "experts", "top_k", "decode_tokens", "prefill_tokens",
                     "repeats"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.top_k > self.experts:
            raise ValueError(f"top_k ({self.top_k}) must be <= experts ({self.experts})")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    def phases(self) -> dict[str, int]:
        return {"decode": self.decode_tokens, "prefill": self.prefill_tokens}

    def batched_gather_gb(self, tokens: int) -> float:
        """The weights ``batched_mm`` gathers for ``tokens`` tokens, in GB."""
        per_route = 3 * self.hidden * self.dim * torch.finfo(DTYPES[self.dtype]).bits // 8
        return tokens * self.top_k * per_route / 1e9


def _modules(cfg: HFExpertsBench) -> dict[str, torch.nn.Module]:
    """One ``Qwen3MoeExperts`` per implementation, all on the same parameters."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    ffnlab.register_hf()
    torch.manual_seed(0)
    out, first = {}, None
    for name in IMPLEMENTATIONS:
        config = Qwen3MoeConfig(hidden_size=cfg.dim, moe_intermediate_size=cfg.hidden,
                                num_experts=cfg.experts, num_experts_per_tok=cfg.top_k,
                                hidden_act="silu", experts_implementation=name)  # fmt: skip
        with torch.device("meta"):
            module = Qwen3MoeExperts(config)
        if first is None:
            g = torch.Generator().manual_seed(0)
            scale = cfg.dim**-0.5
            module.gate_up_proj = torch.nn.Parameter(
                torch.randn(module.gate_up_proj.shape, generator=g).mul_(scale).to(DTYPES[cfg.dtype]))
            module.down_proj = torch.nn.Parameter(
                torch.randn(module.down_proj.shape, generator=g).mul_(cfg.hidden**-0.5).to(DTYPES[cfg.dtype]))
            first = module
        else:
            module.gate_up_proj, module.down_proj = first.gate_up_proj, first.down_proj
        out[name] = module.eval()
    return out


def _routes(cfg: HFExpertsBench, tokens: int):
    """``(x [T, dim], top_k_index [T, k], top_k_weights [T, k])``: softmax top-k, renormalised."""
    g = torch.Generator().manual_seed(tokens)
    x = torch.randn(tokens, cfg.dim, generator=g).to(DTYPES[cfg.dtype])
    probs = torch.randn(tokens, cfg.experts, generator=g).softmax(-1)
    w, idx = probs.topk(cfg.top_k, dim=-1)
    return x, idx, (w / w.sum(-1, keepdim=True)).to(x.dtype)


def run(cfg: HFExpertsBench) -> dict:
    """Time every implementation at both phases; the JSON-ready result."""
    modules = _modules(cfg)
    device = torch.device("cpu")
    result: dict = {"config": asdict(cfg), "machine": machine_info(device), "phases": {}}
    for phase, tokens in cfg.phases().items():
        x, idx, w = _routes(cfg, tokens)
        skipped = {}
        if cfg.batched_gather_gb(tokens) > cfg.batched_limit_gb:
            skipped["batched_mm"] = (f"would gather {cfg.batched_gather_gb(tokens):.1f} GB of "
                                     f"expert weights (> batched_limit_gb)")  # fmt: skip
        live = {n: m for n, m in modules.items() if n not in skipped}
        with torch.no_grad():
            want = live["eager"](x, idx, w).float()
            diffs = {n: float((m(x, idx, w).float() - want).abs().max()) for n, m in live.items()}

        def call(m, x=x, idx=idx, w=w):
            def fwd():
                with torch.no_grad():
                    m(x, idx, w)

            return {"fwd": fwd}

        times, failed = round_robin({n: call(m) for n, m in live.items()}, device,
                                    repeats=cfg.repeats)  # fmt: skip
        rows = {}
        for name in IMPLEMENTATIONS:
            if name in skipped or name in failed:
                rows[name] = {"skipped": skipped.get(name) or failed[name]}
                continue
            t = times[name]["fwd"]
            rows[name] = {"ms": median(t) * 1e3, "spread": spread(t),
                          "vs_ffnlab": paired_ratio(t, times.get("ffnlab", {}).get("fwd")),
                          "max_abs_diff_vs_eager": diffs[name]}  # fmt: skip
        result["phases"][phase] = {"tokens": tokens, "rows": rows}
    return result


def table(result: dict) -> str:
    """The result as a text table: ms per call and implementation / ffnlab, both phases."""
    phases = list(result["phases"])
    head = "implementation".ljust(16) + "".join(
        f"{p + ' ms':>14}{'x ffnlab':>10}{'spread':>8}" for p in phases)  # fmt: skip
    lines = [head, "-" * len(head)]
    for name in IMPLEMENTATIONS:
        line = name.ljust(16)
        for p in phases:
            r = result["phases"][p]["rows"][name]
            if "skipped" in r:
                line += f"{'skipped':>14}{'':>10}{'':>8}"
                continue
            ratio = "" if r["vs_ffnlab"] is None else f"{r['vs_ffnlab']:.2f}"
            line += f"{r['ms']:>14.3f}{ratio:>10}{100 * r['spread']:>7.0f}%"
        lines.append(line)
    for p in phases:
        for name, r in result["phases"][p]["rows"].items():
            if "skipped" in r:
                lines.append(f"{p} {name}: skipped, {r['skipped']}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = HFExpertsBench()
    for name, value in asdict(defaults).items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--save", action="store_true", help="write benchmarks/results/hf-experts-<date>.json")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = vars(p.parse_args())
    save, out = a.pop("save"), Path(a.pop("out"))
    cfg = HFExpertsBench(**a)
    result = run(cfg)
    m = result["machine"]
    print(f"{m.get('cpu')} ({m.get('torch_threads')} torch thread(s)), torch {m.get('torch')}, "
          f"{cfg.experts} experts top-{cfg.top_k}, dim {cfg.dim}, hidden {cfg.hidden}, "
          f"{cfg.dtype}, median of {cfg.repeats} (round-robin)")  # fmt: skip
    print(table(result))
    if save:
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"hf-experts-{dt.date.today().isoformat()}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
