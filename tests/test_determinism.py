"""Same seed, same inputs -> bitwise the same numbers on CPU, within a process and across processes.

GPU runs are not covered here (see docs/robustness.md for where they are not deterministic).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from ffnlab import FeedForward
from ffnlab.cli import main
from ffnlab.ops import dispatch

VARIANTS = ["relu", "gelu_tanh", "swish", "swiglu", "geglu", "relu2"]


def _backends() -> list[str]:
    probe = torch.zeros(1, 1)
    names = [b for b in ("reference", "fused") if not dispatch.backend_unsupported_reasons(b, probe)]
    if os.environ.get("TRITON_INTERPRET") == "1" and not dispatch.backend_unsupported_reasons(
        "triton", probe
    ):
        names.append("triton")
    return names


def digest(backend: str, variant: str, *, seed: int = 1234) -> str:
    """sha256 of the output and every gradient of one forward+backward (odd shapes, learnable beta)."""
    torch.manual_seed(seed)
    learnable = "scalar" if variant == "swish" else False
    ffn = FeedForward(13, 29, variant, backend=backend, bias=True, learnable_beta=learnable)
    x = torch.randn(3, 7, 13, requires_grad=True)
    g = torch.randn(3, 7, 13)
    y = ffn(x)
    y.backward(g)
    h = hashlib.sha256()
    for t in (y, x.grad, *(p.grad for p in ffn.parameters())):
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("backend", _backends())
def test_feed_forward_is_bitwise_repeatable(backend):
    first = {v: digest(backend, v) for v in VARIANTS}
    again = {v: digest(backend, v) for v in VARIANTS}
    assert first == again
    assert len(set(first.values())) == len(VARIANTS)  # the digests do see the numbers


def test_feed_forward_is_bitwise_repeatable_across_processes():
    """A fresh interpreter (new allocator, new thread pool) gives the same bits."""
    backends = _backends()
    here = {(b, v): digest(b, v) for b in backends for v in VARIANTS}
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import test_determinism as t; "
        "print(json.dumps({f'{b}/{v}': t.digest(b, v) for b in t._backends() for v in t.VARIANTS}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)],
                          capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout)
    assert there == {f"{b}/{v}": d for (b, v), d in here.items()}


TIMING = {"tokens_per_s", "wall_s", "ffn_ms", "act_ns_per_element"}


def _numbers(results: dict) -> list:
    clean = lambda d: {k: v for k, v in d.items() if k not in TIMING}
    return [{**clean(v), "runs": [clean(r) for r in v["runs"]]} for v in results["variants"]]


@pytest.mark.slow
def test_compare_twice_gives_identical_results(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("Determinism: the same seed and the same bytes give the same model. " * 40)

    def once(out: str) -> dict:
        argv = ["compare", "--preset", "smoke", "--steps", "4", "--variants", "relu,swiglu",
                "--seeds", "2", "--backend", "reference", "--data", str(data),
                "--out", str(tmp_path / out)]
        assert main(argv) == 0
        return json.loads((tmp_path / out / "results.json").read_text())

    a, b = once("a"), once("b")
    assert _numbers(a) == _numbers(b)
    assert a["corpus"] == b["corpus"]
    assert [r["val_bpb"] for v in a["variants"] for r in v["runs"]] != [None] * 4
