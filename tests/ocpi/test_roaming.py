"""evflex roams with evflex: node A is a CPO, node B an eMSP, each on its own ports and
database. B registers with A (the credentials handshake, token A to token C), B's card
reaches A (Tokens), a driver with B's card charges at A's station, V2X included, and
B receives A's Location, the Session (COMPLETED) and the CDR with the energy taken and
given back; B starts a session at A with a command and receives its result."""

from __future__ import annotations

from datetime import UTC, datetime

from ocpp.v201 import call
from sqlalchemy import select

from conftest import running_node
from evflex.ocpi import credentials, partners
from evflex.ocpi.emsp.commands import command_of, send_command
from evflex.ocpi.emsp.receivers import stored
from evflex.ocpi.emsp.tokens import token_object
from evflex.store.ocpi_tables import OcpiObject, OcpiToken
from evflex.store.tables import IdToken
from ocpi.test_cpo_sessions import Charge
from ocpp_clients import Lib201, connected

CARD = "B0CA4D01"


async def objects(node, module: str) -> list[dict]:
    async with node.rt.sessionmaker() as s:
        rows = (await s.scalars(select(OcpiObject).where(OcpiObject.module == module))).all()
        return [r.data for r in rows]


async def test_a_driver_of_b_charges_at_a_and_b_gets_session_and_cdr(tmp_path):
    a_db, b_db = (f"sqlite+aiosqlite:///{tmp_path / f'{n}.db'}" for n in "ab")
    async with (
        running_node(a_db, allow_unknown_stations=True, ocpi_country_code="NL",
                     ocpi_party_id="CPA", ocpi_roles=["CPO"], ocpi_business_name="A",
                     ocpi_session_update_s=0.2) as a,
        running_node(b_db, ocpi_country_code="DE", ocpi_party_id="EMS", ocpi_roles=["EMSP"],
                     ocpi_business_name="B") as b,
    ):  # fmt: skip
        r = await b.http.post("/api/v1/id-tokens", json={"id_token": CARD})
        assert r.status_code == 201, r.text
        r = await a.http.post("/api/v1/sites", json={
            "id": "HUB", "import_limit_kw": 100, "import_tariff_per_kwh": 0.30,
            "export_tariff_per_kwh": 0.10})  # fmt: skip
        assert r.status_code == 201, r.text
        r = await a.http.post("/api/v1/stations", json={"id": "A-S1", "site_id": "HUB"})
        assert r.status_code in (200, 201), r.text

        # A invites B; B registers with A's token A (A learns B's endpoints, B learns A's)
        async def invite(s):
            return (await partners.invite(s, "EMSP", "DE", "EMS", a.rt.clock.now()))[1]

        token_a = await a.rt.writer.submit(invite)
        cpo = await credentials.register(b.rt.ocpi, a.rt.ocpi.versions_url, token_a)
        assert cpo.status == "registered" and (cpo.country_code, cpo.party_id) == ("NL", "CPA")

        # B's card reaches A (pushed on registration)
        async def a_has_card():
            async with a.rt.sessionmaker() as s:
                return (await s.scalars(select(OcpiToken).where(OcpiToken.uid == CARD))).first()

        copy = await a.wait_for(a_has_card, timeout=10)
        assert (copy.country_code, copy.party_id, copy.valid) == ("DE", "EMS", True)
        assert copy.contract_id == f"DE-EMS-C{CARD}"
        # A's Location reaches B
        loc = await b.wait_for(lambda: stored(b.rt.ocpi, "locations", "NL", "CPA", "HUB"),
                               timeout=10)  # fmt: skip
        assert loc["country_code"] == "NL" and loc["id"] == "HUB"

        t0 = datetime.now(UTC).replace(microsecond=0)
        async with connected(Lib201, a.ocpp_url, "A-S1", "ocpp2.0.1") as cp:
            # the station asks A; A answers from its copy of B's token
            auth = await cp.call(call.Authorize(id_token={"id_token": CARD, "type": "ISO14443"}))
            assert auth.id_token_info["status"] == "Accepted"
            tx = Charge(cp, "roam-1", CARD, t0)
            await tx.event("Started", 0, 10_000, 0)
            active = await b.wait_for(lambda: objects(b, "sessions"), timeout=10)
            assert active[0]["status"] == "ACTIVE"
            assert active[0]["cdr_token"]["uid"] == CARD
            assert active[0]["cdr_token"]["party_id"] == "EMS"
            await tx.event("Updated", 60, 16_000, 0)  # 6 kWh taken
            await tx.event("Updated", 120, 16_000, 2_000)  # 2 kWh given back (V2X)
            await tx.event("Ended", 180, 16_000, 2_000)

            async def completed():
                rows = await objects(b, "sessions")
                return rows if rows and rows[0]["status"] == "COMPLETED" else None

            session = (await b.wait_for(completed, timeout=10))[0]
            assert session["kwh"] == 6.0
            assert session["location_id"] == "HUB" and session["evse_uid"] == "A-S1-1"
            cdr = (await b.wait_for(lambda: objects(b, "cdrs"), timeout=10))[0]
            assert cdr["total_energy"] == 6.0 and cdr["evflex_total_energy_export"] == 2.0
            assert cdr["session_id"] == session["id"]
            assert cdr["total_cost"]["excl_vat"] == 1.6  # 6 x 0.30 - 2 x 0.10
            assert (cdr["country_code"], cdr["party_id"]) == ("NL", "CPA")

            # B starts a session at A's station with its card, and hears the result
            await cp.call(call.StatusNotification(
                timestamp=datetime.now(UTC).isoformat(), connector_status="Available",
                evse_id=1, connector_id=1))  # fmt: skip
            async with b.rt.sessionmaker() as s:
                card = await s.get(IdToken, CARD)
            token = token_object(b.rt.ocpi, card, b.rt.clock.now())
            cmd = await send_command(b.rt.ocpi, cpo, "START_SESSION", {
                "token": token, "location_id": "HUB", "evse_uid": "A-S1-1",
                "connector_id": "1"})  # fmt: skip
            assert cmd.response == "ACCEPTED", cmd.message

            async def result():
                row = await command_of(b.rt.ocpi, cmd.uid)
                return row if row.result else None

            done = await b.wait_for(result, timeout=10)
            assert done.result == "ACCEPTED"
            started = [kw for name, kw in cp.received if name == "RequestStartTransaction"]
            assert started and started[-1]["id_token"]["id_token"] == CARD
