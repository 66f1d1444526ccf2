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


@pytest.mark.slow
def test_compare_smoke_numbers_are_unchanged(tmp_path):
    assert main(["compare", "--preset", "smoke", "--out", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "results.json").read_text())
    want = _load("compare_smoke.json")
    assert [v["name"] for v in got["variants"]] == list(want)
    for v in got["variants"]:
        w = want[v["name"]]
        # CPU training is bitwise repeatable (tests/test_determinism.py), so equality is exact.
        assert {k: v[k] for k in w} == w, v["name"]


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
