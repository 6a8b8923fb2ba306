"""The central frequency controller without a network: ids, time stamps, robustness."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

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
