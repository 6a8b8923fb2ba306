"""The driver page's API (session token, needs, fast charging) and the dashboard's site data."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import Node
from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.smartcharging.sitelog import site_kpis
from evflex.store.tables import Site, SiteSample, Station, Transaction

_ids = itertools.count(1)


async def _depot(node: Node, clock=None) -> SimStation:
    r = await node.http.post(
        "/api/v1/sites",
        json={"id": "depot", "import_limit_kw": 40, "policy": "optimal", "objective": "cost",
              "import_tariff_per_kwh": 0.30, "export_tariff_per_kwh": 0.12},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    start = node.rt.clock.now() - timedelta(minutes=1)
    r = await node.http.put(
        "/api/v1/sites/depot/forecast",
        json={"start": start.isoformat(), "slot_minutes": 15, "import_price": [0.2] * 96,
              "pv_kw": [5.0] * 96, "base_load_kw": [3.0] * 96},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(id=f"DRV-{next(_ids)}", ocpp_version="2.0.1")
    clock = clock or AcceleratedClock(60.0)
    st = SimStation(spec, node.ocpp_url, clock, meter_interval_s=60.0 * clock.speed, seed=1)
    await st.start(timeout=10.0)
    r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "depot"})
    assert r.status_code == 200, r.text
    return st


def _driver(node: Node, token: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.rt.http_port}/api/v1/driver",
        headers={"Authorization": f"Bearer {token}"} if token else {},
        timeout=10,
    )


async def test_driver_claims_session_sets_needs_and_charges_fast(site_node):
    node = site_node
    st = await _depot(node)
    try:
        async with _driver(node) as anon:
            r = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 1})
            assert (
                r.status_code == 404 and r.json()["detail"] == "no charging session on this charger"
            )
            assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
            await node.wait_for(lambda: node.transactions(active="true", station_id=st.id))
            r = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 1})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
            again = await anon.post("/sessions", json={"station_id": st.id, "evse_id": 1})
            assert again.status_code == 409 and "another device" in again.json()["detail"]
            assert (await anon.get("/session")).status_code == 401
            r = await anon.get("/session", headers={"Authorization": "Bearer drv_forged"})
            assert r.status_code == 401
            # the driver token is not an operator token
            assert (
                await anon.get("/../stations", headers={"Authorization": f"Bearer {token}"})
            ).status_code == 401

        async with _driver(node, token) as drv:
            s = (await drv.get("/session")).json()
            assert s["station_id"] == st.id and s["evse_id"] == 1 and s["active"]
            assert s["status"] == "NO_NEEDS" and "Tell us when you leave" in s["message"]
            assert s["import_price_per_kwh"] == 0.30 and s["can_discharge"] is False

            departure = datetime.now(UTC) + timedelta(hours=8)
            await node.wait_for(lambda: _soc(drv), timeout=10)
            soc = await _soc(drv)
            r = await drv.put(
                "/session/preferences",
                json={"departure_time": departure.isoformat(), "target_soc": 80, "battery_kwh": 60},
            )
            assert r.status_code == 200, r.text
            s = r.json()
            assert s["status"] == "ACCEPTED", s
            assert "You will have what you asked for" in s["message"]
            want = (80 - soc) / 100 * 60
            assert s["energy_target_kwh"] == pytest.approx(want + s["energy_kwh"], abs=0.3)
            assert s["expected_soc_at_departure"] == pytest.approx(80, abs=1.0)
            # the plan is a step series of total power; it brings what the verdict expects
            assert s["plan"] and _plan_kwh(s) == pytest.approx(want, abs=0.5)
            assert s["expected_kwh_at_departure"] == pytest.approx(
                s["energy_kwh"] + _plan_kwh(s), abs=0.05
            )
            assert s["battery_kwh"] == 60  # kept for the next visit of the page

            r = await drv.post("/session/fast")
            assert r.status_code == 200 and r.json()["priority"] is True
            tx = (await node.transactions(active="true", station_id=st.id))[0]
            assert tx["priority"] is True
            r = await drv.delete("/session/fast")
            assert r.status_code == 200 and r.json()["priority"] is False
            assert "charges as fast as it can" not in r.json()["message"]

            r = await drv.put(
                "/session/preferences",
                json={"departure_time": departure.isoformat(), "energy_kwh": 500},
            )
            s = r.json()
            assert s["status"] == "NOT_POSSIBLE", s
            assert "cannot be met" in s["message"] and "at most about" in s["message"]

            for bad in (
                {"energy_kwh": 10, "target_soc": 80},
                {"departure_time": (datetime.now(UTC) - timedelta(hours=1)).isoformat()},
                {"departure_time": "2030-01-01T10:00:00"},  # no time zone
                {"energy_kwh": -1},
            ):
                r = await drv.put("/session/preferences", json=bad)
                assert r.status_code == 422, (bad, r.text)

            await st.plug_out(1)
            await node.wait_for(lambda: _ended(node, st.id), timeout=10)
            r = await drv.get("/session")
            assert r.status_code == 401 and "ended" in r.json()["detail"]
            # a forged token and one of an ended session are security events, without the token
            r = await node.http.get("/api/v1/events", params={"kind": "Security"})
            refused = [e for e in r.json() if e["type"] == "InvalidDriverToken"]
            assert [e["detail"]["reason"] for e in refused] == [
                "driver token of an ended session",
                "unknown driver token",
            ]
            assert {e["detail"]["source"] for e in refused} == {"127.0.0.1"}
            assert token not in r.text and "drv_forged" not in r.text
    finally:
        await st.stop()


def _plan_kwh(s: dict) -> float:
    """Energy of the driver page's plan: each step holds until the next one (or plan_end)."""
    steps = s["plan"]
    ends = [x["start"] for x in steps[1:]] + [s["plan_end"]]
    return sum(
        x["power_kw"]
        * (datetime.fromisoformat(end) - datetime.fromisoformat(x["start"])).total_seconds()
        / 3600
        for x, end in zip(steps, ends, strict=True)
    )


