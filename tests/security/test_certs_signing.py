"""SignCertificate -> our CA -> CertificateSigned, with the ``ocpp`` library's own
ChargePoints as stations (1.6 security extension, 2.0.1, 2.1), on SQLite and
PostgreSQL; refusals, retries, the signing hook and the certificate table."""

from __future__ import annotations

import asyncio
import sys
import textwrap

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import running_node
from evflex.security import pki
from ocpp_clients import connected
from security.certs_stations import CPO, STATIONS, SUBPROTOCOL, set_profile

VERSIONS = list(STATIONS)


@pytest.fixture
def ca(tmp_path):
    cert_file, key_file = pki.init_ca(tmp_path / "ca", CPO)
    return pki.load_cert(cert_file), cert_file, key_file


def ca_settings(ca, **kw):
    _, cert_file, key_file = ca
    return dict(
        allow_unknown_stations=True, cpo_name=CPO, ca_cert_file=cert_file, ca_key_file=key_file,
        **kw,
    )  # fmt: skip


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"


async def security_events(node, code: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"kind": "Security"})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["type"] == code]


async def certificates(node, station_id: str) -> list[dict]:
    r = await node.http.get(f"/api/v1/stations/{station_id}/certificates")
    assert r.status_code == 200, r.text
    return r.json()


def status_of(answer) -> str:
    return answer if isinstance(answer, str) else answer.status


@pytest.mark.parametrize("version", VERSIONS)
async def test_signed_chain_verifies_against_our_ca(database_url, ca, version):
    ca_cert = ca[0]
    async with running_node(database_url, **ca_settings(ca)) as node:
        sid = f"CERT-{version}"
        async with connected(STATIONS[version], node.ocpp_url, sid, SUBPROTOCOL[version]) as cp:
            await set_profile(node, sid, 2)
            assert status_of(await cp.sign(cp.csr(sid))) == "Accepted"
            await node.wait_for(cp.got_chain.is_set)
            chain = pki.load_certs(cp.chains[0])
            leaf = chain[0]
            leaf.verify_directly_issued_by(ca_cert)  # raises if not signed by our CA
            assert pki.names(leaf) == (sid, CPO)
            assert leaf.public_key().public_numbers() == cp.key.public_key().public_numbers()
            if version != "1.6":
                signed = dict(cp.received)["CertificateSigned"]
                assert signed.get("certificate_type") in (None, "ChargingStationCertificate")
            rows = await node.wait_for(lambda: _with_status(node, sid, "Accepted"), timeout=5)
            (row,) = rows
            assert row["kind"] == "ChargingStationCertificate"
            assert row["attempts"] == 1 and row["common_name"] == sid
            assert row["sha256"] == pki.info(leaf).sha256
            assert row["not_after"].startswith(str(leaf.not_valid_after_utc.year))


async def _with_status(node, sid, status):
    rows = await certificates(node, sid)
    return rows if rows and all(r["status"] == status for r in rows) else None


async def test_serial_number_is_a_valid_cn_and_bad_csrs_are_refused(sqlite_url, ca):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        sid = "CERT-NAMES"
        async with connected(STATIONS["2.0.1"], node.ocpp_url, sid, "ocpp2.0.1") as cp:
            await set_profile(node, sid, 2, serial="SN-0042")
            bad = [
                ("not a csr", "InvalidCsr"),
                (cp.csr("SOMEONE-ELSE"), "WrongCommonName"),
                (cp.csr(sid, "Other CPO"), "WrongOrganization"),
                (cp.csr(sid, None), "WrongOrganization"),
            ]
            for csr, code in bad:
                answer = await cp.sign(csr)
                assert answer.status == "Rejected", code
                assert answer.status_info["reason_code"] == code
                assert answer.status_info["additional_info"]
            events = await security_events(node, "InvalidCsr")
            assert len(events) == len(bad)
            assert all(e["station_id"] == sid and e["detail"]["reason"] for e in events)
            assert all(e["detail"]["source"] == "127.0.0.1" for e in events)
            assert await certificates(node, sid) == []  # nothing signed

            assert (await cp.sign(cp.csr("SN-0042"))).status == "Accepted"
            await node.wait_for(cp.got_chain.is_set)
            assert pki.names(pki.load_certs(cp.chains[0])[0]) == ("SN-0042", CPO)


