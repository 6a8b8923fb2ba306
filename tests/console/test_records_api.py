"""Charge records and tariffs through the API, on SQLite and PostgreSQL.

A library 2.0.1 station reports a session with fixed readings (so that the cost is
known to the cent): it charges across a time-of-use boundary, feeds energy back,
stays plugged in idle, and repeats its Ended message. A simulated 2.1 station
with a bidirectional car discharges and charges for real; its record's energy
matches the transaction and its feed-in reward the exported kWh.
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from ocpp.v201 import call
from sqlalchemy import delete
from typer.testing import CliRunner

from conftest import Node, running_node, start_node
from evflex.cli import app as cli
from evflex.clock import AcceleratedClock
from evflex.sim import SimStation, StationSpec
from evflex.store.record_tables import ChargeRecord
from ocpp_clients import Lib201, connected
from sim.test_sim_v21 import _put_profile, bidi, profile

SITE = {"id": "depot", "import_limit_kw": 100, "import_tariff_per_kwh": 0.5}
TARIFF = {
    "energy_price_per_kwh": 0.30,
    "time_of_use": [],
    "feed_in_reward_per_kwh": 0.20,
    "idle_fee_per_minute": 0.05,
    "idle_grace_minutes": 10,
    "timezone": "Europe/Berlin",
}


def _sample(at: datetime, imported: float, exported: float, context: str) -> dict:
    return {
        "timestamp": at.isoformat(),
        "sampled_value": [
            {"value": imported, "measurand": "Energy.Active.Import.Register", "context": context},
            {"value": exported, "measurand": "Energy.Active.Export.Register", "context": context},
            {"value": 7400.0, "measurand": "Power.Active.Import", "context": context},
        ],
    }


async def _tx_event(cp, kind: str, seq: int, at: datetime, meter: dict, **more) -> None:
    await cp.call(
        call.TransactionEvent(
            event_type=kind,
            timestamp=at.isoformat(),
            trigger_reason="MeterValuePeriodic" if kind == "Updated" else "EVDetected",
            seq_no=seq,
            transaction_info={"transaction_id": "T-1", **more.pop("info", {})},
            offline=True,  # as sent from a queue: the CSMS keeps the station's times
            meter_value=[meter],
            **more,
        )
    )


async def _boot_at_depot(node: Node, cp, station_id: str) -> None:
    """The library station boots; the CSMS puts it on the site 'depot'."""
    boot = call.BootNotification(
        charging_station={"model": "R", "vendor_name": "L"}, reason="PowerUp"
    )
    await cp.call(boot)
    r = await node.http.patch(f"/api/v1/stations/{station_id}", json={"site_id": "depot"})
    assert r.status_code == 200, r.text


async def _records(node: Node, **params) -> httpx.Response:
    r = await node.http.get("/api/v1/charge-records", params=params)
    assert r.status_code == 200, r.text
    return r


async def test_a_session_is_priced_with_the_tariff_in_force(node: Node):
    await node.http.post("/api/v1/sites", json=SITE)
    # a tariff version that ends before the session is not the one that prices it
    old = {**TARIFF, "energy_price_per_kwh": 9.0, "time_of_use": []}
    past = datetime.now(UTC) - timedelta(days=3)
    r = await node.http.put(
        "/api/v1/sites/depot/tariff", json={**old, "valid_from": past.isoformat()}
    )
    assert r.status_code == 200, r.text
    # the session: one hour from 30 min before a full hour (the cheap window's start)
    hour = (datetime.now(UTC) - timedelta(hours=4)).replace(minute=0, second=0, microsecond=0)
    local = (hour + timedelta(hours=1)).astimezone(ZoneInfo("Europe/Berlin"))
    window = {
        "start": local.strftime("%H:%M"),
        "end": (local + timedelta(hours=2)).strftime("%H:%M"),
        "price_per_kwh": 0.10,
    }
    r = await node.http.put(
        "/api/v1/sites/depot/tariff",
        json={
            **TARIFF,
            "time_of_use": [window],
            "valid_from": (hour - timedelta(days=1)).isoformat(),
        },
    )
    assert r.status_code == 200, r.text
    version = r.json()["version"]

    start = hour + timedelta(minutes=30)
    async with connected(Lib201, node.ocpp_url, "REC-1", "ocpp2.0.1") as cp:
        await _boot_at_depot(node, cp, "REC-1")
        evse = {"id": 1, "connector_id": 1}
        await _tx_event(
            cp, "Started", 0, start, _sample(start, 1000.0, 500.0, "Transaction.Begin"),
            evse=evse, id_token={"id_token": "CARD-00123456", "type": "ISO14443"},
        )  # fmt: skip
        # 10 kWh in one hour, half before the boundary; 2 kWh fed back in the same hour
        at = start + timedelta(hours=1)
        await _tx_event(cp, "Updated", 1, at, _sample(at, 11000.0, 2500.0, "Sample.Periodic"))
        stop = at + timedelta(minutes=30)  # plugged in and idle for 30 min
        ended = _sample(stop, 11000.0, 2500.0, "Transaction.End")
        await _tx_event(cp, "Ended", 2, stop, ended, info={"stopped_reason": "EVDisconnected"})
        await _tx_event(cp, "Ended", 2, stop, ended, info={"stopped_reason": "EVDisconnected"})

    r = await _records(node)
    assert r.headers["X-Total-Count"] == "1"  # the repeated Ended created nothing
    [rec] = r.json()
    tx = (await node.transactions(station_id="REC-1"))[0]
    assert rec["transaction"] == tx["id"] and rec["station_id"] == "REC-1"
    assert rec["site_id"] == "depot" and rec["evse_id"] == 1 and rec["connector_id"] == 1
    assert rec["id_token"] == "CARD-00123456"  # an admin sees it whole
    assert rec["energy_imported_kwh"] == pytest.approx(10.0)
    assert rec["energy_exported_kwh"] == pytest.approx(2.0)
    assert rec["energy_imported_kwh"] == pytest.approx(tx["energy_imported_wh"] / 1000)
    assert rec["peak_import_kw"] == pytest.approx(7.4) and rec["peak_export_kw"] is None
    assert datetime.fromisoformat(rec["started_at"]) == start
    assert rec["duration_s"] == pytest.approx(90 * 60)
    assert rec["stop_reason"] == "EVDisconnected"
    assert rec["idle_s"] == pytest.approx(30 * 60)
    assert rec["need_met"] == "unknown"
    assert rec["currency"] == "EUR"
    # 5 kWh at 0.30 + 5 kWh at 0.10; 2 kWh x 0.20 back; (30 - 10) min x 0.05 idle
    assert rec["energy_cost"] == pytest.approx(2.0)
    assert rec["feed_in_reward"] == pytest.approx(0.4)
    assert rec["idle_fee"] == pytest.approx(1.0)
    assert rec["total_cost"] == pytest.approx(2.6)
    detail = (await node.http.get(f"/api/v1/charge-records/{rec['id']}")).json()
    assert detail["tariff"]["version"] == version
    periods = {d["period"]: d for d in detail["cost_detail"]}
    assert periods["base"]["kwh"] == pytest.approx(5.0)
    assert periods[f"{window['start']}-{window['end']}"]["cost"] == pytest.approx(0.5)
    # a new version later on changes nothing already recorded
    r = await node.http.put("/api/v1/sites/depot/tariff", json={**TARIFF, "time_of_use": []})
    assert r.status_code == 200, r.text
    tariff = (await node.http.get("/api/v1/sites/depot/tariff")).json()
    assert [t["version"] for t in tariff["history"]][1] == version
    assert tariff["current"]["version"] == r.json()["version"]
    assert (await node.http.get(f"/api/v1/charge-records/{rec['id']}")).json() == detail
    # the bill of the ended transaction is its record's
    bill = (await node.http.get(f"/api/v1/transactions/{tx['id']}/bill")).json()
    assert bill["total"] == pytest.approx(2.6) and bill["import_cost"] == pytest.approx(2.0)

    # roles: a viewer sees the card masked and may not filter by it nor set a tariff
    viewer = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('viewer')}"}
    operator = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('operator')}"}
    r = await node.http.get("/api/v1/charge-records", headers=viewer)
    assert r.json()[0]["id_token"] == "****3456"
    r = await node.http.get("/api/v1/charge-records.csv", headers=viewer)
    assert "****3456" in r.text and "CARD-00123456" not in r.text
    r = await node.http.get(
        "/api/v1/charge-records", params={"id_token": "CARD-00123456"}, headers=viewer
    )
    assert r.status_code == 403, r.text
    r = await node.http.get(
        "/api/v1/charge-records", params={"id_token": "CARD-00123456"}, headers=operator
    )
    assert r.status_code == 200 and len(r.json()) == 1
    r = await node.http.put("/api/v1/sites/depot/tariff", json=TARIFF, headers=operator)
    assert r.status_code == 403, r.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_v2x_session_gets_a_feed_in_reward(database_url):
    """A 2.1 station's bidirectional car discharges, then charges; the site has no tariff
    version, so its own import/export prices price the record (its site when it ended)."""
    clock = AcceleratedClock(120.0)
    rt, http = await start_node(database_url, clock=clock, allow_unknown_stations=True)
    node = Node(rt, http)
    st = None
    try:
        await http.post("/api/v1/id-tokens", json={"id_token": "V2X-CARD", "status": "Accepted"})
        site = {**SITE, "import_tariff_per_kwh": 0.4, "export_tariff_per_kwh": 0.25}
        assert (await http.post("/api/v1/sites", json=site)).status_code == 201
        st = SimStation(StationSpec(id="V2X-R", ocpp_version="2.1", evses=1), node.ocpp_url, clock,
                        meter_interval_s=30.0, seed=3)  # fmt: skip
        await st.start(timeout=10.0)
        assert await st.plug_in(1, bidi(battery_kwh=40.0, soc=0.6), "V2X-CARD")
        tx = (await node.wait_for(lambda: node.transactions(station_id="V2X-R")))[0]
        r = await http.put(
            f"/api/v1/transactions/{tx['id']}/preferences", json={"allow_discharge": True}
        )
        assert r.status_code == 200, r.text
        setpoint = {"operationMode": "CentralSetpoint", "setpoint": -6000.0, "limit": 11000.0,
                    "dischargeLimit": -11000.0}  # fmt: skip
        await _put_profile(node, "V2X-R", 1, profile([setpoint], pid=61))
        await node.wait_for(lambda: st.evse(1).export_wh > 400, timeout=20)
        await _put_profile(node, "V2X-R", 1, profile([{**setpoint, "setpoint": 6000.0}], pid=61))
        await node.wait_for(lambda: st.evse(1).power_w > 0, timeout=10)
        await clock.sleep(120)
        # the site (load management: it would steer the car) only when it leaves
        assert (await http.patch("/api/v1/stations/V2X-R", json={"site_id": "depot"})).is_success
        await st.plug_out(1)
        [rec] = await node.wait_for(lambda: _json_if_any(node, station_id="V2X-R"))
        tx = (await node.transactions(station_id="V2X-R"))[0]
        assert rec["energy_exported_kwh"] == pytest.approx(
            tx["energy_exported_wh"] / 1000, abs=1e-3
        )
        assert rec["energy_imported_kwh"] == pytest.approx(
            tx["energy_imported_wh"] / 1000, abs=1e-3
        )
        assert rec["energy_exported_kwh"] > 0.4 and rec["energy_imported_kwh"] > 0
        assert rec["feed_in_reward"] == pytest.approx(rec["energy_exported_kwh"] * 0.25, abs=1e-3)
        assert rec["energy_cost"] == pytest.approx(rec["energy_imported_kwh"] * 0.4, abs=1e-3)
        assert rec["discharging_s"] > 0 and rec["charging_s"] > 0
        assert rec["peak_export_kw"] == pytest.approx(6.0, abs=0.1)
        detail = (await http.get(f"/api/v1/charge-records/{rec['id']}")).json()
        assert detail["tariff"]["source"] == "site"
    finally:
        if st is not None:
            await st.stop(timeout=2.0)
        await http.aclose()
        await rt.stop()


async def _json_if_any(node: Node, **params) -> list[dict]:
    return (await _records(node, **params)).json()


async def test_paging_filters_csv_and_bad_input(node: Node):
    await node.http.post("/api/v1/sites", json=SITE)
    t0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    async with connected(Lib201, node.ocpp_url, "REC-2", "ocpp2.0.1") as cp:
        await _boot_at_depot(node, cp, "REC-2")
        for i in range(3):
            at = t0 + timedelta(hours=i)
            meter = _sample(at, 1000.0 * i, 0.0, "Transaction.Begin")
            info = {"info": {"transaction_id": f"P-{i}"}}
            await _tx_event(cp, "Started", 0, at, meter, evse={"id": 1, "connector_id": 1},
                            id_token={"id_token": f"=CARD{i}", "type": "ISO14443"}, **info)  # fmt: skip
            end = at + timedelta(minutes=20)
            meter = _sample(end, 1000.0 * i + 500, 0.0, "Transaction.End")
            await _tx_event(cp, "Ended", 1, end, meter, **info)
    r = await _records(node, limit=2)
    assert r.headers["X-Total-Count"] == "3"
    page1 = r.json()
    assert [x["transaction_id"] for x in page1] == ["P-2", "P-1"]  # newest first
    nxt = r.headers["Link"].split(";")[0].strip("<>")
    r2 = await node.http.get(nxt)
    assert [x["transaction_id"] for x in r2.json()] == ["P-0"] and "Link" not in r2.headers
    r = await _records(node, **{"from": (t0 + timedelta(minutes=30)).isoformat(),
                                "to": (t0 + timedelta(hours=2)).isoformat()})  # fmt: skip
    assert [x["transaction_id"] for x in r.json()] == ["P-1"]
    assert (await _records(node, station_id="nope")).headers["X-Total-Count"] == "0"
    assert (await _records(node, site_id="depot")).headers["X-Total-Count"] == "3"
    assert (await _records(node, id_token="=CARD0")).json()[0]["transaction_id"] == "P-0"
    # CSV: same filters, a header row, one row per record, the currency beside the amounts
    r = await node.http.get("/api/v1/charge-records.csv", params={"site_id": "depot"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 3 and {x["currency"] for x in rows} == {"EUR"}
    assert rows[0]["energy_imported_kwh"] == "0.5" and rows[0]["total_cost"] == "0.25"
    assert rows[0]["id_token"] == "'=CARD2"  # never a spreadsheet formula
    # bad input
    bad = [
        ("/api/v1/charge-records", {"from": "2026-03-02T10:00:00Z", "to": "2026-03-02T09:00:00Z"}),
        ("/api/v1/charge-records", {"limit": 1001}),
        ("/api/v1/charge-records", {"offset": -1}),
        ("/api/v1/charge-records", {"from": "yesterday"}),
        ("/api/v1/charge-records", {"from": "0001-01-01T00:00:00+14:00"}),
        ("/api/v1/charge-records.csv", {"from": "2026-03-02T10:00:00Z", "to": "2026-03-01"}),
    ]
    for path, params in bad:
        r = await node.http.get(path, params=params)
        assert r.status_code == 422, (params, r.text)
    assert (await node.http.get("/api/v1/charge-records/999999")).status_code == 404
    assert (await node.http.get("/api/v1/sites/nope/tariff")).status_code == 404
    r = await node.http.put("/api/v1/sites/nope/tariff", json={**TARIFF, "time_of_use": []})
    assert r.status_code == 404, r.text
    w = {"start": "08:00", "end": "12:00", "price_per_kwh": 0.1}
    for body, reason in [
        ({"time_of_use": [w, {**w, "start": "11:00", "end": "13:00"}]}, "overlap"),
        ({"time_of_use": [w, {**w, "start": "22:00", "end": "09:00"}]}, "overlap"),
        ({"time_of_use": [{**w, "start": "8:00"}]}, "HH:MM"),
        ({"time_of_use": [{**w, "end": "24:30"}]}, "24:00"),
        ({"time_of_use": [{**w, "end": "08:00"}]}, "empty"),
        ({"time_of_use": [{**w, "price_per_kwh": -1}]}, "greater than or equal"),
        ({"energy_price_per_kwh": -0.1}, "greater than or equal"),
        ({"idle_fee_per_minute": -1}, "greater than or equal"),
        ({"timezone": "Mars/Olympus"}, "IANA"),
        ({"valid_from": "9999-12-31T23:59:59-14:00"}, "beyond"),
        ({"time_of_use": [{**w, "days": ["Mon", "Mon"]}]}, "overlap"),
        ({"surcharge": 1}, "extra"),
    ]:
        r = await node.http.put("/api/v1/sites/depot/tariff", json={**TARIFF, **body})
        assert r.status_code == 422 and reason in r.text, (body, r.text)
    r = await node.http.put(
        "/api/v1/sites/depot/tariff",
        content=b'{"energy_price_per_kwh": NaN}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422, r.text
    # weekday windows that touch but do not overlap, and a negative feed-in, are fine
    ok = {"time_of_use": [w, {**w, "start": "12:00", "end": "08:00", "days": ["Sat"]}],
          "feed_in_reward_per_kwh": -0.02}  # fmt: skip
    r = await node.http.put("/api/v1/sites/depot/tariff", json={**TARIFF, **ok})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_currency_setting(database_url):
    with pytest.raises(ValueError, match="currency"):
        async with running_node(database_url, currency="eur"):
            pass
    async with running_node(database_url, currency="CHF") as node:
        await node.http.post("/api/v1/sites", json=SITE)
        assert (await node.http.get("/api/v1/sites/depot/tariff")).json()["currency"] == "CHF"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_records_rebuild_writes_the_missing_ones(database_url):
    """A session that ended without a record (as before records existed) gets one from
    `evflex records rebuild`, priced like the one written at its end; a second run adds none."""
    async with running_node(database_url, allow_unknown_stations=True) as node:
        await node.http.post("/api/v1/sites", json=SITE)
        at = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
        async with connected(Lib201, node.ocpp_url, "REC-3", "ocpp2.0.1") as cp:
            await _boot_at_depot(node, cp, "REC-3")
            meter = _sample(at, 0.0, 0.0, "Transaction.Begin")
            await _tx_event(cp, "Started", 0, at, meter, evse={"id": 1, "connector_id": 1})
            end = at + timedelta(minutes=30)
            await _tx_event(cp, "Ended", 1, end, _sample(end, 4000.0, 0.0, "Transaction.End"))
        [written] = (await _records(node)).json()
        async with node.rt.sessionmaker() as s, s.begin():
            await s.execute(delete(ChargeRecord))
    runner = CliRunner()
    args = ["records", "rebuild", "--database-url", database_url]
    r = await asyncio.to_thread(runner.invoke, cli, args)
    assert r.exit_code == 0 and "1 charge record(s) written" in r.output, r.output
    r = await asyncio.to_thread(runner.invoke, cli, args)
    assert "0 charge record(s) written" in r.output, r.output
    async with running_node(database_url) as node:
        [rebuilt] = (await _records(node)).json()
    assert rebuilt["total_cost"] == written["total_cost"] == pytest.approx(4 * 0.5)
    same = ("transaction", "energy_imported_kwh", "started_at", "stopped_at", "idle_s")
    assert {k: rebuilt[k] for k in same} == {k: written[k] for k in same}
