"""Security profiles 2 and 3 over real TLS on 127.0.0.1, with the ``ocpp`` library's
own ChargePoint for 1.6, 2.0.1 and 2.1; attackers refused, each with a Security event."""

from __future__ import annotations

import ssl

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus

from evflex.clock import utcnow
from evflex.security import pki
from evflex.store.tables import Certificate
from ocpp_clients import basic_auth
from security.tls_lab import (
    PASSWORD,
    boot,
    new_lab,
    other_ca,
    register,
    tls_node,
    wss,
)

lab = pytest.fixture(new_lab)


async def security_events(node, type_: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"kind": "Security", "limit": 100})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e.get("type") == type_]


async def refused(node, status: int, event: str, *a, **kw) -> dict:
    """Boot must be refused with HTTP ``status`` and one ``event`` recorded (with source)."""
    with pytest.raises(InvalidStatus) as err:
        await boot(*a, **kw)
    assert err.value.response.status_code == status
    events = await node.wait_for(lambda: security_events(node, event))
    assert events[-1]["detail"]["source"] == "127.0.0.1"
    return events[-1]


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_profile_2_and_3_boot_in_every_version(database_url, lab, version):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-P2", 2)
        await register(node, "CS-P3", 3, password=None)
        status = await boot(
            wss(node, "CS-P2"), "CS-P2", version, lab.client(), basic_auth("CS-P2", PASSWORD)
        )
        assert status == "Accepted"
        pair = lab.station_pair("CS-P3")
        status = await boot(wss(node, "CS-P3"), "CS-P3", version, lab.client(pair))
        assert status == "Accepted"
        p2, p3 = await node.station("CS-P2"), await node.station("CS-P3")
        assert p2["ocpp_version"] == version and p3["ocpp_version"] == version
        assert (p2["security_profile_reached"], p3["security_profile_reached"]) == (2, 3)


async def test_profile_3_by_serial_number(database_url, lab):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-S", 3, password=None, serial="SN-0042")
        pair = lab.station_pair("SN-0042")
        assert await boot(wss(node, "CS-S"), "CS-S", ssl_ctx=lab.client(pair)) == "Accepted"


async def test_attackers_are_refused_and_recorded(database_url, lab):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-A", 3, password=None)
        await register(node, "CS-B", 3, password=None)
        await register(node, "CS-P2", 2)
        b_pair = lab.station_pair("CS-B")
        # a certificate of CS-B presented for CS-A
        ev = await refused(
            node, 403, "CertificateForOtherStation",
            wss(node, "CS-A"), "CS-A", ssl_ctx=lab.client(b_pair),
        )  # fmt: skip
        assert ev["station_id"] == "CS-A" and ev["detail"]["certificate_cn"] == "CS-B"
        # profile 3 without a certificate
        await refused(node, 401, "InvalidCertificate", wss(node, "CS-A"), "CS-A",
                      ssl_ctx=lab.client())  # fmt: skip
        # a certificate whose O is not the CPO's
        await refused(node, 403, "InvalidCertificate", wss(node, "CS-A"), "CS-A",
                      ssl_ctx=lab.client(lab.station_pair("CS-A", org="Other CPO")))  # fmt: skip
        # plain ws:// for a profile-2 station
        await refused(
            node, 403, "PlainConnectionRefused",
            f"ws://127.0.0.1:{node.rt.ocpp_port}/ocpp/CS-P2", "CS-P2",
            headers=basic_auth("CS-P2", PASSWORD),
        )  # fmt: skip
        # profile 2 without its password, and with a wrong one
        await refused(node, 401, "InvalidPassword", wss(node, "CS-P2"), "CS-P2",
                      ssl_ctx=lab.client())  # fmt: skip
        with pytest.raises(InvalidStatus):
            await boot(wss(node, "CS-P2"), "CS-P2", ssl_ctx=lab.client(),
                       headers=basic_auth("CS-P2", "wrong-password-00001"))  # fmt: skip
        # an unknown station
        await refused(node, 404, "UnknownStation", wss(node, "CS-X"), "CS-X",
                      ssl_ctx=lab.client())  # fmt: skip
        # the right station still boots after all that
        assert await boot(wss(node, "CS-B"), "CS-B", ssl_ctx=lab.client(b_pair)) == "Accepted"
        assert (await node.station("CS-A"))["security_profile_reached"] is None


@pytest.mark.parametrize("which", ["wrong CA", "expired"])
async def test_certificates_ssl_refuses_in_the_handshake(database_url, lab, which):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-A", 3, password=None)
        if which == "wrong CA":
            pair = lab.station_pair("CS-A", ca=other_ca())
        else:
            pair = lab.station_pair("CS-A", expired=True)
        with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
            await boot(wss(node, "CS-A"), "CS-A", ssl_ctx=lab.client(pair))
        events = await node.wait_for(lambda: security_events(node, "InvalidCertificate"))
        assert events[-1]["detail"]["source"] == "127.0.0.1"
        assert "certificate" in events[-1]["detail"]["reason"].lower()
        assert not (await node.station("CS-A"))["connected"]


