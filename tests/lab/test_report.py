import base64
import copy
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ffnlab import files
from ffnlab.errors import UsageError
from ffnlab.lab import advise
from ffnlab.lab.claims import check as C
from ffnlab.lab.report import document as R
from ffnlab.lab.report import plots as P
from ffnlab.lab.report.plots import render_plots
from ffnlab.lab.stats import paired
from ffnlab.lab.stats.comparisons import Comparison

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
    lo, hi = paired.paired_difference(results, "gelu", "relu").ci95
    (gelu,) = [row for row in rows if "`gelu`" in row]
    assert f"| [{lo:+.4f}, {hi:+.4f}] |" in gelu and " * |" in gelu
    assert "Best variant: **geglu**" in md and "not distinguishable" in md
    for verdict in ("**supported**", "**inconclusive**"):
        assert verdict in md
    for stem in ("learning_curves", "quality_vs_time", "final_bpb", "speed", "memory",
                 "dead_units"):
        assert f"]({stem}.png)" in md
    assert "Missing" not in md  # complete run
    # An old results file: no comparisons (said so), the claims checked from the numbers.
    comparisons = md[md.index("## Comparisons"):md.index("## The sources' claims")]
    assert "no paired comparisons" in comparisons and "|" not in comparisons
    assert "**Speed: ReLU is fastest, Swish next, GELU slowest.**" in md


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
    assert "**partial**" in md and "## Runs missing, failed or not needed" in md
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


RES = 0.02

# (a, b, per-seed differences, verdict, whether the half-width reaches the resolution)
CASES = [
    ("swiglu", "relu", (-0.050, -0.052, -0.048), "a better", True),
    ("gelu", "relu", (0.10, 0.16, 0.13), "b better", False),  # decided, but wider than asked
    ("swish", "relu", (0.001, -0.002, 0.002), "equivalent", True),
    ("reglu", "relu", (-0.05, 0.05, 0.0), "unresolved", False),
    # Half-width 0.015 <= 0.02, yet [-0.005, +0.025] straddles 0 and reaches past +0.02.
    ("swiglu", "swish", (0.01 - 0.006038, 0.01, 0.01 + 0.006038), "unresolved", True),
    ("geglu", "gelu", (0.01,), "unresolved", False),  # one seed: no interval
]


def _with_comparisons(results, cases=CASES, resolution=RES):
    r = copy.deepcopy(results)
    r["schema_version"] = 2
    r["config"]["resolution_bpb"] = resolution
    r["comparisons"] = [files.json_safe(Comparison(a, b, tuple(range(len(d))), d,
                                                   resolution).to_dict())
                        for a, b, d, _, _ in cases]
    return r


def _section(md, title):
    start = md.index(f"## {title}")
    end = md.find("\n## ", start + 1)
    return md[start:end if end >= 0 else len(md)]


def _table_rows(section):
    """The comparisons table's body rows, as lists of cells."""
    return [[c.strip() for c in line.strip("|").split(" | ")]
            for line in section.splitlines() if line.startswith("| `")]


def test_comparison_cases_are_what_they_say(results):
    # The fixture's own sanity: the verdicts come from ffnlab.lab.stats.comparisons, not from here.
    r = _with_comparisons(results)
    assert [c["verdict"] for c in r["comparisons"]] == [case[3] for case in CASES]
    assert r["comparisons"][-1]["half_width"] is None and r["comparisons"][-1]["ci95"] == [None,
                                                                                            None]


def test_comparisons_section(results, tmp_path):
    r = _with_comparisons(results)
    R.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    section = _section(md, "Comparisons")
    assert ("Resolution: **0.02 bpb**, the smallest difference this run sets out to resolve. "
            "3 of 6 paired intervals have a half-width ≤ 0.02 bpb; seeds per variant: 3 for "
            "every variant.") in section
    assert "Adaptive seeding" not in section  # no seeding recorded
    headers = section[section.index("| a − b"):].splitlines()[0]
    assert headers == "| a − b | seeds n | mean | 95 % interval | half-width | verdict |"
    rows = _table_rows(section)
    assert len(rows) == len(CASES)
    for row, (a, b, diffs, verdict, reached), c in zip(rows, CASES, r["comparisons"], strict=True):
        assert row[0] == f"`{a}` − `{b}`" and row[1] == str(len(diffs))
        assert row[2] == f"{c['mean']:+.4f}"
        assert row[5].startswith(f"**{verdict}**")
        if len(diffs) < 2:
            assert row[3] == row[4] == "n/a" and row[5] == "**unresolved** (fewer than 2 seeds)"
            continue
        lo, hi = c["ci95"]
        assert row[3] == f"[{lo:+.4f}, {hi:+.4f}]"
        assert row[4] == f"{c['half_width']:.4f} {'≤' if reached else '>'} 0.02"
    assert rows[0][5] == "**a better** (`swiglu`)" and rows[1][5] == "**b better** (`relu`)"
    assert rows[1][4].endswith("> 0.02") and rows[4][4].endswith("≤ 0.02")
    # The forest plot sits in this section, not under Figures; the time plot after the curves.
    assert "](forest.png)" in section and "forest.png" not in _section(md, "Figures")
    figures = _section(md, "Figures").splitlines()
    curves = figures.index("![Learning curves](learning_curves.png)")
    assert figures[curves + 2] == "![Quality against training wall time](quality_vs_time.png)"
    page = (tmp_path / "report.html").read_text()
    assert "<th>a − b</th>" in page and "<td><strong>equivalent</strong></td>" in page
    forest = base64.b64encode((tmp_path / "forest.png").read_bytes()).decode("ascii")
    assert forest in page


