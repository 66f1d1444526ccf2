"""Drop-in replacements for Hugging Face transformers MLP modules, run by ffnlab's FFN op.

Each wrapper takes one MLP *instance* of a transformers model and registers that instance's own
submodules (``gate_proj``, ``c_fc``, ``wi_0`` ...) under their original names, so

* the parameters are the very same ``nn.Parameter`` objects (training updates the original),
* ``model.state_dict()`` keys do not change (``save_pretrained``/``from_pretrained`` round-trip),
* the wrapper's forward computes the module's function through
  :func:`ffnlab.ops.projections.projected_feed_forward` (as :class:`ffnlab.FeedForward` does)
  with W1/W2/W3 taken from those parameters: the parameters themselves, or views of them
  (Phi-3's packed ``gate_up_proj`` is split with a slice, GPT-2's ``Conv1D`` weights
  ``[in, out]`` are transposed), so gradients still land on the original parameter; a
  replaced or hooked projection is called instead.

The original module is kept as a plain attribute (not a registered submodule, which would list
every parameter twice) so that :func:`ffnlab.interop.hf.unpatch_hf` can put it back.

Shapes everywhere: input ``[..., dim]``, output ``[..., dim]``; W1/W3 ``[hidden, dim]``,
W2 ``[dim, hidden]`` (after transposing or splitting).
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.projections import Weights, projected_feed_forward
from ..ops.reference import hidden_activation

__all__ = [
    "HFFeedForward",
    "HFGatedMLP",
    "HFPackedGatedMLP",
    "HFConv1DMLP",
    "HFT5Dense",
    "HFBertFeedForward",
    "HFBertOutputTail",
]


class HFFeedForward(nn.Module):
    """Base class of the wrappers: holds the replaced module and the FFN's settings.

    Args:
        original: the transformers module this wrapper replaces (restored by ``unpatch_hf``).
        activation: ffnlab activation name of the W1 branch (``"swish"``, ``"gelu_tanh"`` ...).
        backend: ffnlab backend (``"auto"``, ``"reference"``, ``"fused"``, ``"triton"``).
    """

    #: True for wrappers that count as one patched MLP (the BERT tail does not).
    counts_as_mlp = True

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__()
        # Bypass nn.Module.__setattr__: registering it would duplicate every parameter.
        self.__dict__["_hf_original"] = original
        self.activation = activation
        self.backend = backend
        self.train(original.training)

    @property
    def original(self) -> nn.Module:
        """The transformers module this wrapper stands in for."""
        return self.__dict__["_hf_original"]

    def ffn_weights(self) -> Weights:
        """``(w1, w2, w3, b1, b2, b3)`` as ffnlab expects them (w3/biases may be None)."""
        raise NotImplementedError

    def projections(self) -> tuple[nn.Module, ...]:
        """The projection modules whose weights :meth:`ffn_weights` reads."""
        raise NotImplementedError

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(h1, h3)`` by calling the projection modules: ``x [..., dim]`` -> each
        ``[..., hidden]`` (``h3`` None for plain MLPs)."""
        raise NotImplementedError

    def down(self, m: torch.Tensor) -> torch.Tensor:
        """The down projection module's call: ``m [..., hidden]`` -> ``[..., dim]``."""
        raise NotImplementedError

    def module_ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The same FFN computed by calling the projection modules (what runs when one of them
        is replaced, e.g. by a LoRA adapter, or hooked)."""
        return self.down(hidden_activation(self.activation, *self.branches(x)))

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return projected_feed_forward(
            x,
            self.projections(),
            self.ffn_weights,
            self.branches,
            self.down,
            activation=self.activation,
            backend=self.backend,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., dim]``."""
        return self._ffn(x)

    def extra_repr(self) -> str:
        return (
            f"replaces={type(self.original).__name__}, activation={self.activation!r}, "
            f"backend={self.backend!r}"
        )


