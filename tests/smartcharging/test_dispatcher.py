"""The profile dispatcher on its own: concurrent sending, payloads, batched records.

The stations are doubles at the connection seam (``version`` and ``call``);
the database is a real SQLite file behind the group-commit writer.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from evflex.clock import SystemClock
from evflex.smartcharging.dispatcher import ProfileDispatcher
from evflex.smartcharging.profiles import Purpose, simple_profile, to_wire
from evflex.store import repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.writer import GroupCommitWriter


class GatedStation:
    """A station that answers each SetChargingProfile once the test opens the gate."""

    def __init__(self, version: str, gate: asyncio.Event, log: list) -> None:
        self.version = version
        self.gate = gate
        self.log = log
        self.in_flight = 0

    async def call(self, action: str, payload: dict, timeout: float | None = None) -> dict:
        self.log.append(("sent", action, payload))
        self.in_flight += 1
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return {"status": "Accepted"}


async def _no_command(*_):
    raise AssertionError("profiles go straight to the connection")


async def _until(cond, steps: int = 2000) -> None:
    """Let the loop run until ``cond()`` holds (a bounded number of turns, no clock)."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


async def _store(tmp_path, stations: list[str]):
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await migrate(engine)
    sessionmaker = make_sessionmaker(engine)
    writer = GroupCommitWriter(sessionmaker)
    writer.start()
    now = datetime.now(UTC)

    async def job(s):
        for sid in stations:
            await repo.create_station(s, sid, now)

    await writer.submit(job)
    return engine, sessionmaker, writer


async def test_profiles_go_to_every_station_at_once(tmp_path):
    """All stations have their profile in flight before any answers: nothing is sent in turn."""
    ids = [f"ST{i:02d}" for i in range(40)]
    engine, _, writer = await _store(tmp_path, ids)
    gate = asyncio.Event()
    log: list = []
    conns = {sid: GatedStation("1.6" if i % 2 else "2.0.1", gate, log) for i, sid in enumerate(ids)}
    d = ProfileDispatcher(_no_command, conns.__contains__, writer, SystemClock(), connections=conns)
    try:
        for sid in ids:
            d.put(sid, 1, simple_profile(7, Purpose.TX_DEFAULT, 16.0), "load-manager")
        await _until(lambda: sum(c.in_flight for c in conns.values()) == len(ids))
        assert all(w.status == "sending" for w in d.all_wanted().values())
        gate.set()
        await _until(lambda: all(w.status == "accepted" for w in d.all_wanted().values()))
    finally:
        await d.close()
        await writer.stop()
        await engine.dispose()
    # Each station got its version's payload, built from the profile (no command body).
    by_version = {conns[sid].version for sid in ids}
    assert by_version == {"1.6", "2.0.1"}
    payloads = [p for _, action, p in log if action == "SetChargingProfile"]
    assert len(payloads) == len(ids)
    wire16 = to_wire(simple_profile(7, Purpose.TX_DEFAULT, 16.0), "1.6")
    wire201 = to_wire(simple_profile(7, Purpose.TX_DEFAULT, 16.0), "2.0.1")
    assert {"connectorId": 1, "csChargingProfiles": wire16} in payloads
    assert {"evseId": 1, "chargingProfile": wire201} in payloads


async def test_a_failed_write_loses_no_acknowledged_state(tmp_path):
    """The answers stand in memory at once; the failed write is done again later."""
    ids = ["A", "B", "C"]
    engine, sessionmaker, writer = await _store(tmp_path, ids)
    gate = asyncio.Event()
    gate.set()
    conns = {sid: GatedStation("2.0.1", gate, []) for sid in ids}
    real_submit = writer.submit
    calls = {"n": 0}

    async def failing_once(job):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk full")
        return await real_submit(job)

    writer.submit = failing_once
    heard: list = []
    d = ProfileDispatcher(_no_command, conns.__contains__, writer, SystemClock(), connections=conns)
    d.store.retry_s = 0.01
    d.on_result(lambda sid, pid, w: heard.append((sid, pid, w.status)))
    try:
        for sid in ids:
            d.put(sid, 1, simple_profile(7, Purpose.TX_DEFAULT, 16.0), "load-manager")
        await _until(lambda: len(heard) == len(ids))
        assert sorted(heard) == [(sid, 7, "accepted") for sid in ids]
        await _until(lambda: d.store.writes >= 1)
        assert d.store.failures == 1 and d.store.pending == 0
        assert all(d.get(sid, 7).status == "accepted" for sid in ids)
        # A second version of A's profile: its row is replaced, its answers counted.
        d.put("A", 1, simple_profile(7, Purpose.TX_DEFAULT, 10.0), "load-manager")
        await _until(lambda: d.get("A", 7).status == "accepted" and d.store.writes >= 2)
        d.forget("C", 7)
    finally:
        await d.close()  # writes what is still pending
        await writer.stop()
    async with sessionmaker() as s:
        rows = {r.station_id: r for r in await repo.list_profiles(s)}
    await engine.dispose()
    assert sorted(rows) == ["A", "B"]  # C forgotten
    assert rows["A"].status == rows["B"].status == "accepted"
    assert rows["A"].attempts == 2 and rows["B"].attempts == 1
    assert rows["A"].body["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 10.0
