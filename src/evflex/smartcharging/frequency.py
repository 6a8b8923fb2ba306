"""Central frequency control (OCPP 2.1 ``CentralFrequency``): the CSMS follows the grid.

An operator enrols EVSEs with running V2X sessions. Each gets a TxProfile in
``CentralFrequency`` mode (stack level above the load manager's, so it wins
while the service runs). Every frequency sample from the feed (a grid meter,
an aggregator, the API) becomes one setpoint per EVSE:

    setpoint = baseline + share * freq_watt(curve, f)

clamped to the EVSE's charge and discharge power, sent with
``UpdateDynamicSchedule`` to all EVSEs at once. Per update the controller
records the latency from the sample's measurement time to the station's
acknowledgement and the setpoint sent, so the benchmark and the API can
report rate, latency and tracking.

Samples that arrive while the previous round is still in flight are not
queued: only the newest one is sent next (a stale setpoint is worth nothing).

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


SendUpdate = Callable[[str, int, int, float], Awaitable[dict]]


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
    rounds: int = 0
    skipped: int = 0  # samples replaced by a newer one before they were sent
    updates: int = 0
    failed: int = 0
    records: deque[UpdateRecord] = field(default_factory=lambda: deque(maxlen=200_000))

    def latencies(self) -> list[float]:
        return [r.latency_s for r in self.records if r.ok]

    def summary(self) -> dict:
        lat = sorted(self.latencies())

        def pct(q: float) -> float | None:
            if not lat:
                return None
            return lat[min(len(lat) - 1, max(0, math.ceil(q * len(lat)) - 1))]

        return {
            "samples": self.samples,
            "rounds": self.rounds,
            "skipped": self.skipped,
            "updates": self.updates,
            "failed": self.failed,
            "latency_p50_s": statistics.median(lat) if lat else None,
            "latency_p99_s": pct(0.99),
            "latency_max_s": lat[-1] if lat else None,
        }


class FrequencyController:
    """Turns a frequency feed into setpoints for the enrolled EVSEs."""

    def __init__(
        self,
        clock: Clock,
        send_update: SendUpdate,
        curve: list[tuple[float, float]],
        baseline_w: float = 0.0,
        concurrency: int = 256,
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
        self._latest: tuple[datetime, float] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._limit = asyncio.Semaphore(concurrency)

    # ------------------------------------------------------------------ control

    def setpoint_w(self, ev: Enrolled, frequency_hz: float) -> float:
        want = self.baseline_w + ev.share * freq_watt(self.curve, frequency_hz)
        return max(-ev.max_discharge_w, min(ev.max_charge_w, want))

    def enrol(self, ev: Enrolled) -> None:
        self.evses[(ev.station_id, ev.evse_id)] = ev

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="frequency-control")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def sample(self, frequency_hz: float, measured_at: datetime | None = None) -> None:
        """A new frequency measurement; the newest one is sent as soon as possible."""
        if not 40.0 <= frequency_hz <= 70.0:
            raise ValueError(f"frequency {frequency_hz} Hz is not plausible")
        if measured_at is None:
            measured_at = self.clock.now()
        elif measured_at.tzinfo is None:
            measured_at = measured_at.replace(tzinfo=UTC)  # like OCPP: UTC unless told
        self.stats.samples += 1
        if self._latest is not None:
            self.stats.skipped += 1
        self._latest = (measured_at, float(frequency_hz))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            latest, self._latest = self._latest, None
            if latest is None:
                continue
            try:
                await self._round(*latest)
            except Exception:  # the service must outlive one bad round
                log.exception("frequency round failed")

    async def _round(self, measured_at: datetime, frequency_hz: float) -> None:
        self.stats.rounds += 1
        await asyncio.gather(
            *(self._one(ev, measured_at, frequency_hz) for ev in list(self.evses.values()))
        )

    async def _one(self, ev: Enrolled, measured_at: datetime, frequency_hz: float) -> None:
        setpoint = round(self.setpoint_w(ev, frequency_hz), 1)
        ok = False
        async with self._limit:
            try:
                answer = await self.send_update(
                    ev.station_id, ev.evse_id, frequency_profile_id(ev.evse_id), setpoint
                )
                ok = answer.get("status") == "Accepted"
            except Exception as exc:  # one station's trouble must not stop the others
                log.warning("frequency update to %s/%s failed: %s", ev.station_id, ev.evse_id, exc)
        latency = (self.clock.now() - measured_at).total_seconds()
        if ok:
            ev.last_setpoint_w = setpoint
            self.stats.updates += 1
        else:
            ev.failures += 1
            self.stats.failed += 1
        self.stats.records.append(
            UpdateRecord(
                measured_at, frequency_hz, ev.station_id, ev.evse_id, setpoint, latency, ok
            )
        )