async def test_1_6_wrong_cn_is_rejected(sqlite_url, ca):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "CERT16", "ocpp1.6") as cp:
            await set_profile(node, "CERT16", 3)
            assert await cp.sign(cp.csr("CERT99")) == "Rejected"
            assert len(await security_events(node, "InvalidCsr")) == 1
            assert "CertificateSigned" not in cp.actions()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_profile_1_station_is_refused(sqlite_url, ca, version):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        sid = f"P1-{version}"
        async with connected(STATIONS[version], node.ocpp_url, sid, SUBPROTOCOL[version]) as cp:
            answer = await cp.sign(cp.csr(sid))  # no profile stored: profile 1
            assert status_of(answer) == "Rejected"
            if version != "1.6":
                assert answer.status_info["reason_code"] == "ProfileTooLow"
            (event,) = await security_events(node, "InvalidCsr")
            assert "profile 1" in event["detail"]["reason"]

            body = {"certificate_type": "CSMSRootCertificate", "certificate": pki.cert_pem(ca[0])}
            for name, payload in [
                ("install-certificate", body),
                ("get-installed-certificate-ids", {"certificate_type": ["CSMSRootCertificate"]}),
                ("certificate-signed", {"certificate_chain": pki.cert_pem(ca[0])}),
                ("delete-certificate", {"certificate_hash_data": {
                    "issuer_name_hash": "a", "issuer_key_hash": "b", "serial_number": "c"}}),
            ]:  # fmt: skip
                r = await node.command(sid, name, payload)
                assert r.status_code == 409, (name, r.text)
                assert "security profile 1" in r.json()["detail"]
            assert cp.received == []  # nothing was sent


async def test_rejected_certificate_is_retried_then_flagged(sqlite_url, ca):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        node.rt.certificates.retry_delays = (0.05, 0.1)
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "REJ", "ocpp2.0.1") as cp:
            await set_profile(node, "REJ", 2)
            cp.signed_answers = ["Rejected"] * 3
            assert (await cp.sign(cp.csr("REJ"))).status == "Accepted"
            (row,) = await node.wait_for(lambda: _with_status(node, "REJ", "Rejected"))
            assert row["attempts"] == 3
            assert "3 times" in row["reason"] and "Rejected" in row["reason"]
            assert cp.actions().count("CertificateSigned") == 3
            (event,) = await security_events(node, "CertificateRejected")
            assert event["station_id"] == "REJ" and event["detail"]["certificate_id"] == row["id"]

            # rejected once, then accepted: the second attempt counts
            cp.signed_answers = ["Rejected"]
            assert (await cp.sign(cp.csr("REJ"))).status == "Accepted"
            await node.wait_for(cp.got_chain.is_set)
            rows = await node.wait_for(
                lambda: _rows_where(node, "REJ", lambda r: r["status"] == "Accepted")
            )
            assert rows[0]["attempts"] == 2 and rows[0]["reason"] is None


async def _rows_where(node, sid, pred):
    return [r for r in await certificates(node, sid) if pred(r)]


SIGNING_HOOK = """
import sys
from evflex.security import pki
ca = pki.CertificateAuthority.load(sys.argv[1], sys.argv[2], days=7)
csr = sys.stdin.read()
if sys.argv[3:] == ["other-key"]:  # a broken signer: a certificate for another key
    csr = pki.make_csr(pki.new_key(), "HOOK", "ACME Charging")
print(pki.cert_pem(ca.sign_csr(csr)), end="")
"""


