"""The simulated stations execute charging profiles (OCPP 1.6 SmartCharging, 2.0.1 K).

The stations are driven by a small test-only central system built on the
``ocpp`` library, which sends raw SetChargingProfile & co. The expected
composite schedules come from the shared :mod:`evflex.smartcharging` module.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from ocpp.charge_point import snake_to_camel_case
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from evflex.clock import AcceleratedClock, isoformat, parse_datetime
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.smartcharging import (
    ChargingProfile,
    InstalledProfile,
    Kind,
    Period,
    Purpose,
    RateUnit,
    Recurrency,
    Schedule,
    composite_schedule,
    simple_profile,
    to_wire,
)

from .conftest import wait_until

#: Clock speed: one clock-minute per real second, so "within a few clock-seconds"
#: is still tens of real milliseconds.
SPEED = 60.0
VOLTS = 230.0
VERSIONS = pytest.mark.parametrize("version", ["1.6", "2.0.1"])


# ---------------------------------------------------------------------------
# A small central system
# ---------------------------------------------------------------------------


class _Recording:
    id: str
    csms: Csms

    async def route_message(self, raw_msg: str) -> None:
        msg = json.loads(raw_msg)
        if msg[0] == 2:
            self.csms.log[self.id].append((msg[2], msg[3], self.csms.clock.now()))
        await super().route_message(raw_msg)  # type: ignore[misc]


class Central16(_Recording, Cp16):
    def __init__(self, station_id: str, ws: Any, csms: Csms) -> None:
        super().__init__(station_id, ws, response_timeout=5)
        self.csms = csms

    @on(Action16.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        now = isoformat(self.csms.clock.now())
        return result16.BootNotification(current_time=now, interval=300, status="Accepted")

    @on(Action16.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=isoformat(self.csms.clock.now()))

    @on(Action16.status_notification)
    def on_status(self, **_: Any) -> Any:
        return result16.StatusNotification()

    @on(Action16.authorize)
    def on_authorize(self, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on(Action16.start_transaction)
    def on_start(self, **_: Any) -> Any:
        return result16.StartTransaction(
            transaction_id=next(self.csms.tx_ids), id_tag_info={"status": "Accepted"}
        )

    @on(Action16.stop_transaction)
    def on_stop(self, **_: Any) -> Any:
        return result16.StopTransaction()

    @on(Action16.meter_values)
    def on_meter_values(self, **_: Any) -> Any:
        return result16.MeterValues()


class Central201(_Recording, Cp201):
    def __init__(self, station_id: str, ws: Any, csms: Csms) -> None:
        super().__init__(station_id, ws, response_timeout=5)
        self.csms = csms

    @on(Action201.boot_notification)
    def on_boot(self, **_: Any) -> Any:
        now = isoformat(self.csms.clock.now())
        return result201.BootNotification(current_time=now, interval=300, status="Accepted")

    @on(Action201.heartbeat)
    def on_heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=isoformat(self.csms.clock.now()))

    @on(Action201.status_notification)
    def on_status(self, **_: Any) -> Any:
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, **_: Any) -> Any:
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on(Action201.transaction_event)
    def on_transaction_event(self, **_: Any) -> Any:
        return result201.TransactionEvent()

    @on(Action201.meter_values)
    def on_meter_values(self, **_: Any) -> Any:
        return result201.MeterValues()

    @on(Action201.notify_ev_charging_needs)
    def on_notify_ev_charging_needs(self, **_: Any) -> Any:
        return result201.NotifyEVChargingNeeds(status="Accepted")

    @on(Action201.report_charging_profiles)
    def on_report_charging_profiles(self, **_: Any) -> Any:
        return result201.ReportChargingProfiles()


class Csms:
    def __init__(self) -> None:
        self.log: dict[str, list[tuple[str, dict[str, Any], Any]]] = defaultdict(list)
        self.cps: dict[str, Any] = {}
        self.tx_ids = itertools.count(100)
        self.clock = AcceleratedClock(SPEED)
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/ocpp"

    async def start(self) -> None:
        self.server = await serve(
            self._handler, "127.0.0.1", 0, subprotocols=["ocpp1.6", "ocpp2.0.1"]
        )

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _handler(self, ws: Any) -> None:
        station_id = ws.request.path.rsplit("/", 1)[-1]
        cls = Central16 if ws.subprotocol == "ocpp1.6" else Central201
        cp = cls(station_id, ws, self)
        self.cps[station_id] = cp
        try:
            await cp.start()
        except ConnectionClosed:
            pass

    def payloads(self, station_id: str, action: str, start: int = 0) -> list[dict[str, Any]]:
        return [p for a, p, _ in self.log[station_id][start:] if a == action]

    def received(self, station_id: str, action: str, start: int = 0) -> list[tuple[dict, Any]]:
        """(payload, clock time of arrival) of the requests of one kind."""
        return [(p, t) for a, p, t in self.log[station_id][start:] if a == action]


@pytest.fixture
async def csms():
    central = Csms()
    await central.start()
    yield central
    await central.close()


_ids = itertools.count(1)


async def started(
    csms: Csms, made: list[SimStation], version: str, **spec_kw: Any
) -> tuple[SimStation, Any]:
    spec = StationSpec(
        id=f"SC{version.replace('.', '')}-{next(_ids)}", ocpp_version=version, **spec_kw
    )
    station = SimStation(spec, csms.url, csms.clock, seed=3, meter_interval_s=60.0)
    made.append(station)
    await station.start(timeout=5.0)
    await wait_until(lambda: csms.payloads(station.id, "Heartbeat"))
    return station, csms.cps[station.id]


def ev(**kw: Any) -> EvSpec:
    values: dict[str, Any] = {
        "battery_kwh": 60.0,
        "soc": 0.4,
        "target_soc": 1.0,
        "max_ac_power_w": 11_000.0,
        "phases": 3,
    }
    values.update(kw)
    return EvSpec(**values)


async def plugged(st: SimStation, evse_id: int, car: EvSpec) -> Any:
    """Plug in and return the transaction id once the CSMS knows it."""
    assert await st.plug_in(evse_id, car, "TOKEN")
    if st.version == "1.6":
        await wait_until(lambda: (st.evse(evse_id).transaction_id or -1) >= 100)
    return st.evse(evse_id).transaction_id


async def set_profile(cp: Any, version: str, evse_id: int, profile: ChargingProfile) -> Any:
    if version == "1.6":
        return await cp.call(
            call16.SetChargingProfile(
                connector_id=evse_id, cs_charging_profiles=to_wire(profile, version)
            )
        )
    return await cp.call(
        call201.SetChargingProfile(evse_id=evse_id, charging_profile=to_wire(profile, version))
    )


async def clear_profile(cp: Any, version: str, profile_id: int) -> str:
    if version == "1.6":
        return (await cp.call(call16.ClearChargingProfile(id=profile_id))).status
    return (await cp.call(call201.ClearChargingProfile(charging_profile_id=profile_id))).status


def power_samples(csms: Csms, st: SimStation, start: int = 0) -> list[tuple[float, Any, str]]:
    """(Power.Active.Import in W, sample time, context) of every meter value the CSMS got."""
    action = "MeterValues" if st.version == "1.6" else "TransactionEvent"
    out = []
    for payload in csms.payloads(st.id, action, start):
        for mv in payload.get("meterValue") or []:
            for sv in mv["sampledValue"]:
                if sv.get("measurand") == "Power.Active.Import":
                    out.append(
                        (float(sv["value"]), parse_datetime(mv["timestamp"]), sv.get("context"))
                    )
    return out


def charging_states(csms: Csms, st: SimStation, evse_id: int, start: int = 0) -> list[str]:
    """1.6: the connector statuses; 2.0.1: the chargingState of the TransactionEvents."""
    if st.version == "1.6":
        return [
            p["status"]
            for p in csms.payloads(st.id, "StatusNotification", start)
            if p["connectorId"] == evse_id
        ]
    return [
        p["transactionInfo"]["chargingState"]
        for p in csms.payloads(st.id, "TransactionEvent", start)
        if "chargingState" in p["transactionInfo"]
    ]


# ---------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------


@VERSIONS
async def test_tx_default_profile_limits_the_power_at_once(csms, stations, version):
    st, cp = await started(csms, stations, version)
    await plugged(st, 1, ev())
    await plugged(st, 2, ev(phases=1, max_ac_power_w=7_400.0))
    assert st.evse(1).power_w == pytest.approx(11_000)
    assert st.evse(2).power_w == pytest.approx(7_360, abs=50)

    mark = len(csms.log[st.id])
    set_at = csms.clock.now()
    res = await set_profile(cp, version, 0, simple_profile(1, Purpose.TX_DEFAULT, 10.0))
    assert res.status == "Accepted"
    three, one = 10 * VOLTS * 3, 10 * VOLTS
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(three))
    assert st.evse(2).power_w == pytest.approx(one)
    # The CSMS sees the new power within a few clock-seconds (not at the next sample).
    seen = await wait_until(
        lambda: [s for s in power_samples(csms, st, mark) if s[0] == pytest.approx(three)]
    )
    assert (seen[0][1] - set_at).total_seconds() < 5.0
    assert seen[0][2] == "Other"
    await wait_until(lambda: any(s[0] == pytest.approx(one) for s in power_samples(csms, st, mark)))
    if version == "2.0.1":
        rate = [
            e for e in csms.payloads(st.id, "TransactionEvent", mark) if e["eventType"] == "Updated"
        ]
        assert {e["triggerReason"] for e in rate} == {"ChargingRateChanged"}
    # Energy keeps flowing at the new rate.
    before = st.evse(1).meter_wh
    await asyncio.sleep(0.5)  # 30 clock-seconds
    st.advance(st.evse(1))
    assert st.evse(1).meter_wh - before == pytest.approx(three * 30 / 3600, rel=0.3)
    assert st.stats.errors == 0


@VERSIONS
async def test_schedule_boundaries_are_executed(csms, stations, version):
    st, cp = await started(csms, stations, version)
    await plugged(st, 1, ev())
    # A start between whole seconds: the boundaries fall between the station's seconds.
    start = csms.clock.now() + timedelta(seconds=0.37)
    profile = ChargingProfile(
        id=5,
        stack_level=0,
        purpose=Purpose.TX_DEFAULT,
        kind=Kind.ABSOLUTE,
        schedule=Schedule(
            rate_unit=RateUnit.W,
            periods=(
                Period(0, 9_000.0),
                Period(40, 4_140.0),
                Period(80, 0.0),
                Period(100, 11_000.0),
            ),
            start=start,
        ),
    )

    mark = len(csms.log[st.id])
    assert (await set_profile(cp, version, 1, profile)).status == "Accepted"
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(9_000))
    # No message from the CSMS: the station itself moves on at the period boundaries.
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(4_140), timeout=3.0)
    await wait_until(lambda: st.evse(1).power_w == 0.0, timeout=3.0)
    await wait_until(lambda: "SuspendedEVSE" in charging_states(csms, st, 1, mark))
    await wait_until(lambda: st.evse(1).power_w == pytest.approx(11_000), timeout=3.0)
    await wait_until(lambda: charging_states(csms, st, 1, mark)[-1] == "Charging")

    def changes() -> list[tuple[float, float]]:
        """(power, clock-seconds since the schedule start) of the prompt meter values."""
        return [
            (w, (t - start).total_seconds())
            for w, t, context in power_samples(csms, st, mark)
            if context == "Other"
        ]

    await wait_until(lambda: len(changes()) >= 4)
    powers = [w for w, _ in changes()[:4]]
    assert powers == [pytest.approx(9_000), pytest.approx(4_140), 0.0, pytest.approx(11_000)]
    # Cuts take effect on time (at most a second early), raises at most half a second
    # late (plus the scheduling delay of a busy test machine).
    for (_, at), boundary in zip(changes()[1:4], (40, 80, 100), strict=True):
        assert boundary - 1.1 <= at <= boundary + 3.0, (boundary, at)
    assert st.stats.errors == 0


@VERSIONS
async def test_tx_profile_below_minimum_suspends_and_clear_resumes(csms, stations, version):
    st, cp = await started(csms, stations, version)
    tx_id = await plugged(st, 1, ev())
    await wait_until(lambda: "Charging" in charging_states(csms, st, 1))

    # A TxProfile needs a running transaction on that EVSE.
    idle = simple_profile(7, Purpose.TX, 16.0, transaction_id=str(tx_id))
    assert (await set_profile(cp, version, 2, idle)).status == "Rejected"
    wrong = simple_profile(7, Purpose.TX, 16.0, transaction_id="999999")
    assert (await set_profile(cp, version, 1, wrong)).status == "Rejected"

    mark = len(csms.log[st.id])
    low = simple_profile(7, Purpose.TX, 4.0, transaction_id=str(tx_id), stack_level=1)
    assert (await set_profile(cp, version, 1, low)).status == "Accepted"
    await wait_until(lambda: "SuspendedEVSE" in charging_states(csms, st, 1, mark))
    assert st.evse(1).power_w == 0.0 and st.evse(1).limit_w == 0.0
    if version == "1.6":
        assert st.status(1) == "SuspendedEVSE"
    else:
        changed = [
            e
            for e in csms.payloads(st.id, "TransactionEvent", mark)
            if e["triggerReason"] == "ChargingStateChanged"
        ]
        assert changed[0]["transactionInfo"]["chargingState"] == "SuspendedEVSE"
    await wait_until(lambda: any(s[0] == 0.0 for s in power_samples(csms, st, mark)))

    mark = len(csms.log[st.id])
    assert await clear_profile(cp, version, 7) == "Accepted"
    await wait_until(lambda: "Charging" in charging_states(csms, st, 1, mark))
    assert st.evse(1).power_w == pytest.approx(11_000)
    assert await clear_profile(cp, version, 7) == "Unknown"

    # A TxProfile ends with its transaction.
    again = simple_profile(8, Purpose.TX, 10.0, transaction_id=str(tx_id))
    assert (await set_profile(cp, version, 1, again)).status == "Accepted"
    assert [i.profile.id for i in st.profiles] == [8]
    await st.plug_out(1)
    assert list(st.profiles) == []
    assert st.evse(1).limit_w == st.spec.evse_limit_w
    assert st.stats.errors == 0


@VERSIONS
async def test_remote_start_with_tx_profile(csms, stations, version):
    st, cp = await started(csms, stations, version)
    profile = simple_profile(11, Purpose.TX, 8.0)
    if version == "1.6":
        res = await cp.call(
            call16.RemoteStartTransaction(
                id_tag="TOKEN", connector_id=1, charging_profile=to_wire(profile, version)
            )
        )
        bad = await cp.call(
            call16.RemoteStartTransaction(
                id_tag="TOKEN",
                connector_id=2,
                charging_profile=to_wire(simple_profile(12, Purpose.TX_DEFAULT, 8.0), version),
            )
        )
    else:
        res = await cp.call(
            call201.RequestStartTransaction(
                id_token={"id_token": "TOKEN", "type": "Central"},
                remote_start_id=1,
                evse_id=1,
                charging_profile=to_wire(profile, version),
            )
        )
        bad = await cp.call(
            call201.RequestStartTransaction(
                id_token={"id_token": "TOKEN", "type": "Central"},
                remote_start_id=2,
                evse_id=2,
                charging_profile=to_wire(simple_profile(12, Purpose.TX_DEFAULT, 8.0), version),
            )
        )
    assert res.status == "Accepted"
    assert bad.status == "Rejected"
    await wait_until(lambda: st.evse(1).tx is not None and st.evse(1).power_w > 0)
    assert st.evse(1).power_w == pytest.approx(8 * VOLTS * 3)
    installed = list(st.profiles)
    assert [(i.evse_id, i.profile.id) for i in installed] == [(1, 11)]
    if version == "2.0.1":
        assert installed[0].profile.transaction_id == st.evse(1).transaction_id
    await st.plug_out(1)
    assert list(st.profiles) == []
    assert st.stats.errors == 0


@VERSIONS
async def test_same_stack_level_replaces_in_16_and_is_refused_in_201(csms, stations, version):
    st, cp = await started(csms, stations, version)
    first = simple_profile(1, Purpose.TX_DEFAULT, 16.0)
    second = simple_profile(2, Purpose.TX_DEFAULT, 10.0)
    assert (await set_profile(cp, version, 0, first)).status == "Accepted"
    res = await set_profile(cp, version, 0, second)
    if version == "1.6":
        assert res.status == "Accepted"
        assert [i.profile.id for i in st.profiles] == [2]
    else:
        assert res.status == "Rejected"
        assert res.status_info["reason_code"] == "DuplicateProfile"
        assert [i.profile.id for i in st.profiles] == [1]
        # A station-wide maximum must be absolute in 2.0.1 (K01.FR.38).
        relative_max = simple_profile(3, Purpose.STATION_MAX, 20.0)
        res = await set_profile(cp, version, 0, relative_max)
        assert res.status == "Rejected" and res.status_info["reason_code"] == "InvalidProfile"
    # The same id replaces the profile in both versions.
    kept = next(iter(st.profiles)).profile.id
    again = simple_profile(kept, Purpose.TX_DEFAULT, 8.0)
    assert (await set_profile(cp, version, 0, again)).status == "Accepted"
    installed = [(i.profile.id, i.profile.schedule.periods[0].limit) for i in st.profiles]
    assert installed == [(kept, 8.0)]
    await wait_until(lambda: st.evse(1).limit_w == pytest.approx(8 * VOLTS * 3))
    assert st.stats.errors == 0


# ---------------------------------------------------------------------------
# Composite schedule
# ---------------------------------------------------------------------------


@VERSIONS
async def test_composite_schedule_equals_the_shared_computation(csms, stations, version):
    st, cp = await started(csms, stations, version)
    tx_id = await plugged(st, 1, ev())
    now = csms.clock.now().replace(microsecond=0)
    station_max = ChargingProfile(
        id=1,
        stack_level=0,
        purpose=Purpose.STATION_MAX,
        kind=Kind.ABSOLUTE,
        schedule=Schedule(
            rate_unit=RateUnit.A,
            periods=(Period(0, 20.0), Period(1_800, 12.0)),
            start=now - timedelta(seconds=100),
        ),
    )
    tx_default = ChargingProfile(
        id=2,
        stack_level=0,
        purpose=Purpose.TX_DEFAULT,
        kind=Kind.RECURRING,
        recurrency=Recurrency.DAILY,
        schedule=Schedule(
            rate_unit=RateUnit.W,
            periods=(Period(0, 11_000.0), Period(3_600, 6_900.0)),
            start=now - timedelta(seconds=3_000),
        ),
    )
    tx_profile = ChargingProfile(
        id=3,
        stack_level=2,
        purpose=Purpose.TX,
        kind=Kind.RELATIVE,
        transaction_id=str(tx_id),
        schedule=Schedule(
            rate_unit=RateUnit.A,
            periods=(Period(0, 16.0), Period(900, 10.0)),
            duration_s=2_400,
        ),
    )
    for evse_id, profile in ((0, station_max), (0, tx_default), (1, tx_profile)):
        assert (await set_profile(cp, version, evse_id, profile)).status == "Accepted"
    installed = [
        InstalledProfile(0, station_max),
        InstalledProfile(0, tx_default),
        InstalledProfile(1, tx_profile),
    ]
    tx = st.evse(1).tx
    assert tx is not None

    for evse_id, unit in ((1, "W"), (1, "A"), (1, None), (2, "A"), (0, "W")):
        if version == "1.6":
            res = await cp.call(
                call16.GetCompositeSchedule(
                    connector_id=evse_id, duration=7_200, charging_rate_unit=unit
                )
            )
            assert res.status == "Accepted"
            answer = {
                "connectorId": res.connector_id,
                "scheduleStart": res.schedule_start,
                "chargingSchedule": _camel(res.charging_schedule),
            }
            start = parse_datetime(res.schedule_start)
        else:
            res = await cp.call(
                call201.GetCompositeSchedule(
                    duration=7_200, evse_id=evse_id, charging_rate_unit=unit
                )
            )
            assert res.status == "Accepted"
            answer = _camel(res.schedule)
            start = parse_datetime(answer["scheduleStart"])
        running = evse_id == 1
        expected = composite_schedule(
            installed,
            evse_id,
            start,
            7_200,
            RateUnit(unit) if unit else None,
            transaction_id=str(tx.id) if running else None,
            transaction_start=tx.started_at if running else None,
            voltage=st.spec.voltage,
            phases=st.spec.phases,
            max_current_a=st.spec.max_current_a * (st.spec.evses if evse_id == 0 else 1),
        )
        assert answer == expected.to_wire(version), (evse_id, unit)
        assert len(expected.periods) > 1

    # What the station executes is that composite's limit in force now.
    await wait_until(lambda: st.evse(1).limit_w == pytest.approx(16 * VOLTS * 3))
    assert st.evse(2).limit_w == pytest.approx(min(20.0 * VOLTS * 3, 11_000.0))

    if version == "1.6":
        unknown = await cp.call(call16.GetCompositeSchedule(connector_id=5, duration=60))
    else:
        unknown = await cp.call(call201.GetCompositeSchedule(duration=60, evse_id=5))
    assert unknown.status == "Rejected"
    assert st.stats.errors == 0


def _camel(data: Any) -> Any:
    """Undo the ocpp library's snake_case keys of an answer (Decimal values become floats)."""
    return json.loads(json.dumps(snake_to_camel_case(data), default=float))


