"""A2/A3 with an independent 2.0.1 client (the ``ocpp`` library's ChargePoint).

Rows of EV4EU's integration table (seed 000 §4.3, Table 1) for OCPP 2.0.1,
on SQLite and PostgreSQL.
"""

from __future__ import annotations

from ocpp.v201 import call

from ocpp_clients import Lib201, connected

MV = "Energy.Active.Import.Register"


async def boot(cp: Lib201):
    return await cp.call(call.BootNotification(
        charging_station={"model": "DC50", "vendor_name": "Volt", "serial_number": "S-9",
                          "firmware_version": "4.0", "modem": {"iccid": "8931", "imsi": "2620"}},
        reason="PowerUp"))


def sample(ts: str, wh: float, w: float, soc: float | None = None, context="Sample.Periodic"):
    values = [
        {"value": wh / 1000, "measurand": MV, "context": context,
         "unitOfMeasure": {"unit": "kWh"}},
        {"value": w, "measurand": "Power.Active.Import", "context": context},
        {"value": 230.5, "measurand": "Voltage", "phase": "L1-N", "context": context},
    ]
    if soc is not None:
        values.append({"value": soc, "measurand": "SoC", "location": "EV", "context": context})
    return [{"timestamp": ts, "sampledValue": values}]


async def test_a2_boot_status_heartbeat(node):
    async with connected(Lib201, node.ocpp_url, "LIB201", "ocpp2.0.1") as cp:
        res = await boot(cp)
        assert res.status == "Accepted" and res.interval == 60
        await cp.call(call.Heartbeat())
        for evse, status in [(1, "Available"), (2, "Unavailable")]:
            await cp.call(call.StatusNotification(
                timestamp="2026-03-01T07:00:00Z", connector_status=status, evse_id=evse,
                connector_id=1))
        st = await node.station("LIB201")
        assert st["connected"] and st["ocpp_version"] == "2.0.1"
        assert (st["vendor"], st["model"], st["serial_number"], st["firmware_version"],
                st["iccid"]) == ("Volt", "DC50", "S-9", "4.0", "8931")
        assert {(c["evse_id"], c["status"]) for c in st["connectors"]} == {
            (1, "Available"), (2, "Unavailable")}
    events = (await node.http.get("/api/v1/events", params={"station_id": "LIB201",
                                                             "kind": "boot"})).json()
    assert events[0]["type"] == "PowerUp"


async def test_a2_transaction_event_lifecycle(node):
    await node.http.post("/api/v1/id-tokens", json={"id_token": "APP-7", "status": "Accepted"})
    async with connected(Lib201, node.ocpp_url, "LIB201B", "ocpp2.0.1") as cp:
        await boot(cp)
        auth = await cp.call(call.Authorize(id_token={"id_token": "APP-7", "type": "Central"}))
        assert auth.id_token_info["status"] == "Accepted"
        auth = await cp.call(call.Authorize(id_token={"id_token": "WHO", "type": "ISO14443"}))
        assert auth.id_token_info["status"] == "Unknown"
        tid = "f2a1c7e0-tx"
        r = await cp.call(call.TransactionEvent(
            event_type="Started", timestamp="2026-03-01T08:00:00Z", trigger_reason="Authorized",
            seq_no=0, transaction_info={"transaction_id": tid, "charging_state": "Charging"},
            id_token={"id_token": "APP-7", "type": "Central"}, evse={"id": 1, "connector_id": 1},
            meter_value=sample("2026-03-01T08:00:00Z", 50_000, 0, 20, "Transaction.Begin")))
        assert r.id_token_info["status"] == "Accepted"
        await cp.call(call.TransactionEvent(
            event_type="Updated", timestamp="2026-03-01T08:30:00Z",
            trigger_reason="MeterValuePeriodic", seq_no=1,
            transaction_info={"transaction_id": tid, "charging_state": "Charging"},
            meter_value=sample("2026-03-01T08:30:00Z", 75_000, 50_000, 55)))
        tx = (await node.transactions(active="true", station_id="LIB201B"))[0]
        assert tx["transaction_id"] == tid and tx["evse_id"] == 1
        assert tx["id_token"] == "APP-7"
        assert tx["energy_imported_wh"] == 25_000.0
        assert tx["power_w"] == 50_000.0 and tx["soc_percent"] == 55.0
        assert tx["charging_state"] == "Charging"
        # MeterValues outside TransactionEvent on the same EVSE attach to the transaction
        await cp.call(call.MeterValues(evse_id=1, meter_value=sample(
            "2026-03-01T08:45:00Z", 87_000, 48_000)))
        tx = (await node.transactions(active="true", station_id="LIB201B"))[0]
        assert tx["energy_imported_wh"] == 37_000.0
        await cp.call(call.TransactionEvent(
            event_type="Ended", timestamp="2026-03-01T09:00:00Z", trigger_reason="EVDeparted",
            seq_no=2, transaction_info={"transaction_id": tid, "stopped_reason": "EVDisconnected"},
            meter_value=sample("2026-03-01T09:00:00Z", 95_000, 0, 80, "Transaction.End")))
    tx = (await node.transactions(station_id="LIB201B"))[0]
    assert tx["active"] is False and tx["stop_reason"] == "EVDisconnected"
    assert tx["energy_imported_wh"] == 45_000.0 and tx["energy_exported_wh"] == 0.0
    assert tx["power_w"] == 0.0
    mv = (await node.http.get("/api/v1/stations/LIB201B/meter-values",
                              params={"measurand": MV})).json()
    assert [m["value"] for m in mv] == [50_000.0, 75_000.0, 87_000.0, 95_000.0]
    assert [m["context"] for m in mv] == ["Transaction.Begin", "Sample.Periodic",
                                          "Sample.Periodic", "Transaction.End"]


