"""``FeedForward``: the Transformer FFN block as an ``nn.Module``, every variant."""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import UsageError, check_choice, check_positive_int
from .ops.dispatch import BACKENDS, RECOMPUTE_MODES, feed_forward, projections_are_plain
from .ops.reference import hidden_activation
from .parallel import is_sharded, sharded_forward
from .sizing import default_hidden_dim
from .variants import get_variant

__all__ = ["FeedForward", "INIT_SCHEMES"]

INIT_SCHEMES = ("default", "normal", "small_down")
_BETA_MODES = {False: None, True: "scalar", "scalar": "scalar", "per_unit": "per_unit"}


class FeedForward(nn.Module):
    """The FFN block ``y = W2 · act(W1 x + b1) + b2`` or, gated, ``W2 · (act(W1 x) ⊙ W3 x)``.

    Args:
        dim: model width; input and output are ``[..., dim]``.
        hidden_dim: the hidden size, exactly. ``None``: ``4*dim`` for plain variants, LLaMA's
            parameter-matched ``llama_hidden_dim(dim, multiple_of=..., ffn_dim_multiplier=...)``
            for gated ones.
        variant: a name from ``ffnlab.VARIANTS`` (or the alias ``silu``).
        multiple_of, ffn_dim_multiplier: the hidden-size rule's knobs (used only when
            ``hidden_dim`` is None).
        bias: biases on every projection; ``None`` means on for plain, off for gated variants.
        dropout: dropout probability on the output (as in LLaMA's and the first source's code).
        beta: Swish's beta (swish and swiglu only; must be 1.0 for other variants).
        learnable_beta: ``False``; ``True`` or ``"scalar"`` for one learnable beta;
            ``"per_unit"`` for one per hidden unit (shape ``[hidden]``). Stored as ``beta``.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"`` (see ``ops.dispatch``).
        recompute: ``"none"``, ``"activation"`` or ``"full"``: what backward keeps (fused backends).
        init: ``"default"`` (PyTorch's Linear init), ``"normal"`` (every weight N(0, init_std),
            biases 0) or ``"small_down"`` (as ``"normal"`` but W2 ~ N(0, init_std/sqrt(2*num_layers)),
            GPT-2's scaled residual init).
        init_std, num_layers: parameters of the normal schemes.
        device, dtype: where and in which float dtype to create the parameters.

    State dict keys: ``w1.weight [hidden, dim]``, ``w2.weight [dim, hidden]``, ``w3.weight
    [hidden, dim]`` (gated only), their ``.bias`` when biases are on, and ``beta`` when learnable.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        variant: str = "swiglu",
        *,
        multiple_of: int = 1,
        ffn_dim_multiplier: float | None = None,
        bias: bool | None = None,
        dropout: float = 0.0,
        beta: float = 1.0,
        learnable_beta: bool | str = False,
        backend: str = "auto",
        recompute: str = "activation",
        init: str = "default",
        init_std: float = 0.02,
        num_layers: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        v = get_variant(variant)
        check_positive_int("dim", dim)
        if hidden_dim is None:
            hidden_dim = default_hidden_dim(
                v.name, dim, multiple_of=multiple_of, ffn_dim_multiplier=ffn_dim_multiplier
            )
        check_positive_int("hidden_dim", hidden_dim)
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise UsageError(f"dropout must be a probability in [0, 1), got {dropout!r}")
        check_choice("backend", backend, BACKENDS)
        check_choice("recompute mode", recompute, RECOMPUTE_MODES)
        check_choice("init scheme", init, INIT_SCHEMES)
        if learnable_beta not in _BETA_MODES:
            raise UsageError(
                f"learnable_beta must be False, True, 'scalar' or 'per_unit', got {learnable_beta!r}"
            )
        beta_mode = _BETA_MODES[learnable_beta]
        beta = float(beta)
        if not math.isfinite(beta):
            raise UsageError(f"beta must be finite, got {beta!r}")
        if not v.has_beta and (beta != 1.0 or beta_mode is not None):
            raise UsageError(
                f"beta applies only to swish and swiglu, not to variant {v.name!r}"
            )
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"FeedForward parameters need a float dtype, got {dtype}")
        if bias is None:
            bias = not v.gated

        self.dim = dim
        self.hidden_dim = hidden_dim
        self.variant = v.name
        self.backend = backend
        self.recompute = recompute
        kw = {"device": device, "dtype": dtype}
        self.w1 = nn.Linear(dim, hidden_dim, bias=bias, **kw)
        self.w2 = nn.Linear(hidden_dim, dim, bias=bias, **kw)
        self.w3 = nn.Linear(dim, hidden_dim, bias=bias, **kw) if v.gated else None
        self.dropout = nn.Dropout(dropout)
        if beta_mode is None:
            self.beta_value: float = beta
            self.beta = None
        else:
            shape = () if beta_mode == "scalar" else (hidden_dim,)
            self.beta_value = beta
            self.beta = nn.Parameter(torch.full(shape, beta, **kw))
        self._init_weights(init, init_std, check_positive_int("num_layers", num_layers))

    def _init_weights(self, init: str, std: float, num_layers: int) -> None:
        if init == "default":
            return
        if not std > 0:
            raise UsageError(f"init_std must be > 0, got {std!r}")
        down_std = std / math.sqrt(2 * num_layers) if init == "small_down" else std
        with torch.no_grad():
            for lin, s in ((self.w1, std), (self.w3, std), (self.w2, down_std)):
                if lin is None:
                    continue
                nn.init.normal_(lin.weight, 0.0, s)
                if lin.bias is not None:
                    lin.bias.zero_()

    @property
    def gated(self) -> bool:
        return self.w3 is not None

    @property
    def activation(self) -> str:
        return get_variant(self.variant).activation

    def beta_tensor_or_value(self) -> float | torch.Tensor:
        """The learnable beta parameter, or the fixed float."""
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
        """``x [..., dim]`` -> ``[..., dim]``.

        The projections are read as weights by the chosen backend; if one of them has been
        replaced by another module or carries a forward hook, it is called instead (with the
        reference elementwise maths), so adapters and hooks keep working.
        """
        self._check_input(x)
        if is_sharded(self):  # DTensor weights (ffnlab.parallel): compute on the local shards
            return self._dropout(sharded_forward(self, x))
        # Submodules and parameters read from their dicts: nn.Module.__getattr__ costs ~1 us a
        # lookup, and a forward needs about a dozen (a measurable share at dim 64).
        mods = self._modules
        l1, l2, l3 = mods["w1"], mods["w2"], mods.get("w3")
        if not projections_are_plain(l1, l2, l3):
            # A replaced or hooked projection (a LoRA adapter, a quantised Linear, a forward
            # hook) must see its own call, so the block runs through the modules themselves.
            h1 = l1(x)
            h3 = None if l3 is None else l3(x)
            m = hidden_activation(self.activation, h1, h3, self.beta_tensor_or_value())
            return self._dropout(l2(m))
        p1, p2 = l1._parameters, l2._parameters
        p3 = {} if l3 is None else l3._parameters
        y = feed_forward(
            x,
            p1["weight"],
            p2["weight"],
            p3.get("weight"),
            p1.get("bias"),
            p2.get("bias"),
            p3.get("bias"),
            activation=self.activation,
            beta=self.beta_tensor_or_value(),
            backend=self.backend,
            recompute=self.recompute,
        )
        return self._dropout(y)

    def _dropout(self, y: torch.Tensor) -> torch.Tensor:
        # nn.Dropout with p=0 is an identity that still costs a module call (~9 us measured
        # per forward on this CPU), a large share of a small FFN's time.
        dropout = self._modules["dropout"]
        return y if dropout.p == 0.0 else dropout(y)

    @classmethod
    def from_hf(cls, module: nn.Module, **kwargs) -> FeedForward:
        """A FeedForward sharing the weights of a transformers MLP module (see ``interop.hf``)."""
        from .interop.hf import feed_forward_from_hf

        return feed_forward_from_hf(module, **kwargs)

    def extra_repr(self) -> str:
        parts = [
            f"dim={self.dim}",
            f"hidden_dim={self.hidden_dim}",
            f"variant={self.variant!r}",
            f"backend={self.backend!r}",
            f"recompute={self.recompute!r}",
        ]
        if get_variant(self.variant).has_beta:
            parts.append(f"beta={'learnable' if self.beta is not None else self.beta_value}")
        return ", ".join(parts)
