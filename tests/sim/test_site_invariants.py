"""A site's afternoon against the real CSMS: the figures it shows are right (B5, B8, C4, C6).

One CSMS and its stations share an accelerated clock. The site mixes:
- 1.6 and 2.0.1 stations whose clocks are 5 min ahead or behind;
- single- and three-phase cars, with needs that can and cannot be met;
- a station that accepts a remote start and starts nothing, and that keeps
  a transaction the CSMS limits but the station does not know (TxNotFound).

It checks, from what the simulated cars really drew and from the database:
- the site's limit is never broken;
- every need that the car could physically take in its stay is met while the
  site has room, and a need it cannot take is answered as such;
- the site's energy KPI equals the sum of the meter registers;
- no capacity is held for an EVSE without a transaction.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from ocpp.v201 import call
from sqlalchemy import func, select

from conftest import Node, start_node
from evflex.clock import AcceleratedClock
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.store.tables import MeterValue, Transaction
from ocpp_clients import GhostStation, connected

SPEED = 360.0  # six clock-minutes per real second
LIMIT_KW = 40.0
VOLT = 230.0
SINGLE_PHASE_MAX_A = 16.0  # the site's single-phase rule (B8)


@pytest.fixture
async def site_node(database_url):
    rt, http = await start_node(
        database_url,
        clock=AcceleratedClock(SPEED),
        allow_unknown_stations=True,
        remote_start_timeout_s=120.0,
        site_sample_s=60.0,
    )
    try:
        yield Node(rt, http)
    finally:
        await http.aclose()
        await rt.stop()


# station id, version, clock skew (s); cars per EVSE: (spec, needs via the API: kWh or None)
ONE_PHASE = dict(phases=1, max_ac_power_w=7360.0)
CARS = {
    ("INV-A", "1.6", 300.0): [
        (EvSpec(battery_kwh=60, soc=0.3, target_soc=0.8, **ONE_PHASE), 6.0),  # 1-phase, met
        (EvSpec(battery_kwh=60, soc=0.3, target_soc=0.8, max_ac_power_w=11000.0), 15.0),
    ],
    ("INV-B", "1.6", -300.0): [
        (EvSpec(battery_kwh=80, soc=0.2, target_soc=0.8, max_ac_power_w=22000.0), None),
    ],
    ("INV-C", "2.0.1", 300.0): [
        # the car states its needs: 1-phase, 6 kWh by departure (met)
        (EvSpec(battery_kwh=20, soc=0.5, target_soc=0.8, departure_s=7200.0, **ONE_PHASE), None),
        # 90 kWh in 1.5 h on 11 kW: cannot be met
        (
            EvSpec(
                battery_kwh=100, soc=0.1, target_soc=1.0, departure_s=5400.0, max_ac_power_w=11000.0
            ),
            None,
        ),
    ],
    ("INV-D", "2.0.1", -300.0): [
        (
            EvSpec(
                battery_kwh=40, soc=0.4, target_soc=0.8, departure_s=9000.0, max_ac_power_w=11000.0
            ),
            None,
        ),
    ],
}
STAY_S = 7200.0  # cars without a stated departure leave after this


async def test_a_mixed_site_keeps_its_limits_and_its_word(site_node: Node):
    node = site_node
    clock = node.rt.clock
    r = await node.http.post(
        "/api/v1/sites", json={"id": "inv", "import_limit_kw": LIMIT_KW, "policy": "deadline"}
    )
    assert r.status_code == 201, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "TOK", "status": "Accepted"})

    stations: list[SimStation] = []
    for sid, version, skew in CARS:
        st = SimStation(
            StationSpec(id=sid, ocpp_version=version),
            node.ocpp_url,
            clock,
            meter_interval_s=60.0,
            seed=sid,
            clock_skew_s=skew,
            time_source="rtc",
        )
        await st.start(timeout=10)
        r = await node.http.patch(f"/api/v1/stations/{sid}", json={"site_id": "inv"})
        assert r.status_code == 200, r.text
        stations.append(st)

    draws: list[float] = []
    plans_seen: list = []
    stop = asyncio.Event()

    async def watch() -> None:
        """What the simulated cars draw together, and every plan the site gets."""
        while not stop.is_set():
            total = 0.0
            for st in stations:
                for evse in st.evses.values():
                    st.advance(evse)
                    total += max(0.0, evse.power_w)
            draws.append(total)
            plan = node.rt.lm.status.get("inv")
            if plan is not None and plan.plan is not None:
                if not plans_seen or plans_seen[-1] is not plan.plan:
                    plans_seen.append(plan.plan)
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    try:
        async with connected(GhostStation, node.ocpp_url, "INV-GHOST", "ocpp2.0.1") as ghost:
            GhostStation.known = set()
            await ghost.call(
                call.BootNotification(
                    charging_station={"model": "G", "vendor_name": "Lib"}, reason="PowerUp"
                )
            )
            r = await node.http.patch("/api/v1/stations/INV-GHOST", json={"site_id": "inv"})
            assert r.status_code == 200, r.text
            await ghost.call(
                call.StatusNotification(
                    timestamp=clock.now().isoformat(),
                    connector_status="Occupied",
                    evse_id=1,
                    connector_id=1,
                )
            )
            # A remote start the station accepts and then forgets
            r = await node.command("INV-GHOST", "remote-start", {"id_token": "TOK", "evse": 1})
            assert r.status_code == 200, r.text
            # ... and a transaction it reported once and then does not know
            await ghost.call(
                call.TransactionEvent(
                    event_type="Started",
                    timestamp=clock.now().isoformat(),
                    trigger_reason="CablePluggedIn",
                    seq_no=0,
                    transaction_info={"transaction_id": "T-GHOST", "charging_state": "Charging"},
                    evse={"id": 2, "connector_id": 1},
                )
            )

            departures: list[tuple[SimStation, int, float]] = []
            for st, ((_, _, _), cars) in zip(stations, CARS.items(), strict=True):
                for evse_id, (car, api_kwh) in enumerate(cars, start=1):
                    assert await st.plug_in(evse_id, car, "TOK")
                    stay = car.departure_s or STAY_S
                    departures.append((st, evse_id, stay))
                    if api_kwh is not None:  # the driver states the need (1.6 cannot)
                        tx = await node.wait_for(lambda st=st, e=evse_id: _active(node, st.id, e))
                        r = await node.http.put(
                            f"/api/v1/transactions/{tx.id}/preferences",
                            json={
                                "departure_time": (
                                    tx.started_at + timedelta(seconds=stay)
                                ).isoformat(),
                                "energy_kwh": api_kwh,
                            },
                        )
                        assert r.status_code == 200, r.text

            async def leave(st: SimStation, evse_id: int, stay: float) -> None:
                await clock.sleep(stay)
                await st.plug_out(evse_id)

            await asyncio.gather(*(leave(*d) for d in departures))
            await node.wait_for(lambda: _none_active(node, [s.id for s in stations]), timeout=15)
            failed = await _events(node, "INV-GHOST", "RemoteStartFailed")
            not_found = await _events(node, "INV-GHOST", "TxNotFound")
    finally:
        stop.set()
        await watcher
        await asyncio.gather(*(st.stop() for st in stations))

    # The site's limit held at every moment (1 % for the sampling between steps).
    assert draws and max(draws) <= LIMIT_KW * 1000 * 1.01, max(draws)
    assert max(draws) > 0.8 * LIMIT_KW * 1000  # the limit was binding: the test proves something
    assert all(p.problems == [] for p in plans_seen)

    # No capacity for the EVSEs without a transaction: the forgotten remote start is
    # reported, and the ghost transaction is released instead of pinned.
    assert failed and failed[0]["detail"]["evse_id"] == 1
    assert not_found and not_found[0]["detail"]["transaction_id"] == "T-GHOST"
    last = plans_seen[-1]
    assert "INV-GHOST/2" not in last.active and "INV-GHOST/2" not in last.pinned
    assert not any(k.startswith("INV-GHOST") for k in last.pinned)

    # Every need the car could take in its stay was met; the one it could not is known.
    async with node.rt.sessionmaker() as s:
        txs = list(
            (
                await s.execute(
                    select(Transaction).where(
                        Transaction.station_id.in_([st.id for st in stations])
                    )
                )
            ).scalars()
        )
        phases = dict(
            (
                await s.execute(
                    select(MeterValue.transaction_pk, func.count(func.distinct(MeterValue.phase)))
                    .where(
                        MeterValue.measurand == "Current.Import",
                        MeterValue.value >= 1.0,
                        MeterValue.phase.in_(("L1", "L2", "L3")),
                    )
                    .group_by(MeterValue.transaction_pk)
                )
            ).all()
        )
        energy = dict(
            (
                await s.execute(
                    select(
                        MeterValue.transaction_pk,
                        func.max(MeterValue.value) - func.min(MeterValue.value),
                    )
                    .where(MeterValue.measurand == "Energy.Active.Import.Register")
                    .group_by(MeterValue.transaction_pk)
                )
            ).all()
        )
    with_needs = [t for t in txs if t.energy_target_wh is not None]
    assert len(with_needs) == 5
    met = unmet = 0
    for t in with_needs:
        n = phases[t.id]
        amps = min(t.ev_max_current_a or 32.0, 32.0)
        if n == 1:
            amps = min(amps, SINGLE_PHASE_MAX_A)
        stay_h = (t.departure_at - t.started_at).total_seconds() / 3600
        deliverable = min(t.energy_target_wh, amps * VOLT * n * stay_h)
        got = energy[t.id]
        if deliverable < t.energy_target_wh - 500:
            # cannot be met even alone at full power: it was put in priority charging
            unmet += 1
            assert t.priority is True, (t.station_id, t.evse_id)
        else:
            met += 1
            assert got >= 0.95 * deliverable - 100, (t.station_id, t.evse_id, got, deliverable)
    assert met == 4 and unmet == 1
    # single-phase cars were seen as single-phase
    assert sorted(
        t.ev_phases for t in txs if t.station_id in ("INV-A", "INV-C") and t.evse_id == 1
    ) == [1, 1]

    # The day's imported energy KPI is the sum of the meter registers.
    k = (await node.http.get("/api/v1/sites/inv/kpis", params={"period": "day"})).json()
    assert k["energy_imported_kwh"] == pytest.approx(
        sum(energy[t.id] for t in txs) / 1000, abs=0.05
    )
    # the ghost transaction (0 kWh) still counts as a session until the station reports it
    assert k["sessions"] == len(txs) + 1


async def _active(node: Node, station_id: str, evse_id: int) -> Transaction | None:
    async with node.rt.sessionmaker() as s:
        return (
            await s.execute(
                select(Transaction).where(
                    Transaction.station_id == station_id,
                    Transaction.evse_id == evse_id,
                    Transaction.state == "active",
                )
            )
        ).scalar_one_or_none()


async def _none_active(node: Node, station_ids: list[str]) -> bool:
    txs = await node.transactions(active="true")
    return not any(t["station_id"] in station_ids for t in txs)


async def _events(node: Node, station_id: str, type_: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"station_id": station_id})
    return [e for e in r.json() if e["type"] == type_]