# ---------------------------------------------------------------------------
# Reject / ignore
# ---------------------------------------------------------------------------


@VERSIONS
async def test_reject_mode(csms, stations, version):
    st, cp = await started(csms, stations, version, profile_behaviour="reject")
    res = await set_profile(cp, version, 0, simple_profile(1, Purpose.TX_DEFAULT, 10.0))
    assert res.status == "Rejected"
    if version == "2.0.1":
        assert res.status_info["reason_code"] == "UnsupportedRequest"
    assert list(st.profiles) == []
    assert st.stats.errors == 0


@VERSIONS
async def test_ignore_mode_lets_the_csms_time_out(csms, stations, version):
    st, cp = await started(csms, stations, version, profile_behaviour="ignore")
    await plugged(st, 1, ev())
    cp._response_timeout = 0.3
    with pytest.raises(asyncio.TimeoutError):
        await set_profile(cp, version, 0, simple_profile(1, Purpose.TX_DEFAULT, 6.0))
    assert "SetChargingProfile" in st.received
    assert list(st.profiles) == [] and st.evse(1).power_w == pytest.approx(11_000)
    # The link is still fine for everything else.
    cp._response_timeout = 5
    if version == "1.6":
        res = await cp.call(call16.GetCompositeSchedule(connector_id=1, duration=60))
    else:
        res = await cp.call(call201.GetCompositeSchedule(duration=60, evse_id=1))
    assert res.status == "Accepted"


