"""A small GPT-style byte language model whose FFN is any ffnlab variant.

Architecture (pre-norm, as in LLaMA): token embedding (256 bytes) + learned positions ->
``n_layers`` x [RMSNorm -> causal self-attention -> residual; RMSNorm -> FFN -> residual] ->
RMSNorm -> output head tied to the token embedding. Attention uses
``F.scaled_dot_product_attention(..., is_causal=True)``. No dropout: runs are short and the
comparison is about the FFN, not regularisation.

Equal FFN budgets (``ffnlab.sizing.default_hidden_dim(variant, dim, multiple_of=1)``): plain
variants use ``hidden = 4*dim`` (2 matrices, ``8*dim^2`` weights); gated ones use
``llama_hidden_dim(dim, multiple_of=1) = int(8*dim/3)`` (3 matrices, ``3*int(8*dim/3)*dim`` ~
``8*dim^2``). The gap is below one hidden unit's worth
of weights: at dim 128 it is 131072 vs 130944 (0.1%), never more than 2% for dim >= 17.
Biases are off in every FFN so that the budgets stay equal.

Initialisation (:func:`init_parameters`) is what makes runs *paired*: every non-FFN parameter
is drawn from a generator seeded by the seed alone, in name order, so all variants of one seed
start from the same embedding, attention and norms; the FFN weights come from a generator
seeded by (seed, variant).

The FFN may also be a mixture of experts (``moe:swiglu:8x2``, :mod:`ffnlab.lab.train.variant`):
:class:`ffnlab.MoEFeedForward` with experts of the dense hidden size / k, so a token passes
through as many FFN weights as in the dense model (plus the router).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UsageError, check_positive_int
from ...ffn import FeedForward
from ...moe import MoEFeedForward
from .data import VOCAB
from .variant import canonical_name, lab_variant

__all__ = ["ModelConfig", "TinyGPT", "init_parameters", "is_ffn_param"]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of :class:`TinyGPT`. ``dim`` must be divisible by ``n_heads``."""

    dim: int
    n_layers: int
    n_heads: int
    seq_len: int
    vocab: int = VOCAB

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "seq_len", "vocab"):
            check_positive_int(name, getattr(self, name))
        if self.dim % self.n_heads:
            raise UsageError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    def as_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: ``[B, T, dim] -> [B, T, dim]``."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        # [B, T, H, Dh] -> [B, H, T, Dh]
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block with an ffnlab :class:`FeedForward` (or, for an MoE lab
    variant, an :class:`ffnlab.MoEFeedForward`)."""

    def __init__(self, cfg: ModelConfig, variant: str, backend: str) -> None:
        super().__init__()
        self.norm1 = nn.RMSNorm(cfg.dim)
        self.attn = CausalSelfAttention(cfg.dim, cfg.n_heads)
        self.norm2 = nn.RMSNorm(cfg.dim)
        self.ffn = lab_variant(variant).build(cfg.dim, backend=backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class TinyGPT(nn.Module):
    """Byte-level GPT: ``tokens [B, T] int64 -> logits [B, T, vocab]`` (T <= seq_len)."""

    def __init__(self, cfg: ModelConfig, variant: str, *, backend: str = "auto") -> None:
        super().__init__()
        self.cfg = cfg
        self.variant = canonical_name(variant)
        self.tok = nn.Embedding(cfg.vocab, cfg.dim)
        self.pos = nn.Embedding(cfg.seq_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg, self.variant, backend) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.cfg.seq_len:
            raise ValueError(f"sequence of {t} tokens is longer than seq_len={self.cfg.seq_len}")
        x = self.tok(tokens) + self.pos.weight[:t]
        for block in self.blocks:
            x = block(x)
        # Tied head: logits = norm(x) @ E^T, so the embedding is the only vocab-sized matrix.
        return F.linear(self.norm(x), self.tok.weight)

    def ffns(self) -> list[FeedForward | MoEFeedForward]:
        return [b.ffn for b in self.blocks]

    @property
    def is_moe(self) -> bool:
        return lab_variant(self.variant).is_moe

    def moe_layers(self) -> list[MoEFeedForward]:
        """The MoE FFNs (every layer's for an MoE variant, none for a dense one)."""
        return [f for f in self.ffns() if isinstance(f, MoEFeedForward)]

    @contextmanager
    def capture_gate_preactivations(self) -> Iterator[list[list[torch.Tensor]]]:
        """Collect ``h1 = W1 x`` (the activation / gate branch) of every layer's FFN.

        Yields a list with one list per layer; each forward appends a ``[B, T, hidden]``
        tensor (detached). A hook on ``w1`` would fire, but it makes ``FeedForward`` call its
        Linears with the reference elementwise maths instead of handing the weights to the
        chosen backend, changing what runs: a forward *pre*-hook on the FFN takes its input
        ``x`` and computes ``W1 x`` (+ b1) itself, leaving the FFN's own path alone.

        An MoE model has no single ``W1`` (each expert sees only its tokens): UsageError.
        """
        if self.is_moe:
            raise UsageError(f"{self.variant}: gate pre-activations are per expert and per routed "
                             f"token; capture_gate_preactivations covers dense FFNs only")
        store: list[list[torch.Tensor]] = [[] for _ in self.blocks]
        handles = []
        for i, ffn in enumerate(self.ffns()):

            def hook(mod: FeedForward, inputs: tuple, i: int = i) -> None:
                with torch.no_grad():
                    store[i].append(F.linear(inputs[0], mod.w1.weight, mod.w1.bias).detach())

            handles.append(ffn.register_forward_pre_hook(hook))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()


def is_ffn_param(name: str) -> bool:
    """Whether a parameter name (from ``named_parameters``) belongs to an FFN block."""
    return ".ffn." in name


def _seed_from(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across runs and machines, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@torch.no_grad()
def init_parameters(model: TinyGPT, seed: int, *, embed_std: float = 0.02) -> None:
    """Paired initialisation (see the module docstring), fan-in scaled.

    Embeddings ~ N(0, embed_std); every Linear weight ~ N(0, 1/fan_in), so that ``h1 = W1 x``
    of a normalised ``x`` has unit variance and each activation works in its interesting range
    (GPT-2's fixed 0.02 would give std 0.16 at dim 64, where every activation is nearly linear
    and a GLU's product of two small branches starts near zero and learns slowly; docs/lab.md
    has the measurement). The output
    projections (``attn.proj``, ``w2``) are further scaled by 1/sqrt(2 * n_layers), GPT-2's
    residual scaling. Norm gains are 1. Stacked expert weights ``[E, out, in]`` are drawn
    the same way (fan-in ``shape[-1]``; ``experts.w2`` is an output projection); the router
    ``[E, dim]`` is a Linear weight like any other.
    """
    base = torch.Generator().manual_seed(_seed_from("ffnlab.lab", seed))
    ffn_gen = torch.Generator().manual_seed(_seed_from("ffnlab.lab.ffn", seed, model.variant))
    residual = 1.0 / math.sqrt(2 * model.cfg.n_layers)
    for name, p in sorted(model.named_parameters()):
        g = ffn_gen if is_ffn_param(name) else base
        if "norm" in name:
            p.fill_(1.0)
            continue
        if p.dim() == 1 and is_ffn_param(name):
            continue  # an activation's own parameters (xielu's alphas) keep their initial values
        if name in ("tok.weight", "pos.weight"):
            std = embed_std
        else:
            std = p.shape[-1] ** -0.5
            if name.endswith(("attn.proj.weight", "ffn.w2.weight", "ffn.experts.w2")):
                std *= residual
        p.copy_(torch.randn(p.shape, generator=g) * std)