def _bias(linear: nn.Module) -> torch.Tensor | None:
    return getattr(linear, "bias", None)


class HFGatedMLP(HFFeedForward):
    """LLaMA-style ``down_proj(act(gate_proj(x)) * up_proj(x))`` (LlamaMLP, MistralMLP, Qwen2MLP,
    GemmaMLP ...): gate_proj = W1, up_proj = W3, down_proj = W2, biases if the Linears have them.

    Equivalent PyTorch: ``F.linear(act(F.linear(x, W1, b1)) * F.linear(x, W3, b3), W2, b2)``.
    """

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.gate_proj = original.gate_proj
        self.up_proj = original.up_proj
        self.down_proj = original.down_proj

    def ffn_weights(self) -> Weights:
        g, u, d = self.gate_proj, self.up_proj, self.down_proj
        return g.weight, d.weight, u.weight, _bias(g), _bias(d), _bias(u)

    def projections(self) -> tuple[nn.Module, ...]:
        return self.gate_proj, self.up_proj, self.down_proj

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.gate_proj(x), self.up_proj(x)

    def down(self, m: torch.Tensor) -> torch.Tensor:
        return self.down_proj(m)


class HFPackedGatedMLP(HFFeedForward):
    """Phi-3's ``down_proj(up * act(gate))`` with ``gate, up = gate_up_proj(x).chunk(2, -1)``.

    ``gate_up_proj.weight`` is ``[2*hidden, dim]``: rows ``[:hidden]`` are W1 (gate), rows
    ``[hidden:]`` W3 (up). They are passed as slices (views) of the one packed parameter.
    """

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.gate_up_proj = original.gate_up_proj
        self.down_proj = original.down_proj

    def ffn_weights(self) -> Weights:
        packed, b = self.gate_up_proj.weight, _bias(self.gate_up_proj)
        h = packed.shape[0] // 2
        b1, b3 = (None, None) if b is None else (b[:h], b[h:])
        return packed[:h], self.down_proj.weight, packed[h:], b1, _bias(self.down_proj), b3

    def projections(self) -> tuple[nn.Module, ...]:
        return self.gate_up_proj, self.down_proj

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return gate, up

    def down(self, m: torch.Tensor) -> torch.Tensor:
        return self.down_proj(m)


class HFConv1DMLP(HFFeedForward):
    """GPT-2's ``dropout(c_proj(act(c_fc(x))))`` with ``Conv1D`` layers.

    ``Conv1D`` stores its weight as ``[in, out]`` and computes ``x @ W + b``; W1 and W2 are the
    transposed views ``c_fc.weight.T [hidden, dim]`` and ``c_proj.weight.T [dim, hidden]``.
    The output dropout stays where GPT-2 has it, after the down projection.
    """

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.c_fc = original.c_fc
        self.c_proj = original.c_proj
        self.dropout = original.dropout

    def ffn_weights(self) -> Weights:
        return (
            self.c_fc.weight.t(),
            self.c_proj.weight.t(),
            None,
            self.c_fc.bias,
            self.c_proj.bias,
            None,
        )

    def projections(self) -> tuple[nn.Module, ...]:
        return self.c_fc, self.c_proj

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.c_fc(x), None

    def down(self, m: torch.Tensor) -> torch.Tensor:
        return self.c_proj(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., dim]``."""
        return self.dropout(self._ffn(x))


class HFT5Dense(HFFeedForward):
    """T5's ``T5DenseActDense`` (``wo(dropout(act(wi(x))))``) and ``T5DenseGatedActDense``
    (``wo(dropout(act(wi_0(x)) * wi_1(x)))``); no biases.

    T5 applies dropout to the *hidden* units and casts them to ``wo``'s dtype before the down
    projection (``wo`` may be kept in float32 while the rest runs in half precision). The fused
    op covers neither, so whenever the dropout is active (training with p > 0) or the dtypes
    differ, this runs the same steps in T5's order, with ffnlab's elementwise middle; otherwise
    it is the plain fused FFN.
    """

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.gated = hasattr(original, "wi_0")
        if self.gated:
            self.wi_0 = original.wi_0
            self.wi_1 = original.wi_1
        else:
            self.wi = original.wi
        self.wo = original.wo
        self.dropout = original.dropout

    def ffn_weights(self) -> Weights:
        w1 = (self.wi_0 if self.gated else self.wi).weight
        w3 = self.wi_1.weight if self.gated else None
        return w1, self.wo.weight, w3, None, None, None

    def projections(self) -> tuple[nn.Module, ...]:
        return (self.wi_0, self.wi_1, self.wo) if self.gated else (self.wi, self.wo)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.gated:
            return self.wi_0(x), self.wi_1(x)
        return self.wi(x), None

    def down(self, m: torch.Tensor) -> torch.Tensor:
        """T5's own steps: hidden dropout, then the cast to ``wo``'s dtype, then ``wo``."""
        h = self.dropout(m)
        w2 = self.wo.weight
        if isinstance(w2, torch.Tensor) and h.dtype != w2.dtype and w2.dtype != torch.int8:
            h = h.to(w2.dtype)
        return self.wo(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., d_model]`` -> ``[..., d_model]``."""
        w1, w2, _, _, _, _ = self.ffn_weights()
        hidden_dropout = self.training and self.dropout.p > 0
        if not hidden_dropout and x.dtype == w1.dtype == w2.dtype:
            return self._ffn(x)
        return self.module_ffn(x)


