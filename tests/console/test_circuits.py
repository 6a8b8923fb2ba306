"""The circuit view's API: a site's tree with the load per phase against each limit, the
EVSEs under each node and why an EVSE is held back, with simulated stations and cars."""

from __future__ import annotations

import contextlib

import httpx
from sqlalchemy import update

from conftest import Node, running_node
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.store.tables import Site

TREE = "/api/v1/sites/yard/circuit-tree"
TOKEN = "CARD-CV"


async def make_yard(node: Node, stations: list[SimStation]) -> None:
    """Site ``yard`` (63 A, 40 kW): circuit C1 (40 A) with C2 (16 A) below it; station CV-A
    (2 EVSEs) on C2, CV-B on C1, CV-C on the site itself; every station online."""
    http = node.http
    r = await http.post(
        "/api/v1/sites",
        json={"id": "yard", "name": "Yard", "import_limit_kw": 40, "max_current_a": 63},
    )
    assert r.status_code == 201, r.text
    for body in (
        {"id": "C1", "site_id": "yard", "name": "Main board", "max_current_a": 40},
        {"id": "C2", "site_id": "yard", "parent_id": "C1", "name": "Bay 1", "max_current_a": 16},
    ):
        r = await http.post("/api/v1/circuits", json=body)
        assert r.status_code == 201, r.text
    r = await http.post("/api/v1/id-tokens", json={"id_token": TOKEN, "status": "Accepted"})
    assert r.status_code in (200, 201), r.text
    for sid, evses, circuit in (("CV-A", 2, "C2"), ("CV-B", 1, "C1"), ("CV-C", 1, None)):
        st = SimStation(
            StationSpec(id=sid, ocpp_version="2.0.1", evses=evses),
            node.ocpp_url,
            node.rt.clock,
            meter_interval_s=1.0,
            seed=7,
        )
        stations.append(st)
        await st.start(timeout=10)
        r = await http.patch(
            f"/api/v1/stations/{sid}", json={"site_id": "yard", "circuit_id": circuit}
        )
        assert r.status_code == 200, r.text


def find(node: dict, node_id: str) -> dict:
    if node["id"] == node_id:
        return node
    for child in node["children"]:
        with contextlib.suppress(KeyError):
            return find(child, node_id)
    raise KeyError(node_id)


def evse(tree: dict, station_id: str, evse_id: int) -> tuple[str, dict]:
    """The node an EVSE is listed under, and the EVSE."""
    todo = [tree["root"]]
    while todo:
        n = todo.pop()
        for e in n["evses"]:
            if (e["station_id"], e["evse_id"]) == (station_id, evse_id):
                return n["id"], e
        todo.extend(n["children"])
    raise KeyError((station_id, evse_id))


