"""benchmarks/hf_speed.py at tiny sizes: it runs, prints the table and writes the JSON the
docs describe (the timings at these sizes mean nothing)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hf_speed():
    spec = importlib.util.spec_from_file_location("hf_speed", ROOT / "benchmarks" / "hf_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hf_speed", module)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["hf_speed"])
    return sys.modules["hf_speed"]


def test_quick_run_writes_ratios_for_both_models(hf_speed, tmp_path, capsys):
    assert hf_speed.main(["--quick", "--out", str(tmp_path), "--threads", "1"]) == 0
    (path,) = tmp_path.glob("hf-speed-*.json")
    result = json.loads(path.read_text())
    assert result["optimizer_step"] is False
    assert {"cpu", "torch", "date"} <= result["machine"].keys()
    assert result["settings"]["new_tokens"] == hf_speed.QUICK.new_tokens
    assert [m["model"] for m in result["models"]] == ["dense", "moe"]
    for m in result["models"]:
        assert m["patched_modules"] == 2 and m["failed"] == {}
        assert m["same_greedy_tokens"] is True and m["logits_max_abs_diff"] < 1e-4
        assert [r["phase"] for r in m["rows"]] == list(hf_speed.PHASES)
        for r in m["rows"]:
            assert r["plain_s"] > 0 and r["patched_s"] > 0
            assert r["ratio_q1"] <= r["ratio"] <= r["ratio_q3"]
            assert r["noise_ratio"] > 0
    out = capsys.readouterr().out
    assert "patched/plain" in out and "saved" in out and out.count("mlp call") == 2


def test_config_rejects_bad_sizes(hf_speed):
    with pytest.raises(ValueError, match="new_tokens"):
        hf_speed.SpeedConfig(new_tokens=0)
    with pytest.raises(ValueError, match="prefill"):
        hf_speed.SpeedConfig(prefill=(4,))
    with pytest.raises(ValueError, match="threads"):
        hf_speed.SpeedConfig(threads=0)
