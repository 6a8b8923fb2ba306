"""OCPP 2.1 V2X use cases end to end: the evflex CSMS (API, planner, frequency service)
drives a simulated 2.1 station with a bidirectional car over a real ``ocpp2.1`` socket.

One test per use case: central setpoint from the planner, external setpoint and
limits, local frequency, central frequency, local load balancing (V2H), local
voltage control (VoltVar), priority charging, Idle with evseSleep; plus consent
and billing of import vs export.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from conftest import Node, start_node
from evflex.clock import AcceleratedClock
from evflex.sim import SimStation, StationSpec
from evflex.sim.grid import BuildingMeter, Grid, TableSignal

from .conftest import wait_until
from .test_sim_v21 import _csms_tx, _put_profile, bidi, profile

SPEED = 60.0


@pytest.fixture
async def node21(database_url, stations):
    """A real evflex node and a 2.1 station on one clock, a bidirectional car on EVSE 1."""
    clock = AcceleratedClock(SPEED)
    rt, http = await start_node(database_url, clock=clock, allow_unknown_stations=True)
    node = Node(rt, http)
    try:
        await http.post("/api/v1/id-tokens", json={"id_token": "V2X", "status": "Accepted"})
        spec = StationSpec(id="V2X-1", ocpp_version="2.1", evses=2)
        st = SimStation(spec, node.ocpp_url, clock, meter_interval_s=60.0, seed=2)
        stations.append(st)
        await st.start(timeout=10.0)
        assert await st.plug_in(1, bidi(battery_kwh=40.0, soc=0.6), "V2X")
        await node.wait_for(lambda: _csms_tx(node, st.id))
        yield node, st
    finally:
        await http.aclose()
        await rt.stop()


async def _consent(node, station_id: str) -> dict:
    await node.wait_for(lambda: _bidirectional(node, station_id))
    tx = await _csms_tx(node, station_id)
    r = await node.http.put(
        f"/api/v1/transactions/{tx['id']}/preferences", json={"allow_discharge": True}
    )
    assert r.status_code == 200, r.text
    assert r.json()["allow_discharge"] is True
    return tx


async def test_central_setpoint_from_the_planner_discharges_then_charges(node21):
    """A site on the optimiser, feed-in dear now and energy cheap later: the CSMS sends the
    signed plan as a CentralSetpoint profile; the car gives energy back, then charges."""
    node, st = node21
    await node.wait_for(lambda: _bidirectional(node, st.id))  # NotifyEVChargingNeeds arrived
    tx = await _csms_tx(node, st.id)
    assert tx["v2x_allowed"] is False  # consent defaults off
    r = await node.http.post(
        "/api/v1/sites",
        json={"id": "v2g", "import_limit_kw": 50, "export_limit_kw": 50, "policy": "optimal",
              "objective": "cost", "import_tariff_per_kwh": 0.3, "export_tariff_per_kwh": 0.35},
    )
    assert r.status_code == 201, r.text
    r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "v2g"})
    assert r.status_code == 200, r.text
    now = st.now()
    forecast = {
        "start": now.isoformat(),
        "slot_minutes": 15,
        "import_price": [0.60] + [0.05] * 40,
        "export_price": [0.55] + [0.0] * 40,
    }
    r = await node.http.put("/api/v1/sites/v2g/forecast", json=forecast)
    assert r.status_code == 200, r.text
    evse = st.evse(1)
    await wait_until(lambda: evse.power_w >= 0, timeout=5)
    assert evse.export_wh == 0  # no consent: the planner may not discharge
    await _consent(node, st.id)
    await wait_until(lambda: evse.power_w < -1000, timeout=10)
    sent = st.profiles.get(1900000001)
    assert sent is not None
    modes = {p.mode.value for p in sent.profile.schedule.periods}
    assert modes == {"CentralSetpoint"}
    assert st.v2x_status(1) == "discharging"
    # the next slot is cheap: the same transaction charges again (one slot = 15 clock-min)
    await wait_until(lambda: evse.power_w > 1000, timeout=30)
    assert evse.transaction_id == tx["transaction_id"]
    await node.wait_for(lambda: _exported(node, st.id))  # meter values every clock-minute
    row = await _csms_tx(node, st.id)
    assert row["energy_exported_wh"] > 0 and row["energy_imported_wh"] > 0
    bill = (await node.http.get(f"/api/v1/transactions/{row['id']}/bill")).json()
    # the driver gets more per kWh out than buying it back costs (else no discharge)
    assert bill["export_reward"] == pytest.approx(bill["energy_exported_kwh"] * 0.35, abs=1e-3)
    assert bill["total"] == pytest.approx(bill["import_cost"] - bill["export_reward"], abs=1e-3)
    assert st.stats.errors == 0, st.stats.error_samples


async def _bidirectional(node, station_id: str) -> bool:
    tx = await _csms_tx(node, station_id)
    return bool(tx and tx["bidirectional"])


async def _exported(node, station_id: str) -> bool:
    tx = await _csms_tx(node, station_id)
    return bool(tx and tx["energy_exported_wh"] > 0 and tx["energy_imported_wh"] > 0)


async def test_external_setpoint_and_limits_are_bounded_by_the_csms(node21):
    node, st = node21
    evse = st.evse(1)
    body = profile([{"operationMode": "ExternalSetpoint", "limit": 5000.0,
                     "dischargeLimit": -2000.0}], pid=51)
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    st.set_external_setpoint(1, -6000.0)  # the EMS asks for more than the CSMS allows
    await wait_until(lambda: evse.power_w == pytest.approx(-2000.0))
    st.set_external_setpoint(1, 9000.0)
    await wait_until(lambda: evse.power_w == pytest.approx(5000.0))
    st.set_external_setpoint(1, -1500.0)
    await wait_until(lambda: evse.power_w == pytest.approx(-1500.0))
    body = profile([{"operationMode": "ExternalLimits", "limit": 10000.0,
                     "dischargeLimit": -3000.0}], pid=51)
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    st.set_external_limits(1, 4000.0, 1000.0)
    await wait_until(lambda: evse.power_w == pytest.approx(4000.0))
    assert st.stats.errors == 0, st.stats.error_samples


async def test_local_frequency_follows_the_curve_on_a_trace(node21):
    node, st = node21
    evse = st.evse(1)
    now = st.now()
    st.attach_grid(Grid(TableSignal([(0, 50.0), (30, 50.0), (90, 49.85), (150, 50.15)],
                                    start=now)))
    curve = [{"frequency": 49.8, "power": -6000.0}, {"frequency": 50.0, "power": 0.0},
             {"frequency": 50.2, "power": 6000.0}]
    body = profile([{"operationMode": "LocalFrequency", "v2xFreqWattCurve": curve,
                     "dischargeLimit": -11000.0}], pid=52)
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    seen = []
    for _ in range(50):
        await asyncio.sleep(0.05)
        st.advance(evse)
        seen.append((st.v2x_state(1).measured.frequency_hz, evse.power_w))
    assert min(p for _, p in seen) < -2000 and max(p for _, p in seen) > 2000
    # linear interpolation on the frequency the station measured last (it re-reads every
    # clock second)
    for f, p in seen:
        assert p == pytest.approx(max(-6000, min(6000, (f - 50.0) / 0.2 * 6000)), abs=1.0)


async def test_central_frequency_service_updates_setpoints_from_a_feed(node21):
    node, st = node21
    evse = st.evse(1)
    await _consent(node, st.id)
    curve = [[49.8, -8000.0], [50.0, 0.0], [50.2, 8000.0]]
    r = await node.http.put("/api/v1/frequency-service", json={
        "evses": [{"station_id": st.id, "evse_id": 1}], "curve": curve})
    assert r.status_code == 200, r.text
    assert r.json()["refused"] == {} and len(r.json()["evses"]) == 1
    await wait_until(lambda: st.operation_mode(1).value == "CentralFrequency")
    for hz, want in ((49.9, -4000.0), (50.1, 4000.0), (49.95, -2000.0)):
        r = await node.http.post("/api/v1/frequency-service/samples", json={"frequency_hz": hz})
        assert r.status_code == 202
        await wait_until(lambda w=want: evse.power_w == pytest.approx(w), timeout=3)
    await node.wait_for(lambda: node.rt.frequency.stats.updates >= 3)  # acks counted
    stats = (await node.http.get("/api/v1/frequency-service")).json()["stats"]
    assert stats["updates"] == stats["samples"] == 3 and stats["failed"] == 0
    assert 0 <= stats["latency_p50_s"] <= stats["latency_p99_s"]
    bad = await node.http.post("/api/v1/frequency-service/samples", json={"frequency_hz": 5})
    assert bad.status_code == 422
    r = await node.http.delete("/api/v1/frequency-service")
    assert r.status_code == 200
    await wait_until(lambda: st.profiles.get(900_000) is None)
    assert (await node.http.post("/api/v1/frequency-service/samples",
                                 json={"frequency_hz": 50})).status_code == 409


async def test_frequency_service_refuses_evses_without_consent_or_21(node21):
    node, st = node21
    r = await node.http.put("/api/v1/frequency-service", json={
        "evses": [{"station_id": st.id, "evse_id": 1}, {"station_id": st.id, "evse_id": 2}],
        "curve": [[49.8, -1000.0], [50.2, 1000.0]]})
    assert r.status_code == 409
    refused = r.json()["detail"]["refused"]
    assert "not allowed discharging" in refused[f"{st.id}/1"]
    assert "no transaction" in refused[f"{st.id}/2"]


async def test_local_load_balancing_discharges_when_the_building_draws_above_the_threshold(
    node21,
):
    node, st = node21
    evse = st.evse(1)
    building = BuildingMeter(load_w=5000.0)
    st.attach_grid(None, building)
    variables = [{"component": "V2XChargingCtrlr", "variable": name, "value": value}
                 for name, value in (("LocalLoadBalancingUpperThreshold", "10000"),
                                     ("LocalLoadBalancingLowerThreshold", "0"),
                                     ("LocalLoadBalancingUpperOffset", "500"),
                                     ("LocalLoadBalancingLowerOffset", "0"))]
    r = await node.command(st.id, "set-variables", {"variables": variables})
    assert r.status_code == 200, r.text
    assert {x["attributeStatus"] for x in r.json()["response"]["setVariableResult"]} == {
        "Accepted"}
    body = profile([{"operationMode": "LocalLoadBalancing", "limit": 11000.0,
                     "dischargeLimit": -11000.0}], pid=53)
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    # the house draws 5 kW: the car charging at 11 kW would take the connection to 16 kW,
    # so it comes down to the 4.5 kW that keep it 500 W under the upper threshold
    await wait_until(lambda: evse.power_w == pytest.approx(4500.0))
    building.set_load_w(14000.0)  # the house draws 14 kW: the car covers 4.5 kW of it
    await wait_until(lambda: evse.power_w == pytest.approx(-4500.0))
    assert st.v2x_status(1) == "discharging"


async def test_voltvar_der_control_gives_reactive_power_by_voltage(node21):
    node, st = node21
    evse = st.evse(1)
    st.attach_grid(Grid(voltage=TableSignal([(0, 241.5)], start=st.now())))  # 105 % of 230 V
    r = await node.command(st.id, "set-der-control", {
        "control_id": "vv1", "control_type": "VoltVar",
        "curve": {"priority": 1, "y_unit": "PctMaxVar",
                  "points": [[95, 40], [100, 0], [110, -40]]}})
    assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted", r.text
    await wait_until(lambda: abs(evse.reactive_var) > 100)
    high = evse.reactive_var
    st.attach_grid(Grid(voltage=TableSignal([(0, 218.5)], start=st.now())))  # 95 %
    await wait_until(lambda: abs(evse.reactive_var) > 100 and evse.reactive_var * high < 0)
    # Q(U) is linear in between: 105 % gives half of the 110 % value, 95 % the full 40 %
    assert abs(evse.reactive_var) == pytest.approx(2 * abs(high), rel=0.05)
    events = (await node.http.get("/api/v1/events", params={"station_id": st.id,
                                                             "kind": "der"})).json()
    assert any(e["type"] == "started" for e in events)


async def test_priority_charging_from_the_api_and_from_the_station_button(node21):
    node, st = node21
    evse = st.evse(1)
    tx = await _csms_tx(node, st.id)
    body = profile([{"limit": 5000.0}], pid=54, purpose="TxProfile")
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(5000.0))
    prio = profile([{"limit": 11000.0}], pid=55, purpose="PriorityCharging")
    assert (await _put_profile(node, st.id, 1, prio))["status"] == "accepted"
    r = await node.http.post(f"/api/v1/transactions/{tx['id']}/priority")
    assert r.status_code == 200, r.text
    assert "UsePriorityCharging" in st.received
    await wait_until(lambda: evse.power_w == pytest.approx(11000.0))
    r = await node.http.delete(f"/api/v1/transactions/{tx['id']}/priority")
    await wait_until(lambda: evse.power_w == pytest.approx(5000.0))
    # the driver presses the station's button: NotifyPriorityCharging reaches the CSMS
    assert await st.press_priority_button(1) is True
    await node.wait_for(lambda: _priority(node, st.id))
    await wait_until(lambda: evse.power_w == pytest.approx(11000.0))


async def _priority(node, station_id: str) -> bool:
    tx = await _csms_tx(node, station_id)
    return bool(tx and tx["priority"])


async def test_idle_with_evse_sleep_stops_the_power_and_is_reported(node21):
    node, st = node21
    evse = st.evse(1)
    start = st.now() + timedelta(seconds=1)
    body = profile([{"operationMode": "Idle", "limit": 0.0, "evseSleep": True}], pid=56,
                   start=start)
    assert (await _put_profile(node, st.id, 1, body))["status"] == "accepted"
    await wait_until(lambda: evse.power_w == 0.0)
    assert st.v2x_status(1) == "idle"
    await node.wait_for(lambda: _mode(node, st.id, "Idle"))
    tx = await _csms_tx(node, st.id)
    assert tx["v2x_state"] in ("idle", None)


async def _mode(node, station_id: str, mode: str) -> bool:
    tx = await _csms_tx(node, station_id)
    return bool(tx and tx["operation_mode"] == mode)
