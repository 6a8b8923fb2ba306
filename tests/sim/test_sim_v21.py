"""The OCPP 2.1 simulator: bidirectional cars, V2X operation modes, DER control, grid traces.

Station-level tests run a :class:`Station21` against a small raw-frame 2.1
central system (it answers every station request, checks it against the 2.1
schema, and sends hand-written frames, so that it can also send SEND and
CALLRESULTERROR frames the ``ocpp`` library does not know).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from evflex.clock import AcceleratedClock, isoformat
from evflex.csms import rpc
from evflex.sim import EvBattery, EvSpec, SimConfig, SimStation, Simulation, StationSpec
from evflex.sim.ev import DEFAULT_FLEET, random_ev, with_bidirectional
from evflex.sim.grid import BuildingMeter, Grid, OuSignal, TableSignal
from evflex.sim.runner import ocpp_versions
from evflex.sim.v21 import Station21
from evflex.smartcharging.profiles import OperationMode

from .conftest import wait_until

SPEED = 60.0
VOLTS = 230.0


# ---------------------------------------------------------------------------
# A raw 2.1 central system
# ---------------------------------------------------------------------------


def _answer(action: str, payload: dict[str, Any], now: str) -> dict[str, Any]:
    if action == "BootNotification":
        return {"currentTime": now, "interval": 300, "status": "Accepted"}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action == "Authorize":
        return {"idTokenInfo": {"status": "Accepted"}}
    if action == "NotifyEVChargingNeeds":
        return {"status": "Accepted"}
    return {}


class Peer:
    """One station's connection to the raw central system."""

    def __init__(self, ws: Any, csms: Raw21) -> None:
        self.ws = ws
        self.csms = csms
        self.station_id = ws.request.path.rsplit("/", 1)[-1]
        self.pending: dict[str, asyncio.Future[list[Any]]] = {}
        #: Station CALLs answered with CALLRESULTERROR instead of a CALLRESULT (by action).
        self.result_errors: set[str] = set()

    async def run(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            self.csms.frames[self.station_id].append(msg)
            if msg[0] == rpc.CALL:
                await self._on_call(msg)
            elif msg[0] in (rpc.CALLRESULT, rpc.CALLERROR):
                future = self.pending.pop(msg[1], None)
                if future is not None and not future.done():
                    future.set_result(msg)
            elif msg[0] == rpc.SEND:
                self.csms.log[self.station_id].append((msg[2], msg[3], "SEND"))

    async def _on_call(self, msg: list[Any]) -> None:
        _, mid, action, payload = msg
        self.csms.log[self.station_id].append((action, payload, self.csms.clock.now()))
        try:
            rpc.validate(rpc.CALL, action, payload, "2.1")
        except rpc.RpcError as exc:
            self.csms.schema_errors.append(f"{action}: {exc}")
        if action in self.result_errors:
            frame = rpc.encode_result_error(mid, "InternalError", "testing", {})
        else:
            answer = _answer(action, payload, isoformat(self.csms.clock.now()))
            frame = rpc.encode_result(mid, answer)
        await self.ws.send(frame)

    async def call(self, action: str, payload: dict[str, Any], timeout: float = 5.0) -> list[Any]:
        """Send a CALL and return the answer frame (CALLRESULT or CALLERROR)."""
        mid = str(uuid.uuid4())
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self.pending[mid] = future
        await self.ws.send(rpc.encode_call(mid, action, payload))
        return await asyncio.wait_for(future, timeout)

    async def result(self, action: str, payload: dict[str, Any]) -> dict[str, Any]:
        frame = await self.call(action, payload)
        assert frame[0] == rpc.CALLRESULT, frame
        rpc.validate(rpc.CALLRESULT, action, frame[2], "2.1")
        return frame[2]


class Raw21:
    def __init__(self) -> None:
        self.clock = AcceleratedClock(SPEED)
        self.peers: dict[str, Peer] = {}
        self.log: dict[str, list[tuple[str, dict[str, Any], Any]]] = defaultdict(list)
        self.frames: dict[str, list[list[Any]]] = defaultdict(list)
        self.schema_errors: list[str] = []
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ocpp"

    async def start(self) -> None:
        self.server = await serve(self._handler, "127.0.0.1", 0, subprotocols=["ocpp2.1"])

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handler(self, ws: Any) -> None:
        peer = Peer(ws, self)
        self.peers[peer.station_id] = peer
        try:
            await peer.run()
        except ConnectionClosed:
            pass

    def payloads(self, station_id: str, action: str, start: int = 0) -> list[dict[str, Any]]:
        return [p for a, p, _ in self.log[station_id][start:] if a == action]


@pytest.fixture
async def csms():
    central = Raw21()
    await central.start()
    yield central
    await central.close()
    assert not central.schema_errors, central.schema_errors


_ids = itertools.count(1)


async def started(
    csms: Raw21, made: list[SimStation], *, speed: float | None = None, **kw: Any
) -> tuple[Station21, Peer]:
    spec_kw = {"evses": 2, **{k: kw.pop(k) for k in list(kw) if k in ("evses", "phases")}}
    spec = StationSpec(id=f"V21-{next(_ids)}", ocpp_version="2.1", **spec_kw)
    clock = csms.clock if speed is None else AcceleratedClock(speed)
    station = SimStation(spec, csms.url, clock, seed=4, meter_interval_s=60.0, **kw)
    assert isinstance(station, Station21)
    made.append(station)
    await station.start(timeout=5.0)
    await wait_until(lambda: csms.payloads(station.id, "Heartbeat"))
    return station, csms.peers[station.id]


def bidi(**kw: Any) -> EvSpec:
    values: dict[str, Any] = {
        "battery_kwh": 60.0,
        "soc": 0.5,
        "target_soc": 0.9,
        "max_ac_power_w": 11_000.0,
        "phases": 3,
        "bidirectional": True,
        "max_discharge_power_w": 11_000.0,
        "min_soc": 0.2,
    }
    values.update(kw)
    return EvSpec(**values)


def profile(
    periods: list[dict[str, Any]],
    *,
    pid: int = 1,
    purpose: str = "TxDefaultProfile",
    unit: str = "W",
    stack_level: int = 0,
    start: datetime | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": pid,
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute" if start else "Relative",
        "chargingSchedule": [
            {
                "id": pid,
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [{"startPeriod": 0, **periods[0]}, *periods[1:]],
            }
        ],
    }
    if start is not None:
        out["chargingSchedule"][0]["startSchedule"] = isoformat(start)
    return out


async def set_profile(peer: Peer, evse_id: int, body: dict[str, Any]) -> dict[str, Any]:
    return await peer.result("SetChargingProfile", {"evseId": evse_id, "chargingProfile": body})


def samples(csms: Raw21, station_id: str, measurand: str, start: int = 0) -> list[float]:
    out = []
    for action in ("TransactionEvent", "MeterValues"):
        for payload in csms.payloads(station_id, action, start):
            for mv in payload.get("meterValue") or []:
                for sv in mv["sampledValue"]:
                    if sv.get("measurand") == measurand:
                        out.append(float(sv["value"]))
    return out


def events(csms: Raw21, station_id: str, start: int = 0) -> list[dict[str, Any]]:
    return csms.payloads(station_id, "TransactionEvent", start)


# ---------------------------------------------------------------------------
# Battery model and fleet
# ---------------------------------------------------------------------------


def test_bidirectional_battery_integrates_signed_power_with_efficiencies():
    ev = EvBattery(bidi(battery_kwh=10.0, soc=0.5, charge_efficiency=0.9, discharge_efficiency=0.8))
    imported, exported = ev.exchange(3600.0, 2_000.0)  # 1 h at 2 kW: 1.8 kWh stored
    assert (imported, exported) == (pytest.approx(2_000.0), 0.0)
    assert ev.soc == pytest.approx(0.5 + 1.8 / 10.0)
    imported, exported = ev.exchange(1800.0, -2_000.0)  # 1 kWh at the grid: 1.25 kWh from cells
    assert (imported, exported) == (0.0, pytest.approx(1_000.0))
    assert ev.soc == pytest.approx(0.68 - 0.125)
    assert ev.power_w(-20_000.0) == -11_000.0  # the car's own discharge limit
    assert ev.charged_wh == pytest.approx(2_000.0)
    assert ev.discharged_wh == pytest.approx(1_000.0)


def test_discharge_stops_at_min_soc_and_charge_at_target():
    ev = EvBattery(bidi(battery_kwh=10.0, soc=0.25, min_soc=0.2, target_soc=0.3))
    _, exported = ev.exchange(3600.0, -11_000.0)
    assert exported == pytest.approx(500.0)  # only down to the floor
    assert ev.soc == pytest.approx(0.2)
    assert not ev.can_discharge
    assert ev.power_w(-5_000.0) == 0.0
    imported, _ = ev.exchange(3600.0, 11_000.0)
    assert imported == pytest.approx(1_000.0)
    assert ev.soc == pytest.approx(0.3) and ev.full
    assert ev.power_w(5_000.0) == 0.0
    assert ev.energy_to_min_wh == pytest.approx(-1_000.0)
    assert ev.energy_to_full_wh == pytest.approx(7_000.0)


def test_charge_only_car_never_discharges_and_defaults_are_unchanged():
    ev = EvBattery(EvSpec(battery_kwh=10.0, soc=0.5))
    assert ev.power_w(-5_000.0) == 0.0
    assert ev.exchange(600.0, -5_000.0) == (0.0, 0.0)
    assert ev.soc == 0.5
    assert EvSpec().energy_transfer == "AC_three_phase"
    assert EvSpec(phases=1).energy_transfer == "AC_single_phase"
    assert bidi().energy_transfer == "AC_BPT"
    assert bidi(dc=True).energy_transfer == "DC_BPT"
    with pytest.raises(ValueError):
        EvSpec(min_soc=1.5)
    with pytest.raises(ValueError):
        EvSpec(discharge_efficiency=0.0)
    with pytest.raises(ValueError):
        EvSpec(control_mode="Sometimes")


def test_fleet_draws_no_bidirectional_car_unless_asked():
    plain = tuple(m for m in DEFAULT_FLEET if not m.bidirectional)
    assert len(plain) < len(DEFAULT_FLEET)
    a, b = random.Random(5), random.Random(5)
    # The bidirectional models (weight 0) do not change what a seed draws.
    assert [random_ev(a) for _ in range(200)] == [random_ev(b, plain) for _ in range(200)]
    fleet = with_bidirectional(DEFAULT_FLEET, 0.5)
    rng = random.Random(9)
    cars = [random_ev(rng, fleet) for _ in range(400)]
    share = sum(c.bidirectional for c in cars) / len(cars)
    assert 0.4 < share < 0.6
    assert all(c.max_discharge_power_w > 0 for c in cars if c.bidirectional)
    assert any(c.dc for c in cars)
    config = SimConfig(bidirectional_share=1.0)
    assert all(m.weight == 0 for m in config.fleet if not m.bidirectional)


def test_version_shares_of_the_runner():
    assert ocpp_versions(10, 0.5) == ["1.6", "2.0.1"] * 5
    versions = ocpp_versions(10, 0.5, 0.2)
    assert (versions.count("2.1"), versions.count("2.0.1"), versions.count("1.6")) == (2, 5, 3)
    assert ocpp_versions(3, 0.0, 1.0) == ["2.1"] * 3
    with pytest.raises(ValueError):
        SimConfig(v201_share=0.7, v21_share=0.5)
    sim = Simulation(SimConfig(stations=4, v201_share=0.25, v21_share=0.5, synthetic_grid=True))
    assert sorted(s.version for s in sim.stations) == ["1.6", "2.0.1", "2.1", "2.1"]
    assert all(s.grid is sim.grid and s.building is not None for s in sim.stations)
    assert 49.0 < sim.stations[0].grid_frequency_hz() < 51.0


# ---------------------------------------------------------------------------
# Grid and building
# ---------------------------------------------------------------------------


T0 = datetime(2025, 6, 1, tzinfo=UTC)


def test_synthetic_grid_is_seeded_and_realistic():
    a, b = Grid.synthetic(7, T0), Grid.synthetic(7, T0)
    times = [T0 + timedelta(seconds=s) for s in range(0, 6 * 3600, 5)]
    freq = [a.frequency_hz(t) for t in times]
    assert freq == [b.frequency_hz(t) for t in times]
    other = Grid.synthetic(8, T0)
    assert freq != [other.frequency_hz(t) for t in times]
    assert abs(statistics.mean(freq) - 50.0) < 0.02
    assert 0.01 < statistics.pstdev(freq) < 0.06
    assert all(49.0 <= f <= 51.0 for f in freq)
    volts = [a.voltage_v(t) for t in times]
    assert abs(statistics.mean(volts) - 230.0) < 3.0
    assert 1.0 < statistics.pstdev(volts) < 8.0
    assert all(207.0 <= v <= 253.0 for v in volts)
    # between the 1 s samples the value is interpolated
    mid = a.frequency_hz(T0 + timedelta(seconds=10.5))
    lo, hi = sorted(
        (a.frequency_hz(T0 + timedelta(seconds=10)), a.frequency_hz(T0 + timedelta(seconds=11)))
    )
    assert lo <= mid <= hi


def test_frequency_events_drop_and_recover():
    signal = OuSignal(
        50.0,
        0.0,
        60.0,
        seed=1,
        start=T0,
        events_per_hour=3600.0,
        event_size=(-0.2, -0.2),
        event_recovery_s=30.0,
        low=49.0,
    )
    values = [signal.at(T0 + timedelta(seconds=s)) for s in range(1, 30)]
    assert min(values) < 49.9  # events pile up at one per second
    quiet = OuSignal(50.0, 0.0, 60.0, seed=1, start=T0)
    assert quiet.at(T0 + timedelta(hours=1)) == 50.0


def test_table_signal_from_csv(tmp_path):
    path = tmp_path / "freq.csv"
    path.write_text("t,hz\n0,50.0\n10,49.8\n20,50.2\n", encoding="utf-8")
    signal = TableSignal.from_csv(path, "hz", start=T0)
    assert signal.at(T0 - timedelta(seconds=5)) == 50.0
    assert signal.at(T0 + timedelta(seconds=5)) == pytest.approx(49.9)
    assert signal.at(T0 + timedelta(seconds=15)) == pytest.approx(50.0)
    assert signal.at(T0 + timedelta(seconds=99)) == pytest.approx(50.2)
    looped = TableSignal.from_csv(path, 1, start=T0, repeat=True)
    assert looped.at(T0 + timedelta(seconds=25)) == pytest.approx(49.9)
    stamped = tmp_path / "volts.csv"
    stamped.write_text(
        "time,v\n2025-06-01T00:00:00Z,230\n2025-06-01T00:01:00Z,220\n", encoding="utf-8"
    )
    grid = Grid.from_csv(path, stamped, start=T0)
    assert grid.voltage_v(T0 + timedelta(seconds=30)) == pytest.approx(225.0)
    assert grid.frequency_hz(T0 + timedelta(seconds=10)) == pytest.approx(49.8)


def test_building_meter_profile_and_override():
    meter = BuildingMeter(day_profile_w=[1000.0, 3000.0])  # 00-12 h and 12-24 h points
    assert meter.load_w(T0) == 1000.0
    assert meter.load_w(T0 + timedelta(hours=6)) == pytest.approx(2000.0)
    meter.set_load_w(25_000.0)
    assert meter.load_w(T0) == 25_000.0
    meter.set_load_w(None)
    assert meter.load_w(T0 + timedelta(hours=12)) == 3000.0
    noisy = BuildingMeter(noise_w=100.0, seed=3)
    assert noisy.load_w(T0) != BuildingMeter().load_w(T0)


def test_station_reads_nominal_values_without_a_grid():
    st = SimStation(StationSpec(id="G1", ocpp_version="2.1"), "ws://unused")
    assert (st.grid_frequency_hz(), st.grid_voltage_v(), st.building_load_w()) == (
        50.0,
        230.0,
        0.0,
    )
    st.attach_grid(
        Grid(TableSignal([(0, 49.9)]), TableSignal([(0, 240.0)])), BuildingMeter(load_w=5.0)
    )
    assert (st.grid_frequency_hz(), st.grid_voltage_v(), st.building_load_w()) == (
        49.9,
        240.0,
        5.0,
    )
    v16 = SimStation(StationSpec(id="G2", ocpp_version="1.6"), "ws://unused")
    assert v16.version == "1.6" and v16.grid_frequency_hz() == 50.0


# ---------------------------------------------------------------------------
# ocpp library workarounds
# ---------------------------------------------------------------------------


async def test_per_phase_keys_survive_both_directions(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    body = profile(
        [
            {
                "limit": 5000.0,
                "limit_L2": 5000.0,
                "limit_L3": 5000.0,
                "operationMode": "ChargingOnly",
            }
        ],
        pid=7,
    )
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    period = st.profiles.get(7).profile.schedule.periods[0]
    assert (period.limit, period.limit_l23) == (5000.0, (5000.0, 5000.0))
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(11_000.0))  # 3 x 5 kW, car 11 kW
    # ReportChargingProfiles: our CALL keeps limit_L2 (the library would send limitL2)
    mark = len(csms.log[st.id])
    res = await peer.result("GetChargingProfiles", {"requestId": 3, "chargingProfile": {}})
    assert res["status"] == "Accepted"
    reports = await wait_until(lambda: csms.payloads(st.id, "ReportChargingProfiles", mark))
    sent = reports[0]["chargingProfile"][0]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert sent["limit_L2"] == 5000.0 and "limitL2" not in sent


async def test_callresulterror_fails_our_call_at_once(csms, stations):
    st, peer = await started(csms, stations, response_timeout_s=5.0)
    peer.result_errors.add("DataTransfer")
    from ocpp.v201 import call as call201

    began = time.monotonic()
    assert await st.send(call201.DataTransfer(vendor_id="x")) is None
    assert time.monotonic() - began < 2.0  # not the 5 s response timeout
    assert any("CALLERROR InternalError" in e for e in st.stats.error_samples)
    # A CALLRESULTERROR about one of the station's answers is counted, nothing hangs.
    await peer.ws.send(rpc.encode_result_error("not-ours", "FormatViolation", "bad result", {}))
    await wait_until(lambda: any("CALLRESULTERROR" in e for e in st.stats.error_samples))
    assert (await peer.result("ClearCache", {}))["status"] == "Accepted"


async def test_send_frames_both_ways(csms, stations):
    st, peer = await started(csms, stations)
    mark = len(csms.frames[st.id])
    await peer.ws.send(rpc.encode_send("s1", "NotifyPeriodicEventStream", {"id": 1}))
    await wait_until(lambda: "NotifyPeriodicEventStream" in st.received)
    assert (await peer.result("ClearCache", {}))["status"] == "Accepted"
    # the SEND got no answer: the only frames since are the ClearCache exchange
    assert [f[0] for f in csms.frames[st.id][mark:]] == [rpc.CALLRESULT]
    assert await st.send_event_stream(4, [(0.0, "50.01"), (1.0, "49.98")])
    sent = await wait_until(
        lambda: [p for a, p, kind in csms.log[st.id] if a == "NotifyPeriodicEventStream"]
    )
    assert sent[0]["id"] == 4 and sent[0]["data"][1] == {"t": 1.0, "v": "49.98"}
    rpc.validate(rpc.SEND, "NotifyPeriodicEventStream", sent[0], "2.1")


async def test_calls_without_handler_get_a_callerror(csms, stations):
    st, peer = await started(csms, stations)
    known = await peer.call("GetTariffs", {"evseId": 1})
    assert known[0] == rpc.CALLERROR and known[2] == "NotSupported"
    unknown = await peer.call("MakeCoffee", {})
    assert unknown[0] == rpc.CALLERROR and unknown[2] == "NotImplemented"
    bad = await peer.call("UsePriorityCharging", {"transactionId": "x"})  # activate missing
    assert bad[0] == rpc.CALLERROR  # the library's schema check still answers these


# ---------------------------------------------------------------------------
# EV needs, allowed energy transfer, priority charging
# ---------------------------------------------------------------------------


async def test_bidirectional_car_announces_its_v2x_needs(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(departure_s=7200, control_mode="DynamicControl"), "TOKEN")
    assert await st.plug_in(2, EvSpec(phases=1, max_ac_power_w=7_400.0), "TOKEN")
    needs = await wait_until(lambda: len(csms.payloads(st.id, "NotifyEVChargingNeeds")) == 2)
    by_evse = {
        p["evseId"]: p["chargingNeeds"] for p in csms.payloads(st.id, "NotifyEVChargingNeeds")
    }
    assert needs
    v2x = by_evse[1]
    assert v2x["requestedEnergyTransfer"] == "AC_BPT"
    assert set(v2x["availableEnergyTransfer"]) == {"AC_BPT", "AC_three_phase"}
    assert v2x["controlMode"] == "DynamicControl" and v2x["mobilityNeedsMode"] == "EVCC"
    params = v2x["v2xChargingParameters"]
    assert params["maxDischargePower"] == 11_000 and params["maxChargePower"] == 11_000
    assert params["evMinV2XEnergyRequest"] == -18_000  # 60 kWh from 50 % down to 20 %
    assert params["evMaxV2XEnergyRequest"] == 30_000
    assert params["evTargetEnergyRequest"] == 24_000 and params["targetSoC"] == 90
    assert "departureTime" in v2x
    plain = by_evse[2]
    assert plain["requestedEnergyTransfer"] == "AC_single_phase"
    assert "v2xChargingParameters" not in plain and plain["controlMode"] == "ScheduledControl"


async def test_allowed_energy_transfer_without_bpt_forbids_discharge(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    tx = st.evse(1).transaction_id
    body = profile(
        [{"operationMode": "CentralSetpoint", "setpoint": -6000.0, "dischargeLimit": -8000.0}]
    )
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(-6000.0))
    res = await peer.result(
        "NotifyAllowedEnergyTransfer",
        {"transactionId": tx, "allowedEnergyTransfer": ["AC_three_phase"]},
    )
    assert res["status"] == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == 0.0)
    assert st.v2x_status(1) == "idle"
    res = await peer.result(
        "NotifyAllowedEnergyTransfer",
        {"transactionId": tx, "allowedEnergyTransfer": ["AC_BPT", "AC_three_phase"]},
    )
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(-6000.0))
    unknown = await peer.result(
        "NotifyAllowedEnergyTransfer", {"transactionId": "nope", "allowedEnergyTransfer": ["DC"]}
    )
    assert unknown["status"] == "Rejected"
    # V2XChargingCtrlr.Enabled = false: no discharging at all
    enabled = {"component": {"name": "V2XChargingCtrlr"}, "variable": {"name": "Enabled"}}
    res = await peer.result(
        "SetVariables", {"setVariableData": [{**enabled, "attributeValue": "false"}]}
    )
    assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == 0.0)
    await peer.result("SetVariables", {"setVariableData": [{**enabled, "attributeValue": "true"}]})
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(-6000.0))


