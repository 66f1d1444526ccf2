"""Memory the lab measures and plans for: bytes the FFNs save for backward per token, one run's
estimated peak (checked before anything is allocated), and what the device has free."""

from __future__ import annotations

import torch

from ...ops.memory import saved_tensor_bytes
from ..train.model import ModelConfig
from ..train.variant import lab_variant

__all__ = ["saved_bytes_per_token", "estimate_memory_bytes", "available_memory_bytes"]


def saved_bytes_per_token(variant: str, model_cfg: ModelConfig, *, batch_size: int,
                          backend: str = "auto", device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> float:
    """Bytes the model's FFNs save for backward, per token (parameters excluded).

    One FFN call on a training-shaped input ``[batch_size, seq_len, dim]``, times ``n_layers``,
    divided by ``batch_size * seq_len``. The FFN is built in ``dtype`` and run without autocast:
    under autocast it would also save its cast copies of the weights, which are new storages
    that the parameter exclusion cannot see, and would bill weights as activations. An MoE lab
    variant (``moe:swiglu:8x2``) is measured the same way, with its router at initialisation.
    """
    ffn = lab_variant(variant).build(model_cfg.dim, backend=backend, device=device, dtype=dtype)
    x = torch.randn(batch_size, model_cfg.seq_len, model_cfg.dim, device=device, dtype=dtype,
                    requires_grad=True)
    nbytes, _ = saved_tensor_bytes(lambda: ffn(x), exclude=list(ffn.parameters()))
    return nbytes * model_cfg.n_layers / (batch_size * model_cfg.seq_len)




def estimate_memory_bytes(model_cfg: ModelConfig, *, batch_size: int, dtype: torch.dtype,
                          ffn_params: int | None = None) -> int:
    """A generous upper estimate of one run's peak memory (the largest variant).

    Parameters x 4 (weights, gradients, up to two optimizer moments: AdamW's two, Muon's one) in the master dtype, plus per layer
    the activations autograd keeps: ~12 dim-wide and 3 hidden-wide tensors per token and the
    attention matrix (the CPU kernel materialises ``[B, H, T, T]``), plus logits, their softmax
    and gradient (``3 * vocab`` per token); then x 1.5 for allocator slack and temporaries.
    ``ffn_params``: the largest FFN's weights per layer when above the dense budget ``8 dim²``
    (a mixture of experts holds ``E / k`` times it).
    """
    d, L, T, B = model_cfg.dim, model_cfg.n_layers, model_cfg.seq_len, batch_size
    hidden = 4 * d
    ffn = max(2 * d * hidden, ffn_params or 0)
    params = model_cfg.vocab * d + T * d + L * (4 * d * d + ffn + 2 * d) + d
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
