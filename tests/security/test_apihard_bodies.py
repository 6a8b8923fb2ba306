"""Hostile request bodies get a 4xx with a reason, never a 500, and change nothing: NaN
and Infinity (not JSON), numbers beyond a float or 64 bits, bodies over max_body_bytes
(refused before they are read), and a 422 never sends a large input back."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from conftest import Node

SITE = '{"id": "s1", "import_limit_kw": @}'  # @: the number under test


async def _no_sites(node: Node) -> None:
    r = await node.http.get("/api/v1/sites")
    assert r.status_code == 200 and r.json() == []


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        ("NaN", "NaN is not allowed: JSON numbers are finite"),
        ("Infinity", "Infinity is not allowed: JSON numbers are finite"),
        ("-Infinity", "-Infinity is not allowed: JSON numbers are finite"),
        ("1e400", "number 1e400 is too large to be finite"),
        (str(2**64), f"integer {2**64} is beyond 64 bits"),
    ],
)
async def test_numbers_json_cannot_carry_are_refused_in_every_body(node: Node, number, reason):
    headers = {"Content-Type": "application/json"}
    r = await node.http.post("/api/v1/sites", content=SITE.replace("@", number), headers=headers)
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": f"request body: {reason}"}
    await _no_sites(node)
    for method, path, body in (
        ("PUT", "/api/v1/transactions/1/preferences", '{"energy_kwh": @}'),
        ("POST", "/api/v1/stations/CP-1/commands/reset", '{"type": "Soft", "evse": @}'),
        ("PUT", "/api/v1/sites/s1/forecast",
         '{"start": "2030-01-01T00:00:00Z", "import_price": [0.1, @]}'),
    ):  # fmt: skip
        r = await node.http.request(
            method, path, content=body.replace("@", number), headers=headers
        )
        assert r.status_code == 422 and reason in r.json()["detail"], (path, r.text)
    # the driver's claim needs no token: the same refusal
    async with httpx.AsyncClient(base_url=str(node.http.base_url)) as anon:
        r = await anon.post(
            "/api/v1/driver/sessions",
            content='{"station_id": "CP-1", "evse_id": @}'.replace("@", number),
            headers=headers,
        )
    assert r.status_code == 422 and reason in r.json()["detail"], r.text
    # NaN inside a string is text, not a number
    r = await node.http.post("/api/v1/sites", json={"id": "NaN", "import_limit_kw": 1})
    assert r.status_code == 201, r.text


async def test_a_422_does_not_send_a_large_input_back(node: Node):
    big = "x" * 500_000
    for body in (
        {"id": "s1", "import_limit_kw": 1, "name": big},  # a long string
        {"id": "s1", "import_limit_kw": list(range(100_000))},  # a long list
        {"id": "s1", "import_limit_kw": 1, big: 1},  # a long unknown key
        [big],  # not an object at all
    ):
        r = await node.http.post("/api/v1/sites", json=body)
        assert r.status_code == 422, r.text[:300]
        assert len(r.content) < 4_000, len(r.content)
        assert r.json()["detail"]  # the reasons are there
    # a command body is checked by its own model: the same
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201
    r = await node.http.post("/api/v1/stations/CP-1/commands/reset", json={"type": big})
    assert r.status_code == 422 and len(r.content) < 4_000, r.text[:300]
    await _no_sites(node)


async def test_a_command_body_that_is_not_json_is_a_400_with_the_reason(node: Node):
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201
    for body in (b"\xff\xfe{", b"[" * 100_000, b'{"type": "soft"'):  # bad UTF-8, deep, cut
        r = await node.http.post(
            "/api/v1/stations/CP-1/commands/reset",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text[:300]
        assert r.json()["detail"].startswith("body is not valid JSON")
        assert len(r.content) < 1_000


async def _raw(node: Node, head: str, *chunks: bytes) -> bytes:
    """Send a request head and these chunks on a raw connection; the response's head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.rt.http_port)
    try:
        writer.write(head.encode())
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    finally:
        writer.close()


def _head(node: Node, extra: str) -> str:
    token = node.http.headers["Authorization"]
    return (
        "POST /api/v1/sites HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {token}\r\n{extra}\r\n"
    )


async def test_a_body_over_the_limit_is_refused_before_it_is_read(node: Node):
    limit = node.rt.settings.max_body_bytes
    # Content-Length says too much: 413 at once, though not one byte of the body was sent
    head = await _raw(node, _head(node, f"Content-Length: {10 * 1024 * 1024}\r\n"))
    assert head.startswith(b"HTTP/1.1 413"), head
    # a chunked body: 413 as soon as it is over, the rest is never sent
    chunk = b"x" * 65_536
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (limit // len(chunk) + 1)
    head = await _raw(node, _head(node, "Transfer-Encoding: chunked\r\n"), *chunks)
    assert head.startswith(b"HTTP/1.1 413"), head
    # an ordinary client sending one byte too many gets the reason
    body = json.dumps({"id": "s1", "import_limit_kw": 1, "name": "x" * limit})
    json_type = {"Content-Type": "application/json"}
    r = await node.http.post("/api/v1/sites", content=body, headers=json_type)
    assert r.status_code == 413
    assert r.json() == {"detail": f"request body over {limit} bytes (max_body_bytes)"}
    await _no_sites(node)
    # a body just under the limit is read as usual
    body = json.dumps({"id": "s1", "import_limit_kw": 1, "name": "x"}).ljust(limit)
    r = await node.http.post("/api/v1/sites", content=body, headers=json_type)
    assert r.status_code == 201, r.text
