"""The websocket link of a simulated station: one ``ocpp`` ChargePoint per connection.

Each OCPP version's codec mixes :class:`LinkMixin` into the ``ocpp``
library's ChargePoint class of that version; its handlers map the CSMS's
requests to the station's behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError, OCPPError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from evflex.sim.model import SimStats, StationSpec

#: Logger handed to the ``ocpp`` library (one line per frame at INFO level).
wire_log = logging.getLogger("evflex.sim.wire")

MessageHook = Callable[[str, str, Any], None]


class LinkDown(Exception):
    """The websocket closed before the answer to a message arrived."""


class LinkOwner(Protocol):
    """What a link needs of its station (the station's side of the link)."""

    spec: StationSpec
    stats: SimStats
    received: list[str]
    on_message: MessageHook | None
    validate_messages: bool
    response_timeout_s: float

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def error(self, text: str) -> None: ...


@dataclass
class _Link:
    """Bookkeeping shared by both protocol-specific link classes."""

    closed: asyncio.Future[None]
    #: True while a CSMS request is being handled (its answer not yet sent).
    handling: bool = False
    followups: list[Callable[[], Coroutine[Any, Any, Any]]] = field(default_factory=list)


class LinkMixin:
    """Mixed into the ``ocpp`` ChargePoint classes: one instance per websocket connection.

    Handlers for CSMS requests run inside the receive loop and must not wait
    for answers to their own requests; what has to happen after the response
    (StatusNotification, StartTransaction, ...) is registered with
    :meth:`later` and started once the response has been sent.
    """

    station: Any
    _link: _Link
    _connection: ClientConnection

    def setup_link(self, station: LinkOwner) -> None:
        self.station = station
        self._link = _Link(closed=asyncio.get_running_loop().create_future())

    @property
    def closed_future(self) -> asyncio.Future[None]:
        return self._link.closed

    @property
    def is_closed(self) -> bool:
        return self._link.closed.done()

    def mark_closed(self) -> None:
        if not self._link.closed.done():
            self._link.closed.set_result(None)

    @property
    def handling(self) -> bool:
        return self._link.handling

    def later(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``factory()`` after the response to the current request was sent."""
        self._link.followups.append(factory)

    async def route_message(self, raw_msg: str) -> None:
        station = self.station
        station.stats.messages_received += 1
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) >= 4 and msg[0] == 2:
            station.received.append(str(msg[2]))
            if station.on_message is not None:
                station.on_message("in", str(msg[2]), msg[3])
            if msg[2] == "SetChargingProfile" and station.spec.profile_behaviour == "ignore":
                return  # never answered: the CSMS runs into its response timeout
        self._link.followups = []
        self._link.handling = True
        try:
            await super().route_message(raw_msg)  # type: ignore[misc]
        finally:
            self._link.handling = False
        followups, self._link.followups = self._link.followups, []
        for factory in followups:
            station.spawn(factory())

    async def request(self, payload: Any, *, optional: bool = False) -> Any:
        """Send a CALL and return the CALLRESULT payload.

        Raises :class:`LinkDown` when the socket closes first, ``OCPPError`` on
        a CALLERROR and ``TimeoutError`` without an answer (both counted, except
        for an ``optional`` message the CSMS does not implement).
        """
        if self.is_closed:
            raise LinkDown
        station = self.station
        action = type(payload).__name__
        station.stats.messages_sent += 1
        if station.on_message is not None:
            station.on_message("out", action, payload)
        task = asyncio.ensure_future(
            self.call(  # type: ignore[attr-defined]
                payload, suppress=False, skip_schema_validation=not station.validate_messages
            )
        )
        try:
            await asyncio.wait({task, self._link.closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise LinkDown
        try:
            return task.result()
        except ConnectionClosed as exc:
            raise LinkDown from exc
        except OCPPError as exc:
            if not (optional and isinstance(exc, (OcppNotImplemented, NotSupportedError))):
                station.error(f"{action}: CALLERROR {type(exc).__name__}: {exc.description}")
            raise
        except TimeoutError:
            station.error(f"{action}: no response within {station.response_timeout_s:g}s")
            raise

    async def close_socket(self) -> None:
        with contextlib.suppress(Exception):
            await self._connection.close()
