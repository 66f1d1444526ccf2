"""Golden outputs: `ffnlab compare --preset smoke`, `ffnlab variants --json` and a small
`ffnlab bench` give the numbers recorded in tests/golden/ (timings aside).

The fixtures were written by the commands themselves before the package was restructured into
its layers; a refactor that changes any of these numbers changed behaviour.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffnlab.cli import main
from ffnlab.lab.config import PRESETS

GOLDEN = Path(__file__).parent / "golden"


def _load(name: str):
    return json.loads((GOLDEN / name).read_text())


@pytest.mark.parametrize(
    ("argv", "fixture"),
    [
        (["variants", "--json"], "variants_4096.json"),
        (["variants", "--dim", "96", "--multiple-of", "32", "--json"], "variants_96.json"),
    ],
)
def test_variants_json_is_unchanged(argv, fixture, capsys):
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == _load(fixture)


# The recorded smoke run is compared within float32 rounding of the whole run, not bit for bit.
# Bitwise repeatability holds on one machine (tests/test_determinism.py checks the same command
# twice and the worker pool against one process) but not across processors: AVX2 and AVX-512
# builds of the matrix products sum in different orders. Each float32 result then differs by a
# few units of eps = 1.19e-7; a reduction of length K (K <= 256 here) by up to ~sqrt(K) of them,
# 16 * 1.19e-7 ~ 2e-6, and 20 optimizer steps carry such differences forward (Adam normalises
# each update, so they do not compound into the loss beyond a small factor). A budget of 100 eps (1.2e-5) relative per value covers that with
# room; measured: 2e-8 relative at step 10 between an AMD EPYC (AVX2, where the fixture was
# written) and an Intel Xeon (AVX-512). A behaviour change (another initialisation, batch order,
# learning rate or variant) moves bits per byte by 1e-3 or more, 100x outside the tolerance.
CURVE_RTOL = 100 * 1.19e-7
# Sizes and bytes saved for backward are exact on every machine; the dead-unit share may move
# by one unit (a unit whose largest activation sits at the threshold, rounded either way).
EXACT = ("hidden", "params", "saved_bytes_per_token")
SMOKE_LAYERS = PRESETS["smoke"].model["n_layers"]


@pytest.mark.slow
def test_compare_smoke_numbers_are_unchanged(tmp_path):
    assert main(["compare", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "results.json").read_text())
    want = _load("compare_smoke.json")
    assert [v["name"] for v in got["variants"]] == list(want)
    for v in got["variants"]:
        w = want[v["name"]]
        assert {k: v[k] for k in EXACT} == {k: w[k] for k in EXACT}, v["name"]
        assert [s for s, _ in v["curve"]] == [s for s, _ in w["curve"]], v["name"]
        for (step, got_bpb), (_, want_bpb) in zip(v["curve"], w["curve"], strict=True):
            assert got_bpb == pytest.approx(want_bpb, rel=CURVE_RTOL), (v["name"], step)
        assert v["val_bpb_mean"] == pytest.approx(w["val_bpb_mean"], rel=CURVE_RTOL), v["name"]
        units = v["hidden"] * SMOKE_LAYERS
        assert abs(v["dead_fraction"] - w["dead_fraction"]) <= 1 / units + 1e-12, v["name"]


def test_small_bench_numbers_are_unchanged(tmp_path):
    argv = ["bench", "--variants", "relu,swiglu", "--dim", "64", "--tokens", "128",
            "--repeats", "2", "--warmup", "1", "--out", str(tmp_path), "--json"]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    want = _load("bench_small.json")
    got = {f"{r['variant']}|{r['provider']}": {k: r.get(k) for k in next(iter(want.values()))}
           for r in rows}
    # Rows that time something (status ok) keep their numbers; skipped rows may be dropped or
    # reworded, as long as they are not turned into measurements of something else.
    for key, w in want.items():
        if w["status"] == "ok":
            assert got.get(key) == w, key
