"""A station that drops while a CALL is being sent leaves no unretrieved future (A1).

``serve()`` fails every pending CALL when the socket closes; a CALL still in
``send`` at that moment must not leave its future's exception unseen (asyncio
then logs "Future exception was never retrieved" at exit).
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from websockets.exceptions import ConnectionClosedError

from evflex.csms.connection import StationConnection


class _DroppingSocket:
    """Closes while a frame is being sent, the way a vanishing station does."""

    def __init__(self) -> None:
        self.sending = asyncio.Event()
        self.closed = asyncio.Event()

    async def send(self, _frame: str) -> None:
        self.sending.set()
        await self.closed.wait()
        raise ConnectionClosedError(None, None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        await self.sending.wait()  # the CALL is on its way ...
        self.closed.set()  # ... when the socket goes
        raise ConnectionClosedError(None, None)


async def test_a_call_cut_off_while_sending_leaves_nothing_unretrieved():
    loop = asyncio.get_running_loop()
    unseen: list[dict] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: unseen.append(ctx))
    try:
        conn = StationConnection("CP-DROP", "1.6", _DroppingSocket(), handlers={})
        server = asyncio.create_task(conn.serve())
        with pytest.raises(ConnectionError):
            await conn.call("Reset", {"type": "Soft"}, timeout=5)
        await server
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(old)
    assert not [c for c in unseen if "never retrieved" in c.get("message", "")], unseen
