"""One verdict per session on the driver's need: the same for the API, the driver page and the
dashboard.

A session with a departure time and an energy target gets a verdict from the plan that is
really applied to it:

* policy ``optimal``: the site scheduler's plan (``MpcResult``), per slot, from now;
* any other policy: the load manager's target for the EVSE now, held until the need is met.

``expected_wh`` is the energy the plan brings by departure (never more than the need: the
load manager stops pushing a session whose need is met), and the plan series integrates to
exactly that. ``best_wh`` is the most the session could get by departure in priority
charging. The need is met (``ACCEPTED``) when ``expected_wh`` reaches it, otherwise the
verdict is ``NOT_POSSIBLE``: the need stays stored, the session counts as "at risk".

Pure code: time, the site model and the plans are arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from evflex.smartcharging.mpc import MpcResult
from evflex.smartcharging.planner import SiteModel, best_case_a, deliverable_wh, power_w

Status = Literal["ACCEPTED", "NOT_POSSIBLE", "NO_NEEDS"]

#: A need counts as met when the plan falls short of it by at most this much (Wh).
TOLERANCE_WH = 1.0


@dataclass(frozen=True, slots=True)
class Step:
    """From ``start`` on (until the next step, or the plan's end) the EVSE draws ``power_w``."""

    start: datetime
    power_w: float


@dataclass(slots=True)
class Verdict:
    status: Status
    at: datetime
    departure: datetime | None = None
    need_wh: float | None = None  # still wanted from ``at``
    expected_wh: float | None = None  # what the plan brings by departure, from ``at``
    best_wh: float | None = None  # the most it could get by departure (priority charging)
    priority: bool = False
    source: Literal["schedule", "allocation", "none"] = "none"
    plan: list[Step] = field(default_factory=list)  # step series, ends at ``plan_end``
    plan_end: datetime | None = None

    @property
    def at_risk(self) -> bool:
        return self.status == "NOT_POSSIBLE"


def _cut(steps: list[Step], end: datetime, need_wh: float) -> tuple[list[Step], float]:
    """The steps up to ``end``, stopped once they bring ``need_wh``; and their energy."""
    out: list[Step] = []
    energy = 0.0
    for i, st in enumerate(steps):
        if st.start >= end:
            break
        stop = steps[i + 1].start if i + 1 < len(steps) else end
        stop = min(stop, end)
        hours = (stop - st.start).total_seconds() / 3600
        gain = st.power_w * hours
        if st.power_w > 0 and energy + gain > need_wh:
            left_h = max(0.0, need_wh - energy) / st.power_w
            out.append(st)
            energy = need_wh
            done = st.start + timedelta(hours=left_h)
            if done < end:
                out.append(Step(done, 0.0))
            return out, energy
        out.append(st)
        energy += gain
    return out, energy


def _schedule_steps(mpc: MpcResult, key: str, now: datetime) -> list[Step]:
    p = mpc.problem
    vp = mpc.schedule.vehicles[key]
    steps: list[Step] = []
    for t, w in enumerate(vp.power_w):
        start = p.slot_start(t)
        end = start + timedelta(seconds=p.slot_s)
        if end <= now:
            continue
        start = max(start, now)
        if steps and abs(steps[-1].power_w - w) < 1e-6:
            continue  # the same power goes on: one step
        steps.append(Step(start, float(w)))
    return steps


def session_verdict(
    site: SiteModel,
    key: str,
    now: datetime,
    *,
    targets: dict[str, float] | None = None,
    mpc: MpcResult | None = None,
) -> Verdict:
    """The verdict on the need of the session on EVSE ``key`` of ``site`` at ``now``.

    ``targets`` are the load manager's targets now (A per phase), ``mpc`` the site
    scheduler's plan when the site's policy uses it.
    """
    ev = site.evses.get(key)
    if ev is None or ev.session is None:
        return Verdict(status="NO_NEEDS", at=now)
    s = ev.session
    out = Verdict(status="NO_NEEDS", at=now, departure=s.departure, priority=s.priority)
    need = s.energy_needed_wh
    if s.departure is None or need is None:
        return out
    out.need_wh = need
    if s.departure <= now:
        out.expected_wh = out.best_wh = 0.0
        out.status = "ACCEPTED" if need <= TOLERANCE_WH else "NOT_POSSIBLE"
        return out
    best = None
    if mpc is not None and key in mpc.schedule.vehicles:
        out.source = "schedule"
        steps = _schedule_steps(mpc, key, now)
        vp = mpc.schedule.vehicles[key]
        if not vp.feasible and vp.max_deliverable_wh is not None:
            best = vp.max_deliverable_wh
    else:
        out.source = "allocation"
        amps = (targets or {}).get(key, 0.0)
        watts = power_w(site, key, amps) if amps > 0 else 0.0
        steps = [Step(now, watts)] if not ev.pinned else []
    plan, expected = _cut(steps, s.departure, need)
    out.plan = plan
    out.plan_end = s.departure
    out.expected_wh = max(0.0, expected)
    out.status = "ACCEPTED" if out.expected_wh + TOLERANCE_WH >= need else "NOT_POSSIBLE"
    if best is None and out.status == "NOT_POSSIBLE":  # a trial plan only when it can matter
        best = deliverable_wh(site, key, now, best_case_a(site, key, now)) or 0.0
    out.best_wh = max(min(best if best is not None else need, need), out.expected_wh)
    return out
