"""A site whose stored values cannot be planned with is skipped (logged once, shown on
the site), while the other sites plan on; fixed through the API, it is planned again."""

from __future__ import annotations

import logging

from sqlalchemy import update

from conftest import Node
from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.store.tables import Site


async def _site_with_session(node: Node, site_id: str) -> SimStation:
    r = await node.http.post("/api/v1/sites", json={"id": site_id, "import_limit_kw": 40})
    assert r.status_code == 201, r.text
    spec = StationSpec(id=f"CP-{site_id}", ocpp_version="2.0.1")
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(1.0), seed=1)
    await st.start(timeout=10.0)
    r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": site_id})
    assert r.status_code == 200, r.text
    assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), "GOOD")
    await node.wait_for(lambda: node.transactions(active="true", station_id=st.id))
    return st


async def _planned(node: Node, site_id: str) -> dict:
    await node.rt.lm.rebalance_now(site_id)
    return (await node.http.get(f"/api/v1/sites/{site_id}")).json()


def _session_limit(site: dict, station_id: str) -> float:
    (target,) = [e for e in site["plan"]["evses"] if e["kind"] == "session"]
    assert target["station_id"] == station_id
    return target["limit_a"]


async def test_a_site_with_an_infinite_stored_limit_is_skipped_and_others_plan_on(
    site_node: Node,
    caplog,  # noqa: F811
):
    node = site_node
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    stations = [await _site_with_session(node, "bad"), await _site_with_session(node, "good")]
    try:
        # a value no API call can store any more (an older version, a hand edit)
        async with node.rt.sessionmaker() as s, s.begin():
            await s.execute(update(Site).where(Site.id == "bad").values(import_limit_w=1e309))
        caplog.set_level(logging.ERROR, logger="evflex.smartcharging.manager")
        r = await node.http.patch("/api/v1/sites/bad", json={"name": "the bad one"})
        assert r.status_code == 200, r.text
        for _ in range(3):
            bad = await _planned(node, "bad")
            good = await _planned(node, "good")
        assert bad["plan"] is None
        assert "import_limit_w=inf" in bad["planning_error"], bad
        assert good["planning_error"] is None
        assert _session_limit(good, "CP-good") > 0
        logged = [r for r in caplog.records if "not a finite number" in r.getMessage()]
        assert len(logged) == 1 and not logged[0].exc_info  # one line, not a traceback per try
        assert not [r for r in caplog.records if r.exc_info]
        r = await node.http.get("/api/v1/sites/bad/plan")
        assert r.status_code == 409 and "not a finite number" in r.json()["detail"], r.text

        r = await node.http.patch("/api/v1/sites/bad", json={"import_limit_kw": 30})
        assert r.status_code == 200, r.text
        bad = await _planned(node, "bad")
        assert bad["planning_error"] is None and _session_limit(bad, "CP-bad") > 0
    finally:
        for st in stations:
            await st.stop()
