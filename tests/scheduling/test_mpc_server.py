"""The scheduler inside a running node, against simulated stations (policy "optimal")."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest

from conftest import Node, node_with
from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec

_ids = itertools.count(1)
VOLT = 230.0
EV_MAX_W = 11_000.0  # the simulated car's on-board charger


# No full-power start: the plan decides from the first second.
mpc_node = node_with(initial_full_power_s=0.0)


async def _station(node: Node, version: str = "2.0.1") -> SimStation:
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(id=f"MPC{version.replace('.', '')}-{next(_ids)}", ocpp_version=version)
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(60.0), meter_interval_s=60.0, seed=1)
    await st.start(timeout=10.0)
    r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "depot"})
    assert r.status_code == 200, r.text
    return st


async def _power(node: Node, station_id: str) -> float | None:
    txs = await node.transactions(active="true", station_id=station_id)
    return txs[0]["power_w"] if txs else None


def _prices(node: Node, dear_slots: int, dear=0.40, cheap=0.10, n=96) -> dict:
    start = node.rt.clock.now() - timedelta(minutes=1)
    prices = [dear] * dear_slots + [cheap] * (n - dear_slots)
    return {"start": start.isoformat(), "slot_minutes": 15, "import_price": prices}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_mpc_defers_to_cheap_hours_and_answers_preferences(mpc_node, version):
    node = mpc_node
    r = await node.http.post(
        "/api/v1/sites",
        json={"id": "depot", "import_limit_kw": 50, "policy": "optimal", "objective": "cost"},
    )
    assert r.status_code == 201, r.text
    r = await node.http.put("/api/v1/sites/depot/forecast", json=_prices(node, dear_slots=8))
    assert r.status_code == 200, r.text
    st = await _station(node, version)
    try:
        assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
        tx = (await node.wait_for(lambda: node.transactions(active="true", station_id=st.id)))[0]
        departure = node.rt.clock.now() + timedelta(hours=8)
        r = await node.http.put(
            f"/api/v1/transactions/{tx['id']}/preferences",
            json={"departure_time": departure.isoformat(), "energy_kwh": 20},
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "ACCEPTED" and answer["accepted"], answer
        assert answer["planned_kwh"] == pytest.approx(answer["requested_kwh"], abs=0.01)
        assert 19 < answer["requested_kwh"] <= 20  # what is still to come

        # Dear for two hours, cheap after: nothing now, all of it later.
        await node.wait_for(lambda: _is(node, st.id, 0.0), timeout=10)
        plan = (await node.http.get("/api/v1/sites/depot/plan")).json()
        assert plan["applied"] is True and plan["objective"] == "cost"
        [veh] = plan["vehicles"]
        assert veh["station_id"] == st.id and veh["feasible"] and veh["stated_need"]
        assert veh["cap_a_now"] == 0
        assert sum(veh["power_kw"][:8]) == pytest.approx(0, abs=1e-6)
        assert 19 < veh["need_kwh"] <= 20  # minus what it took before the plan reached it
        assert sum(veh["power_kw"]) * 0.25 == pytest.approx(veh["need_kwh"], abs=0.01)
        assert all(s["import_kw"] <= s["import_limit_kw"] + 1e-6 for s in plan["slots"])

        # More than 8 h at 11 kW can give: NOT_POSSIBLE, with the most it can get.
        r = await node.http.put(
            f"/api/v1/transactions/{tx['id']}/preferences",
            json={"departure_time": departure.isoformat(), "energy_kwh": 200},
        )
        answer = r.json()
        assert answer["status"] == "NOT_POSSIBLE" and not answer["accepted"], answer
        # 8 h at the most the CSMS knows of: the EV's 16 A (2.0.1 states it in its
        # charging needs) or the EVSE's 32 A (1.6 does not tell)
        amps = 16 if version == "2.0.1" else 32
        assert answer["deliverable_kwh"] == pytest.approx(amps * VOLT * 3 * 8 / 1000, abs=0.5)
        assert "cannot be delivered" in answer["reason"]
        # ... and the session falls back to priority charging: full power now
        await node.wait_for(lambda: _is(node, st.id, EV_MAX_W), timeout=10)

        # Back to a reachable need and out of priority; prices cheap now: it charges at once.
        r = await node.http.put(
            f"/api/v1/transactions/{tx['id']}/preferences",
            json={"departure_time": departure.isoformat(), "energy_kwh": 20},
        )
        assert r.json()["status"] == "ACCEPTED"
        r = await node.http.delete(f"/api/v1/transactions/{tx['id']}/priority")
        assert r.status_code == 200 and r.json()["priority"] is False, r.text
        r = await node.http.put("/api/v1/sites/depot/forecast", json=_prices(node, dear_slots=0))
        assert r.status_code == 200
        await node.wait_for(lambda: _is(node, st.id, EV_MAX_W), timeout=10)

        flex = await node.http.get("/api/v1/sites/depot/flexibility", params={"slots": 4})
        assert flex.status_code == 200, flex.text
        rows = flex.json()
        assert len(rows) == 4
        assert all(x["min_kw"] <= x["planned_kw"] + 1e-6 <= x["max_kw"] + 2e-6 for x in rows)
        # charging now at full power: it could stop now and catch up later
        assert rows[0]["down_kw"] > 10
        assert st.stats.errors == 0, st.stats.error_samples
    finally:
        await st.stop()


async def _is(node: Node, station_id: str, watts: float) -> bool:
    p = await _power(node, station_id)
    return p is not None and abs(p - watts) < 15


async def test_forecast_and_plan_errors(node):
    r = await node.http.put("/api/v1/sites/nowhere/forecast", json=_prices(node, 1))
    assert r.status_code == 404
    await node.http.post("/api/v1/sites", json={"id": "s1", "import_limit_kw": 20})
    bad = _prices(node, 1) | {"pv_kw": [1.0, 2.0]}
    r = await node.http.put("/api/v1/sites/s1/forecast", json=bad)
    assert r.status_code == 422 and "same length" in r.text
    r = await node.http.put("/api/v1/sites/s1/forecast", json={"start": "2026-01-01T00:00:00"})
    assert r.status_code == 422  # naive time and no series
    r = await node.http.get("/api/v1/sites/nowhere/plan")
    assert r.status_code == 404
    r = await node.http.get("/api/v1/sites/s1/plan")
    assert r.status_code == 200 and r.json()["applied"] is False  # policy equal: a preview
    r = await node.http.patch("/api/v1/sites/s1", json={"policy": "optimal", "objective": "nope"})
    assert r.status_code == 422
    r = await node.http.get("/api/v1/sites/s1/flexibility", params={"slots": 0})
    assert r.status_code == 422


async def test_a_failing_scheduler_falls_back_to_deadline_sharing(mpc_node, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("solver gone")

    monkeypatch.setattr("evflex.smartcharging.manager.mpc_step", broken)
    node = mpc_node
    r = await node.http.post(
        "/api/v1/sites", json={"id": "depot", "import_limit_kw": 50, "policy": "optimal"}
    )
    assert r.status_code == 201, r.text
    st = await _station(node)
    try:
        assert await st.plug_in(1, EvSpec(), "GOOD")
        await node.wait_for(lambda: _is(node, st.id, EV_MAX_W), timeout=10)
        site = (await node.http.get("/api/v1/sites/depot")).json()
        assert site["plan"]["problems"] == [] and site["plan"]["evses"]  # planned and sent
        assert all(e["profile_status"] == "accepted" for e in site["plan"]["evses"])
    finally:
        await st.stop()
