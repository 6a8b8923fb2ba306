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
