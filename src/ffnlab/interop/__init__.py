"""Interoperability with other libraries: Hugging Face transformers (:mod:`.hf`).

transformers is optional (the ``hf`` extra) and never imported by ffnlab: the functions work
on model instances the caller built.
"""

from .hf import HF_ACTIVATIONS, feed_forward_from_hf, hf_activation, patch_hf, unpatch_hf

__all__ = ["HF_ACTIVATIONS", "feed_forward_from_hf", "hf_activation", "patch_hf", "unpatch_hf"]
