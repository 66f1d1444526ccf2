"""BERT's FFN pair as two wrappers: ``intermediate`` computes the whole FFN, ``output`` the rest.

BERT's FFN spans two modules, ``BertIntermediate`` (W1 and the activation) and ``BertOutput``
(W2, dropout, residual, LayerNorm); :func:`ffnlab.interop.hf.patch_hf` replaces the pair
together by :class:`HFBertFeedForward` and :class:`HFBertOutputTail`, the base class and the
choice of path as :mod:`ffnlab.interop.hf_modules` describes them.

Shapes: input ``[..., dim]``, output ``[..., dim]``; W1 ``[hidden, dim]``, W2 ``[dim, hidden]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..ops.projections import Weights
from .hf_modules import Activation, HFFeedForward
from .recognise import projection_shape

__all__ = ["HFBertFeedForward", "HFBertOutputTail"]


class HFBertFeedForward(HFFeedForward):
    """Replaces BERT's ``intermediate`` so that it computes the whole FFN
    ``output.dense(act(intermediate.dense(x)))``, i.e. ``W2 · act(W1 x + b1) + b2``.

    It registers ``dense`` (W1, b1) like ``BertIntermediate`` and reads W2/b2 from the layer's
    ``output.dense``, which stays registered in :class:`HFBertOutputTail` only. The layer's
    ``feed_forward_chunk`` calls ``self.output(self.intermediate(x), x)``, so the two wrappers
    together compute exactly BERT's ``LayerNorm(dropout(W2 act(W1 x + b1) + b2) + x)``.
    An intermediate holding its own ``LayerNorm`` (RoBERTa-PreLayerNorm) applies it to ``x``
    first, as the original does.
    """

    def __init__(
        self, original: nn.Module, output: nn.Module, *, activation: Activation, backend: str,
        recompute: str = "activation",
    ) -> None:
        super().__init__(original, activation=activation, backend=backend, recompute=recompute)
        # every child in the original's order (dense, the activation, a LayerNorm): same keys
        for name, child in original.named_children():
            self.add_module(name, child)
        if "intermediate_act_fn" not in self._modules:  # a plain function
            self.intermediate_act_fn = original.intermediate_act_fn
        # The layer's output module (the tail once patched), not registered here: W2 is read
        # from its ``dense`` at each call, so replacing ``output.dense`` later (an adapter,
        # a quantised Linear) is seen here too.
        self.__dict__["_output"] = output
        shape = projection_shape(self.dense)
        self.hidden_dim = None if shape is None else shape[1]

    def own_activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``intermediate_act_fn``, the activation BERT's intermediate calls."""
        return self.intermediate_act_fn

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., dim]`` -> ``[..., dim]`` (the FFN output, before the tail's residual)."""
        if "LayerNorm" in self._modules:
            x = self.LayerNorm(x)
        return self._ffn(x)


class HFBertOutputTail(HFFeedForward):
    """Replaces BERT's ``output`` when its ``intermediate`` is an :class:`HFBertFeedForward`:
    ``dense`` has already been applied, so this is ``LayerNorm(dropout(h) + input_tensor)``,
    without the dropout or the LayerNorm where the original has none (Megatron-BERT's and
    XLM-RoBERTa-XL's outputs end with the residual).

    It keeps ``dense``, ``dropout`` and ``LayerNorm`` registered under their names so the
    state dict is unchanged.
    """

    counts_as_mlp = False

    def __init__(self, original: nn.Module, *, activation: Activation, backend: str) -> None:
        super().__init__(original, activation=activation, backend=backend)
        for name, child in original.named_children():  # dense, dropout, LayerNorm, in order
            self.add_module(name, child)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """``hidden_states [..., dim]`` (the FFN output), ``input_tensor [..., dim]`` -> same."""
        if "dropout" in self._modules:
            hidden_states = self.dropout(hidden_states)
        y = hidden_states + input_tensor
        return self.LayerNorm(y) if "LayerNorm" in self._modules else y

    def extra_repr(self) -> str:
        return f"replaces={type(self.original).__name__} (dense applied by intermediate)"
