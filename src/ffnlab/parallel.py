"""Tensor parallelism for FeedForward (not implemented yet)."""

from __future__ import annotations


def tensor_parallel(ffn, device_mesh):
    raise NotImplementedError("ffnlab.parallel.tensor_parallel is not implemented yet")


def tp_plan(prefix: str = "") -> dict:
    raise NotImplementedError("ffnlab.parallel.tp_plan is not implemented yet")