# ---------------------------------------------------------------------------
# 2.0.1 messages, configuration
# ---------------------------------------------------------------------------


async def test_notify_ev_charging_needs_201(csms, stations):
    st, _ = await started(csms, stations, "2.0.1")
    tx_id = await plugged(st, 1, ev(soc=0.4, target_soc=0.8, departure_s=3_600))
    await plugged(st, 2, ev(phases=1, max_ac_power_w=7_400.0, soc=0.5))
    needs = await wait_until(
        lambda: (
            len(csms.payloads(st.id, "NotifyEVChargingNeeds")) == 2
            and csms.payloads(st.id, "NotifyEVChargingNeeds")
        )
    )
    first, second = sorted(needs, key=lambda p: p["evseId"])
    started_ev = next(
        e
        for e in csms.payloads(st.id, "TransactionEvent")
        if e["eventType"] == "Started" and e["transactionInfo"]["transactionId"] == tx_id
    )
    assert first["evseId"] == 1 and first["maxScheduleTuples"] == 24
    cn = first["chargingNeeds"]
    assert cn["requestedEnergyTransfer"] == "AC_three_phase"
    departure = parse_datetime(cn["departureTime"])
    expected = parse_datetime(started_ev["timestamp"]) + timedelta(seconds=3_600)
    assert abs((departure - expected).total_seconds()) < 1
    ac = cn["acChargingParameters"]
    assert ac["energyAmount"] == pytest.approx(0.4 * 60_000, abs=100)
    assert (ac["evMinCurrent"], ac["evMaxCurrent"], ac["evMaxVoltage"]) == (6, 16, 230)
    cn2 = second["chargingNeeds"]
    assert cn2["requestedEnergyTransfer"] == "AC_single_phase"
    assert "departureTime" not in cn2
    assert cn2["acChargingParameters"]["evMaxCurrent"] == 32
    assert cn2["acChargingParameters"]["energyAmount"] == pytest.approx(30_000, abs=100)
    actions = [a for a, _, _ in csms.log[st.id]]
    # Sent once the transaction runs and the driver is authorized.
    assert actions.index("NotifyEVChargingNeeds") > actions.index("Authorize")
    assert st.stats.errors == 0


