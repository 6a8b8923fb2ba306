"""Stations that refuse charging profiles: flagged, and kept safe by admission.

A station that answers every SetChargingProfile with Rejected (or a
CALLERROR NotImplemented) cannot be limited. The load manager flags it not
steerable (API field, ``NotSteerable`` event), counts its sessions at full
power, gives the steerable sessions what is left, and refuses a new session
there that the site cannot carry (``AdmissionRefused``; 2.x NotAtThisTime,
1.6 Blocked).
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from ocpp.v201 import call

from conftest import Node, start_node
from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.smartcharging.allocation import Node as TreeNode
from evflex.smartcharging.dispatcher import Wanted
from evflex.smartcharging.manager import LoadManager, refusal
from evflex.smartcharging.planner import (
    SITE_NODE,
    EvseModel,
    SessionModel,
    SiteModel,
    admission_candidate,
    admission_problems,
    check_commanded,
    evse_key,
    plan,
    station_node,
    unsteerable_problems,
)
from evflex.smartcharging.profiles import Purpose, RateUnit, simple_profile
from ocpp_clients import Lib201, connected

_ids = itertools.count(1)
T0 = datetime(2026, 1, 1, 8, tzinfo=UTC)
SITE_W = 22_000.0


def _wanted(status: str, error: str | None, code: str | None = None) -> Wanted:
    profile = simple_profile(1, Purpose.TX_DEFAULT, 6.0, RateUnit.A)
    return Wanted(1, profile, "x", status, 1, error, code=code)


def test_what_counts_as_refusing_profiles():
    assert refusal(_wanted("rejected", "station answered Rejected")) is not None
    assert (
        refusal(_wanted("rejected", "station answered Rejected (TxNotFound)", "TxNotFound")) is None
    )
    assert (
        refusal(_wanted("failed", "CallErrorReceived: NotImplemented: no", "NotImplemented"))
        is not None
    )
    assert (
        refusal(_wanted("failed", "CallErrorReceived: NotSupported: no", "NotSupported"))
        is not None
    )
    assert refusal(_wanted("failed", "no answer")) is None  # says nothing about support
    assert refusal(_wanted("accepted", None)) is None


def _site() -> SiteModel:
    """22 kW; S steerable (1 x 32 A), U refuses profiles (2 x 16 A)."""
    nodes = [
        TreeNode(SITE_NODE, None, max_power_w=SITE_W),
        TreeNode(station_node("S"), SITE_NODE),
        TreeNode(station_node("U"), SITE_NODE),
    ]
    site = SiteModel(id="x", nodes=nodes)
    for sid, e, amps, refuses in (
        ("S", 1, 32.0, False),
        ("U", 1, 16.0, True),
        ("U", 2, 16.0, True),
    ):
        ev = EvseModel(sid, e, max_current_a=amps, steerable=not refuses, refuses_profiles=refuses)
        site.evses[ev.key] = ev
        site.node_of[ev.key] = station_node(sid)
    return site


def test_admission_rule_counts_full_power_plus_steerable_minimums():
    site = _site()
    u1, u2 = evse_key("U", 1), evse_key("U", 2)
    # idle and online, an EVSE that refuses profiles counts as nothing
    assert site.evses[u1].pinned_load_a() == 0.0
    assert admission_candidate(site, "U", None) in (u1, u2)
    assert admission_problems(site, u1) == []
    site.evses[evse_key("S", 1)].session = SessionModel("s1", started_at=T0)
    assert admission_problems(site, u1) == []  # 16 A + 6 A: 15.2 kW
    site.evses[u1].session = SessionModel("u1", started_at=T0)
    assert site.evses[u1].pinned_load_a() == 16.0
    assert admission_candidate(site, "U", None) == u2
    # 16 A + 6 A + 16 A = 26.2 kW > 22 kW
    assert admission_problems(site, u2)
    # a car waiting for its authorization there is the one being admitted
    site.evses[u2].session = SessionModel("u2", started_at=T0, authorized=False)
    assert admission_candidate(site, "U", None) == u2
    assert site.evses[u2].pinned_load_a() == 0.0  # draws nothing before authorization
    assert unsteerable_problems(site, {u1: 16.0}) == []
    assert unsteerable_problems(site, {u1: 16.0, u2: 16.0})


async def _events(node: Node, station_id: str, type_: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"station_id": station_id})
    assert r.status_code == 200, r.text
    return [e for e in r.json() if e["type"] == type_]


async def _start(node: Node, spec: StationSpec, site: str, evse_a: float) -> SimStation:
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(60.0), meter_interval_s=60.0, seed=1)
    await st.start(timeout=10.0)
    r = await node.http.patch(
        f"/api/v1/stations/{st.id}", json={"site_id": site, "evse_max_current_a": evse_a}
    )
    assert r.status_code == 200, r.text
    return st


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_unsteerable_station_is_flagged_and_admission_keeps_the_site_safe(
    node: Node, version: str
):
    site = f"ns{next(_ids)}"
    r = await node.http.post(
        "/api/v1/sites", json={"id": site, "import_limit_kw": SITE_W / 1000, "policy": "equal"}
    )
    assert r.status_code == 201, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    n = next(_ids)
    good = await _start(node, StationSpec(id=f"NS-S{n}", ocpp_version="2.0.1", evses=1), site, 32.0)
    bad_spec = StationSpec(
        id=f"NS-U{n}",
        ocpp_version=version,
        evses=2,
        max_current_a=16.0,
        profile_behaviour="reject",
    )
    bad = await _start(node, bad_spec, site, 16.0)
    lm = node.rt.lm
    try:
        car = EvSpec(battery_kwh=60, soc=0.2, max_ac_power_w=22_000.0)
        assert await good.plug_in(1, car, "GOOD")
        assert await bad.plug_in(1, car, "GOOD")

        # flagged: the API field and one NotSteerable event
        async def flagged():
            st = await node.station(bad.id)
            return st if st["steerable"] is False else None

        st = await node.wait_for(flagged, timeout=15)
        assert st["not_steerable_reason"] and "Rejected" in st["not_steerable_reason"]
        assert (await node.station(good.id))["steerable"] is True
        events = await node.wait_for(lambda: _events(node, bad.id, "NotSteerable"), timeout=5)
        assert len(events) == 1 and events[0]["kind"] == "smart_charging"

        # the steerable session gets what is left next to 16 A at full power
        key_good, key_bad = evse_key(good.id, 1), evse_key(bad.id, 1)

        async def shared():
            await lm.rebalance_now(site)
            plan = lm.status[site].plan
            if plan is None or plan.pinned.get(key_bad) != 16.0:
                return None
            left = SITE_W / (230 * 3) - 16.0
            got = plan.targets.get(key_good, 0.0)
            return plan if left - 1.0 <= got <= left + 1e-6 else None

        await node.wait_for(shared, timeout=60)

        # a second car at the unsteerable station: the site cannot carry it
        assert not await bad.plug_in(2, car, "GOOD")
        refused = await node.wait_for(lambda: _events(node, bad.id, "AdmissionRefused"), timeout=5)
        assert "cannot carry" in refused[0]["detail"]["reason"]
        txs = await node.transactions(active="true", station_id=bad.id)
        assert [t["evse_id"] for t in txs] == [1]

        # commanded + pinned stays within the site's limit
        await lm.rebalance_now(site)
        model, _ = await lm.load_model(site)
        plan = lm.status[site].plan
        assert plan is not None and not plan.problems
        assert key_bad in plan.pinned and evse_key(bad.id, 2) in plan.pinned
        assert check_commanded(model, {**plan.targets, **plan.pinned}) == []
        assert max(plan.total_a(model)) * 230 * 3 <= SITE_W + 1
        assert not await _events(node, bad.id, "SiteOverLimit")
    finally:
        await bad.stop()
        await good.stop()


class _Clock:
    def __init__(self) -> None:
        self.t = T0

    def now(self) -> datetime:
        return self.t


class _Dispatcher:
    def on_result(self, listener) -> None:
        pass


async def test_unsteerable_load_over_the_limit_stops_the_newest_session_as_last_resort():
    """Sessions that ran before their station stopped taking profiles: over the limit
    they are told once, and after the grace the newest is stopped, one a cooldown."""
    stopped: list[tuple[str, str]] = []

    async def stop(station_id: str, tx_id: str) -> None:
        stopped.append((station_id, tx_id))

    clock = _Clock()
    lm = LoadManager(None, None, None, clock, _Dispatcher(), lambda _: True, stop_session=stop)
    site = _site()
    u1, u2 = evse_key("U", 1), evse_key("U", 2)
    site.evses[u1].session = SessionModel("old", started_at=T0)
    site.evses[u2].session = SessionModel("new", started_at=T0 + timedelta(minutes=5))
    result = plan(site, T0)
    assert result.pinned == {u1: 16.0, u2: 16.0}  # 22.08 kW > 22 kW

    async def at(seconds: float) -> list:
        clock.t = T0 + timedelta(seconds=seconds)
        lm._guard_unsteerable(site, result, clock.t)
        await asyncio.sleep(0)
        return list(stopped)

    assert await at(0) == [] and "x" in lm._over  # SiteOverLimit, no stop yet
    assert await at(31) == [("U", "new")]
    assert await at(60) == [("U", "new")]  # cooldown
    assert await at(95) == [("U", "new")] * 2  # still over: the newest again
    site.evses[u2].session = None
    lm._guard_unsteerable(site, plan(site, clock.t), clock.t)
    assert "x" not in lm._over  # the excursion is over


async def test_a_station_without_smart_charging_answers_notimplemented_and_is_refused(
    database_url,
):
    """The ``ocpp`` library's 2.0.1 ChargePoint has no SetChargingProfile handler: its
    CALLERROR NotImplemented flags it, and a card the site cannot carry there is
    answered NotAtThisTime."""
    rt, http = await start_node(database_url, allow_unknown_stations=True)
    node = Node(rt, http)
    try:
        r = await http.post("/api/v1/sites", json={"id": "ni", "import_limit_kw": 5})
        assert r.status_code == 201, r.text
        await http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
        async with connected(Lib201, node.ocpp_url, "NI-1", "ocpp2.0.1") as cp:
            await cp.call(
                call.BootNotification(
                    charging_station={"model": "L", "vendor_name": "Lib"}, reason="PowerUp"
                )
            )
            await cp.call(
                call.StatusNotification(
                    timestamp=datetime.now(UTC).isoformat(),
                    connector_status="Available",
                    evse_id=1,
                    connector_id=1,
                )
            )
            r = await http.patch("/api/v1/stations/NI-1", json={"site_id": "ni"})
            assert r.status_code == 200, r.text

            async def flagged():
                st = await node.station("NI-1")
                return st if st["steerable"] is False else None

            st = await node.wait_for(flagged, timeout=10)
            assert "NotImplemented" in st["not_steerable_reason"]
            res = await cp.call(call.Authorize(id_token={"id_token": "GOOD", "type": "ISO14443"}))
            assert res.id_token_info["status"] == "NotAtThisTime"
            refused = await node.wait_for(lambda: _events(node, "NI-1", "AdmissionRefused"))
            assert "cannot carry" in refused[0]["detail"]["reason"]
    finally:
        await http.aclose()
        await rt.stop()
