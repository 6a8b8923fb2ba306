"""Install/GetInstalledCertificateIds/DeleteCertificate, expiry renewal and the
ISO 15118 certificate calls, with the ``ocpp`` library's ChargePoints as stations."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from datetime import timedelta

import pytest
from cryptography import x509
from ocpp.v21 import call as c21
from ocpp.v201 import call as c201

from conftest import running_node
from evflex.security import pki
from ocpp_clients import connected
from security.certs_stations import CPO, STATIONS, SUBPROTOCOL, set_profile


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"


@pytest.fixture
def ca(tmp_path):
    cert_file, key_file = pki.init_ca(tmp_path / "ca", CPO)
    return pki.CertificateAuthority.load(cert_file, key_file), cert_file, key_file


async def certificates(node, station_id: str) -> list[dict]:
    r = await node.http.get(f"/api/v1/stations/{station_id}/certificates")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_install_list_delete_round_trip(sqlite_url, version):
    root, _ = pki.make_ca("CSMS Root", CPO)
    pem = pki.cert_pem(root)
    sid = f"INST-{version}"
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS[version], node.ocpp_url, sid, SUBPROTOCOL[version]) as cp:
            await set_profile(node, sid, 2)
            r = await node.command(
                sid, "install-certificate", {"certificate_type": "CSMSRootCertificate",
                                             "certificate": pem},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            assert r.json()["response"]["status"] == "Accepted"
            # 1.6 names the CSMS root in its own words
            wire_type = (
                "CentralSystemRootCertificate" if version == "1.6" else "CSMSRootCertificate"
            )
            assert cp.received[-1] == ("InstallCertificate", {"certificate_type": wire_type})
            (row,) = await certificates(node, sid)
            assert row["status"] == "Installed" and row["kind"] == "CSMSRootCertificate"
            assert row["serial_hex"] == format(root.serial_number, "x")

            r = await node.command(
                sid, "get-installed-certificate-ids", {"certificate_type": ["CSMSRootCertificate"]}
            )
            assert r.status_code == 200, r.text
            answer = r.json()["response"]
            assert answer["status"] == "Accepted"
            if version == "1.6":
                (hashes,) = answer["certificateHashData"]
            else:
                (chain,) = answer["certificateHashDataChain"]
                hashes = chain["certificateHashData"]
            assert hashes == pki.hash_data(root)

            body = {
                "certificate_hash_data": {
                    "hash_algorithm": hashes["hashAlgorithm"],
                    "issuer_name_hash": hashes["issuerNameHash"],
                    "issuer_key_hash": hashes["issuerKeyHash"],
                    "serial_number": hashes["serialNumber"],
                }
            }
            r = await node.command(sid, "delete-certificate", body)
            assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted"
            assert cp.installed == {}
            (row,) = await certificates(node, sid)
            assert row["status"] == "Deleted"

            r = await node.command(sid, "delete-certificate", body)  # gone: NotFound, kept
            assert r.json()["response"]["status"] == "NotFound"
            assert (await certificates(node, sid))[0]["status"] == "Deleted"


async def test_1_6_asks_for_one_certificate_type(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "ONE", "ocpp1.6") as cp:
            await set_profile(node, "ONE", 2)
            r = await node.command("ONE", "get-installed-certificate-ids", {})
            assert r.status_code == 400 and "exactly one" in r.json()["detail"]
            assert cp.received == []


@pytest.mark.parametrize(
    "version, action, message",
    [
        ("1.6", "ExtendedTriggerMessage", "SignChargePointCertificate"),
        ("2.0.1", "TriggerMessage", "SignChargingStationCertificate"),
        ("2.1", "TriggerMessage", "SignChargingStationCertificate"),
    ],
)
async def test_certificate_near_expiry_triggers_renewal_once_a_day(
    sqlite_url, ca, version, action, message
):
    authority = ca[0]
    async with running_node(sqlite_url, allow_unknown_stations=True, cert_renew_days=30) as node:
        manager = node.rt.certificates
        sids = {"soon": f"SOON-{version}", "later": f"LATER-{version}"}
        async with (
            connected(STATIONS[version], node.ocpp_url, sids["soon"], SUBPROTOCOL[version]) as soon,
            connected(STATIONS[version], node.ocpp_url, sids["later"], SUBPROTOCOL[version]) as later,
        ):  # fmt: skip
            for key, days in (("soon", 10), ("later", 200)):
                cp = soon if key == "soon" else later
                subject = x509.Name.from_rfc4514_string(f"CN={sids[key]},O={CPO}")
                cert = pki.issue(authority.cert, authority.key, subject, cp.key.public_key(),
                                 days=days)  # fmt: skip
                await manager.record(
                    sids[key], "ChargingStationCertificate", cert, "Accepted", pki.cert_pem(cert)
                )
            assert await manager.check_expiry() == [sids["soon"]]
            assert soon.received == [(action, {"requested_message": message})]
            assert later.received == []
            assert await manager.check_expiry() == []  # asked today already
            assert len(soon.received) == 1

            r = await node.http.get("/api/v1/events", params={"kind": "certificate"})
            (event,) = r.json()
            assert event["type"] == "RenewalRequested" and event["station_id"] == sids["soon"]

            # a day later it is asked again; a renewed certificate stops the asking
            node.rt.clock.now = _later(node.rt.clock.now, timedelta(days=1, minutes=1))
            assert await manager.check_expiry() == [sids["soon"]]
            subject = x509.Name.from_rfc4514_string(f"CN={sids['soon']},O={CPO}")
            renewed = pki.issue(authority.cert, authority.key, subject, soon.key.public_key())
            await manager.record(
                sids["soon"], "ChargingStationCertificate", renewed, "Accepted",
                pki.cert_pem(renewed),
            )  # fmt: skip
            node.rt.clock.now = _later(node.rt.clock.now, timedelta(days=2))
            assert await manager.check_expiry() == []


def _later(now, delta):
    return lambda: now() + delta


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_ev_certificate_calls_fail_with_a_reason_without_a_hook(sqlite_url, version):
    c = c201 if version == "2.0.1" else c21
    schema = "iso15118_schema_version" if version == "2.0.1" else "iso_15118_schema_version"
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(
            STATIONS[version], node.ocpp_url, "EV15118", SUBPROTOCOL[version]
        ) as cp:
            answer = await cp.call(
                c.Get15118EVCertificate(
                    action="Install", exi_request="AAEC", **{schema: "urn:iso:15118:2:2013:MsgDef"}
                )
            )
            assert answer.status == "Failed"
            assert answer.status_info["reason_code"] == "NotConfigured"
            assert "ISO 15118" in answer.status_info["additional_info"]
            ocsp = {
                "hash_algorithm": "SHA256", "issuer_name_hash": "aa", "issuer_key_hash": "bb",
                "serial_number": "01", "responder_url": "http://ocsp.example",
            }  # fmt: skip
            answer = await cp.call(c.GetCertificateStatus(ocsp_request_data=ocsp))
            assert answer.status == "Failed" and answer.status_info["reason_code"]


EV_HOOK = """
import json, sys
request = json.load(sys.stdin)
if request["action"] == "Get15118EVCertificate":
    if request["request"]["exiRequest"] == "BAD":
        print("not json")
    else:
        print(json.dumps({"status": "Accepted", "exiResponse": "EXI:" + request["request"]["exiRequest"]}))
