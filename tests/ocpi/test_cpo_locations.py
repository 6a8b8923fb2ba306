"""OCPI Locations, our CPO role: sites and stations as Locations, GET (list, one, unknown)
and live pushes to a Locations Receiver (status, offline, a partner that registers)."""

from __future__ import annotations

import httpx
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201

from conftest import running_node
from ocpi.partner import RecordingPartner
from ocpp_clients import Lib16, Lib201, connected

SITE = {
    "id": "DEPOT", "name": "Depot Nord", "import_limit_kw": 100, "phases": 3, "voltage": 230,
    "address": "Hauptstrasse 1", "city": "Berlin", "postal_code": "10115", "country": "DEU",
    "latitude": 52.52, "longitude": 13.405, "time_zone": "Europe/Berlin",
}  # fmt: skip


async def _setup(node) -> None:
    r = await node.http.post("/api/v1/sites", json=SITE)
    assert r.status_code == 201, r.text
    for body in ({"id": "CP16", "site_id": "DEPOT", "evse_max_current_a": 16},
                 {"id": "CP201", "site_id": "DEPOT", "phases": 1},
                 {"id": "LONE"}):  # fmt: skip
        r = await node.http.post("/api/v1/stations", json=body)
        assert r.status_code == 201, r.text


async def _boot16(cp) -> None:
    await cp.call(call16.BootNotification(charge_point_vendor="Acme", charge_point_model="AC"))
    for conn in (0, 1, 2):
        await cp.call(call16.StatusNotification(connector_id=conn, error_code="NoError",
                                                status="Available"))  # fmt: skip


