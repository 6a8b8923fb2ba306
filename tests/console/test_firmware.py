"""Firmware update, diagnostics and log upload over OCPP: commands, statuses, uploads."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as r16
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as r201

from evflex.sim import SimStation, StationSpec
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
    log_status = "Rejected"

    @on("UpdateFirmware")
    def on_update_firmware(self, **kw):
        self.received.append(("UpdateFirmware", kw))
        return r201.UpdateFirmware(status="Accepted")

    @on("GetLog")
    def on_get_log(self, **kw):
        self.received.append(("GetLog", kw))
        return r201.GetLog(status=self.log_status, filename="fw201.log")


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


# ---------------------------------------------------------------- simulated stations

IMAGE = b"2.0.0-sim\nnot really firmware\n"


@contextlib.contextmanager
def file_server(files: dict[str, bytes]):
    """A plain HTTP server on 127.0.0.1 that serves ``files`` (path -> content)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


async def _statuses(events, station_id: str, topic: str, until: str, timeout: float = 15.0):
    """The statuses published on ``topic`` for the station, up to ``until``."""
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while until not in seen:
            ev = await events.get()
            if ev.topic == topic and ev.station_id == station_id and ev.data.get("status"):
                seen.append(ev.data["status"])
    return seen


@contextlib.asynccontextmanager
async def simulated(node, *specs: tuple[str, str]):
    stations = [SimStation(StationSpec(id=i, ocpp_version=v, evses=1), node.ocpp_url)
                for i, v in specs]  # fmt: skip
    for st in stations:
        st.firmware_step_s = 0.05
    await asyncio.gather(*(st.start(timeout=10) for st in stations))
    try:
        yield stations
    finally:
        await asyncio.gather(*(st.stop() for st in stations))


@SQLITE
async def test_simulated_stations_install_firmware_and_upload_logs(node, tmp_path):
    node.rt.settings.upload_dir = tmp_path / "uploads"
    with file_server({"/fw/sim-2.bin": IMAGE}) as web:
        async with node.rt.bus.subscribe() as events:
            async with simulated(node, ("S16", "1.6"), ("S201", "2.0.1"), ("S21", "2.1")) as sims:
                for st in sims:
                    r = await node.command(
                        st.id, "update-firmware", {"location": f"{web}/fw/sim-2.bin"}
                    )
                    assert r.status_code == 200, r.text
                    seen = await _statuses(events, st.id, "station.firmware", "Installed")
                    two = ["InstallRebooting"] if st.version != "1.6" else []
                    assert seen == [
                        "Requested",
                        "Downloading",
                        "Downloaded",
                        "Installing",
                        *two,
                        "Installed",
                    ], st.id
                    info = await node.station(st.id)
                    assert info["firmware_version"] == "2.0.0-sim"
                    assert info["firmware"]["status"] == "Installed"
                    assert st.boot_count == 2

                # 1.6 with the security extension: a signed update
                r = await node.command(
                    "S16",
                    "update-firmware",
                    {"location": f"{web}/fw/sim-2.bin", "signature": "c2ln",
                     "signing_certificate": "-----BEGIN CERTIFICATE-----"},
                )  # fmt: skip
                assert r.status_code == 200, r.text
                rid = r.json()["response"]["requestId"]
                seen = await _statuses(events, "S16", "station.firmware", "Installed")
                assert seen == ["Requested", "Downloading", "Downloaded", "SignatureVerified",
                                "Installing", "InstallRebooting", "Installed"]  # fmt: skip
                assert (await node.station("S16"))["firmware"]["request_id"] == rid

                # a download that fails, retried once
                s201 = sims[1]
                r = await node.command(
                    "S201",
                    "update-firmware",
                    {"location": f"{web}/fw/missing.bin", "retries": 1, "retry_interval_s": 0},
                )
                rid = r.json()["response"]["requestId"]
                seen = await _statuses(events, "S201", "station.firmware", "DownloadFailed")
                assert seen == ["Requested", "Downloading", "Downloading", "DownloadFailed"]
                fw = (await node.station("S201"))["firmware"]
                assert (fw["status"], fw["request_id"]) == ("DownloadFailed", rid)
                assert s201.boot_count == 2  # nothing installed

                # while it waits for its download time, a trigger brings the current status
                later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
                r = await node.command(
                    "S201",
                    "update-firmware",
                    {"location": f"{web}/fw/sim-2.bin", "retrieve_at": later},
                )
                await _statuses(events, "S201", "station.firmware", "DownloadScheduled")
                r = await node.command(
                    "S201", "trigger-message", {"message": "FirmwareStatusNotification"}
                )
                assert r.json()["response"]["status"] == "Accepted"
                seen = await _statuses(events, "S201", "station.firmware", "Installed")
                assert seen[0] == "DownloadScheduled"  # the trigger's answer
                assert seen[1:3] == ["Downloading", "Downloaded"]
                # not busy any more: a trigger brings Idle
                await node.command(
                    "S201", "trigger-message", {"message": "FirmwareStatusNotification"}
                )
                assert await _statuses(events, "S201", "station.firmware", "Idle") == ["Idle"]

                # diagnostics (1.6) and logs (2.x) arrive in the upload endpoint
                uploads = (("S16", "get-diagnostics"), ("S16", "get-log"), ("S21", "get-log"))
                for st, command in uploads:
                    r = await node.command(st, command, {})
                    assert r.status_code == 200, r.text
                    answer = r.json()["response"]
                    name = answer.get("fileName") or answer.get("filename")
                    seen = await _statuses(events, st, "station.upload", "Uploaded")
                    assert seen == ["Requested", "Uploading", "Uploaded"]
                    up = (await node.station(st))["upload"]
                    assert up["kind"] == ("diagnostics" if command == "get-diagnostics" else "log")
                    assert up["file"] == name
                    assert up["location"].endswith(f"/api/v1/uploads/{st}/{{token}}")
                    files = (await node.get(f"/api/v1/stations/{st}/uploads")).json()
                    assert name in [f["name"] for f in files]
                    got = await node.get(f"/api/v1/stations/{st}/uploads/{name}")
                    assert got.status_code == 200
                    assert got.content.startswith(f"station {st} (".encode())
                    assert "firmware 2.0.0-sim" in got.text
                    assert (tmp_path / "uploads" / st / name).read_bytes() == got.content


