"""OCPI Tariffs, our CPO role: site tariffs as OCPI Tariffs, GET and pushes (a new version
at once, a planned one when it comes into force), the Location's tariff_ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
from ocpp.v16 import call as call16

from conftest import running_node
from ocpi.partner import RecordingPartner
from ocpp_clients import Lib16, connected

TARIFF = {
    "energy_price_per_kwh": 0.30,
    "time_of_use": [
        {"start": "00:00", "end": "06:00", "price_per_kwh": 0.18},
        {"start": "17:00", "end": "24:00", "days": ["Sat", "Sun"], "price_per_kwh": 0.25},
    ],
    "feed_in_reward_per_kwh": 0.12,
    "idle_fee_per_minute": 0.10,
    "idle_grace_minutes": 30,
    "timezone": "Europe/Amsterdam",
}


async def test_tariffs_get_push_and_planned_versions(database_url):
    partner = await RecordingPartner([("tariffs", "RECEIVER"), ("locations", "RECEIVER")]).start()
    try:
        async with running_node(database_url, currency="CHF") as node:
            for body in ({"id": "DEPOT", "import_limit_kw": 50},
                         {"id": "SHOP", "import_limit_kw": 50, "import_tariff_per_kwh": 0.4,
                          "export_tariff_per_kwh": 0.05},
                         {"id": "FREEHOLD", "import_limit_kw": 50}):  # fmt: skip
                assert (await node.http.post("/api/v1/sites", json=body)).status_code == 201
            r = await node.http.post("/api/v1/stations", json={"id": "CP1", "site_id": "DEPOT"})
            assert r.status_code == 201
            pid = await partner.link(node)
            base = f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1"
            async with (
                connected(Lib16, node.ocpp_url, "CP1", "ocpp1.6") as cp,
                httpx.AsyncClient(base_url=base, headers=partner.auth_header()) as c,
            ):
                await cp.call(
                    call16.BootNotification(charge_point_vendor="A", charge_point_model="B")
                )
                await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError",
                                                        status="Available"))  # fmt: skip
                await node.wait_for(lambda: partner.of("locations", "PUT"))
                r = await c.get("/locations/DEPOT/CP1-1/1")
                assert r.json()["data"]["tariff_ids"] == []  # DEPOT has no price yet

                # only SHOP has a price (its own import/export prices)
                r = await c.get("/tariffs")
                assert r.status_code == 200 and r.headers["X-Total-Count"] == "1", r.text
                [shop] = r.json()["data"]
                assert shop["id"] == "SHOP" and shop["currency"] == "CHF"
                assert (shop["country_code"], shop["party_id"]) == ("NL", "EVF")
                assert shop["elements"] == [
                    {"price_components": [{"type": "ENERGY", "price": 0.4, "step_size": 1}]}
                ]
                assert shop["evflex_feed_in_price_per_kwh"] == 0.05
                assert "start_date_time" not in shop

                # a new version in force now: PUT at once, with every part of it
                r = await node.http.put("/api/v1/sites/DEPOT/tariff", json=TARIFF)
                assert r.status_code == 200, r.text
                await node.wait_for(lambda: partner.of("tariffs", "PUT"))
                [put] = partner.of("tariffs", "PUT")
                assert put.path == "/ocpi/2.2.1/tariffs/NL/EVF/DEPOT"
                t = put.body
                assert t["id"] == "DEPOT" and t["currency"] == "CHF"
                assert t["elements"] == [
                    {"price_components": [{"type": "ENERGY", "price": 0.18, "step_size": 1}],
                     "restrictions": {"start_time": "00:00", "end_time": "06:00"}},
                    {"price_components": [{"type": "ENERGY", "price": 0.25, "step_size": 1}],
                     "restrictions": {"start_time": "17:00", "end_time": "00:00",
                                      "day_of_week": ["SATURDAY", "SUNDAY"]}},
                    {"price_components": [{"type": "ENERGY", "price": 0.3, "step_size": 1}]},
                    {"price_components": [{"type": "PARKING_TIME", "price": 6.0, "step_size": 1}],
                     "restrictions": {"min_duration": 1800}},
                ]  # fmt: skip
                assert t["evflex_feed_in_price_per_kwh"] == 0.12
                assert t["start_date_time"].endswith("Z") and "end_date_time" not in t
                # the connectors of DEPOT's Location now name it, updated as late as it
                location = await node.wait_for(lambda: next((
                    r.body for r in partner.received
                    if r.path.endswith("/locations/NL/EVF/DEPOT") and r.method == "PUT"
                    and r.body["evses"]
                    and r.body["evses"][0]["connectors"][0]["tariff_ids"] == ["DEPOT"]), None))  # fmt: skip
                assert location["last_updated"] >= t["last_updated"]

                r = await c.get("/tariffs", params={"limit": 1})
                assert r.headers["X-Total-Count"] == "2" and 'rel="next"' in r.headers["Link"]
                assert [x["id"] for x in r.json()["data"]] == ["DEPOT"]
                since = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
                r = await c.get("/tariffs", params={"date_from": since})
                assert r.json()["data"] == []
                r = await c.get("/tariffs", params={"offset": -1})
                assert r.status_code == 200 and r.json()["status_code"] == 2001
                r = await c.get("/tariffs", params={"date_to": "yesterday"})
                assert r.json()["status_code"] == 2001

                # a version planned 1.5 s ahead: the one in force says when it ends, and
                # the new one is pushed once it is in force
                start = datetime.now(UTC) + timedelta(seconds=1.5)
                planned = {"energy_price_per_kwh": 0.35, "valid_from": start.isoformat()}
                r = await node.http.put("/api/v1/sites/DEPOT/tariff", json=planned)
                assert r.status_code == 200, r.text
                r = await c.get("/tariffs")
                depot = r.json()["data"][0]
                assert depot["elements"][2]["price_components"][0]["price"] == 0.3
                assert depot["end_date_time"][:19] == start.strftime("%Y-%m-%dT%H:%M:%S")
                assert len(partner.of("tariffs", "PUT")) == 1  # not yet
                await node.wait_for(lambda: len(partner.of("tariffs", "PUT")) == 2, timeout=8)
                t = partner.of("tariffs", "PUT")[1].body
                assert t["elements"] == [
                    {"price_components": [{"type": "ENERGY", "price": 0.35, "step_size": 1}]}
                ]
                assert "end_date_time" not in t
                # and the Location is pushed again, last updated when the version began
                await node.wait_for(lambda: any(
                    r.method == "PUT" and r.path.endswith("/locations/NL/EVF/DEPOT")
                    and r.body["last_updated"] >= t["last_updated"] == t["start_date_time"]
                    for r in partner.received))  # fmt: skip

            # a partner that registers gets every Tariff there is
            node.rt.bus.publish("ocpi.partner.registered", None, partner_id=pid)
            await node.wait_for(lambda: len(partner.of("tariffs", "PUT")) == 4)
            assert {r.path.rsplit("/", 1)[1] for r in partner.of("tariffs")[2:]} == {
                "DEPOT",
                "SHOP",
            }
    finally:
        await partner.stop()
