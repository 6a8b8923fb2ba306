"""Station clocks: how far each station's clock is off the CSMS's, flagged and corrected.

A station stamps what it reports with its own clock; evflex keeps those
stamps as reported (they are billing data) but decides on its own clock. To
know how far off a station is, every timestamp it sends is a sample of
``offset = station time - CSMS time at receipt``:

* A message sent the moment it happened gives the offset (less the network
  delay). A message that waited in the station's offline queue is older than
  its receipt, so its sample is too low by the time it waited. No message can
  be stamped later than it was sent, so *every* sample is a lower bound of the
  true offset and the estimate is the largest sample of the recent window.
* 2.x TransactionEvents sent offline (``offline=true``) are not sampled at all;
  the others are known to be live.
* Everything else may be old: 1.6 says nothing about queued messages
  (Start/StopTransaction and MeterValues are replayed after a reconnect), and
  a status sent after a reconnect may report a change of the past. These
  samples count as lower bounds: a station ahead of the CSMS is seen from any
  of them; a station behind only when the window's top sample is live, or two
  top samples that agree were received some seconds apart (a replay is a
  burst of different stamps, a live clock gives the same offset again).

A station whose offset leaves ``tolerance_s`` is flagged once (an event) and
once more when it is back inside; in between the CSMS offers it the time, at
most every ``fix_interval_s``. When the CSMS has offered the time (boot,
heartbeat, a clock-set command) and the samples received since then tell a
different offset, they replace the older ones: the station has set its clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from evflex.clock import Clock

#: Back in tolerance below this share of the tolerance (no flapping at the edge).
HYSTERESIS = 0.9
#: Samples received within this many seconds of each other count as one.
MERGE_S = 1.0


@dataclass(slots=True)
class _Sample:
    received: datetime
    offset_s: float
    live: bool


@dataclass
class StationClock:
    """What the CSMS knows about one station's clock."""

    samples: deque[_Sample] = field(default_factory=lambda: deque(maxlen=32))
    offset_s: float | None = None
    confident: bool = False
    skewed: bool = False
    epoch: datetime | None = None
    last_fix: datetime | None = None
    fixes: int = 0


@dataclass(slots=True)
class Verdict:
    """What one sample changed: ``changed`` is "skewed", "in_tolerance" or None."""

    offset_s: float | None
    changed: str | None = None
    fix: bool = False


class ClockWatch:
    """Per-station clock offsets (in memory), their flags and when to correct them."""

    def __init__(
        self,
        clock: Clock,
        tolerance_s: float = 60.0,
        window_s: float = 600.0,
        fix_interval_s: float = 300.0,
    ) -> None:
        self.clock = clock
        self.tolerance_s = tolerance_s
        self.window_s = window_s
        self.fix_interval_s = fix_interval_s
        self._stations: dict[str, StationClock] = {}
        #: Sends the station the CSMS's time (set by the OCPP server); None: nobody can.
        self.fixer: Callable[[str], Awaitable[None]] | None = None

    def state(self, station_id: str) -> StationClock | None:
        return self._stations.get(station_id)

    def offset(self, station_id: str) -> float | None:
        """The station's current clock offset (s, positive: ahead of the CSMS), None: unknown."""
        st = self._stations.get(station_id)
        return None if st is None else st.offset_s

    @property
    def _agree_s(self) -> float:
        return max(2.0, self.tolerance_s / 10.0)

    def observe(self, station_id: str, station_ts: datetime, live: bool | None) -> Verdict:
        """A timestamp of ``station_id`` received now; ``live``: True sent as it happened,
        None unknown (may have been queued). Queued messages are not observed at all."""
        now = self.clock.now()
        st = self._stations.setdefault(station_id, StationClock())
        offset_s = (station_ts - now).total_seconds()
        last = st.samples[-1] if st.samples else None
        if (
            last is not None
            and last.live == (live is True)
            and (now - last.received).total_seconds() < MERGE_S
            and (st.epoch is None or last.received > st.epoch)
        ):
            # samples of one second are one sample (their largest offset): a station
            # talking fast costs no more than one that talks once a second
            if offset_s <= last.offset_s:
                return self._verdict(st, now)
            last.offset_s = offset_s
        else:
            st.samples.append(_Sample(now, offset_s, live is True))
        self._estimate(st, now)
        return self._verdict(st, now)

    def _verdict(self, st: StationClock, now: datetime) -> Verdict:
        verdict = Verdict(st.offset_s)
        if st.offset_s is None:
            return verdict
        tol = self.tolerance_s
        if not st.skewed:
            if st.offset_s > tol or (st.offset_s < -tol and st.confident):
                st.skewed = True
                verdict.changed = "skewed"
        elif st.confident and abs(st.offset_s) <= tol * HYSTERESIS:
            st.skewed = False
            verdict.changed = "in_tolerance"
        if st.skewed and (
            st.last_fix is None or (now - st.last_fix).total_seconds() >= self.fix_interval_s
        ):
            st.last_fix = now
            st.fixes += 1
            verdict.fix = True
        return verdict

    def _estimate(self, st: StationClock, now: datetime) -> None:
        horizon = now - timedelta(seconds=self.window_s)
        while st.samples and st.samples[0].received < horizon:
            st.samples.popleft()
        samples = list(st.samples)
        if st.epoch is not None:  # the station may have set its clock at the epoch
            since = [s for s in samples if s.received > st.epoch]
            before = [s for s in samples if s.received <= st.epoch]
            if since and before:
                moved = max(s.offset_s for s in since) - max(s.offset_s for s in before)
                if abs(moved) > self._agree_s:
                    samples = since
        if not samples:
            st.offset_s, st.confident = None, False
            return
        top = max(s.offset_s for s in samples)
        agreeing = [s for s in samples if top - s.offset_s <= self._agree_s]
        spread = (
            max(s.received for s in agreeing) - min(s.received for s in agreeing)
        ).total_seconds()
        st.offset_s = top
        st.confident = any(s.live for s in agreeing) or (
            len(agreeing) >= 2 and spread >= max(5.0, self._agree_s)
        )

    def time_offered(self, station_id: str) -> None:
        """The CSMS gave the station its time: what it stamps from now on may differ."""
        st = self._stations.get(station_id)
        if st is not None:
            st.epoch = self.clock.now()

    def to_csms(self, station_id: str, station_ts: datetime, received: datetime) -> datetime:
        """When something the station stamped ``station_ts`` happened, on the CSMS's clock
        (never later than its receipt)."""
        offset = self.offset(station_id) or 0.0
        return min(received, station_ts - timedelta(seconds=offset))
