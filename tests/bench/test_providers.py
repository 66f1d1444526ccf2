"""What each FFN row times."""

import pytest
import torch

from ffnlab.bench import providers as P
from ffnlab.errors import UsageError


def test_matmul_floor_matches_reference_flop_count():
    # The floor's forward is the reference's three products: same output for the same hidden.
    setup = P.make_setup("swiglu", 8, 24, dtype=torch.float64, device=torch.device("cpu"), seed=1)
    inp = P.make_inputs(setup, 5, seed=1)
    floor = P.build_run("matmul", setup)
    a = floor.hidden_tensors(inp)[0]
    assert torch.equal(floor.fwd(inp), a @ setup.module.w2.weight.detach().t())
    floor.fwd_bwd(inp)  # runs, gated and plain
    P.build_run("matmul", P.make_setup("relu", 8, 24, dtype=torch.float64,
                                       device=torch.device("cpu"), seed=1)).fwd_bwd(inp)


def test_parse_providers():
    assert P.parse_providers(None) == list(P.DEFAULT_PROVIDERS)
    assert "compile" not in P.DEFAULT_PROVIDERS
    assert P.parse_providers("all") == list(P.PROVIDERS)
    assert P.parse_providers("matmul,fused,matmul") == [
        "matmul", "fused:none", "fused:activation", "fused:full"]
    with pytest.raises(UsageError, match="did you mean 'reference'"):
        P.parse_providers("refrence")
    with pytest.raises(UsageError, match="names no provider"):
        P.parse_providers(",")
