"""The site snapshot -> scheduling problem translation of the MPC (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evflex.smartcharging.allocation import Node
from evflex.smartcharging.mpc import Forecast, MpcSettings, build_problem, mpc_step
from evflex.smartcharging.planner import EvseModel, SessionModel, SiteModel

NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
V = 230.0


def site(**session_kw) -> SiteModel:
    nodes = [
        Node("site", None, max_current_a=32.0, max_power_w=40_000, base_current_a=(5, 5, 5)),
        Node("c:c1", "site", max_current_a=20.0, base_current_a=(4, 4, 4)),
        Node("s:A", "c:c1", max_current_a=16.0),
        Node("s:B", "site"),
    ]
    a = EvseModel("A", 1, session=SessionModel("t1", started_at=NOW, **session_kw))
    b = EvseModel("B", 1, online=False, commanded_a=10.0, session=SessionModel("t2"))
    m = SiteModel(id="x", nodes=nodes)
    for ev, node in ((a, "s:A"), (b, "s:B")):
        m.evses[ev.key] = ev
        m.node_of[ev.key] = node
    return m


def test_limits_account_for_base_load_below_and_pinned_evses():
    p, stated = build_problem(site(), NOW, MpcSettings())
    assert p.phase_limit_a == pytest.approx(32 - 5 - 4 - 10)
    limits = {c.id: c.max_current_a for c in p.circuits}
    assert limits["c:c1"] == pytest.approx(16)  # 20 A minus its own 4 A
    assert limits["s:A"] == pytest.approx(16)
    assert p.base_load_w[0] == pytest.approx((9 + 10) * 3 * V)
    [veh] = p.vehicles  # the offline station's EVSE is load, not a vehicle
    assert veh.id == "A/1" and veh.node == "s:A"
    # no stated need: full power until the assumed departure
    assert veh.departure == NOW + timedelta(hours=8)
    assert veh.energy_wh == pytest.approx(32 * V * 3 * 8)
    assert stated == set()


def test_stated_need_forecast_and_caps():
    departure = NOW + timedelta(hours=4)
    m = site(departure=departure, energy_target_wh=10_000)
    prices = Forecast(start=NOW, slot_s=3600, import_price=(0.5, 0.1, 0.1, 0.1))
    r = mpc_step(m, NOW, MpcSettings(forecast=prices, slot_s=3600, horizon_h=4))
    assert r.stated == {"A/1"}
    assert r.problem.import_price == [0.5, 0.1, 0.1, 0.1]
    plan = r.schedule.vehicles["A/1"]
    assert plan.feasible and plan.power_w[0] == 0  # waits for the cheap hours
    assert r.caps == {"A/1": 0.0}
    # more than 4 h at the 13 A the site fuse leaves: not feasible
    r = mpc_step(site(departure=departure, energy_target_wh=60_000), NOW, MpcSettings(slot_s=3600))
    assert r.infeasible == ["A/1"]
    assert r.caps["A/1"] == 13
    assert r.schedule.vehicles["A/1"].max_deliverable_wh == pytest.approx(13 * 3 * V * 4)


def test_a_short_forecast_is_not_held_past_its_horizon():
    # PV 4 kW and dear prices for 4 h; the plan runs 8 h: after 4 h the site's defaults
    f = Forecast(start=NOW, slot_s=3600, import_price=(0.4,) * 4, pv_w=(4000.0,) * 4)
    cfg = MpcSettings(forecast=f, slot_s=3600, horizon_h=8, default_import_price=0.25)
    r = mpc_step(site(), NOW, cfg)
    p = r.problem
    assert p.slots == 8
    assert p.pv_w == [4000.0] * 4 + [0.0] * 4  # no PV at night because it shone at noon
    assert p.import_price == [0.4] * 4 + [0.25] * 4
    assert p.export_price == [0.0] * 8
    measured = (9 + 10) * 3 * V  # base load and the pinned EVSE: the measurement holds
    assert p.base_load_w == pytest.approx([measured] * 8)
    assert r.sources == ["forecast"] * 4 + ["default"] * 4
    assert r.forecast_end == NOW + timedelta(hours=4)
    # a forecast that starts later: defaults before it too
    later = Forecast(start=NOW + timedelta(hours=2), slot_s=3600, pv_w=(1000.0,))
    r = mpc_step(site(), NOW, MpcSettings(forecast=later, slot_s=3600, horizon_h=4))
    assert r.problem.slots == 8  # the session's assumed 8 h stay
    assert r.problem.pv_w == [0.0, 0.0, 1000.0] + [0.0] * 5
    assert r.sources == ["default", "default", "forecast"] + ["default"] * 5
    # no forecast at all: every slot is the site's defaults
    r = mpc_step(site(), NOW, MpcSettings(slot_s=3600, horizon_h=4, default_import_price=0.3))
    assert r.sources == ["default"] * 8 and r.forecast_end is None
    assert r.problem.import_price == [0.3] * 8


def test_forecast_problems_are_named():
    ok = Forecast(start=NOW, slot_s=900, import_price=(0.1, 0.2), pv_w=(0.0, 1.0))
    assert ok.problems() == []
    bad = {
        "same length": Forecast(start=NOW, slot_s=900, import_price=(0.1,), pv_w=(0.0, 1.0)),
        "slot length": Forecast(start=NOW, slot_s=0, import_price=(0.1,)),
        "time zone": Forecast(start=NOW.replace(tzinfo=None), slot_s=900, import_price=(0.1,)),
        "finite": Forecast(start=NOW, slot_s=900, import_price=(float("nan"),)),
        "pv_w: values must be >= 0": Forecast(start=NOW, slot_s=900, pv_w=(-1.0,)),
        "at least one series": Forecast(start=NOW, slot_s=900),
    }
    for reason, f in bad.items():
        assert any(reason in p for p in f.problems()), (reason, f.problems())
        assert Forecast.from_json(f.to_json()) is None  # a bad stored one is not used
    assert Forecast.from_json(ok.to_json()) == ok
    assert Forecast(start=NOW, slot_s=900, import_price=(-0.05,)).problems() == []  # prices may


def test_a_forecast_from_the_past_is_used_from_now_on():
    f = Forecast(start=NOW, slot_s=3600, import_price=(0.1, 0.2, 0.3), pv_w=(0.0, 1.0, 2.0))
    kept, warnings = f.from_now(NOW + timedelta(hours=1, minutes=30))
    # the slot that runs now stays; the one that ended is dropped, and that is said
    assert kept.start == NOW + timedelta(hours=1)
    assert kept.import_price == (0.2, 0.3) and kept.pv_w == (1.0, 2.0)
    assert kept.end == f.end
    assert len(warnings) == 1 and "past" in warnings[0]
    assert f.from_now(NOW) == (f, [])
    assert f.from_now(NOW - timedelta(hours=1)) == (f, [])  # the future is fine
    with pytest.raises(ValueError, match="ends at"):
        f.from_now(NOW + timedelta(hours=3))


def test_site_tariffs_reach_v2x_sessions():
    m = site(v2x=True, max_discharge_w=7000)
    cfg = MpcSettings(driver_import_tariff=0.30, driver_export_tariff=0.45)
    p, _ = build_problem(m, NOW, cfg)
    [veh] = p.vehicles
    assert veh.can_discharge
    assert (veh.driver_import_price, veh.driver_export_price) == (0.30, 0.45)
