"""Shared fixtures: a real evflex node on free ports, on SQLite and on PostgreSQL.

The PostgreSQL variant uses ``EVFLEX_TEST_POSTGRES_URL`` (default: the local
server, database ``test``); each test gets a fresh database of its own. The
variant is skipped only when no PostgreSQL server is reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from hypothesis import settings as hypothesis_settings

from evflex.app import Runtime
from evflex.config import Settings

# Property tests explore new examples on every local run; in CI (CI=true) they
# replay a fixed sequence so that a run's verdict does not depend on luck.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

PG_URL = os.environ.get(
    "EVFLEX_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)

_pg_available: bool | None = None

# Every answer the CSMS builds is checked against its schema in the tests (also
# in the servers they start as child processes); production skips the check.
os.environ.setdefault("EVFLEX_VALIDATE_RESPONSES", "true")


async def _pg_reachable() -> bool:
    global _pg_available
    if _pg_available is None:
        import asyncpg

        try:
            conn = await asyncpg.connect(_plain(PG_URL), timeout=3)
            await conn.close()
            _pg_available = True
        except (TimeoutError, OSError, asyncpg.PostgresError):
            _pg_available = False
    return _pg_available


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _create_pg_database() -> tuple[str, str]:
    import asyncpg

    name = "evflex_t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(_plain(PG_URL))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


async def _drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_plain(PG_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> AsyncIterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"
        return
    if not await _pg_reachable():
        pytest.skip("no PostgreSQL server reachable at " + PG_URL)
    name, url = await _create_pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(name)


def make_settings(database_url: str, **kw) -> Settings:
    base = dict(
        host="127.0.0.1", ocpp_port=0, http_port=0, database_url=database_url,
        heartbeat_interval=60, response_timeout=5.0,
        upload_dir=Path(tempfile.mkdtemp(prefix="evflex-uploads-")),  # not the working folder
        ocpi_key_file=Path(tempfile.mkdtemp(prefix="evflex-ocpi-")) / "ocpi.key",
    )
    base.update(kw)
    return Settings(**base)


class Node:
    """A running evflex node plus an HTTP client for its API."""

    def __init__(self, rt: Runtime, http: httpx.AsyncClient):
        self.rt = rt
        self.http = http

    @property
    def ocpp_url(self) -> str:
        return f"ws://127.0.0.1:{self.rt.ocpp_port}/ocpp"

    def url(self, station_id: str) -> str:
        return f"{self.ocpp_url}/{station_id}"

    async def wait_for(self, predicate, timeout: float = 5.0, interval: float = 0.02):
        """Poll an async or sync predicate until it returns something truthy."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(interval)

    async def get(self, path: str, **kw):
        r = await self.http.get(path, **kw)
        return r

    async def station(self, station_id: str) -> dict:
        r = await self.http.get(f"/api/v1/stations/{station_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def transactions(self, **params) -> list[dict]:
        r = await self.http.get("/api/v1/transactions", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def command(self, station_id: str, name: str, body: dict | None = None):
        return await self.http.post(
            f"/api/v1/stations/{station_id}/commands/{name}", json=body or {}
        )


async def start_node(
    database_url: str, clock=None, verify=True, **kw
) -> tuple[Runtime, httpx.AsyncClient]:
    """A started node and an admin's client of its API (HTTPS, checked with ``verify``,
    when the node serves TLS)."""
    rt = Runtime(make_settings(database_url, **kw), clock)
    await rt.start()
    scheme = "https" if rt.settings.tls_cert else "http"
    http = httpx.AsyncClient(
        base_url=f"{scheme}://127.0.0.1:{rt.http_port}",
        verify=verify,
        timeout=10,
        headers={"Authorization": f"Bearer {rt.auth.ephemeral_token('admin')}"},
    )
    return rt, http


@contextlib.asynccontextmanager
async def running_node(database_url: str, clock=None, verify=True, **kw) -> AsyncIterator[Node]:
    """A node started with these settings for the block, stopped after it."""
    rt, http = await start_node(database_url, clock, verify, **kw)
    try:
        yield Node(rt, http)
    finally:
        await http.aclose()
        await rt.stop()


@pytest.fixture
async def node(database_url) -> AsyncIterator[Node]:
    """An evflex node that registers unknown stations on first connect."""
    async with running_node(database_url, allow_unknown_stations=True) as n:
        yield n


@pytest.fixture
async def strict_node(database_url) -> AsyncIterator[Node]:
    """An evflex node that refuses unknown stations (the production default)."""
    async with running_node(database_url, allow_unknown_stations=False) as n:
        yield n


def node_with(**settings):
    """A fixture: a node that registers unknown stations, with these settings besides."""

    @pytest.fixture
    async def fixture(database_url) -> AsyncIterator[Node]:
        """A node with its own settings (see where the fixture is made)."""
        async with running_node(database_url, allow_unknown_stations=True, **settings) as n:
            yield n

    return fixture


# For site tests: no full-power start (the plan applies at once), a site sample every second.
site_node = node_with(initial_full_power_s=0.0, site_sample_s=1.0)
