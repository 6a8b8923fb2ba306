"""Station certificates, CSMS side (OCPP 2.0.1 A02-A05, M; 1.6 security extension).

* **SignCertificate**: a station on security profile 2 or 3 sends a CSR; it is
  checked (parseable, self-signature valid, RSA >= 2048 or EC >= 224 bits,
  O = the CPO's name, CN = the station's id or serial number) and answered Accepted or Rejected (2.x with a
  reason). An accepted CSR is signed in the background by the CPO CA
  (``ca_cert_file``/``ca_key_file``) or by ``cert_signing_hook`` (a command
  reading the CSR on stdin and printing the PEM chain), stored in the
  ``certificates`` table (Issued) and sent with **CertificateSigned**. A
  station that rejects it gets it again after a back-off; after the last
  attempt the certificate is flagged Rejected with a ``CertificateRejected``
  security event; a newer CSR of the station supersedes one still waiting for
  a retry (Superseded). A refused CSR is an ``InvalidCsr`` security event.
* CA certificates installed or deleted with the commands ``install-certificate``
  and ``delete-certificate`` are recorded (Installed, Deleted); these commands
  are refused for stations below profile 2 (:meth:`CertificateManager.refusal`).
* **Renewal**: every ``check_interval_s`` the station certificates whose
  newest accepted one expires within ``cert_renew_days`` are asked for a new
  CSR (2.x TriggerMessage SignChargingStationCertificate, 1.6
  ExtendedTriggerMessage SignChargePointCertificate), at most once a day per
  station.
* **Get15118EVCertificate / GetCertificateStatus** (2.x) go to
  ``ev_certificate_hook`` (the request as JSON on stdin, the answer payload as
  JSON on stdout); without one, or when it fails, the answer is Failed with a
  reason.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel
from sqlalchemy import func, select

from evflex.csms import commands, rpc
from evflex.csms.service import CsmsService
from evflex.domain.model import StationEvent
from evflex.security import audit, pki
from evflex.store import repo
from evflex.store.tables import Certificate, EventLog

log = logging.getLogger(__name__)

STATION_CERTIFICATE = "ChargingStationCertificate"
#: The commands that only stations on security profile 2 or 3 are sent.
PROFILE_COMMANDS = frozenset(
    {
        "install-certificate",
        "get-installed-certificate-ids",
        "delete-certificate",
        "certificate-signed",
    }
)
#: Event kind and type of a renewal request (one a day per station at most).
RENEWAL = ("certificate", "RenewalRequested")
HOOK_TIMEOUT_S = 30.0


class Stations(Protocol):
    """The OCPP endpoint as this module needs it (:class:`evflex.csms.server.OcppServer`)."""

    connections: dict[str, Any]

    async def send_command(self, station_id: str, name: str, body: BaseModel) -> dict: ...


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a CSR is refused: ``code`` for statusInfo.reasonCode, ``reason`` one line."""

    code: str
    reason: str


def weak_key(key: Any) -> str | None:
    """Why a CSR's key is too weak for a station certificate (OCPP security whitepaper:
    RSA of 2048 bits or more, EC of 224 bits or more), or None."""
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"RSA key of {key.key_size} bits (2048 at least)"
    if isinstance(key, ec.EllipticCurvePublicKey):
        size = key.curve.key_size
        return None if size >= 224 else f"EC key of {size} bits (224 at least)"
    return f"{type(key).__name__}: only RSA and EC keys are signed"


