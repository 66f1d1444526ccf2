"""Backend choice (``plan``, ``backend_unsupported_reasons``) and FeedForward on every backend.

The engines inside the fused op and their reasons are tested in ``test_engines.py``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import ffnlab
from ffnlab import FeedForward
from ffnlab.ops import dispatch, engines

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _runnable_backends() -> list[str]:
    probe = torch.zeros(1, 4)
    return [b for b in ("reference", "fused", "triton")
            if not dispatch.backend_unsupported_reasons(b, probe)]  # fmt: skip


# --- constraints ---------------------------------------------------------------------------


def test_reference_and_fused_run_anywhere():
    for x in (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64)):
        assert dispatch.backend_unsupported_reasons("reference", x) == []
        assert dispatch.backend_unsupported_reasons("fused", x, activation="mish") == []
        assert dispatch.backend_unsupported_reasons("auto", x, activation="mish") == []


def test_triton_constraints_are_sentences(monkeypatch):
    x = torch.zeros(2, 3)
    why = dispatch.backend_unsupported_reasons
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET=1" in " ".join(why("triton", x))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "torch.int32" in " ".join(why("triton", x.int()))
    assert "mish" in " ".join(why("triton", x, activation="mish"))
    assert "meta" in " ".join(why("triton", x.to("meta")))
    monkeypatch.setattr(engines, "triton_import_error", lambda: "triton cannot be imported (x)")
    assert why("triton", x) == ["triton cannot be imported (x)"]


def test_forcing_a_backend_that_cannot_run_raises_with_the_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 8)
    with pytest.raises(NotImplementedError, match="backend='triton' cannot run here: .*CPU"):
        dispatch.plan("triton", x)
    ffn = FeedForward(8, 16, "swiglu", backend="triton")
    with pytest.raises(NotImplementedError, match="TRITON_INTERPRET"):
        ffn(x)
    with pytest.raises(ValueError, match="did you mean 'fused'"):
        dispatch.plan("fuse", x)
    with pytest.raises(ValueError, match="did you mean 'fused'"):
        dispatch.backend_unsupported_reasons("fuse", x)


def test_auto_never_picks_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.plan("auto", torch.zeros(2, 3)) == ("fused", "aten")
    assert dispatch.plan("auto", torch.zeros(2, 3, dtype=torch.float64)) == ("fused", "aten")
    assert dispatch.plan("fused", torch.zeros(2, 3)) == ("fused", "aten")
    # backend="triton" is the fused op with the Triton engine named: one label, "fused"
    assert dispatch.plan("triton", torch.zeros(2, 3, dtype=torch.float64)) == ("fused", "triton")
    assert dispatch.plan("reference", torch.zeros(2, 3)) == ("reference", None)


def test_auto_falls_back_on_cuda_when_triton_cannot_run(monkeypatch):
    # A meta tensor on "cuda" is not needed: the rule is checked with a stubbed reason.
    monkeypatch.setattr(engines, "triton_import_error", lambda: "triton cannot be imported")
    assert dispatch.plan("auto", torch.zeros(2, 3))[0] == "fused"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_picks_triton_on_cuda():
    x = torch.zeros(2, 3, device="cuda")
    want = "aten" if dispatch.backend_unsupported_reasons("triton", x) else "triton"
    # auto and fused are the same code on CUDA: the same label, the engine naming Triton
    assert dispatch.plan("auto", x) == dispatch.plan("fused", x) == ("fused", want)
    assert dispatch.plan("auto", x, activation="mish") == ("fused", "aten")


def test_importing_does_not_import_triton_and_auto_on_cpu_skips_the_kernels():
    # Running the op may import triton anyway: torch imports torch._dynamo on the first call
    # of any torch.library custom op, and torch._dynamo probes triton. ffnlab's own kernels
    # module must stay unloaded on CPU, even with TRITON_INTERPRET=1.
    code = (
        "import sys, torch, ffnlab\n"
        "print('triton' in sys.modules)\n"
        "f = ffnlab.FeedForward(8, variant='swiglu')\n"
        "x = torch.randn(3, 8, requires_grad=True)\n"
        "f(x).sum().backward()\n"
        "print('ffnlab.ops.engine_triton' in sys.modules)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120, check=True)  # fmt: skip
    assert out.stdout.split() == ["False", "False"]


# --- FeedForward on every backend that can run here -----------------------------------------

CASES = [
    ("swiglu", {}),
    ("swiglu", {"learnable_beta": "per_unit"}),
    ("swish", {"learnable_beta": True, "beta": 0.8}),
    ("geglu", {"bias": True}),
    ("glu", {}),
    ("bilinear", {}),
    ("relu", {}),
    ("gelu", {}),
    ("relu2", {}),
    ("sigmoid", {}),
]


@pytest.mark.parametrize("backend", _runnable_backends())
@pytest.mark.parametrize("recompute", dispatch.RECOMPUTE_MODES)
@pytest.mark.parametrize("variant,kw", CASES, ids=[f"{v}-{'-'.join(k)}" for v, k in CASES])
def test_feedforward_backends_match_reference(backend, recompute, variant, kw, match_reference):
    torch.manual_seed(0)
    ffn = FeedForward(12, 20, variant, backend=backend, recompute=recompute, **kw)
    with torch.no_grad():
        if ffn.beta is not None:  # distinct values per unit, so a mixed-up beta shows
            ffn.beta.copy_(torch.linspace(0.5, 1.5, ffn.beta.numel()).reshape(ffn.beta.shape))
    match_reference(ffn, torch.randn(2, 9, 12), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_autocast_bfloat16(backend):
    ffn = FeedForward(16, 24, "swiglu", backend=backend)
    ref = FeedForward(16, 24, "swiglu", backend="reference")
    ref.load_state_dict(ffn.state_dict())
    x = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yr = ffn(x), ref(x)
    assert y.dtype == yr.dtype == torch.bfloat16
    torch.testing.assert_close(y, yr, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert ffn.w1.weight.grad.dtype == torch.float32


def test_bench_setup_runs_on_fused():
    # The configuration ffnlab bench measures: SwiGLU, dim 512-like shapes, every mode.
    for mode in dispatch.RECOMPUTE_MODES:
        ffn = FeedForward(64, variant="swiglu", backend="fused", recompute=mode)
        x = torch.randn(4, 16, 64, requires_grad=True)
        ffn(x).sum().backward()
        assert x.grad is not None and all(p.grad is not None for p in ffn.parameters())


def test_variants_all_have_a_triton_kernel():
    for v in ffnlab.VARIANTS.values():
        assert v.activation in engines.TRITON.activations


def test_choose_runs_small_work_plainly_and_keeps_forced_backends():
    n = dispatch.FUSED_MIN_ELEMENTS
    assert dispatch.choose("auto", 1, 1408) == "reference"  # a decoding step
    assert dispatch.choose("auto", n // 64 - 1, 64) == "reference"
    assert dispatch.choose("auto", n // 64, 64) == "fused"  # from the threshold on
    assert dispatch.choose("auto", 4096, 1408) == "fused"
    for forced in ("fused", "triton", "reference"):
        assert dispatch.choose(forced, 1, 8) == forced
        assert dispatch.choose(forced, 10**6, 10**4) == forced
        assert dispatch.choose(forced, 10**6, 10**4, grad=False) == forced
    # without gradients a CPU keeps the plain computation at every size (nothing to save for
    # backward); elsewhere the size decides
    assert dispatch.choose("auto", 4096, 1408, grad=False) == "reference"
    assert dispatch.choose("auto", 4096, 1408, grad=False, device_type="cuda") == "fused"
    assert dispatch.choose("auto", 1, 1408, grad=False, device_type="cuda") == "reference"


def test_device_type_is_the_tensors_device_type():
    assert dispatch.device_type(torch.zeros(1)) == "cpu"
    assert dispatch.device_type(torch.zeros(1, device="meta")) == "meta"
