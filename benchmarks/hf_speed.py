"""A transformers model patched by ``ffnlab.patch_hf`` against the same model unpatched, side by side.

    PYTHONPATH=src OMP_NUM_THREADS=2 .venv/bin/python benchmarks/hf_speed.py --threads 2
    PYTHONPATH=src .venv/bin/python benchmarks/hf_speed.py --quick --out /tmp/x   # seconds

Builds random-weight models from configs in code (nothing is downloaded): a dense Llama and a
Qwen3-MoE (:class:`SpeedConfig`). For each, the plain model and a deep copy patched with
``patch_hf`` (default backend ``auto``) are timed interleaved, round-robin
(:func:`ffnlab.bench.timing.round_robin`): entries ``plain``, ``patched`` and ``plain copy``
(another deep copy, unpatched, so that the ``plain copy / plain`` ratio shows the noise of the
machine and of where a copy's weights lie in memory), phases

* ``decode``: greedy generation, batch 1, ``new_tokens`` new tokens after a ``prompt``-token
  prompt (``model.generate(..., do_sample=False, max_new_tokens=n, min_new_tokens=n)``);
* ``prefill``: one forward without gradients on ``prefill = (batch, tokens)``;
* ``train``: forward and backward of the language-model loss on ``train = (batch, tokens)``,
  train mode, no optimizer step (the optimizer's cost is the same for both models);
* ``mlp call``: ``mlp_calls`` calls of the first layer's MLP (dense) or MoE block on one token
  without gradients, reported per call.

Ratios are medians of the per-round ``patched / plain`` ratios (:func:`paired_ratio`), with the
interquartile range of those per-round ratios; below 1 the patched model is faster. Results go to
``benchmarks/results/hf-speed-<date>.json`` (``--out`` elsewhere) with the machine's description;
the machine must be otherwise idle for the timings to mean anything.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
import statistics
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import ffnlab
from ffnlab.bench.machine import machine_info
from ffnlab.bench.timing import median, paired_ratio, round_robin

RESULTS = Path(__file__).resolve().parent / "results"
ENTRIES = ("plain", "patched", "plain copy")
PHASES = ("decode", "prefill", "train", "mlp call")


def _llama(**kw) -> dict:
    base = {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 8,
            "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 8192}  # fmt: skip
    return {**base, **kw}


def _qwen3_moe(**kw) -> dict:
    base = {"hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 256,
            "num_experts": 16, "num_experts_per_tok": 4, "norm_topk_prob": True,
            "num_hidden_layers": 8, "num_attention_heads": 4, "num_key_value_heads": 4,
            "head_dim": 64, "vocab_size": 8192}  # fmt: skip
    return {**base, **kw}


@dataclass(frozen=True)
class SpeedConfig:
    """What to build and time. ``dense`` / ``moe``: keyword arguments of ``LlamaConfig`` /
    ``Qwen3MoeConfig`` (a vocabulary of 8192 rather than 32000 keeps the output layer from
    hiding the MLPs' share of the time); ``prefill`` and ``train``: ``(batch, tokens)``."""

    dense: dict = field(default_factory=_llama)
    moe: dict = field(default_factory=_qwen3_moe)
    prompt: int = 16
    new_tokens: int = 48
    prefill: tuple[int, int] = (4, 256)
    train: tuple[int, int] = (4, 128)
    mlp_calls: int = 200
    repeats: int = 9
    threads: int | None = None  # torch threads (None: torch's default)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt", "new_tokens", "mlp_calls", "repeats"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("prefill", "train"):
            shape = getattr(self, name)
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"{name} must be (batch, tokens) >= 1, got {shape!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads!r}")


QUICK = SpeedConfig(
    dense=_llama(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, vocab_size=128),
    moe=_qwen3_moe(hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_experts=4,
                   num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, head_dim=16, vocab_size=128),
    prompt=4, new_tokens=3, prefill=(1, 16), train=(1, 16), mlp_calls=3, repeats=2,
)  # fmt: skip
"""Tiny sizes for a test of the script (the numbers mean nothing)."""


