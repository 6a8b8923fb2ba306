"""The character NUL, which PostgreSQL keeps in no text column, is refused in any JSON
body (422) and in any URL (400) before a route or the store sees it, on both databases;
so is a lone UTF-16 surrogate in a body, which no UTF-8 holds."""

from __future__ import annotations

from conftest import Node


async def test_nul_in_a_body_or_a_url_is_refused_and_nothing_is_stored(node: Node):
    for method, path, body in (
        ("POST", "/api/v1/sites", {"id": "s1", "import_limit_kw": 1, "name": "a\x00b"}),
        ("POST", "/api/v1/id-tokens", {"id_token": "T\x00"}),
        ("POST", "/api/v1/stations", {"id": "CP-1", "max_current_a": 16, "a\x00": 1}),
        ("POST", "/api/v1/stations/CP-1/commands/data-transfer",
         {"vendor_id": "V", "data": {"k": ["x\x00"]}}),
    ):  # fmt: skip
        r = await node.http.request(method, path, json=body)
        assert r.status_code == 422, (path, r.text)
        assert r.json() == {
            "detail": "request body: the character NUL (\\u0000) is not allowed in text"
        }
    for path in (
        "/api/v1/stations/CP%00-1",
        "/api/v1/events?station_id=CP%00",
        "/api/v1/transactions?station_id=%00",
    ):
        r = await node.http.get(path)
        assert r.status_code == 400, (path, r.text)
        assert "NUL" in r.json()["detail"]
    for path in ("/api/v1/sites", "/api/v1/id-tokens", "/api/v1/stations"):
        assert (await node.http.get(path)).json() == []
    # text that merely spells the escape is text
    r = await node.http.post("/api/v1/id-tokens", json={"id_token": "T\\u0000"})
    assert r.status_code == 201, r.text

    # a lone UTF-16 surrogate is no character (no UTF-8 holds it): refused, not a 500;
    # a pair is one character
    json_type = {"content-type": "application/json"}
    for path, raw in (
        ("/api/v1/users", r'{"username": "zed", "password": "abcdefghij\ud800"}'),
        ("/api/v1/auth/login", r'{"username": "zed", "password": "x", "totp": "1\uDFFF"}'),
        ("/api/v1/id-tokens", r'{"id_token": "T\udc00"}'),
    ):
        r = await node.http.post(path, content=raw, headers=json_type)
        assert r.status_code == 422 and "surrogate" in r.json()["detail"], (path, r.text)
    r = await node.http.post(
        "/api/v1/id-tokens", content=r'{"id_token": "P\ud83d\ude00"}', headers=json_type
    )
    assert r.status_code == 201 and r.json()["id_token"] == "P\U0001f600", r.text