def test_comparisons_from_the_fixture_at_a_finer_resolution(results):
    """Real comparisons of the fixture's runs: some intervals reach 0.005 bpb, some do not."""
    from ffnlab.lab.stats.comparisons import comparisons

    r = copy.deepcopy(results)
    r["config"]["resolution_bpb"] = 0.005
    r["comparisons"] = files.json_safe([c.to_dict() for c in comparisons(r, 0.005)])
    md = R.render_markdown(R.build_blocks(r, {}))
    section = _section(md, "Comparisons")
    halves = {(c["a"], c["b"]): c["half_width"] for c in r["comparisons"]}
    reached = sum(h <= 0.005 for h in halves.values())
    assert 0 < reached < len(halves)  # both kinds are present
    assert f"{reached} of {len(halves)} paired intervals have a half-width ≤ 0.005 bpb" in section
    rows = {row[0]: row for row in _table_rows(section)}
    for (a, b), h in halves.items():
        assert rows[f"`{a}` − `{b}`"][4] == f"{h:.4f} {'≤' if h <= 0.005 else '>'} 0.005"
    gelu = rows["`gelu` − `relu`"]
    lo, hi = paired.paired_difference(r, "gelu", "relu").ci95
    assert gelu[3] == f"[{lo:+.4f}, {hi:+.4f}]" and gelu[5] == "**a better** (`gelu`)"


def test_comparisons_seeds_and_seeding(results):
    r = _with_comparisons(results)
    swiglu = next(v for v in r["variants"] if v["name"] == "swiglu")
    swiglu["runs"] = swiglu["runs"][:2]
    r["config"]["seeding"] = {"initial": 2, "max": 6, "rounds": 3, "complete": False,
                              "counts": {v["name"]: 3 for v in r["variants"]}}
    section = _section(R.render_markdown(R.build_blocks(r, {})), "Comparisons")
    assert "seeds per variant: relu 3, gelu 3, gelu_tanh 3, swish 3, relu2 3, reglu 3, " \
           "geglu 3, swiglu 2." in section
    assert "Adaptive seeding: 2 seeds per variant to start" in section
    assert "up to 6, in 3 rounds; it did **not** finish" in section
    r["config"]["seeding"].update(complete=True, rounds=1)
    section = _section(R.render_markdown(R.build_blocks(r, {})), "Comparisons")
    assert "in 1 round; it finished" in section
    r["config"]["seeding"].update(max=2)  # max == initial: a fixed number of seeds
    assert "Adaptive" not in R.render_markdown(R.build_blocks(r, {}))


def test_comparisons_without_resolution_or_pairs(results):
    r = _with_comparisons(results)
    del r["config"]["resolution_bpb"]
    section = _section(R.render_markdown(R.build_blocks(r, {})), "Comparisons")
    assert "resolution was not recorded" in section and "≤" not in section.split("| a − b")[1]
    assert _table_rows(section)[0][4] == f"{r['comparisons'][0]['half_width']:.4f}"
    r["comparisons"] = []
    section = _section(R.render_markdown(R.build_blocks(r, {})), "Comparisons")
    assert "No pair to compare" in section and not _table_rows(section)


def test_claims_come_from_results_when_recorded(results, tmp_path):
    r = _with_comparisons(results)
    r["claims"] = [{"id": "x", "claim": "A recorded claim.", "source": "somewhere",
                    "verdict": "not supported", "explanation": "As recorded.", "numbers": {}}]
    R.write_report(r, tmp_path)
    md = (tmp_path / "report.md").read_text()
    claims = _section(md, "The sources' claims, checked")
    assert claims.strip().splitlines()[2:] == [
        "- **A recorded claim.** — **not supported**. As recorded. (source: 「somewhere」)"]
    assert "Speed: ReLU is fastest" not in md  # not recomputed
    assert '<strong class="no">not supported</strong>' in (tmp_path / "report.html").read_text()


