"""A small TLS CSMS for the simulator's security tests: ``ssl`` + ``websockets`` + the
``ocpp`` library's ChargePoint as the central system, on 127.0.0.1.

It has a CA of its own, a server certificate for 127.0.0.1, asks for (but
does not require) a client certificate, records every handshake (TLS or not,
the Basic credentials, the client certificate) and, when a station sends
SignCertificate, signs the CSR with its CA and sends CertificateSigned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v21 import ChargePoint as CP21
from ocpp.v21 import call as c21
from ocpp.v21 import call_result as r21
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from websockets.asyncio.server import ServerConnection, serve

from evflex.security import pki

SUBPROTOCOLS = ("ocpp2.1", "ocpp2.0.1", "ocpp1.6")


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Lab:
    """A CPO CA with its files, and a server certificate for 127.0.0.1."""

    dir: Path
    org: str = "Evflex Lab"

    def __post_init__(self) -> None:
        self.ca_file, self.ca_key_file = pki.init_ca(self.dir, self.org)
        self.ca = pki.CertificateAuthority.load(self.ca_file, self.ca_key_file)
        key = pki.new_key()
        cert = pki.issue(
            self.ca.cert, self.ca.key, x509.Name([]), key.public_key(), server_names=["127.0.0.1"]
        )
        self.server_cert = pki.write_pem(self.dir / "server.pem", pki.cert_pem(cert))
        self.server_key = pki.write_pem(self.dir / "server.key", pki.key_pem(key), private=True)

    def station_cert(self, cn: str) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a station certificate signed by the CA."""
        key = pki.new_key()
        cert = self.ca.sign_csr(pki.make_csr(key, cn, self.org))
        return pki.cert_pem(cert), pki.key_pem(key)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.load_verify_locations(self.ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


@dataclass
class Handshake:
    station_id: str
    tls: bool
    password: str | None
    client_cert: x509.Certificate | None

    @property
    def client_cn(self) -> str | None:
        return pki.names(self.client_cert)[0] if self.client_cert is not None else None


class _Central:
    """Handlers of the central system (every version answers alike)."""

    results: Any
    server: MiniCsms

    @on("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return self.results.BootNotification(current_time=now(), interval=300, status="Accepted")

    @on("StatusNotification")
    def on_status(self, **_: Any) -> Any:
        return self.results.StatusNotification()

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return self.results.Heartbeat(current_time=now())

    @on("SecurityEventNotification")
    def on_security_event(self, type: str, **kw: Any) -> Any:
        self.server.security_events.append((self.id, type))  # type: ignore[attr-defined]
        return self.results.SecurityEventNotification()

    @on("SignCertificate")
    def on_sign_certificate(self, csr: str, **_: Any) -> Any:
        self.server.csrs.append((self.id, csr))  # type: ignore[attr-defined]
        if self.server.sign:
            asyncio.get_running_loop().call_later(0.05, self._send_signed, csr)
        return self.results.SignCertificate(status="Accepted")

    def _send_signed(self, csr: str) -> None:
        chain = pki.cert_pem(self.server.lab.ca.sign_csr(csr))
        task = asyncio.ensure_future(self.server.call(self.id, "CertificateSigned", chain))  # type: ignore[attr-defined]
        self.server.tasks.add(task)


class Central16(_Central, CP16):
    results = r16
    calls = c16


class Central201(_Central, CP201):
    results = r201
    calls = c201


class Central21(_Central, CP21):
    results = r21
    calls = c21


CENTRALS = {"ocpp1.6": Central16, "ocpp2.0.1": Central201, "ocpp2.1": Central21}


@dataclass
class MiniCsms:
    lab: Lab
    tls: bool = True
    sign: bool = True
    handshakes: list[Handshake] = field(default_factory=list)
    csrs: list[tuple[str, str]] = field(default_factory=list)
    security_events: list[tuple[str, str]] = field(default_factory=list)
    peers: dict[str, Any] = field(default_factory=dict)
    results: dict[str, list[Any]] = field(default_factory=dict)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    url: str = ""

    async def __aenter__(self) -> MiniCsms:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            ssl=self.lab.server_context() if self.tls else None,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if self.tls else 'ws'}://127.0.0.1:{port}/ocpp"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for task in self.tasks:
            task.cancel()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: ServerConnection) -> None:
        station_id = ws.request.path.rsplit("/", 1)[-1]  # type: ignore[union-attr]
        auth = ws.request.headers.get("Authorization")  # type: ignore[union-attr]
        password = None
        if auth and auth.startswith("Basic "):
            password = base64.b64decode(auth[6:]).decode().split(":", 1)[1]
        ssl_object = ws.transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        cert = x509.load_der_x509_certificate(der) if der else None
        self.handshakes.append(Handshake(station_id, ssl_object is not None, password, cert))
        central = CENTRALS[ws.subprotocol](station_id, ws)  # type: ignore[index]
        central.server = self
        self.peers[station_id] = central
        with contextlib.suppress(Exception):
            await central.start()

    async def call(self, station_id: str, action: str, *args: Any, **kw: Any) -> Any:
        """Send ``action`` to the station; its answer is also kept in ``results``."""
        peer = self.peers[station_id]
        payload = getattr(peer.calls, action)(*args, **kw)
        result = await peer.call(payload)
        self.results.setdefault(action, []).append(result)
        return result

    def of(self, station_id: str) -> list[Handshake]:
        return [h for h in self.handshakes if h.station_id == station_id]
