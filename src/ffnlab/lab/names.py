"""How the lab names what it compares, as plain strings (no torch: the statistics, the claims
and the report read these names from results.json).

* A lab variant is a registry name (``swiglu``) or a mixture of experts of one,
  ``moe:<variant>:<E>x<k>`` (parsed and built in :mod:`ffnlab.lab.train.variant`).
* :data:`BASELINE` is what every variant is compared against; :data:`GATED_TWINS` pairs each
  gated variant with the plain variant of the same activation (equal FFN parameters when the
  gated hidden size is 2/3 of the plain one).
"""

from __future__ import annotations

__all__ = ["MOE_PREFIX", "BASELINE", "GATED_TWINS", "LABEL", "is_moe", "moe_base", "file_stem",
           "label"]

MOE_PREFIX = "moe"  # ffnlab.moe_spelling.MOE_PREFIX, spelt here too: this module imports no torch
BASELINE = "relu"

# gated variant -> the plain variant with the same activation
GATED_TWINS = {"reglu": "relu", "geglu": "gelu", "geglu_tanh": "gelu_tanh", "swiglu": "swish",
               "glu": "sigmoid"}

LABEL = {"relu": "ReLU", "swish": "Swish", "gelu": "GELU", "gelu_tanh": "GELU-tanh",
         "sigmoid": "sigmoid", "tanh": "tanh", "geglu": "GeGLU", "swiglu": "SwiGLU",
         "reglu": "ReGLU", "glu": "GLU", "geglu_tanh": "GeGLU-tanh"}


def is_moe(name: object) -> bool:
    """Whether a (canonical) lab variant name is a mixture of experts."""
    return isinstance(name, str) and name.startswith(MOE_PREFIX + ":")


def moe_base(name: str) -> str:
    """The dense variant of a canonical MoE name (``moe:swiglu:8x2`` -> ``swiglu``); a dense
    name is its own base."""
    return name.split(":")[1] if is_moe(name) else name


def file_stem(name: str) -> str:
    """A file-name-safe form of a canonical name: ``moe:swiglu:8x2`` -> ``moe-swiglu-8x2``
    (registry names have no colons and are kept as they are)."""
    return name.replace(":", "-")


def label(name: str) -> str:
    """A variant's name as the sources write it (``swiglu`` -> ``SwiGLU``)."""
    return LABEL.get(name, name)
