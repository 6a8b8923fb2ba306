"""What the hostile-frame tests share: a raw socket that plays the attacker, a station
of the ``ocpp`` library that must keep being served, and the database's row counts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import websockets
from ocpp.v16 import call as call16
from sqlalchemy import func, select

from evflex.store.tables import Base
from ocpp_clients import Lib16, connected
from test_robustness import BOOT16, BOOT201, rpc

BOOTS = {"ocpp1.6": BOOT16, "ocpp2.0.1": BOOT201, "ocpp2.1": BOOT201}
AUDIT_TABLES = frozenset({"audit_log", "audit_chain"})


async def row_counts(node) -> dict[str, int]:
    """Rows of every table of the node's database but the audit trail's, which records the
    API calls a test makes (a command sent to the hostile station is one)."""
    async with node.rt.sessionmaker() as s:
        return {
            t.name: (await s.execute(select(func.count()).select_from(t))).scalar_one()
            for t in Base.metadata.sorted_tables
            if t.name not in AUDIT_TABLES
        }


class Pair:
    """The attacker's raw socket and a well-behaved station beside it."""

    def __init__(self, hostile, good: Lib16) -> None:
        self.hostile = hostile
        self.good = good

    async def send(self, frame: str) -> list:
        """Send a frame on the hostile socket and return its answer."""
        return await rpc(self.hostile, frame)

    async def good_is_served(self) -> None:
        answer = await self.good.call(call16.Heartbeat())
        assert answer.current_time


@contextlib.asynccontextmanager
async def hostile_and_good(node, proto: str = "ocpp1.6", name: str = "HOSTILE") -> AsyncIterator[Pair]:
    """Both stations connected and booted, for the block."""
    async with (
        connected(Lib16, node.ocpp_url, f"GOOD-{name}", "ocpp1.6") as good,
        websockets.connect(node.url(name), subprotocols=[proto], max_size=None) as ws,
    ):
        await good.call(call16.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        assert (await rpc(ws, BOOTS[proto]))[0] == 3
        yield Pair(ws, good)


def crashes(caplog) -> list[logging.LogRecord]:
    """Log records of evflex that report a crash: ERROR or worse, or with a traceback."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("evflex") and (r.levelno >= logging.ERROR or r.exc_info)
    ]


def frame(message_id: str, action: str, payload: str) -> str:
    return f'[2,"{message_id}","{action}",{payload}]'


@contextlib.asynccontextmanager
async def writer_held(node):
    """The node's store writer busy with a job that waits until the block ends: what
    needs a write waits, what is refused before the store is answered at once."""
    release, holding = asyncio.Event(), asyncio.Event()

    async def hold(_session) -> None:
        holding.set()
        await release.wait()

    done = node.rt.writer.submit_nowait(hold)
    await holding.wait()
    try:
        yield
    finally:
        release.set()
        await done
