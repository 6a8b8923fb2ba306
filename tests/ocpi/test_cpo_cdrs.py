"""OCPI CPO CDRs: a V2X session of a partner's token at a real 2.0.1 station ends in a CDR
POSTed to that partner (import and export apart, priced with the site's tariff), listed
for it alone; a CDR that never reached the outbox is queued at the next start."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from sqlalchemy import delete

from conftest import running_node
from evflex.store.ocpi_tables import OcpiOutbox
from ocpi.partner import RecordingPartner
from ocpi.test_cpo_sessions import Charge, add_token
from ocpp_clients import Lib201, connected


async def test_cdr_of_a_v2x_session_is_posted_listed_and_caught_up(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    key = tmp_path / "ocpi.key"
    a = await RecordingPartner([("cdrs", "RECEIVER")], party_id="AAA").start()
    b = await RecordingPartner([("cdrs", "RECEIVER")], party_id="BBB").start()
    try:
        async with running_node(url, allow_unknown_stations=True, ocpi_key_file=key) as node:
            pa = await a.link(node)
            await b.link(node)
            await add_token(node, pa, "V2X-CARD", pid="AAA")
            r = await node.http.post("/api/v1/sites", json={
                "id": "HUB", "import_limit_kw": 100, "import_tariff_per_kwh": 0.30,
                "export_tariff_per_kwh": 0.10})  # fmt: skip
            assert r.status_code == 201, r.text
            r = await node.http.post("/api/v1/stations", json={"id": "OCPI-C1", "site_id": "HUB"})
            assert r.status_code in (200, 201), r.text
            t0 = datetime.now(UTC).replace(microsecond=0)
            async with connected(Lib201, node.ocpp_url, "OCPI-C1", "ocpp2.0.1") as cp:
                tx = Charge(cp, "c1-tx", "V2X-CARD", t0)
                await tx.event("Started", 0, 10_000, 0)
                await tx.event("Updated", 60, 16_000, 0)  # 6 kWh in
                await tx.event("Updated", 120, 16_000, 2_000)  # 2 kWh back to the grid
                await tx.event("Ended", 180, 16_000, 2_000)
                posts = await node.wait_for(lambda: a.of("cdrs", "POST"), timeout=15)
            cdr = posts[0].body
            assert posts[0].path == "/ocpi/2.2.1/cdrs"
            assert (cdr["country_code"], cdr["party_id"]) == ("NL", "EVF")
            assert cdr["cdr_token"]["uid"] == "V2X-CARD" and cdr["cdr_token"]["party_id"] == "AAA"
            assert cdr["auth_method"] == "WHITELIST" and cdr["currency"] == "EUR"
            loc = cdr["cdr_location"]
            assert (loc["id"], loc["evse_uid"], loc["connector_id"]) == ("HUB", "OCPI-C1-1", "1")
            assert loc["evse_id"] == "NL*EVF*EOCPIC1*1" and loc["connector_standard"]
            assert cdr["total_energy"] == 6.0 and cdr["evflex_total_energy_export"] == 2.0
            assert cdr["total_cost"] == {"excl_vat": 1.6}  # 6 x 0.30 - 2 x 0.10
            assert cdr["total_energy_cost"] == {"excl_vat": 1.8}
            assert cdr["evflex_feed_in_reward"] == {"excl_vat": 0.2}
            # total_time is on the CSMS clock (the events came within a second): not negative
            assert cdr["session_id"] and cdr["total_time"] >= 0
            tariff = cdr["tariffs"][0]
            assert tariff["id"] == "HUB" and tariff["evflex_feed_in_price_per_kwh"] == 0.1
            energy = [c["price_components"][0] for c in tariff["elements"]]
            assert {"type": "ENERGY", "price": 0.3, "step_size": 1} in energy
            periods = cdr["charging_periods"]
            assert periods and all(p["tariff_id"] == "HUB" for p in periods)
            imported = sum(d["volume"] for p in periods for d in p["dimensions"]
                           if d["type"] == "ENERGY")  # fmt: skip
            assert round(imported, 3) == 6.0
            assert round(sum(p.get("evflex_energy_export", 0) for p in periods), 3) == 2.0
            assert not b.of("cdrs")  # the other partner's tokens only

            base = f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1/cdrs"
            async with httpx.AsyncClient() as c:
                r = await c.get(base, headers=a.auth_header())
                assert r.headers["X-Total-Count"] == "1" and r.json()["data"][0]["id"] == cdr["id"]
                assert r.json()["data"][0]["total_cost"] == cdr["total_cost"]
                r = await c.get(base + "/", headers=b.auth_header())
                assert r.json()["data"] == [] and r.headers["X-Total-Count"] == "0"
                r = await c.get(base, params={"offset": "-1"}, headers=a.auth_header())
                assert r.json()["status_code"] == 2001

            # a stop between the record's commit and its outbox row: the row is gone
            async def forget(s):
                await s.execute(delete(OcpiOutbox).where(OcpiOutbox.module == "cdrs"))

            await node.rt.writer.submit(forget)
        a.received.clear()
        async with running_node(url, allow_unknown_stations=True, ocpi_key_file=key) as node:
            again = await node.wait_for(lambda: a.of("cdrs", "POST"), timeout=15)
            assert [x.body["id"] for x in again] == [cdr["id"]]
            assert again[0].body["total_energy"] == 6.0

            async def answered():  # marked sent before the node stops (else sent again:
                return await node.rt.ocpi.outbox.depth() == {}  # at least once, by design)

            await node.wait_for(answered, timeout=15)
        a.received.clear()
        async with running_node(url, allow_unknown_stations=True, ocpi_key_file=key) as node:
            await asyncio.sleep(0.3)
            assert await node.rt.ocpi.outbox.depth() == {}
        assert not a.of("cdrs")  # queued once: the third start queues nothing
    finally:
        await a.stop()
        await b.stop()
