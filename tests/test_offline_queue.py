"""A4 / I2: what a station queued while offline is accepted on reconnect, once.

Stations resend messages whose answer they never got; the CSMS must store
them exactly once (no duplicate transactions, no duplicate meter samples).
"""

from __future__ import annotations

import asyncio
import json

import websockets

MV = "Energy.Active.Import.Register"


async def rpc(ws, action: str, payload: dict, mid: str) -> dict:
    await ws.send(json.dumps([2, mid, action, payload]))
    answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert answer[0] == 3, answer
    return answer[2]


def mv16(ts: str, wh: int, w: int) -> list:
    return [{"timestamp": ts, "sampledValue": [
        {"value": str(wh), "measurand": MV, "unit": "Wh"},
        {"value": str(w), "measurand": "Power.Active.Import", "unit": "W"}]}]


async def test_a4_v16_queued_transaction_replayed_twice_is_stored_once(node):
    start = {"connectorId": 1, "idTag": "CARD", "meterStart": 1000,
             "timestamp": "2026-04-01T10:00:00Z"}
    queue = [
        ("MeterValues", {"connectorId": 1, "meterValue": mv16("2026-04-01T10:15:00Z", 3000, 8000)}),
        ("MeterValues", {"connectorId": 1, "meterValue": mv16("2026-04-01T10:30:00Z", 5000, 8000)}),
        ("StopTransaction", {"meterStop": 6000, "timestamp": "2026-04-01T10:40:00Z",
                             "reason": "EVDisconnected"}),
    ]
    ids = []
    for attempt in range(2):  # the second time: the station never saw our answers
        async with websockets.connect(node.url("Q16"), subprotocols=["ocpp1.6"]) as ws:
            tx_id = (await rpc(ws, "StartTransaction", start, f"s{attempt}"))["transactionId"]
            ids.append(tx_id)
            for i, (action, payload) in enumerate(queue):
                payload = dict(payload, transactionId=tx_id)
                await rpc(ws, action, payload, f"q{attempt}-{i}")
    assert ids[0] == ids[1]
    txs = await node.transactions(station_id="Q16")
    assert len(txs) == 1
    assert txs[0]["energy_imported_wh"] == 5000.0
    assert txs[0]["active"] is False
    mv = (await node.http.get("/api/v1/stations/Q16/meter-values",
                              params={"measurand": MV})).json()
    assert [m["value"] for m in mv] == [1000.0, 3000.0, 5000.0, 6000.0]


async def test_a4_v16_late_stop_for_unknown_transaction_is_kept_in_the_log(node):
    async with websockets.connect(node.url("Q16U"), subprotocols=["ocpp1.6"]) as ws:
        answer = await rpc(ws, "StopTransaction", {
            "transactionId": 999, "meterStop": 1, "timestamp": "2026-04-01T10:00:00Z"}, "x")
        assert answer == {}
    events = (await node.http.get("/api/v1/events", params={"station_id": "Q16U",
                                                             "kind": "error"})).json()
    assert events[0]["type"] == "UnknownTransaction"
    assert events[0]["detail"]["transactionId"] == 999


def tx_event(event, seq, ts, wh, tid="off-1", offline=True, **extra):
    payload = {
        "eventType": event, "timestamp": ts, "seqNo": seq, "offline": offline,
        "triggerReason": {"Started": "CablePluggedIn", "Updated": "MeterValuePeriodic",
                          "Ended": "EVDeparted"}[event],
        "transactionInfo": {"transactionId": tid, **extra},
        "meterValue": [{"timestamp": ts, "sampledValue": [{"value": wh, "measurand": MV}]}],
    }
    if event == "Started":
        payload["evse"] = {"id": 2, "connectorId": 1}
        payload["idToken"] = {"idToken": "CARD", "type": "ISO14443"}
    return payload


async def test_a4_v201_offline_transaction_burst_replayed_is_stored_once(node):
    burst = [
        tx_event("Started", 0, "2026-04-01T10:00:00Z", 100),
        tx_event("Updated", 1, "2026-04-01T10:15:00Z", 2100),
        tx_event("Updated", 2, "2026-04-01T10:30:00Z", 4100),
        tx_event("Ended", 3, "2026-04-01T10:45:00Z", 5100, stoppedReason="EVDisconnected"),
    ]
    for attempt in range(2):
        async with websockets.connect(node.url("Q201"), subprotocols=["ocpp2.0.1"]) as ws:
            for i, payload in enumerate(burst):
                await rpc(ws, "TransactionEvent", payload, f"{attempt}-{i}")
    txs = await node.transactions(station_id="Q201")
    assert len(txs) == 1
    tx = txs[0]
    assert tx["evse_id"] == 2 and tx["active"] is False
    assert tx["energy_imported_wh"] == 5000.0
    assert tx["offline_messages"] == 8  # every offline-flagged message was seen (4 twice)
    mv = (await node.http.get("/api/v1/stations/Q201/meter-values")).json()
    assert len(mv) == 4


async def test_a4_v201_events_arriving_out_of_order_keep_the_right_totals(node):
    async with websockets.connect(node.url("Q201B"), subprotocols=["ocpp2.0.1"]) as ws:
        # the Started event was lost; Updated comes first, then a late older Updated
        await rpc(ws, "TransactionEvent",
                  tx_event("Updated", 2, "2026-04-01T11:30:00Z", 9000, tid="t2"), "a")
        await rpc(ws, "TransactionEvent",
                  tx_event("Updated", 1, "2026-04-01T11:00:00Z", 4000, tid="t2"), "b")
        await rpc(ws, "TransactionEvent",
                  tx_event("Started", 0, "2026-04-01T10:30:00Z", 1000, tid="t2"), "c")
    tx = (await node.transactions(station_id="Q201B"))[0]
    assert tx["energy_imported_wh"] == 8000.0
    assert tx["started_at"].startswith("2026-04-01T10:30:00")
    assert tx["last_meter_at"].startswith("2026-04-01T11:30:00")
    assert tx["active"] is True


async def test_i2_transactions_survive_a_csms_restart(database_url):
    from conftest import Node, start_node

    rt, http = await start_node(database_url, allow_unknown_stations=True)
    node = Node(rt, http)
    async with websockets.connect(node.url("RST"), subprotocols=["ocpp1.6"]) as ws:
        tx_id = (await rpc(ws, "StartTransaction", {
            "connectorId": 1, "idTag": "C", "meterStart": 0,
            "timestamp": "2026-04-01T10:00:00Z"}, "s"))["transactionId"]
    await http.aclose()
    await rt.stop()
    rt, http = await start_node(database_url, allow_unknown_stations=True)
    node = Node(rt, http)
    try:
        async with websockets.connect(node.url("RST"), subprotocols=["ocpp1.6"]) as ws:
            await rpc(ws, "StopTransaction", {"transactionId": tx_id, "meterStop": 7000,
                                              "timestamp": "2026-04-01T11:00:00Z"}, "e")
        txs = await node.transactions(station_id="RST")
        assert len(txs) == 1 and txs[0]["energy_imported_wh"] == 7000.0
        assert txs[0]["active"] is False
    finally:
        await http.aclose()
        await rt.stop()
