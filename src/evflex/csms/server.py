"""The OCPP WebSocket endpoint: accept, authenticate, negotiate, route.

``ws://HOST:PORT/ocpp/{station_id}``. Subprotocols ``ocpp2.1``, ``ocpp2.0.1``
and ``ocpp1.6`` are negotiated from the client's list (the newest both speak
wins); a client that offers none of ours is refused with HTTP 400. Security
profile 1: a station registered with a password must send HTTP Basic
``id:password`` (401 otherwise); an unknown id gets 404 unless unknown
stations are allowed, in which case it is registered on first connect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from evflex.clock import isoformat
from evflex.csms import commands, rpc, v16, v21, v201
from evflex.csms.connection import StationConnection
from evflex.csms.service import CsmsService
from evflex.domain.model import StationEvent
from evflex.security import parse_basic_auth, verify_password
from evflex.store import repo

log = logging.getLogger(__name__)

# Newest first: the server picks the first of these that the client offers.
SUPPORTED_SUBPROTOCOLS = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")

# Per version: its handlers, and its own command builders (most specific first).
_ADAPTERS: dict[str, tuple[Any, tuple[dict[str, commands.Builder], ...]]] = {
    "1.6": (v16.V16Handlers, (v16.BUILDERS,)),
    "2.0.1": (v201.V201Handlers, (v201.BUILDERS,)),
    "2.1": (v21.V21Handlers, (v21.BUILDERS, v201.BUILDERS)),
}


def _quiet(fut: asyncio.Future) -> None:
    """A background lookup's failure is only logged (the next handshake tries again)."""
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("reading station credentials failed: %r", fut.exception())