class HFBertFeedForward(HFFeedForward):
    """Replaces BERT's ``intermediate`` so that it computes the whole FFN
    ``output.dense(act(intermediate.dense(x)))``, i.e. ``W2 · act(W1 x + b1) + b2``.

    It registers ``dense`` (W1, b1) like ``BertIntermediate`` and reads W2/b2 from the layer's
    ``output.dense``, which stays registered in :class:`HFBertOutputTail` only. The layer's
    ``feed_forward_chunk`` calls ``self.output(self.intermediate(x), x)``, so the two wrappers
    together compute exactly BERT's ``LayerNorm(dropout(W2 act(W1 x + b1) + b2) + x)``.
    """

    def __init__(
        self, original: nn.Module, output: nn.Module, *, activation: str, backend: str
    ) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.dense = original.dense
        # The layer's output module (the tail once patched), not registered here: W2 is read
        # from its ``dense`` at each call, so replacing ``output.dense`` later (an adapter,
        # a quantised Linear) is seen here too.
        self.__dict__["_output"] = output

    @property
    def _down(self) -> nn.Module:
        return self.__dict__["_output"].dense

    def ffn_weights(self) -> Weights:
        down = self._down
        return self.dense.weight, down.weight, None, self.dense.bias, down.bias, None

    def projections(self) -> tuple[nn.Module, ...]:
        return self.dense, self._down

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.dense(x), None

    def down(self, m: torch.Tensor) -> torch.Tensor:
        return self._down(m)


class HFBertOutputTail(HFFeedForward):
    """Replaces BERT's ``output`` when its ``intermediate`` is an :class:`HFBertFeedForward`:
    ``dense`` has already been applied, so this is ``LayerNorm(dropout(h) + input_tensor)``.

    It keeps ``dense``, ``dropout`` and ``LayerNorm`` registered under their names so the
    state dict is unchanged.
    """

    counts_as_mlp = False

    def __init__(self, original: nn.Module, *, activation: str, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        self.dense = original.dense
        self.dropout = original.dropout
        self.LayerNorm = original.LayerNorm

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """``hidden_states [..., dim]`` (the FFN output), ``input_tensor [..., dim]`` -> same."""
        return self.LayerNorm(self.dropout(hidden_states) + input_tensor)

    def extra_repr(self) -> str:
        return f"replaces={type(self.original).__name__} (dense applied by intermediate)"
