"""Timings side by side: the FFN of each variant at the model's size, each activation alone, and
the cost of each activation with a 95 % interval from paired per-round ratios
(:func:`activation_cost`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...bench import timing
from ...ops.reference import hidden_activation
from ...variants import get_variant
from ..train.model import ModelConfig
from ..train.precision import autocast, param_dtype
from ..train.variant import lab_variant

__all__ = ["paired_ratios", "ffn_timings", "activation_timings", "ACTIVATION_COST_SET", "ACTIVATION_COST_REPS", "activation_cost_numel", "activation_kernels", "median_interval", "activation_cost"]


def _median_ms_side_by_side(fns: dict[str, Callable[[], None]], reps: int, device,
                            raw: dict | None = None) -> dict[str, float]:
    """Median wall time of each fn in ms, timed round-robin after one warm-up call each
    (:func:`ffnlab.bench.timing.round_robin`); an error propagates. ``raw``, when given,
    receives each fn's per-round times in seconds (round ``i`` of every fn ran together)."""
    calls = {name: {"call": fn} for name, fn in fns.items()}
    times, _ = timing.round_robin(calls, torch.device(device), repeats=reps, errors=())
    if raw is not None:
        raw.update({k: list(t["call"]) for k, t in times.items()})
    return {k: timing.median(t["call"]) * 1e3 for k, t in times.items()}


def paired_ratios(raw: dict[str, list[float]], pairs: list[tuple[str, str]]) -> dict[str, dict]:
    """``"b/a" -> median_interval`` of the per-round time ratios ``t_b / t_a`` for each pair
    present in ``raw`` (per-round times from :func:`_median_ms_side_by_side`)."""
    return {f"{b}/{a}": median_interval([y / x for x, y in zip(raw[a], raw[b], strict=True)
                                         if x > 0])
            for a, b in pairs if a in raw and b in raw}


def ffn_timings(variants: list[str], model_cfg: ModelConfig, *, batch_size: int, reps: int = 10,
                backend: str = "auto", device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, raw: dict | None = None) -> dict[str, float]:
    """FFN-only forward+backward time in ms (median) at the model's size, for each variant
    (``raw``: filled with the per-round times, for :func:`paired_ratios`).

    Equivalent PyTorch per call: ``y = ffn(x); y.backward(g)`` with ``x [B, T, dim]``. An MoE
    lab variant is timed as built (router at initialisation: near-random routing, the load a
    trained router is pushed towards by its balancing loss).
    """
    device = torch.device(device)
    fns = {}
    for v in variants:
        ffn = lab_variant(v).build(model_cfg.dim, backend=backend, device=device,
                                  dtype=param_dtype(dtype))
        x = torch.randn(batch_size, model_cfg.seq_len, model_cfg.dim, device=device,
                        dtype=param_dtype(dtype), requires_grad=True)
        g = torch.randn_like(x)

        def fn(ffn=ffn, x=x, g=g) -> None:
            with autocast(device, dtype):
                y = ffn(x)
            y.backward(g.to(y.dtype))
            x.grad = None
            ffn.zero_grad(set_to_none=True)

        fns[v] = fn
    return _median_ms_side_by_side(fns, reps, device, raw)


