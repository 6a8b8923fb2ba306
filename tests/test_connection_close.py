"""A station that drops while a CALL is being sent leaves no unretrieved future (A1).

``serve()`` fails every pending CALL when the socket closes; a CALL still in
``send`` at that moment must not leave its future's exception unseen (asyncio
then logs "Future exception was never retrieved" at exit).
"""

from __future__ import annotations

import asyncio
import gc

import orjson
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


class _QueueSocket:
    """Frames from a queue; what is sent is kept (None in the queue: the socket closes)."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[list] = []

    async def send(self, frame: str) -> None:
        self.sent.append(orjson.loads(frame))

    def __aiter__(self):
        return self

    async def __anext__(self):
        frame = await self.incoming.get()
        if frame is None:
            raise ConnectionClosedError(None, None)
        return frame


async def test_our_call_is_answered_while_the_stations_call_is_still_handled():
    """A station's answer to our CALL is taken at once, not after its own CALL (which
    may wait for a commit) is answered; its CALLs are still answered in order."""
    ws = _QueueSocket()
    release = asyncio.Event()
    handled: list[int] = []

    async def slow_heartbeat(payload: dict) -> dict:
        await release.wait()
        handled.append(len(handled))
        return {"currentTime": "2026-01-01T00:00:00Z"}

    conn = StationConnection("CP-Q", "1.6", ws, handlers={"Heartbeat": slow_heartbeat})
    serving = asyncio.create_task(conn.serve())
    ws.incoming.put_nowait('[2,"h1","Heartbeat",{}]')
    ws.incoming.put_nowait('[2,"h2","Heartbeat",{}]')
    call = asyncio.create_task(conn.call("ClearCache", {}, timeout=5))
    while not any(f[0] == 2 for f in ws.sent):  # noqa: ASYNC110 - our CALL is out
        await asyncio.sleep(0)
    ours = next(f for f in ws.sent if f[0] == 2)
    ws.incoming.put_nowait(orjson.dumps([3, ours[1], {"status": "Accepted"}]).decode())
    assert await asyncio.wait_for(call, 5) == {"status": "Accepted"}
    assert handled == []  # the station's heartbeats are still waiting
    release.set()
    ws.incoming.put_nowait(None)
    await asyncio.wait_for(serving, 5)  # a closing socket still answers what came before
    assert [f[1] for f in ws.sent if f[0] == 3] == ["h1", "h2"]
