"""A2/A3/A4 with an independent 1.6 client (the ``ocpp`` library's ChargePoint).

Rows of EV4EU's integration table (seed 000 §4.3, Table 1) for OCPP 1.6,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from ocpp.v16 import call

from ocpp_clients import Lib16, connected

MV = "Energy.Active.Import.Register"


async def boot(cp: Lib16):
    return await cp.call(call.BootNotification(
        charge_point_vendor="Acme", charge_point_model="AC22", charge_point_serial_number="SN-1",
        firmware_version="1.2.3", iccid="8931440000000000001"))


async def test_a2_boot_heartbeat_status_persisted(node):
    async with connected(Lib16, node.ocpp_url, "LIB16", "ocpp1.6") as cp:
        res = await boot(cp)
        assert res.status == "Accepted"
        assert res.interval == 60  # the configured heartbeat interval
        hb = await cp.call(call.Heartbeat())
        assert hb.current_time.endswith("Z")
        for conn, status, err in [(0, "Available", "NoError"), (1, "Available", "NoError"),
                                  (2, "Faulted", "GroundFailure")]:
            await cp.call(call.StatusNotification(connector_id=conn, error_code=err,
                                                  status=status, info="i",
                                                  vendor_error_code="E42" if conn == 2 else None))
        st = await node.station("LIB16")
        assert st["connected"] is True
        assert st["ocpp_version"] == "1.6"
        assert (st["vendor"], st["model"], st["serial_number"], st["firmware_version"],
                st["iccid"]) == ("Acme", "AC22", "SN-1", "1.2.3", "8931440000000000001")
        assert st["last_heartbeat_at"] is not None
        conns = {c["evse_id"]: c for c in st["connectors"]}
        assert set(conns) == {0, 1, 2}
        assert conns[2]["status"] == "Faulted"
        assert conns[2]["error_code"] == "GroundFailure"
        assert conns[2]["vendor_error_code"] == "E42"
        events = (await node.http.get("/api/v1/events", params={"station_id": "LIB16",
                                                                 "kind": "error"})).json()
        assert events and events[0]["type"] == "GroundFailure"
    await node.wait_for(lambda: not node.rt.ocpp.is_connected("LIB16"))
    st = await node.station("LIB16")
    assert st["connected"] is False


async def test_a2_authorize_start_meter_stop(node):
    r = await node.http.post("/api/v1/id-tokens", json={"id_token": "CARD1", "status": "Accepted"})
    assert r.status_code == 201
    await node.http.post("/api/v1/id-tokens", json={"id_token": "BLOCKED", "status": "Blocked"})
    async with connected(Lib16, node.ocpp_url, "LIB16B", "ocpp1.6") as cp:
        await boot(cp)
        assert (await cp.call(call.Authorize(id_tag="CARD1"))).id_tag_info["status"] == "Accepted"
        assert (await cp.call(call.Authorize(id_tag="NOPE"))).id_tag_info["status"] == "Invalid"
        assert (await cp.call(call.Authorize(id_tag="BLOCKED"))).id_tag_info["status"] == "Blocked"
        start = await cp.call(call.StartTransaction(
            connector_id=1, id_tag="CARD1", meter_start=10_000, timestamp="2026-03-01T08:00:00Z"))
        assert start.id_tag_info["status"] == "Accepted"
        tx_id = start.transaction_id
        assert isinstance(tx_id, int)
        await cp.call(call.MeterValues(connector_id=1, transaction_id=tx_id, meter_value=[{
            "timestamp": "2026-03-01T08:15:00Z",
            "sampledValue": [
                {"value": "12.5", "measurand": MV, "unit": "kWh", "context": "Sample.Periodic"},
                {"value": "11000", "measurand": "Power.Active.Import", "unit": "W"},
                {"value": "16.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                {"value": "16.0", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                {"value": "231.0", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                {"value": "49.98", "measurand": "Frequency"},
                {"value": "57", "measurand": "SoC", "location": "EV", "unit": "Percent"},
            ]}]))
        active = await node.transactions(active="true", station_id="LIB16B")
        assert len(active) == 1
        tx = active[0]
        assert tx["transaction_id"] == str(tx_id)
        assert tx["energy_imported_wh"] == 2500.0
        assert tx["power_w"] == 11000.0
        assert tx["soc_percent"] == 57.0
        assert {m["measurand"] for m in tx["last_meter_values"]} >= {MV, "Frequency", "Voltage"}
        stop = await cp.call(call.StopTransaction(
            meter_stop=21_000, timestamp="2026-03-01T09:00:00Z", transaction_id=tx_id,
            reason="EVDisconnected", id_tag="CARD1",
            transaction_data=[{"timestamp": "2026-03-01T09:00:00Z", "sampledValue": [
                {"value": "21000", "measurand": MV, "context": "Transaction.End"}]}]))
        assert stop.id_tag_info["status"] == "Accepted"
    ended = await node.transactions(active="false", station_id="LIB16B")
    assert len(ended) == 1
    assert ended[0]["energy_imported_wh"] == 11_000.0
    assert ended[0]["energy_exported_wh"] == 0.0
    assert ended[0]["stop_reason"] == "EVDisconnected"
    assert ended[0]["stopped_at"].startswith("2026-03-01T09:00:00")
    mv = (await node.http.get("/api/v1/stations/LIB16B/meter-values", params={
        "from": "2026-03-01T08:10:00Z", "to": "2026-03-01T08:20:00Z"})).json()
    assert {(m["measurand"], m["phase"]) for m in mv} >= {
        ("Current.Import", "L1"), ("Current.Import", "L2"), ("Voltage", "L1-N"), (MV, None)}
    assert [m["value"] for m in mv if m["measurand"] == MV] == [12_500.0]


async def test_a2_firmware_security_datatransfer(node):
    async with connected(Lib16, node.ocpp_url, "LIB16C", "ocpp1.6") as cp:
        await boot(cp)
        await cp.call(call.FirmwareStatusNotification(status="Installed"))
        await cp.call(call.SecurityEventNotification(type="FirmwareUpdated",
                                                     timestamp="2026-03-01T08:00:00Z", tech_info="fw 1.2.3"))
        dtr = await cp.call(call.DataTransfer(vendor_id="com.acme", message_id="x", data="{}"))
        assert dtr.status == "UnknownVendorId"
    events = (await node.http.get("/api/v1/events", params={"station_id": "LIB16C"})).json()
    kinds = {(e["kind"], e["type"]) for e in events}
    assert ("firmware", "Installed") in kinds
    assert ("security", "FirmwareUpdated") in kinds
    assert ("data_transfer", "com.acme") in kinds


async def test_a2_commands_reach_a_16_station(node):
    # a remote start names a card the CSMS accepts (others are refused before sending)
    await node.http.post("/api/v1/id-tokens", json={"id_token": "CARD1", "status": "Accepted"})
    async with connected(Lib16, node.ocpp_url, "LIB16D", "ocpp1.6") as cp:
        await boot(cp)
        cases = [
            ("reset", {"type": "hard"}, "Reset", {"type": "Hard"}, "Accepted"),
            ("reset", {"type": "soft"}, "Reset", {"type": "Soft"}, "Accepted"),
            ("change-availability", {"operative": False}, "ChangeAvailability",
             {"connector_id": 0, "type": "Inoperative"}, "Accepted"),
            ("change-availability", {"operative": True, "evse": 2}, "ChangeAvailability",
             {"connector_id": 2, "type": "Operative"}, "Accepted"),
            ("remote-start", {"id_token": "CARD1", "evse": 1}, "RemoteStartTransaction",
             {"id_tag": "CARD1", "connector_id": 1}, "Accepted"),
            ("remote-stop", {"transaction_id": "17"}, "RemoteStopTransaction",
             {"transaction_id": 17}, "Accepted"),
            ("trigger-message", {"message": "StatusNotification", "evse": 1}, "TriggerMessage",
             {"requested_message": "StatusNotification", "connector_id": 1}, "Accepted"),
            ("unlock-connector", {"evse": 1}, "UnlockConnector", {"connector_id": 1}, "Unlocked"),
            ("cancel-reservation", {"reservation_id": 3}, "CancelReservation",
             {"reservation_id": 3}, "Accepted"),
        ]
        for name, body, action, expect, status in cases:
            r = await node.command("LIB16D", name, body)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["response"]["status"] == status
            got_action, got = cp.received[-1]
            assert got_action == action
            for k, v in expect.items():
                assert got[k] == v, (name, k, got)

        r = await node.command("LIB16D", "reserve-now", {
            "id_token": "CARD1", "expiry": "2030-01-01T10:00:00Z", "evse": 1})
        assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted"
        assert cp.received[-1][1]["expiry_date"].startswith("2030-01-01T10:00:00")

        await node.http.post("/api/v1/id-tokens", json={"id_token": "T1", "status": "Accepted"})
        await node.http.post("/api/v1/id-tokens", json={"id_token": "T2", "status": "Blocked"})
        r = await node.command("LIB16D", "send-local-list", {"version": 4})
        assert r.status_code == 200
        sent = cp.received[-1][1]
        assert sent["list_version"] == 4 and sent["update_type"] == "Full"
        assert {e["id_tag"]: e["id_tag_info"]["status"]
                for e in sent["local_authorization_list"]} == {
            "CARD1": "Accepted", "T1": "Accepted", "T2": "Blocked"}

        r = await node.command("LIB16D", "get-configuration", {})
        keys = {k["key"] for k in r.json()["response"]["configurationKey"]}
        assert keys == {"HeartbeatInterval", "MeterValueSampleInterval", "NumberOfConnectors"}
        r = await node.command("LIB16D", "get-configuration", {"keys": ["Nope"]})
        assert r.json()["response"]["unknownKey"] == ["Nope"]
        r = await node.command("LIB16D", "change-configuration",
                               {"key": "MeterValueSampleInterval", "value": "30"})
        assert r.json()["response"]["status"] == "Accepted"
        assert cp.config["MeterValueSampleInterval"] == "30"
        r = await node.command("LIB16D", "change-configuration",
                               {"key": "NumberOfConnectors", "value": "3"})
        assert r.json()["response"]["status"] == "Rejected"

        # a command 1.6 does not have is refused with a reason, nothing is sent
        before = len(cp.received)
        r = await node.command("LIB16D", "get-variables",
                               {"variables": [{"component": "A", "variable": "B"}]})
        assert r.status_code == 400
        assert "1.6" in r.json()["detail"]
        assert len(cp.received) == before


async def test_any_message_shows_the_station_alive(node):
    """A station that sends meter values and status but skips Heartbeats (OCPP 1.6
    allows it) is not shown as silent since its connect, live or after it left."""
    async with connected(Lib16, node.ocpp_url, "QUIET16", "ocpp1.6") as cp:
        await boot(cp)
        connected_at = datetime.fromisoformat((await node.station("QUIET16"))["last_heartbeat_at"])
        await asyncio.sleep(1.5)
        await cp.call(call.StatusNotification(connector_id=1, error_code="NoError",
                                              status="Available"))
        st = await node.station("QUIET16")
        live = datetime.fromisoformat(st["last_heartbeat_at"])
        assert live - connected_at >= timedelta(seconds=1.4)
        assert st["heartbeat_age_s"] < 1.0
    await node.wait_for(lambda: not node.rt.ocpp.is_connected("QUIET16"))
    st = await node.station("QUIET16")
    assert st["connected"] is False
    assert datetime.fromisoformat(st["last_heartbeat_at"]) == live  # kept in the store
