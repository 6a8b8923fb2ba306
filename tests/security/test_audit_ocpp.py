"""Security events and per-source limits of the OCPP endpoint, over real WebSockets
with the ``ocpp`` library's ChargePoint as the station: a bad password and an
unknown station are events with the source address; after too many failures a
source gets 429 before its credentials are looked at, other sources do not."""

from __future__ import annotations

import json

import pytest
from ocpp.v16 import call
from websockets.exceptions import InvalidStatus

from conftest import Node, node_with
from evflex.security.audit import FailureLimiter
from ocpp_clients import Lib16, basic_auth, connected

PASSWORD = "station-secret-0123"


async def security_events(node: Node, type_: str | None = None) -> list[dict]:
    """The node's Security events (of one type), newest first."""
    r = await node.http.get("/api/v1/events", params={"kind": "Security"})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if type_ is None or e["type"] == type_]


def station(node: Node, station_id: str, source: str, password: str | None = None):
    """An ``ocpp`` library 1.6 station connected from ``source`` (a 127/8 address)."""
    headers = basic_auth(station_id, password) if password else None
    return connected(Lib16, node.ocpp_url, station_id, "ocpp1.6", headers, local_addr=(source, 0))


async def refused_with(node: Node, station_id: str, source: str, password: str | None = None):
    with pytest.raises(InvalidStatus) as info:
        async with station(node, station_id, source, password):
            pass
    return info.value.response


async def _register(node: Node, station_id: str) -> None:
    r = await node.http.post("/api/v1/stations", json={"id": station_id, "password": PASSWORD})
    assert r.status_code == 201, r.text


async def test_bad_password_and_unknown_station_are_events_with_source(strict_node):
    node = strict_node
    await _register(node, "PW-1")
    assert (await refused_with(node, "PW-1", "127.0.0.20", "Wrong-Password-123")).status_code == 401
    assert (await refused_with(node, "NOBODY", "127.0.0.21")).status_code == 404
    [bad] = await security_events(node, "InvalidPassword")
    assert bad["station_id"] == "PW-1" and bad["detail"]["source"] == "127.0.0.20"
    [unknown] = await security_events(node, "UnknownStation")
    assert unknown["station_id"] == "NOBODY" and unknown["detail"]["source"] == "127.0.0.21"
    assert "Wrong-Password-123" not in json.dumps(await security_events(node))
    # the right password still opens, and the station is served
    async with station(node, "PW-1", "127.0.0.20", PASSWORD) as cp:
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted"


async def test_repeated_failures_are_refused_per_source_before_the_password(strict_node):
    node = strict_node
    node.rt.ocpp.limiter = FailureLimiter(max_failures=3, window_s=300)
    await _register(node, "PW-2")
    attacker, neighbour = "127.0.0.22", "127.0.0.23"
    for guess in ("guess-one-xxxx", "guess-two-xxxx"):
        assert (await refused_with(node, "PW-2", attacker, guess)).status_code == 401
    assert (await refused_with(node, "SCAN-1", attacker)).status_code == 404  # id scanning too
    for guess in ("guess-three-xx", "guess-four-xxx", PASSWORD):  # even the right one
        response = await refused_with(node, "PW-2", attacker, guess)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1
    # another source is not affected, and the node lives on
    async with station(node, "PW-2", neighbour, PASSWORD) as cp:
        boot = await cp.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted"
    [limited] = await security_events(node, "RateLimited")  # once per window
    assert limited["detail"]["source"] == attacker and limited["station_id"] == "PW-2"
    assert "station logins" in limited["detail"]["reason"]
    # refused before the password was checked: no event beyond the first three failures
    assert len(await security_events(node, "InvalidPassword")) == 2
    assert len(await security_events(node, "UnknownStation")) == 1


tight = node_with(station_login_max_failures=1, failure_window_s=600)


async def test_the_station_limit_comes_from_the_settings(tight):
    node = tight
    await _register(node, "PW-3")
    assert (await refused_with(node, "PW-3", "127.0.0.24", "guess-one-xxxx")).status_code == 401
    response = await refused_with(node, "PW-3", "127.0.0.24", PASSWORD)
    assert response.status_code == 429
    assert 590 <= int(response.headers["Retry-After"]) <= 601
