"""The engines table: each engine's reasons, forcing one, and which engine the fused op runs."""

from __future__ import annotations

import itertools

import pytest
import torch

from ffnlab.activations import ACTIVATIONS
from ffnlab.ops import engine_aten, engine_inductor, engines
from ffnlab.ops.function import fused_feed_forward
from ffnlab.ops.reference import ffn_reference

BIG = 1 << 20  # hidden elements from which the inductor engine is chosen on CPU


# --- the table -------------------------------------------------------------------------------


def test_the_table_in_priority_order():
    assert list(engines.ENGINES) == ["triton", "inductor", "aten"]
    assert engines.ENGINES["aten"] is engines.ATEN
    assert engines.ATEN.module is engine_aten
    assert engines.INDUCTOR.module is engine_inductor
    assert engines.INDUCTOR.min_elements == BIG


def test_aten_runs_everywhere():
    xs = (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3, device="meta"))
    for x in xs:
        for forced in (False, True):
            assert engines.ATEN.unsupported_reasons(x, hidden_dim=3, activation="tanh", gated=True,
                                                    direction="forward", forced=forced) == []  # fmt: skip


# --- inductor ----------------------------------------------------------------------------------


def test_inductor_says_why_not_on_small_cpu_input():
    small = torch.zeros(4, 8)
    reasons = engines.INDUCTOR.unsupported_reasons(small, hidden_dim=16)
    assert reasons == [
        f"64 hidden elements are fewer than the {BIG} from which the loops beat ATen"
    ]
    # named, size does not matter: it can run
    assert engines.INDUCTOR.unsupported_reasons(small, hidden_dim=16, forced=True) == []
    assert "hidden size is not given" in " ".join(engines.INDUCTOR.unsupported_reasons(small))


def test_inductor_says_where_aten_measured_faster():
    big = torch.empty(1024, 1024)
    why = engines.INDUCTOR.unsupported_reasons
    assert why(big, hidden_dim=1024, activation="swish", gated=True) == []
    assert why(big, hidden_dim=1024, activation="gelu", gated=True, direction="forward") == [
        "ATen measured faster for the forward of gated gelu"
    ]
    assert why(big, hidden_dim=1024, activation="gelu", gated=True, direction="backward") == []
    assert why(big, hidden_dim=1024, activation="gelu", gated=True) == []  # one direction gains
    assert why(big, hidden_dim=1024, activation="tanh", gated=False) == [
        "ATen measured faster for the forward and backward of plain tanh"
    ]
    assert why(big, hidden_dim=1024, activation="tanh", gated=False, forced=True) == []


def test_inductor_cannot_run_off_cpu_on_integers_or_after_a_failed_compilation(monkeypatch):
    why = engines.INDUCTOR.unsupported_reasons
    assert "not on meta" in " ".join(why(torch.zeros(2, 3, device="meta"), forced=True))
    assert "torch.int64" in " ".join(why(torch.zeros(2, 3, dtype=torch.int64), forced=True))
    monkeypatch.setattr(engine_inductor, "_failure", "RuntimeError: no compiler")
    assert why(torch.zeros(2, 3), forced=True) == [
        "compiling the generated loops failed in this process (RuntimeError: no compiler)"
    ]


# --- triton ------------------------------------------------------------------------------------


def test_triton_says_why_not_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 3)
    for forced in (False, True):
        reasons = engines.TRITON.unsupported_reasons(x, forced=forced)
        assert len(reasons) == 1 and "TRITON_INTERPRET=1 is not set" in reasons[0]


