"""Recommend an FFN variant from a lab run's measurements on this machine.

:func:`recommend` reads a results dict written by ``ffnlab compare`` (:func:`find_results`
and :func:`load_results` locate and check the file; by default ``runs/demo/results.json`` or
``runs/compare/results.json``) and names the variant that best fits a priority, with the
trade-off in measured numbers and the runner-up.

Rules (ties are decided by the next criterion, never by order in the file):

* quality: lowest validation bits per byte;
* speed: highest training tokens/s; variants within the 5 % timing noise of the fastest are
  treated as equally fast and the best quality among them wins;
* memory: fewest bytes saved for backward per token; equal byte counts (within 1 %) are
  decided by quality.

With ``dim`` given, the recommendation adds what the pick and the runner-up cost per layer at
model width ``dim``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from ..errors import UsageError, check_choice
from ..numbers import as_float
from .stats import paired
from .stats import table as A
from .verdicts import TIMING_NOISE

PRIORITIES = ("quality", "speed", "memory")
DEFAULT_RESULTS = (Path("runs/demo/results.json"), Path("runs/compare/results.json"))
MEMORY_TIE = 0.01  # byte counts are deterministic; 1 % only absorbs rounding

__all__ = ["recommend", "load_results", "find_results", "find_robustness", "PRIORITIES",
           "DEFAULT_RESULTS"]


def find_results(path: str | None) -> Path:
    """The results file to read: ``path``, or the first default that exists."""
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise UsageError(f"--results {path!r} is a folder; give its results.json")
        if not p.is_file():
            raise UsageError(f"--results {path!r}: no such file")
        return p
    for p in DEFAULT_RESULTS:
        if p.is_file():
            return p
    raise UsageError("no lab results found (looked for runs/demo/results.json and "
                     "runs/compare/results.json); run `ffnlab compare --preset smoke --out "
                     "runs/compare` first, or pass --results PATH")


def load_results(path: Path) -> dict:
    """The parsed results dict, or a UsageError saying what is wrong with the file."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    try:
        return A.check_results(results)
    except ValueError as exc:
        raise UsageError(f"{path} is not a lab results file: {exc}") from None


def _order(usable: list[Mapping], priority: str) -> list[Mapping]:
    """Variants best-first for ``priority`` (see the module docstring)."""
    bpb = lambda v: as_float(v["val_bpb_mean"])
    if priority == "quality":
        return sorted(usable, key=lambda v: (bpb(v), v["name"]))
    if priority == "speed":
        key, best, tol, sign = "tokens_per_s", max, TIMING_NOISE, -1
    else:
        key, best, tol, sign = "saved_bytes_per_token", min, MEMORY_TIE, 1
    top = best(as_float(v[key]) for v in usable)
    tied = lambda v: abs(as_float(v[key]) - top) <= tol * abs(top)
    return sorted(usable, key=lambda v: (not tied(v), bpb(v) if tied(v) else sign * as_float(v[key]),
                                         v["name"]))


