"""The CPO CA: keys, CSRs, signing, names and OCPP hash data."""

import ssl
import stat

import pytest
from cryptography import x509

from evflex.security import pki


def test_init_ca_writes_a_ca_and_a_private_key(tmp_path):
    cert_file, key_file = pki.init_ca(tmp_path, "Evflex Lab")
    assert cert_file.name == "ca.pem" and key_file.name == "ca.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    ca = pki.CertificateAuthority.load(cert_file, key_file)
    assert ca.organization == "Evflex Lab"
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_a_station_csr_is_signed_and_chains_to_the_ca(tmp_path, kind):
    pki.init_ca(tmp_path, "Evflex Lab")
    ca = pki.CertificateAuthority.load(tmp_path / "ca.pem", tmp_path / "ca.key")
    key = pki.new_key(kind)
    csr = pki.make_csr(key, "CS-0001", "Evflex Lab")
    assert pki.csr_names(csr) == ("CS-0001", "Evflex Lab")
    cert = ca.sign_csr(csr)
    assert pki.names(cert) == ("CS-0001", "Evflex Lab")
    cert.verify_directly_issued_by(ca.cert)  # raises if not
    i = pki.info(cert)
    assert not i.expired and i.serial_hex == format(cert.serial_number, "x")
    # ssl accepts the pair as a client identity
    pki.write_pem(tmp_path / "cs.pem", pki.cert_pem(cert))
    pki.write_pem(tmp_path / "cs.key", pki.key_pem(key), private=True)
    ssl.create_default_context().load_cert_chain(tmp_path / "cs.pem", tmp_path / "cs.key")


def test_bad_csrs_are_refused_with_a_reason():
    ca_cert, ca_key = pki.make_ca("CA", "Lab")
    with pytest.raises(pki.CertificateError, match="not a PEM certificate signing request"):
        pki.sign_csr("garbage", ca_cert, ca_key)
    other = pki.make_csr(pki.new_key(), "CS", "Lab").replace(b"A", b"B", 1)
    with pytest.raises(pki.CertificateError):
        pki.sign_csr(other, ca_cert, ca_key)


def test_hash_data_names_issuer_and_serial():
    ca_cert, ca_key = pki.make_ca("CA", "Lab")
    h = pki.hash_data(ca_cert)
    assert h["hashAlgorithm"] == "SHA256"
    assert len(h["issuerNameHash"]) == 64 and len(h["issuerKeyHash"]) == 64
    assert int(h["serialNumber"], 16) == ca_cert.serial_number
