"""TLS for the OCPP and HTTP ports (security profiles 2 and 3), on Python's ``ssl``.

- TLS 1.2 and 1.3 only; TLS 1.2 suites are ECDHE with AES-GCM, for ECDSA and
  RSA server certificates, so both kinds can be loaded at once (one
  ``load_cert_chain`` per pair) and a client gets the one it can use.
- Reload without a restart: the context given to the servers is a *front*
  whose ``sni_callback`` (called for every handshake, with or without SNI)
  switches the connection to the newest context; :meth:`Tls.reload` builds a
  new one from the files (on a change of their mtimes, or on the admin call).
  A reload that fails keeps the previous context and says why.
- The OCPP port speaks ``ws://`` and ``wss://`` on the same port
  (:func:`sniffing_connection` looks at the first byte of a connection); a
  failed TLS handshake (say, a client certificate of another CA) is reported
  with the peer's address.
- Profile 3: the OCPP context requests a client certificate
  (``CERT_OPTIONAL``, so profile-1/2 stations connect on the same port) and
  ``ssl`` verifies its chain against the client CAs; the names are checked
  by :func:`station_certificate_problem`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from websockets.asyncio.server import ServerConnection

from evflex.clock import utcnow
from evflex.security import pki

log = logging.getLogger(__name__)

#: TLS 1.2 suites: ECDHE key exchange, AES-GCM, for ECDSA and for RSA certificates.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)


class TlsError(ValueError):
    """Certificate or key files that cannot be used; the message names the file."""


def server_context(
    pairs: list[tuple[Path, Path]], client_cas: list[Path] | None = None
) -> ssl.SSLContext:
    """A server context with every (certificate, key) pair loaded; with ``client_cas``
    it asks for a client certificate (optional) and verifies it against them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    for cert, key in pairs:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load certificate {cert} with key {key}: {exc}") from None
    if client_cas:
        for ca in client_cas:
            try:
                ctx.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError) as exc:
                raise TlsError(f"cannot load client CA {ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _front(ctx: ssl.SSLContext, current: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """``ctx`` becomes the context the servers hold: each handshake moves to ``current()``
    (what a connection copies from its first context, versions and suites, is the same)."""

    def switch(sslobj: Any, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.context = current()

    ctx.sni_callback = switch
    return ctx


@dataclass
class Tls:
    """The node's TLS: certificate/key pairs, client CAs, and the contexts of both ports."""

    pairs: list[tuple[Path, Path]]
    client_cas: list[Path] = field(default_factory=list)
    poll_s: float = 5.0
    #: The client CAs' certificates (to check a certificate forwarded by a trusted proxy).
    ca_certs: list[x509.Certificate] = field(default_factory=list, init=False)
    reloads: int = field(default=0, init=False)
    _ocpp: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _http: ssl.SSLContext | None = field(default=None, init=False, repr=False)
    _mtimes: dict[Path, float] = field(default_factory=dict, init=False, repr=False)
    _task: asyncio.Task | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.reload()
        #: What the servers hold (None without a certificate: client CAs only, for
        #: certificates forwarded by a trusted proxy).
        self.ocpp_context: ssl.SSLContext | None = None
        self.http_context: ssl.SSLContext | None = None
        if self.pairs:
            self.ocpp_context = _front(
                server_context(self.pairs, self.client_cas), self.current_ocpp
            )
            self.http_context = _front(server_context(self.pairs), self.current_http)

    def current_ocpp(self) -> ssl.SSLContext:
        assert self._ocpp is not None
        return self._ocpp

    def current_http(self) -> ssl.SSLContext:
        assert self._http is not None
        return self._http

    @property
    def files(self) -> list[Path]:
        return [p for pair in self.pairs for p in pair] + list(self.client_cas)

    def _stat(self) -> dict[Path, float]:
        found = {}
        for p in self.files:
            try:
                found[p] = os.stat(p).st_mtime_ns
            except OSError:
                found[p] = -1
        return found

    def reload(self) -> None:
        """Read the files again; new handshakes use them. Raises TlsError (and keeps
        the contexts in use) if they cannot be used."""
        mtimes = self._stat()
        ocpp = server_context(self.pairs, self.client_cas) if self.pairs else None
        http = server_context(self.pairs) if self.pairs else None
        cas = [c for ca in self.client_cas for c in _read_certs(ca)]
        self._ocpp, self._http, self.ca_certs, self._mtimes = ocpp, http, cas, mtimes
        self.reloads += 1

    def reload_if_changed(self) -> bool:
        if self._stat() == self._mtimes:
            return False
        try:
            self.reload()
        except TlsError as exc:
            log.error("TLS files changed but cannot be used (the previous ones stay): %s", exc)
            self._mtimes = self._stat()  # tried; the next change tries again
            return False
        log.info("TLS certificates reloaded")
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="evflex-tls-reload")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            self.reload_if_changed()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return pki.load_certs(path)
    except (OSError, pki.CertificateError) as exc:
        raise TlsError(f"cannot read client CA {path}: {exc}") from None


