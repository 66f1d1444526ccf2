"""Tiny transformers mixture-of-experts models for the interop tests that share them."""

from __future__ import annotations

import warnings

import torch


def build(families, family: str, dtype=torch.float64, **kw):
    """``(model, inputs)``: the tiny model of ``family`` from ``families``
    (``scripts/interop_families.py``), with transformers' ``eager`` experts in float64 (its
    ``grouped_mm`` has no float64 kernel on the CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = families.build_model(family, dtype=dtype, **kw)
    if dtype == torch.float64:
        model.set_experts_implementation("eager")
    return model, families.inputs_for(model)


def grads(model, inputs, families) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of the mean squared logits."""
    model.zero_grad(set_to_none=True)
    families.logits(model, inputs).pow(2).mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
