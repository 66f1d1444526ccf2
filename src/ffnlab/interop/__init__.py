"""Interoperability with other libraries: Hugging Face transformers.

:mod:`.hf` patches a model's MLPs (:func:`patch_hf`, :func:`unpatch_hf`), :mod:`.convert`
builds a standalone FeedForward from one (:func:`from_hf`), :mod:`.recognise` knows the
module families and activations, :mod:`.hf_modules` holds the replacement modules;
:mod:`.recognise_moe` and :mod:`.hf_moe` do the same for mixture-of-experts blocks.
transformers is optional (the ``hf`` extra) and never imported by ffnlab: the functions work
on model instances the caller built.
"""

from .convert import from_hf
from .hf import HF_ACTIVATIONS, hf_activation, patch_hf, unpatch_hf

__all__ = ["HF_ACTIVATIONS", "from_hf", "hf_activation", "patch_hf", "unpatch_hf"]
