import pytest

from ffnlab.lab.claims import sweep as SC


def _results(dim: float, frac: float, diffs: dict[str, list[float]]) -> dict:
    """relu with a per-seed wobble; each other variant = relu + its diff per seed."""
    n = max(len(d) for d in diffs.values())
    relu = [2.0 + 0.013 * ((s * 7) % 5) for s in range(n)]
    params = 8 * int(dim) ** 2  # FFN parameters per layer at equal budgets
    variants = [{"name": "relu", "val_bpb_mean": sum(relu) / n, "params": params,
                 "runs": [{"seed": s, "val_bpb": relu[s], "final_train_loss": 1.3}
                          for s in range(n)]}]
    for name, d in diffs.items():
        variants.append({"name": name, "params": params,
                         "val_bpb_mean": sum(relu[s] + x for s, x in enumerate(d)) / n,
                         "runs": [{"seed": s, "val_bpb": relu[s] + x, "final_train_loss": 1.3}
                                  for s, x in enumerate(d)]})
    return {"config": {"model": {"dim": dim, "n_layers": 1}, "data_fraction": frac},
            "variants": variants}


FLAT = [-0.001, 0.002, 0.0, -0.002, 0.001, 0.0]
BIG = [-0.06, -0.055, -0.065, -0.058, -0.062, -0.06]


def test_gain_that_appears_with_width_supports_the_width_claim():
    small = _results(32, 1.0, {"gelu": FLAT, "swiglu": FLAT})
    large = _results(128, 1.0, {"gelu": BIG, "swiglu": BIG})
    v = SC.claim_width([large, small], 0.02)
    assert v.verdict == "supported", v.explanation
    assert v.numbers["widths"] == [32, 128]
    t = v.numbers["trend"]["gelu"]
    # from dim 32 to 128 the FFN grows 16x (4 doublings) and the difference moves by
    # mean(BIG) − mean(FLAT): the fitted slope per doubling is a quarter of that
    assert t["slope_per_doubling"] == pytest.approx((sum(BIG) - sum(FLAT)) / 6 / 4, abs=1e-9)
    assert t["ci95"][1] < 0 and t["sizes"] == [8 * 32**2, 8 * 128**2]
    assert "per doubling of FFN parameters" in v.explanation


def test_gain_already_there_at_the_small_width_and_not_growing_is_not_supported():
    same = _results(32, 1.0, {"gelu": BIG, "swiglu": BIG})
    large = _results(128, 1.0, {"gelu": BIG, "swiglu": BIG})
    v = SC.claim_width([same, large], 0.02)
    assert v.verdict == "not supported" and "flat" in v.explanation


def test_no_gain_at_the_large_width_is_not_supported():
    v = SC.claim_width([_results(32, 1.0, {"gelu": FLAT}), _results(128, 1.0, {"gelu": FLAT})],
                       0.02)
    assert v.verdict == "not supported"


def test_wide_intervals_leave_the_width_claim_inconclusive():
    noisy = [-0.2, 0.1, -0.15, 0.12, -0.05, 0.09]
    v = SC.claim_width([_results(32, 1.0, {"gelu": noisy}),
                        _results(128, 1.0, {"gelu": noisy[::-1]})], 0.02)
    assert v.verdict == "inconclusive"


def test_width_claim_needs_relu_and_an_advanced_variant():
    r = {"config": {"model": {"dim": 32}}, "variants": [{"name": "swish", "runs": []}]}
    v = SC.claim_width([r, r], 0.02)
    assert v.verdict == "inconclusive" and "Not measured" in v.explanation


def test_small_data_claim_reads_the_twins_at_the_smallest_fraction():
    # swiglu - swish: no gain on a quarter of the data, a clear one on all of it -> supported
    small = _results(64, 0.25, {"swish": FLAT, "swiglu": FLAT})
    large = _results(64, 1.0, {"swish": FLAT, "swiglu": BIG})
    v = SC.claim_small_data([large, small], 0.02)
    assert v.verdict == "supported", v.explanation
    assert v.numbers["fractions"] == [0.25, 1.0]
    # the same clear gain at both fractions -> not supported
    v2 = SC.claim_small_data([_results(64, 0.25, {"swish": FLAT, "swiglu": BIG}), large], 0.02)
    assert v2.verdict == "not supported", v2.explanation


def test_sweep_content_has_one_claim_per_swept_size():
    done = [(type("S", (), {"label": f"dim-{d}"})(), _results(d, 1.0, {"gelu": BIG}))
            for d in (32, 64)]
    content = SC.sweep_content(done, status="complete", resolution=0.02)
    assert [c["id"] for c in content["claims"]] == ["width"]
    assert [r["label"] for r in content["settings"]] == ["dim-32", "dim-64"]
