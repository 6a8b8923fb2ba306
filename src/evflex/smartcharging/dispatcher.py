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

Every profile has its own sending task, so a plan for thousands of EVSEs
goes out to all stations at once (OCPP-J allows one CALL in flight per
connection: EVSEs of one station queue behind each other there, nowhere
else). With the server's live connections at hand the SetChargingProfile
payload is built once per profile for the station's version and handed to
the connection directly. Answers are recorded in memory at once; the
database copy is written in batches behind, so no send ever waits for a
write, and a write that fails is retried without touching what the
stations acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.csms import commands
from evflex.csms.connection import CallErrorReceived
from evflex.smartcharging.profiles import (
    NEUTRAL,
    ChargingProfile,
    from_wire,
    set_profile_payload,
    to_wire,
)
from evflex.store import repo
from evflex.store.tables import StationProfile
from evflex.store.writer import GroupCommitWriter, Job

log = logging.getLogger(__name__)

#: Sends a CALL (station, action, body); the station's answer.
Sender = Callable[[str, str, object], Awaitable[dict[str, Any]]]
Listener = Callable[[str, int, "Wanted"], None]
#: (station, profile id) -> (row, answers it counts) to upsert, or None to delete.
ProfileRows = dict[tuple[str, int], tuple[dict[str, Any], int] | None]


class Connection(Protocol):
    """What the dispatcher needs of a live station connection (``StationConnection``)."""

    version: str

    async def call(
        self, action: str, payload: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any]: ...


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
    #: The SetChargingProfile payload last built, and the OCPP version it is for.
    payload: tuple[str, dict[str, Any]] | None = None


@dataclass(slots=True)
class _Slot:
    wanted: Wanted | None = None
    task: asyncio.Task[None] | None = None
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
        connections: Mapping[str, Connection] | None = None,
        write_delay_s: float = 0.05,
    ) -> None:
        self._send = send
        self._is_connected = is_connected
        self._writer = writer
        self._clock = clock
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        if connections is None:  # a server's send_command: use its live connections
            connections = getattr(getattr(send, "__self__", None), "connections", None)
        self._connections = connections
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._listeners: list[Listener] = []
        self._closed = False
        self.store = ProfileStore(writer, write_delay_s)

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

    async def load(self, sessionmaker: async_sessionmaker[AsyncSession]) -> int:
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
        self.store.delete(station_id, profile_id)

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
        await self.store.close()

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
        try:
            conn = self._connections.get(station_id) if self._connections is not None else None
            if conn is not None:
                if w.payload is None or w.payload[0] != conn.version:
                    w.payload = (
                        conn.version,
                        set_profile_payload(w.profile, w.evse_id, conn.version),
                    )
                result = await conn.call("SetChargingProfile", w.payload[1])
            else:
                body = commands.SetChargingProfileBody(
                    evse=w.evse_id, profile=to_wire(w.profile, NEUTRAL)
                )
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
        self.store.upsert(
            station_id,
            {
                "station_id": station_id,
                "profile_id": p.id,
                "evse_id": w.evse_id,
                "purpose": p.purpose.value,
                "stack_level": p.stack_level,
                "transaction_id": p.transaction_id,
                # The 2.x payload's profile is the stored (2.1) form already: a 2.0.1
                # payload exists only for a profile without 2.1 fields, written alike.
                "body": w.payload[1]["chargingProfile"]
                if w.payload is not None and w.payload[0] != "1.6"
                else p,  # to the wire form when written
                "source": w.source,
                "status": "pending" if w.status == "sending" else w.status,
                "last_error": w.error,
                "updated_at": self._clock.now(),
            },
        )


class ProfileStore:
    """The database copy of the wanted profiles, written in batches behind the sending.

    Rows are written once nothing new came for ``delay_s`` (a plan's answers
    arrive together), or after ``max_wait_s`` at the latest, in one statement;
    for a profile only its newest row is written. A failed write keeps its
    rows (newer ones win) and is tried again after ``retry_s``.
    """

    def __init__(
        self,
        writer: GroupCommitWriter,
        delay_s: float = 0.05,
        retry_s: float = 1.0,
        max_wait_s: float = 1.0,
    ) -> None:
        self._writer = writer
        self.delay_s = delay_s
        self.retry_s = retry_s
        self.max_wait_s = max_wait_s
        self._changes = 0
        self._rows: ProfileRows = {}
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def upsert(self, station_id: str, row: dict[str, Any]) -> None:
        key = (station_id, row["profile_id"])
        answered = 1 if row["status"] in ("accepted", "rejected", "failed") else 0
        old = self._rows.get(key)
        self._rows[key] = (row, answered + (old[1] if old is not None else 0))
        self._changes += 1
        self._kick()

    def delete(self, station_id: str, profile_id: int) -> None:
        self._rows[(station_id, profile_id)] = None
        self._changes += 1
        self._kick()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="profile-store")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._rows:
            # Wait for a quiet moment (a plan's answers arrive together), at most max_wait_s.
            start, seen = loop.time(), -1
            while seen != self._changes and loop.time() - start < self.max_wait_s:
                seen = self._changes
                await asyncio.sleep(self.delay_s)
            if not await self.flush():
                await asyncio.sleep(self.retry_s)

    async def flush(self) -> bool:
        """Write what is pending now; False if the write failed (the rows stay pending)."""
        rows, self._rows = self._rows, {}
        if not rows:
            return True
        try:
            await self._writer.submit(_write_profiles(rows))
        except asyncio.CancelledError:
            self._restore(rows)
            raise
        except Exception:
            self.failures += 1
            log.exception("writing %d charging profile rows failed; trying again", len(rows))
            self._restore(rows)
            return False
        self.writes += 1
        return True

    def _restore(self, rows: ProfileRows) -> None:
        for key, old in rows.items():
            new = self._rows.get(key, old)
            if new is not None and old is not None and new is not old:
                new = (new[0], new[1] + old[1])  # both answers count
            self._rows[key] = new

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.flush()


def _write_profiles(rows: ProfileRows) -> Job:
    """One write job: upsert and delete charging profile rows, one statement each."""
    upserts = [
        dict(v[0], body=_stored_form(v[0]["body"]), attempts=v[1])
        for v in rows.values()
        if v is not None
    ]
    deletes: dict[str, list[int]] = {}
    for (station_id, profile_id), v in rows.items():
        if v is None:
            deletes.setdefault(station_id, []).append(profile_id)

    async def job(s: AsyncSession) -> None:
        for station_id, ids in deletes.items():
            await repo.delete_profiles(s, station_id, ids)
        if upserts:
            bind = s.bind
            assert bind is not None  # the writer's sessions are bound to the engine
            insert = pg_insert if bind.dialect.name == "postgresql" else sqlite_insert
            ins = insert(StationProfile)
            stmt = ins.on_conflict_do_update(
                index_elements=["station_id", "profile_id"],
                set_={
                    **{k: ins.excluded[k] for k in upserts[0] if k not in _KEY},
                    "attempts": StationProfile.attempts + ins.excluded.attempts,
                },
            )
            await s.execute(stmt, upserts)

    return job


_KEY = ("station_id", "profile_id", "attempts")


def _stored_form(body: ChargingProfile | dict[str, Any]) -> dict[str, Any]:
    return to_wire(body, NEUTRAL) if isinstance(body, ChargingProfile) else body
