"""Simulated stations on security profiles 2 and 3 against a real evflex node over TLS
(127.0.0.1): SignCertificate → CertificateSigned → the move to profile 3 → a reconnect
with the signed certificate, in every OCPP version; each attacker mode refused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from evflex.security import pki
from evflex.sim import SimStation
from evflex.sim.model import SecuritySettings, StationSpec
from security.tls_lab import CPO, PASSWORD, new_lab, register, tls_node
from sim.conftest import wait_until

lab = pytest.fixture(new_lab)


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"


def signing_node(url, lab):
    """A TLS node that signs station certificates with the lab's CA."""
    return tls_node(url, lab, ca_cert_file=lab.ca_file, ca_key_file=lab.dir / "ca.key")


def sim(
    node, stations: list, sid: str, version="2.0.1", password=PASSWORD, serial=None, **security
):
    spec = StationSpec(
        id=sid,
        ocpp_version=version,
        evses=1,
        password=password,
        serial=serial,
        security=SecuritySettings(cpo_name=CPO, **security),
    )
    url = f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp"
    st = SimStation(spec, url, reconnect_delay_s=0.05, response_timeout_s=5.0)
    stations.append(st)
    return st


def _der(cert) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


async def accepted_by_node(node, sid: str, count: int = 1) -> None:
    """Wait until the node has recorded ``count`` certificates of ``sid`` as Accepted."""

    async def done() -> bool:
        r = await node.http.get(f"/api/v1/stations/{sid}/certificates")
        return sum(c["status"] == "Accepted" for c in r.json()) == count

    await node.wait_for(done)


async def security_events(node, type_: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"kind": "Security", "limit": 100})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e.get("type") == type_]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_profile_2_then_a_signed_certificate_then_profile_3(
    database_url, lab, stations, version
):
    async with signing_node(database_url, lab) as node:
        await register(node, "SIM-1", 2)
        st = sim(node, stations, "SIM-1", version, profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        assert (await node.station("SIM-1"))["security_profile_reached"] == 2

        if version == "1.6":
            r = await node.command(
                "SIM-1", "extended-trigger-message", {"message": "SignChargePointCertificate"}
            )
        else:
            r = await node.command(
                "SIM-1", "trigger-message", {"message": "SignChargingStationCertificate"}
            )
        assert r.status_code == 200, r.text
        await wait_until(lambda: ("CertificateSigned", "Accepted") in st.security_log, 10)
        leaf = st.station_chain[0]
        assert pki.names(leaf) == ("SIM-1", CPO)
        leaf.verify_directly_issued_by(pki.load_cert(lab.ca_file))

        await accepted_by_node(node, "SIM-1")
        url = f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp"
        r = await node.http.post(
            "/api/v1/stations/SIM-1/security-profile", json={"profile": 3, "csms_url": url}
        )
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] is True

        async def on_profile_3() -> bool:
            s = await node.station("SIM-1")
            return s["security_profile_reached"] == 3 and s["connected"]

        await node.wait_for(on_profile_3, timeout=15)
        await wait_until(lambda: st.online, 10)
        assert st.security_profile == 3 and st.profile_reached == 3


async def refused_with(node, st: SimStation, event: str) -> dict:
    st.launch()
    events = await node.wait_for(lambda: security_events(node, event), timeout=10)
    assert st.connect_failures and not st.booted
    assert events[-1]["detail"]["source"] == "127.0.0.1"
    return events[-1]


@pytest.mark.parametrize(
    ("attack", "event"),
    [
        ("wrong-ca", "InvalidCertificate"),
        ("expired", "InvalidCertificate"),
        ("other-station", "CertificateForOtherStation"),
    ],
)
async def test_certificate_attacks_are_refused_by_the_node(
    database_url, lab, stations, attack, event
):
    async with tls_node(database_url, lab) as node:
        await register(node, "SIM-A", 3, password=None)
        await register(node, "SIM-B", 3, password=None)
        st = sim(
            node, stations, "SIM-A", password=None, profile=3, ca_file=str(lab.ca_file),
            attack=attack, signer_cert=str(lab.ca_file), signer_key=str(lab.dir / "ca.key"),
            other_station="SIM-B",
        )  # fmt: skip
        found = await refused_with(node, st, event)
        if attack == "other-station":
            assert found["station_id"] == "SIM-A" and found["detail"]["certificate_cn"] == "SIM-B"
        assert not (await node.station("SIM-A"))["connected"]


