"""Station clocks: the CSMS decides on its own clock, checks each station's and corrects it.

Simulated stations start with clocks ±5 minutes off a live CSMS. Their stamps
are stored as reported; the transaction's start on the CSMS's clock drives
the boost window and the KPIs; skew is flagged once and the station is
offered the time (2.x SetVariables ClockCtrlr.DateTime, 1.6 a triggered
Heartbeat).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from conftest import Node, node_with
from evflex.clock import DeviceClock
from evflex.csms.clocksync import ClockWatch
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.store.tables import MeterValue, Transaction

SKEW_S = 300.0
_ids = itertools.count(1)


class ManualClock:
    speed = 1.0

    def __init__(self, start: datetime) -> None:
        self.t = start

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)

    def tick(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


T0 = datetime(2026, 6, 1, 12, tzinfo=UTC)


# ------------------------------------------------------------------ the estimator


def test_a_live_clock_ahead_is_flagged_once_and_fixed_at_most_every_few_minutes():
    clock = ManualClock(T0)
    watch = ClockWatch(clock, tolerance_s=60, fix_interval_s=300)
    verdicts = []
    for _ in range(20):  # a message every 10 s from a station 5 min ahead
        verdicts.append(watch.observe("A", clock.now() + timedelta(seconds=SKEW_S), live=True))
        clock.tick(10)
    assert [v.changed for v in verdicts].count("skewed") == 1 and verdicts[0].changed == "skewed"
    assert [i for i, v in enumerate(verdicts) if v.fix] == [0]  # 190 s < 5 min: once
    assert watch.offset("A") == pytest.approx(SKEW_S)
    clock.tick(300)
    assert watch.observe("A", clock.now() + timedelta(seconds=SKEW_S), live=True).fix
    # the station sets its clock: samples after the offer win, back in tolerance, logged once
    watch.time_offered("A")
    clock.tick(1)
    back = [watch.observe("A", clock.now(), live=True) for _ in range(3)]
    assert [v.changed for v in back] == ["in_tolerance", None, None]
    assert watch.offset("A") == pytest.approx(0.0) and not any(v.fix for v in back)


def test_queued_messages_do_not_make_a_good_clock_look_behind():
    """A 1.6 replay after an hour offline: stamps in the past, received in a burst."""
    clock = ManualClock(T0)
    watch = ClockWatch(clock, tolerance_s=60)
    for minutes in range(60, 0, -5):  # queued meter values, oldest first
        v = watch.observe("B", clock.now() - timedelta(minutes=minutes), live=None)
        assert v.changed is None and not v.fix
        clock.tick(0.05)
    # the same offsets again and again over time: a clock that is really behind
    clock = ManualClock(T0)
    watch = ClockWatch(clock, tolerance_s=60)
    changed = []
    for _ in range(5):
        changed.append(watch.observe("C", clock.now() - timedelta(seconds=SKEW_S), None).changed)
        clock.tick(3)
    assert changed == [None, None, "skewed", None, None]  # 6 s apart
    assert watch.offset("C") == pytest.approx(-SKEW_S)


def test_every_stamp_is_a_lower_bound_so_one_sample_ahead_is_enough():
    clock = ManualClock(T0)
    watch = ClockWatch(clock, tolerance_s=60)
    assert watch.observe("D", T0 + timedelta(seconds=90), live=None).changed == "skewed"
    # a late, older message does not pull the estimate down
    watch.observe("D", T0 - timedelta(hours=2), live=None)
    assert watch.offset("D") == pytest.approx(90)
    assert watch.to_csms("D", T0 + timedelta(seconds=90), T0) == T0
    assert watch.to_csms("D", T0 - timedelta(hours=2), T0) == T0 - timedelta(hours=2, seconds=90)


def test_a_device_clock_is_set_and_keeps_its_pace():
    base = ManualClock(T0)
    dev = DeviceClock(base, 300)
    assert dev.now() == T0 + timedelta(seconds=300)
    assert dev.set(T0) == pytest.approx(-300)
    base.tick(10)
    assert dev.now() == T0 + timedelta(seconds=10)


# ------------------------------------------------------------------ against a live CSMS


def _station(node: Node, version: str, skew_s: float, time_source: str) -> SimStation:
    spec = StationSpec(id=f"CLK{version[0]}-{next(_ids)}", ocpp_version=version)
    return SimStation(
        spec, node.ocpp_url, node.rt.clock, meter_interval_s=1.0, seed=1,
        clock_skew_s=skew_s, time_source=time_source,
    )  # fmt: skip


async def _clock_events(node: Node, station_id: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"station_id": station_id, "kind": "clock"})
    assert r.status_code == 200, r.text
    return sorted(r.json(), key=lambda e: e["timestamp"])


async def _tx_row(node: Node, station_id: str) -> Transaction | None:
    async with node.rt.sessionmaker() as s:
        q = select(Transaction).where(Transaction.station_id == station_id)
        return (await s.execute(q)).scalars().first()


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S])
async def test_201_skew_is_flagged_once_set_by_setvariables_and_stamps_kept(node, skew_s):
    st = _station(node, "2.0.1", skew_s, "rtc")
    await node.http.post("/api/v1/id-tokens", json={"id_token": "TOK", "status": "Accepted"})
    await st.start(timeout=10)
    try:
        if skew_s > 0:  # ahead: seen in the boot's statuses already, set before the session
            await node.wait_for(lambda: st.clock_steps, timeout=10)
        # behind: only a live stamp (the transaction's) tells, the session starts skewed
        skew_at_start = 0.0 if skew_s > 0 else skew_s
        before = node.rt.clock.now()
        assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "TOK")
        after = node.rt.clock.now()

        async def settled():
            types = [e["type"] for e in await _clock_events(node, st.id)]
            return types if "ClockInTolerance" in types else None

        types = await node.wait_for(settled, timeout=15)
        assert types == ["ClockSkew", "ClockSet", "ClockInTolerance"], types
        events = await _clock_events(node, st.id)
        assert events[0]["detail"]["offset_s"] == pytest.approx(skew_s, abs=2)
        assert events[1]["detail"] == {"command": "set-variables", "status": "Accepted"}
        assert st.received.count("SetVariables") == 1
        assert [src for src, _ in st.clock_steps] == ["SetVariables"]
        assert st.clock_steps[0][1] == pytest.approx(-skew_s, abs=2)
        assert abs((st.now() - node.rt.clock.now()).total_seconds()) < 2
        info = await node.station(st.id)
        assert abs(info["clock_offset_s"]) < 2 and info["clock_skewed"] is False

        tx = await _tx_row(node, st.id)
        # the station's stamp as reported; the start on our clock when we received it
        assert before <= tx.csms_started_at <= after
        assert (tx.started_at - tx.csms_started_at).total_seconds() == pytest.approx(
            skew_at_start, abs=2
        )
        async with node.rt.sessionmaker() as s:
            first = await s.scalar(
                select(func.min(MeterValue.timestamp)).where(MeterValue.station_id == st.id)
            )
        assert first == tx.started_at  # meter values stored with the station's stamps
    finally:
        await st.stop()


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S])
async def test_16_skew_is_flagged_once_and_a_heartbeat_triggered(node, skew_s):
    st = _station(node, "1.6", skew_s, "rtc")  # keeps its wrong clock whatever it is told
    await node.http.post("/api/v1/id-tokens", json={"id_token": "TOK", "status": "Accepted"})
    await st.start(timeout=10)
    try:
        assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "TOK")

        async def triggered():
            types = [e["type"] for e in await _clock_events(node, st.id)]
            return types if "HeartbeatTriggered" in types else None

        assert await node.wait_for(triggered, timeout=20) == ["ClockSkew", "HeartbeatTriggered"]
        await node.wait_for(lambda: st.stats and "TriggerMessage" in st.received)
        await asyncio.sleep(2.0)  # more meter values: still skewed, nothing new
        events = await _clock_events(node, st.id)
        assert [e["type"] for e in events] == ["ClockSkew", "HeartbeatTriggered"]
        assert events[1]["detail"] == {"command": "trigger-message", "status": "Accepted"}
        assert st.received.count("TriggerMessage") == 1 and st.clock_steps == []
        info = await node.station(st.id)
        assert info["clock_offset_s"] == pytest.approx(skew_s, abs=2) and info["clock_skewed"]
        tx = await _tx_row(node, st.id)
        assert (tx.started_at - tx.csms_started_at).total_seconds() == pytest.approx(skew_s, abs=2)
    finally:
        await st.stop()


async def test_a_station_taking_the_csms_time_is_never_flagged(node):
    st = _station(node, "1.6", SKEW_S, "csms")
    await st.start(timeout=10)
    try:
        assert [src for src, _ in st.clock_steps] == ["BootNotification"]
        assert abs((st.now() - node.rt.clock.now()).total_seconds()) < 2
        await node.wait_for(lambda: node.rt.service.clocks.offset(st.id) is not None)
        assert await _clock_events(node, st.id) == []
    finally:
        await st.stop()


site_node = node_with(site_sample_s=1.0, initial_full_power_s=30.0)


async def test_kpis_and_boost_window_on_the_csms_clock_with_skewed_stations(site_node):
    """One station 5 min ahead, one 5 min behind, both on their own timeline (the
    clock-set is refused): KPIs come out of what they report, on our clock."""
    node = site_node
    r = await node.http.post("/api/v1/sites", json={"id": "depot", "import_limit_kw": 100})
    assert r.status_code == 201, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "TOK", "status": "Accepted"})
    stations = [_station(node, "2.0.1", s, "timeline") for s in (SKEW_S, -SKEW_S)]
    try:
        for st in stations:
            await st.start(timeout=10)
            r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "depot"})
            assert r.status_code == 200, r.text
        for st in stations:
            assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "TOK")

        async def charging_samples():
            h = (await node.http.get("/api/v1/sites/depot/history", params={"hours": 1})).json()
            both = [x for x in h["samples"] if x["ev_import_kw"] > 15]
            return both if len(both) >= 3 else None

        await node.wait_for(charging_samples, timeout=20)
        txs = [await _tx_row(node, st.id) for st in stations]
        for st, tx in zip(stations, txs, strict=True):
            assert (tx.started_at - tx.csms_started_at).total_seconds() == pytest.approx(
                st.clock.offset_s, abs=2
            )
            kinds = [e["type"] for e in await _clock_events(node, st.id)]
            assert kinds == ["ClockSkew", "ClockSet"], kinds  # the station refused: no repeat
        # the load manager's boost window starts when we saw the session start
        model, _ = await node.rt.lm.load_model("depot")
        starts = {ev.station_id: ev.session.started_at for ev in model.evses.values() if ev.session}
        assert starts == {tx.station_id: tx.csms_started_at for tx in txs}

        k = (await node.http.get("/api/v1/sites/depot/kpis", params={"period": "day"})).json()
        assert k["sessions"] == 2 and k["peak_kw"] > 15
        # uncontrolled, both sessions run flat out from when they started on our clock
        max_w = sum(min(32.0, tx.ev_max_current_a or 32.0) * 3 * 230.0 for tx in txs)
        assert k["peak_uncontrolled_kw"] == pytest.approx(max_w / 1000, abs=0.01)
        assert k["peak_reduction_pct"] >= 0

        for st in stations:
            await st.plug_out(1)
        await node.wait_for(lambda: _all_ended(node, [st.id for st in stations]), timeout=10)
        k = (await node.http.get("/api/v1/sites/depot/kpis", params={"period": "day"})).json()
        async with node.rt.sessionmaker() as s:  # energy from the meter data itself
            register = MeterValue.measurand == "Energy.Active.Import.Register"
            rows = await s.execute(
                select(func.max(MeterValue.value) - func.min(MeterValue.value))
                .where(register, MeterValue.transaction_pk.in_([tx.id for tx in txs]))
                .group_by(MeterValue.transaction_pk)
            )
            energy_wh = sum(v for (v,) in rows)
        assert energy_wh > 0
        assert k["sessions"] == 2
        assert k["energy_imported_kwh"] == pytest.approx(energy_wh / 1000, abs=0.002)
    finally:
        await asyncio.gather(*(st.stop() for st in stations))


async def _all_ended(node: Node, station_ids: list[str]) -> bool:
    txs = await node.transactions(active="true")
    return not any(t["station_id"] in station_ids for t in txs)


async def test_composite_schedule_is_compared_on_the_csms_clock(node):
    """B2: a station 5 min ahead on its own timeline reports its composite schedule
    in its time; evflex compares it with its own on the CSMS's clock."""
    r = await node.http.post("/api/v1/sites", json={"id": "cs", "import_limit_kw": 11})
    assert r.status_code == 201, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "TOK", "status": "Accepted"})
    st = _station(node, "2.0.1", SKEW_S, "timeline")
    await st.start(timeout=10)
    try:
        r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "cs"})
        assert r.status_code == 200, r.text
        assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "TOK")
        await node.wait_for(lambda: node.rt.service.clocks.offset(st.id), timeout=10)

        async def compared():
            r = await node.http.get(
                f"/api/v1/stations/{st.id}/composite-schedule", params={"evse": 1}
            )
            assert r.status_code == 200, r.text
            body = r.json()
            return body if body["agree"] else None

        body = await node.wait_for(compared, timeout=15)
        assert body["station_clock_offset_s"] == pytest.approx(SKEW_S, abs=5)
    finally:
        await st.stop()
