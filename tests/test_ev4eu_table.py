"""EV4EU integration table (seed 000 §4.3, Table 1): each row, for 1.6 and 2.0.1.

Our simulator plays the station against a real evflex node (SQLite and
PostgreSQL); each row is checked from the CSMS side through the REST API.
"""

from __future__ import annotations

import pytest

from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec


def version_id(v: str) -> str:
    return "v" + v.replace(".", "")


@pytest.fixture(params=["1.6", "2.0.1"], ids=version_id)
async def station(request, node):
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(id=f"T1-{version_id(request.param)}", ocpp_version=request.param,
                       evses=2, vendor="Acme", model="Wallbox", serial="SN-7",
                       firmware="2.3.4", iccid="89314404")
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(60.0), meter_interval_s=60.0,
                    heartbeat_interval_s=60, seed=1)
    await st.start()
    try:
        yield st
    finally:
        await st.stop()


def statuses(st_json: dict) -> dict[int, str]:
    return {c["evse_id"]: c["status"] for c in st_json["connectors"]}


async def test_row_boot_notification(node, station):
    st = await node.station(station.id)
    assert st["connected"] and st["ocpp_version"] == station.spec.ocpp_version
    assert (st["vendor"], st["model"], st["serial_number"], st["firmware_version"],
            st["iccid"]) == ("Acme", "Wallbox", "SN-7", "2.3.4", "89314404")


async def test_row_heartbeat_and_trigger(node, station):
    before = (await node.station(station.id))["last_heartbeat_at"]
    r = await node.command(station.id, "trigger-message", {"message": "Heartbeat"})
    assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted"
    await node.wait_for(
        lambda: _changed(node, station.id, "last_heartbeat_at", before))


async def _changed(node, station_id, key, old):
    return (await node.station(station_id))[key] != old


async def test_row_change_availability(node, station):
    await node.wait_for(lambda: _status_is(node, station.id, 1, "Available"))
    r = await node.command(station.id, "change-availability", {"operative": False, "evse": 1})
    assert r.json()["response"]["status"] == "Accepted"
    await node.wait_for(lambda: _status_is(node, station.id, 1, "Unavailable"))
    r = await node.command(station.id, "change-availability", {"operative": True, "evse": 1})
    assert r.json()["response"]["status"] == "Accepted"
    await node.wait_for(lambda: _status_is(node, station.id, 1, "Available"))
    if station.spec.ocpp_version == "1.6":  # 1.6 reports connector 0 too
        assert 0 in statuses(await node.station(station.id))


async def _status_is(node, station_id, evse, status):
    return statuses(await node.station(station_id)).get(evse) == status


async def test_row_get_and_set_configuration(node, station):
    if station.spec.ocpp_version == "1.6":
        r = await node.command(station.id, "get-configuration", {})
        keys = {k["key"] for k in r.json()["response"]["configurationKey"]}
        assert len(keys) >= 15 and "MeterValueSampleInterval" in keys
        r = await node.command(station.id, "change-configuration",
                               {"key": "MeterValueSampleInterval", "value": "30"})
        assert r.json()["response"]["status"] == "Accepted"
        r = await node.command(station.id, "get-configuration",
                               {"keys": ["MeterValueSampleInterval"]})
        assert r.json()["response"]["configurationKey"][0]["value"] == "30"
    else:
        ref = {"component": "SampledDataCtrlr", "variable": "TxUpdatedInterval"}
        r = await node.command(station.id, "set-variables", {"variables": [dict(ref, value="30")]})
        assert r.json()["response"]["setVariableResult"][0]["attributeStatus"] == "Accepted"
        r = await node.command(station.id, "get-variables", {"variables": [ref]})
        assert r.json()["response"]["getVariableResult"][0]["attributeValue"] == "30"
        r = await node.command(station.id, "get-base-report", {"report": "FullInventory",
                                                               "request_id": 77})
        assert r.json()["response"]["status"] == "Accepted"

        async def reported():
            ev = (await node.http.get("/api/v1/events", params={
                "station_id": station.id, "kind": "report"})).json()
            return ev and ev[-1]["detail"]["requestId"] == 77 and ev[-1]["detail"]["reportData"]

        await node.wait_for(reported)