async def test_priority_charging_from_the_csms_and_the_button(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    tx = st.evse(1).transaction_id
    slow = profile([{"limit": 5000.0}], pid=1)
    assert (await set_profile(peer, 1, slow))["status"] == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(5000.0))
    res = await peer.result("UsePriorityCharging", {"transactionId": tx, "activate": True})
    assert res["status"] == "NoProfile"
    fast = profile([{"limit": 9000.0}], pid=2, purpose="PriorityCharging")
    assert (await set_profile(peer, 1, fast))["status"] == "Accepted"
    assert st.evse(1).power_w == pytest.approx(5000.0)  # not in priority mode yet
    res = await peer.result("UsePriorityCharging", {"transactionId": tx, "activate": True})
    assert res["status"] == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(9000.0))
    res = await peer.result("UsePriorityCharging", {"transactionId": "nope", "activate": True})
    assert res["status"] == "Rejected"
    # the driver's button switches it off again and tells the CSMS
    assert await st.press_priority_button(1) is False
    assert st.evse(1).power_w == pytest.approx(5000.0)
    notes = await wait_until(lambda: csms.payloads(st.id, "NotifyPriorityCharging"))
    assert notes[-1] == {"transactionId": tx, "activated": False}
    assert await st.press_priority_button(1) is True
    assert st.evse(1).power_w == pytest.approx(9000.0)
    with pytest.raises(ValueError):
        await st.press_priority_button(2)


