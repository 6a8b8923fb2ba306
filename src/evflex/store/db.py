"""Engine creation and schema migrations.

The database is any SQLAlchemy async URL: ``sqlite+aiosqlite:///evflex.db``
(the default) or ``postgresql+asyncpg://user@host/db``. Plain ``sqlite:///`` and
``postgresql://`` URLs are given their async driver automatically.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import event, inspect, select, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from evflex.store import (  # noqa: F401 (their tables)
    alert_tables,
    audit_tables,
    ocpi_tables,
    record_tables,
)
from evflex.store.tables import Base, SchemaVersion

log = logging.getLogger(__name__)


def async_url(url: str) -> str:
    """Give a plain SQLAlchemy URL its asyncio driver."""
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url.removeprefix("sqlite://")
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.removeprefix("postgres://")
    return url


def make_engine(url: str) -> AsyncEngine:
    url = async_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - driver hook
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


# Each migration moves the schema from version i to i+1. Version 1 is the
# initial schema created from the table metadata; later versions append here.
Migration = Callable[[AsyncConnection], Awaitable[None]]


def _create_tables(sync_conn) -> None:
    """Every table but the schema version's, on a database that has none of them yet."""
    tables = [t for t in Base.metadata.sorted_tables if t.name != SchemaVersion.__tablename__]
    have = set(inspect(sync_conn).get_table_names())
    Base.metadata.create_all(sync_conn, tables=[t for t in tables if t.name not in have],
                             checkfirst=False)  # fmt: skip


async def _v1_initial(conn: AsyncConnection) -> None:
    await conn.run_sync(Base.metadata.create_all)


def _add_missing(conn: AsyncConnection, *tables: str):
    """Create new tables, then add the columns ``tables`` lack (all nullable)."""

    def upgrade(sync_conn) -> None:
        Base.metadata.create_all(sync_conn)  # new tables only; existing ones are kept
        insp = inspect(sync_conn)
        for table in tables:
            have = {c["name"] for c in insp.get_columns(table)}
            for column in Base.metadata.tables[table].columns:
                if column.name not in have:
                    ddl = column.type.compile(dialect=sync_conn.dialect)
                    sync_conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column.name} {ddl}"))

    return conn.run_sync(upgrade)


async def _v2_smart_charging(conn: AsyncConnection) -> None:
    """Sites, circuits, charging profiles, station topology and driver needs."""
    await _add_missing(conn, "stations", "transactions")


async def _v3_scheduling(conn: AsyncConnection) -> None:
    """Per site: scheduling objective, capacity tariff, forecast."""
    await _add_missing(conn, "sites")


async def _v4_v2x(conn: AsyncConnection) -> None:
    """V2X: discharge consent, bidirectional EV needs, operation mode; site tariffs."""
    await _add_missing(conn, "transactions", "sites")


async def _v5_web(conn: AsyncConnection) -> None:
    """Dashboard: users, API tokens, browser sessions, driver tokens, site samples."""
    await _add_missing(conn)


async def _v6_operations(conn: AsyncConnection) -> None:
    """EV phases, station clocks, remote starts, steerability, config-managed site values."""
    await _add_missing(conn, *(t for t in Base.metadata.tables if t != SchemaVersion.__tablename__))


async def _v7_security(conn: AsyncConnection) -> None:
    """Security profiles per station, certificates."""
    await _add_missing(conn, "stations")


async def _v8_console(conn: AsyncConnection) -> None:
    """The operator console: charge records and tariffs, alerts, the audit trail,
    firmware and log upload status."""
    await _add_missing(conn, *(t for t in Base.metadata.tables if t != SchemaVersion.__tablename__))


async def _v9_ocpi(conn: AsyncConnection) -> None:
    """OCPI roaming: partners, the push outbox, partners' tokens and objects, commands."""
    await _add_missing(conn, *(t for t in Base.metadata.tables if t != SchemaVersion.__tablename__))


MIGRATIONS: list[Migration] = [
    _v1_initial, _v2_smart_charging, _v3_scheduling, _v4_v2x, _v5_web, _v6_operations,
    _v7_security, _v8_console, _v9_ocpi,
]  # fmt: skip
SCHEMA_VERSION = len(MIGRATIONS)


async def migrate(engine: AsyncEngine) -> int:
    """Create or upgrade the schema; returns the schema version now in place."""
    async with engine.begin() as conn:
        await conn.run_sync(SchemaVersion.__table__.create, checkfirst=True)
        current = (await conn.execute(select(SchemaVersion.version))).scalar()
        # A new database gets today's tables at once: every migration after the first only
        # adds tables and columns that the table definitions already hold.
        version = current or SCHEMA_VERSION
        if current is None:
            log.info("creating database schema version %d", SCHEMA_VERSION)
            await conn.run_sync(_create_tables)
        for i in range(version, SCHEMA_VERSION):
            log.info("migrating database schema to version %d", i + 1)
            await MIGRATIONS[i](conn)
        if current is None:
            await conn.execute(
                SchemaVersion.__table__.insert().values(id=1, version=SCHEMA_VERSION)
            )
        elif current != SCHEMA_VERSION:
            await conn.execute(SchemaVersion.__table__.update().values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION
