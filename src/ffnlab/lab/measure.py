"""What the lab measures besides training: bytes saved for backward, FFN and activation
timings side by side, and the memory a preset needs (checked before anything is allocated).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..bench import timing
from ..ffn import FeedForward
from ..ops.memory import saved_tensor_bytes
from ..ops.reference import hidden_activation
from ..sizing import default_hidden_dim
from ..variants import get_variant
from .model import ModelConfig
from .precision import autocast, param_dtype

__all__ = [
    "activation_timings",
    "available_memory_bytes",
    "estimate_memory_bytes",
    "ffn_timings",
    "saved_bytes_per_token",
]


def saved_bytes_per_token(variant: str, model_cfg: ModelConfig, *, batch_size: int,
                          backend: str = "auto", device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> float:
    """Bytes the model's FFNs save for backward, per token (parameters excluded).

    One FFN call on a training-shaped input ``[batch_size, seq_len, dim]``, times ``n_layers``,
    divided by ``batch_size * seq_len``. The FFN is built in ``dtype`` and run without autocast:
    under autocast it would also save its cast copies of the weights, which are new storages
    that the parameter exclusion cannot see, and would bill weights as activations.
    """
    hidden = default_hidden_dim(variant, model_cfg.dim, multiple_of=1)
    ffn = FeedForward(model_cfg.dim, hidden, variant, bias=False, backend=backend, device=device,
                      dtype=dtype)
    x = torch.randn(batch_size, model_cfg.seq_len, model_cfg.dim, device=device, dtype=dtype,
                    requires_grad=True)
    nbytes, _ = saved_tensor_bytes(lambda: ffn(x), exclude=list(ffn.parameters()))
    return nbytes * model_cfg.n_layers / (batch_size * model_cfg.seq_len)


def _median_ms_side_by_side(fns: dict[str, Callable[[], None]], reps: int, device) -> dict[str, float]:
    """Median wall time of each fn in ms, timed round-robin after one warm-up call each
    (:func:`ffnlab.bench.timing.round_robin`); an error propagates."""
    calls = {name: {"call": fn} for name, fn in fns.items()}
    times, _ = timing.round_robin(calls, torch.device(device), repeats=reps, errors=())
    return {k: timing.median(t["call"]) * 1e3 for k, t in times.items()}


def ffn_timings(variants: list[str], model_cfg: ModelConfig, *, batch_size: int, reps: int = 10,
                backend: str = "auto", device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """FFN-only forward+backward time in ms (median) at the model's size, for each variant.

    Equivalent PyTorch per call: ``y = ffn(x); y.backward(g)`` with ``x [B, T, dim]``.
    """
    device = torch.device(device)
    fns = {}
    for v in variants:
        hidden = default_hidden_dim(v, model_cfg.dim, multiple_of=1)
        ffn = FeedForward(model_cfg.dim, hidden, v, bias=False, backend=backend, device=device,
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
    return _median_ms_side_by_side(fns, reps, device)


def activation_timings(variants: list[str], *, numel: int = 1 << 21, reps: int = 10,
                       device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The elementwise part alone, forward+backward, in ns per hidden element.

    Equivalent PyTorch: ``a = act(h1)`` (plain) or ``a = act(h1) * h3`` (gated, the product is
    part of a GLU's elementwise cost), then ``a.backward(g)``; ``h1, h3, g`` of ``numel``
    elements. The default 2M elements (8 MB in fp32) is far above any CPU cache.
    """
    device = torch.device(device)
    fns = {}
    for v in variants:
        var = get_variant(v)
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


# --- memory -----------------------------------------------------------------------------------


def estimate_memory_bytes(model_cfg: ModelConfig, *, batch_size: int, dtype: torch.dtype) -> int:
    """A generous upper estimate of one run's peak memory (the largest variant).

    Parameters x 4 (weights, gradients, two AdamW moments) in the master dtype, plus per layer
    the activations autograd keeps: ~12 dim-wide and 3 hidden-wide tensors per token and the
    attention matrix (the CPU kernel materialises ``[B, H, T, T]``), plus logits, their softmax
    and gradient (``3 * vocab`` per token); then x 1.5 for allocator slack and temporaries.
    """
    d, L, T, B = model_cfg.dim, model_cfg.n_layers, model_cfg.seq_len, batch_size
    hidden = 4 * d
    params = model_cfg.vocab * d + T * d + L * (4 * d * d + 2 * d * hidden + 2 * d) + d
    w = 8 if dtype == torch.float64 else 4
    per_layer = B * T * (12 * d + 3 * hidden) + 2 * B * model_cfg.n_heads * T * T
    acts = L * per_layer + 3 * B * T * model_cfg.vocab
    return int(1.5 * (4 * params + acts) * w)


def available_memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory on ``device`` in bytes (MemAvailable on Linux CPUs), or None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