# ---------------------------------------------------------------------------
# Operation modes
# ---------------------------------------------------------------------------


async def test_central_setpoint_charges_then_discharges_in_one_transaction(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    import_start = evse.meter_wh
    start = csms.clock.now() + timedelta(seconds=1)
    body = profile(
        [
            {"operationMode": "CentralSetpoint", "setpoint": 7000.0, "limit": 9000.0},
            {
                "startPeriod": 60,
                "operationMode": "CentralSetpoint",
                "setpoint": -5000.0,
                "dischargeLimit": -6000.0,
            },
        ],
        start=start,
    )
    mark = len(csms.log[st.id])
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(7000.0))
    assert st.v2x_status(1) == "charging" and st.operation_mode(1) is OperationMode.CENTRAL_SETPOINT
    soc_charging = evse.ev.soc
    await wait_until(lambda: evse.power_w == pytest.approx(-5000.0), timeout=5.0)
    assert st.v2x_status(1) == "discharging"
    switched = csms.clock.now()
    assert (switched - start).total_seconds() == pytest.approx(60.0, abs=6.0)
    st.advance(evse)
    imported, exported, soc_top = evse.meter_wh, evse.export_wh, evse.ev.soc
    t1 = evse.last_update
    assert imported - import_start >= 7000.0 * 55 / 3600
    assert soc_top > soc_charging
    await asyncio.sleep(0.5)  # 30 clock-seconds of discharge
    st.advance(evse)
    elapsed = (evse.last_update - t1).total_seconds()
    assert evse.meter_wh == imported  # the import register stands still
    assert evse.export_wh - exported == pytest.approx(5000.0 * elapsed / 3600, rel=1e-6)
    assert evse.ev.soc < soc_top
    # the CSMS saw the mode and the export
    modes = [e["transactionInfo"].get("operationMode") for e in events(csms, st.id, mark)]
    assert "CentralSetpoint" in modes
    assert any(e["triggerReason"] == "OperationModeChanged" for e in events(csms, st.id, mark))
    mark = len(csms.log[st.id])
    await peer.result("TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 1}})
    await wait_until(lambda: samples(csms, st.id, "Power.Active.Export", mark))
    assert samples(csms, st.id, "Power.Active.Export", mark)[-1] == pytest.approx(5000.0)
    assert samples(csms, st.id, "Power.Active.Import", mark)[-1] == 0.0
    assert samples(csms, st.id, "Energy.Active.Export.Register", mark)[-1] > 0
    await st.plug_out(1)
    ended = events(csms, st.id)[-1]
    assert ended["eventType"] == "Ended"
    values = {sv["measurand"]: sv["value"] for sv in ended["meterValue"][0]["sampledValue"]}
    assert values["Energy.Active.Export.Register"] == round(evse.export_wh)


async def test_soc_never_falls_below_min_soc(csms, stations):
    st, peer = await started(csms, stations, speed=1200.0)
    assert await st.plug_in(1, bidi(battery_kwh=10.0, soc=0.23, min_soc=0.2), "TOKEN")
    evse = st.evse(1)
    body = profile([{"operationMode": "CentralSetpoint", "setpoint": -11000.0}])
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(-11000.0))
    lowest = 1.0
    for _ in range(40):  # 40 x 50 ms = 40 clock-minutes
        await asyncio.sleep(0.05)
        st.advance(evse)
        lowest = min(lowest, evse.ev.soc)
    assert lowest == pytest.approx(0.2)
    assert evse.power_w == 0.0 and st.v2x_status(1) == "idle"
    # 3 % of 10 kWh plus what it took before the profile arrived (efficiency 1)
    assert evse.export_wh == pytest.approx(300.0 + evse.ev.charged_wh, rel=1e-6)
    await wait_until(lambda: evse.tx.charging_state == "SuspendedEV", timeout=3.0)