async def test_optional_charging_needs_not_an_error_without_csms_support(csms, stations):
    st, cp = await started(csms, stations, "2.0.1")
    cp.route_map.pop("NotifyEVChargingNeeds")
    await plugged(st, 1, ev())
    await plugged(st, 2, ev())
    await wait_until(lambda: len(csms.payloads(st.id, "NotifyEVChargingNeeds")) == 1)
    await asyncio.sleep(0.1)
    assert len(csms.payloads(st.id, "NotifyEVChargingNeeds")) == 1  # not sent again
    assert st.stats.errors == 0


async def test_get_charging_profiles_201(csms, stations):
    st, cp = await started(csms, stations, "2.0.1")
    profiles = [
        (0, simple_profile(1, Purpose.TX_DEFAULT, 16.0)),
        (1, simple_profile(2, Purpose.TX_DEFAULT, 12.0, stack_level=1)),
        (2, simple_profile(3, Purpose.TX_DEFAULT, 10.0, RateUnit.W)),
        (0, simple_profile(4, Purpose.STATION_MAX, 30.0, start=csms.clock.now())),
    ]
    for evse_id, profile in profiles:
        res = await set_profile(cp, "2.0.1", evse_id, profile)
        assert res.status == "Accepted", (profile.id, res.status_info)

    async def get(request_id: int, criteria: dict[str, Any], evse_id: int | None = None) -> Any:
        return await cp.call(
            call201.GetChargingProfiles(
                request_id=request_id, charging_profile=criteria, evse_id=evse_id
            )
        )

    def reports_for(request_id: int) -> list[dict[str, Any]]:
        found = csms.payloads(st.id, "ReportChargingProfiles")
        return [p for p in found if p["requestId"] == request_id]

    async def complete(request_id: int) -> list[dict[str, Any]]:
        await wait_until(lambda: reports_for(request_id) and not reports_for(request_id)[-1]["tbc"])
        return reports_for(request_id)

    res = await get(9, {"charging_profile_purpose": "TxDefaultProfile"})
    assert res.status == "Accepted"
    reports = await complete(9)
    assert [p["evseId"] for p in reports] == [0, 1, 2]
    assert [p["tbc"] for p in reports] == [True, True, False]
    assert all(p["chargingLimitSource"] == "CSO" for p in reports)
    by_evse = {p["evseId"]: p["chargingProfile"] for p in reports}
    assert by_evse[0] == [to_wire(profiles[0][1], "2.0.1")]
    assert by_evse[2] == [to_wire(profiles[2][1], "2.0.1")]

    res = await get(10, {"charging_profile_id": [4]})
    assert res.status == "Accepted"
    report = await complete(10)
    assert len(report) == 1
    assert report[0]["evseId"] == 0 and report[0]["tbc"] is False
    assert [p["id"] for p in report[0]["chargingProfile"]] == [4]

    res = await get(11, {"stack_level": 1}, evse_id=1)
    assert res.status == "Accepted"
    report = await complete(11)
    assert [(p["evseId"], [x["id"] for x in p["chargingProfile"]]) for p in report] == [(1, [2])]
    assert (await get(12, {"charging_limit_source": ["EMS"]})).status == "NoProfiles"
    assert (await get(13, {"charging_profile_id": [99]})).status == "NoProfiles"
    assert (await get(14, {}, evse_id=2)).status == "Accepted"
    assert [p["evseId"] for p in await complete(14)] == [2]

    # Clearing by criteria.
    res = await cp.call(
        call201.ClearChargingProfile(
            charging_profile_criteria={"charging_profile_purpose": "TxDefaultProfile"}
        )
    )
    assert res.status == "Accepted"
    assert [i.profile.id for i in st.profiles] == [4]
    assert st.stats.errors == 0


