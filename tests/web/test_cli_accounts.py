"""The account CLI: passwords asked for when not given, resets that end sessions, token list."""

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
ENV = {"EVFLEX_USER_PASSWORD": None, "COLUMNS": "200"}


def _cli(database_url: str, *args: str, input: str | None = None, code: int = 0) -> str:
    out = CliRunner().invoke(app, [*args, "--database-url", database_url], input=input, env=ENV)
    assert out.exit_code == code, out.output
    return out.output


def _secret(text: str) -> str:
    return text.split("TOTP secret:")[1].split()[0]


def test_user_add_asks_for_the_password_when_not_given(tmp_path):
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    help_text = CliRunner().invoke(app, ["user", "add", "--help"], env=ENV).output
    line = next(x for x in help_text.splitlines() if "--password" in x)
    assert "required" not in line and "*" not in line, line
    assert "asked for" in help_text
    # hidden, twice; a mismatch asks again
    out = _cli(
        db, "user", "add", "erin", input=f"{PASSWORD}\nsomething else\n{PASSWORD}\n{PASSWORD}\n"
    )
    assert "Repeat for confirmation" in out and "do not match" in out
    assert PASSWORD not in out  # hidden input is not echoed
    assert "user 'erin' (operator) created" in out and _secret(out)
    out = _cli(db, "user", "add", "fred", "--password", PASSWORD)  # no prompt when given
    assert "Password" not in out
    _cli(db, "user", "add", "gus", input="short\nshort\n", code=2)


async def test_resets_end_sessions_and_token_list_shows_no_secret(node: Node, database_url):
    def cli(*args, **kw):
        return asyncio.to_thread(_cli, database_url, *args, **kw)

    secret = _secret(await cli("user", "add", "hana", "--password", PASSWORD))
    base = f"http://127.0.0.1:{node.rt.http_port}"

    async def login(web, password: str, code: str) -> int:
        body = {"username": "hana", "password": password, "totp": code}
        return (await web.post("/api/v1/auth/login", json=body)).status_code

    async with httpx.AsyncClient(base_url=base, timeout=10) as web:
        assert await login(web, PASSWORD, pyotp.TOTP(secret).now()) == 200
        assert (await web.get("/api/v1/auth/me")).status_code == 200
        out = await cli("user", "reset-password", "hana", input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
        assert "new password set" in out
        assert (await web.get("/api/v1/auth/me")).status_code == 401  # the session ended
        later = pyotp.TOTP(secret).at(time.time() + 30)  # the next step: codes are not reused
        assert await login(web, PASSWORD, later) == 401
        assert await login(web, NEW_PASSWORD, later) == 200

        out = await cli("user", "reset-totp", "hana")
        new_secret = _secret(out)
        assert new_secret != secret and f"secret={new_secret}" in out.replace("\n", "")
        assert "otpauth://totp/" in out
        assert (await web.get("/api/v1/auth/me")).status_code == 401
        assert await login(web, NEW_PASSWORD, pyotp.TOTP(new_secret).now()) == 200
    await cli("user", "reset-totp", "nobody", code=1)
    await cli("user", "reset-password", "nobody", "--password", NEW_PASSWORD, code=1)

    used = (await cli("token", "create", "--role", "viewer", "--name", "meter")).split()[-1]
    idle = (await cli("token", "create", "--role", "operator", "--name", "spare")).split()[-1]
    async with httpx.AsyncClient(
        base_url=base, headers={"Authorization": f"Bearer {used}"}, timeout=10
    ) as api:
        assert (await api.get("/api/v1/stations")).status_code == 200
    await cli("token", "revoke", idle)
    out = await cli("token", "list")
    assert used not in out and idle not in out  # never the token itself
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if "│" in line}
    meter, spare = rows["meter"], rows["spare"]
    assert "viewer" in meter and "never" not in meter and "yes" not in meter
    assert "operator" in spare and "never" in spare and "yes" in spare
