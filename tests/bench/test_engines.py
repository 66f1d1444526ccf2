"""What the bench asks the ops layer: engines and reasons."""

import torch

from ffnlab.bench.engines import fused_engine, picked_engine, unsupported_reason
from ffnlab.ops import engines


def test_fused_elementwise_row_uses_the_engine_the_op_picks(monkeypatch):
    from dataclasses import replace

    h1 = torch.zeros(8, 16)
    assert picked_engine(h1, h1, "swish", "forward") is engines.ATEN
    low = replace(engines.INDUCTOR, min_elements=128)
    monkeypatch.setitem(engines.ENGINES, "inductor", low)
    assert picked_engine(h1, h1, "swish", "forward") is low
    # per direction, as the fused op: gated gelu's forward stays on ATen
    assert picked_engine(h1, h1, "gelu", "forward") is engines.ATEN
    assert picked_engine(h1, h1, "gelu", "backward") is low


def test_engines_are_named_in_the_bench_vocabulary():
    x = torch.zeros(4, 16)
    assert fused_engine("fused", x, activation="swish", hidden=40, gated=True) == "aten"
    assert fused_engine("reference", x) is None


def test_unsupported_reason():
    x = torch.zeros(2, 16)
    assert unsupported_reason("fused", x) is None
    assert unsupported_reason("triton", x.to(torch.int32)) is not None
