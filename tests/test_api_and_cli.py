"""REST API bookkeeping, configuration precedence and the management CLI."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from evflex.cli import app
from evflex.config import load_settings


async def test_a3_station_registration_api(node):
    for site in ("depot", "other"):
        r = await node.http.post("/api/v1/sites", json={"id": site, "import_limit_kw": 50})
        assert r.status_code == 201, r.text
    r = await node.http.post("/api/v1/stations", json={"id": "X", "site_id": "nowhere"})
    assert r.status_code == 422 and "nowhere" in r.json()["detail"]
    r = await node.http.post("/api/v1/stations", json={"id": "API-1", "site_id": "depot"})
    assert r.status_code == 201
    body = r.json()
    assert body["id"] == "API-1" and body["site_id"] == "depot" and body["connected"] is False
    assert (await node.http.post("/api/v1/stations", json={"id": "API-1"})).status_code == 409
    bad = [{"id": ""}, {"id": "a/b"}, {"id": "X", "password": "short"}, {"id": "X", "junk": 1}]
    for payload in bad:
        r = await node.http.post("/api/v1/stations", json=payload)
        assert r.status_code == 422, payload
    r = await node.http.patch("/api/v1/stations/API-1", json={"site_id": "other"})
    assert r.json()["site_id"] == "other"
    assert (await node.http.patch("/api/v1/stations/NOPE", json={})).status_code == 404
    listed = (await node.http.get("/api/v1/stations", params={"site_id": "other"})).json()
    assert [s["id"] for s in listed] == ["API-1"]
    assert (await node.http.delete("/api/v1/stations/API-1")).status_code == 204
    assert (await node.http.get("/api/v1/stations/API-1")).status_code == 404


async def test_a2_id_token_table_api(node):
    r = await node.http.post("/api/v1/id-tokens", json={"id_token": "RFID1"})
    assert r.status_code == 201 and r.json()["status"] == "Accepted"
    assert (await node.http.post("/api/v1/id-tokens", json={"id_token": "RFID1"})).status_code \
        == 409
    r = await node.http.put("/api/v1/id-tokens/RFID1", json={"id_token": "RFID1",
                                                             "status": "Blocked"})
    assert r.json()["status"] == "Blocked"
    r = await node.http.put("/api/v1/id-tokens/RFID1", json={"id_token": "OTHER"})
    assert r.status_code == 400
    r = await node.http.post("/api/v1/id-tokens", json={"id_token": "R2", "status": "Maybe"})
    assert r.status_code == 422
    assert [t["id_token"] for t in (await node.http.get("/api/v1/id-tokens")).json()] == ["RFID1"]
    assert (await node.http.delete("/api/v1/id-tokens/RFID1")).status_code == 204
    assert (await node.http.get("/api/v1/id-tokens/RFID1")).status_code == 404


async def test_meter_values_query_validation(node):
    r = await node.http.get("/api/v1/stations/NOPE/meter-values")
    assert r.status_code == 404
    await node.http.post("/api/v1/stations", json={"id": "MVQ"})
    r = await node.http.get("/api/v1/stations/MVQ/meter-values",
                            params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert r.status_code == 400
    r = await node.http.get("/api/v1/stations/MVQ/meter-values", params={"from": "yesterday"})
    assert r.status_code == 422
    assert (await node.http.get("/docs")).status_code == 200
    spec = (await node.http.get("/openapi.json")).json()
    assert "/api/v1/stations/{station_id}/commands/reset" in spec["paths"]


def test_settings_precedence(tmp_path, monkeypatch):
    cfg = tmp_path / "evflex.toml"
    cfg.write_text('ocpp_port = 9100\nhttp_port = 8100\nallow_unknown_stations = true\n')
    monkeypatch.setenv("EVFLEX_HTTP_PORT", "8200")
    s = load_settings(cfg, ocpp_port=None, host="0.0.0.0")
    assert s.ocpp_port == 9100  # from the file
    assert s.http_port == 8200  # the environment beats the file
    assert s.host == "0.0.0.0"  # the flag beats both
    assert s.allow_unknown_stations is True
    s = load_settings(cfg, http_port=8300)
    assert s.http_port == 8300
    monkeypatch.delenv("EVFLEX_HTTP_PORT")
    assert load_settings(None).http_port == 8000
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_cli_station_and_token_management(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    r = runner.invoke(app, ["station", "add", "CLI-1", "--password", "sixteen-chars-ok!",
                            "--database-url", db])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["station", "add", "CLI-1", "--database-url", db])
    assert r.exit_code == 1 and "already exists" in r.output
    r = runner.invoke(app, ["station", "add", "CLI-2", "--password", "short",
                            "--database-url", db])
    assert r.exit_code == 2
    r = runner.invoke(app, ["id-token", "add", "CARD9", "--database-url", db])
    assert r.exit_code == 0
    r = runner.invoke(app, ["id-token", "add", "CARD9", "--status", "Nonsense",
                            "--database-url", db])
    assert r.exit_code == 2
    r = runner.invoke(app, ["station", "list", "--database-url", db])
    assert r.exit_code == 0 and "CLI-1" in r.output


async def test_h1_cli_registered_station_authenticates(tmp_path):
    """A station added by the CLI is known to a server on the same database."""
    import websockets
    from websockets.exceptions import InvalidStatus

    from conftest import start_node
    from ocpp_clients import basic_auth

    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    r = await asyncio.to_thread(CliRunner().invoke, app, [
        "station", "add", "CLI-SEC", "--password", "sixteen-chars-ok!", "--database-url", db])
    assert r.exit_code == 0
    rt, http = await start_node(db)
    try:
        url = f"ws://127.0.0.1:{rt.ocpp_port}/ocpp/CLI-SEC"
        async with websockets.connect(url, subprotocols=["ocpp1.6"],
                                      additional_headers=basic_auth("CLI-SEC",
                                                                    "sixteen-chars-ok!")) as ws:
            assert ws.subprotocol == "ocpp1.6"
        with pytest.raises(InvalidStatus):
            async with websockets.connect(url, subprotocols=["ocpp1.6"]):
                pass
    finally:
        await http.aclose()
        await rt.stop()
