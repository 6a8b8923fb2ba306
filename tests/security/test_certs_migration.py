"""Moving a station to security profile 2 or 3 over OCPP (POST .../security-profile):
the messages sent, the stored profile raised only when the station accepts, never
lowered without force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509

from conftest import running_node
from evflex.security import pki
from evflex.store.tables import Station
from ocpp_clients import connected
from security.certs_stations import CPO, STATIONS, SUBPROTOCOL, set_profile


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"


async def stored(node, sid: str) -> tuple[int | None, int | None]:
    async with node.rt.sessionmaker() as s:
        row = await s.get(Station, sid)
        return row.security_profile, row.security_profile_reached


async def migrate(node, sid: str, **body):
    return await node.http.post(f"/api/v1/stations/{sid}/security-profile", json=body)


async def test_1_6_change_configuration_raises_the_profile_only_when_accepted(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "M16", "ocpp1.6") as cp:
            cp.answers["ChangeConfiguration"] = "Rejected"
            r = await migrate(node, "M16", profile=2)
            assert r.status_code == 200, r.text
            assert r.json()["accepted"] is False and r.json()["security_profile"] == 1
            assert (await stored(node, "M16"))[0] is None

            cp.answers["ChangeConfiguration"] = "Accepted"
            r = await migrate(node, "M16", profile=2)
            assert r.status_code == 200 and r.json()["accepted"] is True
            assert r.json()["previous_profile"] == 1 and r.json()["security_profile"] == 2
            assert cp.received[-1] == (
                "ChangeConfiguration",
                {"key": "SecurityProfile", "value": "2"},
            )
            assert cp.config["SecurityProfile"] == "2"
            assert (await stored(node, "M16"))[0] == 2


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_2x_new_network_profile_then_priority_then_reset(sqlite_url, version):
    sid = f"M{version}"
    url = "wss://csms.example:9443/ocpp"
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS[version], node.ocpp_url, sid, SUBPROTOCOL[version]) as cp:
            r = await migrate(node, sid, profile=2)
            assert r.status_code == 400 and "csms_url" in r.json()["detail"]
            assert cp.received == []

            r = await migrate(node, sid, profile=2, csms_url="ws://csms.example:9000/ocpp")
            assert r.status_code == 400 and "wss://" in r.json()["detail"]
            assert cp.received == []

            r = await migrate(node, sid, profile=2, csms_url=url)
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["accepted"] is True and out["security_profile"] == 2
            assert [s["action"] for s in out["steps"]] == [
                "GetVariables", "SetNetworkProfile", "SetVariables", "Reset",
            ]  # fmt: skip
            assert cp.actions() == ["GetVariables", "SetNetworkProfile", "SetVariables", "Reset"]
            network = dict(cp.received)["SetNetworkProfile"]
            assert network["slot"] == 2  # one above the slot in use
            assert network["ocpp_csms_url"] == url and network["security_profile"] == 2
            assert network["ocpp_version"] == ("OCPP20" if version == "2.0.1" else "OCPP21")
            priority = cp.variables[("OCPPCommCtrlr", "NetworkConfigurationPriority")]
            assert priority == "2,1"
            assert dict(cp.received)["Reset"] == {"type": "OnIdle"}
            assert (await stored(node, sid))[0] == 2


async def test_2x_refused_network_profile_keeps_the_stored_profile(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["2.0.1"], node.ocpp_url, "MREF", "ocpp2.0.1") as cp:
            cp.answers["SetNetworkProfile"] = "Rejected"
            r = await migrate(node, "MREF", profile=2, csms_url="wss://x/ocpp")
            assert r.status_code == 200 and r.json()["accepted"] is False
            assert "SetVariables" not in cp.actions() and "Reset" not in cp.actions()
            assert (await stored(node, "MREF"))[0] is None

            cp.answers.pop("SetNetworkProfile")
            cp.answers["SetVariables"] = "Rejected"
            r = await migrate(node, "MREF", profile=2, csms_url="wss://x/ocpp", slot=5)
            assert r.json()["accepted"] is False and "Reset" not in cp.actions()
            assert (await stored(node, "MREF"))[0] is None


async def test_lowering_needs_force_and_is_a_security_event(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "LOW", "ocpp1.6") as cp:
            await set_profile(node, "LOW", 2)
            r = await migrate(node, "LOW", profile=1)
            assert r.status_code == 409 and "force" in r.json()["detail"]
            assert cp.received == []
            assert (await stored(node, "LOW"))[0] == 2

            r = await migrate(node, "LOW", profile=1, force=True)
            assert r.status_code == 200 and r.json()["security_profile"] == 1
            assert (await stored(node, "LOW"))[0] == 1
            r = await node.http.get("/api/v1/events", params={"kind": "Security"})
            (event,) = [e for e in r.json() if e["type"] == "ProfileDowngrade"]
            assert event["station_id"] == "LOW" and "from 2 to 1" in event["detail"]["reason"]
            assert event["detail"]["source"] == "127.0.0.1"  # the API client


async def test_profile_3_needs_a_valid_certificate(sqlite_url):
    ca_cert, ca_key = pki.make_ca("Test CA", CPO)
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "P3", "ocpp1.6") as cp:
            await set_profile(node, "P3", 2)
            r = await migrate(node, "P3", profile=3)
            assert r.status_code == 409 and "certificate" in r.json()["detail"]
            assert cp.received == []

            subject = x509.Name.from_rfc4514_string(f"CN=P3,O={CPO}")
            for status, days in (("Rejected", 365), ("Accepted", -1)):  # neither counts
                start = datetime.now(UTC) - timedelta(days=2)
                cert = pki.issue(ca_cert, ca_key, subject, cp.key.public_key(), days=days + 2,
                                 not_before=start if days < 0 else None)  # fmt: skip
                await node.rt.certificates.record(
                    "P3", "ChargingStationCertificate", cert, status, pki.cert_pem(cert)
                )
            r = await migrate(node, "P3", profile=3)
            assert r.status_code == 409 and cp.received == []

            cert = pki.issue(ca_cert, ca_key, subject, cp.key.public_key())
            await node.rt.certificates.record(
                "P3", "ChargingStationCertificate", cert, "Accepted", pki.cert_pem(cert)
            )
            r = await migrate(node, "P3", profile=3)
            assert r.status_code == 200 and r.json()["accepted"] is True
            assert (await stored(node, "P3"))[0] == 3


async def test_unknown_or_offline_station(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        r = await migrate(node, "NOBODY", profile=2)
        assert r.status_code == 404
        async with connected(STATIONS["1.6"], node.ocpp_url, "GONE", "ocpp1.6"):
            pass
        await node.wait_for(lambda: not node.rt.ocpp.is_connected("GONE"))
        r = await migrate(node, "GONE", profile=2)
        assert r.status_code == 409 and "not connected" in r.json()["detail"]
        r = await migrate(node, "GONE", profile=4)
        assert r.status_code == 422


async def test_only_admins_move_a_station(sqlite_url):
    async with running_node(sqlite_url, allow_unknown_stations=True) as node:
        async with connected(STATIONS["1.6"], node.ocpp_url, "ROLE", "ocpp1.6") as cp:
            operator = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('operator')}"}
            r = await node.http.post(
                "/api/v1/stations/ROLE/security-profile", json={"profile": 2}, headers=operator
            )
            assert r.status_code == 403
            assert cp.received == []
            r = await node.http.get("/api/v1/stations/ROLE/certificates", headers=operator)
            assert r.status_code == 200 and r.json() == []
