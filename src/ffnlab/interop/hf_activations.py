"""The ffnlab activation that a transformers activation object computes, by the object's class.

An MLP of transformers calls an activation object built from the config (``ACT2FN[name]``: a
module of ``transformers.activations`` or ``torch.nn``, sometimes a plain function such as
``F.silu``). :func:`hf_activation` names the ffnlab activation with the same numbers where
ffnlab has it under that name. Every other activation (``gelu_10``, ``mish``, ``xielu``,
``prelu`` ...) runs as a callable: the wrapper calls the model's own object, so learnable
activations keep their parameters and state-dict keys. Either way :mod:`.verify` checks the
replacement against the module, so a wrong entry here can only leave a module unpatched, never
change a model's outputs. transformers is never imported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..activations import ACTIVATIONS

__all__ = ["HF_ACTIVATIONS", "describe", "hf_activation", "hf_activation_options"]

#: Class name of a transformers (or torch.nn) activation module -> ffnlab activation.
#: ``FastGELUActivation`` computes 0.5x(1+tanh(0.7978845608·x(1+0.044715x²))), the same
#: function as gelu_tanh written differently (they differ by float rounding only).
#: Names ffnlab does not have at run time (its table decides) fall back to the callable, and
#: so do activations with learnable parameters (``XIELUActivation``, ``PReLU``): the model's
#: own object keeps its parameters.
HF_ACTIVATIONS: dict[str, str] = {
    "SiLUActivation": "swish",  # "silu"
    "SiLU": "swish",  # "swish" (torch.nn.SiLU)
    "GELUActivation": "gelu",  # "gelu", "gelu_python"
    "NewGELUActivation": "gelu_tanh",  # "gelu_new" (GPT-2)
    "GELUTanh": "gelu_tanh",  # "gelu_pytorch_tanh" (Gemma), "gelu_python_tanh"
    "PytorchGELUTanh": "gelu_tanh",  # older transformers' name of the same
    "FastGELUActivation": "gelu_tanh",  # "gelu_fast"
    "QuickGELUActivation": "quick_gelu",  # "quick_gelu" (CLIP)
    "AccurateGELUActivation": "gelu_accurate",  # "gelu_accurate"
    "ClippedGELUActivation": "gelu_10",  # "gelu_10" (when it clips at -10, 10)
    "LeakyReLU": "leaky_relu",  # torch.nn.LeakyReLU, its negative_slope as the option
    "ReLU": "relu",
    "ReLUSquaredActivation": "relu2",  # "relu2"
    "ReLU6": "relu6",
    "Hardswish": "hardswish",
    "MishActivation": "mish",
    "LaplaceActivation": "laplace",  # its forward's defaults mu = 0.707107, sigma = 0.282095
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "LinearActivation": "identity",  # "linear"
}

_FUNCTIONS = {F.silu: "swish", F.relu: "relu", torch.relu: "relu", torch.tanh: "tanh",
              torch.sigmoid: "sigmoid", F.gelu: "gelu"}  # fmt: skip


def hf_activation(act: object) -> str | None:
    """The ffnlab activation name computed by activation object ``act``, or None.

    None means "no exact ffnlab name": the object runs as a callable instead. Only exact
    classes of ``transformers.*`` and ``torch.nn`` are named (a subclass may compute anything),
    and only when ffnlab's activation table has the name without learnable parameters. Options
    (leaky ReLU's slope) come from :func:`hf_activation_options`.
    """
    name: str | None = None
    if isinstance(act, nn.Module):
        if not type(act).__module__.startswith(("transformers.", "torch.nn.")):
            return None
        cls = type(act).__name__
        if cls == "GELU":  # torch.nn.GELU
            name = "gelu_tanh" if act.approximate == "tanh" else "gelu"
        elif cls == "ClippedGELUActivation" and (act.min, act.max) != (-10, 10):
            return None
        else:
            name = HF_ACTIVATIONS.get(cls)
    else:
        try:
            name = _FUNCTIONS.get(act)
        except TypeError:  # unhashable
            return None
    if name not in ACTIVATIONS or ACTIVATIONS[name].n_params or ACTIVATIONS[name].value_fn:
        return None
    return name


def hf_activation_options(act: object) -> tuple[float, ...]:
    """The option values (:attr:`ffnlab.activations.Activation.options` order) of the ffnlab
    activation :func:`hf_activation` names for ``act``: ``(slope,)`` for ``nn.LeakyReLU``,
    ``()`` otherwise."""
    if hf_activation(act) == "leaky_relu":
        return (float(act.negative_slope),)
    return ()


def describe(act: object) -> str:
    """A short name of an activation object for messages."""
    return type(act).__name__ if isinstance(act, nn.Module) else repr(act)
