"""Firmware update, diagnostics and log upload over OCPP: commands, statuses, uploads."""

from __future__ import annotations

import pytest
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as r16
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as r201

from ocpp_clients import Lib16, Lib201, connected

#: A test that runs on SQLite only (the SQL it touches has its PostgreSQL run elsewhere).
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Firmware16(Lib16):
    """The ``ocpp`` library's 1.6 charge point that takes firmware and diagnostics requests."""

    @on("UpdateFirmware")
    def on_update_firmware(self, **kw):
        self.received.append(("UpdateFirmware", kw))
        return r16.UpdateFirmware()

    @on("GetDiagnostics")
    def on_get_diagnostics(self, **kw):
        self.received.append(("GetDiagnostics", kw))
        return r16.GetDiagnostics(file_name="diag-1.txt")


class Firmware201(Lib201):
    @on("UpdateFirmware")
    def on_update_firmware(self, **kw):
        self.received.append(("UpdateFirmware", kw))
        return r201.UpdateFirmware(status="Accepted")

    @on("GetLog")
    def on_get_log(self, **kw):
        self.received.append(("GetLog", kw))
        return r201.GetLog(status="Rejected")


async def test_an_independent_station_reports_firmware_and_diagnostics(node):
    async with node.rt.bus.subscribe() as events:
        async with connected(Firmware16, node.ocpp_url, "FW16", "ocpp1.6") as cp:
            await cp.call(
                call16.BootNotification(
                    charge_point_vendor="Acme", charge_point_model="AC22", firmware_version="1.0"
                )
            )
            r = await node.command(
                "FW16",
                "update-firmware",
                {
                    "location": "https://fw.example.com/ac22-2.0.bin",
                    "retries": 2,
                    "retry_interval_s": 30,
                },
            )
            assert r.status_code == 200, r.text
            assert r.json()["response"] == {"status": "Accepted"}  # 1.6: an empty answer
            action, sent = cp.received[-1]
            assert action == "UpdateFirmware"
            assert sent["location"] == "https://fw.example.com/ac22-2.0.bin"
            assert (sent["retries"], sent["retry_interval"]) == (2, 30)
            assert sent["retrieve_date"].endswith("Z")
            st = await node.station("FW16")
            assert st["firmware"]["status"] == "Requested"
            assert st["firmware"]["location"] == "https://fw.example.com/ac22-2.0.bin"
            assert st["upload"] is None
            for status in ("Downloading", "Downloaded", "Installing"):
                await cp.call(call16.FirmwareStatusNotification(status=status))
                assert (await node.station("FW16"))["firmware"]["status"] == status
            await cp.call(
                call16.BootNotification(
                    charge_point_vendor="Acme", charge_point_model="AC22", firmware_version="2.0"
                )
            )
            await cp.call(call16.FirmwareStatusNotification(status="Installed"))
            st = await node.station("FW16")
            assert (st["firmware"]["status"], st["firmware_version"]) == ("Installed", "2.0")

            r = await node.command(
                "FW16",
                "get-diagnostics",
                {"location": "ftp://logs.example.com/fw16/", "start_time": "2026-03-01T00:00:00Z"},
            )
            assert r.status_code == 200, r.text
            assert r.json()["response"] == {"fileName": "diag-1.txt", "status": "Accepted"}
            assert cp.received[-1][1]["start_time"] == "2026-03-01T00:00:00.000Z"
            upload = (await node.station("FW16"))["upload"]
            assert {k: upload[k] for k in ("kind", "status", "file", "location")} == {
                "kind": "diagnostics",
                "status": "Requested",
                "file": "diag-1.txt",
                "location": "ftp://logs.example.com/fw16/",
            }
            await cp.call(call16.DiagnosticsStatusNotification(status="Uploaded"))
            assert (await node.station("FW16"))["upload"]["status"] == "Uploaded"
        seen = []
        while not events.empty():
            ev = events.get_nowait()
            if ev.topic in ("station.firmware", "station.upload"):
                seen.append((ev.topic, ev.data["status"]))
    assert seen == [
        ("station.firmware", s)
        for s in ("Requested", "Downloading", "Downloaded", "Installing", "Installed")
    ] + [("station.upload", "Requested"), ("station.upload", "Uploaded")]
    log = (await node.get("/api/v1/events", params={"station_id": "FW16"})).json()
    assert {("firmware", "Installed"), ("diagnostics", "Uploaded")} <= {
        (e["kind"], e["type"]) for e in log
    }


@SQLITE
async def test_a_2x_request_gets_a_request_id(node):
    async with connected(Firmware201, node.ocpp_url, "FW201", "ocpp2.0.1") as cp:
        await cp.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V", "firmware_version": "1.0"},
                reason="PowerUp",
            )
        )
        r = await node.command(
            "FW201",
            "update-firmware",
            {
                "location": "http://fw.example.com/m.bin",
                "install_at": "2030-01-01T00:00:00Z",
                "signature": "c2ln",
            },
        )
        assert r.status_code == 200, r.text
        rid = r.json()["response"]["requestId"]
        assert r.json()["response"]["status"] == "Accepted"
        sent = cp.received[-1][1]
        assert sent["request_id"] == rid
        assert sent["firmware"]["install_date_time"] == "2030-01-01T00:00:00.000Z"
        assert sent["firmware"]["signature"] == "c2ln"
        await cp.call(call201.FirmwareStatusNotification(status="Downloading", request_id=rid))
        fw = (await node.station("FW201"))["firmware"]
        assert (fw["status"], fw["request_id"]) == ("Downloading", rid)
        # a log the station refuses leaves no Requested state behind
        r = await node.command(
            "FW201",
            "get-log",
            {"location": "https://logs.example.com/up", "log_type": "SecurityLog"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["response"]["status"] == "Rejected"
        assert cp.received[-1][1]["log_type"] == "SecurityLog"
        assert (await node.station("FW201"))["upload"] is None
