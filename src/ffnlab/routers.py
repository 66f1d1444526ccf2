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
``sparsemixer``     PhiMoE: ``k`` rounds; each takes the best expert not yet chosen, its gate
                    the softmax of the logits within ``2 jitter_eps`` (relative) of it
                    (:class:`SparseMixerRouter`)
==================  =========================================================================

Every router multiplies its gates by ``routed_scaling`` (DeepSeek-V3: 2.5) and may limit the
choice to the ``topk_group`` best of ``n_group`` groups of experts, as transformers' routers do:

* ``group_score``: a group's score is the sum of its two best selection scores (``"top2"``,
  DeepSeek-V3, GLM-4.5, dots1, Kimi; the best one for groups of one expert) or its best one
  (``"max"``, DeepSeek-V2's ``group_limited_greedy``);
* ``group_fill``: what the experts of the other groups score in the top-k: ``"-inf"``
  (DeepSeek-V3), ``0`` (``"zero"``: Mistral 4, A.X-K2; a kept expert whose biased score is
  negative then loses to them) or ``0`` in the gates too (``"zero_gates"``: DeepSeek-V2).

``top_k`` may exceed the ``topk_group`` groups' experts (transformers' DeepSeek-V3 test config:
8 of 8 experts with 4 selectable): the rest are then masked experts, chosen as ``torch.topk``
breaks their tie, each with its own gate (``"-inf"``, ``"zero"``) or gate 0 (``"zero_gates"``).

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

__all__ = ["GROUP_FILLS", "GROUP_SCORES", "ROUTERS", "Router", "Routing", "get_router"]

