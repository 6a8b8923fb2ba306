"""PUT /sites/{id}/forecast: what cannot be right is refused, what is odd is said."""

from __future__ import annotations

from datetime import timedelta

import pytest

from evflex.store import repo


async def _site(node, **extra) -> None:
    body = {"id": "fc", "import_limit_kw": 40, "policy": "optimal", **extra}
    r = await node.http.post("/api/v1/sites", json=body)
    assert r.status_code == 201, r.text


async def _stored(node) -> dict | None:
    async with node.rt.sessionmaker() as s:
        return (await repo.get_site(s, "fc")).forecast


def _hours_from(node, hours: float):
    return node.rt.clock.now() + timedelta(hours=hours)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"pv_kw": [1.0, 2.0]}, "same length"),
        ({"slot_minutes": 0}, "greater than 0"),
        ({"slot_minutes": -15}, "greater than 0"),
        ({"start": "2030-01-01T00:00:00"}, "timezone"),
        ({"pv_kw": [-1.0, 0.0, 0.0]}, ">= 0"),
        ({"base_load_kw": [0.0, -2.0, 0.0]}, ">= 0"),
        ({"import_price": []}, "at least one series"),
    ],
)
async def test_a_forecast_that_cannot_be_right_is_refused_with_the_reason(node, change, reason):
    await _site(node)
    body = {"start": _hours_from(node, 0).isoformat(), "slot_minutes": 60,
            "import_price": [0.1, 0.2, 0.3]} | change  # fmt: skip
    r = await node.http.put("/api/v1/sites/fc/forecast", json=body)
    assert r.status_code == 422, r.text
    assert reason in r.text
    assert await _stored(node) is None  # nothing stored


async def test_not_a_number_and_a_forecast_that_is_over_are_refused(node):
    await _site(node)
    start = _hours_from(node, 0).isoformat()
    raw = f'{{"start": "{start}", "slot_minutes": 60, "import_price": [0.1, NaN]}}'
    r = await node.http.put(
        "/api/v1/sites/fc/forecast", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "finite" in r.text
    old = {"start": _hours_from(node, -5).isoformat(), "slot_minutes": 60,
           "import_price": [0.1, 0.2, 0.3]}  # fmt: skip
    r = await node.http.put("/api/v1/sites/fc/forecast", json=old)
    assert r.status_code == 422, r.text
    assert "ends at" in r.json()["detail"] and "not after now" in r.json()["detail"]
    assert await _stored(node) is None


async def test_a_forecast_from_the_past_is_taken_from_now_with_a_warning(node):
    await _site(node)
    now = node.rt.clock.now()
    body = {"start": (now - timedelta(minutes=90)).isoformat(), "slot_minutes": 60,
            "import_price": [0.9, 0.5, 0.1, 0.2]}  # fmt: skip
    r = await node.http.put("/api/v1/sites/fc/forecast", json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    [warning] = plan["warnings"]
    assert "past" in warning and "1 slot(s)" in warning
    # the slot that ended (0.9) is gone; the one running now (0.5) leads
    assert plan["slots"][0]["import_price"] == 0.5
    assert plan["slots"][0]["source"] == "forecast"
    stored = await _stored(node)
    assert stored["import_price"] == [0.5, 0.1, 0.2]
    assert _parse(stored["start"]) == now - timedelta(minutes=30)
    # reading the plan again: no input, no warning
    assert (await node.http.get("/api/v1/sites/fc/plan")).json()["warnings"] == []


async def test_after_the_horizon_the_plan_shows_the_site_defaults(node):
    await _site(node, import_tariff_per_kwh=0.27)
    now = node.rt.clock.now()
    body = {"start": now.isoformat(), "slot_minutes": 60, "import_price": [0.4, 0.4],
            "pv_kw": [4.0, 4.0], "base_load_kw": [3.0, 3.0]}  # fmt: skip
    r = await node.http.put("/api/v1/sites/fc/forecast", json=body)
    assert r.status_code == 200, r.text
    plan = r.json()
    end = plan["forecast_end"]
    assert (
        end is not None and abs((_parse(end) - (now + timedelta(hours=2))).total_seconds()) < 1e-3
    )
    slots = plan["slots"]
    assert len(slots) > 8  # the plan looks further than the forecast
    inside = [s for s in slots if _parse(s["start"]) < _parse(end)]
    after = [s for s in slots if _parse(s["start"]) >= _parse(end)]
    assert inside and all(s["source"] == "forecast" for s in inside)
    assert all(s["pv_kw"] == 4.0 and s["import_price"] == 0.4 for s in inside)
    assert after and all(s["source"] == "default" for s in after)
    # no PV all night, the site's tariff, no made-up load (none measured)
    assert all(s["pv_kw"] == 0 for s in after)
    assert all(s["import_price"] == 0.27 for s in after)
    assert all(s["base_load_kw"] == 0 for s in after)
    get = (await node.http.get("/api/v1/sites/fc/plan")).json()
    assert [s["source"] for s in get["slots"]] == [s["source"] for s in slots]
    assert get["forecast_end"] == end


def _parse(value: str):
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))