def _spki(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def profile_of(row: Any) -> int:
    """A station row's security profile (None = 1)."""
    return 1 if row is None or row.security_profile is None else row.security_profile


async def run_hook(command: str, data: bytes) -> bytes:
    """Run ``command`` with ``data`` on stdin; its stdout, or CertificateError with why not."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *shlex.split(command),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except (OSError, ValueError) as exc:
        raise pki.CertificateError(f"cannot run '{command}': {exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), HOOK_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise pki.CertificateError(f"'{command}' took longer than {HOOK_TIMEOUT_S:g} s") from None
    if proc.returncode != 0:
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise pki.CertificateError(f"'{command}' exited with {proc.returncode}: {last}")
    return out


class CertificateManager:
    """Signs, delivers, records and renews station certificates."""

    def __init__(
        self,
        service: CsmsService,
        *,
        cpo_name: str | None = None,
        ca_cert_file: Path | None = None,
        ca_key_file: Path | None = None,
        validity_days: int = 365,
        renew_days: int = 30,
        signing_hook: str | None = None,
        ev_hook: str | None = None,
        check_interval_s: float = 3600.0,
        retry_delays: Sequence[float] = (10.0, 60.0, 300.0),
    ) -> None:
        self.service = service
        self.cpo_name = cpo_name
        self.ca_cert_file = ca_cert_file
        self.ca_key_file = ca_key_file
        self.validity_days = validity_days
        self.renew_days = renew_days
        self.signing_hook = signing_hook
        self.ev_hook = ev_hook
        self.check_interval_s = check_interval_s
        #: Waits before each new CertificateSigned after a rejection (attempts = 1 + len).
        self.retry_delays = tuple(retry_delays)
        self.stations: Stations | None = None
        self._ca: pki.CertificateAuthority | None = None
        self._tasks: set[asyncio.Task] = set()
        #: The newest certificate being delivered to each station: an older one still
        #: waiting for a retry is not sent again (status Superseded).
        self._latest: dict[str, int] = {}
        self._loop: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle

    def attach(self, stations: Stations) -> None:
        self.stations = stations

    def start(self) -> None:
        if self._loop is None and self.check_interval_s > 0:
            self._loop = asyncio.create_task(self._renewals(), name="evflex-certificates")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._loop] if self._loop else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("certificate delivery failed", exc_info=task.exception())

    async def _renewals(self) -> None:
        wait = min(60.0, self.check_interval_s)  # the first look soon after start
        while True:
            await asyncio.sleep(wait)
            wait = self.check_interval_s
            try:
                await self.check_expiry()
            except Exception:  # the next round tries again
                log.exception("certificate expiry check failed")

    # ------------------------------------------------------------------ stations

    async def station(self, station_id: str) -> Any:
        async with self.service.sessionmaker() as s:
            return await repo.get_station(s, station_id)

    async def refusal(self, station_id: str) -> str | None:
        """Why certificate commands must not go to this station (None: they may)."""
        profile = profile_of(await self.station(station_id))
        if profile < 2:
            return (
                f"station '{station_id}' is on security profile {profile}: certificates are "
                "managed on profile 2 or 3 only (raise it with POST .../security-profile)"
            )
        return None

    def _peer(self, station_id: str) -> str:
        conn = (self.stations.connections if self.stations else {}).get(station_id)
        address = getattr(getattr(conn, "websocket", None), "remote_address", None)
        return str(address[0]) if address else ""

    async def security_event(
        self, station_id: str, type_: str, reason: str, source: str | None = None, **detail: Any
    ) -> None:
        """A refused attempt, in the one shape of security events; ``source`` defaults to
        the station's address."""
        now = self.service.clock.now()
        source = source if source is not None else self._peer(station_id)
        event = audit.security_event(type_, source, reason, now, station_id, **detail)
        await self.service.record_event(event)

    # ------------------------------------------------------------------ signing

    def _authority(self) -> pki.CertificateAuthority | None:
        if self._ca is None and self.ca_cert_file and self.ca_key_file:
            self._ca = pki.CertificateAuthority.load(
                self.ca_cert_file, self.ca_key_file, self.validity_days
            )
        return self._ca

    def _organization(self) -> str | None:
        if self.cpo_name:
            return self.cpo_name
        ca = self._authority() if not self.signing_hook else None
        return ca.organization if ca else None

    async def check_csr(self, station_id: str, csr_pem: str) -> Refusal | None:
        """None if evflex signs this CSR for this station, else why not."""
        row = await self.station(station_id)
        profile = profile_of(row)
        if profile < 2:
            return Refusal(
                "ProfileTooLow",
                f"station is on security profile {profile}; certificates need profile 2 or 3",
            )
        if not self.signing_hook:
            try:
                if self._authority() is None:
                    return Refusal("NoCA", "no CA is configured (ca_cert_file, ca_key_file)")
            except (OSError, pki.CertificateError) as exc:
                return Refusal("NoCA", f"the CA cannot be loaded: {exc}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError as exc:
            return Refusal("InvalidCsr", f"not a PEM certificate signing request: {exc}")
        if not csr.is_signature_valid:
            return Refusal("InvalidCsr", "the CSR's signature does not match its key")
        weak = weak_key(csr.public_key())
        if weak:
            return Refusal("WeakKey", weak)
        cn, org = pki.csr_names(csr_pem)
        expected = self._organization()
        if expected is None:
            return Refusal("NoCpoName", "no CPO name is configured (cpo_name)")
        if org != expected:
            return Refusal("WrongOrganization", f"CSR O is '{org}', expected '{expected}'")
        serial = row.serial_number if row is not None else None
        if cn not in {station_id, serial} - {None}:
            names = f"'{station_id}'" + (f" or its serial number '{serial}'" if serial else "")
            return Refusal("WrongCommonName", f"CSR CN is '{cn}', expected {names}")
        return None

    async def sign_request(
        self, station_id: str, csr_pem: str, kind: str | None = None, request_id: int | None = None
    ) -> Refusal | None:
        """A station's SignCertificate: None (Accepted; signed and sent in the background)
        or the refusal (recorded as an ``InvalidCsr`` security event)."""
        refusal = await self.check_csr(station_id, csr_pem)
        if refusal is not None:
            await self.security_event(
                station_id, "InvalidCsr", refusal.reason, reason_code=refusal.code
            )
            return refusal
        self._spawn(self._issue(station_id, csr_pem, kind or STATION_CERTIFICATE, request_id))
        return None

    async def _sign(self, csr_pem: str) -> list[x509.Certificate]:
        """The chain for a CSR: the hook's output, or our CA's certificate (+ the CA if it
        is not a self-signed root)."""
        if self.signing_hook:
            chain = pki.load_certs(await run_hook(self.signing_hook, csr_pem.encode()))
            if not chain:
                raise pki.CertificateError("the signing hook printed no certificate")
            if _spki(chain[0].public_key()) != _spki(
                x509.load_pem_x509_csr(csr_pem.encode()).public_key()
            ):
                raise pki.CertificateError(
                    "the signing hook's certificate is not for the CSR's key"
                )
            return chain
        ca = self._authority()
        assert ca is not None  # checked in check_csr
        leaf = await asyncio.get_running_loop().run_in_executor(None, ca.sign_csr, csr_pem)
        return [leaf] if ca.cert.issuer == ca.cert.subject else [leaf, ca.cert]

    async def _issue(
        self, station_id: str, csr_pem: str, kind: str, request_id: int | None
    ) -> None:
        try:
            chain = await self._sign(csr_pem)
        except (pki.CertificateError, OSError, ValueError) as exc:
            await self.security_event(
                station_id, "CertificateRejected", f"signing failed: {exc}", kind=kind
            )
            return
        pem = "".join(pki.cert_pem(c) for c in chain)
        cert_id = await self.record(station_id, kind, chain[0], "Issued", pem)
        await self.deliver(station_id, cert_id, pem, kind, request_id)

    async def deliver(
        self, station_id: str, cert_id: int, pem: str, kind: str, request_id: int | None = None
    ) -> str:
        """Send CertificateSigned until the station accepts it or the attempts run out;
        returns the certificate's final status."""
        body = commands.CertificateSignedBody.model_validate(
            {"certificate_chain": pem, "certificate_type": kind, "request_id": request_id}
        )
        conn = (self.stations.connections if self.stations else {}).get(station_id)
        if conn is not None:
            await conn.drain()  # our SignCertificate answer goes out first
        self._latest[station_id] = cert_id
        delays = [*self.retry_delays, None]
        attempts, why = 0, ""
        for delay in delays:
            if self._latest.get(station_id) != cert_id:
                newer = self._latest.get(station_id)
                await self._update(cert_id, "Superseded", attempts, f"certificate {newer} is newer")
                return "Superseded"
            attempts += 1
            try:
                assert self.stations is not None
                answer = await self.stations.send_command(station_id, "certificate-signed", body)
                status = str(answer.get("status"))
                why = f"the station answered {status}"
            except Exception as exc:  # not connected, timeout, CALLERROR
                status, why = "Error", f"not delivered: {type(exc).__name__} {exc}".strip()
            if status == "Accepted":
                await self._update(cert_id, "Accepted", attempts, None)
                return "Accepted"
            await self._update(cert_id, "Issued", attempts, why)
            if delay is not None:
                await asyncio.sleep(delay)
        reason = f"CertificateSigned refused {attempts} times ({why})"
        await self._update(cert_id, "Rejected", attempts, reason)
        await self.security_event(
            station_id, "CertificateRejected", reason, certificate_id=cert_id, kind=kind
        )
        return "Rejected"

    # ------------------------------------------------------------------ the table

    async def record(
        self, station_id: str, kind: str, cert: x509.Certificate, status: str, pem: str
    ) -> int:
        """Store a certificate; returns its id."""
        info = pki.info(cert)
        now = self.service.clock.now()

        async def job(s: Any) -> int:
            row = Certificate(
                station_id=station_id, kind=kind, status=status, serial_hex=info.serial_hex,
                common_name=info.common_name, organization=info.organization,
                issuer=info.issuer, sha256=info.sha256, not_before=info.not_before,
                not_after=info.not_after, pem=pem, attempts=0, created_at=now, updated_at=now,
            )  # fmt: skip
            s.add(row)
            await s.flush()
            return row.id

        return await self.service.writer.submit(job)

    async def _update(self, cert_id: int, status: str, attempts: int, reason: str | None) -> None:
        now = self.service.clock.now()

        async def job(s: Any) -> None:
            row = await s.get(Certificate, cert_id)
            if row is not None:
                row.status, row.attempts, row.reason, row.updated_at = status, attempts, reason, now

        await self.service.writer.submit(job)

    async def certificates(self, station_id: str) -> list[Certificate]:
        async with self.service.sessionmaker() as s:
            q = (
                select(Certificate)
                .where(Certificate.station_id == station_id)
                .order_by(Certificate.id)
            )
            return list((await s.execute(q)).scalars())

    async def after_command(
        self, station_id: str, name: str, body: BaseModel, answer: dict
    ) -> None:
        """Record a CA certificate the station accepted to install, or deleted."""
        if answer.get("status") != "Accepted":
            return
        if isinstance(body, commands.InstallCertificateBody):
            try:
                cert = pki.load_cert(body.certificate)
            except pki.CertificateError:
                return  # the station took what we cannot read: nothing to record
            await self.record(
                station_id, body.certificate_type, cert, "Installed", body.certificate
            )
        elif isinstance(body, commands.DeleteCertificateBody):
            serial = body.certificate_hash_data.serial_number.lower().lstrip("0")
            now = self.service.clock.now()

            async def job(s: Any) -> None:
                q = select(Certificate).where(
                    Certificate.station_id == station_id, Certificate.status == "Installed"
                )
                for row in (await s.execute(q)).scalars():
                    if (row.serial_hex or "").lower().lstrip("0") == serial:
                        row.status, row.updated_at = "Deleted", now

            await self.service.writer.submit(job)

    # ------------------------------------------------------------------ renewal

    async def check_expiry(self) -> list[str]:
        """Ask each connected station whose newest accepted certificate expires within
        ``renew_days`` for a new CSR (once a day at most); returns those asked."""
        now = self.service.clock.now()
        horizon = now + timedelta(days=self.renew_days)
        async with self.service.sessionmaker() as s:
            q = (
                select(Certificate.station_id, func.max(Certificate.not_after))
                .where(
                    Certificate.status == "Accepted",
                    Certificate.kind == STATION_CERTIFICATE,
                    Certificate.station_id.is_not(None),
                )
                .group_by(Certificate.station_id)
            )
            due = [sid for sid, until in (await s.execute(q)).all() if until and until <= horizon]
            recent = set()
            if due:
                q2 = select(EventLog.station_id).where(
                    EventLog.kind == RENEWAL[0],
                    EventLog.type == RENEWAL[1],
                    EventLog.station_id.in_(due),
                    EventLog.timestamp > now - timedelta(days=1),
                )
                recent = set((await s.execute(q2)).scalars())
        asked = []
        for station_id in due:
            conn = (self.stations.connections if self.stations else {}).get(station_id)
            if station_id in recent or conn is None:
                continue
            if await self.trigger_renewal(station_id, conn.version, now):
                asked.append(station_id)
        return asked

    async def trigger_renewal(self, station_id: str, version: str, now: datetime) -> bool:
        if version == commands.V16:
            name, message = "extended-trigger-message", "SignChargePointCertificate"
        else:
            name, message = "trigger-message", "SignChargingStationCertificate"
        try:
            assert self.stations is not None
            answer = await self.stations.send_command(
                station_id, name, commands.TriggerMessageBody(message=message)
            )
            status = str(answer.get("status"))
        except Exception as exc:  # tried again at the next check
            log.warning("%s: renewal trigger failed: %r", station_id, exc)
            return False
        detail = {"message": message, "status": status}
        event = StationEvent(station_id, RENEWAL[0], now, RENEWAL[1], detail)
        await self.service.record_event(event)
        return True

    # ------------------------------------------------------------------ ISO 15118

    async def ev_request(self, action: str, payload: dict, version: str) -> dict:
        """Get15118EVCertificate / GetCertificateStatus: the hook's answer, else Failed."""
        failed: dict[str, Any] = {"status": "Failed"}
        if action == "Get15118EVCertificate":
            failed["exiResponse"] = ""
        if not self.ev_hook:
            failed["statusInfo"] = {
                "reasonCode": "NotConfigured",
                "additionalInfo": "this CSMS has no ISO 15118 certificate service configured",
            }
            return failed
        request = json.dumps({"action": action, "ocppVersion": version, "request": payload})
        try:
            answer = json.loads(await run_hook(self.ev_hook, request.encode()))
            if not isinstance(answer, dict):
                raise ValueError("the answer is not a JSON object")
            rpc.validate(rpc.CALLRESULT, action, answer, version)
        except (pki.CertificateError, ValueError, rpc.RpcError) as exc:
            log.warning("ISO 15118 hook failed for %s: %s", action, exc)
            failed["statusInfo"] = {"reasonCode": "HookFailed", "additionalInfo": str(exc)[:500]}
            return failed
        return answer
