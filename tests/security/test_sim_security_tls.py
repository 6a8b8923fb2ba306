"""The simulated station's link on security profiles 2 and 3, against a real TLS server.

The server (``sim_csms.MiniCsms``) is ``ssl`` + ``websockets`` + the ``ocpp``
library's ChargePoint on 127.0.0.1, with a CA of its own.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from evflex.security import pki
from evflex.sim import SimStation
from evflex.sim.model import SecuritySettings, StationSpec
from security.sim_csms import Lab, MiniCsms
from sim.conftest import wait_until

VERSIONS = ["1.6", "2.0.1", "2.1"]


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


def station(
    csms: MiniCsms, version: str, stations: list, sid: str = "CS1", **security
) -> SimStation:
    spec = StationSpec(
        id=sid,
        ocpp_version=version,
        evses=1,
        password=security.pop("password", "pw-0123456789abcdef"),
        security=SecuritySettings(**security),
    )
    st = SimStation(spec, csms.url, reconnect_delay_s=0.05, response_timeout_s=5.0)
    stations.append(st)
    return st


async def set_variables(csms: MiniCsms, component: str, name: str, *values: str) -> list:
    """SetVariables of one variable to each of ``values`` in turn (one request): the results."""
    data = [
        {"component": {"name": component}, "variable": {"name": name}, "attribute_value": v}
        for v in values
    ]
    answer = await csms.call("CS1", "SetVariables", set_variable_data=data)
    return answer.set_variable_result


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_2_is_wss_with_basic_auth_verifying_the_csms(lab, version, stations):
    async with MiniCsms(lab) as csms:
        st = station(csms, version, stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        (hs,) = csms.of("CS1")
        assert hs.tls and hs.password == "pw-0123456789abcdef" and hs.client_cert is None
        assert st.profile_reached == 2


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_profile_2_refuses_a_csms_its_ca_did_not_sign(lab, tmp_path, version, stations):
    other, _ = pki.init_ca(tmp_path / "other", "Someone Else")
    async with MiniCsms(lab) as csms:
        st = station(csms, version, stations, profile=2, ca_file=str(other))
        st.launch()
        await wait_until(lambda: st.connect_failures, timeout=10)
        assert isinstance(st.connect_failures[0], ssl.SSLCertVerificationError)
        assert not st.booted and not csms.handshakes


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_3_presents_the_client_certificate_without_a_password(lab, version, stations):
    cert, key = lab.station_cert("CS1")
    async with MiniCsms(lab) as csms:
        st = station(
            csms, version, stations, profile=3, ca_file=str(lab.ca_file),
            client_cert=cert, client_key=key,
        )  # fmt: skip
        await st.start(timeout=10)
        (hs,) = csms.of("CS1")
        assert hs.tls and hs.password is None
        assert hs.client_cn == "CS1" and pki.cert_pem(hs.client_cert) == cert


@pytest.mark.parametrize("version", VERSIONS)
async def test_sign_certificate_then_reconnect_with_the_signed_certificate(lab, version, stations):
    """Profile 2 → trigger → SignCertificate → CertificateSigned → profile 3 → reconnect."""
    async with MiniCsms(lab) as csms:
        st = station(csms, version, stations, profile=2, ca_file=str(lab.ca_file), cpo_name=lab.org)
        await st.start(timeout=10)
        if version == "1.6":
            answer = await csms.call(
                "CS1", "ExtendedTriggerMessage", requested_message="SignChargePointCertificate"
            )
        else:
            answer = await csms.call(
                "CS1", "TriggerMessage", requested_message="SignChargingStationCertificate"
            )
        assert answer.status == "Accepted"
        await wait_until(lambda: csms.results.get("CertificateSigned"), 10)
        assert ("CertificateSigned", "Accepted") in st.security_log
        (_, csr) = csms.csrs[0]
        assert pki.csr_names(csr) == ("CS1", lab.org)
        assert pki.names(st.station_chain[0]) == ("CS1", lab.org)
        assert csms.results["CertificateSigned"][0].status == "Accepted"
        # the CSMS moves the station to profile 3: it reconnects with its new certificate
        if version == "1.6":
            answer = await csms.call("CS1", "ChangeConfiguration", key="SecurityProfile", value="3")
        else:
            await csms.call(
                "CS1",
                "SetNetworkProfile",
                configuration_slot=2,
                connection_data={
                    "ocpp_version": "OCPP20", "ocpp_transport": "JSON", "ocpp_csms_url": csms.url,
                    "message_timeout": 30, "security_profile": 3, "ocpp_interface": "Wired0",
                },
            )  # fmt: skip
            (answer,) = await set_variables(
                csms, "OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1"
            )
            assert answer["attribute_status"] == "Accepted"
            assert len(csms.of("CS1")) == 1  # the new slot is used from the next connect on
            answer = await csms.call("CS1", "Reset", type="OnIdle")
        assert answer.status == "Accepted"
        await wait_until(lambda: len(csms.of("CS1")) == 2 and st.online, 10)
        second = csms.of("CS1")[1]
        assert second.client_cert == st.station_chain[0] and second.password is None
        assert st.profile_reached == 3 and st.boot_count == (1 if version == "1.6" else 2)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_certificate_for_another_key_is_rejected_and_reported(lab, version, stations):
    async with MiniCsms(lab, sign=False) as csms:
        st = station(csms, version, stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        assert await st.request_certificate() == "Accepted"
        foreign, _ = lab.station_cert("CS1")  # right names, but not the key of its CSR
        answer = await csms.call("CS1", "CertificateSigned", certificate_chain=foreign)
        assert answer.status == "Rejected"
        assert st.station_chain == []
        await wait_until(lambda: csms.security_events, 5)
        kind = "ChargePoint" if version == "1.6" else "ChargingStation"
        assert csms.security_events == [("CS1", f"Invalid{kind}Certificate")]


@pytest.mark.parametrize("version", ["1.6", "2.1"])
async def test_profile_changes_never_go_down(lab, version, stations):
    async with MiniCsms(lab) as csms:
        st = station(csms, version, stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        if version == "1.6":
            down = await csms.call("CS1", "ChangeConfiguration", key="SecurityProfile", value="1")
            up = await csms.call("CS1", "ChangeConfiguration", key="SecurityProfile", value="3")
            statuses = [down.status, up.status]
        else:
            results = await set_variables(csms, "SecurityCtrlr", "SecurityProfile", "1", "3")
            statuses = [r["attribute_status"] for r in results]
            reasons = [r["attribute_status_info"]["reason_code"] for r in results]
            assert reasons == ["NoSecurityDowngrade", "NoCertificate"]
        assert statuses == ["Rejected", "Rejected"]  # down: never; 3: no certificate yet
        assert st.security_profile == 2 and len(csms.of("CS1")) == 1


async def test_the_default_profile_follows_certificate_url_and_password(lab):
    cert, key = lab.station_cert("CS1")
    cases = [
        ("ws://h/ocpp", None, {}, 0, "ws://h/ocpp/CS1"),
        ("ws://h/ocpp", "pw-0123456789abcdef", {}, 1, "ws://h/ocpp/CS1"),
        ("wss://h/ocpp", "pw-0123456789abcdef", {}, 2, "wss://h/ocpp/CS1"),
        ("ws://h/ocpp", None, {"client_cert": cert, "client_key": key}, 3, "wss://h/ocpp/CS1"),
        ("wss://h/ocpp", "pw", {"profile": 1}, 1, "ws://h/ocpp/CS1"),
    ]
    for url, password, security, profile, connect_url in cases:
        spec = StationSpec(id="CS1", password=password, security=SecuritySettings(**security))
        st = SimStation(spec, url)
        assert (st.security_profile, st.connect_url()) == (profile, connect_url)
        assert st.basic_auth_password() == (password if profile in (1, 2) else None)


async def test_profile_3_without_a_certificate_says_so_and_never_connects(lab, stations):
    async with MiniCsms(lab) as csms:
        st = station(csms, "2.0.1", stations, profile=3, ca_file=str(lab.ca_file))
        st.launch()
        await wait_until(lambda: st.connect_failures, 10)
        assert "profile 3 needs a client certificate" in str(st.connect_failures[0])
        assert not csms.handshakes and not st.booted


async def test_1_6_authorization_key_is_write_only_and_used_at_the_next_connect(lab, stations):
    async with MiniCsms(lab) as csms:
        st = station(csms, "1.6", stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        new = "a-new-password-0123"
        answer = await csms.call("CS1", "ChangeConfiguration", key="AuthorizationKey", value=new)
        assert answer.status == "Accepted"
        keys = await csms.call("CS1", "GetConfiguration", key=["AuthorizationKey"])
        assert keys.unknown_key == ["AuthorizationKey"] and not keys.configuration_key
        await st.reconnect()
        await wait_until(lambda: len(csms.of("CS1")) == 2 and st.online, 10)
        assert [h.password for h in csms.of("CS1")] == ["pw-0123456789abcdef", new]


@pytest.mark.parametrize("flaw", ["expired", "broken chain", "not PEM"])
async def test_a_certificate_for_its_key_that_is_not_valid_is_rejected(lab, stations, flaw):
    async with MiniCsms(lab, sign=False) as csms:
        st = station(csms, "2.0.1", stations, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        assert await st.request_certificate() == "Accepted"
        csr = x509.load_pem_x509_csr(csms.csrs[0][1].encode())
        old = datetime.now(UTC) - timedelta(days=400)
        if flaw == "expired":
            cert = pki.issue(lab.ca.cert, lab.ca.key, csr.subject, csr.public_key(), days=30,
                             not_before=old)  # fmt: skip
            chain = pki.cert_pem(cert)
        elif flaw == "broken chain":  # signed by our CA, followed by a CA that did not sign it
            cert = lab.ca.sign_csr(csms.csrs[0][1])
            stranger, _ = pki.make_ca("Stranger", "Lab")
            chain = pki.cert_pem(cert) + pki.cert_pem(stranger)
        else:
            chain = "-----BEGIN CERTIFICATE-----\nnonsense\n-----END CERTIFICATE-----\n"
        answer = await csms.call("CS1", "CertificateSigned", certificate_chain=chain)
        why = {"expired": "not valid now", "broken chain": "is not issued by", "not PEM": "PEM"}
        assert answer.status == "Rejected" and why[flaw] in answer.status_info["additional_info"]
        assert st.station_chain == [] and st.pending_key is not None
