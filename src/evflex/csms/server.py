"""The OCPP WebSocket endpoint: accept, authenticate, negotiate, route.

``ws://HOST:PORT/ocpp/{station_id}``. Subprotocols ``ocpp2.1``, ``ocpp2.0.1``
and ``ocpp1.6`` are negotiated from the client's list (the newest both speak
wins); a client that offers none of ours is refused with HTTP 400. Security
profile 1: a station registered with a password must send HTTP Basic
``id:password`` (401 otherwise); an unknown id gets 404 unless unknown
stations are allowed, in which case it is registered on first connect.

With TLS (:mod:`evflex.security.tls`) the same port also serves ``wss://``.
Profile 2 is TLS plus HTTP Basic; profile 3 is a client certificate whose O
is the CPO's name and whose CN is the station's id or registered serial
number. A station of profile 2 or 3 is refused on plain ``ws://``; a station
that once connected with a profile is refused with a lower one (no silent
downgrade). Behind a TLS-terminating proxy, a client certificate is read from
``client_cert_header`` only when the TCP peer is a trusted proxy. Each refusal
is a ``Security`` event with the source address (:mod:`evflex.security.audit`).
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

from cryptography import x509
from pydantic import BaseModel
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from evflex.clock import isoformat
from evflex.csms import commands, firmware, rpc, v16, v21, v201
from evflex.csms.connection import StationConnection
from evflex.csms.service import CsmsService
from evflex.domain.model import StationEvent
from evflex.security import audit, parse_basic_auth, pki, verify_password
from evflex.security.tls import (
    Tls,
    header_certificate,
    peer_certificate,
    sniffing_connection,
    station_certificate_problem,
    verify_forwarded,
)
from evflex.store import repo
from evflex.store.repo import StationAuth

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


def _logged(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("recording a security event failed: %r", fut.exception())


class Refusal:
    """A refused opening handshake: HTTP status, security event code and reason (the
    first refusal set wins); :meth:`send` logs it, records the event and answers."""

    def __init__(
        self,
        sink: audit.EventSink,
        connection: ServerConnection,
        station_id: str,
        source: str,
        limiter: audit.FailureLimiter,
    ) -> None:
        self.sink = sink
        self.limiter = limiter
        self.connection = connection
        self.station_id = station_id
        self.source = source
        self.refused: tuple[HTTPStatus, str, str, dict[str, Any]] | None = None

    def set(self, status: HTTPStatus, code: str, reason: str, **detail: Any) -> None:
        if self.refused is None:
            self.refused = (status, code, reason, detail)

    async def __call__(self, status: HTTPStatus, code: str, reason: str) -> Response:
        self.set(status, code, reason)
        return await self.send()

    async def send(self) -> Response:
        assert self.refused is not None
        status, code, reason, detail = self.refused
        log.warning("station %s from %s refused: %s", self.station_id, self.source, reason)
        await audit.record(self.sink, code, self.source, reason, self.station_id, **detail)
        if code in audit.AUTH_FAILURES:
            self.limiter.fail([f"ip:{self.source}"])
        response = self.connection.respond(status, reason + "\n")
        if code == "InvalidPassword":
            response.headers["WWW-Authenticate"] = 'Basic realm="evflex OCPP"'
        return response


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
        tls: Tls | None = None,
        cpo_name: str | None = None,
        trusted_proxies: list[str] | None = None,
        client_cert_header: str = "X-Client-Cert",
        limiter: audit.FailureLimiter | None = None,
    ) -> None:
        self.service = service
        self.tls = tls
        self.cpo_name = cpo_name
        self.trusted_proxies = audit.networks(trusted_proxies or [])
        self.client_cert_header = client_cert_header
        #: sha256 of a certificate -> the station it opened (one certificate, one station)
        self.certificate_owner: dict[str, str] = {}
        self.open_timeout = open_timeout
        #: Failed station logins (bad password, unknown id, bad certificate) per source
        #: address; a source over the limit gets 429 before its credentials are checked.
        self.limiter = limiter or audit.FailureLimiter(max_failures=10, window_s=300.0)
        self.allow_unknown_stations = allow_unknown_stations
        self.response_timeout = response_timeout
        self.max_frame_bytes = max_frame_bytes
        self.ping_interval = ping_interval
        self.validate_responses = validate_responses
        self.connections: dict[str, StationConnection] = {}
        self._verified: dict[str, bytes] = {}  # station id -> sha256(password) seen valid
        # station id -> (its password hash, profiles, serial; when read): a handshake needs
        # no database read while this is fresh; the API's changes drop the entry at once
        self._credentials: dict[str, tuple[StationAuth, float]] = {}
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
            create_connection=sniffing_connection(
                self._tls_context, self._tls_failed, self.open_timeout
            ),
        )
        return self._server

    def _tls_context(self):
        return self.tls.ocpp_context if self.tls is not None else None

    def _tls_failed(self, source: str, exc: Exception) -> None:
        """A TLS handshake failed (a certificate of another CA, an expired one, an old
        TLS version): logged and recorded; nothing reached the WebSocket."""
        why = str(getattr(exc, "reason", None) or exc.__class__.__name__)
        reason = f"TLS handshake failed: {why}"
        log.warning("connection from %s refused: %s", source, reason)
        if "CERTIFICATE" in why.upper():  # a client certificate ssl did not accept
            self.limiter.fail([f"ip:{source}"])  # counts as a failed login
            record = audit.record(self.service, "InvalidCertificate", source, reason)
            asyncio.ensure_future(record).add_done_callback(_logged)

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
        peer = connection.remote_address[0] if connection.remote_address else ""
        proxied = audit.within(peer, self.trusted_proxies)
        source = audit.source_address(
            peer, request.headers.get_all("X-Forwarded-For"), self.trusted_proxies
        )
        wait = await audit.refused(
            self.service, self.limiter, [f"ip:{source}"], source, "station logins", station_id
        )
        if wait is not None:  # before any credential is looked at
            response = connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed station logins from {source}; try again in {wait} s\n",
            )
            response.headers["Retry-After"] = str(wait)
            return response
        refusal = Refusal(self.service, connection, station_id, source, self.limiter)
        reached = 0
        # a trusted proxy terminated TLS (it forwards wss:// only)
        tls = proxied or connection.transport.get_extra_info("ssl_object") is not None
        try:
            cert = self._client_certificate(connection, request, peer, proxied, refusal)
            known, auth = await self._station_credentials(station_id)
            if not known:
                if not self.allow_unknown_stations:
                    return await refusal(HTTPStatus.NOT_FOUND, "UnknownStation", "unknown station")
                await self._register_unknown(station_id)
                auth = StationAuth()
            if refusal.refused is None:
                reached = await self._check_profile(station_id, auth, tls, cert, request, refusal)
        except asyncio.CancelledError:
            self.handshakes_dropped += 1
            log.warning(
                "station %s: opening handshake dropped: not done within %g s",
                station_id,
                self.open_timeout,
            )
            raise
        if refusal.refused is not None:
            return await refusal.send()
        await self._reached(station_id, auth, reached, cert)
        return None

    def _client_certificate(
        self,
        connection: ServerConnection,
        request: Request,
        peer: str,
        proxied: bool,
        refusal: Refusal,
    ) -> x509.Certificate | None:
        """The client certificate: verified by ssl in our handshake, or forwarded by a
        trusted proxy in ``client_cert_header`` (checked against the client CAs)."""
        forwarded = request.headers.get(self.client_cert_header)
        if forwarded and not proxied:
            log.warning(
                "ignored the %s header from %s: not a trusted proxy", self.client_cert_header, peer
            )
        if not (forwarded and proxied):
            return peer_certificate(connection.transport.get_extra_info("ssl_object"))
        try:
            cert = header_certificate(forwarded)
        except pki.CertificateError as exc:
            refusal.set(HTTPStatus.UNAUTHORIZED, "InvalidCertificate", f"forwarded {exc}")
            return None
        problem = verify_forwarded(cert, self.tls.ca_certs if self.tls is not None else [])
        if problem:
            refusal.set(HTTPStatus.UNAUTHORIZED, "InvalidCertificate", problem)
            return None
        return cert

    async def _check_profile(
        self,
        station_id: str,
        auth: StationAuth,
        tls: bool,
        cert: x509.Certificate | None,
        request: Request,
        refusal: Refusal,
    ) -> int:
        """The profile this connection reaches (3: certificate, 2: TLS, 1: plain), or a
        refusal set on ``refusal``."""
        profile = auth.security_profile or 1
        if profile >= 2 and not tls:
            refusal.set(
                HTTPStatus.FORBIDDEN,
                "PlainConnectionRefused",
                f"security profile {profile} needs TLS (wss://)",
            )
            return 0
        if cert is not None and not await self._certificate_fits(station_id, auth, cert, refusal):
            return 0
        reached = 3 if cert is not None else 2 if tls else 1
        if profile == 3 and cert is None:
            refusal.set(
                HTTPStatus.UNAUTHORIZED,
                "InvalidCertificate",
                "security profile 3 needs a client certificate",
            )
            return 0
        if reached < (auth.security_profile_reached or 0):
            refusal.set(
                HTTPStatus.FORBIDDEN,
                "ProfileDowngrade",
                f"connected with security profile {auth.security_profile_reached} before; "
                f"profile {reached} is refused",
                profile=reached,
            )
            return 0
        basic = request.headers.get("Authorization")
        if reached < 3 and profile == 2 and not auth.password_hash:
            refusal.set(
                HTTPStatus.UNAUTHORIZED,
                "InvalidPassword",
                "security profile 2 needs a password and none is registered",
            )
        elif (auth.password_hash and (reached < 3 or basic)) and not await self._password_ok(
            station_id, basic, auth.password_hash
        ):
            refusal.set(HTTPStatus.UNAUTHORIZED, "InvalidPassword", "authentication failed")
        return reached

    async def _password_ok(self, station_id: str, header: str | None, stored: str) -> bool:
        creds = parse_basic_auth(header)
        return (
            creds is not None
            and creds[0] == station_id
            and await self._check_password(station_id, creds[1], stored)
        )

    async def _certificate_fits(
        self, station_id: str, auth: StationAuth, cert: x509.Certificate, refusal: Refusal
    ) -> bool:
        """O is the CPO's; CN is this station's id, or its serial number when no other
        station has that id or serial number; and the certificate neither opened nor was
        issued to another station."""
        cn, _ = pki.names(cert)
        sha256 = pki.info(cert).sha256
        serial = auth.serial_number
        owner = self.certificate_owner.get(sha256)  # the station it opened before
        owners = {owner} if owner is not None else set()
        by_serial = cn is not None and cn != station_id and cn == serial
        if owner is None or by_serial:
            async with self.service.sessionmaker() as s:
                if by_serial and await repo.stations_named(s, cn) != [station_id]:
                    serial = None  # that name is also another station's
                if owner is None:
                    owners = await repo.certificate_stations(s, sha256)
        problem = station_certificate_problem(cert, station_id, serial, self.cpo_name)
        others = sorted(owners - {station_id})
        if problem is None and others:
            problem = (
                "CertificateForOtherStation",
                f"the certificate belongs to station {', '.join(others)}",
            )
        if problem is not None:
            refusal.set(HTTPStatus.FORBIDDEN, *problem, certificate_cn=cn)
            return False
        return True

    async def _reached(
        self, station_id: str, auth: StationAuth, reached: int, cert: x509.Certificate | None
    ) -> None:
        """Accepted with profile ``reached``: the station's highest profile rises to it."""
        if cert is not None:
            self.certificate_owner[pki.info(cert).sha256] = station_id
        if reached <= (auth.security_profile_reached or 0):
            return
        self._credentials[station_id] = (
            auth._replace(security_profile_reached=reached),
            time.monotonic(),
        )

        async def job(s) -> None:
            await repo.raise_profile_reached(s, station_id, reached)

        await self.service.writer.submit(job)
        log.info("station %s: reached security profile %d", station_id, reached)

    #: How long a station's credentials read from the database are used without a
    #: new read (changes made outside this process's API take effect after this).
    CREDENTIALS_TTL_S = 60.0

    async def load_credentials(self) -> int:
        """Read every station's credentials into memory (at start); returns how many."""
        async with self.service.sessionmaker() as s:
            found = await repo.station_credentials(s)
        now = time.monotonic()
        for sid, auth in found.items():
            self._credentials[sid] = (auth, now)
        return len(found)

    async def _station_credentials(self, station_id: str) -> tuple[bool, StationAuth]:
        """(registered?, what its connect is checked against): from memory, read again in the background when
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
                    result = (False, StationAuth())
                if not fut.done():
                    fut.set_result(result)

    async def _register_unknown(self, station_id: str) -> None:
        now = self.service.clock.now()
        await self.service.writer.write(repo.NEW_STATIONS, [repo.new_station_row(station_id, now)])
        self._credentials[station_id] = (StationAuth(), time.monotonic())

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
        body = firmware.prepare(self.service, station_id, name, body)
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
        await firmware.after_command(self.service, station_id, name, body, payload, result)
        if name == "reserve-now":
            rid = payload.get("reservationId", payload.get("id"))
            evse = payload.get("connectorId", payload.get("evseId"))
            await self.service.record_reservation(
                rid, station_id, evse, body.id_token, body.expiry, result.get("status", "?")
            )
        elif name == "cancel-reservation" and result.get("status") == "Accepted":
            await self.service.set_reservation_status(body.reservation_id, "Cancelled")
