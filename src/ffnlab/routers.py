"""Routers of a mixture of experts: which ``k`` of ``E`` experts each token goes to, with what weight.

==================  =========================================================================
name                what it computes for ``logits = x Wr^T`` ``[T, E]`` (float32 for half x)
==================  =========================================================================
``softmax``         ``p = softmax(logits)``; top-k of ``p``; the gates are those ``p``,
                    renormalised to sum 1 when ``norm_topk`` (Mixtral, Qwen-MoE, OLMoE)
``sigmoid``         DeepSeek-V3: ``s = sigmoid(logits)``; top-k of ``s + bias`` (the
                    per-expert correction bias, for selection only), optionally within the
                    ``topk_group`` best of ``n_group`` groups; gates ``s`` of the chosen,
                    renormalised when ``norm_topk``
``sigmoid_input``   Llama 4: top-k of ``logits``; gates ``sigmoid`` of the chosen logits,
                    multiplied into the expert *input*; the outputs are summed unweighted
==================  =========================================================================

Every router multiplies its gates by ``routed_scaling`` (DeepSeek-V3: 2.5) and may limit the
choice to groups (``n_group``, ``topk_group``): a group's score is the sum of its two best
selection scores (DeepSeek-V3's rule; its best one for groups of one expert).

The routing is computed once per forward and shared by every backend, so the reference and
fused experts see the same choice even where scores tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .activations import compute_dtype
from .errors import UsageError, check_positive_int, unknown_choice

__all__ = ["ROUTERS", "Router", "Routing", "get_router"]


@dataclass(frozen=True)
class Routing:
    """One forward's routing of ``T`` tokens to ``k`` of ``E`` experts.

    ``expert_idx [T, k]`` (int64), ``gates [T, k]`` (the router's compute dtype), ``logits``
    and ``probs [T, E]`` (``probs`` sums to 1 over experts: the load-balancing loss's router
    probabilities), ``gate_input``: the gates scale the expert input, not its output.
    """

    expert_idx: Tensor
    gates: Tensor
    logits: Tensor
    probs: Tensor
    gate_input: bool


class Router(nn.Module):
    """Base router: the ``weight [E, dim]`` projection, group-limited top-k and scaling.

    ``bias``: a per-expert selection bias ``[E]`` (a buffer, ``router.bias`` in the state dict,
    changed by :meth:`ffnlab.MoEFeedForward.update_bias`, never by gradients).
    """

    name = ""
    default_norm_topk = True
    default_bias = False

    def __init__(
        self,
        dim: int,
        n_experts: int,
        top_k: int,
        *,
        norm_topk: bool | None = None,
        bias: bool | None = None,
        n_group: int = 1,
        topk_group: int | None = None,
        routed_scaling: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("n_group", n_group)
        if n_experts % n_group:
            raise UsageError(f"n_experts={n_experts} does not divide into n_group={n_group} groups")
        topk_group = n_group if topk_group is None else check_positive_int("topk_group", topk_group)
        if topk_group > n_group:
            raise UsageError(f"topk_group={topk_group} exceeds n_group={n_group}")
        reachable = topk_group * (n_experts // n_group)
        if top_k > reachable:
            raise UsageError(
                f"top_k={top_k} exceeds the {reachable} experts of topk_group={topk_group} "
                f"groups of {n_experts // n_group}"
            )
        if not (isinstance(routed_scaling, (int, float)) and routed_scaling > 0):
            raise UsageError(f"routed_scaling must be a number > 0, got {routed_scaling!r}")
        self.n_experts, self.top_k = n_experts, top_k
        self.norm_topk = self.default_norm_topk if norm_topk is None else bool(norm_topk)
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling = float(routed_scaling)
        self.weight = nn.Parameter(torch.empty(n_experts, dim, device=device, dtype=dtype))
        use_bias = self.default_bias if bias is None else bool(bias)
        # float32 (float64 for float64 weights): bias steps of 1e-3 vanish in bfloat16 near 1
        bias_dtype = compute_dtype(dtype or torch.get_default_dtype())
        self.register_buffer(
            "bias", torch.zeros(n_experts, device=device, dtype=bias_dtype) if use_bias else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``weight`` as ``nn.Linear`` draws it (U(±1/sqrt(dim))), the bias zero."""
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            with torch.no_grad():
                self.bias.zero_()

    def logits(self, x: Tensor) -> Tensor:
        """``x [T, dim]`` -> ``[T, E]`` in float32 for half ``x`` (router logits decide the
        choice: bfloat16's 8 bits would tie scores that float32 tells apart)."""
        cd = compute_dtype(x.dtype)
        return F.linear(x.to(cd), self.weight.to(cd))

    def select(self, scores: Tensor) -> Tensor:
        """``[T, k]`` indices of the top-k ``scores [T, E]``, within the best groups."""
        if self.n_group > 1:
            t = scores.shape[0]
            grouped = scores.reshape(t, self.n_group, -1)
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            keep = best.topk(self.topk_group, dim=-1).indices  # [T, topk_group]
            mask = torch.zeros_like(best, dtype=torch.bool).scatter_(1, keep, True)
            scores = grouped.masked_fill(~mask.unsqueeze(-1), float("-inf")).reshape(t, -1)
        return scores.topk(self.top_k, dim=-1).indices

    def finish(self, gates: Tensor) -> Tensor:
        """Renormalise (``norm_topk``) and scale (``routed_scaling``) the ``[T, k]`` gates."""
        if self.norm_topk:
            gates = gates / (gates.sum(-1, keepdim=True) + 1e-20)
        return gates * self.routed_scaling if self.routed_scaling != 1.0 else gates

    def forward(self, x: Tensor) -> Routing:
        """``x [T, dim]`` -> its :class:`Routing` (the logits of ``weight``, then :meth:`route`)."""
        return self.route(self.logits(x), self.bias)

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:  # pragma: no cover
        """The routing of ``logits [T, E]`` with the selection ``bias [E]`` (or None); what
        :meth:`forward` does after the projection. Wrappers of other libraries' routers, whose
        logits carry a bias of their own, call it directly."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, norm_topk={self.norm_topk}, "
                f"n_group={self.n_group}, topk_group={self.topk_group}, "
                f"routed_scaling={self.routed_scaling}, bias={self.bias is not None}")  # fmt: skip


class SoftmaxRouter(Router):
    """``p = softmax(x Wr^T)``; gates: the top-k ``p`` (renormalised when ``norm_topk``)."""

    name = "softmax"

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        probs = logits.softmax(-1)
        sel = probs if bias is None else probs + bias.to(probs.dtype)
        idx = self.select(sel)
        return Routing(idx, self.finish(probs.gather(1, idx)), logits, probs, False)


class SigmoidRouter(Router):
    """DeepSeek-V3: ``s = sigmoid(x Wr^T)``, top-k of ``s + bias``, gates ``s`` of the chosen."""

    name = "sigmoid"
    default_bias = True

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        s = logits.sigmoid()
        sel = s if bias is None else s + bias.to(s.dtype)
        idx = self.select(sel)
        probs = s / s.sum(-1, keepdim=True)
        return Routing(idx, self.finish(s.gather(1, idx)), logits, probs, False)


class SigmoidInputRouter(Router):
    """Llama 4: top-k of ``x Wr^T``; ``sigmoid`` of the chosen logits scales the expert input."""

    name = "sigmoid_input"
    default_norm_topk = False

    def __init__(self, *args, norm_topk: bool | None = None, **kwargs) -> None:
        if norm_topk:
            raise UsageError(
                "router='sigmoid_input' gates the expert input with sigmoid scores; "
                "norm_topk=True does not apply (leave it None or False)"
            )
        if kwargs.get("routed_scaling", 1.0) != 1.0:
            raise UsageError("router='sigmoid_input' scales the expert input; routed_scaling "
                             "applies to gated outputs (leave it 1.0)")  # fmt: skip
        super().__init__(*args, norm_topk=False, **kwargs)

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        sel = logits if bias is None else logits + bias.to(logits.dtype)
        idx = self.select(sel)
        s = logits.sigmoid()
        probs = s / s.sum(-1, keepdim=True)
        return Routing(idx, self.finish(s.gather(1, idx)), logits, probs, True)


ROUTERS: dict[str, type[Router]] = {
    r.name: r for r in (SoftmaxRouter, SigmoidRouter, SigmoidInputRouter)
}
"""Router name -> class."""


def get_router(name: str) -> type[Router]:
    """The router class called ``name``; ValueError with close matches otherwise."""
    if not isinstance(name, str) or name not in ROUTERS:
        raise unknown_choice("router", name, ROUTERS)
    return ROUTERS[name]
