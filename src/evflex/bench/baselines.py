"""Baseline OCPP servers that ``evflex bench ocpp --compare`` measures evflex against.

* ``echo``: a raw ``websockets`` server that answers every CALL frame with a
  CALLRESULT carrying the same message id and a fixed small payload. It reads
  only the message id out of the frame, so it is the limit of the transport
  (WebSocket framing, the event loop, loopback TCP) with no OCPP work at all.
* ``ocpp-lib``: what a user would write by hand with the ``ocpp`` library:
  one ``ocpp.v16.ChargePoint`` (or ``ocpp.v201.ChargePoint``) per connection
  with ``@on`` handlers for the benchmark's messages; the library validates
  every message against the OCPP JSON schemas (its default); nothing is stored.

Run one with ``python -m evflex.bench.baselines echo|ocpp-lib --port P``; it
listens on 127.0.0.1 until SIGINT or SIGTERM. This module imports only the
standard library and ``websockets`` at the top, so a baseline's RSS holds
nothing of the benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

KINDS = ("echo", "ocpp-lib")
SUBPROTOCOLS = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]

# One answer for every CALL: enough for a station to believe its boot was
# accepted and its transaction started, whatever the action was.
ECHO_PAYLOAD = (
    '{"status":"Accepted","currentTime":"2025-01-01T00:00:00.000Z","interval":60,'
    '"transactionId":1,"idTagInfo":{"status":"Accepted"}}'
)


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    targets = (hard,) if hard != resource.RLIM_INFINITY else (1_048_576, 65_536)
    for target in targets:
        if soft >= target:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            continue
    return soft


# ---------------------------------------------------------------- echo


def echo_answer(frame: str) -> str | None:
    """``[2,"<id>",...]`` -> ``[3,"<id>",<fixed payload>]``; None for anything else."""
    if not frame.startswith("[2"):
        return None
    first = frame.find('"')
    last = frame.find('"', first + 1)
    if first < 0 or last < 0:
        return None
    return f"[3,{frame[first : last + 1]},{ECHO_PAYLOAD}]"


async def _echo(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for raw in ws:
            answer = echo_answer(raw if isinstance(raw, str) else raw.decode())
            if answer is not None:
                await ws.send(answer)


# ---------------------------------------------------------------- ocpp library


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ocpp_lib_handler() -> Callable[[ServerConnection], Awaitable[None]]:
    """A connection handler built on the ``ocpp`` library's ChargePoint classes."""
    from ocpp.routing import on
    from ocpp.v16 import ChargePoint as ChargePoint16
    from ocpp.v16 import call_result as r16
    from ocpp.v16.datatypes import IdTagInfo
    from ocpp.v201 import ChargePoint as ChargePoint201
    from ocpp.v201 import call_result as r201
    from ocpp.v201.datatypes import IdTokenInfoType

    def answers_of_both_versions(results: Any) -> type:
        """Handlers 1.6 and 2.0.1 share, answered with that version's ``call_result``."""

        class Common:
            @on("BootNotification")
            def on_boot(self, **_: Any):
                return results.BootNotification(current_time=_now(), interval=60, status="Accepted")

            @on("Heartbeat")
            def on_heartbeat(self, **_: Any):
                return results.Heartbeat(current_time=_now())

            @on("StatusNotification")
            def on_status(self, **_: Any):
                return results.StatusNotification()

            @on("MeterValues")
            def on_meter_values(self, **_: Any):
                return results.MeterValues()

        return Common

    class Station16(answers_of_both_versions(r16), ChargePoint16):
        _next_tx = 0

        @on("Authorize")
        def on_authorize(self, **_: Any):
            return r16.Authorize(id_tag_info=IdTagInfo(status="Accepted"))

        @on("StartTransaction")
        def on_start(self, **_: Any):
            Station16._next_tx += 1
            return r16.StartTransaction(
                transaction_id=Station16._next_tx, id_tag_info=IdTagInfo(status="Accepted")
            )

        @on("StopTransaction")
        def on_stop(self, **_: Any):
            return r16.StopTransaction()

    class Station201(answers_of_both_versions(r201), ChargePoint201):
        @on("Authorize")
        def on_authorize(self, **_: Any):
            return r201.Authorize(id_token_info=IdTokenInfoType(status="Accepted"))

        @on("TransactionEvent")
        def on_transaction_event(self, **kwargs: Any):
            if kwargs.get("id_token"):
                return r201.TransactionEvent(id_token_info=IdTokenInfoType(status="Accepted"))
            return r201.TransactionEvent()

    async def handler(ws: ServerConnection) -> None:
        station_id = ws.request.path.rstrip("/").rsplit("/", 1)[-1] if ws.request else "?"
        cls = Station201 if ws.subprotocol == "ocpp2.0.1" else Station16
        with contextlib.suppress(ConnectionClosed):
            await cls(station_id, ws).start()

    return handler


# ---------------------------------------------------------------- process


async def serve_baseline(kind: str, host: str, port: int) -> None:
    """Serve ``kind`` on ``host:port`` until SIGINT or SIGTERM."""
    handler = _echo if kind == "echo" else ocpp_lib_handler()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        subprotocols=SUBPROTOCOLS,
        compression=None,
        ping_interval=None,
        backlog=4096,
    ):
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evflex.bench.baselines", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    asyncio.run(serve_baseline(args.kind, args.host, args.port))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
