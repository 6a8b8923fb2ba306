"""Security of a simulated station: profiles 0 to 3, its key and certificate, attacks.

The behaviour every OCPP version shares (the codecs map it to their messages,
:mod:`evflex.sim.security16` and :mod:`evflex.sim.security201`):

* the link: ``ws://`` (profiles 0 and 1) or ``wss://`` verifying the CSMS
  against the trusted CA (2 and 3), HTTP Basic ``id:password`` (1 and 2), a
  client certificate (3);
* its own key and certificate: a new key and CSR (CN its id or serial
  number, O the CPO's name) sent in SignCertificate; the chain of a
  CertificateSigned is checked (its key, its dates, each link of the chain)
  and, on profile 3, the station reconnects with it at once;
* the CA certificates installed by the CSMS (kept in memory) and their hash data;
* a change of security profile (never down) followed by a reconnect;
* attacker modes (:data:`~evflex.sim.model.ATTACKS`) that the CSMS must refuse.
"""

from __future__ import annotations

import hashlib
import ssl
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from evflex.security import pki
from evflex.sim.model import SecuritySettings

#: Certificate uses (1.6 and 2.x names) whose CAs the station trusts for the CSMS's certificate.
CSMS_ROOTS = frozenset({"CSMSRootCertificate", "CentralSystemRootCertificate"})
#: Installed CA certificates the station keeps at most (1.6 CertificateStoreMaxLength).
CERTIFICATE_STORE_MAX = 20
#: Largest certificate chain (PEM characters) a CertificateSigned may carry.
MAX_CHAIN_SIZE = 10_000


class SecurityRefusal(ValueError):
    """A request the station refuses; ``reason`` is the StatusInfo reason code."""

    def __init__(self, reason: str, info: str) -> None:
        super().__init__(info)
        self.reason = reason
        self.info = info


@dataclass(frozen=True, slots=True)
class Installed:
    """A CA certificate installed by the CSMS (InstallCertificate)."""

    use: str
    cert: x509.Certificate

    @property
    def hash_data(self) -> dict[str, str]:
        return pki.hash_data(self.cert)


@dataclass(frozen=True, slots=True)
class NetworkProfile:
    """A connection profile slot (2.x SetNetworkProfile; slot 1 is the starting one)."""

    security_profile: int
    url: str | None = None


