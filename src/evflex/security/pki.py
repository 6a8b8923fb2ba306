"""X.509 for OCPP security profiles 2 and 3, on the ``cryptography`` package.

A CPO certificate authority (``evflex ca init``) for a lab or a small
operator; a real operator points evflex at its own CA files. What a station
certificate must hold (OCPP 2.0.1 part 2, A00 / the Security Whitepaper):
subject O = the CPO's name, CN = the station's serial number (evflex also
accepts the station's id there).

Chain verification of a presented certificate is ``ssl``'s (during the TLS
handshake); this module makes keys, CSRs and certificates and reads their
names.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyKind = Literal["ec", "rsa"]


class CertificateError(ValueError):
    """A CSR or certificate that cannot be used; the message says why."""


def new_key(kind: KeyKind = "ec") -> PrivateKey:
    """A P-256 key (``ec``) or a 2048-bit RSA key (``rsa``)."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def subject_name(common_name: str, organization: str | None) -> x509.Name:
    """An X.509 subject: O (when given) and CN."""
    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _now() -> datetime:
    return datetime.now(UTC)


def make_ca(
    common_name: str, organization: str, days: int = 3650, key: PrivateKey | None = None
) -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA certificate and its key."""
    key = key or new_key()
    name = subject_name(common_name, organization)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    subject: x509.Name,
    public_key,
    *,
    days: int = 365,
    server_names: list[str] | None = None,
    client: bool = True,
    not_before: datetime | None = None,
) -> x509.Certificate:
    """A leaf certificate signed by the CA.

    ``server_names`` (DNS names or IP addresses) make it a TLS server
    certificate; otherwise it is a client (station) certificate.
    """
    start = not_before or _now() - timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []
    if client and not server_names:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def make_csr(key: PrivateKey, common_name: str, organization: str | None) -> bytes:
    """A PEM certificate signing request, as a station sends in SignCertificate."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(common_name, organization))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    csr_pem: str | bytes, ca_cert: x509.Certificate, ca_key: PrivateKey, days: int = 365
) -> x509.Certificate:
    """Check a PEM CSR (parseable, self-signature valid) and issue its certificate.

    Raises :class:`CertificateError` with the reason otherwise. Whether its
    names fit the station is the caller's check (:func:`names`).
    """
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CertificateError("the CSR's signature does not match its key")
    return issue(ca_cert, ca_key, csr.subject, csr.public_key(), days=days)


def csr_names(csr_pem: str | bytes) -> tuple[str | None, str | None]:
    """(CN, O) of a PEM CSR; CertificateError if it is not one."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        return _cn_o(x509.load_pem_x509_csr(data).subject)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate signing request: {exc}") from None


def _cn_o(name: x509.Name) -> tuple[str | None, str | None]:
    def one(oid) -> str | None:
        attrs = name.get_attributes_for_oid(oid)
        value = attrs[0].value if attrs else None
        return value if isinstance(value, str) else None

    return one(NameOID.COMMON_NAME), one(NameOID.ORGANIZATION_NAME)


def names(cert: x509.Certificate) -> tuple[str | None, str | None]:
    """(CN, O) of a certificate's subject."""
    return _cn_o(cert.subject)


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What evflex stores and shows about a certificate."""

    common_name: str | None
    organization: str | None
    issuer: str
    serial_hex: str
    not_before: datetime
    not_after: datetime
    sha256: str

    @property
    def expired(self) -> bool:
        return self.not_after <= _now()


def info(cert: x509.Certificate) -> CertInfo:
    cn, o = names(cert)
    return CertInfo(
        common_name=cn,
        organization=o,
        issuer=cert.issuer.rfc4514_string(),
        serial_hex=format(cert.serial_number, "x"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    )


def hash_data(cert: x509.Certificate) -> dict[str, str]:
    """OCPP CertificateHashDataType of a certificate (SHA256 of issuer name and key)."""
    issuer_der = cert.issuer.public_bytes()
    issuer_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "hashAlgorithm": "SHA256",
        "issuerNameHash": hashlib.sha256(issuer_der).hexdigest(),
        "issuerKeyHash": hashlib.sha256(issuer_key).hexdigest(),
        "serialNumber": format(cert.serial_number, "x"),
    }


# -- PEM files


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def write_pem(path: str | Path, text: str, private: bool = False) -> Path:
    """Write a PEM file; a private key is created readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def load_cert(path_or_pem: str | Path | bytes) -> x509.Certificate:
    data = _read(path_or_pem)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate: {exc}") from None


def load_certs(path_or_pem: str | Path | bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a chain)."""
    data = _read(path_or_pem)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"not a PEM certificate chain: {exc}") from None


def load_key(path_or_pem: str | Path | bytes) -> PrivateKey:
    data = _read(path_or_pem)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CertificateError("only EC and RSA keys are supported")
    return key


def _read(path_or_pem: str | Path | bytes) -> bytes:
    if isinstance(path_or_pem, bytes):
        return path_or_pem
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        return path_or_pem.encode()
    return Path(path_or_pem).read_bytes()


@dataclass(slots=True)
class CertificateAuthority:
    """A CA that evflex signs with: its certificate and key, loaded from files."""

    cert: x509.Certificate
    key: PrivateKey
    days: int = 365

    @classmethod
    def load(cls, cert_file: str | Path, key_file: str | Path, days: int = 365) -> CertificateAuthority:
        return cls(load_cert(cert_file), load_key(key_file), days)

    def sign_csr(self, csr_pem: str | bytes) -> x509.Certificate:
        return sign_csr(csr_pem, self.cert, self.key, self.days)

    @property
    def organization(self) -> str | None:
        return names(self.cert)[1]


def init_ca(out_dir: str | Path, organization: str, common_name: str | None = None,
            days: int = 3650, kind: KeyKind = "ec") -> tuple[Path, Path]:
    """``evflex ca init``: write ``ca.pem`` and ``ca.key`` (0600) into ``out_dir``."""
    out = Path(out_dir)
    cert, key = make_ca(common_name or f"{organization} CPO CA", organization, days, new_key(kind))
    return (
        write_pem(out / "ca.pem", cert_pem(cert)),
        write_pem(out / "ca.key", key_pem(key), private=True),
    )
