"""Access control: API tokens, password + TOTP logins, roles, CSRF, rate limiting, SSE."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pyotp
import pytest
from typer.testing import CliRunner

from conftest import Node
from evflex.cli import app
from evflex.security.audit import FailureLimiter
from evflex.web import auth
from evflex.web.auth import required_role, totp_step

PASSWORD = "correct horse battery"


def _client(node: Node, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.rt.http_port}", headers=headers, timeout=10
    )


async def _add_user(node: Node, name: str, role: str) -> str:
    async with node.rt.sessionmaker() as s, s.begin():
        user = await auth.add_user(s, name, PASSWORD, role)
    return user.totp_secret


def _cli_token(database_url: str, role: str) -> str:
    out = CliRunner().invoke(
        app, ["token", "create", "--role", role, "--database-url", database_url]
    )
    assert out.exit_code == 0, out.output
    return out.output.strip().splitlines()[-1]


async def test_api_needs_a_token_and_roles_are_enforced(node, database_url):
    async with _client(node) as anon:
        r = await anon.get("/api/v1/stations")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in r.json()["detail"]
        assert (await anon.get("/api/v1/health")).status_code == 200  # probes stay open
        assert (await anon.get("/login")).status_code == 200
        assert (
            await anon.get("/api/v1/transactions", headers={"Authorization": "Bearer nope"})
        ).status_code == 401

    # tokens from the CLI, on the server's database (the CLI migrates it too)
    viewer = await asyncio.to_thread(_cli_token, database_url, "viewer")
    operator = await asyncio.to_thread(_cli_token, database_url, "operator")
    assert viewer.startswith("evf_") and viewer != operator
    assert (
        await node.http.post("/api/v1/sites", json={"id": "s1", "import_limit_kw": 40})
    ).status_code == 201
    async with _client(node, viewer) as v, _client(node, operator) as op:
        assert (await v.get("/api/v1/sites/s1")).status_code == 200
        r = await v.patch("/api/v1/sites/s1", json={"import_limit_kw": 30})
        assert r.status_code == 403 and "needs 'operator'" in r.json()["detail"]
        r = await op.patch("/api/v1/sites/s1", json={"import_limit_kw": 30})
        assert r.status_code == 200 and r.json()["import_limit_kw"] == 30
        # registration is for admins; card numbers are not for viewers
        r = await op.post("/api/v1/stations", json={"id": "X-1"})
        assert r.status_code == 403 and "needs 'admin'" in r.json()["detail"]
        assert (await v.get("/api/v1/id-tokens")).status_code == 403
        assert (await op.get("/api/v1/id-tokens")).status_code == 200
        # station commands: day-to-day ones for operators, configuration for admins
        r = await op.post("/api/v1/stations/NOPE/commands/reset", json={})
        assert r.status_code == 404  # allowed, and then: no such station
        r = await op.post(
            "/api/v1/stations/NOPE/commands/change-configuration", json={"key": "a", "value": "b"}
        )
        assert r.status_code == 403
        # nothing was changed by the refused calls
        site = (await node.http.get("/api/v1/sites/s1")).json()
        assert site["import_limit_kw"] == 30
        assert (await node.http.get("/api/v1/stations/X-1")).status_code == 404

    out = await asyncio.to_thread(
        CliRunner().invoke, app, ["token", "revoke", viewer, "--database-url", database_url]
    )
    assert out.exit_code == 0, out.output
    async with _client(node, viewer) as v:
        assert (await v.get("/api/v1/sites")).status_code == 401


async def test_login_with_password_and_totp(node):
    secret = await _add_user(node, "alice", "operator")
    totp = pyotp.TOTP(secret)
    async with _client(node) as web:
        bad = [
            {"username": "alice", "password": "wrong password", "totp": totp.now()},
            {
                "username": "alice",
                "password": PASSWORD,
                "totp": "000000" if totp.now() != "000000" else "111111",
            },
            {"username": "mallory", "password": PASSWORD, "totp": totp.now()},
        ]
        for body in bad:
            r = await web.post("/api/v1/auth/login", json=body)
            assert r.status_code == 401, body
            # the same answer whichever factor was wrong
            assert r.json()["detail"] == "wrong user name, password or one-time code"
            assert "set-cookie" not in r.headers

        code = totp.now()
        r = await web.post(
            "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD, "totp": code}
        )
        assert r.status_code == 200, r.text
        me = r.json()
        assert me["username"] == "alice" and me["role"] == "operator" and me["csrf_token"]
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback
        assert (await web.get("/api/v1/auth/me")).json()["username"] == "alice"
        assert (await web.get("/api/v1/stations")).status_code == 200
        # the dashboard page is served to a logged-in browser
        page = await web.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]

        # changes need the CSRF token along with the cookie
        await node.http.post("/api/v1/sites", json={"id": "s2", "import_limit_kw": 40})
        r = await web.patch("/api/v1/sites/s2", json={"import_limit_kw": 20})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
        r = await web.patch(
            "/api/v1/sites/s2",
            json={"import_limit_kw": 20},
            headers={"X-CSRF-Token": me["csrf_token"]},
        )
        assert r.status_code == 200 and r.json()["import_limit_kw"] == 20

        # a code is good once: the same code again is refused
        async with _client(node) as other:
            r = await other.post(
                "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD, "totp": code}
            )
            assert r.status_code == 401

        assert (
            await web.post("/api/v1/auth/logout", headers={"X-CSRF-Token": me["csrf_token"]})
        ).status_code == 204
        web.cookies.clear()
        assert (await web.get("/api/v1/auth/me")).status_code == 401
        r = await web.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/login"


async def test_login_rate_limit_and_secure_cookie(node):
    secret = await _add_user(node, "bob", "viewer")
    async with _client(node) as web:
        for _ in range(5):
            r = await web.post(
                "/api/v1/auth/login", json={"username": "bob", "password": "nope", "totp": "123456"}
            )
            assert r.status_code == 401
        # now even the right password and code are turned away, with a time to wait
        right = {"username": "bob", "password": PASSWORD, "totp": pyotp.TOTP(secret).now()}
        r = await web.post("/api/v1/auth/login", json=right)
        assert r.status_code == 429, r.text
        assert 1 <= int(r.headers["retry-after"]) <= 300
        # the process and everyone else live on
        assert (await node.http.get("/api/v1/stations")).status_code == 200
    node.rt.auth.limiter = FailureLimiter()  # the window has passed
    async with _client(node) as web:
        r = await web.post("/api/v1/auth/login", json=right, headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 200, r.text
        assert "secure" in r.headers["set-cookie"].lower()
        r = await web.post("/api/v1/auth/login", json={"username": "bob"})
        assert r.status_code == 422


async def test_event_stream_needs_auth_and_carries_events(node):
    async with _client(node) as anon:
        assert (await anon.get("/api/v1/stream")).status_code == 401

    async def first_event() -> dict:
        async with node.http.stream("GET", "/api/v1/stream") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event == "site.changed":
                    return json.loads(line.removeprefix("data: "))
        raise AssertionError("stream ended")

    await node.http.post("/api/v1/sites", json={"id": "s3", "import_limit_kw": 40})
    reader = asyncio.create_task(first_event())
    await asyncio.sleep(0.3)
    await node.http.patch("/api/v1/sites/s3", json={"import_limit_kw": 25})
    msg = await asyncio.wait_for(reader, 5)
    assert msg["topic"] == "site.changed" and msg["data"]["site_id"] == "s3"
    assert msg["data"]["fields"] == ["import_limit_kw"]


def test_totp_window_and_replay():
    secret = pyotp.random_base32()
    totp = pyotp.TOTP(secret)
    now = time.time()
    step = int(now // 30)
    assert totp_step(secret, totp.at(now), now, None) == step
    assert totp_step(secret, totp.at(now - 30), now, None) == step - 1  # a slow phone
    assert totp_step(secret, totp.at(now - 90), now, None) is None  # too old
    assert totp_step(secret, totp.at(now), now, step) is None  # used already
    assert totp_step(secret, "12345", now, None) is None
    assert totp_step(secret, "abcdef", now, None) is None


def test_limiter_counts_per_key_and_forgets():
    lim = FailureLimiter(max_failures=3, window_s=60)
    lim.fail(["ip:a", "user:x"], now=0)
    lim.fail(["ip:a", "user:x"], now=10)
    assert lim.retry_after(["ip:a"], now=11) is None
    lim.fail(["ip:a", "user:y"], now=20)
    assert lim.retry_after(["ip:a", "user:z"], now=21) == 40  # the first failure leaves at 60
    assert lim.retry_after(["ip:b", "user:x"], now=21) is None  # user x: two failures only
    assert lim.retry_after(["ip:a"], now=61) is None


@pytest.mark.parametrize(
    ("method", "path", "params", "role"),
    [
        ("GET", "/api/v1/stations", {}, "viewer"),
        ("GET", "/api/v1/id-tokens", {}, "operator"),
        ("PATCH", "/api/v1/sites/{site_id}", {}, "operator"),
        ("POST", "/api/v1/transactions/{tx_pk}/priority", {}, "operator"),
        ("POST", "/api/v1/stations", {}, "admin"),
        ("DELETE", "/api/v1/sites/{site_id}", {}, "admin"),
        (
            "POST",
            "/api/v1/stations/{station_id}/commands/{command}",
            {"command": "reset"},
            "operator",
        ),
        (
            "POST",
            "/api/v1/stations/{station_id}/commands/{command}",
            {"command": "set-variables"},
            "admin",
        ),
    ],
)
def test_required_roles(method, path, params, role):
    assert required_role(method, path, params) == role


async def test_user_cli_adds_an_account_that_logs_in_and_disables_it(node, database_url):
    def cli(*args: str):
        out = CliRunner().invoke(app, [*args, "--database-url", database_url])
        assert out.exit_code == 0, out.output
        return out.output

    text = await asyncio.to_thread(
        cli, "user", "add", "carol", "--role", "operator", "--password", PASSWORD
    )
    secret = text.split("TOTP secret:")[1].split()[0]
    assert f"secret={secret}" in text.replace("\n", "")  # the otpauth:// URI for a QR code
    async with _client(node) as web:
        body = {"username": "carol", "password": PASSWORD, "totp": pyotp.TOTP(secret).now()}
        r = await web.post("/api/v1/auth/login", json=body)
        assert r.status_code == 200 and r.json()["role"] == "operator"
        await asyncio.to_thread(cli, "user", "disable", "carol")
        assert (await web.get("/api/v1/auth/me")).status_code == 401  # at once
    bad = await asyncio.to_thread(
        CliRunner().invoke, app, ["user", "add", "dave", "--role", "root", "--password", PASSWORD,
                                  "--database-url", database_url],
    )  # fmt: skip
    assert bad.exit_code == 2 and "role must be one of" in bad.output
