"""The audit trail: every API write and refusal, who, from where, the outcome; no secret
stored; filters, pages, CSV; read-only; a changed row is found; the CLI's changes too."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import httpx
import pyotp
from sqlalchemy import delete, update
from typer.testing import CliRunner

from conftest import running_node
from evflex.cli import app as cli
from evflex.security import trail
from evflex.sim import SimStation, StationSpec
from evflex.store.audit_tables import AuditEntry
from evflex.web.auth import add_user

STATION_PASSWORD = "station-secret-pw-4711"
OTTO_PASSWORD = "otto-secret-pw-0815"
CLI_PASSWORD = "cli-made-secret-pw-99"
BAD_TOKEN = "evf_not-a-real-token-but-secret-looking"
JSON = {"content-type": "application/json"}


async def _rows(node, total: int, **params) -> list[dict]:
    """The audit rows once at least ``total`` are stored (rows are written after the answer)."""

    async def enough():
        r = await node.http.get("/api/v1/audit", params={"limit": 1000, **params})
        assert r.status_code == 200, r.text
        return r.json() if int(r.headers["X-Total-Count"]) >= total else None

    return await node.wait_for(enough)


def _one(rows: list[dict], **match) -> dict:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, [(r["action"], r["actor"], r["status"]) for r in rows])
    return found[0]


async def _login(http: httpx.AsyncClient, username: str, password: str, code: str):
    return await http.post(
        "/api/v1/auth/login", json={"username": username, "password": password, "totp": code}
    )


async def test_audit_trail(database_url, tmp_path):
    async with running_node(database_url, allow_unknown_stations=True) as node:
        rt, admin = node.rt, node.http
        base = str(admin.base_url)
        async with rt.sessionmaker() as s, s.begin():
            otto = await add_user(s, "otto", OTTO_PASSWORD, "operator")
        totp = pyotp.TOTP(otto.totp_secret)
        viewer_token = rt.auth.ephemeral_token("viewer", name="wall-screen")
        viewer = httpx.AsyncClient(
            base_url=base, timeout=10, headers={"Authorization": f"Bearer {viewer_token}"}
        )
        ops = httpx.AsyncClient(base_url=base, timeout=10)
        station = SimStation(
            StationSpec(id="AUD-1", ocpp_version="2.0.1", evses=1, password=STATION_PASSWORD),
            node.ocpp_url,
            rt.clock,
        )
        try:
            # an admin registers a station (its password must never be stored in the trail)
            r = await admin.post(
                "/api/v1/stations", json={"id": "AUD-1", "password": STATION_PASSWORD}
            )
            assert r.status_code == 201, r.text
            await station.start(timeout=10)
            # a failed login (wrong one-time code), then otto's login and reset
            wrong = "000000" if totp.now() != "000000" else "111111"
            assert (await _login(ops, "otto", OTTO_PASSWORD, wrong)).status_code == 401
            code = totp.now()
            r = await _login(ops, "otto", OTTO_PASSWORD, code)
            assert r.status_code == 200, r.text
            csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
            r = await ops.post(
                "/api/v1/stations/AUD-1/commands/reset", json={"type": "soft"}, headers=csrf
            )
            assert r.status_code == 200, r.text
            assert r.json()["response"]["status"] == "Accepted"
            # the same write without the CSRF header, a viewer's write, a bad token
            r = await ops.post("/api/v1/stations/AUD-1/commands/reset", json={"type": "soft"})
            assert r.status_code == 403
            r = await viewer.post("/api/v1/stations", json={"id": "AUD-V"})
            assert r.status_code == 403
            r = await admin.get(
                "/api/v1/stations", headers={"Authorization": f"Bearer {BAD_TOKEN}"}
            )
            assert r.status_code == 401
            # a failed write: the body breaks its schema
            r = await admin.post("/api/v1/stations", json={"id": ""})
            assert r.status_code == 422
            # reads are not audited
            assert (await admin.get("/api/v1/stations")).status_code == 200

            rows = await _rows(node, 8)
            assert len(rows) == 8, [(r["action"], r["actor"]) for r in rows]
            created = _one(rows, action="station create", outcome="ok")
            assert created["actor"] == "token:in-process" and created["actor_kind"] == "token"
            assert created["role"] == "admin" and created["status"] == 201
            assert created["target"] == "station AUD-1" and created["source"] == "127.0.0.1"
            assert created["summary"] == {"id": "AUD-1", "password": "[redacted]"}
            assert created["route"] == created["path"] == "/api/v1/stations"

            failed_login = _one(rows, action="login", outcome="refused")
            assert failed_login["actor"] == "anonymous" and failed_login["target"] == "user otto"
            assert failed_login["status"] == 401 and "wrong" in failed_login["reason"]
            login = _one(rows, action="login", outcome="ok")
            assert (login["actor"], login["actor_kind"], login["role"]) == (
                "otto", "session", "operator",
            )  # fmt: skip
            assert login["summary"]["totp"] == "[redacted]" == login["summary"]["password"]

            reset = _one(rows, action="command reset", outcome="ok")
            assert (reset["actor"], reset["role"], reset["answer"]) == (
                "otto",
                "operator",
                "Accepted",
            )
            assert reset["target"] == "station AUD-1" and reset["summary"] == {"type": "soft"}
            assert reset["route"] == "/api/v1/stations/{station_id}/commands/reset"
            no_csrf = _one(rows, action="command reset", outcome="refused")
            assert no_csrf["actor"] == "otto" and "CSRF" in no_csrf["reason"]

            forbidden = _one(rows, actor="token:wall-screen")
            assert forbidden["outcome"] == "refused" and forbidden["status"] == 403
            assert forbidden["role"] == "viewer" and "needs 'admin'" in forbidden["reason"]
            assert (
                forbidden["action"] == "station create" and forbidden["target"] == "station AUD-V"
            )

            bad_token = _one(rows, status=401, actor="anonymous", action="stations read")
            assert bad_token["outcome"] == "refused" and bad_token["source"] == "127.0.0.1"

            invalid = _one(rows, status=422)
            assert invalid["outcome"] == "failed" and invalid["reason"].startswith("id:")

            # the Security events are kept besides
            r = await admin.get("/api/v1/events", params={"kind": "Security"})
            types = {e["type"] for e in r.json()}
            assert {"LoginFailed", "ForbiddenRole", "InvalidCsrfToken", "InvalidApiToken"} <= types

            # filters, pages
            async def get(**params):
                r = await viewer.get("/api/v1/audit", params=params)  # a viewer may read it
                assert r.status_code == 200, r.text
                return int(r.headers["X-Total-Count"]), r.json()

            n, got = await get(actor="OTTO")
            assert n == 3 and {r["action"] for r in got} == {"login", "command reset"}
            n, got = await get(outcome="refused")
            assert n == 4 and all(r["status"] in (401, 403) for r in got)
            n, got = await get(target="aud-1", action="command")
            assert n == 2
            n, _ = await get(actor="%")  # a LIKE wildcard is a plain character
            assert n == 0
            later = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
            assert (await get(**{"from": later}))[0] == 0
            assert (await get(to=later))[0] == 8
            n, first = await get(limit=3)
            _, second = await get(limit=3, offset=3)
            assert n == 8 and len(first) == len(second) == 3
            assert [r["id"] for r in first + second] == sorted(
                (r["id"] for r in first + second), reverse=True
            )
            for params in ({"outcome": "maybe"}, {"from": "2026-01-01T00:00:00"}, {"limit": 0},
                           {"offset": -1}, {"actor": "x" * 129}):  # fmt: skip
                r = await viewer.get("/api/v1/audit", params=params)
                assert r.status_code == 422, (params, r.text)

            # CSV, with the same filters; the export itself is audited
            r = await viewer.get("/api/v1/audit.csv", params={"actor": "otto"})
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            table = list(csv.DictReader(io.StringIO(r.text)))
            assert [x["action"] for x in table] == ["login", "command reset", "command reset"]
            assert table[1]["answer"] == "Accepted" and table[1]["source"] == "127.0.0.1"
            full = (await admin.get("/api/v1/audit.csv")).text
            rows = await _rows(node, 10)
            export = _one(rows, action="audit export", actor="token:wall-screen")
            assert export["outcome"] == "ok" and export["summary"] == {"query": {"actor": "otto"}}

            # read-only: no route writes, and nobody without credentials reads
            for method in ("PUT", "PATCH", "DELETE"):
                for path in ("/api/v1/audit", "/api/v1/audit/verify"):
                    assert (await admin.request(method, path)).status_code == 405
            assert (await ops.post("/api/v1/auth/logout")).status_code == 204
            assert (await ops.get("/api/v1/audit")).status_code == 401

            # the command line's change joins the same chain
            r = await asyncio.to_thread(CliRunner().invoke, cli, [
                "user", "add", "carla", "--role", "viewer", "--password", CLI_PASSWORD,
                "--database-url", database_url,
            ])  # fmt: skip
            assert r.exit_code == 0, r.output
            rows = await _rows(node, 1, action="user create")
            added = _one(rows, action="user create")
            assert added["actor"].startswith("cli:") and added["actor_kind"] == "cli"
            assert added["target"] == "user carla" and added["outcome"] == "ok"
            assert added["summary"] == {"username": "carla", "role": "viewer"}
            r = await asyncio.to_thread(CliRunner().invoke, cli, [
                "user", "disable", "nobody", "--database-url", database_url,
            ])  # fmt: skip
            assert r.exit_code == 1
            rows = await _rows(node, 1, action="user disable")
            assert rows[0]["outcome"] == "failed" and rows[0]["reason"] == "no user 'nobody'"

            # the driver page's writes: a claim where no session runs
            claim = {"station_id": "AUD-1", "evse_id": 1}
            assert (await ops.post("/api/v1/driver/sessions", json=claim)).status_code == 404
            rows = await _rows(node, 1, action="driver session create")
            assert (rows[0]["actor"], rows[0]["outcome"]) == ("driver", "failed")
            assert rows[0]["target"] == "station AUD-1" and rows[0]["summary"] == claim

            # a body the input guard refuses: a lone UTF-16 surrogate is stored as "?", NaN as text
            body = b'{"id": "\\ud800x", "n": NaN}'
            r = await admin.post("/api/v1/sites", content=body, headers=JSON)
            assert r.status_code == 422
            [row] = await _rows(node, 1, action="site create")
            assert row["outcome"] == "failed" and row["summary"] == {"id": "?x", "n": "nan"}

            # 8 + 2 exports + 6 refused edits (405) + logout + a read without login + 2 CLI + 2
            rows = await _rows(node, 22)
            assert len(rows) == 22
            edits = [r for r in rows if r["status"] == 405]
            assert len(edits) == 6 and {r["outcome"] for r in edits} == {"failed"}
            assert {r["actor"] for r in edits} == {"token:in-process"}
            assert {r["action"] for r in edits} >= {"audit delete", "audit set", "audit update"}
            logout = _one(rows, action="logout")
            assert logout["actor"] == "otto" and logout["outcome"] == "ok"
            _one(rows, action="audit read", outcome="refused")

            # no secret in any row or export (hashes and times left out: digits may meet a code)
            noise = ("id", "at", "hash", "prev_hash", "duration_ms")
            text = json.dumps([{k: v for k, v in r.items() if k not in noise} for r in rows])
            text += json.dumps([
                {k: v for k, v in x.items() if k not in noise}
                for x in csv.DictReader(io.StringIO(full))
            ])  # fmt: skip
            for secret in (STATION_PASSWORD, OTTO_PASSWORD, CLI_PASSWORD, BAD_TOKEN, code,
                           viewer_token, csrf["X-CSRF-Token"]):  # fmt: skip
                assert secret not in text

            # the chain is intact; a changed row, then a deleted last row, are found
            r = await viewer.get("/api/v1/audit/verify")
            assert r.json() == {"ok": True, "rows": 22, "first_bad_id": None, "reason": None}
            out = tmp_path / "audit.csv"
            r = await asyncio.to_thread(CliRunner().invoke, cli, [
                "audit", "export", "--out", str(out), "--actor", "otto",
                "--database-url", database_url,
            ])  # fmt: skip
            assert r.exit_code == 0 and "4 audit rows" in r.output, r.output
            exported = list(csv.DictReader(out.open(encoding="utf-8")))
            assert [x["action"] for x in exported] == [
                "login", "command reset", "command reset", "logout",
            ]  # fmt: skip
            async with rt.sessionmaker() as s, s.begin():
                await s.execute(
                    update(AuditEntry).where(AuditEntry.id == reset["id"]).values(actor="ada")
                )
            r = await viewer.get("/api/v1/audit/verify")
            assert r.json()["ok"] is False and r.json()["first_bad_id"] == reset["id"]
            r = await asyncio.to_thread(CliRunner().invoke, cli, [
                "audit", "verify", "--database-url", database_url])  # fmt: skip
            assert r.exit_code == 1 and f"row {reset['id']}" in r.output
            async with rt.sessionmaker() as s, s.begin():
                await s.execute(
                    update(AuditEntry).where(AuditEntry.id == reset["id"]).values(actor="otto")
                )
                await s.execute(delete(AuditEntry).where(AuditEntry.id == rows[0]["id"]))
            async with rt.sessionmaker() as s:
                result = await trail.verify(s)
            assert result["ok"] is False and result["reason"] == "rows at the end were deleted"
        finally:
            await station.stop()
            await viewer.aclose()
            await ops.aclose()
