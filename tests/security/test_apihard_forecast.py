"""A site's forecast is held to sane ranges (a price of 1e306 makes the site's LP
unsolvable), and a stored forecast the solver refuses gives 409 with the reason on the
plan routes, never a 500."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from conftest import Node
from evflex.smartcharging.mpc import Forecast
from evflex.store.tables import Site


async def _optimal_site(node: Node) -> None:
    r = await node.http.post(
        "/api/v1/sites", json={"id": "opt", "import_limit_kw": 40, "policy": "optimal"}
    )
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("series", "value"),
    [("import_price", 1e306), ("export_price", -1e306), ("pv_kw", 1e306), ("base_load_kw", 1e9)],
)
async def test_a_forecast_beyond_sane_ranges_is_refused(node: Node, series, value):
    await _optimal_site(node)
    start = node.rt.clock.now().isoformat()
    r = await node.http.put(
        "/api/v1/sites/opt/forecast", json={"start": start, series: [0.0, value]}
    )
    assert r.status_code == 422, r.text
    assert series in str(r.json()["detail"]) and "or equal" in r.text
    async with node.rt.sessionmaker() as s:
        assert (await s.get(Site, "opt")).forecast is None  # nothing stored


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the bad prices
async def test_a_stored_forecast_the_solver_refuses_is_a_409_with_the_reason(node: Node):
    await _optimal_site(node)
    assert (await node.http.get("/api/v1/sites/opt/plan")).status_code == 200
    start = node.rt.clock.now() - timedelta(minutes=1)
    bad = Forecast(start=start, slot_s=900, import_price=(1e306, -1e306) * 8)
    async with node.rt.sessionmaker() as s, s.begin():  # stored before the API bounded it
        await s.execute(update(Site).where(Site.id == "opt").values(forecast=bad.to_json()))
    await node.rt.lm.rebalance_now("opt")
    for path in ("/api/v1/sites/opt/plan", "/api/v1/sites/opt/flexibility"):
        r = await node.http.get(path)
        assert r.status_code == 409, r.text
        assert "cannot be planned ahead" in r.json()["detail"]
    assert (await node.http.get("/api/v1/sites/opt")).status_code == 200