async def test_no_downgrade_from_3_to_2(database_url, lab):
    async with tls_node(database_url, lab) as node:
        # registered as profile 2 with a password; it once connected with a certificate
        await register(node, "CS-D", 2)
        pair = lab.station_pair("CS-D")
        assert await boot(wss(node, "CS-D"), "CS-D", ssl_ctx=lab.client(pair)) == "Accepted"
        assert (await node.station("CS-D"))["security_profile_reached"] == 3
        ev = await refused(
            node, 403, "ProfileDowngrade", wss(node, "CS-D"), "CS-D",
            ssl_ctx=lab.client(), headers=basic_auth("CS-D", PASSWORD),
        )  # fmt: skip
        assert ev["station_id"] == "CS-D" and ev["detail"]["profile"] == 2


async def test_profile_1_keeps_plain_ws_beside_tls(database_url, lab):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-1", 1, password=None)
        plain = f"ws://127.0.0.1:{node.rt.ocpp_port}/ocpp/CS-1"
        assert await boot(plain, "CS-1", "1.6") == "Accepted"
        assert (await node.station("CS-1"))["security_profile_reached"] == 1


async def test_the_station_api_sets_and_shows_the_profile(database_url, lab):
    async with tls_node(database_url, lab) as node:
        r = await node.http.post("/api/v1/stations", json={"id": "CS-API", "security_profile": 2})
        assert r.status_code == 422 and "needs a password" in r.text
        body = {"id": "CS-API", "security_profile": 2, "password": PASSWORD}
        r = await node.http.post("/api/v1/stations", json=body)
        assert r.status_code == 201, r.text
        assert (r.json()["security_profile"], r.json()["security_profile_reached"]) == (2, None)
        r = await node.http.patch("/api/v1/stations/CS-API", json={"clear_password": True})
        assert r.status_code == 422 and "needs a password" in r.text
        status = await boot(
            wss(node, "CS-API"), "CS-API", ssl_ctx=lab.client(),
            headers=basic_auth("CS-API", PASSWORD),
        )  # fmt: skip
        assert status == "Accepted"
        patch = {"security_profile": 3, "serial_number": "SN-API"}
        r = await node.http.patch("/api/v1/stations/CS-API", json=patch)
        assert r.status_code == 200, r.text
        st = r.json()
        assert (st["security_profile"], st["security_profile_reached"]) == (3, 2)
        # the change reaches the endpoint at once: profile 3 wants a certificate now
        await refused(
            node, 401, "InvalidCertificate", wss(node, "CS-API"), "CS-API",
            ssl_ctx=lab.client(), headers=basic_auth("CS-API", PASSWORD),
        )  # fmt: skip
        pair = lab.station_pair("SN-API")
        assert await boot(wss(node, "CS-API"), "CS-API", ssl_ctx=lab.client(pair)) == "Accepted"


async def test_certificates_refused_in_the_handshake_count_as_failed_logins(database_url, lab):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-R", 3, password=None)
        rogue = lab.client(lab.station_pair("CS-R", ca=other_ca()))
        for _ in range(node.rt.ocpp.limiter.max_failures):
            with pytest.raises((ssl.SSLError, OSError, InvalidHandshake)):
                await boot(wss(node, "CS-R"), "CS-R", ssl_ctx=rogue)
        await node.wait_for(lambda: node.rt.ocpp.limiter.blocked(["ip:127.0.0.1"]))
        good = lab.client(lab.station_pair("CS-R"))
        with pytest.raises(InvalidStatus) as err:  # the source waits, even with a good one
            await boot(wss(node, "CS-R"), "CS-R", ssl_ctx=good)
        assert err.value.response.status_code == 429


async def test_a_certificate_issued_to_another_station_never_opens_this_one(database_url, lab):
    async with tls_node(database_url, lab) as node:
        await register(node, "CS-OLD", 3, password=None)
        await register(node, "CS-NEW", 3, password=None, serial="SN-9")
        pair = lab.station_pair("SN-9")  # its names fit CS-NEW (CN = its serial number)
        issued = pki.info(pki.load_cert(pair[0]))

        async def job(s):  # ... but the store has it as issued to CS-OLD
            s.add(Certificate(
                station_id="CS-OLD", kind="ChargingStationCertificate", status="Accepted",
                sha256=issued.sha256, common_name="SN-9", created_at=utcnow(),
            ))  # fmt: skip

        await node.rt.writer.submit(job)
        ev = await refused(
            node, 403, "CertificateForOtherStation", wss(node, "CS-NEW"), "CS-NEW",
            ssl_ctx=lab.client(pair),
        )  # fmt: skip
        assert "CS-OLD" in ev["detail"]["reason"]
        fresh = lab.station_pair("SN-9")
        assert await boot(wss(node, "CS-NEW"), "CS-NEW", ssl_ctx=lab.client(fresh)) == "Accepted"