else:
    print(json.dumps({"status": "Accepted", "ocspResult": "OCSP"}))
"""


async def test_ev_certificate_hook_answers_and_its_failure_is_a_reason(sqlite_url, tmp_path):
    hook = tmp_path / "ev.py"
    hook.write_text(textwrap.dedent(EV_HOOK))
    settings = dict(allow_unknown_stations=True, ev_certificate_hook=f"{sys.executable} {hook}")
    async with running_node(sqlite_url, **settings) as node:
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "EVH", "ocpp2.0.1") as cp:
            request = dict(iso15118_schema_version="urn:iso:15118:2:2013:MsgDef", action="Install")
            answer = await cp.call(c201.Get15118EVCertificate(exi_request="AAEC", **request))
            assert (answer.status, answer.exi_response) == ("Accepted", "EXI:AAEC")
            answer = await cp.call(c201.Get15118EVCertificate(exi_request="BAD", **request))
            assert answer.status == "Failed"
            assert answer.status_info["reason_code"] == "HookFailed"
            ocsp = {
                "hash_algorithm": "SHA256", "issuer_name_hash": "aa", "issuer_key_hash": "bb",
                "serial_number": "01", "responder_url": "http://ocsp.example",
            }  # fmt: skip
            answer = await cp.call(c201.GetCertificateStatus(ocsp_request_data=ocsp))
            assert (answer.status, answer.ocsp_result) == ("Accepted", "OCSP")
        assert (await node.http.get("/api/v1/health")).status_code == 200  # served on


async def test_the_node_checks_expiry_by_itself(sqlite_url, ca):
    authority = ca[0]
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        manager = node.rt.certificates
        await manager.stop()
        manager.check_interval_s = 0.05
        manager.start()
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "LOOP", "ocpp2.0.1") as cp:
            subject = x509.Name.from_rfc4514_string(f"CN=LOOP,O={CPO}")
            cert = pki.issue(authority.cert, authority.key, subject, cp.key.public_key(), days=3)
            await manager.record(
                "LOOP", "ChargingStationCertificate", cert, "Accepted", pki.cert_pem(cert)
            )
            await node.wait_for(lambda: cp.received)
            await asyncio.sleep(0.3)  # several more rounds: still asked once
            assert cp.received == [
                ("TriggerMessage", {"requested_message": "SignChargingStationCertificate"})
            ]
