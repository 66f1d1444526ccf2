"""results.json: assembled from the finished run files (the schema is in docs/lab.md).

:func:`build_results` is the whole file's content; :func:`aggregate_variant` one item of its
``variants`` list; :class:`Results` is what :func:`ffnlab.lab.compare.run_compare` returns.
"""

from __future__ import annotations

import datetime as dt
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...files import json_safe
from ...sizing import default_hidden_dim, ffn_flops_per_token
from ...variants import get_variant
from ..claims.check import check_claims
from ..stats.comparisons import comparisons
from ..train.variant import LOAD_BALANCE_COEF, lab_variant
from ..verdicts import DEFAULT_RESOLUTION

__all__ = ["SCHEMA_VERSION", "Results", "aggregate_variant", "build_results", "now", "versions"]

SCHEMA_VERSION = 2  # 2: comparisons, claims, config.resolution_bpb / seeding / data_fraction

# Side measurements that are not per variant (recorded under "measured").
EXTRA_MEASUREMENTS = ("activation_cost", "ffn_ratios", "saturation", "swish_beta")

# The fields of a run record that results.json repeats per seed.
PUBLIC_RUN_FIELDS = ("seed", "val_bpb", "curve", "tokens_per_s", "dead_fraction",
                     "final_train_loss", "wall_s", "diverged", "load_balance")

DEAD_RULE = ("a unit is dead if |act(W1 x)| <= threshold on every validation token; threshold 0 "
             "for relu/relu2/reglu, else dead_threshold x the layer's largest |act(W1 x)|")


@dataclass(frozen=True)
class Results:
    """What one compare invocation produced in this process.

    ``content`` is results.json's content on rank 0 (the only process that writes files) and
    ``None`` on the other ranks; ``interrupted``: Ctrl-C stopped the training, and what was
    written is partial (``content["status"] == "partial"``).
    """

    out: Path
    interrupted: bool
    content: dict[str, Any] | None

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    @property
    def report_path(self) -> Path:
        return self.out / "report.md"