def activation_timings(variants: list[str], *, numel: int = 1 << 21, reps: int = 10,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The elementwise part alone, forward+backward, in ns per hidden element.

    Equivalent PyTorch: ``a = act(h1)`` (plain) or ``a = act(h1) * h3`` (gated, the product is
    part of a GLU's elementwise cost), then ``a.backward(g)``; ``h1, h3, g`` of ``numel``
    elements. The default 2M elements (8 MB in fp32) is far above any CPU cache. An MoE lab
    variant's experts run its dense variant's elementwise maths, timed under its own name.
    """
    device = torch.device(device)
    fns = {}
    for v in variants:
        var = get_variant(lab_variant(v).base)
        h1 = torch.randn(numel, device=device, dtype=dtype, requires_grad=True)
        h3 = torch.randn(numel, device=device, dtype=dtype, requires_grad=True) if var.gated else None
        g = torch.randn(numel, device=device, dtype=dtype)

        def fn(act=var.activation, h1=h1, h3=h3, g=g) -> None:
            hidden_activation(act, h1, h3).backward(g)
            h1.grad = None
            if h3 is not None:
                h3.grad = None

        fns[v] = fn
    ms = _median_ms_side_by_side(fns, reps, device)
    return {k: t * 1e6 / numel for k, t in ms.items()}


# --- the cost of each activation, with an interval ----------------------------------------------

ACTIVATION_COST_SET = ("relu", "sigmoid", "tanh", "swish", "gelu", "gelu_tanh")
"""The activations :func:`activation_cost` times, whichever variants a run trains."""

ACTIVATION_COST_REPS = 200
"""Rounds the lab runs :func:`activation_cost` for (about 0.3 s on a CPU at 64K elements)."""


def activation_cost_numel(device: torch.device | str) -> int:
    """Elements per call the lab times :func:`activation_cost` on.

    CPU: 64K (256 KB per buffer, 6 MB for all 24 buffers, cache-resident), so the time is the
    activation's arithmetic (the exp, division, erf the claims are about) rather than memory
    traffic shared with whatever else runs. Measured on the 2-core development machine with
    another job on both cores: at 1M and 4M elements the ratios to relu shrank towards 1 and
    moved with the other job's load (two of eleven sigmoid/relu intervals at 1M reached below
    1.05: [0.99, 1.055] and [1.044, 1.104]; another was [1.17, 1.25]); at 64K every
    sigmoid/relu interval of thirteen runs lay in [1.12, 1.94]. GPU: 16M elements, large enough
    that kernel launches do not dominate; there an elementwise kernel is limited by memory
    bandwidth, which is the cost a GPU FFN pays.
    """
    return 1 << 16 if torch.device(device).type == "cpu" else 1 << 24

_aten = torch.ops.aten

# name -> (forward(h, out=y), backward(g, h, y, out=dh)): the kernels autograd runs for
# ``hidden_activation(name, h).backward(g)``, writing into buffers made once. Allocating the
# output and the gradient on every call (what autograd does) costs page faults whenever the
# C allocator hands back fresh pages; on a 2-core CPU that added about 2 ms to 1M-element calls
# in some rounds and not in others, making per-round ratios bimodal and their median move by
# 2x between runs. The allocation is the same for every activation, so leaving it out removes
# noise, not cost. relu's forward is ``clamp_min`` because that is the kernel ``aten::relu``
# runs; ``aten::relu.out`` goes through a slower generic path (3x on the development machine).
_FWD_BWD: dict[str, tuple] = {
    "relu": (lambda h, y: _aten.clamp_min.out(h, 0, out=y),
             lambda g, h, y, o: _aten.threshold_backward.grad_input(g, y, 0, grad_input=o)),
    "sigmoid": (lambda h, y: _aten.sigmoid.out(h, out=y),
                lambda g, h, y, o: _aten.sigmoid_backward.grad_input(g, y, grad_input=o)),
    "tanh": (lambda h, y: _aten.tanh.out(h, out=y),
             lambda g, h, y, o: _aten.tanh_backward.grad_input(g, y, grad_input=o)),
    "swish": (lambda h, y: _aten.silu.out(h, out=y),
              lambda g, h, y, o: _aten.silu_backward.grad_input(g, h, grad_input=o)),
    "gelu": (lambda h, y: _aten.gelu.out(h, out=y),
             lambda g, h, y, o: _aten.gelu_backward.grad_input(g, h, grad_input=o)),
    "gelu_tanh": (lambda h, y: _aten.gelu.out(h, approximate="tanh", out=y),
                  lambda g, h, y, o: _aten.gelu_backward.grad_input(g, h, approximate="tanh",
                                                                     grad_input=o)),
}


def activation_kernels(name: str) -> tuple:
    """``(forward(h, y), backward(g, h, y, dh))`` that :func:`activation_cost` times for
    ``name``: ``y = act(h)`` and ``dh = g * act'(h)``, written into ``y`` and ``dh``."""
    if name not in _FWD_BWD:
        raise ValueError(f"activation_cost has no kernels for {name!r}; it times "
                         f"{', '.join(_FWD_BWD)}")
    return _FWD_BWD[name]


def median_interval(values: list[float], level: float = 0.95) -> dict[str, float]:
    """The median of ``values`` and a distribution-free interval for the true median.

    The interval is ``[x_(k), x_(n+1-k)]`` of the sorted values with the largest ``k`` such that
    ``P(k <= B <= n - k) >= level`` for ``B ~ Binomial(n, 1/2)`` (the number of values below the
    true median): it needs the values to be independent draws from one distribution, nothing
    about its shape, and its exact coverage is returned. Fewer than 6 values cannot reach 95 %
    (``n = 5`` gives 93.75 %); the bounds are then NaN. Returns ``{"median", "ci95": [lo, hi],
    "coverage", "n"}``.
    """
    xs = sorted(values)
    n = len(xs)
    med = timing.median(xs) if xs else math.nan
    best = None
    for k in range(1, n // 2 + 1):
        # Coverage of [x_(k), x_(n+1-k)] is 1 - 2 P(B <= k - 1).
        cover = 1.0 - 2.0 * sum(math.comb(n, j) for j in range(k)) / 2**n
        if cover < level:
            break
        best = (k, cover)
    if best is None:
        return {"median": med, "ci95": [math.nan, math.nan], "coverage": math.nan, "n": n}
    k, cover = best
    return {"median": med, "ci95": [xs[k - 1], xs[n - k]], "coverage": cover, "n": n}


def activation_cost(names: tuple[str, ...] | list[str] = ACTIVATION_COST_SET, *,
                    numel: int = 1 << 20, reps: int = ACTIVATION_COST_REPS,
                    device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> dict:
    """Forward+backward of each activation alone, with paired ratios and their intervals.

    One call is ``y = act(h); dh = g * act'(h)`` on ``numel`` elements with the kernels
    autograd runs (:func:`activation_kernels`; equivalent PyTorch:
    ``hidden_activation(name, h).backward(g)``), into buffers allocated once. The calls are
    timed round-robin (:func:`ffnlab.bench.timing.round_robin`, one warm-up call each), ``reps``
    rounds; within a round every activation runs once, so ``t_b[i] / t_a[i]`` is a *paired*
    ratio, which a slow stretch of the machine (clock, another process) moves much less than it
    moves either time.

    Returns::

        {"numel", "reps", "device", "dtype", "interval": <how the intervals are made>,
         "ns_per_element": {name: median over rounds},
         "ratios": {"b/a": {"median", "ci95": [lo, hi], "coverage", "n"}}}

    with one ``"b/a"`` entry (time of ``b`` over time of ``a``) for every pair where ``a``
    comes before ``b`` in ``names``; with relu first, ``"gelu/relu"`` etc. are each activation
    against relu. ``median`` is the median of the per-round ratios and ``ci95`` the
    distribution-free interval of :func:`median_interval` (coverage at least 95 %; NaN bounds
    with fewer than 6 rounds).
    """
    device = torch.device(device)
    names = list(dict.fromkeys(names))
    fns = {}
    for n in names:
        fwd, bwd = activation_kernels(n)
        h, g, y, dh = (torch.randn(numel, device=device, dtype=dtype) for _ in range(4))

        def fn(fwd=fwd, bwd=bwd, h=h, g=g, y=y, dh=dh) -> None:
            fwd(h, y)
            bwd(g, h, y, dh)

        fns[n] = {"call": fn}
    times, _ = timing.round_robin(fns, device, repeats=reps, errors=())
    t = {n: times[n]["call"] for n in names}
    ratios = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratios[f"{b}/{a}"] = median_interval([y / x for x, y in zip(t[a], t[b], strict=True)
                                                  if x > 0])
    return {
        "numel": numel, "reps": reps, "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "interval": ("median of the per-round paired ratios; 95 % distribution-free interval "
                     "for the median from order statistics (binomial ranks)"),
        "ns_per_element": {n: timing.median(t[n]) * 1e9 / numel for n in names},
        "ratios": ratios,
    }


# --- saturation at initialisation ---------------------------------------------------------------
