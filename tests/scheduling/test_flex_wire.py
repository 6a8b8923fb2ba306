"""Flexibility for an aggregator, and plans rounded to what a station accepts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evflex.scheduling import Circuit, Problem, SchedulingError, Vehicle, solve
from evflex.scheduling.flex import flexibility
from evflex.scheduling.wire import WireRules, wire_currents

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H = timedelta(hours=1)
V3 = 230 * 3


def approx_w(value: float):
    return pytest.approx(value, abs=0.5)  # flexibility allows each driver 10 mWh of slack


def ev(id, kwh, kw=11.0, end=4, **kw_args) -> Vehicle:
    return Vehicle(id, T0, T0 + end * H, kw * 1000, energy_wh=kwh * 1000, **kw_args)


def test_flexibility_of_one_car_by_hand():
    # 40 kWh in 4 h at up to 11 kW: 4 kWh of slack in all
    p = Problem(start=T0, slots=4, slot_s=3600, vehicles=[ev("a", 40)], import_limit_w=50_000)
    ref = solve(p)
    flex = flexibility(p, ref)
    assert [round(f.planned_w) for f in flex] == [11000, 11000, 11000, 7000]  # charges early
    # slot 0 can drop to 40 - 33 = 7 kW; it is already at the car's max
    assert flex[0].min_w == approx_w(7000) and flex[0].max_w == approx_w(11000)
    assert flex[0].down_w == approx_w(4000) and flex[0].up_w == approx_w(0)
    # slot 3 already takes the minimum (the other hours are full) but can rise by 4 kW
    assert flex[3].down_w == approx_w(0) and flex[3].up_w == approx_w(4000)


def test_flexibility_keeps_a_short_driver_no_shorter():
    # the site limit makes b short; flexibility may not make it worse
    p = Problem(
        start=T0, slots=2, slot_s=3600, vehicles=[ev("a", 10, end=2), ev("b", 30, end=2)],
        import_limit_w=15_000,
    )  # fmt: skip
    ref = solve(p)
    assert ref.kpis.unmet_kwh == approx_w(10)
    flex = flexibility(p, ref)
    assert all(f.down_w == approx_w(0) for f in flex)
    assert all(f.max_w == pytest.approx(15_000) for f in flex)


def test_flexibility_window_is_checked():
    p = Problem(start=T0, slots=4, slot_s=3600)
    with pytest.raises(SchedulingError, match="window"):
        flexibility(p, solve(p), 2, 7)


def _one_slot(vehicles, powers_w, **kw) -> tuple[Problem, object]:
    p = Problem(start=T0, slots=1, slot_s=3600, vehicles=vehicles, **kw)
    s = solve(p)
    for v, w in zip(vehicles, powers_w, strict=True):  # pin the plan to hand-picked values
        s.vehicles[v.id].power_w = [w]
    s.import_w = [sum(powers_w)]
    return p, s


def test_rounding_floors_to_steps_and_respects_the_minimum():
    vs = [ev("a", 50), ev("b", 50), ev("c", 50), ev("d", 50, kw=22, phases=(1,))]
    planned = [7.6 * V3, 3.5 * V3, 2.0 * V3, 20 * 230]
    p, s = _one_slot(vs, planned)
    out = wire_currents(p, s)
    # freed current goes back where it was lost most, within the plan's total
    assert out["c"] == 0  # 2 A is below half the minimum
    assert out["b"] == 6  # 3.5 A rounds up to the minimum: there is room
    assert out["d"] == 16  # single-phase cap
    # 7.6 A floors to 7; c's 2 A and d's 4 A above the cap freed enough for one
    # more 3-phase step (55 of 59.3 A-phases used), and a lost the most of those
    # that can take it
    assert out["a"] == 8


def test_rounding_hands_freed_current_back():
    vs = [ev("a", 50), ev("b", 50)]
    planned = [10.6 * V3, 10.6 * V3]
    p, s = _one_slot(vs, planned, import_limit_w=21.2 * V3)
    out = wire_currents(p, s)
    assert sorted(out.values()) == [10, 11]  # 1.2 A freed: one step back to one of them


def test_rounding_up_to_the_minimum_never_breaks_a_circuit():
    vs = [ev("a", 50, node="c"), ev("b", 50, node="c")]
    p, s = _one_slot(vs, [7 * V3, 3 * V3], circuits=[Circuit("c", 10)])
    out = wire_currents(p, s)
    assert out == {"a": 7, "b": 0}


def test_discharge_setpoints_are_rounded_too():
    v = ev("a", 0, max_discharge_w=11_000, v2x_allowed=True, battery_wh=60_000, soc=0.5)
    p, s = _one_slot([v], [-8.7 * V3])
    assert wire_currents(p, s, rules=WireRules(step_a=1)) == {"a": -8}
