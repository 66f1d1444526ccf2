"""Side measurements of the lab: timings, bytes saved for backward, memory estimates."""

import torch

from ffnlab.lab.measure.memory import estimate_memory_bytes, saved_bytes_per_token
from ffnlab.lab.measure.timing import activation_timings, ffn_timings
from ffnlab.lab.train.model import ModelConfig

MODEL = ModelConfig(dim=16, n_layers=1, n_heads=2, seq_len=16)


def test_measurements_side_by_side():
    variants = ["relu", "swiglu"]
    ms = ffn_timings(variants, MODEL, batch_size=2, reps=2, backend="reference")
    ns = activation_timings(variants, numel=4096, reps=2)
    assert set(ms) == set(ns) == set(variants)
    assert all(v > 0 for v in [*ms.values(), *ns.values()])
    plain = saved_bytes_per_token("relu", MODEL, batch_size=2, backend="reference")
    gated = saved_bytes_per_token("swiglu", MODEL, batch_size=2, backend="reference")
    # at least x (dim floats) is kept for the weight gradient of W1, per token and layer
    assert plain >= MODEL.dim * 4 and gated >= MODEL.dim * 4


def test_memory_estimate_grows_with_size():
    small = estimate_memory_bytes(MODEL, batch_size=4, dtype=torch.float32)
    big = estimate_memory_bytes(ModelConfig(dim=512, n_layers=8, n_heads=8, seq_len=512),
                                batch_size=64, dtype=torch.float32)
    assert 0 < small < big and big > 2**30
