"""Hugging Face transformers interop: run a transformers model's MLPs with ffnlab.

* :func:`patch_hf` replaces each recognised MLP **instance** in a model by a wrapper from
  :mod:`ffnlab.interop.hf_modules` (``setattr`` on its parent; transformers' classes are never
  touched). The wrappers share the original parameters and keep the state-dict keys, so
  training, ``save_pretrained`` and ``from_pretrained`` behave as before.
* :func:`unpatch_hf` puts the original instances back.
* :func:`feed_forward_from_hf` (``FeedForward.from_hf``) builds a standalone
  :class:`ffnlab.FeedForward` from one MLP.

Recognised modules (class name, then the weights' roles):

==========================================  ==============================================
``LlamaMLP`` ``MistralMLP`` ``Qwen2MLP``    gate_proj = W1, up_proj = W3, down_proj = W2
``Qwen3MLP`` ``GemmaMLP`` ``Gemma2MLP``
``Gemma3MLP`` ``OlmoMLP`` ``GraniteMLP``
``Phi3MLP``                                 gate_up_proj = [W1; W3] (rows), down_proj = W2
``GPT2MLP``                                 c_fc = W1ᵀ, c_proj = W2ᵀ (Conv1D), biases
``T5DenseActDense``                         wi = W1, wo = W2
``T5DenseGatedActDense``                    wi_0 = W1, wi_1 = W3, wo = W2
``BertIntermediate`` + ``BertOutput``       intermediate.dense = W1, output.dense = W2
==========================================  ==============================================

The activation is read from the module's own activation object (built by transformers from the
config's ``hidden_act`` / ``hidden_activation`` / ``activation_function`` / ``dense_act_fn``),
because that object is what the original forward runs. transformers is never imported here.
"""

from __future__ import annotations

import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError, check_choice
from ..ops.dispatch import BACKENDS
from ..variants import VARIANTS
from .hf_modules import (
    HFBertFeedForward,
    HFBertOutputTail,
    HFConv1DMLP,
    HFFeedForward,
    HFGatedMLP,
    HFPackedGatedMLP,
    HFT5Dense,
)

__all__ = [
    "HF_ACTIVATIONS",
    "hf_activation",
    "patch_hf",
    "unpatch_hf",
    "feed_forward_from_hf",
]

#: Class name of a transformers (or torch.nn) activation module -> ffnlab activation.
#: ``FastGELUActivation`` computes 0.5x(1+tanh(0.7978845608·x(1+0.044715x²))), the same
#: function as gelu_tanh written differently (they differ by float rounding only).
#: Not listed (left alone): gelu_10 (clipped), gelu_accurate, mish, laplace, leaky_relu,
#: relu6, hardswish, prelu, xielu ...
HF_ACTIVATIONS: dict[str, str] = {
    "SiLUActivation": "swish",  # "silu"
    "SiLU": "swish",  # "swish" (torch.nn.SiLU)
    "GELUActivation": "gelu",  # "gelu", "gelu_python"
    "NewGELUActivation": "gelu_tanh",  # "gelu_new" (GPT-2)
    "GELUTanh": "gelu_tanh",  # "gelu_pytorch_tanh" (Gemma), "gelu_python_tanh"
    "PytorchGELUTanh": "gelu_tanh",  # older transformers' name of the same
    "FastGELUActivation": "gelu_tanh",  # "gelu_fast"
    "QuickGELUActivation": "quick_gelu",  # "quick_gelu" (CLIP)
    "ReLU": "relu",
    "ReLUSquaredActivation": "relu2",  # "relu2"
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LinearActivation": "identity",  # "linear"
}

_FUNCTIONS = {F.silu: "swish", F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh",
              torch.sigmoid: "sigmoid", F.gelu: "gelu"}  # fmt: skip

_GATED_NAMES = frozenset(
    {"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP", "GemmaMLP", "Gemma2MLP", "Gemma3MLP",
     "OlmoMLP", "GraniteMLP"}
)  # fmt: skip
_PACKED_NAMES = frozenset({"Phi3MLP"})
_CONV1D_NAMES = frozenset({"GPT2MLP"})
_T5_NAMES = frozenset({"T5DenseActDense", "T5DenseGatedActDense"})
_ACT_ATTR = {"gated": "act_fn", "packed": "activation_fn", "conv1d": "act", "t5": "act"}

# Class names that look like an FFN; such a module that is not converted is reported.
_LOOKS_LIKE_MLP = re.compile(r"(MLP|FeedForward|FFN|DenseActDense|Intermediate)$")


