"""``FeedForward``: the Transformer FFN block as an ``nn.Module``, every variant."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .activations import bind_options, get_activation
from .errors import UsageError, check_choice, check_positive_int, check_sizes_not_names
from .local_shards import is_sharded, sharded_forward
from .ops.dispatch import BACKENDS, RECOMPUTE_MODES
from .ops.projections import Weights, projected_feed_forward
from .sizing import default_hidden_dim
from .variants import get_variant

__all__ = ["FeedForward"]

_SIGNATURE = "FeedForward(dim, hidden_dim=None, variant='swiglu', *, ...)"

_BETA_MODES = {False: None, True: "scalar", "scalar": "scalar", "per_unit": "per_unit"}


class FeedForward(nn.Module):
    """The FFN block ``y = W2 · act(W1 x + b1) + b2`` or, gated, ``W2 · (act(W1 x) ⊙ W3 x)``.

    Signature: ``FeedForward(dim, hidden_dim=None, variant="swiglu", *, ...)``: the sizes,
    then the variant, as :class:`ffnlab.MoEFeedForward` takes them (``dim, hidden_dim,
    n_experts, top_k, variant``); everything after ``variant`` is keyword-only. A variant
    name given in a size's place (``FeedForward(64, "geglu")``) is a UsageError saying so.

    Args:
        dim: model width; the input is ``[..., dim]``.
        hidden_dim: the hidden size, exactly. ``None``: ``4*dim`` for plain variants, LLaMA's
            parameter-matched ``llama_hidden_dim(dim, multiple_of=..., ffn_dim_multiplier=...)``
            for gated ones.
        variant: a name from ``ffnlab.VARIANTS`` (or the alias ``silu``).
        out_dim: output width (``None``: ``dim``); the output is ``[..., out_dim]``.
        multiple_of, ffn_dim_multiplier: the hidden-size rule's knobs (used only when
            ``hidden_dim`` is None).
        bias: biases on every projection; ``None`` means on for plain, off for gated variants.
        dropout: dropout probability on the output (as in LLaMA's code and the first blog post's).
        beta: Swish's beta (swish and swiglu only; must be 1.0 for other variants).
        learnable_beta: ``False``; ``True`` or ``"scalar"`` for one learnable beta;
            ``"per_unit"`` for one per hidden unit (shape ``[hidden]``). Stored as ``beta``.
        activation: replaces the variant's activation, keeping its gatedness, hidden size and
            state-dict layout: a callable ``[..., hidden] -> [..., hidden]`` (a function or an
            ``nn.Module``, e.g. a transformers activation module; a module is registered as the
            submodule ``act_fn``, so its parameters keep their keys such as
            ``act_fn.alpha_p``), or a name in ``ffnlab.activations.ACTIVATIONS``. A callable
            runs on the ``"reference"`` and ``"fused"`` backends (``"auto"`` is fused; the
            fused op re-runs it under autograd in backward); ``"triton"`` raises.
        act_kwargs: the options of the variant's activation (of ``activation`` when that is
            a name), e.g. ``{"slope": 0.3}`` for leaky_relu2 or ``{"alpha": 1.702, "limit":
            7.0}`` for clamped_swiglu; ValueError naming the accepted keys for an unknown key
            or an out-of-range value. Swish's beta keeps ``beta=`` / ``learnable_beta=``.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"`` (see ``ops.dispatch``).
        recompute: ``"none"``, ``"activation"`` or ``"full"``: what backward keeps (fused backends).
        device, dtype: where and in which float dtype to create the parameters.

    The parameters start with PyTorch's ``nn.Linear`` initialisation; :meth:`reset_parameters`
    re-draws them (optionally from a normal distribution).

    State dict keys: ``w1.weight [hidden, dim]``, ``w2.weight [out_dim, hidden]``, ``w3.weight
    [hidden, dim]`` (gated only), their ``.bias`` when biases are on (``[hidden]``, ``[out_dim]``),
    ``beta`` when learnable, ``alpha_p`` and ``alpha_n`` (``[1]`` each, the raw parameters of
    xielu: αp = softplus(alpha_p), αn = 0.5 + softplus(alpha_n), as transformers'
    ``XIELUActivation`` stores them) for the xielu variant, and the ``act_fn.`` parameters of
    a module given as ``activation``.

    ``shard_layouts`` is None, or the ``(input, output)`` placements of a tensor-parallel
    FeedForward, set by ``ffnlab.parallel.PrepareFeedForward`` (see ``ffnlab.local_shards``).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        variant: str = "swiglu",
        *,
        out_dim: int | None = None,
        multiple_of: int = 1,
        ffn_dim_multiplier: float | None = None,
        bias: bool | None = None,
        dropout: float = 0.0,
        beta: float = 1.0,
        learnable_beta: bool | str = False,
        backend: str = "auto",
        recompute: str = "activation",
        activation: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        act_kwargs: Mapping[str, float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_sizes_not_names(_SIGNATURE, dim=dim, hidden_dim=hidden_dim)
        v = get_variant(variant)
        act_name = v.activation if activation is None else activation
        if isinstance(activation, str):
            act_name = get_activation(activation).name
        elif activation is not None and not callable(activation):
            raise TypeError(
                f"activation must be a callable or an activation name, got {type(activation).__name__}"
            )
        if act_kwargs is not None and not isinstance(act_kwargs, Mapping):
            raise TypeError(f"act_kwargs must be a dict, got {type(act_kwargs).__name__}")
        if callable(act_name):
            if act_kwargs:
                raise ValueError(
                    "act_kwargs configure a registry activation; a callable activation takes "
                    f"its options itself (got keys {sorted(act_kwargs)})"
                )
            if backend == "triton":
                raise UsageError(
                    "backend='triton' runs only the registry's activations, not a callable "
                    "activation; use backend 'fused' (or 'auto') or 'reference'"
                )
            act_options: tuple[float, ...] = ()
        else:
            act_options = bind_options(act_name, act_kwargs)
        check_positive_int("dim", dim)
        if hidden_dim is None:
            hidden_dim = default_hidden_dim(
                v.name, dim, multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier
            )
        check_positive_int("hidden_dim", hidden_dim)
        out_dim = dim if out_dim is None else check_positive_int("out_dim", out_dim)
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise UsageError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        check_choice("backend", backend, BACKENDS)
        check_choice("recompute mode", recompute, RECOMPUTE_MODES)
        if learnable_beta not in _BETA_MODES:
            raise UsageError(
                f"learnable_beta must be False, True, 'scalar' or 'per_unit', got {learnable_beta!r}"
            )
        beta_mode = _BETA_MODES[learnable_beta]
        beta = float(beta)
        if not math.isfinite(beta):
            raise UsageError(f"beta must be finite, got {beta!r}")
        swish_act = not callable(act_name) and get_activation(act_name).has_beta
        if not swish_act and (beta != 1.0 or beta_mode is not None):
            what = f"variant {v.name!r}" if activation is None else f"activation {activation!r}"
            raise UsageError(f"beta applies only to swish and swiglu, not to {what}")
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"FeedForward parameters need a float dtype, got {dtype}")
        if bias is None:
            bias = v.default_bias

        self.dim = dim
        self.hidden_dim = hidden_dim
        self.out_dim = out_dim
        self.variant = v.name
        self.act_options = act_options
        # The activation replacing the variant's: a registry name, a plain callable (kept as
        # an attribute), or None when a module is registered as ``act_fn`` below.
        self._act: Callable | str | None = act_name
        if isinstance(act_name, nn.Module):
            self.act_fn = act_name
            self._act = None
        self.backend = backend
        self.recompute = recompute
        self.shard_layouts: tuple | None = None
        kw = {"device": device, "dtype": dtype}
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias, **kw)
        self.w2 = nn.Linear(hidden_dim, out_dim, bias=bias, **kw)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias, **kw) if v.gated else None
        self.dropout = nn.Dropout(dropout)
        if beta_mode is None:
            self.beta_value: float = beta
            self.beta = None
        else:
            shape = () if beta_mode == "scalar" else (hidden_dim,)
            self.beta_value = beta
            self.beta = nn.Parameter(torch.full(shape, beta, **kw))
        packed = () if callable(act_name) else get_activation(act_name).param_init
        if packed:  # xielu: the raw (p, n), one [1] parameter each, as transformers has them
            self.alpha_p = nn.Parameter(torch.full((1,), packed[0], **kw))
            self.alpha_n = nn.Parameter(torch.full((1,), packed[1], **kw))

    def reset_parameters(self, std: float | None = None, num_layers: int = 1) -> None:
        """Re-draw the parameters in place; a learnable beta goes back to its initial value.

        ``std=None``: PyTorch's ``nn.Linear`` initialisation (each projection's own
        ``reset_parameters``: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
        ``std`` a float > 0: every weight ~ N(0, std²) and every bias 0, except that with
        ``num_layers > 1`` W2's weight ~ N(0, (std / sqrt(2 * num_layers))²), GPT-2's scaled
        initialisation of the residual projections of a ``num_layers``-layer model.
        ``num_layers`` must be 1 when ``std`` is None.
        """
        check_positive_int("num_layers", num_layers)
        if std is not None and not (isinstance(std, (int, float)) and std > 0):
            raise UsageError(f"std must be a float > 0 or None, got {std!r}")
        if std is None and num_layers != 1:
            raise UsageError("num_layers scales the normal initialisation: give std as well")
        lins = [self.w1, self.w2] + ([] if self.w3 is None else [self.w3])
        with torch.no_grad():
            for lin in lins:
                if std is None:
                    lin.reset_parameters()
                    continue
                s = std / math.sqrt(2 * num_layers) if lin is self.w2 and num_layers > 1 else std
                nn.init.normal_(lin.weight, 0.0, s)
                if lin.bias is not None:
                    lin.bias.zero_()
            if self.beta is not None:
                self.beta.fill_(self.beta_value)
            if "alpha_p" in self._parameters:
                p, n = get_activation(self._act).param_init
                self.alpha_p.fill_(p)
                self.alpha_n.fill_(n)

    @property
    def gated(self) -> bool:
        return self.w3 is not None

    @property
    def activation(self) -> Callable[[torch.Tensor], torch.Tensor] | str:
        """The activation that runs: a name in ``ffnlab.activations.ACTIVATIONS`` (the
        variant's unless replaced) or the callable given as ``activation``."""
        act = self._act
        return self._modules["act_fn"] if act is None else act

    def beta_tensor_or_value(self) -> float | torch.Tensor:
        """The learnable beta parameter, or the fixed float; for xielu the packed raw
        parameters ``[alpha_p, alpha_n]`` (``[2]``), which the ops take in beta's place."""
        params = self._parameters
        if "alpha_p" in params:
            return torch.cat([params["alpha_p"], params["alpha_n"]])
        return self.beta if self.beta is not None else self.beta_value

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"FeedForward expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"FeedForward needs a float input, got dtype {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(
                f"FeedForward(dim={self.dim}) expects input [..., {self.dim}], "
                f"got shape {list(x.shape)}"
            )
        w = getattr(self._modules["w1"], "weight", None)
        if (
            isinstance(w, torch.Tensor)
            and w.is_floating_point()
            and x.dtype != w.dtype
            and not torch.is_autocast_enabled(x.device.type)
        ):
            raise TypeError(
                f"input dtype {x.dtype} does not match the parameters' {w.dtype}; "
                f"convert one with .to()"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., out_dim]``.

        The projections are read as weights by the chosen backend; if one of them has been
        replaced by another module or carries a forward hook, it is called instead (with the
        reference elementwise maths), so adapters and hooks keep working. DTensor weights
        (``ffnlab.parallel``) run on their local shards (``ffnlab.local_shards``).
        """
        self._check_input(x)
        if is_sharded(self):
            return self._dropout(sharded_forward(self, x))
        # Submodules read from the dict: nn.Module.__getattr__ is slow enough per lookup to be
        # a visible share of a small FFN's forward (docs/benchmarks.md).
        mods = self._modules
        l1, l2, l3 = mods["w1"], mods["w2"], mods.get("w3")
        y = projected_feed_forward(
            x,
            (l1, l2, l3),
            self._weights,
            lambda t: (l1(t), None if l3 is None else l3(t)),
            l2,
            activation=self.activation,
            beta=self.beta_tensor_or_value(),
            backend=self.backend,
            recompute=self.recompute,
            options=self.act_options,
        )
        return self._dropout(y)

    def _weights(self) -> Weights:
        """``(w1, w2, w3, b1, b2, b3)`` from the plain Linears' parameter dicts."""
        mods = self._modules
        p1, p2 = mods["w1"]._parameters, mods["w2"]._parameters
        l3 = mods.get("w3")
        p3 = {} if l3 is None else l3._parameters
        return (
            p1["weight"],
            p2["weight"],
            p3.get("weight"),
            p1.get("bias"),
            p2.get("bias"),
            p3.get("bias"),
        )

    def _dropout(self, y: torch.Tensor) -> torch.Tensor:
        # nn.Dropout with p=0 is an identity that still costs a module call, a large share of
        # a small FFN's time (docs/benchmarks.md).
        dropout = self._modules["dropout"]
        return y if dropout.p == 0.0 else dropout(y)

    def extra_repr(self) -> str:
        parts = [
            f"dim={self.dim}",
            f"hidden_dim={self.hidden_dim}",
            *([f"out_dim={self.out_dim}"] if self.out_dim != self.dim else []),
            f"variant={self.variant!r}",
            f"backend={self.backend!r}",
            f"recompute={self.recompute!r}",
        ]
        act = self.activation
        if act != get_variant(self.variant).activation:
            parts.append(f"activation={act!r}" if isinstance(act, str)
                         else f"activation={type(act).__name__}")  # fmt: skip
        if isinstance(act, str) and get_activation(act).has_beta:
            parts.append(f"beta={'learnable' if self.beta is not None else self.beta_value}")
        if self.act_options and isinstance(act, str):
            parts.append(f"act_kwargs={get_activation(act).kwargs(self.act_options)}")
        return ", ".join(parts)