async def _soc(drv) -> float | None:
    return (await drv.get("/session")).json()["soc_percent"]


async def _ended(node: Node, station_id: str) -> bool:
    return not await node.transactions(active="true", station_id=station_id)


async def test_site_samples_history_and_kpis(site_node):
    node = site_node
    st = await _depot(node, node.rt.clock)  # the station's times are the CSMS's
    try:
        assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
        await node.wait_for(lambda: _charging(node, st.id), timeout=10)

        async def two_samples_with_ev():
            h = (await node.http.get("/api/v1/sites/depot/history", params={"hours": 1})).json()
            with_ev = [x for x in h["samples"] if x["ev_import_kw"] > 0]
            return with_ev if len(with_ev) >= 2 else None

        samples = await node.wait_for(two_samples_with_ev, timeout=10)
        x = samples[-1]
        assert x["pv_kw"] == 5.0 and x["base_load_kw"] == 3.0 and x["import_limit_kw"] == 40
        assert x["price"] == 0.2
        assert x["net_kw"] == pytest.approx(x["ev_import_kw"] + 3.0 - 5.0, abs=1e-3)
        k = (await node.http.get("/api/v1/sites/depot/kpis", params={"period": "day"})).json()
        assert k["sessions"] == 1 and k["samples"] >= 2
        assert k["pv_kwh"] > 0 and 0 < k["pv_self_consumption_pct"] <= 100
        assert k["peak_kw"] is not None
        assert (await node.http.get("/api/v1/sites/nope/kpis")).status_code == 404
        assert (
            await node.http.get("/api/v1/sites/depot/kpis", params={"period": "year"})
        ).status_code == 422
    finally:
        await st.stop()


async def _charging(node: Node, station_id: str) -> bool:
    txs = await node.transactions(active="true", station_id=station_id)
    return bool(txs) and (txs[0]["power_w"] or 0) > 0


