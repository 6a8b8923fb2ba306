"""Security events of the HTTP side, over real HTTP: failed logins, a role too low,
bad API and driver tokens, each with the source address; per-source rate limits
with one RateLimited event per window; no secret ever lands in an event."""

from __future__ import annotations

import json

import httpx
import pyotp

from conftest import Node
from evflex.security.audit import FailureLimiter
from evflex.web import auth
from security.test_audit_ocpp import security_events

PASSWORD = "correct horse battery"


def _client(node: Node, token: str | None = None, source: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connections come from ``source`` (any 127/8 address is ours)."""
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.rt.http_port}",
        headers={"Authorization": f"Bearer {token}"} if token else {},
        transport=httpx.AsyncHTTPTransport(local_address=source),
        timeout=10,
    )


async def _add_user(node: Node, name: str, role: str) -> str:
    async with node.rt.sessionmaker() as s, s.begin():
        user = await auth.add_user(s, name, PASSWORD, role)
    return user.totp_secret


def _login(username: str, password: str, code: str) -> dict:
    return {"username": username, "password": password, "totp": code}


async def test_failed_logins_are_events_with_source_and_reason_but_no_secrets(node):
    secret = await _add_user(node, "carol", "viewer")
    good_code = pyotp.TOTP(secret).now()
    async with _client(node, source="127.0.0.2") as web:
        for body in (
            _login("carol", "Wrong-Secret-Pass", good_code),
            _login("carol", PASSWORD, "000000" if good_code != "000000" else "111111"),
            _login("mallory", "Other-Secret-Pass", "123456"),
        ):
            r = await web.post("/api/v1/auth/login", json=body)
            assert r.status_code == 401, r.text
    events = await security_events(node, "LoginFailed")
    assert len(events) == 3
    by_reason = {e["detail"]["reason"]: e for e in events}
    assert set(by_reason) == {
        "wrong password", "wrong or already used one-time code", "no such user",
    }  # fmt: skip
    assert {e["detail"]["source"] for e in events} == {"127.0.0.2"}
    assert by_reason["no such user"]["detail"]["user"] == "mallory"
    text = json.dumps(events)
    for secret_value in ("Wrong-Secret-Pass", PASSWORD, "Other-Secret-Pass", good_code, secret):
        assert secret_value not in text


async def test_login_limit_is_per_source_with_one_rate_limited_event(node):
    node.rt.auth.limiter = FailureLimiter(max_failures=3, window_s=300)
    secret = await _add_user(node, "dave", "viewer")
    async with _client(node, source="127.0.0.3") as attacker:
        for i in range(3):  # a different user name each time: the source is what counts
            r = await attacker.post("/api/v1/auth/login", json=_login(f"u{i}", "x" * 10, "1"))
            assert r.status_code == 401
        for i in range(4):
            r = await attacker.post("/api/v1/auth/login", json=_login(f"v{i}", "x" * 10, "1"))
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
        # refused before the password is looked at: the right one does not help either
        right = _login("dave", PASSWORD, pyotp.TOTP(secret).now())
        assert (await attacker.post("/api/v1/auth/login", json=right)).status_code == 429
    async with _client(node, source="127.0.0.4") as other:
        r = await other.post("/api/v1/auth/login", json=right)
        assert r.status_code == 200, r.text
    limited = await security_events(node, "RateLimited")
    assert len(limited) == 1  # once per window, not per refused attempt
    assert limited[0]["detail"]["source"] == "127.0.0.3"
    assert "logins" in limited[0]["detail"]["reason"]
    assert len(await security_events(node, "LoginFailed")) == 3


async def test_viewer_on_an_operator_route_is_a_forbidden_role_event(node):
    async with node.rt.sessionmaker() as s, s.begin():
        viewer = await auth.add_token(s, "viewer", "wallboard")
    async with _client(node, viewer, source="127.0.0.5") as v:
        r = await v.post("/api/v1/sites", json={"id": "s1", "import_limit_kw": 40})
        assert r.status_code == 403
        assert (await v.get("/api/v1/stations")).status_code == 200  # reads are fine
    [ev] = await security_events(node, "ForbiddenRole")
    d = ev["detail"]
    assert d["source"] == "127.0.0.5" and d["user"] == "wallboard" and d["role"] == "viewer"
    assert d["needs"] == "admin" and d["method"] == "POST" and d["path"] == "/api/v1/sites"
    assert viewer not in json.dumps(ev)


async def test_bad_api_tokens_are_events_and_limited_per_source(node):
    node.rt.auth.limiter = FailureLimiter(max_failures=2, window_s=300)
    forged = "evf_" + "A" * 43
    async with _client(node, forged, source="127.0.0.6") as bad:
        assert (await bad.get("/api/v1/stations")).status_code == 401
        assert (await bad.get("/api/v1/stations")).status_code == 401
        for _ in range(3):
            r = await bad.get("/api/v1/stations")
            assert r.status_code == 429 and "API tokens" in r.json()["detail"]
    async with _client(node, forged, source="127.0.0.7") as elsewhere:
        assert (await elsewhere.get("/api/v1/stations")).status_code == 401
    invalid = await security_events(node, "InvalidApiToken")
    assert sorted(e["detail"]["source"] for e in invalid) == ["127.0.0.6", "127.0.0.6", "127.0.0.7"]
    [limited] = await security_events(node, "RateLimited")
    assert limited["detail"]["source"] == "127.0.0.6"
    text = json.dumps(await security_events(node))
    assert forged not in text and "A" * 20 not in text
    # a request without any credentials is no attack: refused, not logged
    async with _client(node, source="127.0.0.8") as anon:
        assert (await anon.get("/api/v1/stations")).status_code == 401
    assert len(await security_events(node, "InvalidApiToken")) == 3


async def test_forged_driver_token_is_an_event_and_limited_per_source(node):
    node.rt.auth.limiter = FailureLimiter(max_failures=2, window_s=300)
    async with _client(node, "drv_forged-token-value", source="127.0.0.9") as drv:
        for status in (401, 401, 429):
            assert (await drv.get("/api/v1/driver/session")).status_code == status
    events = await security_events(node, "InvalidDriverToken")
    assert [e["detail"]["source"] for e in events] == ["127.0.0.9", "127.0.0.9"]
    assert events[0]["detail"]["reason"] == "unknown driver token"
    assert "forged-token-value" not in json.dumps(await security_events(node))
    [limited] = await security_events(node, "RateLimited")
    assert "driver tokens" in limited["detail"]["reason"]


async def test_a_change_without_the_csrf_token_is_an_event(node):
    secret = await _add_user(node, "erin", "admin")
    async with _client(node, source="127.0.0.10") as web:
        r = await web.post(
            "/api/v1/auth/login", json=_login("erin", PASSWORD, pyotp.TOTP(secret).now())
        )
        assert r.status_code == 200, r.text
        csrf = r.json()["csrf_token"]
        r = await web.post("/api/v1/sites", json={"id": "s9", "import_limit_kw": 40})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["detail"]
    [ev] = await security_events(node, "InvalidCsrfToken")
    assert ev["detail"]["source"] == "127.0.0.10" and ev["detail"]["user"] == "erin"
    assert ev["detail"]["path"] == "/api/v1/sites"
    assert csrf not in json.dumps(ev)
