"""What the bench asks the ops layer: engines and reasons."""

import torch

from ffnlab.bench.engines import fused_engine, fused_engine_module, unsupported_reason


def test_fused_elementwise_row_uses_the_engine_the_op_picks(monkeypatch):
    from ffnlab.ops import cpu, inductor_kernels

    h1 = torch.zeros(8, 16)
    assert fused_engine_module(h1) is cpu
    monkeypatch.setattr(inductor_kernels, "MIN_ELEMENTS", 128)
    assert fused_engine_module(h1) is inductor_kernels


def test_engines_are_named_in_the_bench_vocabulary():
    x = torch.zeros(4, 16)
    assert fused_engine("fused", x, activation="swish", hidden=40, gated=True) == "aten"
    assert fused_engine("reference", x) is None


def test_unsupported_reason():
    x = torch.zeros(2, 16)
    assert unsupported_reason("fused", x) is None
    assert unsupported_reason("triton", x.to(torch.int32)) is not None