def hf_activation(act: object) -> str | None:
    """The ffnlab activation computed by a transformers activation object, or None.

    ``act`` is what an MLP calls (``ACT2FN[name]``: a module of transformers or torch.nn, or a
    plain function such as ``F.silu``). Subclasses are not trusted: only the exact classes.
    """
    if isinstance(act, nn.Module):
        origin = type(act).__module__
        if not origin.startswith(("transformers.", "torch.nn.")):
            return None
        name = type(act).__name__
        if name == "GELU":  # torch.nn.GELU
            return "gelu_tanh" if act.approximate == "tanh" else "gelu"
        return HF_ACTIVATIONS.get(name)
    try:
        return _FUNCTIONS.get(act)
    except TypeError:  # unhashable
        return None


def _family(module: nn.Module) -> str | None:
    name = type(module).__name__
    if name in _GATED_NAMES:
        return "gated"
    if name in _PACKED_NAMES:
        return "packed"
    if name in _CONV1D_NAMES:
        return "conv1d"
    if name in _T5_NAMES:
        return "t5"
    return None


def _is_bert_layer(module: nn.Module) -> bool:
    inter = getattr(module, "intermediate", None)
    out = getattr(module, "output", None)
    return (
        type(inter).__name__ == "BertIntermediate"
        and type(out).__name__ == "BertOutput"
        and hasattr(module, "feed_forward_chunk")
    )


_WRAPPERS = {
    "gated": HFGatedMLP,
    "packed": HFPackedGatedMLP,
    "conv1d": HFConv1DMLP,
    "t5": HFT5Dense,
}


def _describe(act: object) -> str:
    return type(act).__name__ if isinstance(act, nn.Module) else repr(act)


def patch_hf(model: nn.Module, backend: str = "auto") -> int:
    """Replace every recognised MLP instance in ``model`` by an ffnlab module; return how many.

    The replacements compute the same function (same outputs to float rounding, forward and
    backward), share the original ``nn.Parameter`` objects (Phi-3's packed and GPT-2's
    transposed weights are used through views) and keep ``model.state_dict()``'s keys.
    A BERT layer's ``intermediate``/``output`` pair counts as one MLP. Modules already patched
    are skipped, so patching twice returns 0 the second time. MLP-like modules that are left
    alone (unknown class, or an activation ffnlab does not have) are listed in one warning.

    Args:
        model: any ``nn.Module`` (typically a ``PreTrainedModel``).
        backend: the ffnlab backend the replacements use (see :mod:`ffnlab.ops.dispatch`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"patch_hf expects an nn.Module, got {type(model).__name__}")
    check_choice("backend", backend, BACKENDS)
    skipped: list[str] = []
    count = _patch(model, "", backend, skipped)
    if skipped:
        warnings.warn(
            f"ffnlab.patch_hf left {len(skipped)} MLP module(s) unchanged: " + "; ".join(skipped),
            stacklevel=2,
        )
    return count


def _patch(parent: nn.Module, prefix: str, backend: str, skipped: list[str]) -> int:
    count = 0
    handled: set[str] = set()
    if _is_bert_layer(parent):
        handled = {"intermediate", "output"}
        inter, out = parent.intermediate, parent.output
        act = hf_activation(inter.intermediate_act_fn)
        if act is None:
            skipped.append(
                f"{prefix}.intermediate ({type(inter).__name__}: activation "
                f"{_describe(inter.intermediate_act_fn)} has no ffnlab equivalent)"
            )
        else:
            tail = HFBertOutputTail(out, activation=act, backend=backend)
            parent.intermediate = HFBertFeedForward(inter, tail, activation=act, backend=backend)
            parent.output = tail
            count += 1
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, HFFeedForward) or name in handled:
            continue
        family = _family(child)
        if family is not None:
            act_obj = getattr(child, _ACT_ATTR[family], None)
            act = hf_activation(act_obj)
            if act is None:
                skipped.append(
                    f"{path} ({type(child).__name__}: activation {_describe(act_obj)} "
                    f"has no ffnlab equivalent)"
                )
            else:
                setattr(parent, name, _WRAPPERS[family](child, activation=act, backend=backend))
                count += 1
            continue
        if _LOOKS_LIKE_MLP.search(type(child).__name__) and not _is_ffnlab(child):
            skipped.append(f"{path} ({type(child).__name__}: not a recognised MLP)")
            continue
        count += _patch(child, path, backend, skipped)
    return count


def _is_ffnlab(module: nn.Module) -> bool:
    return type(module).__module__.startswith("ffnlab.")


def unpatch_hf(model: nn.Module) -> int:
    """Put back the original transformers modules replaced by :func:`patch_hf`; return how many
    MLPs were restored (a BERT pair counts as one). Their ``train``/``eval`` mode follows the
    wrappers', and a projection replaced on a wrapper after patching (an adapter, say) is
    carried over to the original module. A model that was never patched returns 0."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"unpatch_hf expects an nn.Module, got {type(model).__name__}")
    count = 0
    # Collect first: replacing children while iterating named_modules would skip some.
    found = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, HFFeedForward)
    ]
    for parent, name, wrapper in found:
        original = wrapper.original
        for child_name, child in wrapper.named_children():
            if child_name in original._modules and original._modules[child_name] is not child:
                setattr(original, child_name, child)
        original.train(wrapper.training)
        setattr(parent, name, original)
        count += int(wrapper.counts_as_mlp)
    return count