async def test_signing_hook_signs_instead_of_the_ca_files(sqlite_url, ca, tmp_path):
    ca_cert, cert_file, key_file = ca
    hook = tmp_path / "sign.py"
    hook.write_text(textwrap.dedent(SIGNING_HOOK))
    command = f"{sys.executable} {hook} {cert_file} {key_file}"
    settings = dict(allow_unknown_stations=True, cpo_name=CPO, cert_signing_hook=command)
    async with running_node(sqlite_url, **settings) as node:
        async with connected(STATIONS["2.1"], node.ocpp_url, "HOOK", "ocpp2.1") as cp:
            await set_profile(node, "HOOK", 2)
            assert (await cp.sign(cp.csr("HOOK"), request_id=7)).status == "Accepted"
            await node.wait_for(cp.got_chain.is_set, timeout=15)
            leaf = pki.load_certs(cp.chains[0])[0]
            leaf.verify_directly_issued_by(ca_cert)
            days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
            assert days == 7  # the hook's validity, not cert_validity_days
            assert dict(cp.received)["CertificateSigned"]["request_id"] == 7

        # a failing hook: accepted CSR, but nothing signed, and the failure is an event
        node.rt.certificates.signing_hook = f"{sys.executable} -c 'import sys; sys.exit(3)'"
        async with connected(STATIONS["2.1"], node.ocpp_url, "HOOK", "ocpp2.1") as cp:
            assert (await cp.sign(cp.csr("HOOK"))).status == "Accepted"
            (event,) = await node.wait_for(lambda: security_events(node, "CertificateRejected"))
            assert "exited with 3" in event["detail"]["reason"]
            assert "CertificateSigned" not in cp.actions()

        # a hook that signs another key: never sent
        node.rt.certificates.signing_hook = command + " other-key"
        async with connected(STATIONS["2.1"], node.ocpp_url, "HOOK", "ocpp2.1") as cp:
            assert (await cp.sign(cp.csr("HOOK"))).status == "Accepted"
            events = await node.wait_for(
                lambda: _two(security_events(node, "CertificateRejected")), timeout=15
            )
            assert "not for the CSR's key" in events[0]["detail"]["reason"]  # newest first
            assert "CertificateSigned" not in cp.actions()


async def _two(events):
    found = await events
    return found if len(found) == 2 else None


async def test_no_ca_configured_is_a_reason(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True, cpo_name=CPO) as node:
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "NOCA", "ocpp2.0.1") as cp:
            await set_profile(node, "NOCA", 2)
            answer = await cp.sign(cp.csr("NOCA"))
            assert answer.status == "Rejected" and answer.status_info["reason_code"] == "NoCA"


async def test_weak_keys_are_refused(sqlite_url, ca):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "WEAK", "ocpp2.0.1") as cp:
            await set_profile(node, "WEAK", 2)
            small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
            answer = await cp.sign(pki.make_csr(small, "WEAK", CPO).decode())
            assert answer.status == "Rejected"
            assert answer.status_info["reason_code"] == "WeakKey"
            assert "1024" in answer.status_info["additional_info"]
            assert (await cp.sign(cp.csr("WEAK"))).status == "Accepted"  # P-256


async def test_a_newer_csr_supersedes_a_certificate_waiting_for_a_retry(sqlite_url, ca):
    async with running_node(sqlite_url, **ca_settings(ca)) as node:
        node.rt.certificates.retry_delays = (0.5, 0.5)
        async with connected(STATIONS["1.6"], node.ocpp_url, "NEW", "ocpp1.6") as cp:
            await set_profile(node, "NEW", 2)
            cp.signed_answers = ["Rejected"]
            assert await cp.sign(cp.csr("NEW")) == "Accepted"
            await node.wait_for(lambda: cp.actions().count("CertificateSigned") == 1)
            assert await cp.sign(cp.csr("NEW")) == "Accepted"
            await node.wait_for(cp.got_chain.is_set)

            async def settled():
                return len(await _rows_where(node, "NEW", lambda r: r["status"] != "Issued")) == 2

            await node.wait_for(settled)
            await asyncio.sleep(0.7)  # past the first one's retry time
            assert cp.actions().count("CertificateSigned") == 2
            first, second = await certificates(node, "NEW")
            assert first["status"] == "Superseded" and first["attempts"] == 1
            assert str(second["id"]) in first["reason"]
            assert second["status"] == "Accepted"
