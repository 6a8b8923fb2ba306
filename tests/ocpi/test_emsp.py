"""The eMSP role: Locations, Sessions, CDRs and Tariffs received from a CPO partner;
our cards as Tokens (list, real-time authorization, pushes); commands sent and their
results received. The CPO is a real little OCPI server (RecordingPartner)."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest
from fastapi import Request

from conftest import running_node
from evflex.ocpi.client import PartnerError
from evflex.ocpi.emsp import tokens as emsp_tokens
from evflex.ocpi.emsp.commands import command_of, send_command
from evflex.ocpi.emsp.receivers import stored
from evflex.ocpi.partners import get as get_partner
from evflex.store import repo
from evflex.store.ocpi_tables import OcpiObject
from ocpi.partner import RecordingPartner, ok

BASE = "/ocpi/emsp/2.2.1"


def example(name: str, **fields) -> dict:
    """A copy of one of the objects below, with ``fields`` changed."""
    return copy.deepcopy(OBJECTS[name]) | fields


LOCATION = {
    "country_code": "BE", "party_id": "BEC", "id": "LOC1", "publish": True,
    "name": "Gent Zuid", "address": "F.Rooseveltlaan 3A", "city": "Gent",
    "postal_code": "9000", "country": "BEL",
    "coordinates": {"latitude": "51.047599", "longitude": "3.729944"},
    "evses": [{
        "uid": "3256", "evse_id": "BE*BEC*E041503001", "status": "AVAILABLE",
        "connectors": [{"id": "1", "standard": "IEC_62196_T2", "format": "CABLE",
                        "power_type": "AC_3_PHASE", "max_voltage": 220, "max_amperage": 16,
                        "last_updated": "2015-03-16T10:10:02Z"}],
        "last_updated": "2015-06-28T08:12:01Z",
    }],
    "time_zone": "Europe/Brussels", "last_updated": "2015-06-29T20:39:09Z",
}  # fmt: skip
SESSION = {
    "country_code": "BE", "party_id": "BEC", "id": "101",
    "start_date_time": "2015-06-29T22:39:09Z", "kwh": 0.0,
    "cdr_token": {"uid": "123abc", "type": "RFID", "contract_id": "NL-TST-C12345678-S"},
    "auth_method": "WHITELIST", "location_id": "LOC1", "evse_uid": "3256",
    "connector_id": "1", "currency": "EUR", "total_cost": {"excl_vat": 2.5},
    "status": "PENDING", "last_updated": "2015-06-29T22:39:09Z",
}  # fmt: skip
CDR = {
    "country_code": "BE", "party_id": "BEC", "id": "12345",
    "start_date_time": "2015-06-29T21:39:09Z", "end_date_time": "2015-06-29T23:37:32Z",
    "cdr_token": {"uid": "012345678", "type": "RFID", "contract_id": "DE8ACC12E46L89"},
    "auth_method": "WHITELIST",
    "cdr_location": {"id": "LOC1", "name": "Gent Zuid", "address": "F.Rooseveltlaan 3A",
                     "city": "Gent", "postal_code": "9000", "country": "BEL",
                     "coordinates": {"latitude": "3.729944", "longitude": "51.047599"},
                     "evse_uid": "3256", "evse_id": "BE*BEC*E041503003", "connector_id": "1",
                     "connector_standard": "IEC_62196_T2", "connector_format": "SOCKET",
                     "connector_power_type": "AC_1_PHASE"},
    "currency": "EUR",
    "charging_periods": [{"start_date_time": "2015-06-29T21:39:09Z",
                          "dimensions": [{"type": "TIME", "volume": 1.973}],
                          "tariff_id": "12"}],
    "total_cost": {"excl_vat": 4.00, "incl_vat": 4.40}, "total_energy": 15.342,
    "total_time": 1.973, "total_parking_time": 0.0, "last_updated": "2015-06-29T22:01:13Z",
}  # fmt: skip
TARIFF = {
    "country_code": "DE", "party_id": "ALL", "id": "12", "currency": "EUR",
    "elements": [{"price_components": [{"type": "TIME", "price": 2.00, "vat": 10.0,
                                        "step_size": 300}]}],
    "last_updated": "2015-06-29T20:39:09Z",
}  # fmt: skip
# an EVSE as the spec's "add an EVSE" example sends it: connectors without power fields
EVSE = {
    "uid": "3257", "evse_id": "BE*BEC*E041503003", "status": "AVAILABLE",
    "capabilities": ["RESERVABLE"],
    "connectors": [{"id": "1", "standard": "IEC_62196_T2", "format": "SOCKET",
                    "tariff_ids": ["14"]}],
    "floor": -1, "physical_reference": 3, "last_updated": "2019-06-24T12:39:09Z",
}  # fmt: skip
OBJECTS = {"location": LOCATION, "evse": EVSE, "session": SESSION, "cdr": CDR,
           "tariff": TARIFF}  # fmt: skip

CPO = dict(role="CPO", country_code="BE", party_id="BEC")


def db(tmp_path, name="e") -> str:
    return f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"


def as_partner(node, partner: RecordingPartner) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.rt.http_port}{BASE}",
                             headers=partner.auth_header(), timeout=10)  # fmt: skip


async def rows(node, module: str) -> list[OcpiObject]:
    async with node.rt.sessionmaker() as s:
        return list((await s.scalars(OcpiObject.__table__.select().where(
            OcpiObject.module == module))).all())  # fmt: skip


def code(r: httpx.Response) -> int:
    return r.json()["status_code"]


async def test_locations_are_stored_merged_and_refused_when_malformed(tmp_path):
    cpo = await RecordingPartner([("locations", "SENDER")], **CPO).start()
    try:
        async with running_node(db(tmp_path)) as node, as_partner(node, cpo) as c:
            await cpo.link(node)
            loc = example("location")
            # lower case party in the URL (and the body): stored upper case
            body = {**loc, "country_code": "be", "party_id": "bec", "x_vendor": {"a": 1}}
            r = await c.put("/locations/be/bec/LOC1", json=body)
            assert r.status_code == 200 and code(r) == 1000, r.text
            r = await c.put("/locations/BE/BEC/LOC1", json=body)  # the same again: one row
            assert code(r) == 1000 and len(await rows(node, "locations")) == 1
            got = (await c.get("/locations/BE/BEC/LOC1")).json()["data"]
            assert got["country_code"] == "BE" and got["x_vendor"] == {"a": 1}  # kept
            assert got["evses"][0]["uid"] == "3256"

            # an EVSE of its own URL (the spec's "add an EVSE" example) joins the Location
            evse = example("evse", uid="NEW1",
                           last_updated="2030-01-01T00:00:00Z")  # fmt: skip
            r = await c.put("/locations/BE/BEC/LOC1/NEW1", json=evse)
            assert code(r) == 1000, r.text
            # a status PATCH on a connector: the connector, its EVSE and Location change
            r = await c.patch(
                "/locations/BE/BEC/LOC1/NEW1/1",
                json={"max_amperage": 32, "last_updated": "2030-01-02T00:00:00Z"},
            )
            assert code(r) == 1000, r.text
            r = await c.patch(
                "/locations/BE/BEC/LOC1/NEW1",
                json={"status": "CHARGING", "last_updated": "2030-01-03T00:00:00Z"},
            )
            assert code(r) == 1000, r.text
            stored_loc = await stored(node.rt.ocpi, "locations", "be", "bec", "LOC1")
            uids = [e["uid"] for e in loc["evses"]]
            assert [e["uid"] for e in stored_loc["evses"]] == uids + ["NEW1"]
            new = stored_loc["evses"][-1]
            assert new["status"] == "CHARGING" and new["connectors"][0]["max_amperage"] == 32
            assert new["connectors"][0]["tariff_ids"] == ["14"]  # the rest as it was
            assert stored_loc["last_updated"] == "2030-01-03T00:00:00Z"
            conn = (await c.get("/locations/BE/BEC/LOC1/NEW1/1")).json()["data"]
            assert conn["last_updated"] == "2030-01-02T00:00:00Z"
            # a PUT of the whole Location replaces it (EVSEs included), as the spec says
            r = await c.put("/locations/BE/BEC/LOC1", json=body)
            assert code(r) == 1000
            again = await stored(node.rt.ocpi, "locations", "BE", "BEC", "LOC1")
            assert [e["uid"] for e in again["evses"]] == uids
            assert again["last_updated"] == body["last_updated"]

            # refusals, each naming what is wrong; nothing stored
            r = await c.patch("/locations/BE/BEC/LOC1", json={"name": "no timestamp"})
            assert code(r) == 2001 and "last_updated" in r.json()["status_message"]
            r = await c.patch(
                "/locations/BE/BEC/NOPE", json={"last_updated": "2030-01-01T00:00:00Z"}
            )
            assert code(r) == 2003 and "NOPE" in r.json()["status_message"]
            r = await c.put("/locations/BE/BEC/NOPE/E1", json=evse | {"uid": "E1"})
            assert code(r) == 2003
            assert code(await c.get("/locations/BE/BEC/LOC1/GONE")) == 2003
            r = await c.put("/locations/BE/BEC/LOC2", json=loc)  # id differs from the URL
            assert code(r) == 2001 and "id" in r.json()["status_message"]
            r = await c.put("/locations/NL/XYZ/LOC1", json=loc | {"country_code": "NL",
                                                                  "party_id": "XYZ"})  # fmt: skip
            assert code(r) == 2001 and "not a party" in r.json()["status_message"]
            broken = {k: v for k, v in loc.items() if k != "coordinates"}
            r = await c.put("/locations/BE/BEC/LOC1", json=broken)
            assert r.status_code == 200 and code(r) == 2001
            assert "coordinates" in r.json()["status_message"]
            r = await c.put("/locations/BE/BEC/LOC1", content=b"{not json",
                            headers={"Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 400 and code(r) == 2001
            assert len(await rows(node, "locations")) == 1
            assert (await stored(node.rt.ocpi, "locations", "BE", "BEC", "NOPE")) is None
    finally:
        await cpo.stop()


async def test_sessions_cdrs_and_tariffs_are_stored_idempotently(database_url):
    cpo = await RecordingPartner([("sessions", "SENDER")], **CPO).start()
    try:
        async with running_node(database_url) as node, as_partner(node, cpo) as c:
            await cpo.link(node)
            sess = example("session", country_code="BE", party_id="BEC",
                           start_date_time="2015-06-29T22:39:09Z",
                           last_updated="2015-06-29T22:39:09Z")  # fmt: skip
            sid = sess["id"]
            assert code(await c.put(f"/sessions/BE/BEC/{sid}", json=sess)) == 1000
            period = {"start_date_time": "2015-06-29T22:40:00Z",
                      "dimensions": [{"type": "ENERGY", "volume": 1.5}]}  # fmt: skip
            patch = {"kwh": 1.5, "status": "ACTIVE", "charging_periods": [period],
                     "last_updated": "2015-06-29T22:41:00Z"}  # fmt: skip
            for _ in range(2):  # a repeated PATCH adds its period once
                r = await c.patch(f"/sessions/be/bec/{sid}", json=patch)
                assert code(r) == 1000, r.text
            got = (await c.get(f"/sessions/BE/BEC/{sid}")).json()["data"]
            assert got["status"] == "ACTIVE" and got["kwh"] == 1.5
            assert len(got["charging_periods"]) == 1
            r = await c.patch(f"/sessions/BE/BEC/{sid}", json={"status": "COMPLETED"})
            assert code(r) == 2001 and "last_updated" in r.json()["status_message"]
            r = await c.patch(f"/sessions/BE/BEC/{sid}", json={"status": "DONE",
                                                               "last_updated": "2030-01-01T00:00:00Z"})  # fmt: skip
            assert code(r) == 2001 and "status" in r.json()["status_message"]
            r = await c.get("/sessions/BE/BEC/unknown")
            assert r.status_code == 404 and code(r) == 2000
            r = await c.patch("/sessions/BE/BEC/unknown", json=patch)
            assert r.status_code == 404
            # a PUT replaces the periods
            r = await c.put(
                f"/sessions/BE/BEC/{sid}",
                json=sess
                | {"status": "COMPLETED", "kwh": 3.0, "last_updated": "2015-06-29T23:00:00Z"},
            )
            assert code(r) == 1000
            got = (await c.get(f"/sessions/BE/BEC/{sid}")).json()["data"]
            assert got["status"] == "COMPLETED" and got["charging_periods"] == []

            cdr = example("cdr", country_code="BE", party_id="BEC")
            r = await c.post("/cdrs", json=cdr)
            assert code(r) == 1000, r.text
            where = r.headers["Location"]
            assert where.startswith(f"http://127.0.0.1:{node.rt.http_port}{BASE}/cdrs/")
            r2 = await c.post("/cdrs/", json=cdr)  # sent again: the same answer, one row
            assert code(r2) == 1000 and r2.headers["Location"] == where
            assert len(await rows(node, "cdrs")) == 1
            r = await c.get(where)
            assert r.json()["data"]["total_energy"] == cdr["total_energy"]
            r = await c.post("/cdrs", json=cdr | {"total_energy": 99})  # cannot be replaced
            assert code(r) == 2001 and "cannot be replaced" in r.json()["status_message"]
            r = await c.post("/cdrs", json={k: v for k, v in cdr.items() if k != "total_cost"})
            assert code(r) == 2001 and "total_cost" in r.json()["status_message"]
            r = await c.post("/cdrs", json=cdr | {"country_code": "NL", "party_id": "XYZ"})
            assert code(r) == 2001
            assert (await c.get("/cdrs/999999")).status_code == 404

            tariff = example("tariff", country_code="BE", party_id="BEC")
            tid = tariff["id"]
            assert code(await c.put(f"/tariffs/BE/BEC/{tid}", json=tariff)) == 1000
            got = (await c.get(f"/tariffs/BE/BEC/{tid}")).json()["data"]
            assert got["elements"] == tariff["elements"]
            r = await c.put(f"/tariffs/BE/BEC/{tid}", json=tariff | {"elements": []})
            assert code(r) == 2001 and "elements" in r.json()["status_message"]
            for _ in range(2):  # gone, and gone again
                assert code(await c.delete(f"/tariffs/BE/BEC/{tid}")) == 1000
            assert (await c.get(f"/tariffs/BE/BEC/{tid}")).status_code == 404
    finally:
        await cpo.stop()


async def test_cards_are_listed_authorized_and_pushed_to_cpos(tmp_path):
    cpo = await RecordingPartner([("tokens", "RECEIVER")], **CPO).start()
    try:
        async with running_node(db(tmp_path), ocpi_retry_max_s=0.2) as node, \
                as_partner(node, cpo) as c:  # fmt: skip
            api = node.http
            for token, status in (("AA11", "Accepted"), ("BB22", "Blocked")):
                r = await api.post("/api/v1/id-tokens", json={"id_token": token, "status": status})
                assert r.status_code == 201, r.text
            await api.post("/api/v1/id-tokens",
                           json={"id_token": "app-user-7", "type": "Central"})  # fmt: skip
            pid = await cpo.link(node)

            r = await c.get("/tokens", params={"limit": 2})
            assert code(r) == 1000 and r.headers["X-Total-Count"] == "3"
            page = r.json()["data"]
            assert len(page) == 2 and 'rel="next"' in r.headers["Link"]
            r = await c.get("/tokens/", params={"offset": 2})
            everything = {t["uid"]: t for t in page + r.json()["data"]}
            aa = everything["AA11"]
            assert aa["valid"] and aa["type"] == "RFID" and aa["whitelist"] == "ALLOWED"
            assert aa["country_code"] == "NL" and aa["party_id"] == "EVF"
            assert aa["contract_id"] == "NL-EVF-CAA11" and aa["issuer"] == "evflex"
            assert not everything["BB22"]["valid"]
            app = everything["app-user-7"]
            assert app["type"] == "APP_USER" and app["whitelist"] == "NEVER"
            r = await c.get("/tokens", params={"date_from": "2999-01-01T00:00:00Z"})
            assert r.json()["data"] == [] and r.headers["X-Total-Count"] == "0"

            where = {"location_id": "LOC1", "evse_uids": ["3256"]}
            r = await c.post("/tokens/AA11/authorize", json=where)
            info = r.json()["data"]
            assert info["allowed"] == "ALLOWED" and info["location"] == where
            assert info["token"]["uid"] == "AA11" and info["authorization_reference"]
            r = await c.post("/tokens/aa11/authorize?type=RFID")  # case-insensitive, no body
            assert r.json()["data"]["allowed"] == "ALLOWED"
            r = await c.post("/tokens/BB22/authorize")
            assert r.json()["data"]["allowed"] == "BLOCKED" and "location" not in r.json()["data"]
            for url in ("/tokens/NOPE/authorize", "/tokens/AA11/authorize?type=APP_USER"):
                r = await c.post(url)
                assert r.status_code == 404 and code(r) == 2004 and "data" not in r.json()
            r = await c.post("/tokens/AA11/authorize?type=CARD")
            assert code(r) == 2001 and "type" in r.json()["status_message"]
            r = await c.post("/tokens/AA11/authorize", json={"evse_uids": ["x"]})
            assert code(r) == 2001 and "location_id" in r.json()["status_message"]

            # a changed card goes to the CPO at once; a removed one as not valid
            r = await api.put("/api/v1/id-tokens/AA11", json={"id_token": "AA11",
                                                               "status": "Blocked"})  # fmt: skip
            assert r.status_code == 200
            await node.wait_for(lambda: cpo.of("tokens", "PUT"))
            put = cpo.of("tokens", "PUT")[0]
            assert put.path == "/ocpi/2.2.1/tokens/NL/EVF/AA11"
            assert put.body["uid"] == "AA11" and put.body["valid"] is False
            assert (await api.delete("/api/v1/id-tokens/BB22")).status_code == 204
            await node.wait_for(lambda: len(cpo.of("tokens", "PUT")) >= 2)
            gone = cpo.of("tokens", "PUT")[1].body
            assert gone["uid"] == "BB22" and gone["valid"] is False
            # a partner that registers gets every card
            node.rt.bus.publish("ocpi.partner.registered", None, partner_id=pid)
            await node.wait_for(lambda: len(cpo.of("tokens", "PUT")) >= 4)
            assert {r.body["uid"] for r in cpo.of("tokens", "PUT")[2:]} == {"AA11", "app-user-7"}
    finally:
        await cpo.stop()


async def test_a_command_is_sent_and_its_result_received(tmp_path):
    cpo = await RecordingPartner([("commands", "RECEIVER")], **CPO).start()
    answers = {"result": "ACCEPTED", "timeout": 30}

    async def command(request: Request, name: str):
        body = await request.json()
        cpo.commands.append((name, body))
        return ok(answers)

    cpo.commands = []
    cpo.app.add_api_route("/ocpi/2.2.1/commands/{name}", command, methods=["POST"])
    cpo.app.router.routes.insert(0, cpo.app.router.routes.pop())  # before the catch-all
    try:
        async with running_node(db(tmp_path)) as node, as_partner(node, cpo) as c:
            pid = await cpo.link(node)
            async with node.rt.sessionmaker() as s:
                partner = await get_partner(s, pid)
            start = {"token": {"uid": "AA11"}, "location_id": "LOC1", "evse_uid": "S1-1"}
            cmd = await send_command(node.rt.ocpi, partner, "start_session", start)
            assert cmd.response == "ACCEPTED" and cmd.direction == "out"
            name, sent = cpo.commands[0]
            assert name == "START_SESSION" and sent["location_id"] == "LOC1"
            url = sent["response_url"]
            assert url.endswith(f"{BASE}/commands/START_SESSION/{cmd.uid}")

            result = {"result": "ACCEPTED", "message": [{"language": "en", "text": "started"}]}
            for _ in range(2):  # the same result twice: stored once, answered both times
                r = await c.post(url, json=result)
                assert code(r) == 1000, r.text
            row = await command_of(node.rt.ocpi, cmd.uid)
            assert row.result == "ACCEPTED" and row.message == "started" and row.result_at
            r = await c.post(url, json={"result": "MAYBE"})
            assert code(r) == 2001 and "result" in r.json()["status_message"]
            r = await c.post(f"{BASE}/commands/START_SESSION/nope", json=result)
            assert r.status_code == 404
            r = await c.post(url.replace("START_SESSION", "STOP_SESSION"), json=result)
            assert r.status_code == 404
            assert (await command_of(node.rt.ocpi, cmd.uid)).result == "ACCEPTED"

            answers["result"] = "REJECTED"
            cmd2 = await send_command(node.rt.ocpi, partner, "STOP_SESSION", {"session_id": "9"})
            assert cmd2.response == "REJECTED" and cmd2.uid != cmd.uid
            cpo.fail_http = 503
            cpo.app.router.routes.pop(0)  # the catch-all answers again: 503
            with pytest.raises(PartnerError) as err:
                await send_command(node.rt.ocpi, partner, "STOP_SESSION", {"session_id": "9"})
            assert err.value.retry and err.value.http_status == 503
    finally:
        await cpo.stop()


async def test_cards_changed_outside_the_api_reach_the_cpo(tmp_path, monkeypatch):
    """At the next start (changed while the node was stopped), or at the next sweep."""
    url, key = db(tmp_path), tmp_path / "ocpi.key"
    cpo = await RecordingPartner([("tokens", "RECEIVER")], **CPO).start()
    try:
        async with running_node(url, ocpi_key_file=key) as node:
            await cpo.link(node)
            r = await node.http.post("/api/v1/id-tokens", json={"id_token": "OLD1"})
            assert r.status_code == 201
            await node.wait_for(lambda: cpo.of("tokens", "PUT"))
        # as `evflex token add` does: straight into the store, no node to tell
        async with running_node(url, ocpi_key_file=key) as node:
            await node.rt.writer.submit(lambda s: repo.put_id_token(s, "NEW2", node.rt.clock.now()))
        cpo.received.clear()
        monkeypatch.setattr(emsp_tokens, "SWEEP_S", 0.2)
        async with running_node(url, ocpi_key_file=key) as node:
            await node.wait_for(lambda: cpo.of("tokens", "PUT"))
            await asyncio.sleep(0.5)  # two sweeps: nothing new to push
            assert [r.body["uid"] for r in cpo.of("tokens", "PUT")] == ["NEW2"]  # not OLD1
            now = node.rt.clock.now()
            await node.rt.writer.submit(lambda s: repo.put_id_token(s, "NEW2", now, "Blocked"))
            await node.wait_for(lambda: len(cpo.of("tokens", "PUT")) == 2)
            assert cpo.of("tokens", "PUT")[1].body["valid"] is False
    finally:
        await cpo.stop()