async def test_row_local_start_with_authorize_and_local_stop(node, station):
    ev = EvSpec(battery_kwh=60, soc=0.3, target_soc=0.9, max_ac_power_w=11_000, phases=3)
    assert await station.plug_in(1, ev, "GOOD")
    tx = (await node.wait_for(lambda: node.transactions(active="true",
                                                        station_id=station.id)))[0]
    assert tx["id_token"] == "GOOD" and tx["evse_id"] == 1
    await node.wait_for(lambda: _status_is(node, station.id, 1,
                                           "Charging" if station.spec.ocpp_version == "1.6"
                                           else "Occupied"))

    async def energy_flows():
        t = (await node.transactions(station_id=station.id))[0]
        return t["energy_imported_wh"] > 0 and t["power_w"] and t["power_w"] > 0

    await node.wait_for(energy_flows, timeout=10)
    await station.plug_out(1)

    async def ended():
        t = (await node.transactions(station_id=station.id))[0]
        return not t["active"] and t

    t = await node.wait_for(ended)
    assert t["stop_reason"] == "EVDisconnected"
    await node.wait_for(lambda: _status_is(node, station.id, 1, "Available"))


async def test_row_local_start_not_approved_stops(node, station):
    ok = await station.plug_in(2, EvSpec(), "STRANGER")
    assert ok is False
    txs = await node.transactions(station_id=station.id, active="true")
    assert txs == []  # 1.6: never started; 2.0.1: started at plug-in, ended DeAuthorized


async def test_row_remote_start_and_remote_stop(node, station):
    r = await node.command(station.id, "remote-start", {"id_token": "GOOD", "evse": 1})
    assert r.json()["response"]["status"] == "Accepted"
    tx = (await node.wait_for(lambda: node.transactions(active="true",
                                                        station_id=station.id)))[0]
    r = await node.command(station.id, "remote-stop", {"transaction_id": tx["transaction_id"]})
    assert r.json()["response"]["status"] == "Accepted"

    async def stopped():
        t = (await node.transactions(station_id=station.id))[0]
        return not t["active"] and t

    t = await node.wait_for(stopped)
    assert t["stop_reason"] == "Remote"


async def test_row_meter_readings(node, station):
    assert await station.plug_in(1, EvSpec(max_ac_power_w=7_400, phases=1), "GOOD")

    async def enough():
        mv = (await node.http.get(f"/api/v1/stations/{station.id}/meter-values")).json()
        measurands = {m["measurand"] for m in mv}
        contexts = {m["context"] for m in mv}
        return ({"Energy.Active.Import.Register", "Power.Active.Import", "Voltage",
                 "Current.Import"} <= measurands
                and {"Transaction.Begin", "Sample.Periodic"} <= contexts)

    await node.wait_for(enough, timeout=10)
    await station.plug_out(1)

    async def end_sample():
        mv = (await node.http.get(f"/api/v1/stations/{station.id}/meter-values")).json()
        return "Transaction.End" in {m["context"] for m in mv}

    await node.wait_for(end_sample)


@pytest.mark.parametrize("kind", ["soft", "hard"])
async def test_row_reset_station_comes_back_online(node, station, kind):
    boots = station.boot_count
    r = await node.command(station.id, "reset", {"type": kind})
    assert r.json()["response"]["status"] == "Accepted"
    await node.wait_for(lambda: station.boot_count > boots, timeout=10)

    async def booted_again():
        events = (await node.http.get("/api/v1/events", params={
            "station_id": station.id, "kind": "boot"})).json()
        return len(events) >= 2

    await node.wait_for(booted_again)
    await node.wait_for(lambda: node.rt.ocpp.is_connected(station.id))


async def test_row_reservation_and_local_list(node, station):
    r = await node.command(station.id, "reserve-now", {
        "id_token": "GOOD", "expiry": "2099-01-01T00:00:00Z", "evse": 2, "reservation_id": 41})
    assert r.json()["response"]["status"] == "Accepted"
    await node.wait_for(lambda: _status_is(node, station.id, 2, "Reserved"))
    r = await node.command(station.id, "cancel-reservation", {"reservation_id": 41})
    assert r.json()["response"]["status"] == "Accepted"
    await node.wait_for(lambda: _status_is(node, station.id, 2, "Available"))
    r = await node.command(station.id, "send-local-list", {"version": 3})
    assert r.json()["response"]["status"] == "Accepted"
    r = await node.command(station.id, "get-local-list-version", {})
    assert r.json()["response"]["listVersion" if station.spec.ocpp_version == "1.6"
                                 else "versionNumber"] == 3


async def test_h1_simulated_station_with_password(strict_node):
    node = strict_node
    await node.http.post("/api/v1/stations", json={"id": "SIM-PW", "password": "sim-secret-0123456"})
    st = SimStation(StationSpec(id="SIM-PW", ocpp_version="2.0.1",
                                password="sim-secret-0123456"), node.ocpp_url, seed=2)
    await st.start()
    try:
        assert (await node.station("SIM-PW"))["connected"] is True
    finally:
        await st.stop()
