"""Advanced monitoring (OCPP 2.0.1 N: SetVariableMonitoring, NotifyEvent), end to end.

A real evflex node (SQLite and PostgreSQL) and simulated 2.0.1 stations on an
accelerated clock: monitors are installed through the REST API, fire on the
station's clock and their values reach the CSMS's live cache.
"""

from __future__ import annotations

import asyncio
import json
import statistics

import pytest

from evflex.clock import AcceleratedClock, parse_datetime
from evflex.csms.monitoring import set_reporting_interval
from evflex.sim import EvSpec, SimStation, StationSpec

#: Clock speed of the simulated stations: one clock-second is 50 real milliseconds.
SPEED = 20.0


@pytest.fixture
async def made():
    stations: list[SimStation] = []
    yield stations
    await asyncio.gather(*(s.stop(timeout=2.0) for s in stations))


async def start_station(node, made, station_id: str, version: str = "2.0.1", evses: int = 2):
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(id=station_id, ocpp_version=version, evses=evses)
    st = SimStation(
        spec,
        node.ocpp_url,
        AcceleratedClock(SPEED),
        meter_interval_s=300.0,
        heartbeat_interval_s=60,
        seed=1,
    )
    made.append(st)
    await st.start(timeout=10)

    async def statuses_known():  # the CSMS learnt the EVSEs from StatusNotification
        connectors = (await node.station(station_id))["connectors"]
        return len({c["evse_id"] for c in connectors if c["evse_id"] > 0}) == evses

    await node.wait_for(statuses_known)
    return st


async def event_data(node, station_id: str) -> list[dict]:
    """All eventData items the CSMS logged for the station, oldest first."""
    r = await node.http.get(
        "/api/v1/events", params={"station_id": station_id, "kind": "notify_event", "limit": 10_000}
    )
    assert r.status_code == 200, r.text
    return [item for e in reversed(r.json()) for item in e["detail"]["eventData"]]


def of_monitor(items: list[dict], monitor_id: int) -> list[dict]:
    return [i for i in items if i.get("variableMonitoringId") == monitor_id]


async def wait_events(node, station_id: str, monitor_id: int, count: int, timeout: float = 8.0):
    """Wait until the CSMS logged ``count`` events of a monitor; returns them (oldest first)."""

    async def enough():
        found = of_monitor(await event_data(node, station_id), monitor_id)
        return found if len(found) >= count else None

    return await node.wait_for(enough, timeout=timeout, interval=0.05)


async def set_monitors(node, station_id: str, *monitors: dict) -> list[dict]:
    r = await node.http.post(
        f"/api/v1/stations/{station_id}/monitoring", json={"monitors": list(monitors)}
    )
    assert r.status_code == 200, r.text
    return r.json()["results"]


async def live(node, station_id: str, **params) -> list[dict]:
    r = await node.http.get(f"/api/v1/stations/{station_id}/live", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def power(evse: int, type_: str, value: float, **kw) -> dict:
    return {
        "component": "EVSE",
        "evse": evse,
        "variable": "Power",
        "type": type_,
        "value": value,
        **kw,
    }


async def sim_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds / SPEED)


# ---------------------------------------------------------------------------


