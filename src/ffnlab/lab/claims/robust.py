"""Whether a verdict survives a change of recipe: the same comparison read across optimizers.

A comparison run under several optimizers (``ffnlab compare --optimizers adamw,muon``, each
optimizer a full tuned comparison of its own) is **robust** when every optimizer gives it the
same verdict, and **recipe-dependent** otherwise: then it is an answer about the recipe as much
as about the FFNs, and both intervals are shown. The sources' claims are read the same way.
Settings are matched by model width, depth and data fraction; only those that ran under two or more
optimizers are read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...numbers import as_float

__all__ = ["optimizer_of", "robust_comparisons", "robust_claims"]


def optimizer_of(results: Mapping) -> str | None:
    """The optimizer a results dict trained with (``config.optimizer``)."""
    opt = (results.get("config") or {}).get("optimizer")
    return opt if isinstance(opt, str) else None


def _size_key(results: Mapping) -> tuple[float, float, float]:
    cfg = results.get("config") or {}
    model = cfg.get("model") or {}
    return (as_float(model.get("dim")), as_float(cfg.get("data_fraction", 1.0)),
            as_float(model.get("n_layers", 1)))


def _groups(settings: Sequence[Mapping]) -> list[tuple[tuple, dict[str, Mapping]]]:
    """``((dim, data_fraction, layers), {optimizer: results})`` for every size run under 2+
    optimizers."""
    by: dict[tuple, dict[str, Mapping]] = {}
    for r in settings:
        opt = optimizer_of(r)
        if opt is not None:
            by.setdefault(_size_key(r), {})[opt] = r
    return [(k, v) for k, v in sorted(by.items()) if len(v) >= 2]


def robust_comparisons(settings: Sequence[Mapping]) -> list[dict]:
    """One item per comparison present under every optimizer of a size: ``a``, ``b``, ``dim``,
    ``data_fraction``, ``by_optimizer`` (optimizer -> ``{mean, ci95, n, verdict}``),
    ``robust`` (the same verdict under each) and ``verdict`` (that verdict, else None)."""
    out = []
    for (dim, frac, layers), by_opt in _groups(settings):
        comps = {opt: {(c.get("a"), c.get("b")): c for c in r.get("comparisons") or []
                       if isinstance(c, Mapping)} for opt, r in by_opt.items()}
        pairs = [p for p in next(iter(comps.values())) if all(p in c for c in comps.values())]
        for a, b in pairs:
            per = {opt: {k: comps[opt][a, b].get(k) for k in ("mean", "ci95", "n", "verdict")}
                   for opt in by_opt}
            verdicts = {p["verdict"] for p in per.values()}
            robust = len(verdicts) == 1
            out.append({"a": a, "b": b, "dim": dim, "layers": layers, "data_fraction": frac,
                        "by_optimizer": per,
                        "robust": robust, "verdict": verdicts.pop() if robust else None})
    return out


def robust_claims(settings: Sequence[Mapping]) -> list[dict]:
    """The sources' claims across optimizers: ``id``, ``claim``, ``dim``, ``data_fraction``,
    ``by_optimizer`` (optimizer -> verdict), ``robust`` and ``verdict``."""
    out = []
    for (dim, frac, layers), by_opt in _groups(settings):
        claims = {opt: {c.get("id"): c for c in r.get("claims") or [] if isinstance(c, Mapping)}
                  for opt, r in by_opt.items()}
        ids = [i for i in next(iter(claims.values())) if all(i in c for c in claims.values())]
        for cid in ids:
            per = {opt: claims[opt][cid].get("verdict") for opt in by_opt}
            robust = len(set(per.values())) == 1
            first = next(iter(claims.values()))[cid]
            out.append({"id": cid, "claim": first.get("claim"), "dim": dim, "layers": layers,
                        "data_fraction": frac, "by_optimizer": per, "robust": robust,
                        "verdict": next(iter(per.values())) if robust else None})
    return out
