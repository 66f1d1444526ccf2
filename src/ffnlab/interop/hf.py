"""Hugging Face transformers interop (not implemented yet). transformers is imported lazily."""

from __future__ import annotations


def patch_hf(model, backend: str = "auto") -> int:
    raise NotImplementedError("ffnlab.patch_hf is not implemented yet")


def unpatch_hf(model) -> int:
    raise NotImplementedError("ffnlab.unpatch_hf is not implemented yet")


def feed_forward_from_hf(module, **kwargs):
    raise NotImplementedError("FeedForward.from_hf is not implemented yet")
