"""``ffnlab.from_hf``: a standalone :class:`ffnlab.FeedForward` from one transformers MLP.

The recognised modules and their weights' roles are listed in :mod:`ffnlab.interop.recognise`.
Shapes: the FeedForward takes ``[..., dim]`` and returns ``[..., out_dim]``, with W1/W3
``[hidden, dim]`` and W2 ``[out_dim, hidden]`` taken from the module.
"""

from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn

from ..activations import get_activation
from ..errors import UsageError
from ..ffn import FeedForward
from ..variants import VARIANTS
from .hf import _is_bert_layer, build_wrapper
from .hf_activations import hf_activation, hf_activation_options
from .hf_modules import HFMLP, HFFeedForward
from .recognise import MLPSpec
from .verify import verified_spec

__all__ = ["from_hf"]


def _variant_and_activation(gated: bool, act, options: tuple[float, ...]) -> tuple[str, dict]:
    """The variant with this gating and activation, or a base variant (``reglu`` / ``relu``)
    with ``activation=`` (a name with its ``act_kwargs``, or the callable itself)."""
    if isinstance(act, str) and not options:
        for v in VARIANTS.values():
            if v.gated == gated and v.activation == act:
                return v.name, {}
    kw: dict = {"activation": act}
    if isinstance(act, str) and options:
        kw["act_kwargs"] = get_activation(act).kwargs(options)
    return ("reglu" if gated else "relu"), kw


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

    ``module`` is an MLP :mod:`ffnlab.interop.recognise` describes and :mod:`.verify` checks
    (or its ``patch_hf`` wrapper), or a BERT-shaped *layer* (the ``BertIntermediate``/``BertOutput`` pair
    lives there; the FeedForward covers ``output.dropout(output.dense(intermediate(x)))``, not
    the residual and LayerNorm).

    Weights: where the module holds ``nn.Linear`` layers (LLaMA family, T5, BERT) those very
    Linear modules become ``w1``/``w2``/``w3``: the parameters are shared, not copied.
    Phi-3's packed ``gate_up_proj`` and GPT-2's transposed ``Conv1D`` cannot be shared as
    separate ``[out, in]`` Linear weights, nor can Falcon-H1's multipliers be carried: they
    raise a UsageError unless ``copy=True``, which builds the FeedForward from copies
    (multipliers folded in; later training of one does not change the other).
    ``copy=True`` copies in every case.

    Activation: the variant with the module's gating and activation, or ``reglu``/``relu``
    with ``activation=`` the ffnlab name (options as ``act_kwargs``) or the module's own
    activation object (learnable ones: shared, copied with ``copy=True``).

    Dropout: GPT-2's and BERT's output dropout carries over (FeedForward applies dropout to its
    output too). T5 applies dropout to the hidden units, which FeedForward does not have: the
    result has ``dropout=0`` and equals T5's module in eval mode.
    """
    spec = module.spec if isinstance(module, HFMLP) else None
    if isinstance(module, HFFeedForward):
        module = module.original
    if not isinstance(module, nn.Module):
        raise TypeError(f"ffnlab.from_hf expects an nn.Module, got {type(module).__name__}")
    if _is_bert_layer(module):
        inter, out = module.intermediate, module.output
        act_obj = inter.intermediate_act_fn
        if isinstance(getattr(inter, "LayerNorm", None), nn.Module):
            raise UsageError(
                f"{type(inter).__name__} applies a LayerNorm to its input, which a FeedForward "
                f"does not have; ffnlab.patch_hf can still run this layer"
            )
        dropout = out.dropout.p if isinstance(getattr(out, "dropout", None), nn.Dropout) else 0.0
        act = hf_activation(act_obj) or act_obj
        return _build(module, (inter.dense, out.dense, None), act,
                      hf_activation_options(act_obj), dropout,
                      (1.0, 1.0), backend, recompute, copy)  # fmt: skip
    if spec is None:
        spec, diff = verified_spec(module, lambda m, s: build_wrapper(m, s, "reference"))
        if spec is None:
            raise UsageError(
                f"ffnlab.from_hf does not recognise {type(module).__name__} as an MLP (smallest "
                f"relative difference of a candidate: {diff:.2g}); supported: modules with two "
                f"or three projections computing a plain, gated or packed-gated FFN"
            )
    _check_representable(module, spec)
    act_obj = spec.activation if spec.activation is not None else getattr(module, spec.act_attr)
    wrapper = build_wrapper(module, spec, "reference")
    scales = (wrapper._float(spec.gate_scale), wrapper._float(spec.out_scale))
    if spec.packed or not all(isinstance(p, nn.Linear) for p in wrapper.projections()):
        w1, w2, w3, b1, b2, b3 = wrapper.ffn_weights()
        lins = (_linear(w1, b1, True), _linear(w2, b2, True),
                None if w3 is None else _linear(w3, b3, True))  # fmt: skip
        scales = (1.0, 1.0)  # already in the copies
        if not copy:
            raise UsageError(
                f"{type(module).__name__} packs W1 and W3 in one projection or stores "
                f"transposed (Conv1D) weights, which a FeedForward cannot share as separate "
                f"Linear weights; pass copy=True for a FeedForward with copied weights, or use "
                f"ffnlab.patch_hf, which shares them"
            )
    else:
        lins = tuple(None if n is None else module._modules[n]
                     for n in (spec.gate, spec.down, spec.up))  # fmt: skip
    dropout = _p(module, spec.out_dropout)
    return _build(module, lins, act_obj, spec.act_options, dropout, scales, backend, recompute,
                  copy)  # fmt: skip


def _p(module: nn.Module, name: str | None) -> float:
    if name is None:
        return 0.0
    d = getattr(module, name)
    return d.p if isinstance(d, nn.Dropout) else float(d)


def _check_representable(module: nn.Module, spec: MLPSpec) -> None:
    steps = [what for what, on in (
        ("a norm on the hidden units", spec.hidden_norm), ("a norm on the input", spec.input_norm),
        ("a norm on the output", spec.out_norm),
        ("a transform of the gate (activation sparsity)", spec.gate_transform),
    ) if on is not None]  # fmt: skip
    if steps:
        raise UsageError(
            f"{type(module).__name__} applies {' and '.join(steps)}, which a FeedForward does "
            f"not have; ffnlab.patch_hf can still run this module"
        )


def _build(module, lins, act, options, dropout, scales, backend, recompute, copy) -> FeedForward:
    if copy and isinstance(act, nn.Module):
        act = deepcopy(act)  # a learnable activation's parameters are copied with the weights
    gated = lins[2] is not None
    variant, act_kw = _variant_and_activation(gated, act, options)
    biases = {getattr(lin, "bias", None) is not None for lin in lins if lin is not None}
    if len(biases) != 1:
        raise UsageError(
            f"{type(module).__name__} has biases on some projections only; FeedForward has "
            f"them on all or none"
        )
    gs, os_ = scales
    if (gs, os_) != (1.0, 1.0) and not copy:
        raise UsageError(
            f"{type(module).__name__} multiplies its gate or output by a constant "
            f"({gs:g}, {os_:g}), which a FeedForward has no place for; pass copy=True for a "
            f"FeedForward with the constants folded into copied weights"
        )
    w1_lin, w2_lin, w3_lin = lins
    if copy:
        w1_lin, w2_lin, w3_lin = (
            None if lin is None else _linear(lin.weight * s, None if lin.bias is None
                                             else lin.bias * s, True)
            for lin, s in zip(lins, (gs, os_, 1.0), strict=True)
        )  # fmt: skip
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
        **act_kw,
        device="meta",  # placeholders only: replaced by the module's layers just below
    )
    ffn.w1, ffn.w2 = w1_lin, w2_lin
    if gated:
        ffn.w3 = w3_lin
    return ffn