async def test_limits_and_discharge_limits_are_never_exceeded(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    cap = profile(
        [{"limit": 5000.0, "dischargeLimit": -3000.0}],
        pid=9,
        purpose="ChargingStationMaxProfile",
        start=csms.clock.now() - timedelta(seconds=1),
    )
    assert (await set_profile(peer, 0, cap))["status"] == "Accepted"
    body = profile([{"operationMode": "ExternalSetpoint", "dischargeLimit": -8000.0}], pid=1)
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    for ems, expected in ((-20_000.0, -3000.0), (20_000.0, 5000.0), (-1000.0, -1000.0)):
        st.set_external_setpoint(1, ems)
        assert evse.power_w == pytest.approx(expected)
    st.set_external_setpoint(1, None)
    assert evse.power_w == 0.0
    limits = profile([{"operationMode": "ExternalLimits", "dischargeLimit": -8000.0}], pid=1)
    assert (await set_profile(peer, 1, limits))["status"] == "Accepted"
    await wait_until(lambda: st.operation_mode(1) is OperationMode.EXTERNAL_LIMITS)
    assert evse.power_w == pytest.approx(5000.0)  # charges as much as allowed
    st.set_external_limits(1, 2500.0, 1000.0)
    assert evse.power_w == pytest.approx(2500.0)
    st.set_external_limits(1, None, None)
    assert evse.power_w == pytest.approx(5000.0)
    # a charge-only mode never discharges, whatever the EMS says
    only = profile([{"operationMode": "ChargingOnly", "limit": 6000.0}], pid=1)
    assert (await set_profile(peer, 1, only))["status"] == "Accepted"
    st.set_external_setpoint(1, -5000.0)
    assert evse.power_w == pytest.approx(5000.0)


async def test_local_frequency_follows_the_curve(csms, stations):
    grid = Grid(TableSignal([(0, 50.0)], start=csms.clock.now()))
    st, peer = await started(csms, stations, grid=grid)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    curve = [
        {"frequency": 49.8, "power": -8000.0},
        {"frequency": 49.95, "power": 0.0},
        {"frequency": 50.05, "power": 0.0},
        {"frequency": 50.2, "power": 8000.0},
    ]
    body = profile(
        [
            {
                "operationMode": "LocalFrequency",
                "v2xFreqWattCurve": curve,
                "v2xBaseline": 1000.0,
                "dischargeLimit": -10000.0,
            }
        ]
    )
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(1000.0))
    now = csms.clock.now()
    # a trace: 50 Hz, falls to 49.8 Hz within 60 s, rises to 50.2 Hz over the next 120 s
    st.attach_grid(Grid(TableSignal([(0, 50.0), (60, 49.8), (180, 50.2)], start=now)))
    seen: list[tuple[float, float]] = []
    for _ in range(60):
        await asyncio.sleep(0.05)  # 3 clock-seconds
        st.advance(evse)
        seen.append((st.v2x_state(1).measured.frequency_hz, evse.power_w))
    assert min(p for _, p in seen) < -5000.0 and max(p for _, p in seen) > 7000.0
    for f, p in seen:  # the curve at the frequency measured, plus the baseline, clamped
        if f < 49.95:
            curve_w = max(-8000.0, (f - 49.95) / 0.15 * 8000.0)
        elif f > 50.05:
            curve_w = min(8000.0, (f - 50.05) / 0.15 * 8000.0)
        else:
            curve_w = 0.0
        assert p == pytest.approx(max(-10000.0, min(11000.0, 1000.0 + curve_w)), abs=1.0)