async def _boot201(cp) -> None:
    await cp.call(call201.BootNotification(
        charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"))  # fmt: skip
    await cp.call(call201.StatusNotification(timestamp="2026-03-01T07:00:00Z",
                  connector_status="Available", evse_id=1, connector_id=1))  # fmt: skip


def _client(node, partner) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1",
                             headers=partner.auth_header())  # fmt: skip


async def test_locations_get_and_live_pushes(database_url):
    partner = await RecordingPartner([("locations", "RECEIVER")]).start()
    try:
        async with running_node(database_url) as node:
            pid = await partner.link(node)
            await _setup(node)  # each station added: its Location PUT (no EVSE known yet)
            for bad, field in (({"country": "de"}, "country"), ({"latitude": 91}, "latitude"),
                               ({"time_zone": "Mars/Olympus"}, "time_zone"),
                               ({"address": "x" * 46}, "address")):  # fmt: skip
                r = await node.http.patch("/api/v1/sites/DEPOT", json=bad)
                assert r.status_code == 422 and field in r.text, (bad, r.text)
            site = (await node.http.get("/api/v1/sites/DEPOT")).json()
            assert {k: site[k] for k in SITE} == SITE  # nothing lost, nothing half-written
            await node.wait_for(lambda: len(partner.of("locations", "PUT")) == 3)
            assert {r.path.rsplit("/", 1)[1] for r in partner.received} == {"DEPOT", "LONE"}
            async with (
                connected(Lib16, node.ocpp_url, "CP16", "ocpp1.6") as cp16,
                connected(Lib201, node.ocpp_url, "CP201", "ocpp2.0.1") as cp201,
                _client(node, partner) as c,
            ):
                await _boot16(cp16)
                await _boot201(cp201)
                # the first status of each EVSE puts the EVSE
                uids = {"CP16-1", "CP16-2", "CP201-1"}
                await node.wait_for(lambda: uids <= {r.path.rsplit("/", 1)[1]
                                                     for r in partner.of("locations", "PUT")})  # fmt: skip

                r = await c.get("/locations", params={"limit": 1})
                assert r.status_code == 200 and r.json()["status_code"] == 1000, r.text
                assert r.headers["X-Total-Count"] == "2" and r.headers["X-Limit"] == "100"
                assert "offset=1" in r.headers["Link"] and 'rel="next"' in r.headers["Link"]
                [depot] = r.json()["data"]
                assert depot["id"] == "DEPOT" and depot["publish"] is True
                assert (depot["country_code"], depot["party_id"]) == ("NL", "EVF")
                assert (depot["address"], depot["city"], depot["postal_code"],
                        depot["country"]) == ("Hauptstrasse 1", "Berlin", "10115", "DEU")  # fmt: skip
                assert depot["coordinates"] == {"latitude": "52.520000", "longitude": "13.405000"}
                assert depot["time_zone"] == "Europe/Berlin"
                evses = {e["uid"]: e for e in depot["evses"]}
                assert set(evses) == {"CP16-1", "CP16-2", "CP201-1"}  # EVSE 0 is the station
                assert {e["status"] for e in evses.values()} == {"AVAILABLE"}
                assert evses["CP16-1"]["evse_id"] == "NL*EVF*ECP16*1"
                assert "REMOTE_START_STOP_CAPABLE" in evses["CP16-1"]["capabilities"]
                [plug] = evses["CP16-1"]["connectors"]
                assert plug == {
                    "id": "1", "standard": "IEC_62196_T2", "format": "SOCKET",
                    "power_type": "AC_3_PHASE", "max_voltage": 230, "max_amperage": 16,
                    "max_electric_power": 230 * 16 * 3, "tariff_ids": [],
                    "last_updated": plug["last_updated"],
                }  # fmt: skip
                one_phase = evses["CP201-1"]["connectors"][0]
                assert one_phase["power_type"] == "AC_1_PHASE" and one_phase["max_amperage"] == 32
                assert one_phase["max_electric_power"] == 230 * 32
                assert depot["last_updated"] >= max(e["last_updated"] for e in evses.values())

                r = await c.get("/locations/", params={"offset": 1, "limit": 1})
                [lone] = r.json()["data"]
                assert lone["id"] == "LONE" and lone["publish"] is False  # no coordinates
                assert lone["evses"] == [] and lone["country"] == "NLD" and "Link" not in r.headers
                # date_to before everything: nothing; date_from far back: both
                r = await c.get("/locations", params={"date_to": "2000-01-01T00:00:00Z"})
                assert r.json()["data"] == [] and r.headers["X-Total-Count"] == "0"
                r = await c.get("/locations", params={"date_from": "2000-01-01T00:00:00"})
                assert r.headers["X-Total-Count"] == "2"

                r = await c.get("/locations/DEPOT/CP16-2")
                assert r.json()["data"]["uid"] == "CP16-2"
                r = await c.get("/locations/DEPOT/CP201-1/1")
                assert r.json()["data"]["power_type"] == "AC_1_PHASE"
                for path in ("/locations/NOPE", "/locations/DEPOT/CP16-9",
                             "/locations/LONE/CP16-1", "/locations/DEPOT/CP16-1/7"):  # fmt: skip
                    r = await c.get(path)
                    assert r.status_code == 404, path
                    assert r.json()["status_code"] == 2003 and r.json()["status_message"], path
                r = await c.get("/locations", params={"offset": -1})
                assert r.status_code == 200 and r.json()["status_code"] == 2001

                # a StatusNotification Charging: a PATCH of that EVSE, status only
                before = len(partner.received)
                await cp16.call(call16.StatusNotification(connector_id=2, error_code="NoError",
                                                          status="Charging"))  # fmt: skip
                await node.wait_for(lambda: len(partner.received) > before)
                last = partner.received[-1]
                assert (last.method, last.path) == (
                    "PATCH",
                    "/ocpi/2.2.1/locations/NL/EVF/DEPOT/CP16-2",
                )
                assert set(last.body) == {"status", "last_updated"}
                assert last.body["status"] == "CHARGING"
                # the same status again is no change: nothing is pushed
                await cp16.call(call16.StatusNotification(connector_id=2, error_code="NoError",
                                                          status="SuspendedEV"))  # fmt: skip
                r = await c.get("/locations/DEPOT/CP16-2")
                assert r.json()["data"]["status"] == "CHARGING"
                # the whole station faulted (connector 0): every EVSE of it OUTOFORDER
                await cp16.call(call16.StatusNotification(connector_id=0, error_code="OtherError",
                                                          status="Faulted"))  # fmt: skip
                await node.wait_for(lambda: {r.path.rsplit("/", 1)[1] for r in partner.received
                                             if r.method == "PATCH"
                                             and r.body["status"] == "OUTOFORDER"}
                                    == {"CP16-1", "CP16-2"})  # fmt: skip
                assert len([r for r in partner.received if r.body.get("status") == "CHARGING"]) == 1
            # both stations gone: every EVSE UNKNOWN
            await node.wait_for(lambda: {r.path.rsplit("/", 1)[1] for r in partner.received
                                         if r.method == "PATCH" and r.body["status"] == "UNKNOWN"}
                                == {"CP16-1", "CP16-2", "CP201-1"})  # fmt: skip
            async with _client(node, partner) as c:
                r = await c.get("/locations/DEPOT")
                assert {e["status"] for e in r.json()["data"]["evses"]} == {"UNKNOWN"}
                r = await c.get("/locations", headers={"Authorization": "Token nope"})
                assert r.status_code == 401

            # a station leaves its site, another is deleted: their EVSEs are REMOVED where
            # they were, and the station on its own is a Location of its own
            before = len(partner.received)
            r = await node.http.patch("/api/v1/stations/CP201", json={"site_id": None})
            assert r.status_code == 200, r.text
            assert (await node.http.delete("/api/v1/stations/CP16")).status_code == 204
            await node.wait_for(lambda: len(partner.received) >= before + 4)
            depot = "/ocpi/2.2.1/locations/NL/EVF/DEPOT/"
            removed = {r.path.removeprefix(depot) for r in partner.received[before:]
                       if r.method == "PATCH" and r.body["status"] == "REMOVED"}  # fmt: skip
            assert removed == {"CP201-1", "CP16-1", "CP16-2"}
            put = [r for r in partner.received[before:] if r.method == "PUT"]
            assert [r.path for r in put] == ["/ocpi/2.2.1/locations/NL/EVF/CP201"]
            assert [e["uid"] for e in put[0].body["evses"]] == ["CP201-1"]

            # a partner registering gets every Location, whole
            late = await RecordingPartner([("locations", "RECEIVER")], party_id="LAT").start()
            try:
                late_id = await late.link(node)
                node.rt.bus.publish("ocpi.partner.registered", None, partner_id=late_id)
                await node.wait_for(lambda: len(late.of("locations")) >= 2)
                assert {(r.method, r.path) for r in late.received} == {
                    ("PUT", "/ocpi/2.2.1/locations/NL/EVF/CP201"),
                    ("PUT", "/ocpi/2.2.1/locations/NL/EVF/LONE"),
                }
                assert pid != late_id
            finally:
                await late.stop()
    finally:
        await partner.stop()