#: ``group_score`` -> how a group of experts is scored for the group-limited choice.
GROUP_SCORES = {"top2": "sum of its two best selection scores", "max": "its best score"}
#: ``group_fill`` -> what the experts outside the chosen groups score (and weigh).
GROUP_FILLS = {
    "-inf": "-inf in the top-k; own gates",
    "zero": "0 in the top-k; own gates",
    "zero_gates": "0 in the top-k and in the gates",
}


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
        group_score: str = "top2",
        group_fill: str = "-inf",
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
        check_positive_int("top_k", top_k)
        if top_k > n_experts:
            raise UsageError(f"top_k={top_k} exceeds n_experts={n_experts}")
        if group_score not in GROUP_SCORES:
            raise unknown_choice("group_score", group_score, GROUP_SCORES)
        if group_fill not in GROUP_FILLS:
            raise unknown_choice("group_fill", group_fill, GROUP_FILLS)
        if not (isinstance(routed_scaling, (int, float)) and routed_scaling > 0):
            raise UsageError(f"routed_scaling must be a number > 0, got {routed_scaling!r}")
        self.n_experts, self.top_k = n_experts, top_k
        self.norm_topk = self.default_norm_topk if norm_topk is None else bool(norm_topk)
        self.n_group, self.topk_group = n_group, topk_group
        self.group_score, self.group_fill = group_score, group_fill
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

    def choose(self, sel: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """``(expert_idx, gates)`` ``[T, k]``: the top-k of the selection scores ``sel [T, E]``
        within the best groups, and their ``scores [T, E]`` (0 outside the chosen groups with
        ``group_fill="zero_gates"``); before :meth:`finish`."""
        if self.n_group == 1:
            idx = sel.topk(self.top_k, dim=-1).indices
            return idx, scores.gather(1, idx)
        t = sel.shape[0]
        grouped = sel.reshape(t, self.n_group, -1)
        if self.group_score == "max":
            best = grouped.max(dim=-1).values
        else:
            best = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
        # sorted=False as transformers calls it: the same tie-breaking among masked experts
        keep = best.topk(self.topk_group, dim=-1, sorted=False).indices  # [T, topk_group]
        mask = torch.zeros_like(best, dtype=torch.bool).scatter_(1, keep, True)
        mask = mask.unsqueeze(-1).expand_as(grouped).reshape(t, -1)
        fill = float("-inf") if self.group_fill == "-inf" else 0.0
        idx = sel.masked_fill(~mask, fill).topk(self.top_k, dim=-1, sorted=False).indices
        gates = scores.gather(1, idx)
        if self.group_fill == "zero_gates":
            gates = gates.masked_fill(~mask.gather(1, idx), 0.0)
        return idx, gates

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
        groups = (f", group_score={self.group_score!r}, group_fill={self.group_fill!r}"
                  if self.n_group > 1 else "")  # fmt: skip
        return (f"n_experts={self.n_experts}, top_k={self.top_k}, norm_topk={self.norm_topk}, "
                f"n_group={self.n_group}, topk_group={self.topk_group}{groups}, "
                f"routed_scaling={self.routed_scaling}, bias={self.bias is not None}")  # fmt: skip


class SoftmaxRouter(Router):
    """``p = softmax(x Wr^T)``; gates: the top-k ``p`` (renormalised when ``norm_topk``)."""

    name = "softmax"

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        probs = logits.softmax(-1)
        sel = probs if bias is None else probs + bias.to(probs.dtype)
        idx, gates = self.choose(sel, probs)
        return Routing(idx, self.finish(gates), logits, probs, False)


class SigmoidRouter(Router):
    """DeepSeek-V3: ``s = sigmoid(x Wr^T)``, top-k of ``s + bias``, gates ``s`` of the chosen."""

    name = "sigmoid"
    default_bias = True

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        s = logits.sigmoid()
        sel = s if bias is None else s + bias.to(s.dtype)
        idx, gates = self.choose(sel, s)
        probs = s / s.sum(-1, keepdim=True)
        return Routing(idx, self.finish(gates), logits, probs, False)


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
        s = logits.sigmoid()
        idx, gates = self.choose(sel, s)
        probs = s / s.sum(-1, keepdim=True)
        return Routing(idx, self.finish(gates), logits, probs, True)


class _SparseMixerGradient(torch.autograd.Function):
    """PhiMoE's training-time gate: ``multiplier · one`` forward, the softmax gradient of the
    chosen expert's gate, unscaled by ``one``, into the logits backward (the straight-through
    estimator of its sparsemixer; transformers' ``PhimoeMultiplier``). Equivalent PyTorch for
    the backward, with ``p [T, E]`` the round's softmax and ``j [T, 1]`` the chosen expert::

        g = grad * multiplier
        grad_logits = (-p * g).scatter_add(-1, j, g)   # = multiplier · (onehot(j) - p) · grad
    """

    @staticmethod
    def forward(ctx, logits, multiplier, chosen, probs, one):  # noqa: ARG004 - logits: grad
        ctx.save_for_backward(multiplier, chosen, probs)
        return multiplier * one

    @staticmethod
    def backward(ctx, grad):
        multiplier, chosen, probs = ctx.saved_tensors
        grad = grad * multiplier
        out = probs * grad.mul(-1)
        out.scatter_add_(dim=-1, index=chosen, src=grad)
        return out, None, None, None, None


class SparseMixerRouter(Router):
    """PhiMoE's sparsemixer (transformers' ``sparsemixer``, Liu et al. 2024), ``k`` rounds.

    Round ``r`` masks the experts chosen so far (``m = logits`` with them at ``-inf``) and
    keeps the logits within ``2 jitter_eps`` of ``m``'s best, relative to ``max(|logit|, best)``::

        best = m.max(-1)
        keep = (best - logits) / logits.abs().clamp(min=best) <= 2 * jitter_eps
        p = softmax(m.masked_fill(~keep, -inf))
        j = argmax(m)  (eval);  gate = p[j]

    In training mode ``j`` is a Gumbel sample of ``p`` and the gate goes through
    :class:`_SparseMixerGradient`, scaled by 1 or 1/3 at random (Heun's third-order estimate):
    the random numbers are drawn as transformers draws them (``exponential_`` ``[T, E]`` then
    ``rand_like`` ``[T, 1]`` per round, the later rounds drawing ``uniform_`` once more), so
    the same generator state gives the same routing. transformers runs two rounds whatever
    ``num_experts_per_tok`` says; rounds after the second repeat the second's draws.
    ``jitter_eps``: PhiMoE's ``router_jitter_noise`` (0.01). No selection bias, no groups, no
    renormalisation (the gates of one round are not a distribution over the ``k``).
    """

    name = "sparsemixer"
    default_norm_topk = False

    def __init__(self, *args, jitter_eps: float = 0.01, norm_topk: bool | None = None,
                 bias: bool | None = None, **kwargs) -> None:  # fmt: skip
        if norm_topk or bias:
            raise UsageError("router='sparsemixer' takes no norm_topk and no selection bias "
                             "(leave them None or False)")  # fmt: skip
        if kwargs.get("n_group", 1) != 1:
            raise UsageError("router='sparsemixer' chooses among all experts (n_group=1)")
        if not (isinstance(jitter_eps, (int, float)) and jitter_eps >= 0):
            raise UsageError(f"jitter_eps must be a number >= 0, got {jitter_eps!r}")
        super().__init__(*args, norm_topk=False, bias=False, **kwargs)
        self.jitter_eps = float(jitter_eps)

    def route(self, logits: Tensor, bias: Tensor | None = None) -> Routing:
        if bias is not None:
            raise UsageError("router='sparsemixer' takes no selection bias")
        chosen: list[Tensor] = []
        gates: list[Tensor] = []
        for r in range(self.top_k):
            m = logits if not chosen else torch.scatter(
                logits, -1, torch.cat(chosen, -1), float("-inf"))  # fmt: skip
            with torch.no_grad():
                best, j = m.max(dim=-1, keepdim=True)
                factor = logits.abs().clamp(min=best)
                drop = ((best - logits) / factor) > (2 * self.jitter_eps)
            masked = m.masked_fill(drop, float("-inf"))
            if self.training:  # Gumbel sampling, as transformers draws it
                noise = torch.empty_like(masked, memory_format=torch.legacy_contiguous_format)
                j = (masked - noise.exponential_().log()).max(dim=-1)[1].unsqueeze(-1)
            p = torch.softmax(masked, dim=-1)
            gate = p.gather(dim=-1, index=j)
            if self.training:
                top = p.max(dim=-1, keepdim=True)
                u = torch.rand_like(top.values)
                u = u.uniform_() if r else u
                one = torch.logical_or(j == top.indices, u > 0.75)
                one = torch.add(0.3333, one, alpha=0.6667).type_as(p)  # 1 or 1/3
                gate = _SparseMixerGradient.apply(logits, gate, j, p, one)
            chosen.append(j)
            gates.append(gate)
        idx, g = torch.cat(chosen, -1), torch.cat(gates, -1)
        return Routing(idx, self.finish(g), logits, logits.softmax(-1), False)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, jitter_eps={self.jitter_eps}"


ROUTERS: dict[str, type[Router]] = {
    r.name: r for r in (SoftmaxRouter, SigmoidRouter, SigmoidInputRouter, SparseMixerRouter)
}
"""Router name -> class."""


def get_router(name: str) -> type[Router]:
    """The router class called ``name``; ValueError with close matches otherwise."""
    if not isinstance(name, str) or name not in ROUTERS:
        raise unknown_choice("router", name, ROUTERS)
    return ROUTERS[name]
