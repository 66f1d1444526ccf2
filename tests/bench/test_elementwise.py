"""What each elementwise row times."""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ffnlab.bench import elementwise as E
from ffnlab.ops import engines


@pytest.mark.parametrize("engine_name", ["aten", "inductor", "triton"])
def test_engine_run_computes_the_middle(engine_name):
    # The same run times the Triton kernels on CUDA; here they run in the interpreter.
    if engine_name == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            pytest.skip("needs TRITON_INTERPRET=1 on a machine without CUDA")
    run = E.EngineRun(engines.ENGINES[engine_name], "swish")
    h1, h3, g = (torch.randn(6, 40) for _ in range(3))
    inp = SimpleNamespace(h1=h1.requires_grad_(), h3=h3.requires_grad_(), g=g)
    m = run.fwd(inp)
    m = m[0] if isinstance(m, tuple) else m
    torch.testing.assert_close(m, F.silu(h1.detach()) * h3.detach())
    run.fwd_bwd(inp)  # runs without autograd: the engine's own backward
    assert h1.grad is None


def test_private_inputs_protect_shared_tensors():
    # A run whose backward overwrites its inputs (as Liger's does) gets its own copy.
    class Mutating(E.ElementwiseRun):
        def fwd_bwd(self, inp):
            inp.h1.data.fill_(7.0)

    shared = E.HiddenInputs(torch.ones(3, 4, requires_grad=True), None, torch.ones(3, 4))
    run = E.PrivateInputs(Mutating(lambda h1, h3: h1 * 2))
    run.fwd_bwd(shared)
    assert torch.equal(shared.h1, torch.ones(3, 4))
    assert torch.equal(run.fwd(shared), torch.full((3, 4), 14.0))  # runs on the copy


def test_elementwise_provider_names():
    assert E.elementwise_provider("fused:full") == "fused"
    assert E.elementwise_provider("reference") == "reference"
    assert E.elementwise_provider("matmul") is None