# ------------------------------------------------------------------ one port, ws and wss

HandshakeFailed = Callable[[str, Exception], None]


def sniffing_connection(
    context: Callable[[], ssl.SSLContext | None],
    on_failure: HandshakeFailed,
    timeout: float,
) -> type[ServerConnection]:
    """A websockets connection class that serves plain and TLS clients on one port.

    The first byte tells: 0x16 opens a TLS handshake (with ``context()``),
    anything else is plain HTTP. A failed TLS handshake calls ``on_failure(peer
    address, error)``; a client that sends nothing for ``timeout`` s is dropped.
    """

    class SniffingConnection(ServerConnection):
        _raw: asyncio.Transport | None = None
        _started = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            ctx = context()
            if ctx is None:
                self._started = True
                super().connection_made(transport)
                return
            assert isinstance(transport, asyncio.Transport)
            self._raw = transport
            self._idle = asyncio.get_running_loop().call_later(timeout, transport.abort)

        def data_received(self, data: bytes) -> None:
            if self._started:
                super().data_received(data)
                return
            self._started = True
            self._idle.cancel()
            raw = self._raw
            assert raw is not None
            if data[:1] != b"\x16":
                super().connection_made(raw)
                super().data_received(data)
                return
            self._start_tls(raw, data)

        def _start_tls(self, raw: asyncio.Transport, data: bytes) -> None:
            # asyncio has no public way to begin TLS over bytes already read; this is
            # what loop.start_tls does, with the first bytes fed in (Python 3.11+).
            loop = asyncio.get_running_loop()
            ctx = context()
            assert ctx is not None
            waiter = loop.create_future()
            tls = sslproto.SSLProtocol(
                loop, self, ctx, waiter, server_side=True,
                call_connection_made=False, ssl_handshake_timeout=timeout,
            )  # fmt: skip
            raw.set_protocol(tls)
            tls.connection_made(raw)
            buf = tls.get_buffer(len(data))
            buf[: len(data)] = data
            tls.buffer_updated(len(data))
            peer = raw.get_extra_info("peername")
            source = str(peer[0]) if peer else ""

            def done(fut: asyncio.Future) -> None:
                exc = None if fut.cancelled() else fut.exception()
                if fut.cancelled() or exc is not None:
                    raw.abort()
                    on_failure(source, exc or TimeoutError("TLS handshake cancelled"))
                    return
                ServerConnection.connection_made(self, tls._app_transport)

            waiter.add_done_callback(done)

        def eof_received(self) -> bool | None:
            if self._started:
                return super().eof_received()
            self._idle.cancel()  # closed before its first byte
            return False

        def connection_lost(self, exc: Exception | None) -> None:
            if hasattr(self, "recv_messages"):  # the WebSocket began
                super().connection_lost(exc)
            elif not self._started:
                self._idle.cancel()

    return SniffingConnection


# ------------------------------------------------------------------ client certificates


def peer_certificate(ssl_object: Any) -> x509.Certificate | None:
    """The verified client certificate of a TLS connection, or None."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def header_certificate(value: str) -> x509.Certificate:
    """A client certificate as a proxy forwards it: URL-encoded PEM (nginx
    ``$ssl_client_escaped_cert``) or plain PEM. Raises CertificateError."""
    return pki.load_cert(unquote(value).strip().encode())


def verify_forwarded(cert: x509.Certificate, cas: list[x509.Certificate]) -> str | None:
    """Why a certificate forwarded by a proxy is not valid (None: issued by one of
    ``cas`` and within its validity); a proxy verifies the chain, this checks again."""
    now = utcnow()
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        return "the certificate is expired or not yet valid"
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return None
    return "the certificate is not issued by a trusted client CA"


def station_certificate_problem(
    cert: x509.Certificate,
    station_id: str,
    serial_number: str | None,
    cpo_name: str | None,
) -> tuple[str, str] | None:
    """(event code, reason) if ``cert`` may not open ``station_id``, else None.

    O must be the CPO's name; CN the station's id or its registered serial number.
    """
    cn, org = pki.names(cert)
    if cpo_name is not None and org != cpo_name:
        return "InvalidCertificate", f"certificate O={org!r} is not the CPO {cpo_name!r}"
    if cn is None or cn not in (station_id, serial_number):
        return (
            "CertificateForOtherStation",
            f"certificate CN={cn!r} is neither the station id nor its serial number",
        )
    return None