def _pct(a: float, b: float) -> str:
    """``a`` against ``b`` as a signed percentage; "n/a" when ``b`` is 0 or either is not finite
    (a hand-edited or partial results.json)."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return "n/a"
    return f"{(a / b - 1) * 100:+.1f}%"


def _versus(results: Mapping, a: Mapping, b: Mapping) -> dict:
    """What ``a`` gains or loses against ``b``, in measured numbers."""
    pd = paired.paired_difference(results, a["name"], b["name"])
    return {"other": b["name"], "bpb_diff": pd.mean if pd.n else
            as_float(a["val_bpb_mean"]) - as_float(b["val_bpb_mean"]),
            "bpb_distinguishable": pd.distinguishable, "paired_seeds": pd.n,
            "tokens_per_s_change": _pct(as_float(a.get("tokens_per_s")), as_float(b.get("tokens_per_s"))),
            "saved_bytes_change": _pct(as_float(a.get("saved_bytes_per_token")),
                                       as_float(b.get("saved_bytes_per_token")))}


def _vs_text(v: dict) -> str:
    noise = "beyond seed noise" if v["bpb_distinguishable"] else "within seed noise"
    parts = [f"{v['bpb_diff']:+.4f} bpb ({noise})"]
    for key, unit in (("tokens_per_s_change", "tokens/s"), ("saved_bytes_change", "saved bytes/token")):
        if v[key] not in ("+0.0%", "-0.0%", "+nan%"):
            parts.append(f"{v[key]} {unit}")
    return ", ".join(parts) + f" vs {v['other']}"


def _at_dim(results: Mapping, v: Mapping, dim: int) -> dict | None:
    from ..sizing import default_hidden_dim, ffn_flops_per_token, ffn_params

    measured_dim = ((results.get("config") or {}).get("model") or {}).get("dim")
    try:
        hidden = default_hidden_dim(v["name"], dim)
        flops = ffn_flops_per_token(v["name"], dim, hidden)
        out = {"dim": dim, "hidden": hidden, "params": ffn_params(v["name"], dim, hidden),
               "matmul_flops_per_token": flops["matmul"],
               "elementwise_share": flops["elementwise"] / flops["total"]}
    except (ValueError, KeyError):
        return None
    saved = as_float(v.get("saved_bytes_per_token"))
    if isinstance(measured_dim, int) and measured_dim > 0 and not math.isnan(saved):
        # Saved tensors are [tokens, dim] and [tokens, hidden] with hidden ∝ dim.
        out["saved_bytes_per_token_est"] = round(saved * dim / measured_dim)
    return out


def recommend(results: Mapping, priority: str, dim: int | None = None,
              robust: list | None = None) -> dict:
    """The recommendation as a dict: ``pick``, ``runner_up``, ``reasons`` and numbers;
    ``robust`` (a sweep's, :func:`find_robustness`): ``robustness`` says which of the pick's
    comparisons keep their verdict across optimizers, and the reasons name the others."""
    check_choice("priority", priority, PRIORITIES)
    need = {"quality": "val_bpb_mean", "speed": "tokens_per_s",
            "memory": "saved_bytes_per_token"}[priority]
    usable = [v for v in results.get("variants", [])
              if not math.isnan(as_float(v.get("val_bpb_mean"))) and not math.isnan(as_float(v.get(need)))]
    if not usable:
        raise UsageError(f"the results hold no variant with both a finite val_bpb_mean and "
                         f"{need}; nothing to recommend")
    ordered = _order(usable, priority)
    pick, runner = ordered[0], (ordered[1] if len(ordered) > 1 else None)
    by_quality = _order(usable, "quality")[0]
    fastest = _order(usable, "speed")[0] if all(
        not math.isnan(as_float(v.get("tokens_per_s"))) for v in usable) else None
    reasons = []
    if priority == "quality":
        reasons.append(f"{pick['name']} has the lowest validation loss: "
                       f"{as_float(pick['val_bpb_mean']):.4f} bpb.")
        other = fastest
    else:
        unit = "tokens/s" if priority == "speed" else "saved bytes/token"
        word = "fastest" if priority == "speed" else "leanest"
        top = (max if priority == "speed" else min)(usable, key=lambda v: as_float(v[need]))
        tol = TIMING_NOISE if priority == "speed" else MEMORY_TIE
        if as_float(top[need]) == as_float(pick[need]):
            reasons.append(f"{pick['name']} is the {word}: {as_float(pick[need]):,.0f} {unit}.")
        else:
            reasons.append(f"{pick['name']} ({as_float(pick[need]):,.0f} {unit}) is within {tol:.0%}"
                           f" of the {word}, {top['name']} ({as_float(top[need]):,.0f}), and the "
                           "best in quality among those that close.")
        other = by_quality
    if other is not None and other["name"] != pick["name"]:
        reasons.append(f"Trade-off: {_vs_text(_versus(results, pick, other))}.")
    rec = {"priority": priority, "pick": pick["name"], "reasons": reasons,
           "runner_up": None, "measured_on": {k: (results.get("config") or {}).get(k)
                                              for k in ("device", "dtype", "preset", "steps")}}
    if runner is not None:
        vs = _versus(results, runner, pick)
        better = []
        if vs["bpb_diff"] < 0 and vs["bpb_distinguishable"]:
            better.append("quality matters more")
        if as_float(runner.get("tokens_per_s")) > (1 + TIMING_NOISE) * as_float(pick.get("tokens_per_s")):
            better.append("throughput matters more")
        if as_float(runner.get("saved_bytes_per_token")) < as_float(pick.get("saved_bytes_per_token")):
            better.append("activation memory is tight")
        tie = "" if vs["bpb_distinguishable"] else "; tied on quality with the pick"
        when = tie + ("; prefer it when " + " or ".join(better) if better else
                      ("; either will do" if tie else "; no measured advantage over the pick"))
        rec["runner_up"] = {"name": runner["name"], "versus_pick": vs,
                            "text": f"Runner-up {runner['name']}: {_vs_text(vs)}{when}."}
    others = {}
    for p in PRIORITIES:
        key = {"quality": "val_bpb_mean", "speed": "tokens_per_s",
               "memory": "saved_bytes_per_token"}[p]
        ok = [v for v in usable if not math.isnan(as_float(v.get(key)))]
        if p != priority and ok:
            others[p] = _order(ok, p)[0]["name"]
    rec["other_priorities"] = others
    if dim is not None:
        rec["at_dim"] = {v["name"]: _at_dim(results, v, dim) for v in (pick, runner) if v}
    if robust:
        rec["robustness"] = _robustness(results, robust, pick["name"])
        rec["reasons"] += rec["robustness"]["lines"]
    return rec


def find_robustness(path: Path) -> list | None:
    """The ``robust`` list of the sweep ``path`` belongs to (``OUT/opt-muon/results.json`` ->
    ``OUT/sweep.json``, written by ``ffnlab compare --optimizers adamw,muon``), or None."""
    sweep = Path(path).parent.parent / "sweep.json"
    try:
        robust = json.loads(sweep.read_text(encoding="utf-8")).get("robust")
    except (OSError, ValueError, AttributeError):
        return None
    return robust if isinstance(robust, list) and robust else None


def _robustness(results: Mapping, robust: list, pick: str) -> dict:
    """Which of the pick's comparisons (at this run's size) keep their verdict across the
    optimizers of the sweep: the advice rests on the robust ones and names the others."""
    cfg = results.get("config") or {}
    model = cfg.get("model") or {}
    size = (as_float(model.get("dim")), as_float(cfg.get("data_fraction", 1.0)),
            as_float(model.get("n_layers", 1)))
    mine = [r for r in robust if isinstance(r, Mapping) and pick in (r.get("a"), r.get("b"))
            and (as_float(r.get("dim")), as_float(r.get("data_fraction")),
                 as_float(r.get("layers", 1))) == size]
    lines = []
    for r in mine:
        per = ", ".join(f"{o}: {p.get('verdict')}" for o, p in (r.get("by_optimizer") or {}).items())
        if r.get("robust"):
            lines.append(f"{r['a']} − {r['b']}: {r.get('verdict')} under every optimizer "
                         f"({per}), a verdict about the FFNs this advice can rest on.")
        else:
            lines.append(f"{r['a']} − {r['b']} is recipe-dependent ({per}): an answer about the "
                         f"optimizer as much as about the FFNs.")
    return {"robust": [f"{r['a']} − {r['b']}" for r in mine if r.get("robust")],
            "recipe_dependent": [f"{r['a']} − {r['b']}" for r in mine if not r.get("robust")],
            "lines": lines}