async def test_smart_charging_settings(csms, stations):
    st16, cp16 = await started(csms, stations, "1.6")
    conf = await cp16.call(call16.GetConfiguration())
    table = {e["key"]: e["value"] for e in conf.configuration_key}
    assert "SmartCharging" in table["SupportedFeatureProfiles"].split(",")
    assert table["ChargingScheduleAllowedChargingRateUnit"] == "Current,Power"
    assert int(table["ChargeProfileMaxStackLevel"]) >= 1
    assert int(table["ChargingScheduleMaxPeriods"]) >= 1
    assert int(table["MaxChargingProfilesInstalled"]) >= 1
    too_high = simple_profile(1, Purpose.TX_DEFAULT, 10.0, stack_level=99)
    assert (await set_profile(cp16, "1.6", 0, too_high)).status == "Rejected"
    assert (
        await set_profile(cp16, "1.6", 7, simple_profile(1, Purpose.TX_DEFAULT, 10.0))
    ).status == ("Rejected")

    st201, cp201 = await started(csms, stations, "2.0.1")
    assert (
        await set_profile(cp201, "2.0.1", 0, simple_profile(1, Purpose.TX_DEFAULT, 10.0))
    ).status == ("Accepted")
    names = [
        ("Enabled", None),
        ("Available", None),
        ("LimitChangeSignificance", None),
        ("PeriodsPerSchedule", None),
        ("ProfileStackLevel", None),
        ("RateUnit", None),
        ("Entries", "ChargingProfiles"),
    ]
    got = await cp201.call(
        call201.GetVariables(
            get_variable_data=[
                {
                    "component": {"name": "SmartChargingCtrlr"},
                    "variable": {"name": n} if i is None else {"name": n, "instance": i},
                }
                for n, i in names
            ]
        )
    )
    values = {r["variable"]["name"]: r for r in got.get_variable_result}
    assert all(r["attribute_status"] == "Accepted" for r in values.values())
    assert values["RateUnit"]["attribute_value"] == "A,W"
    assert values["Entries"]["attribute_value"] == "1"
    res = await cp201.call(
        call201.SetVariables(
            set_variable_data=[
                {
                    "component": {"name": "SmartChargingCtrlr"},
                    "variable": {"name": "Enabled"},
                    "attribute_value": "false",
                }
            ]
        )
    )
    assert res.set_variable_result[0]["attribute_status"] == "Accepted"
    off = await set_profile(cp201, "2.0.1", 0, simple_profile(2, Purpose.TX_DEFAULT, 10.0))
    assert off.status == "Rejected" and off.status_info["reason_code"] == "Disabled"
    assert st16.stats.errors == 0 and st201.stats.errors == 0


