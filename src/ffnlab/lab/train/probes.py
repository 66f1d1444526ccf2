"""What the lab reads off a trained model on the validation windows: bits per byte
(:func:`evaluate_bpb`), dead units (:func:`dead_fraction`) and an MoE's expert load
(:func:`expert_load`). All three walk the windows in batches in eval mode through one helper,
:func:`_forward_windows`.

Dead units (:func:`dead_fraction`): a hidden unit of the activation (gate, for gated variants)
branch is dead when ``|act(h1)|`` never exceeds a threshold on any validation token, with
``h1 = W1 x``. For ReLU-type activations (relu, relu2 and so reglu) the threshold is 0: exact
zeros, i.e. ``h1 <= 0`` everywhere. Smooth activations are never exactly zero, so they use
``DEAD_THRESHOLD`` (1e-3) times the largest ``|act(h1)|`` of that layer. The absolute value
matters for tanh, identity and the negative lobes of GELU/Swish: a unit whose output is always
negative still passes information. An MoE model (:mod:`ffnlab.lab.train.variant`) has no dead
units in this sense (each expert's units see only the tokens routed to them): ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from ...activations import get_activation
from ...variants import get_variant
from .distributed import SINGLE, DistContext
from .model import TinyGPT
from .precision import autocast

__all__ = ["evaluate_bpb", "dead_fraction", "expert_load", "DEAD_THRESHOLD", "DEAD_SKIPPED_MOE",
           "RELU_TYPE"]

DEAD_THRESHOLD = 1e-3
RELU_TYPE = frozenset({"relu", "relu2"})  # activations with exact zeros (reglu uses relu)
DEAD_SKIPPED_MOE = ("not measured for a mixture of experts: each expert's units see only the "
                    "tokens routed to them, so 'never fires on any validation token' does not apply")


def _forward_windows(model: TinyGPT, windows: torch.Tensor, *, batch_size: int,
                     dtype: torch.dtype) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(window batch [b, T+1], logits [b, T, 256])`` for ``windows [N, T+1]`` in order, in eval
    mode (the model's mode is restored afterwards). Callers run under ``torch.no_grad()``: a
    grad-mode context inside a generator would stay switched while the caller holds a batch."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(0, windows.shape[0], batch_size):
            w = windows[i : i + batch_size].to(device)
            with autocast(device, dtype):
                logits = model(w[:, :-1])
            yield w, logits
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_bpb(model: TinyGPT, windows: torch.Tensor, *, batch_size: int, dtype: torch.dtype,
                 dist: DistContext = SINGLE) -> float:
    """Validation bits per byte on ``windows [N, T+1]`` (all of them, in order).

    In a process group each rank evaluates its share of the windows and the loss sums are
    added over ranks, so every rank gets the same number.
    """
    total, count = 0.0, 0
    for w, logits in _forward_windows(model, dist.split_rows(windows), batch_size=batch_size,
                                      dtype=dtype):
        loss = F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
        total += float(loss)
        count += w[:, 1:].numel()
    total, count = dist.all_reduce_sum([total, count])
    return total / count / math.log(2)


@torch.no_grad()
def dead_fraction(model: TinyGPT, windows: torch.Tensor, *, batch_size: int,
                  dtype: torch.dtype) -> float | None:
    """Share of FFN hidden units (gate branch for gated variants) dead on ``windows``.

    See the module docstring for the rule. Returns a fraction in [0, 1] over all layers' units;
    ``None`` for an MoE model (:data:`DEAD_SKIPPED_MOE`).
    """
    if model.is_moe:
        return None
    act = get_activation(get_variant(model.variant).activation)
    relu_type = act.name in RELU_TYPE
    device = next(model.parameters()).device
    peak = [torch.zeros(f.hidden_dim, dtype=torch.float64, device=device) for f in model.ffns()]
    with model.capture_gate_preactivations() as store:
        for _ in _forward_windows(model, windows, batch_size=batch_size, dtype=dtype):
            for layer, hs in enumerate(store):
                for h1 in hs:
                    a = act.fn(h1.float()).abs().flatten(0, -2).amax(0).double()
                    peak[layer] = torch.maximum(peak[layer], a)
                hs.clear()
    dead = 0
    for p in peak:
        threshold = 0.0 if relu_type else DEAD_THRESHOLD * float(p.max())
        dead += int((p <= threshold).sum())
    return dead / sum(p.numel() for p in peak)


@torch.no_grad()
def expert_load(model: TinyGPT, windows: torch.Tensor, *, batch_size: int,
                dtype: torch.dtype) -> dict | None:
    """An MoE model's load on ``windows [N, T+1]`` (None for a dense model).

    Per layer: ``tokens_per_expert`` (routed (token, expert) slots, summing to ``N*T*k``),
    ``share`` (those counts / their sum, summing to 1), ``cv`` (std / mean of the counts over
    experts, population std: 0 when balanced) and ``max_over_mean`` (1 when balanced, ``E / k``
    at worst).
    """
    layers = model.moe_layers()
    if not layers:
        return None
    counts = [torch.zeros(m.n_experts, dtype=torch.int64) for m in layers]
    for _ in _forward_windows(model, windows, batch_size=batch_size, dtype=dtype):
        for c, m in zip(counts, layers, strict=True):
            c += m.tokens_per_expert.cpu()
    out: dict[str, list] = {"tokens_per_expert": [], "share": [], "cv": [], "max_over_mean": []}
    for c in counts:
        f = c.double()
        mean = float(f.mean())
        out["tokens_per_expert"].append([int(x) for x in c])
        out["share"].append([float(x) for x in f / f.sum()] if mean > 0 else [0.0] * len(c))
        out["cv"].append(float(f.std(correction=0)) / mean if mean > 0 else None)
        out["max_over_mean"].append(float(f.max()) / mean if mean > 0 else None)
    return out
