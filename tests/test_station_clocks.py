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

from conftest import Node, start_node
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