async def test_a_downgrade_from_3_to_2_is_refused_by_the_node(database_url, lab, stations):
    async with tls_node(database_url, lab) as node:
        await register(node, "SIM-D", 2)
        cert, key = lab.station_pair("SIM-D")
        st = sim(
            node, stations, "SIM-D", profile=3, ca_file=str(lab.ca_file),
            client_cert=str(cert), client_key=str(key),
        )  # fmt: skip
        await st.start(timeout=10)
        assert (await node.station("SIM-D"))["security_profile_reached"] == 3
        st.set_attack("downgrade")
        assert st.link_profile() == 2
        await st.reconnect()
        found = await node.wait_for(lambda: security_events(node, "ProfileDowngrade"), timeout=10)
        assert found[-1]["station_id"] == "SIM-D" and found[-1]["detail"]["profile"] == 2
        await wait_until(lambda: st.connect_failures, 10)
        assert not st.online


async def test_a_downgrade_to_plain_ws_is_refused_by_the_node(database_url, lab, stations):
    async with tls_node(database_url, lab) as node:
        await register(node, "SIM-P", 2)
        st = sim(node, stations, "SIM-P", profile=2, ca_file=str(lab.ca_file), attack="downgrade")
        assert st.connect_url().startswith("ws://")
        found = await refused_with(node, st, "PlainConnectionRefused")
        assert found["station_id"] == "SIM-P"


async def test_a_renewal_the_node_asks_for_is_signed_and_used(sqlite_url, lab, stations):
    """The node asks for a new certificate before the old one expires; the station makes
    a new key, gets the certificate and reconnects with it (profile 3 all along)."""
    async with tls_node(
        sqlite_url, lab, ca_cert_file=lab.ca_file, ca_key_file=lab.dir / "ca.key",
        cert_validity_days=10, cert_renew_days=30,
    ) as node:  # fmt: skip
        await register(node, "SIM-R", 2)
        st = sim(node, stations, "SIM-R", profile=2, ca_file=str(lab.ca_file))
        await st.start(timeout=10)
        assert await st.request_certificate() == "Accepted"
        await wait_until(lambda: st.station_chain, 10)
        first = st.station_chain[0]
        await accepted_by_node(node, "SIM-R")
        url = f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp"
        r = await node.http.post(
            "/api/v1/stations/SIM-R/security-profile", json={"profile": 3, "csms_url": url}
        )
        assert r.json()["accepted"] is True, r.text
        await wait_until(lambda: st.profile_reached == 3 and st.online, 15)
        assert st.connected_certificate == first

        assert await node.rt.certificates.check_expiry() == ["SIM-R"]
        await wait_until(lambda: st.station_chain and st.station_chain[0] != first, 10)
        renewed = st.station_chain[0]
        assert _der(renewed) != _der(first)  # a new key, not the old one again
        await wait_until(lambda: st.online and st.connected_certificate == renewed, 10)

        await accepted_by_node(node, "SIM-R", 2)
        assert (await node.station("SIM-R"))["connected"]


async def test_a_certificate_named_by_serial_number(sqlite_url, lab, stations):
    async with signing_node(sqlite_url, lab) as node:
        await register(node, "SIM-S", 2, serial="SN-0042")
        st = sim(node, stations, "SIM-S", serial="SN-0042", profile=2,
                 ca_file=str(lab.ca_file), csr_common_name="serial")  # fmt: skip
        await st.start(timeout=10)
        assert await st.request_certificate() == "Accepted"
        await wait_until(lambda: st.station_chain, 10)
        assert pki.names(st.station_chain[0]) == ("SN-0042", CPO)
        await accepted_by_node(node, "SIM-S")
        url = f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp"
        r = await node.http.post(
            "/api/v1/stations/SIM-S/security-profile", json={"profile": 3, "csms_url": url}
        )
        assert r.json()["accepted"] is True, r.text
        await wait_until(lambda: st.connected_certificate == st.station_chain[0] and st.online, 15)
        assert (await node.station("SIM-S"))["security_profile_reached"] == 3
