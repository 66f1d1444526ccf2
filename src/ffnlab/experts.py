"""``Experts``: the routed experts of a mixture of experts, their weights stacked per expert.

Parameters (state dict keys under ``experts.``): ``w1 [E, hidden, dim]``, ``w2 [E, dim, hidden]``,
``w3 [E, hidden, dim]`` (gated variants), ``b1 [E, hidden]``, ``b2 [E, dim]``, ``b3 [E, hidden]``
(when biases are on), ``norm [E, dim]`` (with ``expert_norm``). Expert ``e`` is the FFN of
``FeedForward`` with ``w1.weight = w1[e]`` and so on, followed, with ``expert_norm``, by its own
RMSNorm ``norm[e] ⊙ rms_norm(·)`` (Ergo's per-expert output norm,
:class:`ffnlab.ops.expert_norm.OutputNorm`), before the gates weight the routes.

Two ways to run them on routed tokens (same maths, :meth:`Experts.forward`):

* ``"reference"``: :func:`ffnlab.ops.moe_reference.experts_reference`, a loop over the
  experts gathering each one's tokens (the oracle);
* ``"fused"``: sort the ``T*k`` (token, expert) pairs by expert once
  (:func:`~ffnlab.ops.grouped.sort_by_expert`), gather the rows, run every expert as grouped
  matrix products with the fused elementwise middle
  (:func:`~ffnlab.ops.grouped_function.grouped_feed_forward`) and sum the rows back into
  token order with their gates in one ``index_add`` (:func:`~ffnlab.ops.grouped.unpermute_tokens`);
  the expert output norm, where on, runs on the sorted rows between the two.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .errors import UsageError
from .ops.dispatch import device_type
from .ops.expert_norm import OutputNorm
from .ops.grouped import permute_tokens, row_experts, sort_by_expert, unpermute_tokens
from .ops.grouped_function import grouped_feed_forward
from .ops.moe_reference import experts_reference
from .routers import Routing

__all__ = ["Experts", "run_experts"]


def run_experts(
    x: Tensor,
    routing: Routing,
    weights: tuple[Tensor | None, ...],
    *,
    activation: str,
    beta: float = 1.0,
    backend: str = "fused",
    recompute: str = "activation",
    options: tuple[float, ...] = (),
    out_norm: OutputNorm | None = None,
) -> Tensor:
    """The routed experts of ``weights = (w1, w2, w3, b1, b2, b3)`` (``w1, w3 [E, hidden,
    dim]``, ``w2 [E, dim, hidden]``, biases ``[E, ...]``, None where absent; views of other
    layouts are fine) on ``x [T, dim]`` -> ``[T, dim]``: :class:`Experts`'s computation on
    weights it does not own (:mod:`ffnlab.interop.hf_moe` passes transformers' stored tensors).

    ``backend``: ``"reference"`` (the loop) or ``"fused"``; ``options``: the activation's
    option values in :attr:`ffnlab.activations.Activation.options` order (``()``: its
    defaults), which both backends apply; ``out_norm``: each expert's RMSNorm on its output
    rows, before the gates (None: none).
    """
    idx, gates = routing.expert_idx, routing.gates
    if backend == "reference":
        return experts_reference(x, idx, gates, *weights, activation=activation, beta=beta,
                                 gate_input=routing.gate_input, options=options,
                                 out_norm=out_norm)  # fmt: skip
    top_k, n_experts = idx.shape[1], weights[0].shape[0]
    order, _, offsets = sort_by_expert(idx, n_experts)
    xs = permute_tokens(x, order, top_k, gates if routing.gate_input else None)
    ys = grouped_feed_forward(xs, offsets, *weights, activation=activation, beta=beta,
                              recompute=recompute, options=options)  # fmt: skip
    if out_norm is not None:  # each sorted row by its expert's scale
        ys = out_norm(ys, idx.reshape(-1).index_select(0, order))
    return unpermute_tokens(ys, order, x.shape[0], top_k, None if routing.gate_input else gates)


class Experts(nn.Module):
    """``n_experts`` FFNs of one variant: ``dim -> hidden -> dim``, weights ``[E, ...]``.

    ``activation`` is the variant's (``ffnlab.get_variant(v).activation``), ``gated`` whether
    it has ``w3``, ``beta`` Swish's fixed beta, ``options`` the activation's option values
    (:func:`ffnlab.activations.bind_options`; ``()``: its defaults); ``expert_norm``: each
    expert's output goes through its own RMSNorm (``norm [E, dim]``, initialised to ones,
    ``norm_eps``) before the gates weight it.
    """

    def __init__(
        self,
        n_experts: int,
        dim: int,
        hidden_dim: int,
        *,
        activation: str,
        gated: bool,
        bias: bool,
        beta: float = 1.0,
        options: tuple[float, ...] = (),
        expert_norm: bool = False,
        norm_eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(norm_eps, bool) or not isinstance(norm_eps, (int, float)) or norm_eps < 0:
            raise UsageError(f"norm_eps must be a number >= 0, got {norm_eps!r}")
        self.n_experts, self.dim, self.hidden_dim = n_experts, dim, hidden_dim
        self.activation, self.beta, self.norm_eps = activation, float(beta), float(norm_eps)
        self.options = tuple(float(o) for o in options)
        kw = {"device": device, "dtype": dtype}

        def param(*shape):
            return nn.Parameter(torch.empty(*shape, **kw))

        self.w1 = param(n_experts, hidden_dim, dim)
        self.w2 = param(n_experts, dim, hidden_dim)
        self.w3 = param(n_experts, hidden_dim, dim) if gated else None
        self.b1 = param(n_experts, hidden_dim) if bias else None
        self.b2 = param(n_experts, dim) if bias else None
        self.b3 = param(n_experts, hidden_dim) if bias and gated else None
        self.norm = param(n_experts, dim) if expert_norm else None
        self.reset_parameters()

    @property
    def gated(self) -> bool:
        return self.w3 is not None

    def reset_parameters(self) -> None:
        """Each expert as ``nn.Linear`` draws it: weights and biases ~ U(±1/sqrt(fan_in));
        the output norm's scale 1."""
        with torch.no_grad():
            if self.norm is not None:
                self.norm.fill_(1.0)
            for p, fan_in in ((self.w1, self.dim), (self.w3, self.dim), (self.b1, self.dim),
                              (self.b3, self.dim), (self.w2, self.hidden_dim),
                              (self.b2, self.hidden_dim)):  # fmt: skip
                if p is not None:
                    bound = 1.0 / math.sqrt(fan_in)
                    p.uniform_(-bound, bound)

    def weights(self, like: Tensor | None = None) -> tuple[Tensor | None, ...]:
        """``(w1, w2, w3, b1, b2, b3)`` (None where absent); under autocast on ``like``'s
        device, cast to the autocast dtype (what ``F.linear`` does to its operands there)."""
        ws = (self.w1, self.w2, self.w3, self.b1, self.b2, self.b3)
        if like is None or not torch.is_autocast_enabled(like.device.type):
            return ws
        dt = torch.get_autocast_dtype(like.device.type)
        return tuple(None if w is None else w.to(dt) for w in ws)

    def out_norm(self) -> OutputNorm | None:
        """The experts' output norm (None without ``expert_norm``)."""
        return None if self.norm is None else OutputNorm(self.norm, self.norm_eps)

    @staticmethod
    def autocast_input(x: Tensor) -> Tensor:
        """``x`` in the autocast dtype when autocast is on for its device, else as it is."""
        if torch.is_autocast_enabled(device_type(x)):
            return x.to(torch.get_autocast_dtype(x.device.type))
        return x

    def forward(
        self, x: Tensor, routing: Routing, *, backend: str = "fused", recompute: str = "activation"
    ) -> Tensor:
        """``x [T, dim]`` and its ``routing`` -> ``[T, dim]``, the gate-weighted sum of each
        token's experts (``routing.gate_input``: the gates scale the input instead)."""
        x = self.autocast_input(x)
        return run_experts(x, routing, self.weights(x), activation=self.activation,
                           beta=self.beta, backend=backend, recompute=recompute,
                           options=self.options, out_norm=self.out_norm())  # fmt: skip

    def run_sorted(self, xs: Tensor, offsets: Tensor, *, recompute: str = "activation") -> Tensor:
        """Each expert's FFN on its segment of ``xs [M, dim]`` (sorted by expert, ``offsets
        [E]`` the cumulative ends) -> ``[M, dim]``: the grouped fused op (and the output
        norm, where on)."""
        ys = grouped_feed_forward(xs, offsets, *self.weights(xs), activation=self.activation,
                                  beta=self.beta, recompute=recompute,
                                  options=self.options)  # fmt: skip
        norm = self.out_norm()
        return ys if norm is None else norm(ys, row_experts(offsets, ys.shape[0]))

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, "
                f"activation={self.activation!r}, gated={self.gated}, bias={self.b1 is not None}"
                + (f", expert_norm=True, norm_eps={self.norm_eps:g}" if self.norm is not None else ""))
