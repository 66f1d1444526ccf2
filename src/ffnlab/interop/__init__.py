"""Interoperability with other libraries: Hugging Face transformers.

:mod:`.hf` patches a model's MLPs (:func:`patch_hf`, :func:`unpatch_hf`), :mod:`.convert`
builds a standalone FeedForward from one (:func:`from_hf`), :mod:`.recognise` knows the
module families and activations, :mod:`.hf_modules` holds the replacement modules;
:mod:`.recognise_moe` and :mod:`.hf_moe` do the same for mixture-of-experts blocks;
:mod:`.hf_experts` registers ffnlab's grouped experts in transformers' experts interface
(:func:`register_hf`, the one place that imports transformers, inside the call).
transformers is optional (the ``hf`` extra) and never imported at import time: the functions
work on model instances the caller built.
"""

from .convert import from_hf
from .hf import HF_ACTIVATIONS, hf_activation, patch_hf, unpatch_hf
from .hf_experts import register_hf

__all__ = ["HF_ACTIVATIONS", "from_hf", "hf_activation", "patch_hf", "register_hf", "unpatch_hf"]
