"""The MoE bench (ffnlab.bench.moe) and `ffnlab bench --variants moe:swiglu:4x2`: config
checks, one tiny run (the flag handling, --moe alias included, is in tests/commands/test_bench.py)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from ffnlab.bench.moe import MoEBenchConfig, moe_flops_per_token, parse_moe_shape
from ffnlab.cli import main
from ffnlab.errors import UsageError


def test_parse_shape_and_config_checks():
    assert parse_moe_shape("8x2") == (8, 2) and parse_moe_shape("16X1") == (16, 1)
    for bad in ("8", "8x", "2x3", "0x0", "axb"):
        with pytest.raises(UsageError):
            parse_moe_shape(bad)
    with pytest.raises(UsageError, match="top_k=3 exceeds n_experts=2"):
        MoEBenchConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="unknown MoE provider"):
        MoEBenchConfig(providers=("fussed",))
    with pytest.raises(ValueError, match="unknown router"):
        MoEBenchConfig(router="softmaxx")
    # swiglu: 3 products of 2·dim·hidden per active expert, plus the router's 2·dim·E
    cfg = MoEBenchConfig(n_experts=8, top_k=2, dim=4, hidden=6)
    assert moe_flops_per_token(cfg) == 2 * 3 * 2 * 4 * 6 + 2 * 4 * 8


def test_bench_moe_command(tmp_path):
    argv = ["bench", "--variants", "moe:swiglu:4x2", "--dim", "16", "--hidden", "24", "--tokens", "33",
            "--repeats", "2", "--warmup", "1", "--out", str(tmp_path), "--json"]  # fmt: skip
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    result = json.loads(buf.getvalue())
    assert json.loads((tmp_path / "moe_bench.json").read_text()) == result
    assert result["config"]["n_experts"] == 4 and result["config"]["variant"] == "swiglu"
    rows = {r["provider"]: r for r in result["rows"]}
    assert set(rows) == {"reference", "fused"}
    assert rows["fused"]["grouped_mm"] is True  # float32, 16 and 24 columns: aligned
    assert rows["fused"]["max_abs_diff"] < 1e-5
    assert all(r["tokens_per_s"] > 0 and 0 < r["fwd_bwd_matmul_share"] for r in rows.values())
    assert "| fused |" in (tmp_path / "moe_bench.md").read_text()
    assert result["machine"]["torch"] == torch.__version__


def test_bench_moe_usage_errors(capsys):
    assert main(["bench", "--moe", "4y2"]) == 2
    assert main(["bench", "--moe", "4x2", "--variants", "relu,gelu"]) == 2
    assert "--moe times one variant" in capsys.readouterr().err
