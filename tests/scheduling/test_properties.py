"""Properties on random sites: no limit is ever broken, a feasible need is always met.

The needs are built from a random schedule that is feasible by construction
(random powers within each EV's bounds, scaled down per slot until every
limit holds), so the LP must meet every one of them in full.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evflex.scheduling import SITE, Circuit, Objective, Problem, Vehicle, solve
from evflex.scheduling.lp import node_chains, presence

T0 = datetime(2026, 3, 2, tzinfo=UTC)
VOLT = 230.0
TOL = 1e-3  # W, A, Wh


@st.composite
def sites(draw):
    slots = draw(st.integers(2, 10))
    slot_s = draw(st.sampled_from([900.0, 1800.0, 3600.0]))
    ncirc = draw(st.integers(0, 2))
    circuits = []
    for k in range(ncirc):
        parent = draw(st.sampled_from([SITE] + [c.id for c in circuits]))
        circuits.append(Circuit(f"c{k}", draw(st.floats(6, 64)), parent=parent))
    nodes = [SITE] + [c.id for c in circuits]
    vehicles = []
    for i in range(draw(st.integers(1, 6))):
        a = draw(st.floats(0, slots - 1))
        d = draw(st.floats(a + 0.25, slots + 2))
        phases = draw(st.sampled_from([(1,), (2,), (3,), (1, 2, 3)]))
        v2x = draw(st.booleans())
        vehicles.append(
            Vehicle(
                id=f"v{i}",
                arrival=T0 + timedelta(seconds=a * slot_s),
                departure=T0 + timedelta(seconds=d * slot_s),
                max_charge_w=draw(st.floats(1400, 22000)),
                max_discharge_w=draw(st.floats(0, 11000)) if v2x else 0.0,
                v2x_allowed=v2x and draw(st.booleans()),
                battery_wh=60_000.0 if v2x else None,
                soc=0.5 if v2x else None,
                eta_charge=draw(st.floats(0.85, 1.0)),
                eta_discharge=draw(st.floats(0.85, 1.0)),
                node=draw(st.sampled_from(nodes)),
                phases=phases,
            )
        )
    prices = draw(st.lists(st.floats(-0.05, 0.5), min_size=slots, max_size=slots))
    return Problem(
        start=T0,
        slots=slots,
        slot_s=slot_s,
        vehicles=vehicles,
        circuits=circuits,
        import_limit_w=draw(st.floats(3000, 60000)),
        export_limit_w=draw(st.floats(0, 20000)),
        phase_limit_a=draw(st.sampled_from([float("inf"), 40.0, 80.0])),
        base_load_w=draw(st.lists(st.floats(0, 2000), min_size=slots, max_size=slots)),
        pv_w=draw(st.lists(st.floats(0, 8000), min_size=slots, max_size=slots)),
        import_price=prices,
        export_price=[p * 0.5 for p in prices],
        capacity_tariff_per_kw=draw(st.sampled_from([0.0, 5.0])),
        objective=draw(st.sampled_from(list(Objective))),
    ), draw(st.integers(0, 2**31))


def feasible_needs(problem: Problem, seed: int) -> list[float]:
    """Energy each EV gets from a random schedule that keeps every limit (charging only)."""
    rng = np.random.default_rng(seed)
    pres = presence(problem)
    T = problem.slots
    power = np.zeros((len(problem.vehicles), T))
    for col in range(len(pres.t)):
        i, t = pres.ev[col], pres.t[col]
        power[i, t] = rng.uniform(0, 1) * problem.vehicles[i].max_charge_w * pres.frac[col]
    chains = node_chains(problem)
    limits = {c.id: c.max_current_a for c in problem.circuits} | {SITE: problem.phase_limit_a}
    base = np.asarray(problem.base_load_w) - np.asarray(problem.pv_w)
    for t in range(T):
        room = problem.import_limit_w - max(base[t], 0.0)
        scale = min(1.0, max(room, 0.0) / max(power[:, t].sum(), 1e-9))
        for node, lim in limits.items():
            for ph in (1, 2, 3):
                amps = sum(
                    power[i, t] / (VOLT * len(v.phases))
                    for i, v in enumerate(problem.vehicles)
                    if ph in v.phases and node in chains[v.node]
                )
                if amps > lim:
                    scale = min(scale, lim / amps)
        power[:, t] *= scale * 0.999
    dt = problem.slot_h
    return [float(power[i].sum() * dt * v.eta_charge) for i, v in enumerate(problem.vehicles)]


def with_needs(problem: Problem, needs: list[float]) -> Problem:
    from dataclasses import replace

    vs = []
    for v, n in zip(problem.vehicles, needs, strict=True):
        if v.battery_wh is not None:
            vs.append(replace(v, target_soc=min(1.0, v.soc + n / v.battery_wh)))
        else:
            vs.append(replace(v, energy_wh=n))
    return replace(problem, vehicles=vs)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sites())
def test_plan_keeps_every_limit_and_meets_every_feasible_need(case):
    raw, seed = case
    problem = with_needs(raw, feasible_needs(raw, seed))
    s = solve(problem, method="simplex")
    T = problem.slots
    pres = presence(problem)
    chains = node_chains(problem)
    base = np.asarray(problem.base_load_w)
    pv = np.asarray(problem.pv_w)

    # every driver's need is met in full
    for v in problem.vehicles:
        plan = s.vehicles[v.id]
        assert plan.unmet_wh <= TOL, (v.id, plan.unmet_wh, plan.need_wh)
        assert plan.feasible
    assert s.kpis.limit_breach_kwh <= TOL

    # EV bounds: presence, max charge, discharge only with consent
    bound = np.zeros((len(problem.vehicles), T))
    for col in range(len(pres.t)):
        bound[pres.ev[col], pres.t[col]] = pres.frac[col]
    for i, v in enumerate(problem.vehicles):
        p = np.asarray(s.vehicles[v.id].power_w)
        assert (p <= v.max_charge_w * bound[i] + TOL).all()
        floor = -v.max_discharge_w * bound[i] if v.can_discharge else np.zeros(T)
        assert (p >= floor - TOL).all()
        if s.vehicles[v.id].soc is not None:
            assert min(s.vehicles[v.id].soc) >= v.min_soc - 1e-6
            assert max(s.vehicles[v.id].soc) <= 1 + 1e-6

    # site: limits and the energy balance in every slot
    ev_w = np.array([s.vehicles[v.id].power_w for v in problem.vehicles]).sum(axis=0)
    imp, exp, curt = map(np.asarray, (s.import_w, s.export_w, s.curtail_w))
    assert (imp <= np.asarray(s.import_limit_w) + TOL).all()
    assert (exp <= np.asarray(s.export_limit_w) + TOL).all()
    assert np.allclose(imp - exp, base - pv + curt + ev_w, atol=1e-2)
    assert ((imp < TOL) | (exp < TOL)).all()  # never both at once

    # circuits and the site fuse, per phase
    limits = {c.id: c.max_current_a for c in problem.circuits} | {SITE: problem.phase_limit_a}
    for node, lim in limits.items():
        for ph in (1, 2, 3):
            amps = sum(
                np.asarray(s.vehicles[v.id].power_w) / (VOLT * len(v.phases))
                for v in problem.vehicles
                if ph in v.phases and node in chains[v.node]
            )
            assert (np.abs(amps) <= lim + TOL).all(), (node, ph)
