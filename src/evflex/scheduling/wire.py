"""From planned power to currents a station accepts.

The LP plans continuous power. A charging station takes a current per phase
in whole steps (1 A), nothing between 0 and the minimum (6 A, IEC 61851), and
a single-phase EVSE at most 16 A here. :func:`wire_currents` rounds the plan
of one slot to that grid and then hands what rounding freed, step by step, to
the EVs that lost most, never breaking the site's import limit for the slot,
a circuit or a phase. Discharging (negative) setpoints get the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evflex.scheduling.lp import node_chains
from evflex.scheduling.problem import SITE, Problem, Schedule, Vehicle


@dataclass(frozen=True, slots=True)
class WireRules:
    step_a: float = 1.0
    min_a: float = 6.0
    single_phase_max_a: float = 16.0


def _cap_a(v: Vehicle, volt: float, rules: WireRules, discharge: bool) -> float:
    power = v.max_discharge_w if discharge else v.max_charge_w
    cap = power / (volt * len(v.phases))
    if len(v.phases) == 1:
        cap = min(cap, rules.single_phase_max_a)
    return math.floor(cap / rules.step_a + 1e-9) * rules.step_a


def wire_currents(
    problem: Problem, schedule: Schedule, slot: int = 0, rules: WireRules | None = None
) -> dict[str, float]:
    """Vehicle id -> signed amps per phase for ``slot`` (0 for EVs not plugged in)."""
    rules = rules or WireRules()
    volt = problem.voltage
    chains = node_chains(problem)
    node_limit = {c.id: c.max_current_a for c in problem.circuits}
    node_limit[SITE] = problem.phase_limit_a
    # the power EVs may take together in this slot: the limit minus what is not theirs
    others_w = schedule.import_w[slot] - schedule.export_w[slot]
    planned: dict[str, float] = {}
    for v in problem.vehicles:
        p = schedule.vehicles[v.id].power_w[slot]
        planned[v.id] = p / (volt * len(v.phases))
        others_w -= p
    site_room_w = schedule.import_limit_w[slot] - others_w
    storage_a: dict[tuple[str, int], float] = {}
    for s in problem.storages:
        amps = schedule.storages[s.id].power_w[slot] / (volt * len(s.phases))
        for node in chains[s.node]:
            for ph in s.phases:
                storage_a[(node, ph)] = storage_a.get((node, ph), 0.0) + amps

    out: dict[str, float] = {}
    for v in problem.vehicles:
        a = planned[v.id]
        sign = -1.0 if a < 0 else 1.0
        mag = abs(a)
        cap = _cap_a(v, volt, rules, discharge=sign < 0)
        mag = min(mag, cap)
        whole = math.floor(mag / rules.step_a + 1e-9) * rules.step_a
        if whole < rules.min_a:
            whole = rules.min_a if mag >= rules.min_a / 2 and cap >= rules.min_a else 0.0
        out[v.id] = sign * whole

    def loads() -> tuple[float, dict[tuple[str, int], float]]:
        total_w = 0.0
        per: dict[tuple[str, int], float] = dict(storage_a)
        for v in problem.vehicles:
            amps = out[v.id]
            total_w += amps * volt * len(v.phases)
            for node in chains[v.node]:
                for ph in v.phases:
                    per[(node, ph)] = per.get((node, ph), 0.0) + amps
        return total_w, per

    def fits() -> bool:
        total_w, per = loads()
        if total_w > site_room_w + 1e-6:
            return False
        return all(abs(a) <= node_limit.get(n, math.inf) + 1e-6 for (n, _), a in per.items())

    # rounding a small plan up to the minimum may break a limit: undo, smallest first
    bumped = sorted(
        (v for v in problem.vehicles if abs(out[v.id]) > abs(planned[v.id]) + 1e-9),
        key=lambda v: abs(planned[v.id]),
    )
    for v in bumped:
        if fits():
            break
        out[v.id] = 0.0
    # hand freed current back, one step at a time, to who lost most
    budget_w = sum(planned[v.id] * volt * len(v.phases) for v in problem.vehicles)
    while True:
        total_w, _ = loads()
        best = None
        for v in sorted(problem.vehicles, key=lambda v: -(planned[v.id] - out[v.id])):
            lost = planned[v.id] - out[v.id]
            if lost <= 1e-9 or planned[v.id] <= 0:
                continue
            nxt = out[v.id] + rules.step_a if out[v.id] > 0 else rules.min_a
            step_w = (nxt - out[v.id]) * volt * len(v.phases)
            if nxt > _cap_a(v, volt, rules, False) or total_w + step_w > budget_w + 1e-6:
                continue
            prev = out[v.id]
            out[v.id] = nxt
            if fits():
                best = v
                break
            out[v.id] = prev
        if best is None:
            return out
