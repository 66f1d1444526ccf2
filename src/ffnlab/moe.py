"""``MoEFeedForward``: a mixture-of-experts FFN, every expert one variant of the registry.

``y = routed_scaling · Σ_{j<top_k} g_j · N_{e_j}(FFN_{e_j}(x)) + gate_s · FFN_shared(x)``
(``N_e``: expert ``e``'s output RMSNorm with ``expert_norm``, else the identity), dropless:
every token reaches its ``top_k`` experts. The routers are in :mod:`ffnlab.routers`, the
experts in :mod:`ffnlab.experts`, the grouped products in :mod:`ffnlab.ops.grouped`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .activations import bind_options, get_activation
from .errors import UsageError, check_choice, check_positive_int, check_sizes_not_names
from .experts import Experts
from .ffn import FeedForward
from .ops.function import RECOMPUTE_MODES
from .routers import Routing, get_router
from .variants import get_variant

__all__ = ["MOE_BACKENDS", "MoEFeedForward", "load_balancing_loss", "router_z_loss"]

MOE_BACKENDS = ("auto", "reference", "fused")

_SIGNATURE = "MoEFeedForward(dim, hidden_dim, n_experts, top_k, variant='swiglu', *, ...)"


def load_balancing_loss(probs: Tensor, counts: Tensor) -> Tensor:
    """Switch Transformer's load-balancing loss ``E · Σ_e f_e · P_e`` (a scalar).

    ``probs [T, E]``: each token's router probabilities (summing to 1 over experts);
    ``counts [E]``: tokens routed to each expert (all ``top_k`` slots); ``f_e = counts_e / T``,
    ``P_e = mean_t probs[t, e]``. As transformers' ``load_balancing_loss_func`` (Mixtral,
    Qwen-MoE), it is ``top_k`` when the load and the probabilities are uniform.
    """
    n_tokens, n_experts = probs.shape
    t = max(n_tokens, 1)  # an empty batch: 0, not nan
    return n_experts * (counts.to(probs.dtype) / t * (probs.sum(0) / t)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss ``mean_t (logsumexp_e logits[t, e])²`` for ``logits [T, E]``
    (0 for an empty batch)."""
    return torch.logsumexp(logits, dim=-1).square().sum() / max(logits.shape[0], 1)


