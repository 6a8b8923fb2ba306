"""A date-time UTC cannot hold (a year-9999 time with a negative offset, a year-1 time
with a positive one) is refused with 422 in every body, never a 500 from the store or
from building a station's message, and nothing is stored."""

from __future__ import annotations

import httpx

from conftest import Node

LATE = "9999-12-31T23:59:59-23:59"
EARLY = "0001-01-01T00:00:00+23:59"


async def test_a_date_time_utc_cannot_hold_is_refused_with_a_reason(node: Node):
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201, r.text
    for when in (LATE, EARLY):
        for method, path, body in (
            ("POST", "/api/v1/id-tokens", {"id_token": "T1", "expiry": when}),
            ("PUT", "/api/v1/transactions/1/preferences", {"departure_time": when}),
            ("PUT", "/api/v1/sites/s1/forecast", {"start": when, "import_price": [0.1]}),
            ("POST", "/api/v1/stations/CP-1/commands/reserve-now",
             {"id_token": "T1", "expiry": when, "evse": 1}),
        ):  # fmt: skip
            r = await node.http.request(method, path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert "beyond the years UTC can hold" in r.text, r.text
        async with httpx.AsyncClient(base_url=str(node.http.base_url)) as anon:
            r = await anon.put(
                "/api/v1/driver/session/preferences",
                json={"departure_time": when},
                headers={"Authorization": "Bearer drv_none"},
            )
        assert r.status_code == 422 and "UTC can hold" in r.text, r.text
        for param in ("from", "to"):  # a query's date-time alike
            r = await node.http.get("/api/v1/stations/CP-1/meter-values", params={param: when})
            assert r.status_code == 422 and "UTC can hold" in r.text, r.text
    assert (await node.http.get("/api/v1/id-tokens")).json() == []
    r = await node.http.post("/api/v1/id-tokens", json={"id_token": "T1", "expiry": LATE[:-6]})
    assert r.status_code == 201, r.text  # the last second UTC holds is fine