def test_triton_under_the_interpreter_runs_only_when_named(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(engines, "triton_import_error", lambda: "")
    x = torch.zeros(2, 3)
    assert "interpreter" in " ".join(engines.TRITON.unsupported_reasons(x))
    assert engines.TRITON.unsupported_reasons(x, forced=True) == []
    assert engines.select("auto", x, hidden_dim=3) is engines.ATEN
    assert engines.select("triton", x, hidden_dim=3) is engines.TRITON


def test_triton_reasons_are_all_given(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    reasons = engines.TRITON.unsupported_reasons(
        torch.zeros(2, 3, dtype=torch.int32, device="meta"), activation="mish", forced=True
    )
    assert len(reasons) == 3
    assert "mish" in reasons[0] and "torch.int32" in reasons[1] and "meta" in reasons[2]


# --- forcing -----------------------------------------------------------------------------------


def test_forcing_an_engine_that_cannot_run_raises_naming_the_reasons(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.zeros(2, 4)
    with pytest.raises(NotImplementedError, match="engine='triton' cannot run here: the input is "
                                                  "on CPU and TRITON_INTERPRET=1 is not set"):  # fmt: skip
        engines.select("triton", x)
    w1, w2 = torch.zeros(6, 4), torch.zeros(4, 6)
    with pytest.raises(
        NotImplementedError, match="engine='triton' cannot run here: .*TRITON_INTERPRET"
    ):
        fused_feed_forward(x, w1, w2, activation="relu", engine="triton")
    with pytest.raises(
        NotImplementedError, match="engine='inductor' cannot run here: .*not on meta"
    ):
        fused_feed_forward(x.to("meta"), w1.to("meta"), w2.to("meta"), activation="relu",
                           engine="inductor")  # fmt: skip
    with pytest.raises(ValueError, match="unknown engine 'aton'; did you mean .*'aten'"):
        fused_feed_forward(x, w1, w2, activation="relu", engine="aton")


def test_named_inductor_runs_both_directions_where_aten_would_be_chosen(monkeypatch):
    # The explicit way to exercise the generated loops on any activation and size.
    calls = []
    for fn in ("hidden_forward", "hidden_backward"):
        real = getattr(engine_inductor, fn)
        monkeypatch.setattr(
            engine_inductor, fn, lambda *a, _f=real, _n=fn, **k: calls.append(_n) or _f(*a, **k)
        )
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w1, w2 = (
        torch.randn(5, 4, dtype=torch.float64, generator=g),
        torch.randn(4, 5, dtype=torch.float64, generator=g),
    )
    y = fused_feed_forward(x, w1, w2, activation="tanh", engine="inductor")
    y.sum().backward()
    assert calls == ["hidden_forward", "hidden_backward"]
    x2 = x.detach().requires_grad_()
    ffn_reference(x2, w1, w2, activation="tanh").sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


# --- selection equals the rule before the table --------------------------------------------------

# The rule as it was written before the engines table, kept here as the oracle: the fused op got
# "inductor" from 2^20 hidden elements on where it beat ATen in at least one direction, and the
# inductor engine then ran ATen in the direction where ATen measured faster.
_BEFORE_FORWARD = {("identity", True), ("relu", True), ("swish", True), ("sigmoid", True),
                   ("relu2", True), ("relu2", False)}  # fmt: skip
_BEFORE_BACKWARD = {
    (a, True) for a in ("identity", "relu", "gelu", "gelu_tanh", "swish", "sigmoid", "relu2")
} | {(a, False) for a in ("gelu_tanh", "swish", "sigmoid", "relu2")}


def _before(activation: str, gated: bool, elements: int, direction: str | None) -> str:
    key = (activation, gated)
    helps = key in _BEFORE_FORWARD or key in _BEFORE_BACKWARD
    if elements < BIG or not helps:
        return "aten"
    if direction is None:
        return "inductor"
    faster = _BEFORE_FORWARD if direction == "forward" else _BEFORE_BACKWARD
    return "inductor" if key in faster else "aten"


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_selection_equals_the_rule_before_the_table(activation):
    for gated, rows, direction in itertools.product((True, False), (1023, 1024),
                                                    ("forward", "backward", None)):  # fmt: skip
        h1 = torch.empty(rows, 1024)
        got = engines.select("auto", h1, hidden_dim=1024, activation=activation, gated=gated,
                             direction=direction)  # fmt: skip
        want = _before(activation, gated, rows * 1024, direction)
        assert got.name == want, (gated, rows, direction)


@pytest.mark.parametrize(
    ("activation", "gated"), list(itertools.product(ACTIVATIONS, (True, False)))
)
def test_the_fused_op_runs_the_selected_engine_per_direction(
    activation, gated, monkeypatch, lower_inductor_threshold
):
    # Above the (lowered) threshold; the spies delegate to ATen, so nothing compiles.
    lower_inductor_threshold(1)
    ran = {}
    for mod in (engine_aten, engine_inductor):
        name = "aten" if mod is engine_aten else "inductor"
        for fn in ("hidden_forward", "hidden_backward"):
            real = getattr(engine_aten, fn)
            direction = fn.split("_")[1]
            spy = lambda *a, _f=real, _d=direction, _n=name, **k: (
                ran.setdefault(_d, _n) and _f(*a, **k)
            )
            monkeypatch.setattr(mod, fn, spy)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w1, w2 = (
        torch.randn(5, 4, dtype=torch.float64, generator=g),
        torch.randn(4, 5, dtype=torch.float64, generator=g),
    )
    w3 = torch.randn(5, 4, dtype=torch.float64, generator=g) if gated else None
    y = fused_feed_forward(x, w1, w2, w3, activation=activation)
    y.sum().backward()
    want = {d: _before(activation, gated, BIG, d) for d in ("forward", "backward")}
    assert ran == want
    x2 = x.detach().requires_grad_()
    ffn_reference(x2, w1, w2, w3, activation=activation).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
