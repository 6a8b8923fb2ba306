"""Injected time.

Everything that reads the time takes a :class:`Clock`. Production code uses
:class:`SystemClock`; the simulator uses :class:`AcceleratedClock`, so that a
simulated day runs in seconds through the same code paths.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


def utcnow() -> datetime:
    """The current wall-clock time, timezone-aware UTC."""
    return datetime.now(UTC)


def utc_holds(value: object) -> object:
    """For a model's validator: ValueError for an aware date-time UTC cannot hold (its
    offset moves it beyond year 1 or 9999); any other value passes unchanged."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is beyond the years UTC can hold") from None
    return value


class Clock(Protocol):
    """A source of time. ``now`` is timezone-aware UTC; ``sleep`` waits clock-seconds."""

    speed: float

    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """Real time."""

    speed = 1.0

    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class AcceleratedClock:
    """Simulated time running ``speed`` times faster than real time.

    ``AcceleratedClock(speed=60)`` runs one hour per real minute. The clock
    starts at ``start`` (default: the current wall-clock time) when created.
    """

    def __init__(self, speed: float = 1.0, start: datetime | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = float(speed)
        self._start = start if start is not None else utcnow()
        if self._start.tzinfo is None:
            self._start = self._start.replace(tzinfo=UTC)
        self._t0 = time.monotonic()

    @property
    def start(self) -> datetime:
        return self._start

    def elapsed(self) -> float:
        """Clock-seconds since the clock started."""
        return (time.monotonic() - self._t0) * self.speed

    def now(self) -> datetime:
        return self._start + timedelta(seconds=self.elapsed())

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class DeviceClock:
    """A device's own clock: a base clock plus an offset, which can be set.

    A charging station keeps time with its own real-time clock: it may start
    wrong (``offset_s``), and it is corrected by setting it (``set``), as a
    station does with the CSMS's ``currentTime`` or a ClockCtrlr.DateTime
    SetVariables. Durations (``sleep``) run at the base clock's pace.
    """

    def __init__(self, base: Clock, offset_s: float = 0.0) -> None:
        self.base = base
        self.offset_s = float(offset_s)

    @property
    def speed(self) -> float:
        return getattr(self.base, "speed", 1.0)

    def now(self) -> datetime:
        return self.base.now() + timedelta(seconds=self.offset_s)

    async def sleep(self, seconds: float) -> None:
        await self.base.sleep(seconds)

    def set(self, now: datetime) -> float:
        """Set the clock to ``now``; returns the step taken (s, positive: forward)."""
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        step = (now - self.now()).total_seconds()
        self.offset_s += step
        return step


def isoformat(ts: datetime) -> str:
    """OCPP date-time text: UTC with a ``Z`` suffix and millisecond precision."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_datetime(text: str) -> datetime:
    """Parse an OCPP/RFC 3339 timestamp into an aware UTC datetime.

    A timestamp without offset is taken as UTC (some stations omit the ``Z``).
    """
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