async def test_thresholds_delta_and_transaction_monitors_follow_the_evse_power(node, made):
    st = await start_station(node, made, "MON-T")
    results = await set_monitors(
        node,
        st.id,
        power(1, "UpperThreshold", 5000, severity=4),
        power(1, "LowerThreshold", 1000, severity=4),
        power(1, "Delta", 2000, severity=6),
        power(1, "Periodic", 1, severity=8, transaction=True),
    )
    assert [r["status"] for r in results] == ["Accepted"] * 4
    upper, lower, delta, in_tx = (r["id"] for r in results)
    assert len({upper, lower, delta, in_tx}) == 4

    # Idle: 0 W is below the lower threshold; nothing else fires.
    (alert,) = await wait_events(node, st.id, lower, 1)
    assert alert["trigger"] == "Alerting" and not alert.get("cleared")
    assert float(alert["actualValue"]) == 0.0
    assert alert["eventNotificationType"] == "CustomMonitor"
    assert alert["component"] == {"name": "EVSE", "evse": {"id": 1}}
    assert alert["variable"] == {"name": "Power"}
    await sim_sleep(3)
    items = await event_data(node, st.id)
    assert of_monitor(items, upper) == of_monitor(items, delta) == of_monitor(items, in_tx) == []

    # A car charges at 11 kW: above the upper threshold, lower cleared, a delta.
    assert await st.plug_in(1, EvSpec(max_ac_power_w=11_000), "GOOD")
    (up,) = await wait_events(node, st.id, upper, 1)
    assert up["trigger"] == "Alerting" and not up.get("cleared")
    assert float(up["actualValue"]) == pytest.approx(11_000, rel=0.02)
    (_, back) = await wait_events(node, st.id, lower, 2)
    assert back["cleared"] is True and float(back["actualValue"]) > 1000
    (jump,) = await wait_events(node, st.id, delta, 1)
    assert jump["trigger"] == "Delta" and float(jump["actualValue"]) > 2000
    ticks = await wait_events(node, st.id, in_tx, 2)
    tx = (await node.transactions(station_id=st.id, active="true"))[0]
    assert {t["transactionId"] for t in ticks} == {tx["transaction_id"]}
    assert all(t["trigger"] == "Periodic" for t in ticks)

    rows = await live(node, st.id, evse=1, variable="Power")
    assert len(rows) == 1 and rows[0]["numeric"] == pytest.approx(11_000, rel=0.02)
    assert rows[0]["monitor_id"] in (upper, lower, delta, in_tx)

    # The car leaves: upper cleared, lower alerts again, a delta down to 0 W; the
    # transaction monitor stops.
    await st.plug_out(1)
    (_, down) = await wait_events(node, st.id, upper, 2)
    assert down["cleared"] is True and float(down["actualValue"]) == 0.0
    (_, _, again) = await wait_events(node, st.id, lower, 3)
    assert not again.get("cleared") and float(again["actualValue"]) == 0.0
    (_, drop) = await wait_events(node, st.id, delta, 2)
    assert float(drop["actualValue"]) == 0.0
    await sim_sleep(1)
    seen = len(of_monitor(await event_data(node, st.id), in_tx))
    await sim_sleep(4)
    assert len(of_monitor(await event_data(node, st.id), in_tx)) == seen
    rows = await live(node, st.id, evse=1, variable="Power")
    assert rows[0]["value"] == "0.0"
    assert parse_datetime(rows[0]["timestamp"]) <= st.clock.now()


async def test_periodic_and_clock_aligned_monitors_report_on_the_station_clock(node, made):
    st = await start_station(node, made, "MON-P")
    periodic, aligned = (
        r["id"]
        for r in await set_monitors(
            node,
            st.id,
            {
                "component": "EVSE",
                "evse": 1,
                "variable": "Frequency",
                "type": "Periodic",
                "value": 2,
            },
            {
                "component": "EVSE",
                "evse": 2,
                "variable": "Voltage",
                "type": "PeriodicClockAligned",
                "value": 5,
            },
        )
    )
    ticks = await wait_events(node, st.id, periodic, 5)
    stamps = [parse_datetime(t["timestamp"]) for t in ticks]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert statistics.mean(gaps) == pytest.approx(2.0, abs=0.2), gaps
    assert all(1.0 < g < 3.0 for g in gaps), gaps
    assert {t["actualValue"] for t in ticks} == {"50.000"}
    assert {t["trigger"] for t in ticks} == {"Periodic"}

    marks = await wait_events(node, st.id, aligned, 3)
    for m in marks:
        ts = parse_datetime(m["timestamp"])
        since_midnight = ts - ts.replace(hour=0, minute=0, second=0, microsecond=0)
        assert since_midnight.total_seconds() % 5 == 0, m["timestamp"]
        assert m["actualValue"] == "230.0"
        assert m["component"] == {"name": "EVSE", "evse": {"id": 2}}
    gaps = [
        (parse_datetime(b["timestamp"]) - parse_datetime(a["timestamp"])).total_seconds()
        for a, b in zip(marks, marks[1:], strict=False)
    ]
    assert gaps == [5.0] * len(gaps)

    rows = {(r["evse"], r["variable"]): r for r in await live(node, st.id)}
    assert rows[(1, "Frequency")]["numeric"] == 50.0
    assert rows[(2, "Voltage")]["numeric"] == 230.0
    assert rows[(2, "Voltage")]["trigger"] == "Periodic"


