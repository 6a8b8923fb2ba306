"""The group-commit writer's bulk rows, on SQLite and PostgreSQL.

Heartbeats, status reports, meter samples, connects and boots are rows that
many stations share in one executemany per batch. A bad row must fail only
its own caller; a late, older status must not overwrite a newer one; the
connection rows of one station keep their order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from evflex.domain.model import ConnectorStatus, MeterSample, StatusReport
from evflex.store import repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.tables import Connector, MeterValue, Station
from evflex.store.writer import GroupCommitWriter

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url) -> AsyncIterator[tuple]:
    engine = make_engine(database_url)
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    writer = GroupCommitWriter(sessions)
    writer.start()
    async with sessions() as s, s.begin():
        await repo.create_station(s, "W1", T0)
    try:
        yield writer, sessions
    finally:
        await writer.stop()
        await engine.dispose()


def _status_row() -> dict:
    report = StatusReport(1, 1, ConnectorStatus.AVAILABLE, T0)
    return repo.status_row("W1", report, T0)


def _samples(seconds: int) -> list[MeterSample]:
    ts = T0 + timedelta(seconds=seconds)
    return [MeterSample(ts, "Energy.Active.Import.Register", 1000.0 + seconds, "Wh")]


async def test_a_bad_row_fails_its_caller_only(store):
    writer, sessions = store
    results = await asyncio.gather(
        writer.write(repo.SAMPLES, repo.sample_rows("W1", 1, None, _samples(1))),
        writer.write(repo.STATUSES, [{**_status_row(), "status": None}]),  # NOT NULL broken
        writer.write(repo.HEARTBEATS, [{"b_id": "W1", "b_at": T0 + timedelta(seconds=3)}]),
        writer.write(repo.SAMPLES, repo.sample_rows("W1", 1, None, _samples(4))),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None and results[3] is None, results
    assert isinstance(results[1], IntegrityError), results[1]
    async with sessions() as s:
        stored = (await s.execute(select(MeterValue.station_id, MeterValue.value))).all()
        station = await s.get(Station, "W1")
    assert sorted(stored) == [("W1", 1001.0), ("W1", 1004.0)]
    assert station.last_heartbeat_at == T0 + timedelta(seconds=3)


async def test_an_older_status_never_overwrites_a_newer_one(store):
    writer, sessions = store

    def row(status: ConnectorStatus, seconds: int) -> list[dict]:
        report = StatusReport(1, 1, status, T0 + timedelta(seconds=seconds))
        return [repo.status_row("W1", report, T0)]

    await writer.write(repo.STATUSES, row(ConnectorStatus.CHARGING, 20))
    await writer.write(repo.STATUSES, row(ConnectorStatus.AVAILABLE, 10))  # late, older
    # in one batch too, the newer one wins whatever the order
    await asyncio.gather(
        writer.write(repo.STATUSES, row(ConnectorStatus.FINISHING, 40)),
        writer.write(repo.STATUSES, row(ConnectorStatus.PREPARING, 30)),
    )
    async with sessions() as s:
        rows = (await s.execute(select(Connector))).scalars().all()
    assert [(r.status, r.status_at) for r in rows] == [("Finishing", T0 + timedelta(seconds=40))]


async def test_connection_rows_keep_their_order(store):
    writer, sessions = store
    t1, t2, t3 = (T0 + timedelta(seconds=n) for n in (1, 2, 3))
    await asyncio.gather(
        writer.write(repo.CONNECTIONS, [repo.connection_row("W1", True, "1.6", t1)]),
        writer.write(repo.CONNECTIONS, [repo.connection_row("W1", False, None, t2)]),
        writer.write(repo.CONNECTIONS, [repo.connection_row("W1", True, "2.0.1", t3)]),
    )
    async with sessions() as s:
        st = await s.get(Station, "W1")
    assert st.connected is True
    assert st.ocpp_version == "2.0.1"
    assert st.last_connected_at == t3
    assert st.last_disconnected_at == t2
