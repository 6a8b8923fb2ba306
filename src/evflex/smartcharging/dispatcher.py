"""Getting charging profiles onto stations, and keeping them there.

The dispatcher holds the profiles the CSMS wants on each station (its own
load-manager profiles and those an operator set) and makes the stations
agree:

* a profile is sent with SetChargingProfile; the answer is recorded
  (``accepted`` / ``rejected`` / ``failed`` for no answer or no connection);
* a rejected or unanswered profile is retried with exponential backoff and
  the station is flagged until it accepts;
* for one profile id only the newest wanted version matters: a change that
  arrives while an older version is in flight is sent right after it;
* when a station reconnects, everything wanted for it is sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from evflex.clock import Clock
from evflex.csms import commands
from evflex.csms.connection import CallErrorReceived
from evflex.smartcharging.profiles import NEUTRAL, ChargingProfile, from_wire, to_wire
from evflex.store import repo
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

Sender = Callable[[str, str, object], Awaitable[dict]]
Listener = Callable[[str, int, "Wanted"], None]


@dataclass(slots=True)
class Wanted:
    evse_id: int
    profile: ChargingProfile
    source: str  # "operator" or "load-manager"
    status: str = "pending"  # pending, sending, accepted, rejected, failed
    attempts: int = 0
    error: str | None = None
    #: The station's reason in one word: its statusInfo reasonCode (e.g. TxNotFound)
    #: or the CALLERROR code (e.g. NotImplemented); None when it gave none.
    code: str | None = None
    version: int = 0  # bumped on every change; a result applies only to its version
    acked_at: datetime | None = None


@dataclass(slots=True)
class _Slot:
    wanted: Wanted | None = None
    task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0


class ProfileDispatcher:
    def __init__(
        self,
        send: Sender,
        is_connected: Callable[[str], bool],
        writer: GroupCommitWriter,
        clock: Clock,
        retry_base_s: float = 2.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self._send = send
        self._is_connected = is_connected
        self._writer = writer
        self._clock = clock
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._listeners: list[Listener] = []
        self._closed = False

    # ------------------------------------------------------------- state

    def on_result(self, listener: Listener) -> None:
        """Call ``listener(station_id, profile_id, wanted)`` after every answer."""
        self._listeners.append(listener)

    def all_wanted(self) -> dict[tuple[str, int], Wanted]:
        """(station, profile id) -> what is wanted there, over all stations."""
        return {k: slot.wanted for k, slot in self._slots.items() if slot.wanted is not None}

    def wanted(self, station_id: str) -> dict[int, Wanted]:
        return {pid: w for (sid, pid), w in self.all_wanted().items() if sid == station_id}

    def get(self, station_id: str, profile_id: int) -> Wanted | None:
        slot = self._slots.get((station_id, profile_id))
        return slot.wanted if slot else None

    def flagged(self) -> dict[str, list[int]]:
        """Stations with profiles they rejected or did not acknowledge."""
        out: dict[str, list[int]] = {}
        for (sid, pid), slot in self._slots.items():
            if slot.wanted is not None and slot.wanted.status in ("rejected", "failed"):
                out.setdefault(sid, []).append(pid)
        return out

    async def load(self, sessionmaker) -> int:
        """Take up the profiles stored by an earlier run (they are re-sent on connect)."""
        async with sessionmaker() as s:
            rows = await repo.list_profiles(s)
        for r in rows:  # stored in the 2.0.1 form (see _persist)
            w = Wanted(r.evse_id, from_wire(r.body, NEUTRAL), r.source, r.status, r.attempts)
            w.error = r.last_error
            self._slots[(r.station_id, r.profile_id)] = _Slot(w)
        return len(rows)

    # ------------------------------------------------------------- changes

    def put(self, station_id: str, evse_id: int, profile: ChargingProfile, source: str) -> Wanted:
        """Want ``profile`` on the station; sending starts at once (or on connect)."""
        key = (station_id, profile.id)
        slot = self._slots.setdefault(key, _Slot())
        old = slot.wanted
        w = Wanted(evse_id, profile, source, version=(old.version + 1) if old else 1)
        slot.wanted = w
        slot.failures = 0
        if source != "load-manager":  # the load manager plans its own again after a restart
            self._persist(station_id, w)
        self._kick(station_id, profile.id, slot)
        return w

    def forget(self, station_id: str, profile_id: int) -> None:
        """Stop wanting a profile (after a ClearChargingProfile, or a transaction end)."""
        slot = self._slots.pop((station_id, profile_id), None)
        if slot is not None and slot.task is not None:
            slot.task.cancel()

        async def job(s):
            await repo.delete_profiles(s, station_id, [profile_id])

        self._writer.submit_nowait(job)

    def station_connected(self, station_id: str) -> None:
        """Send everything again: the station may have lost or replaced its profiles."""
        for (sid, pid), slot in list(self._slots.items()):
            if sid == station_id and slot.wanted is not None:
                slot.wanted.status = "pending"
                slot.failures = 0
                self._kick(sid, pid, slot)

    async def wait_settled(self, station_id: str, profile_id: int, timeout: float) -> Wanted | None:
        """Wait until the current version of a profile got an answer (or timeout)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            w = self.get(station_id, profile_id)
            if w is None or w.status not in ("pending", "sending"):
                return w
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return w
            await asyncio.sleep(min(0.01, left))

    async def close(self) -> None:
        self._closed = True
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------- sending

    def _kick(self, station_id: str, profile_id: int, slot: _Slot) -> None:
        if self._closed:
            return
        slot.wake.set()
        if slot.task is None or slot.task.done():
            slot.task = asyncio.create_task(
                self._run(station_id, profile_id, slot), name=f"profile-{station_id}-{profile_id}"
            )

    async def _run(self, station_id: str, profile_id: int, slot: _Slot) -> None:
        while slot.wanted is not None and not self._closed:
            slot.wake.clear()
            w = slot.wanted
            if w.status in ("accepted",):
                return
            if not self._is_connected(station_id):
                w.status = "failed" if w.attempts else "pending"
                w.error = "station not connected; sent when it connects"
                return  # station_connected() restarts us
            w.status = "sending"
            version = w.version
            status, error, code = await self._send_one(station_id, w)
            if slot.wanted is not w or w.version != version:
                continue  # changed meanwhile: send the newer one
            w.attempts += 1
            w.status, w.error, w.code = status, error, code
            if status == "accepted":
                w.acked_at = self._clock.now()
                slot.failures = 0
            else:
                slot.failures += 1
                log.warning("station %s: profile %d %s (%s)", station_id, profile_id, status, error)
            self._persist(station_id, w)
            for listener in self._listeners:
                listener(station_id, profile_id, w)
            if status == "accepted":
                return
            delay = min(self.retry_max_s, self.retry_base_s * 2 ** (slot.failures - 1))
            try:
                await asyncio.wait_for(slot.wake.wait(), delay)
            except TimeoutError:
                pass

    async def _send_one(self, station_id: str, w: Wanted) -> tuple[str, str | None, str | None]:
        body = commands.SetChargingProfileBody(evse=w.evse_id, profile=to_wire(w.profile, NEUTRAL))
        try:
            result = await self._send(station_id, "set-charging-profile", body)
        except TimeoutError:
            return "failed", "no answer", None
        except asyncio.CancelledError:
            raise
        except CallErrorReceived as exc:
            return "failed", f"{type(exc).__name__}: {exc}", exc.code
        except Exception as exc:  # not connected, closed socket, build error
            return "failed", f"{type(exc).__name__}: {exc}", None
        status = result.get("status")
        if status == "Accepted":
            return "accepted", None, None
        info = result.get("statusInfo") or {}
        code = info.get("reasonCode") or None
        reason = code or ""
        if info.get("additionalInfo"):
            reason = f"{reason}: {info['additionalInfo']}" if reason else info["additionalInfo"]
        error = f"station answered {status}" + (f" ({reason})" if reason else "")
        return "rejected", error, code

    def _persist(self, station_id: str, w: Wanted) -> None:
        p = w.profile
        now = self._clock.now()
        status = "pending" if w.status == "sending" else w.status

        async def job(s):
            await repo.upsert_profile(
                s,
                station_id,
                w.evse_id,
                p.id,
                p.purpose.value,
                p.stack_level,
                p.transaction_id,
                to_wire(p, NEUTRAL),
                w.source,
                status,
                now,
                w.error,
            )

        self._writer.submit_nowait(job)