class OcppServer:
    def __init__(
        self,
        service: CsmsService,
        allow_unknown_stations: bool = False,
        response_timeout: float = 30.0,
        max_frame_bytes: int = 1_048_576,
        ping_interval: float | None = 120.0,
        validate_responses: bool = True,
        open_timeout: float = 10.0,
    ) -> None:
        self.service = service
        self.open_timeout = open_timeout
        self.allow_unknown_stations = allow_unknown_stations
        self.response_timeout = response_timeout
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval = ping_interval
        self.validate_responses = validate_responses
        self.connections: dict[str, StationConnection] = {}
        self._verified: dict[str, bytes] = {}  # station id -> sha256(password) seen valid
        # station id -> (its password hash or None, when read): a handshake needs no
        # database read while this is fresh; the API's changes drop the entry at once
        self._credentials: dict[str, tuple[str | None, float]] = {}
        self._lookups: dict[str, asyncio.Future] = {}
        self._lookup_task: asyncio.Task | None = None
        #: Opening handshakes not completed within ``open_timeout`` while ours to finish.
        self.handshakes_dropped = 0
        self._server: Server | None = None
        service.clocks.fixer = self.offer_time

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str, port: int) -> Server:
        await self.load_credentials()
        for version, (handlers_cls, _) in _ADAPTERS.items():
            rpc.compile_validators(version, handlers_cls(self.service, "").routes())
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            subprotocols=list(SUPPORTED_SUBPROTOCOLS),
            max_size=self.max_frame_bytes,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            compression=None,
            server_header="evflex",
            open_timeout=self.open_timeout,
        )
        return self._server

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ handshake

    @staticmethod
    def station_id_from_path(path: str) -> str | None:
        path = path.split("?", 1)[0].rstrip("/")
        prefix = "/ocpp/"
        if not path.startswith(prefix):
            return None
        station_id = unquote(path[len(prefix) :])
        if not station_id or "/" in station_id or len(station_id) > 48:
            return None
        return station_id

    def _select_subprotocol(self, connection: ServerConnection, offered) -> str | None:
        for proto in SUPPORTED_SUBPROTOCOLS:
            if proto in offered:
                return proto
        return None

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        station_id = self.station_id_from_path(request.path)
        if station_id is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "expected /ocpp/{station_id}\n")
        offered = [
            p.strip()
            for h in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in h.split(",")
        ]
        if not any(p in SUPPORTED_SUBPROTOCOLS for p in offered):
            return connection.respond(
                HTTPStatus.BAD_REQUEST,
                f"no supported OCPP subprotocol offered (we speak "
                f"{', '.join(SUPPORTED_SUBPROTOCOLS)})\n",
            )
        try:
            known, password_hash = await self._station_credentials(station_id)
            if not known:
                if not self.allow_unknown_stations:
                    log.info("refused unknown station %s", station_id)
                    return connection.respond(HTTPStatus.NOT_FOUND, "unknown station\n")
                await self._register_unknown(station_id)
                return None
            ok = True
            if password_hash:
                creds = parse_basic_auth(request.headers.get("Authorization"))
                ok = (
                    creds is not None
                    and creds[0] == station_id
                    and await self._check_password(station_id, creds[1], password_hash)
                )
        except asyncio.CancelledError:
            self.handshakes_dropped += 1
            log.warning(
                "station %s: opening handshake dropped: not done within %g s",
                station_id,
                self.open_timeout,
            )
            raise
        if not ok:
            log.warning("station %s: authentication failed", station_id)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="evflex OCPP"'
            return response
        return None

    #: How long a station's credentials read from the database are used without a
    #: new read (changes made outside this process's API take effect after this).
    CREDENTIALS_TTL_S = 60.0

    async def load_credentials(self) -> int:
        """Read every station's credentials into memory (at start); returns how many."""
        async with self.service.sessionmaker() as s:
            found = await repo.station_credentials(s)
        now = time.monotonic()
        for sid, password_hash in found.items():
            self._credentials[sid] = (password_hash, now)
        return len(found)

    async def _station_credentials(self, station_id: str) -> tuple[bool, str | None]:
        """(registered?, password hash): from memory, read again in the background when
        older than the TTL; an id not in memory is looked up (many at once in one query)."""
        hit = self._credentials.get(station_id)
        if hit is not None:
            if time.monotonic() - hit[1] >= self.CREDENTIALS_TTL_S:
                self._lookup(station_id).add_done_callback(_quiet)
            return True, hit[0]
        return await self._lookup(station_id)

    def _lookup(self, station_id: str) -> asyncio.Future:
        fut = self._lookups.get(station_id)
        if fut is None:
            fut = self._lookups[station_id] = asyncio.get_running_loop().create_future()
            if self._lookup_task is None or self._lookup_task.done():
                self._lookup_task = asyncio.create_task(self._run_lookups())
        return fut

    async def _run_lookups(self) -> None:
        while self._lookups:
            await asyncio.sleep(0)  # handshakes arriving together share the query
            batch, self._lookups = self._lookups, {}
            try:
                async with self.service.sessionmaker() as s:
                    found = await repo.station_credentials(s, list(batch))
            except Exception as exc:
                for fut in batch.values():
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            now = time.monotonic()
            for sid, fut in batch.items():
                if sid in found:
                    self._credentials[sid] = (found[sid], now)
                    result = (True, found[sid])
                else:
                    self._credentials.pop(sid, None)
                    result = (False, None)
                if not fut.done():
                    fut.set_result(result)

    async def _register_unknown(self, station_id: str) -> None:
        now = self.service.clock.now()
        await self.service.writer.write(repo.NEW_STATIONS, [repo.new_station_row(station_id, now)])
        self._credentials[station_id] = (None, time.monotonic())

    async def _check_password(self, station_id: str, password: str, stored: str) -> bool:
        fingerprint = hashlib.sha256(f"{stored}\0{password}".encode()).digest()
        if self._verified.get(station_id) == fingerprint:
            return True  # reconnect with credentials already checked against this hash
        ok = await asyncio.get_running_loop().run_in_executor(
            None, verify_password, password, stored
        )
        if ok:
            self._verified[station_id] = fingerprint
        return ok

    def forget_credentials(self, station_id: str) -> None:
        self._verified.pop(station_id, None)
        self._credentials.pop(station_id, None)

    # ------------------------------------------------------------------ connection

    async def _handle(self, websocket: ServerConnection) -> None:
        station_id = self.station_id_from_path(websocket.request.path)
        version = (websocket.subprotocol or "").removeprefix("ocpp")
        if station_id is None or version not in _ADAPTERS:  # guarded by the handshake
            await websocket.close(1002, "no OCPP subprotocol")
            return
        handlers_cls, _ = _ADAPTERS[version]
        conn = StationConnection(
            station_id,
            version,
            websocket,
            handlers_cls(self.service, station_id).routes(),
            response_timeout=self.response_timeout,
            validate_responses=self.validate_responses,
            now=self.service.clock.now,
        )
        previous = self.connections.get(station_id)
        self.connections[station_id] = conn
        if previous is not None:
            log.info("station %s: new connection replaces the previous one", station_id)
            asyncio.ensure_future(previous.close(1000, "replaced by a new connection"))
        await self.service.connected(station_id, version)
        try:
            await conn.serve()
        finally:
            if self.connections.get(station_id) is conn:
                del self.connections[station_id]
                await self.service.disconnected(station_id, conn.last_message_at)

    # ------------------------------------------------------------------ commands

    def is_connected(self, station_id: str) -> bool:
        return station_id in self.connections

    def last_message_at(self, station_id: str) -> datetime | None:
        """When the connected station last sent anything (None if it is not connected)."""
        conn = self.connections.get(station_id)
        return None if conn is None else conn.last_message_at

    @staticmethod
    def has_command(version: str, name: str) -> bool:
        """Whether the version-agnostic command ``name`` exists in OCPP ``version``."""
        return version in _ADAPTERS and commands.exists(name, version)

    async def send_command(self, station_id: str, name: str, body: BaseModel) -> dict:
        """Run a version-agnostic command; returns the station's answer payload."""
        conn = self.connections.get(station_id)
        if conn is None:
            raise commands.StationNotConnected(station_id)
        builder = commands.builder(name, conn.version, _ADAPTERS[conn.version][1])
        action, payload = await builder(body, self.service)
        result = await conn.call(action, payload)
        await self._after_command(station_id, conn.version, name, body, payload, result)
        return result

    async def offer_time(self, station_id: str) -> None:
        """Give a station whose clock is off our time: 2.x sets ClockCtrlr.DateTime;
        1.6 has no clock-set command, so a triggered Heartbeat brings it currentTime."""
        conn = self.connections.get(station_id)
        if conn is None:
            return
        if conn.version == "1.6":
            name = "trigger-message"
            body: BaseModel = commands.TriggerMessageBody(message="Heartbeat")
        else:
            name = "set-variables"
            value = isoformat(self.service.clock.now())
            body = commands.SetVariablesBody(
                variables=[
                    commands.VariableValue(component="ClockCtrlr", variable="DateTime", value=value)
                ]
            )
        try:
            result = await self.send_command(station_id, name, body)
        except Exception as exc:  # not connected, timeout, CALLERROR: logged, retried later
            result = {"error": type(exc).__name__}
        if name == "set-variables":
            results = result.get("setVariableResult") or [{}]
            status = results[0].get("attributeStatus", result.get("error", "?"))
            if status == "Accepted":
                self.service.clocks.time_offered(station_id)
        else:
            status = result.get("status", result.get("error", "?"))
        await self.service.record_event(
            StationEvent(
                station_id,
                "clock",
                self.service.clock.now(),
                "ClockSet" if name == "set-variables" else "HeartbeatTriggered",
                {"command": name, "status": status},
            )
        )

    async def _after_command(self, station_id, version, name, body, payload, result) -> None:
        if name == "reserve-now":
            rid = payload.get("reservationId", payload.get("id"))
            evse = payload.get("connectorId", payload.get("evseId"))
            await self.service.record_reservation(
                rid, station_id, evse, body.id_token, body.expiry, result.get("status", "?")
            )
        elif name == "cancel-reservation" and result.get("status") == "Accepted":
            await self.service.set_reservation_status(body.reservation_id, "Cancelled")
