"""What one station sends cannot break the store or the logs for everyone: free-form data
is kept within bounds (and the event says when it was cut), the event API shows any
stored row, wire text in log lines is cut short, and an expected refusal inside a
store write is no crash."""

from __future__ import annotations

import asyncio
import json
import logging

import websockets
from sqlalchemy import text

from evflex.csms.connection import LOGGED_REFUSALS
from evflex.csms.limits import MAX_STORED_CHARS
from evflex.store.tables import EventLog
from security.ocpphard import crashes, frame, hostile_and_good, row_counts

BIG = 500_000


async def events(node, station_id: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"station_id": station_id})
    assert r.status_code == 200, r.text[:300]
    return r.json()


async def test_free_form_data_is_kept_within_bounds(node):
    data = {"log": "x" * 100_000, "n": [1, 2, 3]}
    async with hostile_and_good(node, "ocpp2.0.1", "CHATTY") as pair:
        text = frame("d", "DataTransfer", json.dumps({"vendorId": "v", "data": data}))
        assert (await pair.send(text)) == [3, "d", {"status": "UnknownVendorId"}]
        small = frame("e", "DataTransfer", '{"vendorId":"v","data":{"a":[1,{"b":2}]}}')
        assert (await pair.send(small))[:2] == [3, "e"]
        await pair.good_is_served()
    kept = [e["detail"] for e in await events(node, "CHATTY") if e["kind"] == "data_transfer"]
    assert kept[1]["truncated"] is True
    assert kept[1]["data"].startswith('{"log":"xxx') and len(kept[1]["data"]) < MAX_STORED_CHARS + 40
    assert kept[0] == {"messageId": None, "data": {"a": [1, {"b": 2}]}}  # small data as sent


async def test_the_event_api_shows_every_stored_row(node):
    """Rows written by older versions or by hand: nested past any JSON encoder's depth, not
    an object, not JSON at all (SQLite keeps any text). Each is shown with a note; the
    others as they are."""
    deep: list = []
    for _ in range(300):
        deep = [deep]
    now = node.rt.clock.now()
    odd = [{"deep": deep}, ["a", "list"], "text", 12]
    async with node.rt.sessionmaker() as s, s.begin():
        for i, detail in enumerate([*odd, {"fine": 1}, None]):
            s.add(EventLog(station_id="ODD", timestamp=now, kind="old", type=str(i), detail=detail))
        if s.bind.dialect.name == "sqlite":
            odd.append("not JSON")
            await s.execute(text("INSERT INTO events (station_id, timestamp, kind, type, detail)"
                                 " VALUES ('ODD', '2026-01-01 00:00:00.000000', 'old', 'x', '{x')"))
    got = {e["type"]: e["detail"] for e in await events(node, "ODD")}
    assert got.pop("4") == {"fine": 1} and got.pop("5") is None
    assert len(got) == len(odd) and all(set(d) == {"unreadable"} for d in got.values()), got


async def test_wire_text_in_log_lines_is_cut_short(node, caplog):
    caplog.set_level(logging.DEBUG, logger="evflex")
    huge = "x" * BIG
    async with hostile_and_good(node, "ocpp1.6", "LOUD") as pair:
        before = await row_counts(node)
        meter = frame("m", "MeterValues", '{"connectorId":1,"meterValue":[{"timestamp":'
                      f'"2026-01-01T00:00:00Z","sampledValue":[{{"value":"{huge}"}}]}}]}}')
        assert (await pair.send(meter))[:3] == [4, "m", "PropertyConstraintViolation"]
        named = frame("h", "Heartbeat", f'{{"{huge}":1}}')
        assert (await pair.send(named))[:3] == [4, "h", "FormationViolation"]
        # the station answers a command with a CALLERROR of half a megabyte
        command = asyncio.create_task(node.command("LOUD", "clear-cache"))
        call = json.loads(await asyncio.wait_for(pair.hostile.recv(), 5))
        await pair.hostile.send(json.dumps([4, call[1], "GenericError", huge, {}]))
        r = await command
        assert r.status_code == 502 and len(r.text) < 1000
        assert await row_counts(node) == before
        await pair.good_is_served()
    async with websockets.connect(node.url("LOUD21"), subprotocols=["ocpp2.1"]) as ws:
        await ws.send(json.dumps([5, "r", "FormatViolation", huge, {}]))  # 2.1 CALLRESULTERROR
        await ws.send('[2,"hb","Heartbeat",{}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [3, "hb"]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("evflex")]
    assert any("LOUD21" in line for line in lines)
    assert max(len(line) for line in lines) < 1000
    assert not crashes(caplog)


async def test_an_expected_refusal_in_a_write_is_no_crash_and_a_failure_is(node, caplog):
    caplog.set_level(logging.INFO, logger="evflex")
    assert (await node.http.post("/api/v1/sites", json={"id": "S", "import_limit_kw": 50}))\
        .status_code == 201
    circuit = {"id": "C", "site_id": "S", "max_current_a": 32}
    assert (await node.http.post("/api/v1/circuits", json=circuit)).status_code == 201
    r = await node.http.post("/api/v1/circuits", json=circuit)  # refused inside the write
    assert r.status_code == 409 and "already exists" in r.text
    assert not crashes(caplog)
    assert [r for r in caplog.records if r.getMessage().startswith("write refused")]

    async def broken(_session):
        raise RuntimeError("a real failure")

    try:
        await node.rt.writer.submit(broken)
    except RuntimeError:
        pass
    failed = [r for r in crashes(caplog) if r.getMessage() == "write failed"]
    assert failed and failed[0].levelno == logging.ERROR and failed[0].exc_info


async def test_a_flood_of_refused_frames_is_logged_in_few_lines(node, caplog):
    caplog.set_level(logging.INFO, logger="evflex")
    async with hostile_and_good(node, "ocpp1.6", "NOISY") as pair:
        for i in range(200):
            await pair.hostile.send(f'[2,"n{i}","Heartbeat"]')  # no payload
        got = [json.loads(await asyncio.wait_for(pair.hostile.recv(), 5)) for _ in range(200)]
        assert {a[2] for a in got} == {"FormationViolation"}  # each is still answered
        await pair.good_is_served()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("NOISY:")]

    summary = f"NOISY: {200 - LOGGED_REFUSALS} more refusals not logged one by one"
    await node.wait_for(lambda: summary in lines())  # said once the station has gone
    assert len(lines()) == LOGGED_REFUSALS + 1