def test_recorded_claims_match_the_checked_ones(results):
    r = copy.deepcopy(results)
    fresh = R.render_markdown(R.build_blocks(r, {}))
    r["claims"] = files.json_safe([v.to_dict() for v in C.check_claims(r)])
    assert R.render_markdown(R.build_blocks(r, {})) == fresh


_maybe = st.one_of(st.none(), st.just(float("nan")), st.floats(0.0, 1e5, allow_nan=False))


_messy_comparison = st.fixed_dictionaries({}, optional={
    "a": st.sampled_from(["relu", "swiglu"]), "b": st.sampled_from(["relu", "swish"]),
    "n": st.one_of(st.none(), st.booleans(), st.integers(0, 4)),
    "diffs": st.one_of(st.none(), st.integers(), st.lists(_maybe, max_size=3)),
    "mean": _maybe, "half_width": _maybe, "ci95": st.one_of(st.none(), st.lists(_maybe, max_size=3)),
    "verdict": st.sampled_from(["a better", "b better", "equivalent", "unresolved", "odd", None])})


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
                 "curve": draw(st.lists(st.tuples(st.integers(0, 50), _maybe), max_size=3)),
                 "wall_s": draw(_maybe)}
                for s in ran]
        v = {"name": name, "runs": runs, "curve": draw(st.lists(st.tuples(st.integers(0, 9),
                                                                          _maybe), max_size=3))}
        for key in ("val_bpb_mean", "val_bpb_std", "tokens_per_s", "ffn_ms",
                    "act_ns_per_element", "saved_bytes_per_token", "dead_fraction", "hidden"):
            if draw(st.booleans()):
                v[key] = draw(_maybe)
        variants.append(v)
    config = {"seeds": seeds, "model": {"dim": draw(st.sampled_from([None, 0, 32]))},
              "steps": draw(st.sampled_from([None, 0, 50])), "resolution_bpb": draw(_maybe),
              "seeding": draw(st.one_of(st.none(), st.fixed_dictionaries(
                  {}, optional={"initial": st.integers(0, 3), "max": st.integers(0, 5),
                                "rounds": st.one_of(st.none(), st.integers(0, 3)),
                                "complete": st.one_of(st.none(), st.booleans())})))}
    out = {"status": draw(st.sampled_from(["complete", "partial"])), "config": config,
           "variants": variants, "missing": [{"variant": "geglu", "seed": 0}]}
    if draw(st.booleans()):
        out["comparisons"] = draw(st.lists(st.one_of(st.none(), _messy_comparison), max_size=4))
    if draw(st.booleans()):
        out["claims"] = draw(st.lists(st.one_of(st.none(), st.fixed_dictionaries(
            {}, optional={k: st.text(max_size=4) for k in ("claim", "verdict", "explanation",
                                                            "source")})), max_size=3))
    return out


# Found by an unseeded run: a speed pick against a variant with tokens/s and bytes of 0.0
# divided by zero in advise's percentage change.
ZERO_RATES = {"status": "complete",
              "config": {"seeds": [0], "model": {"dim": None}, "steps": None,
                         "resolution_bpb": None, "seeding": None},
              "variants": [{"name": "relu", "runs": [], "curve": []},
                           {"name": "gelu", "runs": [], "curve": []},
                           {"name": "swish", "runs": [], "curve": [], "val_bpb_mean": 0.0},
                           {"name": "swiglu", "runs": [], "curve": [], "val_bpb_mean": 0.0,
                            "saved_bytes_per_token": 0.0}],
              "missing": [{"variant": "geglu", "seed": 0}]}


@given(_messy_results())
@example(ZERO_RATES)
def test_messy_results_never_crash_the_text(results):
    # The figures are covered above; here the analysis and both renderings, which is fast.
    blocks = R.build_blocks(results, {})
    md, page = R.render_markdown(blocks), R.render_html(blocks, {})
    assert "## Ranking" in md and "## Comparisons" in md and "</html>" in page
    assert all(math.isfinite(x) for row in P.forest_rows(results) for x in row[1:4])
    assert all(s["wall"] > 0 for s in P.time_series(results))
    assert len(C.check_claims(results)) == len(C.ALL_CLAIMS)
    for priority in advise.PRIORITIES:  # a pick, or a one-line usage error; nothing else
        try:
            rec = advise.recommend(results, priority, 64)
        except UsageError as exc:
            assert "nothing to recommend" in str(exc)
        else:
            assert rec["pick"] in {v["name"] for v in results["variants"]}