async def test_local_load_balancing_discharges_above_the_upper_threshold(csms, stations):
    building = BuildingMeter(load_w=10_000.0)
    st, peer = await started(csms, stations, building=building)
    res = await peer.result(
        "SetVariables",
        {
            "setVariableData": [
                {
                    "component": {"name": "V2XChargingCtrlr"},
                    "variable": {"name": "LocalLoadBalancingUpperThreshold"},
                    "attributeValue": "20000",
                },
                {
                    "component": {"name": "V2XChargingCtrlr"},
                    "variable": {"name": "LocalLoadBalancingUpperOffset"},
                    "attributeValue": "1000",
                },
                {
                    "component": {"name": "V2XChargingCtrlr"},
                    "variable": {"name": "LocalLoadBalancingLowerThreshold"},
                    "attributeValue": "-2000",
                },
            ]
        },
    )
    assert {r["attributeStatus"] for r in res["setVariableResult"]} == {"Accepted"}
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    body = profile(
        [{"operationMode": "LocalLoadBalancing", "dischargeLimit": -10000.0, "limit": 11000.0}]
    )
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: st.operation_mode(1) is OperationMode.LOCAL_LOAD_BALANCING)
    # 10 kW + the car's 11 kW is above 20 kW: it comes down to 20 - 1 kW, then holds
    await wait_until(lambda: evse.power_w == pytest.approx(9000.0))
    await asyncio.sleep(0.1)
    assert evse.power_w == pytest.approx(9000.0)
    building.set_load_w(26_000.0)  # above the upper threshold: give back 26 - (20 - 1) kW
    await wait_until(lambda: evse.power_w == pytest.approx(-7000.0), timeout=2.0)
    assert st.v2x_status(1) == "discharging"
    building.set_load_w(-5_000.0)  # PV exports 5 kW, below the lower threshold: soak it up
    await wait_until(lambda: evse.power_w == pytest.approx(3000.0), timeout=2.0)
    assert st.v2x_status(1) == "charging"