def _der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def same_hash(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two CertificateHashData (snake or camel case) name the same certificate."""

    def norm(h: dict[str, Any]) -> tuple[str, ...]:
        def get(snake: str, camel: str) -> str:
            return str(h.get(snake, h.get(camel, ""))).lower()

        return (
            get("hash_algorithm", "hashAlgorithm"),
            get("issuer_name_hash", "issuerNameHash"),
            get("issuer_key_hash", "issuerKeyHash"),
            get("serial_number", "serialNumber").lstrip("0"),
        )

    return norm(a) == norm(b)


def _with_scheme(url: str, scheme: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme, *parts[1:]))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def check_chain(chain_pem: str, key: Any, max_size: int = MAX_CHAIN_SIZE) -> list[x509.Certificate]:
    """The certificates of a CertificateSigned chain, leaf first, if they are for ``key``.

    Raises :class:`SecurityRefusal` when the chain is too long or not PEM, its
    leaf is not for ``key`` or not valid now, or a certificate is not issued by
    the next one.
    """
    if len(chain_pem) > max_size:
        raise SecurityRefusal("InvalidCertificate", f"chain over {max_size} characters")
    try:
        certs = pki.load_certs(chain_pem.encode())
    except pki.CertificateError as exc:
        raise SecurityRefusal("InvalidCertificate", str(exc)) from None
    if not certs:
        raise SecurityRefusal("InvalidCertificate", "no certificate in the chain")
    leaf = certs[0]
    if key is None or _der(leaf.public_key()) != _der(key.public_key()):
        raise SecurityRefusal("InvalidCertificate", "the certificate is not for the station's key")
    now = _utcnow()
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise SecurityRefusal(
            "InvalidCertificate",
            f"not valid now (valid {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
        )
    for child, parent in zip(certs, certs[1:], strict=False):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            raise SecurityRefusal(
                "InvalidCertificate", f"{child.subject.rfc4514_string()} is not issued by the next"
            ) from None
    return certs


def check_ca_certificate(pem: str) -> x509.Certificate:
    """An InstallCertificate's certificate if it is a CA certificate valid now."""
    try:
        cert = pki.load_cert(pem.encode())
    except pki.CertificateError as exc:
        raise SecurityRefusal("InvalidCertificate", str(exc)) from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise SecurityRefusal("InvalidCertificate", "not a CA certificate")
    now = _utcnow()
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise SecurityRefusal("CertificateExpired", "not valid now")
    return cert


class StationSecurity:
    """Mixed into :class:`~evflex.sim.station.SimStation`: its security (see the module)."""

    spec: Any
    base_url: str
    password: str | None
    _link_obj: Any
    send: Callable[[Any], Coroutine[Any, Any, Any]]
    spawn: Callable[[Coroutine[Any, Any, Any]], Any]
    error: Callable[[str], None]
    reconnect: Callable[[], Coroutine[Any, Any, None]]
    #: The security event of a CertificateSigned the station rejects (1.6 names it otherwise).
    invalid_own_certificate = "InvalidChargingStationCertificate"

    def _init_security(self) -> None:
        settings: SecuritySettings = self.spec.security
        self.security = settings
        start = settings.profile if settings.profile is not None else self._default_profile()
        #: The security profile the station connects with (unless it attacks).
        self.security_profile = start
        #: The highest profile it has been connected with.
        self.profile_reached = 0
        #: Its key and certificate chain (leaf first) for profile 3.
        self.station_key: pki.PrivateKey | None = None
        self.station_chain: list[x509.Certificate] = []
        if settings.client_cert and settings.client_key:
            self.station_key = pki.load_key(settings.client_key)
            self.station_chain = pki.load_certs(settings.client_cert)
        #: The key of the CSR sent last, waiting for its CertificateSigned.
        self.pending_key: pki.PrivateKey | None = None
        #: The CA certificates installed by the CSMS.
        self.installed: list[Installed] = []
        #: Connection profile slots (2.x SetNetworkProfile) and their priority.
        self.network_profiles: dict[int, NetworkProfile] = {1: NetworkProfile(start)}
        #: What the station did: ("SignCertificate", status), ("CertificateSigned", status)...
        self.security_log: list[tuple[str, str]] = []
        self._attack_files: tuple[str, str] | None = None
        self._next_network: NetworkProfile | None = None
        self._presenting: x509.Certificate | None = None
        #: The client certificate the station connected with last (None below profile 3).
        self.connected_certificate: x509.Certificate | None = None
        self._fallback: tuple[NetworkProfile, int] | None = None

    def _default_profile(self) -> int:
        """Without a profile setting: 3 with a client certificate, 2 for a ``wss://``
        URL, 1 with a password, else 0."""
        if self.security.client_cert:
            return 3
        if urlsplit(self.base_url).scheme == "wss":
            return 2
        return 1 if self.password else 0

    # ------------------------------------------------------------------ the link

    @property
    def attack(self) -> str | None:
        return self.security.attack

    def set_attack(self, attack: str | None) -> None:
        """Turn the attacker mode on or off (takes effect at the next connect)."""
        self.security = replace(self.security, attack=attack)
        self._attack_files = None

    def link_profile(self) -> int:
        """The security profile of the next connection (an attack may lower it)."""
        if self.attack == "downgrade":
            return max(0, max(self.profile_reached, self.security_profile) - 1)
        if self.attack is not None:
            return 3
        return self.security_profile

    def connect_url(self) -> str:
        """Where to connect: ``wss://`` for profiles 2 and 3, ``ws://`` below."""
        s = self.security
        if self.link_profile() >= 2:
            base = s.tls_url or _with_scheme(self.base_url, "wss")
        else:
            base = s.plain_url or _with_scheme(self.base_url, "ws")
        return f"{base.rstrip('/')}/{self.spec.id}"

    def basic_auth_password(self) -> str | None:
        """The HTTP Basic password to send (profiles 1 and 2; none on profile 3)."""
        return self.password if self.link_profile() in (1, 2) else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS client context of the next connection (None for ``ws://``)."""
        profile = self.link_profile()
        if profile < 2:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.security.ca_file:
            bundle = pki.load_certs(self.security.ca_file)
            ctx.load_verify_locations(cadata="".join(pki.cert_pem(c) for c in bundle))
        roots = [pki.cert_pem(i.cert) for i in self.installed if i.use in CSMS_ROOTS]
        if roots:
            ctx.load_verify_locations(cadata="".join(roots))
        self._presenting = None
        if profile == 3:
            chain, key = self._client_identity()
            self._presenting = pki.load_certs(chain.encode())[0]
            with tempfile.TemporaryDirectory() as tmp:
                cert_file = pki.write_pem(Path(tmp) / "station.pem", chain)
                key_file = pki.write_pem(Path(tmp) / "station.key", key, private=True)
                ctx.load_cert_chain(cert_file, key_file)
        return ctx

    def _client_identity(self) -> tuple[str, str]:
        """(certificate chain PEM, key PEM) the station presents on profile 3."""
        if self.attack in ("wrong-ca", "expired", "other-station"):
            if self._attack_files is None:
                self._attack_files = self._attack_identity(self.attack)
            return self._attack_files
        if self.station_key is None or not self.station_chain:
            raise ConnectionError(f"{self.spec.id}: profile 3 needs a client certificate")
        return "".join(pki.cert_pem(c) for c in self.station_chain), pki.key_pem(self.station_key)

    def _attack_identity(self, attack: str) -> tuple[str, str]:
        s = self.security
        key = pki.new_key(s.key_kind)
        cn = self.csr_common_name()
        if attack == "wrong-ca":
            ca_cert, ca_key = pki.make_ca("Rogue CA", s.cpo_name or "Rogue", days=30)
            cert = pki.issue(ca_cert, ca_key, self._subject(cn), key.public_key(), days=30)
            return pki.cert_pem(cert), pki.key_pem(key)
        if s.signer_cert and s.signer_key:
            ca = pki.CertificateAuthority.load(s.signer_cert, s.signer_key)
            if attack == "expired":
                start = _utcnow() - timedelta(days=400)
                cert = pki.issue(
                    ca.cert, ca.key, self._subject(cn), key.public_key(), days=30, not_before=start
                )
            else:
                other = s.other_station or f"{self.spec.id}-OTHER"
                cert = pki.issue(ca.cert, ca.key, self._subject(other), key.public_key())
            return pki.cert_pem(cert), pki.key_pem(key)
        if s.client_cert and s.client_key:
            certs = pki.load_certs(s.client_cert)
            return "".join(pki.cert_pem(c) for c in certs), pki.key_pem(pki.load_key(s.client_key))
        raise ConnectionError(
            f"{self.spec.id}: the {attack} attack needs a signing CA or a client certificate"
        )

    def _subject(self, common_name: str) -> x509.Name:
        return pki.subject_name(common_name, self.organization())

    def connected_with(self, profile: int) -> None:
        """The CSMS accepted a connection with ``profile``."""
        self.profile_reached = max(self.profile_reached, profile)
        self._fallback = None
        self.connected_certificate = self._presenting if profile == 3 else None

    # ------------------------------------------------------------------ key and certificate

    def organization(self) -> str | None:
        """The CPO name (O) of the station's CSRs (a codec reads its setting)."""
        return self.security.cpo_name

    def csr_common_name(self) -> str:
        spec = self.spec
        return str(spec.serial) if self.security.csr_common_name == "serial" else str(spec.id)

    def new_csr(self) -> str:
        """A new key (kept until its certificate comes) and its PEM CSR."""
        self.pending_key = pki.new_key(self.security.key_kind)
        return pki.make_csr(self.pending_key, self.csr_common_name(), self.organization()).decode()

    async def request_certificate(self) -> str | None:
        """SignCertificate with a new CSR; the CSMS's answer (None: no answer)."""
        result = await self.send(self._sign_certificate_payload(self.new_csr()))
        status = str(result.status) if result is not None else None
        self.security_log.append(("SignCertificate", status or "NoAnswer"))
        return status

    def certificate_signed(self, chain_pem: str, kind: str | None = None) -> SecurityRefusal | None:
        """CertificateSigned: keep the chain if it fits (None) or say why not.

        Accepted on profile 3: the station reconnects with it after the answer.
        """
        try:
            if kind not in (None, "ChargingStationCertificate"):
                raise SecurityRefusal("UnsupportedType", f"{kind} is not kept")
            key = self.pending_key or self.station_key
            certs = check_chain(chain_pem, key, self._max_chain_size())
        except SecurityRefusal as refusal:
            self.security_log.append(("CertificateSigned", "Rejected"))
            self.error(f"CertificateSigned rejected: {refusal.info}")
            self.spawn(self._security_event(self.invalid_own_certificate, refusal.info))
            return refusal
        self.station_key, self.station_chain, self.pending_key = key, certs, None
        self.security_log.append(("CertificateSigned", "Accepted"))
        if self.security_profile == 3:
            self.after_answer(self.reconnect)
        return None

    def _max_chain_size(self) -> int:
        return MAX_CHAIN_SIZE

    # ------------------------------------------------------------------ installed CA certificates

    def install_certificate(self, use: str, pem: str) -> str:
        """InstallCertificate: Accepted, Rejected (not a valid CA certificate) or Failed (full)."""
        try:
            cert = check_ca_certificate(pem)
        except SecurityRefusal as refusal:
            self.error(f"InstallCertificate rejected: {refusal.info}")
            return "Rejected"
        fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        for item in self.installed:
            if (
                item.use == use
                and hashlib.sha256(item.cert.public_bytes(serialization.Encoding.DER)).digest()
                == fingerprint
            ):
                return "Accepted"
        if len(self.installed) >= CERTIFICATE_STORE_MAX:
            return "Failed"
        self.installed.append(Installed(use, cert))
        return "Accepted"

    def installed_ids(self, uses: list[str] | None) -> list[Installed]:
        """The installed certificates of these uses (all when None or empty)."""
        return [i for i in self.installed if not uses or i.use in uses]

    def delete_certificate(self, hash_data: dict[str, Any]) -> str:
        """DeleteCertificate: Accepted, NotFound, or Failed for the station's own certificate."""
        if self.station_chain and same_hash(pki.hash_data(self.station_chain[0]), hash_data):
            return "Failed"
        for item in self.installed:
            if same_hash(item.hash_data, hash_data):
                self.installed.remove(item)
                return "Accepted"
        return "NotFound"

    # ------------------------------------------------------------------ profile changes

    def profile_refusal(self, profile: int) -> SecurityRefusal | None:
        """Why the station cannot move to ``profile`` (None: it can)."""
        if profile not in (0, 1, 2, 3):
            return SecurityRefusal("InvalidValue", f"no security profile {profile}")
        if profile < max(self.security_profile, self.profile_reached):
            return SecurityRefusal(
                "NoSecurityDowngrade",
                f"profile {profile} is below {max(self.security_profile, self.profile_reached)}",
            )
        if profile in (1, 2) and not self.password:
            return SecurityRefusal("NoPassword", f"profile {profile} needs a password")
        if profile == 3 and (self.station_key is None or not self.station_chain):
            return SecurityRefusal("NoCertificate", "profile 3 needs the station's certificate")
        return None

    def change_profile(self, profile: int, url: str | None = None) -> SecurityRefusal | None:
        """Move to ``profile`` (and ``url``) and reconnect after the answer, or say why not."""
        refusal = self.profile_refusal(profile)
        if refusal is not None:
            return refusal
        changed = profile != self.security_profile or (url and url != self.base_url)
        self.security_profile = profile
        if url:
            self.base_url = url.rstrip("/")
        if changed:
            self.after_answer(self.reconnect)
        return None

    def set_network_profile(
        self, slot: int, profile: int, url: str | None
    ) -> SecurityRefusal | None:
        """SetNetworkProfile: keep the slot if the station could use it."""
        refusal = self.profile_refusal(profile)
        if refusal is None:
            self.network_profiles[slot] = NetworkProfile(profile, url)
        return refusal

    def use_network_priority(self, slots: list[str]) -> None:
        """NetworkConfigurationPriority changed: the next connect (after a Reset, say)
        uses its first usable slot; after as many failed attempts as
        ``NetworkProfileConnectionAttempts`` the station goes back to what worked."""
        for text in slots:
            found = self.network_profiles.get(int(text)) if text.strip().isdigit() else None
            if found is not None and self.profile_refusal(found.security_profile) is None:
                self._next_network = found
                return

    def apply_network_profile(self) -> None:
        """Before a connect attempt: switch to the slot chosen by the priority, if any."""
        chosen, self._next_network = self._next_network, None
        if chosen is None:
            return
        url = (chosen.url or self.base_url).rstrip("/")
        if (chosen.security_profile, url) == (self.security_profile, self.base_url):
            return
        self._fallback = (NetworkProfile(self.security_profile, self.base_url), self._attempts())
        self.security_profile, self.base_url = chosen.security_profile, url

    def connect_failed(self) -> None:
        """A connect attempt failed: after too many on a new slot, go back to the old one."""
        if self._fallback is None:
            return
        previous, left = self._fallback
        self._fallback = (previous, left - 1) if left > 1 else None
        if left <= 1:
            self.error(
                f"profile {self.security_profile} failed: back to {previous.security_profile}"
            )
            self.security_profile, self.base_url = previous.security_profile, str(previous.url)

    def _attempts(self) -> int:
        return 3

    def after_answer(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``factory()`` once the answer to the request being handled was sent."""
        link = self._link_obj
        if link is not None and link.handling:
            link.later(factory)
        else:
            self.spawn(factory())

    # ------------------------------------------------------------------ codec hooks

    def _sign_certificate_payload(self, csr: str) -> Any:
        raise NotImplementedError

    def _security_event_payload(self, kind: str, info: str) -> Any:
        raise NotImplementedError

    async def _security_event(self, kind: str, info: str) -> None:
        await self.send(self._security_event_payload(kind, info))