@SQLITE
async def test_bad_requests_low_roles_and_upload_tokens_are_refused(node, tmp_path):
    node.rt.settings.upload_dir = tmp_path / "uploads"
    good = {"location": "https://fw.example.com/a.bin"}
    r = await node.command("NOPE", "update-firmware", good)
    assert r.status_code == 404
    assert (await node.http.post("/api/v1/stations", json={"id": "OFF"})).status_code == 201
    assert (await node.command("OFF", "update-firmware", good)).status_code == 409
    assert (await node.get("/api/v1/stations/NOPE/uploads")).status_code == 404
    for name, body in [
        ("update-firmware", {}),
        ("update-firmware", {"location": "not a url"}),
        ("update-firmware", {"location": "ftp:///no-host"}),
        ("update-firmware", {"location": "file:///etc/passwd"}),
        ("update-firmware", {**good, "retries": -1}),
        ("update-firmware", {**good, "retry_interval_s": -5}),
        ("get-log", {"log_type": "Everything"}),
        (
            "get-diagnostics",
            {"start_time": "2026-03-02T00:00:00Z", "stop_time": "2026-03-01T00:00:00Z"},
        ),
    ]:
        r = await node.command("OFF", name, body)
        assert r.status_code == 422, (name, body, r.text)
    viewer = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('viewer')}"}
    operator = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('operator')}"}
    async with connected(Firmware201, node.ocpp_url, "UP201", "ocpp2.0.1") as cp:
        await cp.call(
            call201.BootNotification(
                charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp"
            )
        )
        for who in (viewer, operator):
            for name in ("update-firmware", "get-log"):
                r = await node.http.post(
                    f"/api/v1/stations/UP201/commands/{name}", json=good, headers=who
                )
                assert r.status_code == 403, r.text
            r = await node.http.get("/api/v1/stations/UP201/uploads", headers=who)
            assert r.status_code == 403
        assert not [a for a, _ in cp.received if a in ("UpdateFirmware", "GetLog")]
        r = await node.command("UP201", "get-diagnostics", {})
        assert r.status_code == 400 and "2.0.1" in r.json()["detail"]

        cp.log_status = "Accepted"
        r = await node.command("UP201", "get-log", {})
        assert r.status_code == 200, r.text
        location = cp.received[-1][1]["log"]["remote_location"]
        base = f"http://127.0.0.1:{node.rt.http_port}/api/v1/uploads/UP201/"
        assert location.startswith(base)
        async with httpx.AsyncClient() as station:  # no credentials but the token
            assert (await station.put(base + "forged", content=b"x")).status_code == 403
            elsewhere = location.replace("/UP201/", "/OFF/")
            assert (await station.put(elsewhere, content=b"x")).status_code == 403
            r = await station.put(location + "/../../evil.log", content=b"hello")
            assert r.status_code in (403, 404)  # a path that leaves the token is no upload
            r = await station.put(location + "/my log.txt", content=b"hello\n")
            assert r.status_code == 201, r.text
            assert r.json() == {"stored": "my_log.txt", "size": 6}
            assert (await station.put(location, content=b"again")).status_code == 403  # spent
        got = await node.get("/api/v1/stations/UP201/uploads/my_log.txt")
        assert got.content == b"hello\n"
        assert (await node.get("/api/v1/stations/UP201/uploads/nothing.log")).status_code == 404
        assert (await node.get("/api/v1/stations/UP201/uploads/..%2Fx")).status_code == 404
        assert (await node.station("UP201"))["upload"]["file"] == "my_log.txt"

        node.rt.settings.upload_max_bytes = 10
        await node.command("UP201", "get-log", {"location": None})
        location = cp.received[-1][1]["log"]["remote_location"]
        async with httpx.AsyncClient() as station:
            r = await station.post(location, content=b"x" * 11)
            assert r.status_code == 413
            r = await station.post(location, content=b"x" * 10)  # the token is still good
            assert r.status_code == 201

        node.rt.settings.public_url = "https://csms.example.com/"  # behind a proxy
        await node.command("UP201", "get-log", {})
        location = cp.received[-1][1]["log"]["remote_location"]
        assert location.startswith("https://csms.example.com/api/v1/uploads/UP201/")