def build_models(kind: str, cfg: SpeedConfig) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    """``(plain, patched, n_patched)``: a random-weight model of ``kind`` (``"dense"`` or
    ``"moe"``) in eval mode and a deep copy of it patched by ``ffnlab.patch_hf``."""
    import transformers

    config_cls, model_cls, kwargs = {
        "dense": (transformers.LlamaConfig, transformers.LlamaForCausalLM, cfg.dense),
        "moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM, cfg.moe),
    }[kind]
    torch.manual_seed(cfg.seed)
    plain = model_cls(config_cls(**kwargs)).eval()
    patched = copy.deepcopy(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model left unpatched would time nothing of ffnlab
        n = ffnlab.patch_hf(patched)
    return plain, patched, n


def _phases(model: torch.nn.Module, cfg: SpeedConfig, inputs: dict) -> dict[str, Callable]:
    mlp = model.model.layers[0].mlp
    n = cfg.new_tokens

    def decode():
        model.eval()
        with torch.no_grad():
            return model.generate(inputs["prompt"], attention_mask=torch.ones_like(
                inputs["prompt"]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                pad_token_id=0)  # fmt: skip

    def prefill():
        model.eval()
        with torch.no_grad():
            model(inputs["prefill"])

    def train():
        model.train()
        model(inputs["train"], labels=inputs["train"]).loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    def mlp_call():
        with torch.no_grad():
            for _ in range(cfg.mlp_calls):
                mlp(inputs["token"])

    return dict(zip(PHASES, (decode, prefill, train, mlp_call), strict=True))


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure_model(kind: str, cfg: SpeedConfig) -> dict:
    """One model's rows: per phase the medians (seconds; ``mlp call`` per call), the
    ``patched / plain`` ratio with the quartiles of its per-round values, and the
    ``plain copy / plain`` ratio (the noise)."""
    plain, patched, n = build_models(kind, cfg)
    width, vocab = plain.config.hidden_size, plain.config.vocab_size
    g = torch.Generator().manual_seed(cfg.seed + 1)
    inputs = {
        "prompt": torch.randint(1, vocab, (1, cfg.prompt), generator=g),
        "prefill": torch.randint(1, vocab, cfg.prefill, generator=g),
        "train": torch.randint(1, vocab, cfg.train, generator=g),
        "token": torch.randn(1, 1, width, generator=g),
    }
    with torch.no_grad():
        diff = float((plain(inputs["prefill"]).logits - patched(inputs["prefill"]).logits)
                     .abs().max())  # fmt: skip
    same_tokens = bool(torch.equal(_phases(plain, cfg, inputs)["decode"](),
                                   _phases(patched, cfg, inputs)["decode"]()))  # fmt: skip
    calls = {"plain": _phases(plain, cfg, inputs), "patched": _phases(patched, cfg, inputs),
             "plain copy": _phases(copy.deepcopy(plain), cfg, inputs)}  # fmt: skip
    times, failed = round_robin(calls, torch.device("cpu"), repeats=cfg.repeats, errors=())
    rows = []
    for phase in PHASES:
        per = cfg.mlp_calls if phase == "mlp call" else 1
        t = {e: times[e][phase] for e in ENTRIES}
        ratios = [a / b for a, b in zip(t["patched"], t["plain"], strict=True)]
        lo, hi = _quartiles(ratios)
        rows.append({
            "phase": phase,
            "plain_s": median(t["plain"]) / per,
            "patched_s": median(t["patched"]) / per,
            "ratio": paired_ratio(t["patched"], t["plain"]),
            "ratio_q1": lo, "ratio_q3": hi,
            "noise_ratio": paired_ratio(t["plain copy"], t["plain"]),
        })  # fmt: skip
    return {"model": kind, "config": dict(cfg.dense if kind == "dense" else cfg.moe),
            "patched_modules": n, "logits_max_abs_diff": diff, "same_greedy_tokens": same_tokens,
            "failed": failed, "rows": rows}  # fmt: skip


def run(cfg: SpeedConfig) -> dict:
    """Both models measured; the dict written as JSON."""
    import transformers

    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        models = [measure_model(kind, cfg) for kind in ("dense", "moe")]
        machine = machine_info(torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    return {"what": "patch_hf speed: patched / plain", "optimizer_step": False,
            "transformers": transformers.__version__, "settings": dataclasses.asdict(cfg),
            "machine": machine, "models": models}  # fmt: skip


def report(result: dict) -> str:
    """The table printed: per model and phase the medians and ratios."""
    lines = [f"{'model':<6} {'phase':<9} {'plain':>11} {'patched':>11} {'patched/plain':>14} "
             f"{'(q1-q3)':>13} {'copy/plain':>12}"]  # fmt: skip
    for m in result["models"]:
        for r in m["rows"]:
            unit, scale = ("us", 1e6) if r["phase"] == "mlp call" else ("ms", 1e3)
            lines.append(
                f"{m['model']:<6} {r['phase']:<9} {r['plain_s'] * scale:>8.1f} {unit} "
                f"{r['patched_s'] * scale:>8.1f} {unit} {r['ratio']:>14.3f} "
                f"{r['ratio_q1']:>6.3f}-{r['ratio_q3']:.3f} {r['noise_ratio']:>12.3f}"
            )
        lines.append(f"{m['model']:<6} {m['patched_modules']} modules patched, logits max |diff| "
                     f"{m['logits_max_abs_diff']:.2g}, same greedy tokens: "
                     f"{m['same_greedy_tokens']}")  # fmt: skip
    return "\n".join(lines)


def save(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hf-speed-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a test of the script)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    a = p.parse_args(argv)
    cfg = QUICK if a.quick else SpeedConfig()
    cfg = dataclasses.replace(cfg, threads=a.threads,
                              repeats=a.repeats if a.repeats is not None else cfg.repeats)
    result = run(cfg)
    print(report(result))
    print("saved", save(result, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
