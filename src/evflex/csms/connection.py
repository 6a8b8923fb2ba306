"""One station's OCPP-J connection: receive, validate, dispatch, answer; send calls.

A connection never dies of bad input: every frame that cannot be handled is
answered with a CALLERROR (where the spec asks for one) and logged, with the
wire text in the log line shortened; the loop goes on with the next frame.

OCPP-J lets a station have one CALL outstanding. Up to :data:`MAX_QUEUED_CALLS`
are queued and answered in order; beyond that a CALL is refused at once (so a
station that sends without reading its answers holds a bounded amount of
memory). A CALL whose message id is one still queued or being handled is
dropped: the answer to the first one answers it. Answers to CALLs we did not
send (or no longer wait for) are ignored. Each refusal is logged, up to
:data:`LOGGED_REFUSALS` a minute per connection; one line says how many more.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from websockets.exceptions import ConnectionClosed

from evflex.csms import rpc
from evflex.csms.limits import shorten
from evflex.csms.rpc import CALL, CALLERROR, CALLRESULT, CALLRESULTERROR, SEND, RpcError

log = logging.getLogger(__name__)

Handler = Callable[[dict], Awaitable[dict]]

#: The station's CALLs waiting for their answer, at most (a compliant station has one).
MAX_QUEUED_CALLS = 100
#: Refused frames logged one by one per connection and minute; the rest are counted.
LOGGED_REFUSALS = 20


class CallErrorReceived(Exception):
    """The station answered our CALL with a CALLERROR."""

    def __init__(self, code: str, description: str, details: Any = None):
        super().__init__(shorten(f"{code}: {description}"))
        self.code = code
        self.description = description
        self.details = details


def failure(exc: BaseException) -> str:
    """A crash for the log: its traceback, with its message (which may quote what the
    station sent) shortened."""
    where = "".join(traceback.format_tb(exc.__traceback__))
    return f"{type(exc).__name__}: {shorten(exc)}\nTraceback:\n{where}"


class StationConnection:
    def __init__(
        self,
        station_id: str,
        version: str,
        websocket: Any,
        handlers: dict[str, Handler],
        response_timeout: float = 30.0,
        validate_responses: bool = True,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.station_id = station_id
        self.version = version
        self.websocket = websocket
        self.handlers = handlers
        self.response_timeout = response_timeout
        self.validate_responses = validate_responses
        self._pending: dict[str, tuple[str, asyncio.Future]] = {}
        self._call_lock = asyncio.Lock()
        self._known = rpc.known_actions(version)
        # The station's CALLs, answered in order by one task that lives while there
        # are any; answers to our CALLs are taken at once, never queued behind them.
        self._inbox: deque[rpc.Frame] = deque()
        self._open_ids: set[str] = set()  # message ids queued or being answered
        self._worker: asyncio.Task | None = None
        self.received = 0
        self.errors = 0
        self._log_minute = time.monotonic()
        self._logged = self._unlogged = 0
        #: When the station last sent anything (on ``now``, the service's clock): any
        #: message shows it alive, as a Heartbeat does (OCPP lets it skip those then).
        self.last_message_at: datetime | None = None
        self._now = now

    # ------------------------------------------------------------------ inbound

    async def serve(self) -> None:
        """Read frames until the socket closes."""
        try:
            async for raw in self.websocket:
                await self.handle_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            self._log_unlogged()
            # what the station sent before it left is still handled (and stored),
            # as when it is read in turn; the answers just find no socket
            try:
                await self.drain()
            except Exception as exc:
                log.error(
                    "%s: handling the last messages failed: %s", self.station_id, failure(exc)
                )
            for _, fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("station disconnected"))
            self._pending.clear()

    async def handle_frame(self, raw: str | bytes) -> None:
        self.received += 1
        if self._now is not None:
            self.last_message_at = self._now()
        try:
            frame = rpc.parse_frame(raw, self.version)
        except RpcError as err:
            self._refused("bad frame: %s", shorten(err))
            mid = err.details.pop("message_id", rpc.UNKNOWN_MESSAGE_ID)
            await self._send_error(mid, err)
            return
        if frame.type_id in (CALL, SEND):
            await self._enqueue(frame)
        elif frame.type_id in (CALLRESULT, CALLERROR):
            self._resolve(frame)
        elif frame.type_id == CALLRESULTERROR:
            self._refused(
                "the station refused our answer to %s: %s %s",
                frame.message_id,
                shorten(frame.error_code),
                shorten(frame.error_description),
            )

    async def _enqueue(self, frame: rpc.Frame) -> None:
        mid = frame.message_id
        if mid in self._open_ids:
            self._refused("message id %s is already being answered; dropped", mid)
            return
        if len(self._inbox) >= MAX_QUEUED_CALLS:
            self._refused("too many CALLs unanswered; %s refused", mid)
            if frame.type_id == CALL:
                code = "GenericError" if self.version == "1.6" else "RpcFrameworkError"
                text = f"{MAX_QUEUED_CALLS} CALLs are unanswered; send one at a time"
                await self._send_error(mid, RpcError(code, text))
            return
        self._open_ids.add(mid)
        self._inbox.append(frame)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while self._inbox:
            frame = self._inbox.popleft()
            try:
                if frame.type_id == CALL:
                    await self._handle_call(frame.message_id, frame.action or "", frame.payload)
                else:
                    await self._handle_send(frame.message_id, frame.action or "", frame.payload)
            finally:
                self._open_ids.discard(frame.message_id)

    async def drain(self) -> None:
        """Wait until every CALL received so far is answered."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def _handle_send(self, message_id: str, action: str, payload: dict) -> None:
        """A 2.1 SEND: handled like a CALL, but nothing is ever answered."""
        try:
            if action not in rpc.SEND_ACTIONS:
                raise RpcError("NotImplemented", f"{action} is not an OCPP 2.1 SEND message")
            await self._handler(SEND, action, payload)(payload)
        except RpcError as err:
            self._refused("SEND %s %s dropped: %s", action, message_id, shorten(err))
        except Exception as exc:
            self.errors += 1
            log.error("%s: SEND %s failed: %s", self.station_id, action, failure(exc))

    def _handler(self, kind: int, action: str, payload: dict) -> Handler:
        """The handler of a valid incoming ``action``; raises :class:`RpcError` otherwise."""
        handler = self.handlers.get(action)
        if handler is None:
            raise RpcError("NotSupported", f"{action} is not supported by this CSMS")
        rpc.validate(kind, action, payload, self.version)
        return handler

    async def _handle_call(self, message_id: str, action: str, payload: dict) -> None:
        try:
            if action in rpc.SEND_ACTIONS:
                raise RpcError("RpcFrameworkError", f"{action} must be sent as SEND (6)")
            if action not in self._known:
                raise RpcError("NotImplemented", f"{action} is not an OCPP {self.version} action")
            response = await self._handler(CALL, action, payload)(payload)
            if self.validate_responses:
                try:
                    rpc.validate(CALLRESULT, action, response, self.version)
                except RpcError as err:  # our own bug: never send an invalid answer
                    log.error(
                        "%s: invalid %s response %s: %s",
                        self.station_id,
                        action,
                        shorten(response),
                        shorten(err),
                    )
                    raise RpcError("InternalError", "the CSMS built an invalid response") from err
        except RpcError as err:
            self._refused("%s rejected: %s", action, shorten(err))
            await self._send_error(message_id, err)
            return
        except Exception as exc:
            self.errors += 1
            log.error("%s: %s failed: %s", self.station_id, action, failure(exc))
            await self._send_error(
                message_id, RpcError("InternalError", f"{type(exc).__name__} while handling")
            )
            return
        await self._send(rpc.encode_result(message_id, response))

    def _resolve(self, frame: rpc.Frame) -> None:
        entry = self._pending.pop(frame.message_id, None)
        if entry is None:
            self._refused("answer to unknown message %s ignored", frame.message_id)
            return
        _, fut = entry
        if not fut.done():
            fut.set_result(frame)

    def _refused(self, what: str, *args: Any) -> None:
        """Count a refused frame and log ``what``: one line each up to
        :data:`LOGGED_REFUSALS` a minute, then one line saying how many more."""
        self.errors += 1
        now = time.monotonic()
        if now - self._log_minute >= 60.0:
            self._log_unlogged()
            self._log_minute, self._logged = now, 0
        if self._logged < LOGGED_REFUSALS:
            self._logged += 1
            log.warning("%s: " + what, self.station_id, *args)
        else:
            self._unlogged += 1

    def _log_unlogged(self) -> None:
        if self._unlogged:
            log.warning(
                "%s: %d more refusals not logged one by one", self.station_id, self._unlogged
            )
            self._unlogged = 0

    async def _send_error(self, message_id: str, err: RpcError) -> None:
        code = rpc.error_code_for(err.code, self.version)
        await self._send(rpc.encode_error(message_id, code, err.description, err.details))

    async def _send(self, text: str) -> None:
        try:
            await self.websocket.send(text)
        except ConnectionClosed:
            log.info("%s: connection closed before answer was sent", self.station_id)

    # ------------------------------------------------------------------ outbound

    async def call(self, action: str, payload: dict, timeout: float | None = None) -> dict:
        """Send a CALL and return the station's CALLRESULT payload.

        Raises :class:`ValueError` if our payload breaks the schema,
        :class:`CallErrorReceived` on a CALLERROR, :class:`TimeoutError`.
        One CALL at a time is outstanding per connection, as OCPP-J requires.
        """
        try:
            rpc.validate(CALL, action, payload, self.version)
        except RpcError as err:
            raise ValueError(f"{action}: {err.description}") from err
        timeout = self.response_timeout if timeout is None else timeout
        async with self._call_lock:
            message_id = str(uuid.uuid4())
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            self._pending[message_id] = (action, fut)
            try:
                await self.websocket.send(rpc.encode_call(message_id, action, payload))
                frame: rpc.Frame = await asyncio.wait_for(fut, timeout)
            except ConnectionClosed as exc:
                raise ConnectionError("station disconnected") from exc
            finally:
                self._pending.pop(message_id, None)
                if not fut.done():
                    fut.cancel()
                elif not fut.cancelled():
                    # the socket closed while we were sending: serve() failed the future
                    # and nobody awaits it any more; mark its exception as seen
                    fut.exception()
        if frame.type_id == CALLERROR:
            raise CallErrorReceived(
                frame.error_code or "", frame.error_description or "", frame.error_details
            )
        result = frame.payload if isinstance(frame.payload, dict) else {}
        try:
            rpc.validate(CALLRESULT, action, result, self.version)
        except RpcError as err:
            log.warning(
                "%s: %s answer breaks the schema: %s", self.station_id, action, shorten(err)
            )
            if self.version == "2.1":  # 2.1 tells the station its CALLRESULT was wrong
                code = err.code if err.code != "NotImplemented" else "FormatViolation"
                await self._send(
                    rpc.encode_result_error(frame.message_id, code, err.description, err.details)
                )
        return result

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.websocket.close(code, reason)
