"""OCPI CPO Sessions: a partner's token charging at a real 2.0.1 station becomes a Session
pushed to that partner (PUT, throttled PATCHes, the last one kept, COMPLETED); the GET list
is the partner's own and paginated; a local card's session goes nowhere."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from ocpp.v201 import call

from conftest import running_node
from evflex.bench.ocpi import OcpiBenchConfig, render, run_ocpi_bench
from evflex.store.ocpi_tables import OcpiToken
from ocpi.partner import RecordingPartner
from ocpp_clients import Lib201, connected

IMPORT = "Energy.Active.Import.Register"
EXPORT = "Energy.Active.Export.Register"


def stamp(t0: datetime, s: float) -> str:
    return (t0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")


def meter(ts: str, imp_wh: float, exp_wh: float = 0.0, soc: float | None = None) -> list[dict]:
    values = [{"value": imp_wh, "measurand": IMPORT, "unitOfMeasure": {"unit": "Wh"}},
              {"value": exp_wh, "measurand": EXPORT, "unitOfMeasure": {"unit": "Wh"}}]  # fmt: skip
    if soc is not None:
        values.append({"value": soc, "measurand": "SoC", "location": "EV"})
    return [{"timestamp": ts, "sampledValue": values}]


async def add_token(node, partner_id: int, uid: str, cc="DE", pid="ABC") -> None:
    """A token as the eMSP pushed it (the Tokens receiver's table)."""
    now = node.rt.clock.now()

    async def job(s):
        s.add(OcpiToken(partner_id=partner_id, country_code=cc, party_id=pid, uid=uid,
                        type="RFID", contract_id=f"{cc}-{pid}-C{uid}", valid=True,
                        whitelist="ALWAYS", data={}, last_updated=now))  # fmt: skip

    await node.rt.writer.submit(job)


class Charge:
    """One 2.0.1 transaction driven step by step at a library ChargePoint."""

    def __init__(self, cp: Lib201, tid: str, token: str, t0: datetime, evse: int = 1):
        self.cp, self.tid, self.token, self.t0, self.evse, self.seq = cp, tid, token, t0, evse, 0

    async def event(self, kind: str, s: float, imp: float, exp: float = 0.0, soc=None, **kw):
        info = {"transaction_id": self.tid, "charging_state": "Charging"}
        extra = {}
        if kind == "Started":
            extra = {"id_token": {"id_token": self.token, "type": "ISO14443"},
                     "evse": {"id": self.evse, "connector_id": 1}}  # fmt: skip
        if kind == "Ended":
            info["stopped_reason"] = "EVDisconnected"
        trigger = {"Started": "Authorized", "Updated": "MeterValuePeriodic"}.get(kind, "EVDeparted")
        await self.cp.call(call.TransactionEvent(
            event_type=kind, timestamp=stamp(self.t0, s), trigger_reason=trigger, seq_no=self.seq,
            transaction_info=info, meter_value=meter(stamp(self.t0, s), imp, exp, soc),
            **extra, **kw))  # fmt: skip
        self.seq += 1


async def test_session_put_throttled_patches_and_completed(database_url):
    partner = await RecordingPartner([("sessions", "RECEIVER")]).start()
    try:
        async with running_node(database_url, allow_unknown_stations=True,
                                ocpi_session_update_s=0.4) as node:  # fmt: skip
            pid = await partner.link(node)
            await add_token(node, pid, "04A1B2C3")
            t0 = datetime.now(UTC).replace(microsecond=0)
            async with connected(Lib201, node.ocpp_url, "OCPI-S1", "ocpp2.0.1") as cp:
                tx = Charge(cp, "s1-tx", "04a1b2c3", t0)  # the reader's lower case
                await tx.event("Started", 0, 1000, 0, soc=20)
                puts = await node.wait_for(lambda: partner.of("sessions", "PUT"), timeout=15)
                first = puts[0].body
                assert puts[0].path == f"/ocpi/2.2.1/sessions/NL/EVF/{first['id']}"
                assert first["status"] == "ACTIVE" and first["kwh"] == 0.0
                assert first["cdr_token"] == {"country_code": "DE", "party_id": "ABC",
                                              "uid": "04A1B2C3", "type": "RFID",
                                              "contract_id": "DE-ABC-C04A1B2C3"}  # fmt: skip
                assert first["auth_method"] == "WHITELIST" and first["currency"] == "EUR"
                assert (first["location_id"], first["evse_uid"], first["connector_id"]) == (
                    "OCPI-S1",
                    "OCPI-S1-1",
                    "1",
                )
                # a burst of updates inside one window: one PATCH now, one with the last
                # figures when the window ends, not one per update
                loop = asyncio.get_running_loop()
                began = loop.time()
                for i in range(1, 7):
                    await tx.event("Updated", 10 * i, 1000 + 500 * i, 0, soc=20 + i)
                windows = int((loop.time() - began) / 0.4) + 1  # the burst spanned these
                await node.wait_for(
                    lambda: [r.body["kwh"] for r in partner.of("sessions", "PATCH")][-1:] == [3.0],
                    timeout=15)  # fmt: skip
                await asyncio.sleep(0.5)  # nothing more is coming for that burst
                patches = [r.body for r in partner.of("sessions", "PATCH")]
                assert 1 <= len(patches) <= min(windows + 1, 5), (windows, patches)
                assert all(p["status"] == "ACTIVE" and p["last_updated"].endswith("Z")
                           for p in patches)  # fmt: skip
                added = sum(d["volume"] for p in patches for c in p["charging_periods"]
                            for d in c["dimensions"] if d["type"] == "ENERGY")  # fmt: skip
                assert round(added, 3) == 3.0  # periods add up to the session's energy
                last = patches[-1]["charging_periods"][0]["dimensions"]
                assert {"type": "STATE_OF_CHARGE", "volume": 26.0} in last
                # V2X: the EV feeds back, then the session ends
                await asyncio.sleep(0.45)
                await tx.event("Updated", 80, 4000, 1500, soc=24)
                await node.wait_for(lambda: partner.of("sessions", "PATCH")[-1].body["kwh"] == 3.0
                                    and partner.of("sessions", "PATCH")[-1].body[
                                        "evflex_kwh_exported"] == 1.5, timeout=15)  # fmt: skip
                v2x = partner.of("sessions", "PATCH")[-1].body["charging_periods"][0]
                assert {"type": "ENERGY_EXPORT", "volume": 1.5} in v2x["dimensions"]
                await tx.event("Ended", 90, 4200, 1500, soc=25)
                done = await node.wait_for(
                    lambda: [r.body for r in partner.of("sessions", "PUT")
                             if r.body["status"] == "COMPLETED"], timeout=15)  # fmt: skip
            end = done[0]
            assert end["id"] == first["id"] and end["kwh"] == 3.2
            assert end["evflex_kwh_exported"] == 1.5 and "end_date_time" in end
            periods = end["charging_periods"]
            assert 1 <= len(periods) <= 48
            dims = [d for c in periods for d in c["dimensions"]]
            assert round(sum(d["volume"] for d in dims if d["type"] == "ENERGY"), 3) == 3.2
            assert round(sum(d["volume"] for d in dims if d["type"] == "ENERGY_EXPORT"), 3) == 1.5
            # an update that comes after the end (a late queued message) changes nothing
            node.rt.bus.publish("transaction.updated", "OCPI-S1", transaction_id="s1-tx",
                                energy_imported_wh=9999.0)  # fmt: skip
            await asyncio.sleep(0.6)
            # every push went to this session's URL, in order: PUT first, COMPLETED last
            got = partner.of("sessions")
            assert got[0].method == "PUT" and got[-1].body["status"] == "COMPLETED"
            assert {r.path for r in got} == {puts[0].path}
    finally:
        await partner.stop()


async def test_sessions_list_is_the_partners_own_and_local_cards_are_not_pushed(tmp_path):
    a = await RecordingPartner([("sessions", "RECEIVER")], party_id="AAA").start()
    b = await RecordingPartner([("sessions", "RECEIVER")], party_id="BBB").start()
    try:
        async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}",
                                allow_unknown_stations=True) as node:  # fmt: skip
            pa, pb = await a.link(node), await b.link(node)
            await add_token(node, pa, "A-1", pid="AAA")
            await add_token(node, pa, "A-2", pid="AAA")
            await add_token(node, pb, "B-1", pid="BBB")
            await node.http.post("/api/v1/id-tokens", json={"id_token": "LOCAL-1"})
            t0 = datetime.now(UTC).replace(microsecond=0)
            async with connected(Lib201, node.ocpp_url, "OCPI-L1", "ocpp2.0.1") as cp:
                for evse, (tid, token) in enumerate(
                    [("l-a1", "A-1"), ("l-a2", "A-2"), ("l-b1", "B-1"), ("l-loc", "LOCAL-1")], 1
                ):
                    await Charge(cp, tid, token, t0, evse).event("Started", 0, 0)
                await node.wait_for(
                    lambda: len(a.of("sessions")) == 2 and b.of("sessions"), timeout=15
                )
                await asyncio.sleep(0.2)
            assert len(a.of("sessions")) == 2 and len(b.of("sessions")) == 1  # not LOCAL-1
            base = f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1/sessions"
            async with httpx.AsyncClient() as c:
                r = await c.get(base, params={"limit": 1}, headers=a.auth_header())
                body = r.json()
                assert r.status_code == 200 and body["status_code"] == 1000
                assert r.headers["X-Total-Count"] == "2" and 'rel="next"' in r.headers["Link"]
                assert [s["cdr_token"]["uid"] for s in body["data"]] == ["A-1"]
                nxt = r.headers["Link"].split(">")[0].lstrip("<")
                r = await c.get(nxt, headers=a.auth_header())
                assert [s["cdr_token"]["uid"] for s in r.json()["data"]] == ["A-2"]
                assert "Link" not in r.headers
                r = await c.get(base + "/", headers=b.auth_header())
                assert [s["cdr_token"]["uid"] for s in r.json()["data"]] == ["B-1"]
                # date_to before everything: nothing; a bad date: 2001
                r = await c.get(base, params={"date_to": "2020-01-01T00:00:00Z"},
                                headers=a.auth_header())  # fmt: skip
                assert r.json()["data"] == [] and r.headers["X-Total-Count"] == "0"
                r = await c.get(base, params={"date_from": "yesterday"}, headers=a.auth_header())
                assert r.status_code == 200 and r.json()["status_code"] == 2001
                r = await c.get(base)
                assert r.status_code == 401
    finally:
        await a.stop()
        await b.stop()


async def test_bench_ocpi_small_run_delivers_every_update():
    result = await run_ocpi_bench(OcpiBenchConfig(sessions=30, rounds=2), log=lambda *_: None)
    assert result["sessions"] == 30 and len(result["rounds"]) == 2
    assert result["pushes_queued"] == {"PUT": 30, "PATCH": 60}
    # every session's update arrived (the receiver counts a session once it has the new kWh)
    assert result["requests_received"]["PATCH"] == 60
    assert all(r["sessions_per_s"] > 0 and r["end_to_end_s"] >= r["push_only_s"]
               for r in result["rounds"])  # fmt: skip
    assert result["baseline_per_s"] > 0 and result["ratio_to_baseline"] > 0
    assert render(result).row_count == 4
