"""The comparison figures: the forest plot of paired intervals and quality against wall time."""

import copy
import math
import struct

import pytest

from ffnlab.files import json_safe
from ffnlab.lab.report import plots as P
from ffnlab.lab.stats.comparisons import Comparison

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG_MAGIC)
    return struct.unpack(">II", png[16:24])  # IHDR: width, height


def _run(seed, wall, final, *, diverged=False):
    return {"seed": seed, "val_bpb": final, "wall_s": wall, "diverged": diverged,
            "curve": [[0, 8.0], [50, final + 0.5], [100, final]]}


def _comparison(a, b, diffs, resolution=0.02):
    return json_safe(Comparison(a, b, tuple(range(len(diffs))), tuple(diffs), resolution).to_dict())


@pytest.fixture
def results():
    """Two variants with timed runs (swiglu slower per step) and four comparisons."""
    return {
        "status": "complete",
        "config": {"steps": 100, "resolution_bpb": 0.02},
        "variants": [
            {"name": "relu", "gated": False, "val_bpb_mean": 2.5, "val_bpb_std": 0.1,
             "runs": [_run(0, 10.0, 2.4), _run(1, 12.0, 2.6), _run(2, 99.0, 9.0, diverged=True)]},
            {"name": "swiglu", "gated": True, "val_bpb_mean": 2.3, "val_bpb_std": 0.0,
             "runs": [_run(0, 15.0, 2.3), _run(1, 15.0, 2.3)]},
        ],
        "comparisons": [
            _comparison("swiglu", "relu", [-0.05, -0.052, -0.048]),  # a better, narrow
            _comparison("gelu", "relu", [0.10, 0.16, 0.13]),         # b better, wide
            _comparison("swish", "relu", [0.001, -0.002, 0.002]),    # equivalent
            _comparison("geglu", "gelu", [0.01]),                    # one seed: no interval
        ],
    }


@pytest.fixture
def captured(monkeypatch):
    """The Figure each plot function builds, instead of its PNG."""
    figs = []

    def keep(fig):
        figs.append(fig)
        return b"png"

    monkeypatch.setattr(P, "png", keep)
    return figs


def test_forest_rows_are_the_comparisons_with_an_interval(results):
    rows = P.forest_rows(results)
    assert [r[0] for r in rows] == ["swiglu − relu", "gelu − relu", "swish − relu"]
    assert [r[4] for r in rows] == ["a better", "b better", "equivalent"]
    label, mean, lo, hi, _ = rows[0]
    assert mean == pytest.approx(-0.05)
    assert lo == pytest.approx(-0.05 - 4.303 * 0.002 / math.sqrt(3))
    assert hi == pytest.approx(-0.05 + 4.303 * 0.002 / math.sqrt(3))


def test_forest_rows_tolerate_bad_entries(results):
    r = copy.deepcopy(results)
    r["comparisons"] += [None, {"a": "x", "b": "y", "mean": 0.0, "ci95": [None, 1.0]},
                         {"a": "x", "b": "y", "mean": 0.0, "ci95": [-1.0, 1.0], "verdict": "odd"}]
    rows = P.forest_rows(r)
    assert len(rows) == 4 and rows[-1] == ("x − y", 0.0, -1.0, 1.0, "unresolved")


def test_forest_draws_intervals_band_and_zero(results, captured):
    assert P.plot_forest(results) == b"png"
    (fig,) = captured
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == ["swiglu − relu", "gelu − relu",
                                                            "swish − relu"]
    assert ax.get_xlabel() == "difference in val bits per byte (negative: a better)"
    # The ±resolution band: one patch spanning exactly [-0.02, +0.02].
    (band,) = ax.patches
    xs = [x for x, _ in band.get_patch_transform().transform(band.get_path().vertices)]
    assert min(xs) == pytest.approx(-0.02) and max(xs) == pytest.approx(0.02)
    # The zero line and one marker per row, coloured by verdict, first row on top.
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.lines)
    markers = {line.get_label(): line for line in ax.lines if line.get_marker() != "None"}
    assert set(markers) == {"a better", "b better", "equivalent"}
    assert markers["a better"].get_color() != markers["b better"].get_color()
    assert list(markers["b better"].get_ydata()) == [1]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]
    # The horizontal interval lines, one per row, from low to high.
    spans = sorted((seg[0][0], seg[1][0]) for c in ax.collections for seg in c.get_segments())
    expected = sorted((lo, hi) for _, _, lo, hi, _ in P.forest_rows(results))
    assert len(spans) == 3
    assert [x for s in spans for x in s] == pytest.approx([x for e in expected for x in e])
    assert "1 comparison with fewer than 2 paired seeds" in fig.texts[0].get_text()