# ---------------------------------------------------------------------------
# End to end: the simulator against an evflex node
# ---------------------------------------------------------------------------


async def node_station(node: Any, version: str, **spec_kw: Any) -> SimStation:
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(
        id=f"E2E{version.replace('.', '')}-{next(_ids)}", ocpp_version=version, **spec_kw
    )
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(SPEED), meter_interval_s=60.0, seed=1)
    await st.start(timeout=10.0)
    return st


async def node_power(node: Any, station_id: str) -> float | None:
    txs = await node.transactions(active="true", station_id=station_id)
    return txs[0]["power_w"] if txs else None


@VERSIONS
async def test_node_sets_profiles_and_sees_the_power(node, version):
    st = await node_station(node, version)
    try:
        assert await st.plug_in(1, ev(departure_s=7_200), "GOOD")
        await node.wait_for(lambda: _power_is(node, st.id, 11_000))
        tx = (await node.transactions(active="true", station_id=st.id))[0]

        # An operator profile: the dispatcher sets it, the station executes it.
        body = {
            "evse_id": 0,
            "profile": to_wire(simple_profile(1, Purpose.TX_DEFAULT, 10.0), "2.0.1"),
        }
        r = await node.http.put(f"/api/v1/stations/{st.id}/charging-profiles", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "accepted"
        await node.wait_for(lambda: _power_is(node, st.id, 10 * VOLTS * 3))
        r = await node.http.get(
            f"/api/v1/stations/{st.id}/composite-schedule",
            params={"evse": 1, "duration": 3600, "unit": "A"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["agree"] is True, r.json()

        # A raw TxProfile below the minimum current pauses the session; clearing resumes it.
        low = simple_profile(7, Purpose.TX, 4.0, transaction_id=tx["transaction_id"], stack_level=1)
        r = await node.command(
            st.id, "set-charging-profile", {"evse": 1, "profile": to_wire(low, "2.0.1")}
        )
        assert r.status_code == 200, r.text
        assert r.json()["response"]["status"] == "Accepted"
        await node.wait_for(lambda: _power_is(node, st.id, 0.0))
        if version == "1.6":
            await node.wait_for(lambda: _connector_status(node, st.id, 1, "SuspendedEVSE"))
        else:
            await node.wait_for(lambda: _tx_field(node, st.id, "charging_state", "SuspendedEVSE"))
        r = await node.command(st.id, "clear-charging-profile", {"id": 7})
        assert r.json()["response"]["status"] == "Accepted"
        await node.wait_for(lambda: _power_is(node, st.id, 10 * VOLTS * 3))
        if version == "2.0.1":
            await node.wait_for(lambda: _tx_field(node, st.id, "needs_source", "ev"))
            tx = (await node.transactions(active="true", station_id=st.id))[0]
            assert tx["departure_at"] is not None
        assert st.stats.errors == 0, st.stats.error_samples
    finally:
        await st.stop()


@VERSIONS
async def test_node_sees_a_rejecting_station(node, version):
    st = await node_station(node, version, profile_behaviour="reject")
    try:
        body = {
            "evse_id": 0,
            "profile": to_wire(simple_profile(3, Purpose.TX_DEFAULT, 10.0), "2.0.1"),
        }
        r = await node.http.put(
            f"/api/v1/stations/{st.id}/charging-profiles", json=body, params={"wait": 5}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "rejected"
        assert list(st.profiles) == []
    finally:
        await st.stop()


async def _power_is(node: Any, station_id: str, watts: float) -> bool:
    power = await node_power(node, station_id)
    return power is not None and abs(power - watts) < 15


async def _connector_status(node: Any, station_id: str, evse_id: int, status: str) -> bool:
    st = await node.station(station_id)
    return any(c["evse_id"] == evse_id and c["status"] == status for c in st["connectors"])


async def _tx_field(node: Any, station_id: str, key: str, value: Any) -> bool:
    txs = await node.transactions(active="true", station_id=station_id)
    return bool(txs) and txs[0].get(key) == value
