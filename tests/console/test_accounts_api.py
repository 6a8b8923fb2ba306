"""Users and API tokens through the API (admins only): secrets shown once, guard rails
against locking the admins out, resets that end sessions, revocation that bites at once."""

from __future__ import annotations

import asyncio
import time

import httpx
import pyotp
from typer.testing import CliRunner

from conftest import Node
from evflex.cli import app

PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple tongue sideways"


def _client(node: Node, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.rt.http_port}", headers=headers, timeout=10
    )


async def _login(web: httpx.AsyncClient, user: str, password: str, code: str) -> int:
    """Log ``web`` in (the CSRF token goes into its headers); the answer's status."""
    body = {"username": user, "password": password, "totp": code}
    r = await web.post("/api/v1/auth/login", json=body)
    if r.status_code == 200:
        web.headers["X-CSRF-Token"] = r.json()["csrf_token"]
    return r.status_code


def _cli(database_url: str, *args: str) -> None:
    out = CliRunner().invoke(app, [*args, "--database-url", database_url])
    assert out.exit_code == 0, out.output


def _next_code(secret: str) -> str:
    """The next step's code: accepted (one step of drift) after this step's was used."""
    return pyotp.TOTP(secret).at(time.time() + 30)


async def _user(node: Node, name: str) -> dict:
    r = await node.http.get("/api/v1/users")
    assert r.status_code == 200, r.text
    return next(u for u in r.json() if u["username"] == name)