class MoEFeedForward(nn.Module):
    """A mixture-of-experts FFN block. Input ``[..., dim]``, output ``[..., dim]``.

    Signature: ``MoEFeedForward(dim, hidden_dim, n_experts, top_k, variant="swiglu", *,
    ...)``: the sizes, then the variant, as :class:`ffnlab.FeedForward` takes them (``dim,
    hidden_dim, variant``); everything after ``variant`` is keyword-only. A variant name given
    in a size's place (``MoEFeedForward(64, 96, "swiglu", 4, 2)``) is a UsageError saying so.

    Args:
        dim: model width.
        hidden_dim: each routed expert's hidden size, exactly.
        n_experts, top_k: ``E`` routed experts, ``k`` per token (``1 <= k <= E``).
        variant: every expert's variant (a name of ``ffnlab.VARIANTS``).
        router: ``"softmax"``, ``"sigmoid"`` (DeepSeek-V3), ``"sigmoid_input"`` (Llama 4) or
            ``"sparsemixer"`` (PhiMoE): :data:`ffnlab.routers.ROUTERS`.
        norm_topk: renormalise the chosen gates to sum 1; ``None``: the router's default
            (True, False for ``sigmoid_input``, where True is refused).
        router_bias: a per-expert selection bias (``router.bias``); ``None``: on for
            ``"sigmoid"`` only. Changed by :meth:`update_bias`, never by gradients.
        n_group, topk_group: group-limited routing (``n_group`` groups of experts, the best
            ``topk_group`` of them per token).
        n_shared, shared_hidden_dim: ``n_shared`` shared experts (every token, no gate) of
            ``shared_hidden_dim`` units each (``None``: ``hidden_dim``), stored as one
            ``FeedForward`` of ``n_shared * shared_hidden_dim`` units under ``shared.`` (the
            sum of FFNs is the FFN of their concatenated hidden units).
        shared_gate: Qwen-MoE's gate ``sigmoid(x Ws^T)`` (``shared_gate.weight [1, dim]``) on
            the shared experts' output.
        routed_scaling: factor on the routed gates (DeepSeek-V3: 2.5).
        bias: biases in every expert (``None``: on for plain variants, off for gated ones).
        act_kwargs: the options of the variant's activation, as ``FeedForward`` takes them,
            e.g. ``{"limit": 7.0}`` (or ``{"alpha": 1.702, "limit": 7.0}``) for GPT-OSS's
            ``clamped_swiglu`` experts or ``{"slope": 0.3}`` for ``leaky_relu2``; every expert,
            routed and shared, on both backends, uses them. ValueError naming the accepted keys
            for an unknown key or an out-of-range value (``"accepted keys: none"`` for a
            variant without options).
        backend: ``"reference"`` (a loop over the experts), ``"fused"`` (sorted tokens, grouped
            products) or ``"auto"`` (fused).
        recompute: the fused experts' recompute mode (``ffnlab.ops.function``).
        expert_norm, norm_eps: each routed expert's output goes through its own RMSNorm
            (``experts.norm [E, dim]``, ones at first, epsilon ``norm_eps``) before the gates
            weight it (Ergo); both backends.

    State dict: ``router.weight [E, dim]`` (+ ``router.bias [E]``), ``experts.w1 [E, hidden,
    dim]``, ``experts.w2 [E, dim, hidden]``, ``experts.w3`` (gated), ``experts.b1 [E, hidden]``,
    ``experts.b2 [E, dim]``, ``experts.b3`` (with biases), ``experts.norm [E, dim]`` (with
    ``expert_norm``), ``shared.w1.weight`` … (a
    ``FeedForward``), ``shared_gate.weight [1, dim]``.

    After each forward: ``aux_losses`` ``{"load_balance": ..., "z_loss": ...}`` (scalars with
    gradients to the router: add them, scaled, to the training loss), ``tokens_per_expert``
    ``[E]`` (int64, detached) and ``last_routing`` (the :class:`ffnlab.routers.Routing`).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        n_experts: int,
        top_k: int,
        variant: str = "swiglu",
        *,
        router: str = "softmax",
        norm_topk: bool | None = None,
        router_bias: bool | None = None,
        n_group: int = 1,
        topk_group: int | None = None,
        n_shared: int = 0,
        shared_hidden_dim: int | None = None,
        shared_gate: bool = False,
        routed_scaling: float = 1.0,
        bias: bool | None = None,
        act_kwargs: dict | None = None,
        backend: str = "auto",
        recompute: str = "activation",
        expert_norm: bool = False,
        norm_eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_sizes_not_names(_SIGNATURE, dim=dim, hidden_dim=hidden_dim, n_experts=n_experts,
                              top_k=top_k)  # fmt: skip
        v = get_variant(variant)
        router_cls = get_router(router)
        check_positive_int("dim", dim)
        check_positive_int("hidden_dim", hidden_dim)
        if isinstance(n_experts, bool) or not isinstance(n_experts, int) or n_experts < 1:
            raise UsageError(f"n_experts must be an integer >= 1, got {n_experts!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise UsageError(f"top_k must be an integer >= 1, got {top_k!r}")
        if top_k > n_experts:
            raise UsageError(f"top_k={top_k} exceeds n_experts={n_experts}")
        if isinstance(n_shared, bool) or not isinstance(n_shared, int) or n_shared < 0:
            raise UsageError(f"n_shared must be an integer >= 0, got {n_shared!r}")
        if shared_gate and n_shared == 0:
            raise UsageError("shared_gate gates the shared experts: give n_shared >= 1")
        if act_kwargs is not None and not isinstance(act_kwargs, Mapping):
            raise TypeError(f"act_kwargs must be a dict, got {type(act_kwargs).__name__}")
        act_options = bind_options(v.activation, act_kwargs)
        check_choice("backend", backend, MOE_BACKENDS)
        check_choice("recompute mode", recompute, RECOMPUTE_MODES)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"MoEFeedForward parameters need a float dtype, got {dtype}")
        kw = {"device": device, "dtype": dtype}
        self.dim, self.hidden_dim, self.n_experts, self.top_k = dim, hidden_dim, n_experts, top_k
        self.variant, self.backend, self.recompute = v.name, backend, recompute
        self.n_shared = n_shared
        self.act_options = act_options
        self.router = router_cls(
            dim, n_experts, top_k, norm_topk=norm_topk, bias=router_bias, n_group=n_group,
            topk_group=topk_group, routed_scaling=routed_scaling, **kw,
        )  # fmt: skip
        self.experts = Experts(n_experts, dim, hidden_dim, activation=v.activation,
                               gated=v.gated, bias=not v.gated if bias is None else bias,
                               options=act_options, expert_norm=expert_norm,
                               norm_eps=norm_eps, **kw)  # fmt: skip
        self.shared = None
        if n_shared:
            sh = hidden_dim if shared_hidden_dim is None else shared_hidden_dim
            check_positive_int("shared_hidden_dim", sh)
            self.shared = FeedForward(dim, n_shared * sh, v.name, bias=bias,
                                      backend="reference" if backend == "reference" else "auto",
                                      recompute=recompute, act_kwargs=act_kwargs, **kw)  # fmt: skip
        elif shared_hidden_dim is not None:
            raise UsageError("shared_hidden_dim is the shared experts' size: give n_shared >= 1")
        self.shared_gate = nn.Linear(dim, 1, bias=False, **kw) if shared_gate else None
        self.aux_losses: dict[str, Tensor] = {}
        self.tokens_per_expert: Tensor | None = None
        self.last_routing: Routing | None = None

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MoEFeedForward expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"MoEFeedForward needs a float input, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"MoEFeedForward(dim={self.dim}) expects input [..., {self.dim}], "
                f"got shape {list(x.shape)}"
            )
        w = self.router.weight
        if x.dtype != w.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"input dtype {x.dtype} does not match the parameters' {w.dtype}; "
                f"convert one with .to()"
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x [..., dim]`` -> ``[..., dim]``; sets ``aux_losses``, ``tokens_per_expert``."""
        self._check_input(x)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.dim)
        routing = self.router(x2)
        backend = "reference" if self.backend == "reference" else "fused"
        y = self.experts(x2, routing, backend=backend, recompute=self.recompute)
        if self.shared is not None:  # under autocast y is in the autocast dtype, as s is
            s = self.shared(x2)
            if self.shared_gate is not None:
                s = s * torch.sigmoid(self.shared_gate(x2))
            y = y + s
        flat = routing.expert_idx.reshape(-1)
        counts = flat.new_zeros(self.n_experts).index_add_(0, flat, torch.ones_like(flat))
        self.tokens_per_expert = counts.detach()
        self.last_routing = routing
        self.aux_losses = {
            "load_balance": load_balancing_loss(routing.probs, counts),
            "z_loss": router_z_loss(routing.logits),
        }
        return y.reshape(*lead, self.dim)

    @torch.no_grad()
    def update_bias(self, rate: float = 1e-3, counts: Tensor | None = None) -> Tensor:
        """DeepSeek-V3's auxiliary-loss-free balancing: ``bias += rate · sign(mean − load)``.

        ``counts [E]``: tokens per expert (``None``: the last forward's ``tokens_per_expert``;
        pass counts summed over data-parallel ranks to update every replica alike). An
        overloaded expert's selection bias goes down by ``rate``, an underloaded one's up.
        Returns the bias ``[E]``. UsageError without a router bias or before any forward.
        """
        bias = self.router.bias
        if bias is None:
            raise UsageError("update_bias needs a router bias: build with router_bias=True "
                             "(the default for router='sigmoid')")  # fmt: skip
        if counts is None:
            if self.tokens_per_expert is None:
                raise UsageError("update_bias needs a forward first (or counts=)")
            counts = self.tokens_per_expert
        if counts.shape != (self.n_experts,):
            raise UsageError(f"counts must be [{self.n_experts}], got {list(counts.shape)}")
        load = counts.to(bias.dtype)
        return bias.add_(torch.sign(load.mean() - load), alpha=float(rate))

    def extra_repr(self) -> str:
        act = get_variant(self.variant).activation
        opts = (f", act_kwargs={get_activation(act).kwargs(self.act_options)}"
                if self.act_options else "")  # fmt: skip
        return (f"dim={self.dim}, hidden_dim={self.hidden_dim}, n_experts={self.n_experts}, "
                f"top_k={self.top_k}, variant={self.variant!r}, router={self.router.name!r}, "
                f"n_shared={self.n_shared}, backend={self.backend!r}{opts}"
                + (", expert_norm=True" if self.experts.norm is not None else ""))