def test_forest_png_grows_with_rows(results):
    png = P.plot_forest(results)
    few = copy.deepcopy(results)
    many = copy.deepcopy(results)
    many["comparisons"] = many["comparisons"][:3] * 5
    w1, h1 = _png_size(png)
    w2, h2 = _png_size(P.plot_forest(many))
    assert w1 == w2 and h2 > h1
    few["config"].pop("resolution_bpb")  # no band, still a figure
    assert P.plot_forest(few).startswith(PNG_MAGIC)


@pytest.mark.parametrize("comparisons", [None, [], [_comparison("geglu", "gelu", [0.01])]])
def test_forest_without_intervals_is_none(results, comparisons):
    r = copy.deepcopy(results)
    if comparisons is None:
        del r["comparisons"]  # a results file from before comparisons
    else:
        r["comparisons"] = comparisons
    assert P.plot_forest(r) is None
    assert "forest" not in P.render_plots(r)


def test_time_series_scales_steps_by_mean_wall_time(results):
    series = P.time_series(results)
    assert [s["name"] for s in series] == ["swiglu", "relu"]  # ranking order, best first
    swiglu, relu = series
    # relu: the diverged run's 99 s is left out; 11 s over 100 steps.
    assert relu["name"] == "relu" and relu["wall"] == pytest.approx(11.0)
    assert relu["wall_std"] == pytest.approx(math.sqrt(2.0))
    assert [x for x, _ in relu["curve"]] == pytest.approx([0.0, 5.5, 11.0])
    assert [y for _, y in relu["curve"]] == pytest.approx([8.0, 3.0, 2.5])
    assert relu["bpb"] == pytest.approx(2.5) and relu["bpb_std"] == pytest.approx(math.sqrt(0.02))
    # swiglu: same steps, 15 s: later on the time axis, as a reader should see.
    assert [x for x, _ in swiglu["curve"]] == pytest.approx([0.0, 7.5, 15.0])
    assert swiglu["wall_std"] == 0.0 and swiglu["bpb"] == pytest.approx(2.3)


def test_time_series_without_config_steps_uses_the_last_step(results):
    r = copy.deepcopy(results)
    del r["config"]["steps"]
    relu = next(s for s in P.time_series(r) if s["name"] == "relu")
    assert [x for x, _ in relu["curve"]] == pytest.approx([0.0, 5.5, 11.0])


def test_time_series_skips_untimed_variants(results):
    r = copy.deepcopy(results)
    for run in r["variants"][1]["runs"]:
        run["wall_s"] = None
    assert [s["name"] for s in P.time_series(r)] == ["relu"]


def test_quality_vs_time_draws_curves_and_final_points(results, captured):
    assert P.plot_quality_vs_time(results) == b"png"
    (fig,) = captured
    (ax,) = fig.axes
    curves = {line.get_label(): line for line in ax.lines if line.get_label() in ("relu", "swiglu")}
    assert list(curves["relu"].get_xdata()) == pytest.approx([0.0, 5.5, 11.0])
    assert list(curves["swiglu"].get_xdata()) == pytest.approx([0.0, 7.5, 15.0])
    assert curves["swiglu"].get_linestyle() == "--" and curves["relu"].get_linestyle() == "-"
    assert "wall time" in ax.get_xlabel()
    # The final points: one error bar per variant at its mean wall time and mean bpb.
    points = sorted((float(line.get_xdata()[0]), float(line.get_ydata()[0]))
                    for line in ax.lines if line.get_marker() == "o")
    assert [x for p in points for x in p] == pytest.approx([11.0, 2.5, 15.0, 2.3])


def test_quality_vs_time_png_and_none(results):
    assert P.plot_quality_vs_time(results).startswith(PNG_MAGIC)
    r = copy.deepcopy(results)
    for v in r["variants"]:
        for run in v["runs"]:
            del run["wall_s"]
    assert P.plot_quality_vs_time(r) is None
    assert "quality_vs_time" not in P.render_plots(r)
    assert P.plot_quality_vs_time({"variants": []}) is None


def test_both_are_registered_and_rendered(results):
    stems = list(P.render_plots(results))
    assert {"forest", "quality_vs_time"} <= set(P.PLOTS)
    assert "forest" in stems
    assert stems.index("quality_vs_time") == stems.index("learning_curves") + 1
