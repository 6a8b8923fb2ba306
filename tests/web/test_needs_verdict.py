"""One verdict on a driver's need for the operator API, the dashboard and the driver page;
the preferences API refuses bad values with 422; turning priority off sticks; the driver
API tells an unknown charger from a charger without a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from conftest import Node
from evflex.sim import EvSpec
from web.test_driver_and_site_data import _depot, _driver


@pytest.fixture
async def depot(site_node):
    """A station on the depot site for the test, stopped after it."""
    st = await _depot(site_node)
    try:
        yield st
    finally:
        await st.stop()


async def _active_tx(node: Node, station_id: str) -> dict:
    return (await node.wait_for(lambda: node.transactions(active="true", station_id=station_id)))[0]


def _net_wh(tx: dict) -> float:
    """Energy into the car so far (imported minus exported)."""
    return (tx["energy_imported_wh"] or 0.0) - (tx["energy_exported_wh"] or 0.0)


async def _with_ev_needs(node: Node, station_id: str) -> list[dict]:
    txs = await node.transactions(active="true", station_id=station_id)
    return txs if txs and txs[0]["energy_target_wh"] is not None else []


async def _verdict(node: Node, tx_id: int) -> dict:
    r = await node.http.get("/api/v1/needs", params={"site_id": "depot"})
    assert r.status_code == 200, r.text
    return next(v for v in r.json() if v["transaction"] == tx_id)


async def _state_need(node: Node, tx_id: int, hours: float, kwh: float):
    """The operator states a need: ``kwh`` more, leaving in ``hours``."""
    departure = datetime.now(UTC) + timedelta(hours=hours)
    return await node.http.put(
        f"/api/v1/transactions/{tx_id}/preferences",
        json={"departure_time": departure.isoformat(), "energy_kwh": kwh},
    )


async def test_preferences_api_refuses_bad_values_with_422(site_node, depot):
    node = site_node
    st = depot
    assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
    await _active_tx(node, st.id)
    # the car states its own needs first (ISO 15118): wait for them, then compare
    before = (await node.wait_for(lambda: _with_ev_needs(node, st.id)))[0]
    url = f"/api/v1/transactions/{before['id']}/preferences"
    later = datetime.now(UTC) + timedelta(hours=3)
    for bad, why in (
        ({"departure_time": "2030-01-01T10:00:00", "energy_kwh": 10}, "timezone"),
        ({"departure_time": later.isoformat(), "energy_kwh": -1}, "greater than 0"),
        ({"departure_time": (datetime.now(UTC) - timedelta(hours=1)).isoformat()}, "past"),
        ({"energy_kwh": 10, "target_soc": 80}, "target_soc"),
    ):
        r = await node.http.put(url, json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert why in r.text, (bad, r.text)
    # nothing of it was stored
    after = await _active_tx(node, st.id)
    assert after["departure_at"] == before["departure_at"]
    assert after["energy_target_wh"] == before["energy_target_wh"]


async def test_one_verdict_for_the_api_the_dashboard_and_the_driver(site_node, depot):
    """A need the site cannot meet is stored, answered NOT_POSSIBLE with the best reachable
    figure, and counted at risk everywhere, also once the session is in priority."""
    node = site_node
    st = depot
    assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
    tx = await _active_tx(node, st.id)
    async with _driver(node) as anon:
        r = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 1})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
    r = await _state_need(node, tx["id"], hours=4, kwh=501.9)
    assert r.status_code == 200, r.text
    a = r.json()
    assert a["status"] == "NOT_POSSIBLE" and a["need_status"] == "NOT_POSSIBLE", a
    assert a["accepted"] is False and "cannot be delivered" in a["reason"]
    assert 0 < a["planned_kwh"] <= a["deliverable_kwh"] < 501.9
    # saved all the same: the driver asked for it. The need counts from the energy the
    # car had when it was stated (it charges on meanwhile), and the answer quotes what
    # was still wanted when it was made: the stated need less what came since.
    stored = await _active_tx(node, st.id)
    target_wh = stored["energy_target_wh"]
    assert 501_900 + _net_wh(tx) - 2 <= target_wh <= 501_900 + _net_wh(stored) + 2
    assert target_wh - _net_wh(stored) - 2 <= a["requested_kwh"] * 1000 <= 501_900 + 2

    v = await _verdict(node, tx["id"])
    assert v["status"] == "NOT_POSSIBLE" and v["at_risk"] is True
    assert v["best_kwh"] == pytest.approx(a["deliverable_kwh"], abs=0.3)
    assert v["expected_kwh"] == pytest.approx(a["planned_kwh"], abs=0.3)

    async with _driver(node, token) as drv:
        s = (await drv.get("/session")).json()
    assert s["status"] == "NOT_POSSIBLE"
    assert s["need_kwh"] == pytest.approx(v["need_kwh"], abs=0.3)
    # one computation: what the plan brings never exceeds the most reachable, and the
    # sentence quotes that figure
    assert s["best_kwh_at_departure"] == pytest.approx(s["energy_kwh"] + v["best_kwh"], abs=0.3)
    assert s["expected_kwh_at_departure"] <= s["best_kwh_at_departure"] + 1e-6
    assert f"{s['best_kwh_at_departure']:.1f} kWh" in s["message"]

    # in priority charging the need is still at risk (a need the site cannot meet)
    r = await node.http.post(f"/api/v1/transactions/{tx['id']}/priority")
    assert r.status_code == 200 and r.json()["priority"] is True
    assert r.json()["need_status"] == "NOT_POSSIBLE"
    v = await _verdict(node, tx["id"])
    assert v["priority"] is True and v["at_risk"] is True


async def test_ending_priority_is_accepted_and_stays_off(site_node, depot):
    node = site_node
    st = depot
    assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
    tx = await _active_tx(node, st.id)
    r = await _state_need(node, tx["id"], hours=2, kwh=400)
    assert r.status_code == 200 and r.json()["status"] == "NOT_POSSIBLE"
    r = await node.http.post(f"/api/v1/transactions/{tx['id']}/priority")
    assert r.status_code == 200 and r.json()["priority"] is True

    r = await node.http.delete(f"/api/v1/transactions/{tx['id']}/priority")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["accepted"] is True and out["status"] == "ACCEPTED", out
    assert out["priority"] is False
    assert out["need_status"] == "NOT_POSSIBLE"  # the need itself is still at risk
    # the load manager plans the site again (events, ticks): priority stays off
    await node.rt.lm.rebalance_now("depot")
    await node.rt.lm.rebalance_now("depot")
    assert (await _active_tx(node, st.id))["priority"] is False
    v = await _verdict(node, tx["id"])
    assert v["priority"] is False and v["at_risk"] is True


async def test_driver_api_says_no_such_charger(site_node, depot):
    node = site_node
    st = depot
    async with _driver(node) as anon:
        r = await anon.post("/sessions", json={"station_id": "NOPE", "evse_id": 9})
        assert r.status_code == 404 and r.json()["detail"].startswith("no such charger")
        r = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 9})
        assert r.status_code == 404 and r.json()["detail"].startswith("no such charger")
        r = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 1})
        assert r.status_code == 404
        assert r.json()["detail"] == "no charging session on this charger"