async def test_voltvar_gives_reactive_power_by_the_measured_voltage(csms, stations):
    volts = TableSignal([(0, 220.8)])  # 96 % of 230 V
    st, peer = await started(csms, stations, grid=Grid(voltage=volts))
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    control = {
        "isDefault": False,
        "controlId": "vv-1",
        "controlType": "VoltVar",
        "curve": {
            "priority": 1,
            "yUnit": "PctMaxVar",
            "curveData": [
                {"x": 92.0, "y": 40.0},
                {"x": 98.0, "y": 0.0},
                {"x": 102.0, "y": 0.0},
                {"x": 108.0, "y": -40.0},
            ],
        },
    }
    mark = len(csms.log[st.id])
    res = await peer.result("SetDERControl", control)
    assert res["status"] == "Accepted"
    started_notes = await wait_until(lambda: csms.payloads(st.id, "NotifyDERStartStop", mark))
    assert started_notes[0]["controlId"] == "vv-1" and started_notes[0]["started"] is True
    q_max = 32 * 3 * VOLTS
    # 96 %: a third of the way from 98 % to 92 %: 40 % * 2/6 of Qmax injected
    await wait_until(
        lambda: evse.reactive_var == pytest.approx(-q_max * 40 / 100 * 2 / 6, rel=1e-3)
    )
    st.attach_grid(Grid(voltage=TableSignal([(0, 241.5)])))  # 105 %: absorbs 20 % of Qmax
    await wait_until(lambda: evse.reactive_var == pytest.approx(q_max * 0.2, rel=1e-3))
    mark2 = len(csms.log[st.id])
    await peer.result("TriggerMessage", {"requestedMessage": "MeterValues", "evse": {"id": 1}})
    await wait_until(lambda: samples(csms, st.id, "Power.Reactive.Import", mark2))
    assert samples(csms, st.id, "Power.Reactive.Import", mark2)[-1] == pytest.approx(
        q_max * 0.2, rel=1e-3
    )
    assert samples(csms, st.id, "Voltage", mark2)[0] == 241.5
    # GetDERControl reports it; unsupported controls are NotSupported
    res = await peer.result("GetDERControl", {"requestId": 5, "controlType": "VoltVar"})
    assert res["status"] == "Accepted"
    report = (await wait_until(lambda: csms.payloads(st.id, "ReportDERControl")))[0]
    assert report["curve"][0]["id"] == "vv-1" and report["curve"][0]["curveType"] == "VoltVar"
    assert report["curve"][0]["curve"]["curveData"][0] == {"x": 92.0, "y": 40.0}
    res = await peer.result(
        "SetDERControl",
        {
            "isDefault": False,
            "controlId": "fd",
            "controlType": "FreqDroop",
            "freqDroop": {
                "priority": 1,
                "overFreq": 50.2,
                "underFreq": 49.8,
                "overDroop": 5,
                "underDroop": 5,
                "responseTime": 1,
            },
        },
    )
    assert res["status"] == "NotSupported"
    assert (await peer.result("GetDERControl", {"requestId": 6, "controlId": "zz"}))[
        "status"
    ] == "NotFound"
    # cleared: the reactive power goes and the CSMS hears that the control stopped
    res = await peer.result("ClearDERControl", {"isDefault": False, "controlId": "vv-1"})
    assert res["status"] == "Accepted"
    await wait_until(lambda: evse.reactive_var == 0.0)
    stops = await wait_until(
        lambda: [p for p in csms.payloads(st.id, "NotifyDERStartStop") if not p["started"]]
    )
    assert stops[0]["controlId"] == "vv-1"