async def test_d3_export_register_tracked_separately(node):
    """Import and export registers are kept apart; power is signed (negative = V2X)."""
    async with connected(Lib201, node.ocpp_url, "LIB201X", "ocpp2.0.1") as cp:
        await boot(cp)
        tid = "v2x-1"

        def values(ts, imp, exp, p_imp, p_exp):
            return [{"timestamp": ts, "sampledValue": [
                {"value": imp, "measurand": MV},
                {"value": exp, "measurand": "Energy.Active.Export.Register"},
                {"value": p_imp, "measurand": "Power.Active.Import"},
                {"value": p_exp, "measurand": "Power.Active.Export"},
            ]}]

        await cp.call(call.TransactionEvent(
            event_type="Started", timestamp="2026-03-01T08:00:00Z", trigger_reason="CablePluggedIn",
            seq_no=0, transaction_info={"transaction_id": tid}, evse={"id": 1, "connector_id": 1},
            meter_value=values("2026-03-01T08:00:00Z", 1000, 500, 0, 0)))
        await cp.call(call.TransactionEvent(
            event_type="Updated", timestamp="2026-03-01T09:00:00Z",
            trigger_reason="MeterValuePeriodic", seq_no=1, transaction_info={"transaction_id": tid},
            meter_value=values("2026-03-01T09:00:00Z", 8000, 2500, 0, 7000)))
    tx = (await node.transactions(station_id="LIB201X"))[0]
    assert tx["energy_imported_wh"] == 7000.0
    assert tx["energy_exported_wh"] == 2000.0
    assert tx["power_w"] == -7000.0


async def test_a2_commands_reach_a_201_station(node):
    # a remote start names a card the CSMS accepts (others are refused before sending)
    await node.http.post("/api/v1/id-tokens", json={"id_token": "APP-7", "status": "Accepted"})
    async with connected(Lib201, node.ocpp_url, "LIB201C", "ocpp2.0.1") as cp:
        await boot(cp)
        cases = [
            ("reset", {"type": "hard"}, "Reset", {"type": "Immediate"}),
            ("reset", {"type": "soft"}, "Reset", {"type": "OnIdle"}),
            ("change-availability", {"operative": False, "evse": 1}, "ChangeAvailability",
             {"operational_status": "Inoperative", "evse": {"id": 1}}),
            ("remote-start", {"id_token": "APP-7", "evse": 2}, "RequestStartTransaction",
             {"id_token": {"id_token": "APP-7", "type": "Central"}, "evse_id": 2}),
            ("remote-stop", {"transaction_id": "abc"}, "RequestStopTransaction",
             {"transaction_id": "abc"}),
            ("trigger-message", {"message": "Heartbeat"}, "TriggerMessage",
             {"requested_message": "Heartbeat"}),
            ("unlock-connector", {"evse": 2}, "UnlockConnector", {"evse_id": 2, "connector_id": 1}),
            ("get-base-report", {"report": "FullInventory", "request_id": 5}, "GetBaseReport",
             {"request_id": 5, "report_base": "FullInventory"}),
            ("reserve-now", {"id_token": "APP-7", "expiry": "2030-01-01T00:00:00Z", "evse": 1,
                             "reservation_id": 9}, "ReserveNow", {"id": 9, "evse_id": 1}),
            ("cancel-reservation", {"reservation_id": 9}, "CancelReservation",
             {"reservation_id": 9}),
            ("send-local-list", {"version": 2, "update": "Differential",
                                 "entries": [{"id_token": "X1"}]}, "SendLocalList",
             {"version_number": 2, "update_type": "Differential"}),
        ]
        for name, body, action, expect in cases:
            r = await node.command("LIB201C", name, body)
            assert r.status_code == 200, (name, r.text)
            assert r.json()["ocpp_version"] == "2.0.1"
            got_action, got = cp.received[-1]
            assert got_action == action, name
            for k, v in expect.items():
                assert got[k] == v, (name, k, got)
        assert "remote_start_id" in cp.received[3][1]

        r = await node.command("LIB201C", "get-variables", {"variables": [
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval"},
            {"component": "Nope", "variable": "Nope"}]})
        results = r.json()["response"]["getVariableResult"]
        assert [x["attributeStatus"] for x in results] == ["Accepted", "UnknownVariable"]
        assert results[0]["attributeValue"] == "300"
        r = await node.command("LIB201C", "set-variables", {"variables": [
            {"component": "OCPPCommCtrlr", "variable": "HeartbeatInterval", "value": "120"}]})
        assert r.json()["response"]["setVariableResult"][0]["attributeStatus"] == "Accepted"
        assert cp.variables[("OCPPCommCtrlr", "HeartbeatInterval")] == "120"

        r = await node.command("LIB201C", "get-configuration", {})
        assert r.status_code == 400 and "2.0.1" in r.json()["detail"]