def now() -> str:
    """The current UTC time as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def versions() -> dict[str, str]:
    from ... import __version__

    return {"ffnlab": __version__, "torch": torch.__version__, "python": platform.python_version()}


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def _load_balance(name: str, runs: list[dict]) -> dict[str, Any] | None:
    """An MoE variant's load over its runs (None for a dense one, or when no run measured it).

    ``cv`` / ``max_over_mean``: the mean over seeds of each run's mean over layers (cv) and
    largest layer (max / mean); ``sorted_share``: the share of the busiest expert, the next,
    ... (each layer of each run sorted, then averaged: expert numbers mean nothing across
    seeds); ``uniform_share``: 1 / E.
    """
    lv = lab_variant(name)
    loads = [r["load_balance"] for r in runs if isinstance(r.get("load_balance"), dict)]
    if not lv.is_moe or not loads:
        return None
    cvs = [statistics.fmean(c for c in lb["cv"] if c is not None) for lb in loads
           if any(c is not None for c in lb["cv"])]
    mom = [max(c for c in lb["max_over_mean"] if c is not None) for lb in loads
           if any(c is not None for c in lb["max_over_mean"])]
    rows = [sorted(share, reverse=True) for lb in loads for share in lb["share"]]
    return {"cv": _mean(cvs), "cv_per_seed": cvs, "max_over_mean": _mean(mom),
            "max_over_mean_per_seed": mom,
            "sorted_share": [statistics.fmean(col) for col in zip(*rows, strict=True)],
            "uniform_share": 1.0 / lv.n_experts}


def _moe_fields(name: str, dim: int) -> dict[str, Any]:
    lv = lab_variant(name)
    if not lv.is_moe:
        return {}
    from ..train.probes import DEAD_SKIPPED_MOE

    return {"moe": {"base": lv.base, "n_experts": lv.n_experts, "top_k": lv.top_k,
                    "expert_hidden": lv.hidden(dim), "dense_hidden": lv.dense_hidden(dim),
                    "router": "softmax", "router_params": lv.n_experts * dim,
                    "load_balance_coef": LOAD_BALANCE_COEF},
            "skipped": {"dead_fraction": DEAD_SKIPPED_MOE}}


def aggregate_variant(name: str, runs: list[dict], *, dim: int, measured: dict) -> dict[str, Any]:
    """One ``variants`` item of results.json from the variant's finished runs.

    ``params`` is every FFN weight of one layer (``params_total``; for an MoE, all experts and
    the router); ``params_active`` the weights one token uses (equal for a dense FFN). An MoE
    variant also has ``moe`` (its shape and sizing), ``load_balance`` and ``skipped`` (what
    was not measured, and why).
    """
    lv = lab_variant(name)
    v = get_variant(lv.base)
    hidden = lv.hidden(dim)
    # Quality numbers (bpb, curve, dead units) come from the runs that did not diverge: a seed
    # that blew up mid-run would otherwise shift every later point of the mean curve.
    ok = [r for r in runs if not r["diverged"]]
    bpbs = [r["val_bpb"] for r in ok if r["val_bpb"] is not None]
    by_step: dict[int, list[float]] = {}
    for r in ok:
        for step, bpb in r["curve"]:
            if bpb is not None:
                by_step.setdefault(step, []).append(bpb)
    return {
        "name": name, "gated": v.gated, "activation": v.activation, "hidden": hidden,
        "params": lv.params_total(dim), "params_total": lv.params_total(dim),
        "params_active": lv.params_active(dim),
        # forward FLOPs per token of one layer's FFN (matmul / elementwise / total), for the
        # claims, which read numbers only; None for an MoE (it depends on the routing)
        "flops_per_token": None if lv.is_moe else ffn_flops_per_token(lv.base, dim, hidden),
        "val_bpb_mean": _mean(bpbs),
        "val_bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else (0.0 if bpbs else None),
        "tokens_per_s": _mean([r["tokens_per_s"] for r in runs]) or 0.0,
        "ffn_ms": measured.get("ffn_ms", {}).get(name),
        "act_ns_per_element": measured.get("act_ns_per_element", {}).get(name),
        "saved_bytes_per_token": measured.get("saved_bytes_per_token", {}).get(name),
        "dead_fraction": _mean([r["dead_fraction"] for r in ok]),
        "curve": [[s, statistics.fmean(b)] for s, b in sorted(by_step.items())],
        "diverged_runs": sum(bool(r["diverged"]) for r in runs),
        "load_balance": _load_balance(name, ok),
        # .get: run files saved before a field existed still load
        "runs": [{k: r.get(k) for k in PUBLIC_RUN_FIELDS} for r in sorted(runs, key=lambda r: r["seed"])],
        **_moe_fields(name, dim),
    }


def build_results(*, status: str, preset_name: str, variants: list[str], seeds: list[int],
                  runs: dict[tuple[str, int], dict | None], model_cfg, train_cfg,
                  device: torch.device, dtype_name: str, backend: str, world_size: int,
                  corpus_identity: dict, measured: dict, started: str,
                  resolution: float | None = None, seeding: dict | None = None,
                  data_fraction: float = 1.0, lrs: dict[str, float] | None = None,
                  tuning: dict | None = None) -> dict[str, Any]:
    """results.json's content. ``runs`` maps every wanted (variant, seed) to its record or None.

    ``lrs``: the learning rate each variant's runs trained at (``train_cfg.lr`` where absent);
    ``tuning`` (:func:`ffnlab.lab.run.tuning.tuning_content`, with ``config``): each variant's
    tuning, written as its ``tuning``, and the comparisons at the shared rate
    (``comparisons_shared_rate``); ``config.tuning`` says whether and how rates were tuned.

    ``comparisons`` and ``claims`` are computed from the assembled variants
    (:mod:`ffnlab.lab.stats.comparisons`, :mod:`ffnlab.lab.claims.check`) at ``resolution`` bits per byte.
    """
    from ..train.probes import DEAD_THRESHOLD

    missing = [{"variant": v, "seed": s} for (v, s), r in runs.items() if r is None]
    if missing:
        status = "partial"
    m, t = model_cfg, train_cfg
    config = {
        "preset": preset_name, "steps": t.steps, "seeds": seeds, "variants": list(variants),
        "device": device.type, "dtype": dtype_name, "backend": backend, "world_size": world_size,
        "model": {**m.as_dict(), "batch_size": t.batch_size,
                  "plain_hidden": default_hidden_dim("relu", m.dim, multiple_of=1),
                  "gated_hidden": default_hidden_dim("swiglu", m.dim, multiple_of=1)},
        "optimizer": t.optimizer, "lr": t.lr, "warmup": t.warmup, "min_lr_ratio": t.min_lr_ratio,
        "weight_decay": t.weight_decay, "grad_clip": t.grad_clip,
        "tokens_per_run": t.steps * t.batch_size * m.seq_len,
        "eval_every": t.eval_every, "eval_tokens": t.eval_tokens,
        "dead_threshold": DEAD_THRESHOLD, "dead_rule": DEAD_RULE,
        "resolution_bpb": DEFAULT_RESOLUTION if resolution is None else resolution,
        "data_fraction": data_fraction, "seeding": seeding or {},
        "tuning": {"enabled": bool(tuning), **((tuning or {}).get("config") or {}),
                   "rule": ("per variant: the lowest point of the parabola in log(lr) through "
                            "the best grid rate and its neighbours (mean bpb over the tuning "
                            "seeds), the grid widened past an edge; verdict runs on other seeds")
                   if tuning else None},
        "versions": versions(), "started": started, "finished": now(),
    }
    items = []
    for v in variants:
        done = [r for s in seeds if (r := runs.get((v, s))) is not None]
        if done:
            item = aggregate_variant(v, done, dim=m.dim, measured=measured)
            item["lr"] = (lrs or {}).get(v, t.lr)
            if tuning:
                item["tuning"] = tuning["per_variant"].get(v)
            items.append(item)
    content = {"schema_version": SCHEMA_VERSION, "status": status, "config": config,
               "corpus": corpus_identity, "variants": items, "missing": missing,
               # NaN (an interval from too few timing rounds) becomes null, as below
               "measured": json_safe({k: measured[k] for k in EXTRA_MEASUREMENTS
                                      if k in measured})}
    # NaN (a comparison with one seed) becomes null: results.json is strict JSON.
    # Each comparison names the optimizer it was trained under (a sweep over optimizers reads
    # the same comparison across them: ffnlab.lab.claims.robust).
    content["comparisons"] = json_safe([{**c.to_dict(), "optimizer": t.optimizer} for c in
                                        comparisons(content, config["resolution_bpb"])])
    if tuning:
        content["comparisons_shared_rate"] = json_safe(tuning["shared_comparisons"])
    content["claims"] = json_safe([c.to_dict() for c in check_claims(content)])
    return content