async def test_limit_max_discharge_der_control(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    body = profile([{"operationMode": "CentralSetpoint", "setpoint": -9000.0}])
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(-9000.0))
    res = await peer.result(
        "SetDERControl",
        {
            "isDefault": False,
            "controlId": "lmd",
            "controlType": "LimitMaxDischarge",
            "limitMaxDischarge": {"priority": 0, "pctMaxDischargePower": 10},
        },
    )
    assert res["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(-0.1 * 32 * 3 * VOLTS))


async def test_idle_with_evse_sleep(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    await wait_until(lambda: evse.power_w == pytest.approx(11000.0))
    mark = len(csms.log[st.id])
    body = profile([{"operationMode": "Idle", "evseSleep": True, "limit": 0.0}])
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == 0.0)
    assert st.v2x_state(1).sleep and st.v2x_status(1) == "idle"
    event = (await wait_until(lambda: events(csms, st.id, mark)))[0]
    assert event["evseSleep"] is True
    assert event["triggerReason"] == "OperationModeChanged"
    assert event["transactionInfo"]["operationMode"] == "Idle"
    assert event["transactionInfo"]["chargingState"] == "SuspendedEVSE"
    before = evse.meter_wh
    await asyncio.sleep(0.2)
    st.advance(evse)
    assert evse.meter_wh == before
    mark = len(csms.log[st.id])
    res = await peer.result("ClearChargingProfile", {"chargingProfileId": 1})
    assert res["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(11000.0))
    woke = (await wait_until(lambda: events(csms, st.id, mark)))[0]
    assert woke["evseSleep"] is False
    assert woke["transactionInfo"]["operationMode"] == "ChargingOnly"


async def test_update_dynamic_schedule_moves_the_setpoint_at_once(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, bidi(), "TOKEN")
    evse = st.evse(1)
    body = profile(
        [
            {
                "operationMode": "CentralFrequency",
                "setpoint": 2000.0,
                "dischargeLimit": -9000.0,
                "limit": 9000.0,
            }
        ],
        pid=21,
        purpose="TxProfile",
    )
    assert (await set_profile(peer, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(2000.0))
    for setpoint in (-4000.0, 3500.0, -8000.0):
        res = await peer.result(
            "UpdateDynamicSchedule",
            {"chargingProfileId": 21, "scheduleUpdate": {"setpoint": setpoint}},
        )
        assert res["status"] == "Accepted"
        await wait_until(lambda s=setpoint: evse.power_w == pytest.approx(s))
    per_phase = {"setpoint": -1000.0, "setpoint_L2": -1000.0, "setpoint_L3": -1000.0}
    res = await peer.result(
        "UpdateDynamicSchedule", {"chargingProfileId": 21, "scheduleUpdate": per_phase}
    )
    assert res["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(-3000.0))
    too_low = {"setpoint": -9500.0}  # below the period's dischargeLimit
    res = await peer.result(
        "UpdateDynamicSchedule", {"chargingProfileId": 21, "scheduleUpdate": too_low}
    )
    assert res["status"] == "Rejected"
    res = await peer.result(
        "UpdateDynamicSchedule", {"chargingProfileId": 99, "scheduleUpdate": {"setpoint": 1.0}}
    )
    assert res["status"] == "Rejected"
    assert evse.power_w == pytest.approx(-3000.0)


async def test_charge_only_car_on_a_21_station_behaves_like_201(csms, stations):
    st, peer = await started(csms, stations)
    assert await st.plug_in(1, EvSpec(battery_kwh=60.0, soc=0.3), "TOKEN")
    evse = st.evse(1)
    await wait_until(lambda: evse.power_w == pytest.approx(11000.0))
    body = profile([{"limit": 10.0}], unit="A")
    assert (await set_profile(peer, 0, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(10 * 3 * VOLTS))
    setpoint = profile(
        [{"operationMode": "CentralSetpoint", "setpoint": -5000.0}], pid=2, stack_level=1
    )
    assert (await set_profile(peer, 1, setpoint))["status"] == "Accepted"
    await wait_until(lambda: st.operation_mode(1) is OperationMode.CENTRAL_SETPOINT)
    assert evse.power_w == 0.0  # it cannot discharge
    assert evse.export_wh == 0.0
    started_event = events(csms, st.id)[0]
    assert started_event["transactionInfo"]["operationMode"] == "ChargingOnly"


# ---------------------------------------------------------------------------
# Against the real evflex CSMS
# ---------------------------------------------------------------------------


@pytest.fixture
async def node21(node, stations):
    """A 2.1 station with a bidirectional car plugged into EVSE 1 of a real evflex node."""
    await node.http.post("/api/v1/id-tokens", json={"id_token": "V2X", "status": "Accepted"})
    spec = StationSpec(id="SIM21-REAL", ocpp_version="2.1", evses=2)
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(SPEED), meter_interval_s=60.0, seed=2)
    stations.append(st)
    await st.start(timeout=10.0)
    assert await st.plug_in(1, bidi(battery_kwh=40.0, soc=0.6), "V2X")
    await node.wait_for(lambda: _csms_tx(node, st.id))
    return node, st


async def _csms_tx(node, station_id: str) -> dict | None:
    txs = await node.transactions(station_id=station_id)
    return next((t for t in txs if not t.get("stopped_at")), None)


async def _put_profile(node, station_id: str, evse_id: int, body: dict) -> dict:
    """The operator's API: PUT /stations/{id}/charging-profiles (kept and retried by evflex)."""
    r = await node.http.put(
        f"/api/v1/stations/{station_id}/charging-profiles",
        json={"evse_id": evse_id, "profile": body},
    )
    assert r.status_code == 200, r.text
    return r.json()


async def _command_profile(node, station_id: str, evse_id: int, body: dict) -> dict:
    """SetChargingProfile through the command API (the 2.1 command builder)."""
    r = await node.command(station_id, "set-charging-profile", {"evse": evse_id, "profile": body})
    assert r.status_code == 200, r.text
    return r.json()["response"]


async def test_real_csms_profile_api_limits_a_21_station(node21):
    node, st = node21
    evse = st.evse(1)
    await wait_until(lambda: evse.power_w == pytest.approx(11_000.0))
    out = await _put_profile(node, st.id, 1, profile([{"limit": 10.0}], pid=30, unit="A"))
    assert out["status"].lower() == "accepted", out
    await wait_until(lambda: evse.power_w == pytest.approx(10 * 3 * VOLTS))
    assert st.stats.errors == 0, st.stats.error_samples


async def test_real_csms_profile_api_keeps_v2x_fields(node21):
    node, st = node21
    body = profile(
        [
            {
                "operationMode": "CentralSetpoint",
                "setpoint": -3000.0,
                "limit": 8000.0,
                "dischargeLimit": -5000.0,
            }
        ],
        pid=32,
    )
    await _put_profile(node, st.id, 1, body)
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(-3000.0), timeout=3.0)


async def test_real_csms_central_setpoint_charge_then_discharge(node21):
    node, st = node21
    evse = st.evse(1)
    assert (await node.station(st.id))["ocpp_version"] == "2.1"
    start = st.now() + timedelta(seconds=2)
    body = profile(
        [
            {"operationMode": "CentralSetpoint", "setpoint": 6000.0, "limit": 8000.0},
            {
                "startPeriod": 60,
                "operationMode": "CentralSetpoint",
                "setpoint": -4000.0,
                "limit": 8000.0,
                "dischargeLimit": -5000.0,
            },
        ],
        pid=31,
        start=start,
    )
    assert (await _command_profile(node, st.id, 1, body))["status"] == "Accepted"
    await wait_until(lambda: evse.power_w == pytest.approx(6000.0), timeout=5.0)
    await wait_until(lambda: evse.power_w == pytest.approx(-4000.0), timeout=5.0)
    await asyncio.sleep(0.3)
    st.advance(evse)
    assert evse.export_wh > 0 and st.v2x_status(1) == "discharging"
    assert st.stats.errors == 0, st.stats.error_samples


async def test_real_csms_commands_reach_the_station(node21):
    node, st = node21
    evse = st.evse(1)
    tx = evse.transaction_id
    body = profile(
        [
            {
                "operationMode": "CentralFrequency",
                "setpoint": 1000.0,
                "dischargeLimit": -9000.0,
                "limit": 9000.0,
                "limit_L2": 0.0,
                "limit_L3": 0.0,
            }
        ],
        pid=41,
        purpose="TxProfile",
    )
    assert (await _command_profile(node, st.id, 1, body))["status"] == "Accepted"
    period = st.profiles.get(41).profile.schedule.periods[0]
    assert period.limit_l23 == (0.0, 0.0)  # per-phase keys made it through both libraries
    await wait_until(lambda: evse.power_w == pytest.approx(1000.0))
    r = await node.command(
        st.id, "update-dynamic-schedule", {"charging_profile_id": 41, "setpoint": -2500.0}
    )
    assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted", r.text
    await wait_until(lambda: evse.power_w == pytest.approx(-2500.0))
    r = await node.command(
        st.id, "allowed-energy-transfer", {"transaction_id": tx, "allowed": ["AC_three_phase"]}
    )
    assert r.json()["response"]["status"] == "Accepted", r.text
    await wait_until(lambda: evse.power_w == 0.0)
    r = await node.command(st.id, "use-priority-charging", {"transaction_id": tx})
    assert r.json()["response"]["status"] == "NoProfile", r.text
    r = await node.command(
        st.id,
        "set-der-control",
        {
            "control_id": "vv",
            "control_type": "VoltVar",
            "curve": {"priority": 0, "points": [[90, 30], [100, 0], [110, -30]]},
        },
    )
    assert r.json()["response"]["status"] == "Accepted", r.text
    r = await node.command(
        st.id,
        "set-der-control",
        {
            "control_id": "x",
            "control_type": "FreqDroop",
            "parameters": {
                "freqDroop": {
                    "priority": 1,
                    "overFreq": 50.2,
                    "underFreq": 49.8,
                    "overDroop": 5,
                    "underDroop": 5,
                    "responseTime": 1,
                }
            },
        },
    )
    assert r.json()["response"]["status"] == "NotSupported", r.text
    assert st.stats.errors == 0, st.stats.error_samples


async def test_real_csms_runs_a_mixed_fleet_with_v2x_cars(node):
    for token in ("TOKEN1", "TOKEN2"):
        await node.http.post("/api/v1/id-tokens", json={"id_token": token, "status": "Accepted"})
    cfg = SimConfig(
        url=node.ocpp_url,
        stations=3,
        v201_share=0.34,
        v21_share=0.34,
        bidirectional_share=0.5,
        synthetic_grid=True,
        evses_per_station=2,
        speed=3600.0,
        duration_s=3 * 3600.0,
        meter_interval_s=300.0,
        sessions_per_evse_per_day=24.0,
        dwell_min_s=900.0,
        dwell_max_s=3600.0,
        id_tokens=["TOKEN1", "TOKEN2"],
        seed=4,
        station_prefix="MIX",
    )
    sim = Simulation(cfg)
    summary = await sim.run()
    assert sorted(s.version for s in sim.stations) == ["1.6", "2.0.1", "2.1"]
    assert summary.stations_booted == 3
    assert summary.sessions_started > 0 and summary.energy_wh > 0
    assert summary.errors == 0, summary.error_samples
    st21 = next(s for s in sim.stations if s.version == "2.1")
    assert (await node.station(st21.id))["ocpp_version"] == "2.1"