def test_kpis_against_uncontrolled_by_hand():
    """Two 11 kW sessions; the controlled site spread them, uncontrolled they overlap."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    site = Site(id="s", import_limit_w=20_000, phases=3, voltage=230.0)
    st = Station(id="A", evse_max_current_a=16.0, phases=3)
    # 16 A x 3 x 230 V = 11.04 kW; each session took 11.04 kWh, i.e. 1 h at full power
    txs = [
        (Transaction(started_at=t0, energy_imported_wh=11_040.0, energy_exported_wh=0.0,
                     state="ended", energy_target_wh=11_000.0, departure_at=t0 + timedelta(hours=4)), st),
        (Transaction(started_at=t0, energy_imported_wh=11_040.0, energy_exported_wh=0.0,
                     state="ended", energy_target_wh=20_000.0, departure_at=t0 + timedelta(hours=4)), st),
    ]  # fmt: skip
    # controlled: 5.52 kW each for 2 h, then nothing; PV 4 kW, load 1 kW all along
    samples = [
        SiteSample(site_id="s", ts=t0 + timedelta(minutes=15 * i),
                   ev_import_w=11_040.0 if i < 8 else 0.0, ev_export_w=0.0,
                   base_load_w=1000.0, pv_w=4000.0, price=0.5 if i < 4 else 0.1,
                   import_limit_w=20_000.0)
        for i in range(16)
    ]  # fmt: skip
    k = site_kpis(site, samples, txs, t0, t0 + timedelta(hours=4))
    assert k.peak_kw == pytest.approx(11.04 + 1 - 4)
    assert k.peak_uncontrolled_kw == pytest.approx(22.08 + 1 - 4)
    assert k.peak_reduction_pct == pytest.approx(100 * (1 - 8.04 / 19.08), abs=0.1)
    # uncontrolled: 19.08 kW for the first hour at 0.5; controlled: 8.04 kW for 2 h (1 h at 0.5)
    assert k.cost_uncontrolled == pytest.approx(19.08 * 0.5, abs=0.01)
    assert k.cost == pytest.approx(8.04 * 0.5 + 8.04 * 0.1, abs=0.01)
    assert k.cost_saving_pct == pytest.approx(100 * (1 - 4.824 / 9.54), abs=0.1)
    assert k.drivers_with_needs == 2 and k.drivers_served == 1 and k.drivers_served_pct == 50.0
    assert k.energy_imported_kwh == pytest.approx(22.08)
    # PV 4 kW: all used while the cars charge (2 h), 1 kW of it afterwards (2 h)
    assert k.pv_kwh == pytest.approx(16.0) and k.pv_self_consumption_pct == 62.5


def test_kpis_count_a_running_session_as_charging_flat_out():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    site = Site(id="s", import_limit_w=20_000, phases=3, voltage=230.0)
    st = Station(id="A", evse_max_current_a=16.0, phases=3)
    running = Transaction(started_at=t0, energy_imported_wh=500.0, energy_exported_wh=0.0,
                          state="active")  # fmt: skip
    samples = [
        SiteSample(site_id="s", ts=t0 + timedelta(minutes=15 * i), ev_import_w=2000.0,
                   ev_export_w=0.0, base_load_w=0.0, pv_w=0.0, price=None)
        for i in range(8)
    ]  # fmt: skip
    k = site_kpis(site, samples, [(running, st)], t0, t0 + timedelta(hours=2))
    assert k.peak_uncontrolled_kw == pytest.approx(11.04)  # not the 0.5 kWh it has so far
    assert k.peak_reduction_pct == pytest.approx(100 * (1 - 2 / 11.04), abs=0.1)
    assert k.cost is None and k.drivers_with_needs == 0  # no prices, nothing ended yet


async def test_a_site_value_the_store_does_not_know_is_refused(tmp_path):
    from evflex.store import repo
    from evflex.store.db import make_engine, make_sessionmaker, migrate

    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await migrate(engine)
    try:
        async with make_sessionmaker(engine)() as s:
            with pytest.raises(ValueError, match="not site fields: colour"):
                await repo.upsert_site(
                    s, "s", {"import_limit_w": 1.0, "colour": "red"}, datetime.now(UTC)
                )
    finally:
        await engine.dispose()
