"""Central frequency control (OCPP 2.1 ``CentralFrequency``): the CSMS follows the grid.

An operator enrols EVSEs with running V2X sessions. Each gets a TxProfile in
``CentralFrequency`` mode (stack level above the load manager's, so it wins
while the service runs). Every frequency sample from the feed (a grid meter,
an aggregator, the API) becomes one setpoint per EVSE:

    setpoint = baseline + share * freq_watt(curve, f)

clamped to the EVSE's charge and discharge power, and sent with
``UpdateDynamicSchedule``. Per update the controller records, in memory, the
latency from the sample's measurement time to the station's acknowledgement
and the setpoint sent, so the benchmark and the API can report rate,
latency and tracking.

There are no rounds to wait for: every EVSE has a lane of its own that holds
the newest setpoint wanted for it. As soon as the EVSE acknowledged its
previous update (or the update failed) the lane sends the newest one, if it
differs from what the EVSE has; setpoints that were superseded meanwhile
are dropped, never sent after a newer one (a stale setpoint is worth
nothing). A slow EVSE therefore delays only itself and the EVSEs of its own
station, which share the station's connection (one CALL in flight per
connection, as OCPP-J requires).

Every EVSE gets a profile id of its own (:func:`frequency_profile_id`): a
station replaces a profile with the same id on any of its EVSEs, so one id
for all would leave only the last EVSE of a station under control.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from evflex.clock import Clock
from evflex.smartcharging.v2x import freq_watt

log = logging.getLogger(__name__)

#: Profile ids (base, see :func:`frequency_profile_id`) and stack level of the
#: frequency service's TxProfiles.
FREQUENCY_PROFILE_ID = 900_000
FREQUENCY_STACK_LEVEL = 8


def frequency_profile_id(evse_id: int) -> int:
    """The id of the frequency TxProfile on ``evse_id``: unique within the station."""
    return FREQUENCY_PROFILE_ID + evse_id


T = TypeVar("T")
#: Sends a setpoint update (station, EVSE, profile id, W); the station's answer.
SendUpdate = Callable[[str, int, int, float], Awaitable[dict[str, Any]]]


@dataclass(slots=True)
class Enrolled:
    station_id: str
    evse_id: int
    transaction_id: str
    max_charge_w: float
    max_discharge_w: float
    share: float = 1.0
    last_setpoint_w: float | None = None
    failures: int = 0


@dataclass(slots=True)
class UpdateRecord:
    sample_at: datetime
    frequency_hz: float
    station_id: str
    evse_id: int
    setpoint_w: float
    latency_s: float
    ok: bool


@dataclass(slots=True)
class FrequencyStats:
    samples: int = 0
    rounds: int = 0  # samples handed to the EVSEs' lanes
    skipped: int = 0  # samples replaced by a newer one before they were handed on
    stale: int = 0  # samples older than one handed on already (dropped)
    superseded: int = 0  # setpoints replaced in their lane by a newer one before sending
    unchanged: int = 0  # setpoints not sent: the EVSE has that value already
    updates: int = 0
    failed: int = 0
    in_flight: int = 0
    records: deque[UpdateRecord] = field(default_factory=lambda: deque(maxlen=200_000))

    def latencies(self) -> list[float]:
        return [r.latency_s for r in self.records if r.ok]

    def summary(self) -> dict[str, int | float | None]:
        lat = sorted(self.latencies())

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))]

        return {
            "samples": self.samples,
            "rounds": self.rounds,
            "skipped": self.skipped,
            "stale": self.stale,
            "superseded": self.superseded,
            "unchanged": self.unchanged,
            "updates": self.updates,
            "failed": self.failed,
            "in_flight": self.in_flight,
            "latency_p50_s": statistics.median(lat) if lat else None,
            "latency_p99_s": pct(0.99),
            "latency_max_s": lat[-1] if lat else None,
        }


@dataclass(slots=True)
class _Wanted:
    measured_at: datetime
    frequency_hz: float
    setpoint_w: float


@dataclass(slots=True)
class _Lane:
    """One EVSE's pipeline: the newest setpoint wanted, sent once the previous is answered."""

    ev: Enrolled
    wanted: _Wanted | None = None
    sent_at: datetime | None = None  # measurement time of the newest setpoint sent
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class FrequencyController:
    """Turns a frequency feed into setpoints for the enrolled EVSEs."""

    def __init__(
        self,
        clock: Clock,
        send_update: SendUpdate,
        curve: list[tuple[float, float]],
        baseline_w: float = 0.0,
        concurrency: int | None = None,
    ) -> None:
        if len(curve) < 2:
            raise ValueError("a frequency-watt curve needs at least two points")
        if any(b[0] <= a[0] for a, b in zip(curve, curve[1:], strict=False)):
            raise ValueError("curve frequencies must be strictly increasing")
        self.clock = clock
        self.send_update = send_update
        self.curve = [(float(f), float(w)) for f, w in curve]
        self.baseline_w = float(baseline_w)
        self.evses: dict[tuple[str, int], Enrolled] = {}
        self.stats = FrequencyStats()
        self._lanes: dict[tuple[str, int], _Lane] = {}
        self._latest: tuple[datetime, float] | None = None
        self._newest_at: datetime | None = None  # measurement time of the newest sample
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Updates in flight at once over all EVSEs (None: one per EVSE).
        self._limit = asyncio.Semaphore(concurrency) if concurrency else None

    # ------------------------------------------------------------------ control

    @property
    def idle(self) -> bool:
        """True when no sample or setpoint waits and no update is in flight."""
        return (
            self._latest is None
            and self.stats.in_flight == 0
            and all(lane.wanted is None for lane in self._lanes.values())
        )

    def setpoint_w(self, ev: Enrolled, frequency_hz: float) -> float:
        want = self.baseline_w + ev.share * freq_watt(self.curve, frequency_hz)
        return max(-ev.max_discharge_w, min(ev.max_charge_w, want))

    def enrol(self, ev: Enrolled) -> None:
        key = (ev.station_id, ev.evse_id)
        self.evses[key] = ev
        old = self._lanes.pop(key, None)
        if old is not None and old.task is not None:
            old.task.cancel()
        lane = self._lanes[key] = _Lane(ev)
        if self._task is not None:
            self._start_lane(lane)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="frequency-control")
            for lane in self._lanes.values():
                self._start_lane(lane)

    def _start_lane(self, lane: _Lane) -> None:
        ev = lane.ev
        lane.task = asyncio.create_task(
            self._lane(lane), name=f"frequency-{ev.station_id}-{ev.evse_id}"
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *(x.task for x in self._lanes.values())) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        for lane in self._lanes.values():
            lane.task = None

    def sample(self, frequency_hz: float, measured_at: datetime | None = None) -> None:
        """A new frequency measurement; the newest one is sent as soon as possible."""
        if not 40.0 <= frequency_hz <= 70.0:
            raise ValueError(f"frequency {frequency_hz} Hz is not plausible")
        if measured_at is None:
            measured_at = self.clock.now()
        elif measured_at.tzinfo is None:
            measured_at = measured_at.replace(tzinfo=UTC)  # like OCPP: UTC unless told
        self.stats.samples += 1
        if self._newest_at is not None and measured_at < self._newest_at:
            self.stats.stale += 1  # older than one we have: a newer value is on its way
            return
        self._newest_at = measured_at
        if self._latest is not None:
            self.stats.skipped += 1
        self._latest = (measured_at, float(frequency_hz))
        self._wake.set()

    def _take_sample(self) -> tuple[datetime, float] | None:
        latest, self._latest = self._latest, None
        return latest

    async def _run(self) -> None:
        while True:
            latest = await _next(self._wake, self._take_sample)
            try:
                await self._round(*latest)
            except Exception:  # the service must outlive one bad sample
                log.exception("frequency round failed")

    async def _round(self, measured_at: datetime, frequency_hz: float) -> None:
        """Hand one sample's setpoints to every EVSE's lane (nothing waits for the sending)."""
        self.stats.rounds += 1
        for lane in self._lanes.values():
            setpoint = round(self.setpoint_w(lane.ev, frequency_hz), 1)
            if lane.wanted is not None:
                self.stats.superseded += 1
            lane.wanted = _Wanted(measured_at, frequency_hz, setpoint)
            lane.wake.set()

    async def _lane(self, lane: _Lane) -> None:
        ev = lane.ev

        def take() -> _Wanted | None:
            want, lane.wanted = lane.wanted, None
            return want

        while True:
            want = await _next(lane.wake, take)
            if lane.sent_at is not None and want.measured_at <= lane.sent_at:
                self.stats.stale += 1  # never send a setpoint after a newer one
                continue
            if want.setpoint_w == ev.last_setpoint_w:
                self.stats.unchanged += 1
                continue
            lane.sent_at = want.measured_at
            try:
                await self._one(ev, want)
            except Exception:  # one EVSE's trouble must not end its lane
                log.exception("frequency lane %s/%s", ev.station_id, ev.evse_id)

    async def _one(self, ev: Enrolled, want: _Wanted) -> None:
        ok = False
        self.stats.in_flight += 1
        try:
            if self._limit is not None:
                await self._limit.acquire()
            try:
                answer = await self.send_update(
                    ev.station_id, ev.evse_id, frequency_profile_id(ev.evse_id), want.setpoint_w
                )
                ok = answer.get("status") == "Accepted"
            finally:
                if self._limit is not None:
                    self._limit.release()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one station's trouble must not stop the others
            log.warning("frequency update to %s/%s failed: %s", ev.station_id, ev.evse_id, exc)
        finally:
            self.stats.in_flight -= 1
        latency = (self.clock.now() - want.measured_at).total_seconds()
        if ok:
            ev.last_setpoint_w = want.setpoint_w
            self.stats.updates += 1
        else:
            ev.failures += 1
            self.stats.failed += 1
        self.stats.records.append(
            UpdateRecord(
                want.measured_at,
                want.frequency_hz,
                ev.station_id,
                ev.evse_id,
                want.setpoint_w,
                latency,
                ok,
            )
        )


async def _next(wake: asyncio.Event, take: Callable[[], T | None]) -> T:
    """Wait until ``wake`` is set and ``take()`` returns something."""
    while True:
        await wake.wait()
        wake.clear()
        item = take()
        if item is not None:
            return item
