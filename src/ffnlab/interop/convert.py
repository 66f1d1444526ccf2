"""``ffnlab.from_hf``: a standalone :class:`ffnlab.FeedForward` from one transformers MLP.

The recognised modules and their weights' roles are listed in :mod:`ffnlab.interop.recognise`.
Shapes: the FeedForward takes ``[..., dim]`` and returns ``[..., out_dim]``, with W1/W3
``[hidden, dim]`` and W2 ``[out_dim, hidden]`` taken from the module.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UsageError
from ..ffn import FeedForward
from ..variants import VARIANTS
from .hf_modules import HFFeedForward
from .recognise import (
    ACT_ATTR,
    SUPPORTED_NAMES,
    WRAPPERS,
    describe,
    family,
    hf_activation,
    is_bert_layer,
)

__all__ = ["from_hf"]


def _variant_for(gated: bool, activation: str) -> str:
    for v in VARIANTS.values():
        if v.gated == gated and v.activation == activation:
            return v.name
    kind = "gated" if gated else "plain"
    raise UsageError(
        f"no ffnlab variant is a {kind} FFN with activation {activation!r}; "
        f"ffnlab.patch_hf can still run this module"
    )


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, copy: bool) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight [out, in]`` and ``bias [out]`` (copies when ``copy``)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach().clone() if copy else weight)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone() if copy else bias)
    return lin


def from_hf(
    module: nn.Module,
    *,
    backend: str = "auto",
    recompute: str = "activation",
    copy: bool = False,
) -> FeedForward:
    """A :class:`ffnlab.FeedForward` computing what a transformers MLP computes.

    ``module`` is one of the MLPs listed in :mod:`ffnlab.interop.recognise` (or its
    ``patch_hf`` wrapper), or a BERT *layer* (the ``BertIntermediate``/``BertOutput`` pair
    lives there; the FeedForward covers ``output.dropout(output.dense(intermediate(x)))``, not
    the residual and LayerNorm).

    Weights: where the module holds ``nn.Linear`` layers (LLaMA family, T5, BERT) those very
    Linear modules become ``w1``/``w2``/``w3``: the parameters are shared, not copied.
    Phi-3's packed ``gate_up_proj`` and GPT-2's transposed ``Conv1D`` cannot be shared as
    separate ``[out, in]`` Linear weights: they raise a UsageError unless ``copy=True``, which
    builds the FeedForward from copies (later training of one does not change the other).
    ``copy=True`` copies in every case.

    Dropout: GPT-2's and BERT's output dropout carries over (FeedForward applies dropout to its
    output too). T5 applies dropout to the hidden units, which FeedForward does not have: the
    result has ``dropout=0`` and equals T5's module in eval mode.
    """
    if isinstance(module, HFFeedForward):
        module = module.original
    if not isinstance(module, nn.Module):
        raise TypeError(f"ffnlab.from_hf expects an nn.Module, got {type(module).__name__}")
    kind = "bert" if is_bert_layer(module) else family(module)
    if kind is None:
        raise UsageError(
            f"ffnlab.from_hf does not recognise {type(module).__name__}; supported: "
            f"{', '.join(SUPPORTED_NAMES)} and BERT layers (BertIntermediate + BertOutput)"
        )
    if kind in ("packed", "conv1d") and not copy:
        why = (
            "packs W1 and W3 in one gate_up_proj parameter"
            if kind == "packed"
            else "stores Conv1D weights transposed ([in, out])"
        )
        raise UsageError(
            f"{type(module).__name__} {why}, which a FeedForward cannot share as separate "
            f"Linear weights; pass copy=True for a FeedForward with copied weights, or use "
            f"ffnlab.patch_hf, which shares them"
        )

    dropout = 0.0
    if kind == "bert":
        inter, out = module.intermediate, module.output
        act_obj = inter.intermediate_act_fn
        lins = (inter.dense, out.dense, None)
        dropout = out.dropout.p
    else:
        act_obj = getattr(module, ACT_ATTR[kind])
        wrapper = WRAPPERS[kind](module, activation="identity", backend="reference")
        w1, w2, w3, b1, b2, b3 = wrapper.ffn_weights()
        if kind == "gated":
            lins = (module.gate_proj, module.down_proj, module.up_proj)
        elif kind == "t5":
            lins = (module.wi_0 if wrapper.gated else module.wi, module.wo,
                    module.wi_1 if wrapper.gated else None)  # fmt: skip
        else:
            lins = (_linear(w1, b1, True), _linear(w2, b2, True),
                    None if w3 is None else _linear(w3, b3, True))  # fmt: skip
        if kind == "conv1d":
            dropout = module.dropout.p
    act = hf_activation(act_obj)
    if act is None:
        raise UsageError(
            f"{type(module).__name__} uses activation {describe(act_obj)}, which ffnlab does not have"
        )
    gated = lins[2] is not None
    variant = _variant_for(gated, act)
    biases = {getattr(lin, "bias", None) is not None for lin in lins if lin is not None}
    if len(biases) != 1:
        raise UsageError(
            f"{type(module).__name__} has biases on some projections only; FeedForward has "
            f"them on all or none"
        )
    w1_lin, w2_lin, w3_lin = lins
    if copy and kind not in ("packed", "conv1d"):
        w1_lin, w2_lin, w3_lin = (None if lin is None else _linear(lin.weight, lin.bias, True)
                                  for lin in lins)  # fmt: skip
    hidden, dim = w1_lin.weight.shape
    ffn = FeedForward(
        dim,
        hidden,
        variant,
        out_dim=w2_lin.weight.shape[0],
        bias=biases.pop(),
        dropout=dropout,
        backend=backend,
        recompute=recompute,
        device="meta",  # placeholders only: replaced by the module's layers just below
    )
    ffn.w1, ffn.w2 = w1_lin, w2_lin
    if gated:
        ffn.w3 = w3_lin
    return ffn