async def test_users_created_listed_changed_and_reset(node: Node, database_url):
    admin = node.http  # a token, not one of the users
    r = await admin.post(
        "/api/v1/users", json={"username": "ada", "role": "admin", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    ada = r.json()
    secret = ada["totp_secret"]
    assert ada["username"] == "ada" and ada["role"] == "admin" and not ada["disabled"]
    assert (
        ada["otpauth_uri"].startswith("otpauth://totp/")
        and f"secret={secret}" in ada["otpauth_uri"]
    )
    # the secret is shown once: never in the list
    listing = await admin.get("/api/v1/users")
    assert secret not in listing.text and "password" not in listing.text
    row = await _user(node, "ada")
    assert row["role"] == "admin" and row["last_login_at"] is None and not row["totp_configured"]

    # bad input: the reason, nothing stored
    bad = [
        ({"username": "ada", "role": "viewer", "password": PASSWORD}, 409, "exists"),
        ({"username": "bo", "role": "root", "password": PASSWORD}, 422, "role"),
        ({"username": "bo", "role": "viewer", "password": "short"}, 422, "at least 10"),
        ({"username": "b o", "role": "viewer", "password": PASSWORD}, 422, "username"),
        ({"username": "bo", "password": PASSWORD, "totp": "1"}, 422, "totp"),
    ]
    for body, status, why in bad:
        r = await admin.post("/api/v1/users", json=body)
        assert r.status_code == status and why in r.text, (body, r.text)
    assert [u["username"] for u in (await admin.get("/api/v1/users")).json()] == ["ada"]

    async with _client(node) as web:
        assert await _login(web, "ada", PASSWORD, pyotp.TOTP(secret).now()) == 200
        row = await _user(node, "ada")
        assert row["last_login_at"] is not None and row["totp_configured"]
        # an admin cannot lock themself out, nor the last enabled admin be locked out
        for change in ({"disabled": True}, {"role": "operator"}):
            r = await web.patch("/api/v1/users/ada", json=change)
            assert r.status_code == 409 and "your own account" in r.json()["detail"]
            r = await admin.patch("/api/v1/users/ada", json=change)
            assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]
        assert (await _user(node, "ada"))["role"] == "admin"

        # ada adds an operator, makes him an admin: now ada may be demoted by another admin
        r = await web.post(
            "/api/v1/users", json={"username": "bo", "role": "operator", "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        bo_secret = r.json()["totp_secret"]
        r = await web.patch("/api/v1/users/bo", json={"role": "admin"})
        assert r.status_code == 200 and r.json()["role"] == "admin"
        r = await web.patch("/api/v1/users/ada", json={"role": "operator"})
        assert r.status_code == 409  # still not herself
        r = await admin.patch("/api/v1/users/ada", json={"role": "operator"})
        assert r.status_code == 200 and r.json()["role"] == "operator"
        assert (await web.get("/api/v1/users")).status_code == 403  # at once: ada is an operator
        r = await admin.patch("/api/v1/users/bo", json={"disabled": True})
        assert r.status_code == 409 and "last enabled admin" in r.json()["detail"]

    async with _client(node) as bo:
        assert await _login(bo, "bo", PASSWORD, pyotp.TOTP(bo_secret).now()) == 200
        r = await bo.patch("/api/v1/users/ada", json={"role": "admin"})
        assert r.status_code == 200
        # disabling ends the sessions: enabling again does not bring them back
        r = await admin.patch("/api/v1/users/bo", json={"disabled": True})
        assert r.status_code == 200 and r.json()["disabled"], r.text
        assert (await bo.get("/api/v1/auth/me")).status_code == 401
        r = await admin.patch("/api/v1/users/bo", json={"disabled": False})
        assert r.status_code == 200 and not r.json()["disabled"]
        assert (await bo.get("/api/v1/auth/me")).status_code == 401
        assert await _login(bo, "bo", PASSWORD, _next_code(bo_secret)) == 200

        # a new password: the sessions end; the policy is the CLI's
        r = await admin.post("/api/v1/users/bo/reset-password", json={"password": "short"})
        assert r.status_code == 422 and "at least 10 characters" in r.text
        r = await admin.post("/api/v1/users/bo/reset-password", json={"password": NEW_PASSWORD})
        assert r.status_code == 200 and r.json()["username"] == "bo"
        assert (await bo.get("/api/v1/auth/me")).status_code == 401

        # a new TOTP secret, once; the sessions end; the old secret's codes are refused
        r = await admin.post("/api/v1/users/bo/reset-totp")
        assert r.status_code == 200
        new_secret = r.json()["totp_secret"]
        assert new_secret != bo_secret and f"secret={new_secret}" in r.json()["otpauth_uri"]
        assert new_secret not in (await admin.get("/api/v1/users")).text
        assert not (await _user(node, "bo"))["totp_configured"]
        assert await _login(bo, "bo", NEW_PASSWORD, pyotp.TOTP(bo_secret).now()) == 401
        assert await _login(bo, "bo", NEW_PASSWORD, pyotp.TOTP(new_secret).now()) == 200

        # the CLI's disable ends the sessions too
        for args in (["disable", "bo"], ["disable", "bo", "--enable"]):
            await asyncio.to_thread(_cli, database_url, "user", *args)
        assert (await bo.get("/api/v1/auth/me")).status_code == 401
        assert not (await _user(node, "bo"))["disabled"]

    for method, path, body in (
        ("PATCH", "/api/v1/users/nobody", {"disabled": True}),
        ("POST", "/api/v1/users/nobody/reset-totp", None),
        ("POST", "/api/v1/users/nobody/reset-password", {"password": NEW_PASSWORD}),
    ):
        r = await admin.request(method, path, json=body)
        assert r.status_code == 404 and "no user 'nobody'" in r.text
    r = await admin.patch("/api/v1/users/bo", json={"role": "owner"})
    assert r.status_code == 422
    r = await admin.patch("/api/v1/users/bo", json={"password": NEW_PASSWORD})
    assert r.status_code == 422  # not a field of PATCH: reset-password is


async def test_api_tokens_shown_once_revoked_at_once_and_roles_refused(node: Node):
    admin = node.http
    r = await admin.post("/api/v1/api-tokens", json={"name": "meter reader", "role": "viewer"})
    assert r.status_code == 201, r.text
    made = r.json()
    token = made["token"]
    assert token.startswith("evf_") and made["role"] == "viewer" and not made["revoked"]
    r = await admin.post("/api/v1/api-tokens", json={"name": "ops", "role": "operator"})
    operator = r.json()["token"]

    listing = await admin.get("/api/v1/api-tokens")
    assert listing.status_code == 200
    assert token not in listing.text and operator not in listing.text  # never the token
    row = next(t for t in listing.json() if t["id"] == made["id"])
    assert "token" not in row and row["name"] == "meter reader" and row["last_used_at"] is None

    async with _client(node, token) as viewer, _client(node, operator) as op:
        assert (await viewer.get("/api/v1/stations")).status_code == 200
        row = next(
            t for t in (await admin.get("/api/v1/api-tokens")).json() if t["id"] == made["id"]
        )
        assert row["last_used_at"] is not None

        # accounts and tokens are for admins, reading them too
        for client, role in ((viewer, "viewer"), (op, "operator")):
            for method, path, body in (
                ("GET", "/api/v1/users", None),
                ("POST", "/api/v1/users", {"username": "eve", "password": PASSWORD}),
                ("PATCH", "/api/v1/users/eve", {"role": "admin"}),
                ("POST", "/api/v1/users/eve/reset-totp", None),
                ("POST", "/api/v1/users/eve/reset-password", {"password": PASSWORD}),
                ("GET", "/api/v1/api-tokens", None),
                ("POST", "/api/v1/api-tokens", {"role": "admin"}),
                ("DELETE", f"/api/v1/api-tokens/{made['id']}", None),
            ):
                r = await client.request(method, path, json=body)
                assert r.status_code == 403, (role, method, path, r.text)
                assert f"role '{role}'" in r.json()["detail"] and "needs 'admin'" in r.text
        assert (await admin.get("/api/v1/users")).json() == []
        assert len((await admin.get("/api/v1/api-tokens")).json()) == 2

        # revoked: refused at the next request
        r = await admin.delete(f"/api/v1/api-tokens/{made['id']}")
        assert r.status_code == 204
        assert (await viewer.get("/api/v1/stations")).status_code == 401
        assert (await op.get("/api/v1/stations")).status_code == 200  # the other one still works
        row = next(
            t for t in (await admin.get("/api/v1/api-tokens")).json() if t["id"] == made["id"]
        )
        assert row["revoked"]

    for method, path, body, status in (
        ("DELETE", "/api/v1/api-tokens/999999", None, 404),
        ("DELETE", "/api/v1/api-tokens/abc", None, 422),
        ("DELETE", f"/api/v1/api-tokens/{2**70}", None, 422),
        ("POST", "/api/v1/api-tokens", {"role": "root"}, 422),
        ("POST", "/api/v1/api-tokens", {"role": "viewer", "name": "x" * 129}, 422),
        ("POST", "/api/v1/api-tokens", {"role": "viewer", "token": "evf_mine"}, 422),
    ):
        r = await admin.request(method, path, json=body)
        assert r.status_code == status, (method, path, body, r.text)
    assert len((await admin.get("/api/v1/api-tokens")).json()) == 2
