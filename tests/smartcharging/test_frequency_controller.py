"""The central frequency controller without a network: ids, time stamps, robustness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from evflex.clock import SystemClock
from evflex.smartcharging.frequency import (
    FREQUENCY_PROFILE_ID,
    Enrolled,
    FrequencyController,
    frequency_profile_id,
)

CURVE = [(49.8, -10_000.0), (50.0, 0.0), (50.2, 10_000.0)]


def _controller(sent: list) -> FrequencyController:
    async def send_update(station_id, evse_id, profile_id, setpoint):
        sent.append((station_id, evse_id, profile_id, setpoint))
        return {"status": "Accepted"}

    ctrl = FrequencyController(SystemClock(), send_update, CURVE)
    for evse in (1, 2):
        ctrl.enrol(Enrolled("ST", evse, f"tx{evse}", 11_000.0, 11_000.0))
    return ctrl


async def _settle(ctrl: FrequencyController, updates: int) -> None:
    for _ in range(200):
        if ctrl.stats.updates + ctrl.stats.failed >= updates:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {ctrl.stats.updates} updates")


async def test_each_evse_of_a_station_has_its_own_profile_id():
    """A station replaces a profile with the same id on any EVSE: one id for all left
    only the last EVSE of each station under frequency control."""
    sent: list = []
    ctrl = _controller(sent)
    ctrl.start()
    try:
        ctrl.sample(49.9)
        await _settle(ctrl, 2)
    finally:
        await ctrl.stop()
    ids = {evse: pid for _, evse, pid, _ in sent}
    assert ids == {1: FREQUENCY_PROFILE_ID + 1, 2: FREQUENCY_PROFILE_ID + 2}
    assert ids[1] == frequency_profile_id(1)
    assert {sp for *_, sp in sent} == {-5000.0}


async def test_a_naive_measurement_time_is_utc_and_the_service_goes_on():
    sent: list = []
    ctrl = _controller(sent)
    ctrl.start()
    try:
        naive = datetime.now(UTC).replace(tzinfo=None)
        ctrl.sample(50.1, naive)
        await _settle(ctrl, 2)
        ctrl.sample(50.2)
        await _settle(ctrl, 4)
    finally:
        await ctrl.stop()
    assert ctrl.stats.failed == 0
    assert all(0 <= r.latency_s < 5 for r in ctrl.stats.records)
    assert [sp for *_, sp in sent] == [5000.0, 5000.0, 10_000.0, 10_000.0]


async def test_a_failing_round_does_not_stop_the_service(monkeypatch):
    sent: list = []
    ctrl = _controller(sent)
    real_round = ctrl._round
    calls = {"n": 0}

    async def flaky(measured_at, frequency_hz):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        await real_round(measured_at, frequency_hz)

    monkeypatch.setattr(ctrl, "_round", flaky)
    ctrl.start()
    try:
        ctrl.sample(49.8)
        for _ in range(100):
            if calls["n"]:
                break
            await asyncio.sleep(0.01)
        ctrl.sample(49.8)
        await _settle(ctrl, 2)
    finally:
        await ctrl.stop()
    assert calls["n"] == 2 and len(sent) == 2


class SlowFast:
    """send_update double: EVSE ("SLOW", 1) answers only when released, the others at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, float]] = []
        self.release = asyncio.Event()

    async def __call__(self, station_id, evse_id, profile_id, setpoint):
        self.sent.append((station_id, evse_id, setpoint))
        if station_id == "SLOW":
            await self.release.wait()
            self.release.clear()
        return {"status": "Accepted"}

    def to(self, station_id: str) -> list[float]:
        return [sp for sid, _, sp in self.sent if sid == station_id]


def _slow_fast_controller(send: SlowFast) -> FrequencyController:
    ctrl = FrequencyController(SystemClock(), send, CURVE)
    ctrl.enrol(Enrolled("SLOW", 1, "tx-slow", 11_000.0, 11_000.0))
    ctrl.enrol(Enrolled("FAST", 1, "tx-fast", 11_000.0, 11_000.0))
    return ctrl


async def _release_slow(send: SlowFast, ctrl: FrequencyController) -> None:
    """Let the slow EVSE answer its update in flight, then the one that was waiting."""
    send.release.set()
    await _until(lambda: len(send.to("SLOW")) == 2)
    send.release.set()
    await _until(lambda: ctrl.idle)


async def _until(cond) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_an_evse_gets_its_next_setpoint_without_waiting_for_a_slow_one():
    send = SlowFast()
    ctrl = _slow_fast_controller(send)
    ctrl.start()
    try:
        for k, f in enumerate((49.9, 50.1, 50.2), 1):
            ctrl.sample(f)
            await _until(lambda k=k: len(send.to("FAST")) == k)
        # The fast EVSE followed every sample while the slow one still holds its first.
        assert send.to("FAST") == [-5000.0, 5000.0, 10_000.0]
        assert send.to("SLOW") == [-5000.0]
        assert ctrl.stats.in_flight == 1
        await _release_slow(send, ctrl)
    finally:
        await ctrl.stop()
    # Released, the slow EVSE got the newest setpoint only: the two between were superseded.
    assert send.to("SLOW") == [-5000.0, 10_000.0]
    assert ctrl.stats.superseded == 1 and ctrl.stats.failed == 0


async def test_a_superseded_setpoint_is_never_sent_after_a_newer_one():
    send = SlowFast()
    ctrl = _slow_fast_controller(send)
    t0 = datetime.now(UTC)
    ctrl.start()
    try:
        ctrl.sample(49.9, t0)
        await _until(lambda: len(send.to("SLOW")) == 1)
        newest = t0.replace(microsecond=0) + timedelta(seconds=2)
        ctrl.sample(50.2, newest)
        await _until(lambda: len(send.to("FAST")) == 2)
        # A measurement older than one already handed on arrives late: dropped.
        ctrl.sample(49.8, newest - timedelta(seconds=1))
        await _release_slow(send, ctrl)
    finally:
        await ctrl.stop()
    assert send.to("SLOW") == [-5000.0, 10_000.0]
    assert send.to("FAST") == [-5000.0, 10_000.0]
    assert ctrl.stats.stale == 1
    # Per EVSE, the records follow the measurement times in order.
    for key in ("SLOW", "FAST"):
        times = [r.sample_at for r in ctrl.stats.records if r.station_id == key]
        assert times == sorted(times) and len(set(times)) == len(times)
