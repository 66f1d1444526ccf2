import base64
import copy
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ffnlab import files
from ffnlab.errors import UsageError
from ffnlab.lab import advise
from ffnlab.lab import analysis as A
from ffnlab.lab import claims as C
from ffnlab.lab import report as R
from ffnlab.lab.plots import render_plots

FIXTURE = Path(__file__).parent / "fixtures" / "results_small.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results():
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def written(results, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return out, R.write_report(copy.deepcopy(results), out)


def _subset(results, names, seeds=None):
    r = copy.deepcopy(results)
    r["variants"] = [v for v in r["variants"] if v["name"] in names]
    if seeds is not None:
        for v in r["variants"]:
            v["runs"] = [run for run in v["runs"] if run["seed"] in seeds]
    return r


def test_files_written(written):
    out, paths = written
    names = [p.name for p in paths]
    assert names[:2] == ["report.md", "report.html"]
    assert {"learning_curves.png", "quality_vs_time.png", "final_bpb.png", "speed.png",
            "memory.png", "dead_units.png"} <= set(names)
    assert "forest.png" not in names  # an old results file: no comparisons to draw
    for p in paths:
        assert p.parent == out and p.stat().st_size > 0
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_markdown_content(written, results):
    md = (written[0] / "report.md").read_text()
    assert md.startswith("# ")
    assert "pydoc_data.topics" in md and results["corpus"]["sha256"] in md
    assert "torch 2.13.0" in md and "`cpu`" in md
    # One table row per variant, in rank order, best first.
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(results["variants"])
    assert rows[0].startswith("| 1 | `geglu` |") and rows[-1].startswith("| 8 | `relu` |")
    assert "| baseline |" in rows[-1]
    lo, hi = A.paired_difference(results, "gelu", "relu").ci95
    (gelu,) = [row for row in rows if "`gelu`" in row]
    assert f"| [{lo:+.4f}, {hi:+.4f}] |" in gelu and " * |" in gelu
    assert "Best variant: **geglu**" in md and "not distinguishable" in md
    for verdict in ("**supported**", "**inconclusive**"):
        assert verdict in md
    for stem in ("learning_curves", "quality_vs_time", "final_bpb", "speed", "memory",
                 "dead_units"):
        assert f"]({stem}.png)" in md
    assert "Missing" not in md  # complete run


def test_html_is_self_contained(written):
    out, paths = written
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page and "<link" not in page
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    pngs = {p.read_bytes() for p in paths if p.suffix == ".png"}
    assert len(uris) == len(pngs) == 6
    assert {base64.b64decode(u) for u in uris} == pngs
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    assert "<strong>geglu</strong>" in page  # inline markup rendered, not left as **
    assert '<strong class="ok">supported</strong>' in page
    assert '<strong class="maybe">inconclusive</strong>' in page


def test_html_escapes_text():
    blocks = [("h1", "a <b> & c"), ("table", ["x|y"], [["<i>"]])]
    page = R.render_html(blocks, {})
    assert "a &lt;b&gt; &amp; c" in page and "&lt;i&gt;" in page
    assert "x\\|y" in R.render_markdown(blocks)


def test_write_report_keeps_old_file_on_failure(results, tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        R.write_report(copy.deepcopy(results), tmp_path)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_report_temp_files_are_the_ones_remove_stale_temps_cleans(results, tmp_path,
                                                                  monkeypatch):
    seen = []
    real = files.os.replace

    def spy(src, dst):
        seen.append(Path(src))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", spy)
    R.write_report(copy.deepcopy(results), tmp_path)
    assert seen and all(p.parent == tmp_path for p in seen)
    assert all(p.match(".*.tmp") for p in seen)


def test_partial_run_says_what_is_missing(results, tmp_path):
    r = _subset(results, {"relu", "gelu", "swiglu"})
    r["status"] = "partial"
    r["config"]["variants"] = ["relu", "gelu", "swiglu", "geglu"]
    swiglu = next(v for v in r["variants"] if v["name"] == "swiglu")
    swiglu["runs"] = swiglu["runs"][:1]
    R.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "**partial**" in md and "## Missing or failed runs" in md
    assert "swiglu seed 1" in md and "swiglu seed 2" in md and "geglu seed 0" in md
    assert "Variants with no finished run: geglu" in md


def _diverged(results):
    r = _subset(results, {"relu", "gelu", "swish"}, seeds={0, 1})
    gelu = next(v for v in r["variants"] if v["name"] == "gelu")
    gelu["runs"][1].update(diverged=True, val_bpb=float("nan"))
    swish = next(v for v in r["variants"] if v["name"] == "swish")
    swish.update(val_bpb_mean=float("nan"), val_bpb_std=float("nan"), curve=[[0, float("nan")]])
    for run in swish["runs"]:
        run.update(diverged=True, val_bpb=float("nan"), curve=[])
    return r


def _empty_curves(results):
    r = _subset(results, {"relu", "swiglu"})
    for v in r["variants"]:
        v["curve"] = []
        for run in v["runs"]:
            run["curve"] = []
    return r


def _no_metrics(results):
    r = _subset(results, {"relu", "geglu"}, seeds={0})
    for v in r["variants"]:
        for k in ("tokens_per_s", "ffn_ms", "act_ns_per_element", "saved_bytes_per_token",
                  "dead_fraction", "params"):
            v.pop(k)
    r.pop("config")
    r.pop("corpus")
    return r


DEGENERATE = {
    "one_variant": lambda r: _subset(r, {"swiglu"}),
    "one_seed": lambda r: _subset(r, {"relu", "gelu", "swiglu"}, seeds={0}),
    "no_relu": lambda r: _subset(r, {"gelu", "geglu", "swiglu"}),
    "diverged": _diverged,
    "empty_curves": _empty_curves,
    "missing_metrics": _no_metrics,
    "no_variants": lambda r: {**_subset(r, set()), "status": "partial"},
}


@pytest.mark.parametrize("case", list(DEGENERATE))
def test_degenerate_results_do_not_crash(case, results, tmp_path):
    r = DEGENERATE[case](results)
    paths = R.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert paths[0].name == "report.md" and (tmp_path / "report.html").exists()
    assert "## The sources' claims, checked" in md
    if case == "no_relu":
        assert "no paired baseline" in md and "Best variant: **geglu**" in md
    if case == "one_variant":
        assert "only variant" in md
    if case == "one_seed":
        assert "one seed only" in md
        assert "| 2.4222 (1 seed) |" in md and "± 0.0000" not in md
    if case == "diverged":
        assert "diverged" in md and "gelu seed 1" in md and "swish seed 0" in md
    if case == "empty_curves":
        assert not (tmp_path / "learning_curves.png").exists()
        assert (tmp_path / "final_bpb.png").exists()
    if case == "no_variants":
        assert "none can be named best" in md


def test_not_a_results_dict(tmp_path):
    with pytest.raises(ValueError, match="variants"):
        R.write_report({"status": "complete"}, tmp_path)


def test_plots_skip_what_has_no_data(results):
    r = _subset(results, {"relu"})
    r["variants"][0].update(saved_bytes_per_token=None, dead_fraction=math.nan)
    stems = set(render_plots(r))
    assert "memory" not in stems and "dead_units" not in stems
    assert {"learning_curves", "final_bpb", "speed"} <= stems


_maybe = st.one_of(st.none(), st.just(float("nan")), st.floats(0.0, 1e5, allow_nan=False))


@st.composite
def _messy_results(draw):
    """Results dicts as an interrupted or failing run might leave them."""
    names = draw(st.lists(st.sampled_from(["relu", "gelu", "swish", "swiglu", "geglu", "reglu",
                                           "odd_name"]), unique=True, max_size=5))
    seeds = draw(st.lists(st.integers(0, 3), unique=True, max_size=3))
    variants = []
    for name in names:
        ran = draw(st.lists(st.sampled_from(seeds), unique=True)) if seeds else []
        runs = [{"seed": s, "val_bpb": draw(_maybe), "diverged": draw(st.booleans()),
                 "curve": draw(st.lists(st.tuples(st.integers(0, 50), _maybe), max_size=3))}
                for s in ran]
        v = {"name": name, "runs": runs, "curve": draw(st.lists(st.tuples(st.integers(0, 9),
                                                                          _maybe), max_size=3))}
        for key in ("val_bpb_mean", "val_bpb_std", "tokens_per_s", "ffn_ms",
                    "act_ns_per_element", "saved_bytes_per_token", "dead_fraction", "hidden"):
            if draw(st.booleans()):
                v[key] = draw(_maybe)
        variants.append(v)
    config = {"seeds": seeds, "model": {"dim": draw(st.sampled_from([None, 0, 32]))}}
    return {"status": draw(st.sampled_from(["complete", "partial"])), "config": config,
            "variants": variants, "missing": [{"variant": "geglu", "seed": 0}]}


@given(_messy_results())
def test_messy_results_never_crash_the_text(results):
    # The figures are covered above; here the analysis and both renderings, which is fast.
    blocks = R.build_blocks(results, {})
    md, page = R.render_markdown(blocks), R.render_html(blocks, {})
    assert "## Ranking" in md and "</html>" in page
    assert len(C.check_claims(results)) == len(C.ALL_CLAIMS)
    for priority in advise.PRIORITIES:  # a pick, or a one-line usage error; nothing else
        try:
            rec = advise.recommend(results, priority, 64)
        except UsageError as exc:
            assert "nothing to recommend" in str(exc)
        else:
            assert rec["pick"] in {v["name"] for v in results["variants"]}
