"""The HTTP API refuses what the store and the planner cannot hold, with a reason, and
stores nothing of it: physical quantities beyond sane ranges, integers beyond the
database's columns, a required site field set to null."""

from __future__ import annotations

import httpx
import pytest

from conftest import Node

SITE = {"id": "s1", "import_limit_kw": 40, "phases": 3, "policy": "equal"}


async def _site(node: Node) -> dict:
    r = await node.http.post("/api/v1/sites", json=SITE)
    assert r.status_code == 201, r.text
    return r.json()


def _reasons(r) -> str:
    return str(r.json()["detail"])


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/sites", "import_limit_kw"),
        ("/api/v1/sites", "export_limit_kw"),
        ("/api/v1/sites", "max_current_a"),
        ("/api/v1/sites", "import_tariff_per_kwh"),
        ("/api/v1/sites", "capacity_tariff_per_kw"),
    ],
)
async def test_a_new_site_beyond_sane_ranges_is_refused_and_not_stored(node: Node, path, field):
    r = await node.http.post(path, json={**SITE, field: 1e306})
    assert r.status_code == 422, r.text
    assert field in _reasons(r) and "less than or equal" in _reasons(r)
    assert (await node.http.get("/api/v1/sites/s1")).status_code == 404


async def test_a_change_beyond_sane_ranges_is_refused_and_changes_nothing(node: Node):
    before = await _site(node)
    for body in (
        {"import_limit_kw": 1e306},
        {"max_current_a": 1e300},
        {"export_tariff_per_kwh": 1e300},
    ):
        r = await node.http.patch("/api/v1/sites/s1", json=body)
        assert r.status_code == 422 and next(iter(body)) in _reasons(r), r.text
    r = await node.http.put("/api/v1/sites/s1/load", json={"power_kw": 1e306})
    assert r.status_code == 422 and "power_kw" in _reasons(r)
    r = await node.http.put("/api/v1/sites/s1/load", json={"current_a": [1e306, 0, 0]})
    assert r.status_code == 422 and "current_a" in _reasons(r)
    after = (await node.http.get("/api/v1/sites/s1")).json()
    assert after["import_limit_kw"] == 40 and after["base_load_a"] is None
    assert {k: after[k] for k in before if k != "plan"} == {
        k: before[k] for k in before if k != "plan"
    }
    r = await node.http.post(
        "/api/v1/circuits", json={"id": "c1", "site_id": "s1", "max_power_kw": 1e306}
    )
    assert r.status_code == 422 and "max_power_kw" in _reasons(r)
    r = await node.http.post(
        "/api/v1/stations", json={"id": "CP-1", "site_id": "s1", "max_current_a": 1e306}
    )
    assert r.status_code == 422 and "max_current_a" in _reasons(r)
    assert (await node.http.get("/api/v1/circuits")).json() == []
    assert (await node.http.get("/api/v1/stations/CP-1")).status_code == 404


@pytest.mark.parametrize("field", ["phases", "policy", "voltage", "import_limit_kw"])
async def test_a_required_site_field_cannot_be_set_to_null(node: Node, field):
    await _site(node)
    r = await node.http.patch("/api/v1/sites/s1", json={field: None})
    assert r.status_code == 422, r.text
    assert f"{field} cannot be removed" in _reasons(r)
    site = (await node.http.get("/api/v1/sites/s1")).json()
    assert site["phases"] == 3 and site["policy"] == "equal" and site["import_limit_kw"] == 40
    # an optional field is removed by null
    r = await node.http.patch("/api/v1/sites/s1", json={"objective": None, "name": None})
    assert r.status_code == 200, r.text


HUGE = str(2**64)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/v1/transactions/{HUGE}"),
        ("GET", f"/api/v1/transactions?offset={HUGE}"),
        ("GET", f"/api/v1/stations/CP-1/meter-values?evse={2**40}"),
        ("POST", f"/api/v1/transactions/{HUGE}/priority"),
        ("DELETE", f"/api/v1/transactions/{HUGE}/priority"),
        ("GET", f"/api/v1/transactions/{HUGE}/bill"),
        ("GET", f"/api/v1/stations/CP-1/charging-profiles?evse_id={2**40}"),
        ("GET", f"/api/v1/stations/CP-1/composite-schedule?evse={2**40}"),
        ("DELETE", f"/api/v1/stations/CP-1/charging-profiles?id={2**40}"),
        ("DELETE", "/api/v1/stations/CP-1/charging-profiles?id=-689&evse_id=-18"),
    ],
)
async def test_integers_beyond_the_database_are_refused_with_a_reason(node: Node, method, path):
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201, r.text
    r = await node.http.request(method, path)
    assert r.status_code == 422, r.text
    assert "less than or equal" in _reasons(r) or "greater than or equal" in _reasons(r)
    assert (await node.http.get("/api/v1/health")).status_code == 200


async def test_a_drivers_claim_beyond_the_database_is_refused_without_a_token(node: Node):
    r = await node.http.post("/api/v1/stations", json={"id": "CP-1"})
    assert r.status_code == 201, r.text
    async with httpx.AsyncClient(base_url=str(node.http.base_url)) as anon:
        for evse_id in (2**40, 2**64):
            r = await anon.post(
                "/api/v1/driver/sessions", json={"station_id": "CP-1", "evse_id": evse_id}
            )
            assert r.status_code == 422, r.text
        r = await anon.post("/api/v1/driver/sessions", json={"station_id": "CP-1", "evse_id": 1})
        assert r.status_code == 404 and "no such charger" in r.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"curve": [[49.8, -1e306], [50.2, 8000.0]]}, "curve"),
        ({"curve": [[1e306, -8000.0], [50.2, 8000.0]]}, "curve"),
        ({"baseline_w": 1e306}, "baseline_w"),
        ({"evses": [{"station_id": "CP-1", "evse_id": 2**40}]}, "evse_id"),
    ],
)
async def test_a_frequency_service_beyond_sane_ranges_is_refused(node: Node, change, field):
    body = {"evses": [{"station_id": "CP-1", "evse_id": 1}], "curve": [[49.8, -8e3], [50.2, 8e3]]}
    r = await node.http.put("/api/v1/frequency-service", json=body | change)
    assert r.status_code == 422 and field in _reasons(r), r.text
    assert (await node.http.get("/api/v1/frequency-service")).json()["running"] is False
