"""Single-phase cars are planned and judged on one phase (B8, C4).

A single-phase car on a three-phase station loads one grid phase and takes
a third of the energy a three-phase car would at the same current. The CSMS
learns the car's phases from its charging needs (2.x) or from its
per-phase meter values (1.6), plans it on that phase under the site's
single-phase limit, and promises the driver only what that can deliver.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from conftest import Node
from evflex.clock import AcceleratedClock
from evflex.domain.model import MeterSample, phases_drawn
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.smartcharging.manager import ev_phases
from evflex.smartcharging.planner import deliverable_wh, evse_key
from evflex.store.tables import Transaction

_ids = itertools.count(1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _samples(power_w: float | None, **currents: float) -> list[MeterSample]:
    out = [MeterSample(T0, "Current.Import", a, "A", phase=ph) for ph, a in currents.items()]
    if power_w is not None:
        out.append(MeterSample(T0, "Power.Active.Import", power_w, "W"))
    return out


def test_phases_drawn_from_per_phase_currents_and_power():
    assert phases_drawn(_samples(7360, L1=32.0)) == 1
    assert phases_drawn(_samples(None, L1=16.0, L2=0.0, L3=0.2)) == 1
    assert phases_drawn(_samples(11040, L1=16.0, L2=16.0, L3=16.0)) == 3
    assert phases_drawn(_samples(7360, L1=16.0, L2=16.0)) == 2
    # a station that reports L1 only for a three-phase car: the power says three
    assert phases_drawn(_samples(11040, L1=16.0)) == 3
    # nothing drawn, or no per-phase values: cannot tell
    assert phases_drawn(_samples(0.0, L1=0.0, L2=0.0, L3=0.0)) is None
    assert phases_drawn(_samples(7360)) is None


class _Stn:
    def __init__(self, phases=3, phase_rotation=None):
        self.phases, self.phase_rotation = phases, phase_rotation


class _Tx:
    def __init__(self, ev_phases):
        self.ev_phases = ev_phases


def test_ev_phases_narrows_the_station_to_the_car():
    three = (1, 2, 3)
    assert ev_phases(three, _Stn(), None) == three
    assert ev_phases(three, _Stn(), _Tx(None)) == three  # unknown: the safe side
    assert ev_phases(three, _Stn(), _Tx(1)) == (1,)
    assert ev_phases(three, _Stn(phase_rotation=2), _Tx(1)) == (2,)
    assert ev_phases(three, _Stn(phase_rotation=3), _Tx(2)) == (1, 3)
    assert ev_phases(three, _Stn(), _Tx(3)) == three
    assert ev_phases((2,), _Stn(1, 2), _Tx(3)) == (2,)  # a single-phase station stays so


async def _tx_row(node: Node, station_id: str) -> Transaction | None:
    async with node.rt.sessionmaker() as s:
        return (
            await s.execute(
                select(Transaction).where(
                    Transaction.station_id == station_id, Transaction.state == "active"
                )
            )
        ).scalar_one_or_none()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_single_phase_car_is_planned_on_one_phase(node: Node, version: str):
    """B8: a 32 A single-phase car on a 22 kW station gets the site's 16 A single-phase
    limit on one phase, and the energy promised to it is counted on one phase."""
    r = await node.http.post(
        "/api/v1/sites", json={"id": "p1", "import_limit_kw": 80, "policy": "deadline"}
    )
    assert r.status_code == 201, r.text
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    spec = StationSpec(id=f"PH{version.replace('.', '')}-{next(_ids)}", ocpp_version=version)
    st = SimStation(spec, node.ocpp_url, AcceleratedClock(60.0), meter_interval_s=60.0, seed=1)
    await st.start(timeout=10.0)
    try:
        r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "p1"})
        assert r.status_code == 200, r.text
        car = EvSpec(
            battery_kwh=60, soc=0.2, phases=1, max_ac_power_w=7360.0, departure_s=6 * 3600.0
        )
        assert await st.plug_in(1, car, "GOOD")
        # 2.0.1 says so in its charging needs; 1.6 shows it in its per-phase currents.
        row = await node.wait_for(
            lambda: _phase_known(node, st.id), timeout=15 if version == "1.6" else 5
        )
        assert row.ev_phases == 1
        key = evse_key(st.id, 1)

        async def planned_single_phase():
            await node.rt.lm.rebalance_now("p1")
            model, _ = await node.rt.lm.load_model("p1")
            plan = node.rt.lm.status["p1"].plan
            ev = model.evses[key]
            if ev.phases == (1,) and plan is not None and plan.targets.get(key) == 16.0:
                return model
            return None

        model = await node.wait_for(planned_single_phase, timeout=10)
        # The car draws 16 A on L1: 3.68 kW, not 3 x 16 A.
        await node.wait_for(lambda: _power_is(node, st.id, 16 * 230.0), timeout=10)
        # What it can get in 2 h is counted on one phase.
        now = node.rt.clock.now()
        model.evses[key].session.departure = now + timedelta(hours=2)
        assert deliverable_wh(model, key, now, 16.0) == pytest.approx(16 * 230 * 2)
    finally:
        await st.stop()


async def _phase_known(node: Node, station_id: str):
    row = await _tx_row(node, station_id)
    return row if row is not None and row.ev_phases is not None else None


async def _power_is(node: Node, station_id: str, watts: float) -> bool:
    txs = await node.transactions(active="true", station_id=station_id)
    return bool(txs) and txs[0]["power_w"] == pytest.approx(watts, abs=50)
