"""Recognise transformers MLP modules: their family, the roles of their weights, their activation.

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

import torch
import torch.nn.functional as F
from torch import nn

from .hf_modules import HFConv1DMLP, HFGatedMLP, HFPackedGatedMLP, HFT5Dense

__all__ = [
    "ACT_ATTR",
    "_CONV1D_NAMES",
    "_GATED_NAMES",
    "HF_ACTIVATIONS",
    "LOOKS_LIKE_MLP",
    "_PACKED_NAMES",
    "SUPPORTED_NAMES",
    "_T5_NAMES",
    "WRAPPERS",
    "describe",
    "family",
    "hf_activation",
    "is_bert_layer",
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
#: Class names :func:`family` recognises (BERT layers apart: see :func:`is_bert_layer`).
SUPPORTED_NAMES = tuple(sorted(_GATED_NAMES | _PACKED_NAMES | _CONV1D_NAMES | _T5_NAMES))
#: Family -> the attribute holding the module's activation object.
ACT_ATTR = {"gated": "act_fn", "packed": "activation_fn", "conv1d": "act", "t5": "act"}

# Class names that look like an FFN; such a module that is not converted is reported.
LOOKS_LIKE_MLP = re.compile(r"(MLP|FeedForward|FFN|DenseActDense|Intermediate)$")


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


def family(module: nn.Module) -> str | None:
    """``"gated"``, ``"packed"``, ``"conv1d"`` or ``"t5"`` for a recognised MLP class, else None."""
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


def is_bert_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a BERT layer holding the ``BertIntermediate``/``BertOutput`` pair."""
    inter = getattr(module, "intermediate", None)
    out = getattr(module, "output", None)
    return (
        type(inter).__name__ == "BertIntermediate"
        and type(out).__name__ == "BertOutput"
        and hasattr(module, "feed_forward_chunk")
    )


#: Family -> the :mod:`ffnlab.interop.hf_modules` wrapper that replaces such a module.
WRAPPERS = {
    "gated": HFGatedMLP,
    "packed": HFPackedGatedMLP,
    "conv1d": HFConv1DMLP,
    "t5": HFT5Dense,
}


def describe(act: object) -> str:
    """A short name of an activation object for messages."""
    return type(act).__name__ if isinstance(act, nn.Module) else repr(act)
