"""Timing statistics and the one round-robin timer."""

import pytest
import torch

from ffnlab.bench.timing import failure_reason, paired_ratio, round_robin, spread

CPU = torch.device("cpu")


def test_spread_is_iqr_over_median():
    assert spread([1.0, 1.0, 1.0]) == 0.0  # too few to say
    assert spread([10.0] * 8) == 0.0
    assert spread([8.0, 9.0, 10.0, 11.0, 12.0]) == pytest.approx((11.5 - 8.5) / 10.0)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    a, b = [10.0, 20.0, 30.0], [10.0, 10.0, 30.0]  # rounds 1.0, 2.0, 1.0
    assert paired_ratio(a, b) == pytest.approx(1.0)  # ratio of medians would say 2.0
    assert paired_ratio([10.0, 20.0], [10.0, 10.0, 10.0]) == pytest.approx(1.5)  # unaligned
    assert paired_ratio([], b) is None and paired_ratio(a, None) is None


def test_round_robin_rotates_who_goes_first_and_warms_up():
    order = []
    calls = {n: {"fwd": lambda n=n: order.append(n)} for n in "abc"}
    times, failed = round_robin(calls, CPU, repeats=3, warmup=2)
    assert failed == {} and all(len(times[n]["fwd"]) == 3 for n in "abc")
    assert order == list("aabbcc") + list("abc") + list("bca") + list("cab")


def test_round_robin_can_let_errors_propagate():
    def boom():
        raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        round_robin({"x": {"call": boom}}, CPU, repeats=1, errors=())
    times, failed = round_robin({"x": {"call": boom}}, CPU, repeats=1)
    assert times == {} and failed == {"x": "MemoryError: out of memory"}


def test_failure_reason_is_one_short_line():
    assert failure_reason(ValueError("")) == "ValueError: "
    assert failure_reason(RuntimeError("x" * 300 + "\nmore")) == "RuntimeError: " + "x" * 240