async def test_circuit_tree_shows_limits_loads_and_why(database_url):
    async with running_node(
        database_url, allow_unknown_stations=True, initial_full_power_s=0.0
    ) as node:
        stations: list[SimStation] = []
        try:
            await make_yard(node, stations)
            a, b, c = stations
            # two cars share C2's 16 A; one car that takes 10 A per phase on C1; a
            # single-phase car on the three-phase station at the site's root
            assert await a.plug_in(1, EvSpec(battery_kwh=60, soc=0.2), TOKEN)
            assert await a.plug_in(2, EvSpec(battery_kwh=60, soc=0.2), TOKEN)
            assert await b.plug_in(1, EvSpec(max_ac_power_w=6900, soc=0.2), TOKEN)
            assert await c.plug_in(1, EvSpec(phases=1, max_ac_power_w=7400, soc=0.2), TOKEN)

            async def settled():
                r = await node.http.get(TREE)
                assert r.status_code == 200, r.text
                t = r.json()
                _, single = evse(t, "CV-C", 1)
                drawn = [evse(t, *k)[1]["drawn_a"][0] for k in (("CV-A", 1), ("CV-A", 2))]
                drawn_ok = single["drawn_a"][0] > 10 and min(drawn) > 5
                return t if single["phases"] == [1] and drawn_ok else None

            tree = await node.wait_for(settled, timeout=20, interval=0.2)
            root = tree["root"]
            assert (root["id"], root["kind"], root["name"]) == ("yard", "site", "Yard")
            assert root["limit_a"] == [63.0] * 3 and root["limit_kw"] == 40.0
            c1 = find(root, "C1")
            c2 = find(c1, "C2")
            assert [x["id"] for x in root["children"]] == ["C1"]
            assert (c1["kind"], c1["name"], c1["limit_a"]) == ("circuit", "Main board", [40.0] * 3)
            assert [x["id"] for x in c1["children"]] == ["C2"] and c2["limit_a"] == [16.0] * 3

            # the EVSEs hang under their own node
            assert evse(tree, "CV-A", 1)[0] == "C2" and evse(tree, "CV-A", 2)[0] == "C2"
            assert evse(tree, "CV-B", 1)[0] == "C1" and evse(tree, "CV-C", 1)[0] == "yard"

            # C2 binds: both cars there are held back by it, and share it
            for n in (1, 2):
                _, e = evse(tree, "CV-A", n)
                assert e["held_back"] is True, e
                assert e["reason"]["code"] == "circuit_limit", e
                assert e["reason"]["node_id"] == "C2"
                assert e["reason"]["text"].startswith("circuit C2 limit"), e
                assert e["allocated_a"] == 8.0
                assert e["connected"] and e["status"] and e["transaction_id"]
            # the car on C1 gets all it takes: limited by its own maximum, not held back
            _, eb = evse(tree, "CV-B", 1)
            assert eb["reason"]["code"] == "ev_max", eb
            assert eb["held_back"] is False and eb["allocated_a"] == 10.0
            assert "EV's own maximum 10 A" in eb["reason"]["text"]
            # the single-phase car loads grid phase L1 only, at the single-phase maximum
            _, ec = evse(tree, "CV-C", 1)
            assert ec["phases"] == [1] and ec["allocated_a"] == 16.0
            assert ec["reason"]["code"] == "single_phase_max" and ec["held_back"] is False
            assert ec["drawn_a"][1] == 0.0 and ec["drawn_a"][2] == 0.0
            assert 14.0 < ec["drawn_a"][0] <= 16.0 + 0.01

            # allocation per node and phase: the EVSEs below it; every load within its limit
            assert c2["allocated_a"] == [16.0] * 3 and c2["headroom_a"] == [0.0] * 3
            assert c1["allocated_a"] == [26.0] * 3
            assert root["allocated_a"] == [42.0, 26.0, 26.0]
            assert root["headroom_kw"] == round(40 - 230 * (42 + 26 + 26) / 1000, 3)
            for n in (root, c1, c2):
                for p in range(3):
                    assert n["load_a"][p] <= n["limit_a"][p] + 0.01, n
                    assert n["allocated_a"][p] <= n["limit_a"][p], n
            assert c2["load_a"][0] > 10  # measured: what the two cars draw
            assert root["load_a"][0] > root["load_a"][1] + 10  # the single-phase car on L1

            # a lower limit on C1 makes C1 the binding node for CV-B too
            r = await node.http.patch("/api/v1/circuits/C1", json={"max_current_a": 22})

            async def c1_binds():
                t = (await node.http.get(TREE)).json()
                _, e = evse(t, "CV-B", 1)
                return t if e["reason"]["code"] == "circuit_limit" else None

            tree = await node.wait_for(c1_binds, timeout=10, interval=0.1)
            _, eb = evse(tree, "CV-B", 1)
            assert eb["reason"]["node_id"] == "C1" and eb["held_back"] is True
            assert 6.0 <= eb["allocated_a"] < 10.0
            assert find(tree["root"], "C1")["allocated_a"] == [22.0] * 3  # C1 is full
            assert eb["reason"]["text"].startswith("circuit C1 limit")

            # unknown site: 404; an idle EVSE is not held back
            r = await node.http.get("/api/v1/sites/nowhere/circuit-tree")
            assert r.status_code == 404 and "nowhere" in r.json()["detail"]
            async with httpx.AsyncClient(base_url=str(node.http.base_url)) as anonymous:
                assert (await anonymous.get(TREE)).status_code == 401
            await a.plug_out(2)

            async def idle():
                t = (await node.http.get(TREE)).json()
                return evse(t, "CV-A", 2)[1]["reason"]["code"] == "idle" and t

            tree = await node.wait_for(idle, timeout=10, interval=0.1)
            assert evse(tree, "CV-A", 2)[1]["held_back"] is False

            # a stored value the load manager cannot plan with (a hand edit): 409 with why
            async with node.rt.sessionmaker() as s, s.begin():
                await s.execute(update(Site).where(Site.id == "yard").values(import_limit_w=1e309))
            await node.rt.lm.rebalance_now("yard", only_site_row=True)
            r = await node.http.get(TREE)
            assert r.status_code == 409 and "not a finite number" in r.json()["detail"], r.text
        finally:
            for st in stations:
                await st.stop()
