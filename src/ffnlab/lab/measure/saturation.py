"""How saturated each activation is at initialisation (:func:`saturation`): the share of hidden
pre-activations where its derivative is below a tenth of its peak, in the lab's model and on
random inputs of growing scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...activations import get_activation
from ...ops.reference import hidden_activation
from ...sizing import default_hidden_dim
from ..train.model import ModelConfig, TinyGPT, init_parameters

__all__ = ["SATURATION_SET", "SATURATED_BELOW", "SATURATION_STDS", "max_derivative", "saturation"]


SATURATION_SET = ("relu", "sigmoid", "tanh", "gelu", "swish")
"""The activations :func:`saturation` compares (plain FFNs of the same size)."""

SATURATED_BELOW = 0.1
"""A hidden activation counts as saturated where ``|act'(h)|`` is below this share of the
activation's largest ``|act'|`` (sigmoid 0.25, relu and tanh 1, gelu 1.129, swish 1.100)."""

SATURATION_STDS = (1.0, 2.0, 4.0, 8.0)
"""Pre-activation standard deviations of the random-input part: 1 is what the lab's init gives
(``W1 ~ N(0, 1/dim)`` on a normalised input); 2, 4 and 8 show what growing pre-activations do
(sigmoid's saturated share passes relu's 50 % between 4 and 8)."""


def max_derivative(name: str) -> float:
    """``max |act'(x)|`` over ``x`` in ``[-20, 20]`` (float64, step 1e-4)."""
    x = torch.linspace(-20.0, 20.0, 400_001, dtype=torch.float64)
    return get_activation(name).grad(x).abs().max().item()


def _saturated_share(name: str, h: torch.Tensor, peak: float) -> float:
    d = get_activation(name).grad(h.double()).abs()
    return (d < SATURATED_BELOW * peak).double().mean().item()


def saturation(model_cfg: ModelConfig, *, names: tuple[str, ...] = SATURATION_SET,
               batch_size: int = 4, rows: int = 4096, seed: int = 0,
               stds: tuple[float, ...] = SATURATION_STDS,
               device: torch.device | str = "cpu") -> dict:
    """How saturated each activation is **at initialisation** (nothing is trained), and the
    gradient that reaches ``W1``.

    Two settings, every activation on the same input with the same weights (float32):

    * ``"model"``: the lab's :class:`~ffnlab.lab.train.model.TinyGPT` at ``model_cfg``, initialised by
      :func:`~ffnlab.lab.train.model.init_parameters` (``seed``), the FFN weights then copied from
      the first activation's model (relu's) so that only the activation differs;
      ``batch_size`` sequences of random bytes (a fixed generator). ``h1 = W1 x`` of every
      layer is collected (:meth:`TinyGPT.capture_gate_preactivations`); the gradient is that of
      the next-byte cross-entropy (mean over tokens), one norm over all layers' ``W1``.
    * ``"random"``: one FFN ``W2 act(W1 x)``, ``x ~ N(0, I)`` of ``rows x dim``, ``W1`` of
      ``N(0, std^2/dim)`` so that ``h1`` has standard deviation ``std`` (each of ``stds``),
      ``W2 ~ N(0, 1/hidden)``, and the gradient of ``sum(y * g)`` for a fixed ``g ~ N(0, I)``.

    ``share``: the fraction of hidden activations (unit x token) where ``|act'(h1)|`` is below
    :data:`SATURATED_BELOW` of the activation's largest ``|act'|`` (relu's is its exact-zero
    half); ``w1_grad_norm``: the Frobenius norm of ``dL/dW1``.
    """
    device = torch.device(device)
    peak = {n: max_derivative(n) for n in names}
    dim, hidden = model_cfg.dim, default_hidden_dim("relu", model_cfg.dim, multiple_of=1)

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, dim, generator=gen).to(device)
    w1 = (torch.randn(hidden, dim, generator=gen) / dim**0.5).to(device)
    w2 = (torch.randn(dim, hidden, generator=gen) / hidden**0.5).to(device)
    g = torch.randn(rows, dim, generator=gen).to(device)
    rnd_share: dict[str, list[float]] = {n: [] for n in names}
    rnd_grad: dict[str, list[float]] = {n: [] for n in names}
    for std in stds:
        for n in names:
            w = (w1 * std).requires_grad_(True)
            h = F.linear(x, w)
            (F.linear(hidden_activation(n, h), w2) * g).sum().backward()
            rnd_share[n].append(_saturated_share(n, h.detach(), peak[n]))
            rnd_grad[n].append(w.grad.norm().item())

    tokens = torch.randint(0, model_cfg.vocab, (batch_size, model_cfg.seq_len + 1),
                           generator=torch.Generator().manual_seed(seed)).to(device)
    ffn_weights = None  # the first model's (w1, w2) per layer, given to every other one
    m_share, m_grad = {}, {}
    m_share_layer: dict[str, list[float]] = {}
    for n in names:
        model = TinyGPT(model_cfg, n, backend="reference")
        init_parameters(model, seed)
        with torch.no_grad():
            if ffn_weights is None:
                ffn_weights = [(f.w1.weight.clone(), f.w2.weight.clone()) for f in model.ffns()]
            for f, (a, b) in zip(model.ffns(), ffn_weights, strict=True):
                f.w1.weight.copy_(a)
                f.w2.weight.copy_(b)
        model.to(device)
        with model.capture_gate_preactivations() as store:
            logits = model(tokens[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
        hs = [torch.cat(layer) for layer in store]
        m_share_layer[n] = [_saturated_share(n, h, peak[n]) for h in hs]
        m_share[n] = _saturated_share(n, torch.cat([h.flatten() for h in hs]), peak[n])
        m_grad[n] = math.sqrt(sum(f.w1.weight.grad.double().pow(2).sum().item()
                                  for f in model.ffns()))
    return {
        "at": "initialisation (no training)", "threshold": SATURATED_BELOW,
        "max_derivative": peak, "dim": dim, "hidden": hidden, "seed": seed,
        "random": {"rows": rows, "std": list(stds), "share": rnd_share, "w1_grad_norm": rnd_grad},
        "model": {"batch_size": batch_size, "tokens": "random bytes", "share": m_share,
                  "share_per_layer": m_share_layer, "w1_grad_norm": m_grad},
    }


# --- memory -----------------------------------------------------------------------------------