async def test_reporting_presets_switch_evses_between_1s_and_900s(node, made):
    st = await start_station(node, made, "MON-R")
    url = f"/api/v1/stations/{st.id}/reporting"
    r = await node.http.put(url, json={"preset": "frequency_service"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["interval_s"] == 1 and answer["type"] == "Periodic"
    assert answer["skipped"] == []
    got = {(m["evse"], m["variable"]): m for m in answer["monitors"]}
    assert set(got) == {(e, v) for e in (1, 2) for v in ("Power", "Voltage", "Frequency")}
    assert {m["status"] for m in got.values()} == {"Accepted"}
    ids = {key: m["id"] for key, m in got.items()}

    listed = (await node.http.get(f"/api/v1/stations/{st.id}/monitoring")).json()
    assert {m["id"] for m in listed} == set(ids.values())
    assert {(m["type"], m["value"], m["purpose"]) for m in listed} == {
        ("Periodic", 1.0, "reporting")
    }

    # Events about every second of station time (not of wall-clock time).
    power_id = ids[(1, "Power")]
    ticks = await wait_events(node, st.id, power_id, 8)
    stamps = [parse_datetime(t["timestamp"]) for t in ticks]
    mean_gap = (stamps[-1] - stamps[0]).total_seconds() / (len(stamps) - 1)
    assert 0.85 <= mean_gap <= 1.15, mean_gap
    row = (await live(node, st.id, evse=1, variable="Power"))[0]
    assert row["trigger"] == "Periodic" and row["monitor_id"] == power_id

    # Back to standard reporting through the function the V2X engine calls: the same
    # monitors are replaced (same ids) and fall silent for the next 15 minutes.
    back = await set_reporting_interval(node.rt, st.id, 900)
    assert {(m["evse"], m["variable"]): m["id"] for m in back["monitors"]} == ids
    assert {m["status"] for m in back["monitors"]} == {"Accepted"}
    assert {m["replaced"] for m in back["monitors"]} == set(ids.values())
    listed = (await node.http.get(f"/api/v1/stations/{st.id}/monitoring")).json()
    assert {(m["id"], m["value"]) for m in listed} == {(i, 900.0) for i in ids.values()}
    await sim_sleep(1)
    before = len(of_monitor(await event_data(node, st.id), power_id))
    await sim_sleep(10)
    assert len(of_monitor(await event_data(node, st.id), power_id)) == before
    assert all(
        m.due is not None and (m.due - st.clock.now()).total_seconds() > 800
        for m in st.monitoring.monitors.values()
    )

    # And to 1 s again with an explicit interval: reports resume.
    r = await node.http.put(url, json={"interval_s": 1})
    assert r.status_code == 200 and r.json()["accepted"] == 6
    await wait_events(node, st.id, power_id, before + 3)
    assert len(st.monitoring.monitors) == 6


async def test_station_statuses_are_returned_not_errors(node, made):
    st = await start_station(node, made, "MON-S")
    monitors = [
        {"component": "NoSuchThing", "variable": "Power", "type": "Delta", "value": 1},
        {"component": "EVSE", "evse": 1, "variable": "NoSuchVariable", "type": "Delta", "value": 1},
        {"component": "EVSE", "evse": 9, "variable": "Power", "type": "Delta", "value": 1},
        {"component": "ChargingStation", "variable": "Model", "type": "UpperThreshold", "value": 1},
        {
            "component": "SecurityCtrlr",
            "variable": "BasicAuthPassword",
            "type": "Delta",
            "value": 0,
        },
        power(1, "UpperThreshold", 1e9),
        power(1, "Periodic", 10),
        power(1, "Periodic", 20),
        power(1, "Periodic", 20, severity=3),
        power(1, "Delta", 5, id=9999),
    ]
    r = await node.command(st.id, "set-variable-monitoring", {"monitors": monitors})
    assert r.status_code == 200, r.text
    results = r.json()["response"]["setMonitoringResult"]
    assert [x["status"] for x in results] == [
        "UnknownComponent",
        "UnknownVariable",
        "UnknownComponent",
        "UnsupportedMonitorType",
        "UnsupportedMonitorType",
        "Rejected",
        "Accepted",
        "Duplicate",
        "Accepted",
        "Rejected",
    ]
    assert "id" not in results[0] and isinstance(results[6]["id"], int)
    assert results[5]["statusInfo"]["reasonCode"] == "ValueOutOfRange"

    # The same through the monitoring API: HTTP 200 with the station's statuses.
    answer = await set_monitors(node, st.id, monitors[0], power(2, "Delta", 100))
    assert [x["status"] for x in answer] == ["UnknownComponent", "Accepted"]
    listed = (await node.http.get(f"/api/v1/stations/{st.id}/monitoring")).json()
    assert [(m["id"], m["evse"], m["type"]) for m in listed] == [(answer[1]["id"], 2, "Delta")]

    # GetMonitoringReport: the station reports what it monitors.
    r = await node.command(st.id, "get-monitoring-report", {"request_id": 77})
    assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted"

    async def report():
        rows = (
            await node.http.get("/api/v1/events", params={"station_id": st.id, "kind": "report"})
        ).json()
        return [e for e in rows if e["type"] == "NotifyMonitoringReport"]

    (rep,) = await node.wait_for(report)
    assert rep["detail"]["requestId"] == 77
    found = {
        (m["component"].get("evse", {}).get("id"), v["type"], v["value"], v["severity"])
        for m in rep["detail"]["monitor"]
        for v in m["variableMonitoring"]
    }
    assert found == {(1, "Periodic", 10, 8), (1, "Periodic", 20, 3), (2, "Delta", 100, 8)}
    r = await node.command(st.id, "get-monitoring-report", {"criteria": ["ThresholdMonitoring"]})
    assert r.json()["response"]["status"] == "EmptyResultSet"


async def test_malformed_bodies_are_422(node, made):
    st = await start_station(node, made, "MON-B", evses=1)
    for body in [
        {},
        {"interval_s": 1, "preset": "standard"},
        {"interval_s": 0},
        {"interval_s": "often"},
        {"preset": "turbo"},
        {"interval_s": 1, "evses": [0]},
        {"interval_s": 1, "colour": "blue"},
        "not json",
    ]:
        kw = {"content": body} if isinstance(body, str) else {"json": body}
        r = await node.http.put(f"/api/v1/stations/{st.id}/reporting", **kw)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["detail"]


async def test_malformed_monitors_are_422(node, made):
    st = await start_station(node, made, "MON-M", evses=1)
    bad = [
        [],
        [power(1, "Sometimes", 1)],
        [power(1, "Delta", 1, severity=12)],
        [power(1, "Periodic", 0)],
        [power(1, "Delta", -1)],
        [{"component": "EVSE", "evse": 1, "variable": "Power", "type": "Delta"}],
        [power(1, "Delta", 1, connector=1) | {"evse": None}],
    ]
    for monitors in bad:
        r = await node.http.post(
            f"/api/v1/stations/{st.id}/monitoring", json={"monitors": monitors}
        )
        assert r.status_code == 422, (monitors, r.text)
        r = await node.command(st.id, "set-variable-monitoring", {"monitors": monitors})
        assert r.status_code == 422, (monitors, r.text)
    r = await node.command(st.id, "clear-variable-monitoring", {"ids": []})
    assert r.status_code == 422
    r = await node.http.delete(f"/api/v1/stations/{st.id}/monitoring/-1")
    assert r.status_code == 422
    assert st.monitoring.monitors == {}


async def test_v16_station_and_absent_stations_are_refused(node, made):
    st = await start_station(node, made, "MON-16", version="1.6", evses=1)
    r = await node.command(st.id, "set-variable-monitoring", {"monitors": [power(1, "Delta", 1)]})
    assert r.status_code == 400 and "does not exist in OCPP 1.6" in r.json()["detail"]
    r = await node.command(st.id, "clear-variable-monitoring", {"ids": [1]})
    assert r.status_code == 400 and "1.6" in r.json()["detail"]
    # the version is checked before the body: an incomplete body still gets the 400
    r = await node.command(st.id, "get-variables", {})
    assert r.status_code == 400 and "does not exist in OCPP 1.6" in r.json()["detail"], r.text
    r = await node.http.put(f"/api/v1/stations/{st.id}/reporting", json={"preset": "standard"})
    assert r.status_code == 400 and "1.6" in r.json()["detail"], r.text
    r = await node.http.post(
        f"/api/v1/stations/{st.id}/monitoring", json={"monitors": [power(1, "Delta", 1)]}
    )
    assert r.status_code == 400
    assert "SetVariableMonitoring" not in st.received

    r = await node.http.put("/api/v1/stations/NOPE/reporting", json={"interval_s": 1})
    assert r.status_code == 404
    assert (await node.http.get("/api/v1/stations/NOPE/live")).status_code == 404
    assert (await node.http.post("/api/v1/stations", json={"id": "MON-OFF"})).status_code == 201
    r = await node.http.put("/api/v1/stations/MON-OFF/reporting", json={"interval_s": 1})
    assert r.status_code == 409
    assert (await node.http.get("/api/v1/stations/MON-OFF/monitoring")).json() == []


async def test_clearing_monitors_stops_their_events(node, made):
    st = await start_station(node, made, "MON-C", evses=1)
    (res,) = await set_monitors(node, st.id, power(1, "Periodic", 1))
    monitor_id = res["id"]
    await wait_events(node, st.id, monitor_id, 3)

    r = await node.http.delete(f"/api/v1/stations/{st.id}/monitoring/{monitor_id}")
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"id": monitor_id, "status": "Accepted"}]
    assert (await node.http.get(f"/api/v1/stations/{st.id}/monitoring")).json() == []
    assert st.monitoring.monitors == {}
    await sim_sleep(1)
    seen = len(of_monitor(await event_data(node, st.id), monitor_id))
    await sim_sleep(6)
    assert len(of_monitor(await event_data(node, st.id), monitor_id)) == seen

    r = await node.http.delete(f"/api/v1/stations/{st.id}/monitoring/{monitor_id}")
    assert r.json()["results"] == [{"id": monitor_id, "status": "NotFound"}]
    r = await node.command(st.id, "clear-variable-monitoring", {"ids": [monitor_id]})
    assert r.json()["response"]["clearMonitoringResult"] == [
        {"id": monitor_id, "status": "NotFound"}
    ]
    # DELETE .../monitoring clears all the CSMS installed.
    await set_monitors(node, st.id, power(1, "Periodic", 1), power(1, "Delta", 10))
    r = await node.http.delete(f"/api/v1/stations/{st.id}/monitoring")
    assert [x["status"] for x in r.json()["results"]] == ["Accepted", "Accepted"]
    assert st.monitoring.monitors == {}
    assert json.loads((await node.http.get(f"/api/v1/stations/{st.id}/monitoring")).text) == []