# --- FeedForward.from_hf ----------------------------------------------------------------


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
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach().clone() if copy else weight)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach().clone() if copy else bias)
    return lin


def feed_forward_from_hf(
    module: nn.Module,
    *,
    backend: str = "auto",
    recompute: str = "activation",
    copy: bool = False,
):
    """A :class:`ffnlab.FeedForward` computing what a transformers MLP computes.

    ``module`` is one of the MLPs listed in this module's docstring (or its ``patch_hf``
    wrapper), or a BERT *layer* (the ``BertIntermediate``/``BertOutput`` pair lives there; the
    FeedForward covers ``output.dropout(output.dense(intermediate(x)))``, not the residual and
    LayerNorm).

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
    from ..ffn import FeedForward  # ffn imports interop lazily; keep the cycle lazy too

    if isinstance(module, HFFeedForward):
        module = module.original
    if not isinstance(module, nn.Module):
        raise TypeError(f"FeedForward.from_hf expects an nn.Module, got {type(module).__name__}")
    family = "bert" if _is_bert_layer(module) else _family(module)
    if family is None:
        raise UsageError(
            f"FeedForward.from_hf does not recognise {type(module).__name__}; supported: "
            f"{', '.join(sorted(_GATED_NAMES | _PACKED_NAMES | _CONV1D_NAMES | _T5_NAMES))} "
            f"and BERT layers (BertIntermediate + BertOutput)"
        )
    if family in ("packed", "conv1d") and not copy:
        why = (
            "packs W1 and W3 in one gate_up_proj parameter"
            if family == "packed"
            else "stores Conv1D weights transposed ([in, out])"
        )
        raise UsageError(
            f"{type(module).__name__} {why}, which a FeedForward cannot share as separate "
            f"Linear weights; pass copy=True for a FeedForward with copied weights, or use "
            f"ffnlab.patch_hf, which shares them"
        )

    dropout = 0.0
    if family == "bert":
        inter, out = module.intermediate, module.output
        act_obj = inter.intermediate_act_fn
        lins = (inter.dense, out.dense, None)
        dropout = out.dropout.p
    else:
        act_obj = getattr(module, _ACT_ATTR[family])
        wrapper = _WRAPPERS[family](module, activation="identity", backend="reference")
        w1, w2, w3, b1, b2, b3 = wrapper.ffn_weights()
        if family == "gated":
            lins = (module.gate_proj, module.down_proj, module.up_proj)
        elif family == "t5":
            lins = (module.wi_0 if wrapper.gated else module.wi, module.wo,
                    module.wi_1 if wrapper.gated else None)  # fmt: skip
        else:
            lins = (_linear(w1, b1, True), _linear(w2, b2, True),
                    None if w3 is None else _linear(w3, b3, True))  # fmt: skip
        if family == "conv1d":
            dropout = module.dropout.p
    act = hf_activation(act_obj)
    if act is None:
        raise UsageError(
            f"{type(module).__name__} uses activation {_describe(act_obj)}, which ffnlab does not have"
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
    if copy and family not in ("packed", "conv1d"):
        w1_lin, w2_lin, w3_lin = (None if lin is None else _linear(lin.weight, lin.bias, True)
                                  for lin in lins)  # fmt: skip
    hidden, dim = w1_lin.weight.shape
    ffn = FeedForward(
        dim,
        hidden,
        variant,
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
