"""SIGTERM stops ``evflex serve`` in order, as SIGINT (Ctrl-C) does: a connected station is
told 1001 going away with a close frame, its Disconnected event is stored, the process
exits 0."""

from __future__ import annotations

import asyncio
import signal

from ocpp.v201 import call
from sqlalchemy import select

from evflex.store.db import make_engine
from evflex.store.tables import EventLog
from ocpp_clients import Lib201, connected
from test_crash_durability import _free_port, _start_server, _wait_listening


def _log_file(tmp_path):
    return open(tmp_path / "server.log", "wb")  # noqa: SIM115 (closed by its with block)


async def test_sigterm_stops_the_server_in_order(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"
    ocpp_port, http_port = _free_port(), _free_port()
    with _log_file(tmp_path) as log:
        proc = _start_server(url, ocpp_port, http_port, log)
        try:
            await _wait_listening(ocpp_port, proc)
            ws_url = f"ws://127.0.0.1:{ocpp_port}/ocpp"
            async with connected(Lib201, ws_url, "CP-TERM", "ocpp2.0.1") as cp:
                boot = call.BootNotification(
                    charging_station={"model": "K", "vendor_name": "T"}, reason="PowerUp"
                )
                assert (await cp.call(boot)).status == "Accepted"
                proc.send_signal(signal.SIGTERM)
                ws = cp._connection
                await asyncio.wait_for(ws.wait_closed(), 30)
                frame = ws.protocol.close_rcvd
                assert frame is not None, "no close frame"  # as with 1006
                assert frame.code == 1001
            assert await asyncio.to_thread(proc.wait, 30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            types = (
                (
                    await conn.execute(
                        select(EventLog.type)
                        .where(EventLog.station_id == "CP-TERM", EventLog.kind == "connection")
                        .order_by(EventLog.id)
                    )
                )
                .scalars()
                .all()
            )
    finally:
        await engine.dispose()
    assert types == ["Connected", "Disconnected"]
