"""What each EVSE of a site may draw now: the load manager's pure core.

A :class:`SiteModel` is a snapshot of one site (its tree of circuits and
stations, every EVSE and the session on it). :func:`plan` turns it into a
target current per EVSE:

1. EVSEs the CSMS cannot steer right now (station offline, or a profile it
   has not accepted) are *pinned*: they count as uncontrolled load at the
   highest limit they may still be using. An EVSE of a station that refuses
   charging profiles counts at its full power while it has an authorized
   session, and as nothing while it is idle and online: a session there must
   first pass admission (:func:`admission_problems`).
2. EVSEs with a session share what is left by the site's policy (equal,
   priority classes, or least-laxity-first). A session in its first seconds
   or in priority charging is boosted: it is served first.
3. Idle EVSEs share the leftovers as their TxDefault, so a car that plugs
   in starts charging at once within the limits.

No I/O and no clock: time is an argument. The runtime (``manager``) builds
the model from the database and pushes the targets as charging profiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from evflex.smartcharging.allocation import (
    SINGLE_PHASE_MAX_A,
    Allocation,
    Demand,
    Node,
    Policy,
    SiteConfig,
    allocate,
    violations,
)

SITE_NODE = "site"


def circuit_node(circuit_id: str) -> str:
    return f"c:{circuit_id}"


def station_node(station_id: str) -> str:
    return f"s:{station_id}"


def evse_key(station_id: str, evse_id: int) -> str:
    return f"{station_id}/{evse_id}"


@dataclass(slots=True)
class SessionModel:
    transaction_id: str
    started_at: datetime | None = None
    departure: datetime | None = None
    energy_target_wh: float | None = None  # total for the session
    energy_delivered_wh: float = 0.0
    priority: bool = False
    ev_max_current_a: float | None = None
    ev_min_current_a: float | None = None
    finished: bool = False  # the EV stopped drawing (SuspendedEV / target reached)
    authorized: bool = True  # False: a car plugged in, waiting for its authorization (2.x)
    # V2X: discharging needs all of the driver's consent, a bidirectional EV
    # and a station that can discharge it (their capabilities); the plan then
    # sends CentralSetpoint profiles.
    v2x: bool = False
    max_discharge_w: float = 0.0
    v2x_floor_wh: float | None = None  # lowest energy level from now (see Vehicle)

    @property
    def energy_needed_wh(self) -> float | None:
        if self.energy_target_wh is None:
            return None
        return max(0.0, self.energy_target_wh - self.energy_delivered_wh)


@dataclass(slots=True)
class EvseModel:
    station_id: str
    evse_id: int
    phases: tuple[int, ...] = (1, 2, 3)
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    online: bool = True
    steerable: bool = True  # False: the station did not accept our last profile
    refuses_profiles: bool = False  # the station refuses charging profiles altogether
    session: SessionModel | None = None
    external_limit_a: float | None = None  # a limit set at the station (NotifyChargingLimit)
    wanted_a: float | None = None  # what we last asked for
    commanded_a: float | None = None  # what the station last accepted

    @property
    def key(self) -> str:
        return evse_key(self.station_id, self.evse_id)

    @property
    def pinned(self) -> bool:
        return not self.online or not self.steerable

    def pinned_load_a(self) -> float:
        """The most this EVSE may be drawing while we cannot steer it."""
        if self.refuses_profiles:
            # No limit of ours holds there: its hardware decides. Idle and online
            # (or a car still waiting for its authorization) it draws nothing; a new
            # session there passes admission first.
            drawing = self.session is not None and self.session.authorized
            return self.max_current_a if drawing or not self.online else 0.0
        known = [v for v in (self.commanded_a, self.wanted_a) if v is not None]
        return max(known) if known else self.max_current_a


@dataclass(slots=True)
class SiteModel:
    id: str
    nodes: list[Node]
    evses: dict[str, EvseModel] = field(default_factory=dict)
    node_of: dict[str, str] = field(default_factory=dict)  # evse key -> station node
    voltage: float = 230.0
    policy: Policy = Policy.EQUAL
    single_phase_max_a: float = SINGLE_PHASE_MAX_A

    def config(self, extra_base: dict[str, list[float]] | None = None) -> SiteConfig:
        nodes = self.nodes
        if extra_base:
            nodes = []
            for n in self.nodes:
                add = extra_base.get(n.id)
                if add:
                    b0, b1, b2 = (b + a for b, a in zip(n.base_current_a, add, strict=True))
                    n = replace(n, base_current_a=(b0, b1, b2))
                nodes.append(n)
        return SiteConfig(
            nodes=tuple(nodes), voltage=self.voltage, single_phase_max_a=self.single_phase_max_a
        )


@dataclass(slots=True)
class Plan:
    site_id: str
    at: datetime
    targets: dict[str, float]  # evse key -> A per phase (TxProfile if a session, else TxDefault)
    active: set[str]  # keys with a session
    pinned: dict[str, float]  # keys counted as uncontrolled load, at this current
    paused: list[str]
    boosted: list[str]
    priority_due: list[str]  # sessions that should switch to priority charging now
    headroom_w: float
    problems: list[str]  # broken rules found by the final check (should stay empty)
    next_boost_end: datetime | None = None

    def total_a(self, site: SiteModel) -> list[float]:
        """Per-phase current the targets and pinned EVSEs add up to."""
        out = [0.0, 0.0, 0.0]
        for key, ev in site.evses.items():
            amps = self.pinned.get(key, self.targets.get(key, 0.0))
            for p in ev.phases:
                out[p - 1] += amps
        return out


def _add(loads: dict[str, list[float]], node: str, phases: tuple[int, ...], amps: float) -> None:
    acc = loads.setdefault(node, [0.0, 0.0, 0.0])
    for p in phases:
        acc[p - 1] += amps


def _demand(
    ev: EvseModel, node: str, now: datetime, boost_s: float, planned_a: float | None
) -> tuple[Demand, bool]:
    s = ev.session
    assert s is not None
    cap = ev.max_current_a
    if s.ev_max_current_a is not None:
        cap = min(cap, s.ev_max_current_a)
    if ev.external_limit_a is not None:
        cap = min(cap, ev.external_limit_a)
    min_a = max(ev.min_current_a, s.ev_min_current_a or 0.0)
    if s.finished or (s.energy_needed_wh is not None and s.energy_needed_wh <= 0):
        cap = min(cap, min_a)  # keep it alive, free the rest
    starting = (
        s.started_at is not None and boost_s > 0 and now < s.started_at + timedelta(seconds=boost_s)
    )
    if planned_a is not None:
        # the scheduler's cap; a car in its first seconds still gets the minimum to wake up
        cap = min(cap, max(planned_a, min_a) if starting else planned_a)
    boost = s.priority or starting
    return (
        Demand(
            key=ev.key,
            node=node,
            phases=ev.phases,
            max_current_a=max(0.0, cap),
            min_current_a=min_a,
            priority=1 if s.priority else 0,
            boost=boost,
            arrived=s.started_at,
            departure=s.departure,
            energy_needed_wh=s.energy_needed_wh,
        ),
        boost,
    )


def plan(
    site: SiteModel,
    now: datetime,
    *,
    initial_full_power_s: float = 30.0,
    caps: dict[str, float] | None = None,
) -> Plan:
    """Targets for every EVSE of ``site`` now.

    ``caps`` (evse key -> A) come from the site scheduler (policy
    ``optimal``): each session gets at most its cap, and the scheduler, not
    the planned rate, decides who switches to priority charging.
    """
    pinned: dict[str, float] = {}
    extra: dict[str, list[float]] = {}
    active_demands: list[Demand] = []
    idle_demands: list[Demand] = []
    boosted: list[str] = []
    next_boost_end: datetime | None = None
    for key, ev in site.evses.items():
        node = site.node_of[key]
        if ev.pinned:
            pinned[key] = ev.pinned_load_a()
            _add(extra, node, ev.phases, pinned[key])
        elif ev.session is not None:
            planned = None if caps is None else caps.get(key, 0.0)
            d, boost = _demand(ev, node, now, initial_full_power_s, planned)
            active_demands.append(d)
            if boost:
                boosted.append(key)
            s = ev.session
            if not s.priority and s.started_at is not None and initial_full_power_s > 0:
                end = s.started_at + timedelta(seconds=initial_full_power_s)
                if end > now and (next_boost_end is None or end < next_boost_end):
                    next_boost_end = end
        else:
            cap = ev.max_current_a
            if ev.external_limit_a is not None:
                cap = min(cap, ev.external_limit_a)
            idle_demands.append(
                Demand(
                    key=key,
                    node=node,
                    phases=ev.phases,
                    max_current_a=max(0.0, cap),
                    min_current_a=ev.min_current_a,
                )
            )
    cfg = site.config(extra)
    first: Allocation = allocate(cfg, active_demands, site.policy, now)
    targets = dict(first.limits_a)
    for d in active_demands:
        _add(extra, d.node, d.phases, targets[d.key])
    second = allocate(site.config(extra), idle_demands, Policy.EQUAL, now)
    targets.update(second.limits_a)

    problems = _check(site, pinned, active_demands + idle_demands, targets)
    return Plan(
        site_id=site.id,
        at=now,
        targets=targets,
        active={d.key for d in active_demands},
        pinned=pinned,
        paused=sorted(set(first.paused)),
        boosted=sorted(boosted),
        priority_due=_priority_due(site, targets, now) if caps is None else [],
        headroom_w=second.headroom_w,
        problems=problems,
        next_boost_end=next_boost_end,
    )


def _check(
    site: SiteModel, pinned: dict[str, float], demands: list[Demand], targets: dict[str, float]
) -> list[str]:
    """Every limit, with pinned EVSEs as base load and all targets applied at once."""
    extra: dict[str, list[float]] = {}
    for key, amps in pinned.items():
        _add(extra, site.node_of[key], site.evses[key].phases, amps)
    return violations(site.config(extra), demands, targets)


def check_commanded(site: SiteModel, commanded: dict[str, float]) -> list[str]:
    """Broken limits if every EVSE draws what ``commanded`` allows (tests, guards).

    Checks only the tree (circuits, phases, power), not the per-EVSE rules: an
    EVSE we cannot steer may draw anything up to its hardware.
    """
    demands = []
    limits = {}
    for key, ev in site.evses.items():
        demands.append(
            Demand(key, site.node_of[key], ev.phases, max_current_a=math.inf, min_current_a=0.0)
        )
        limits[key] = commanded.get(key, ev.pinned_load_a())
    cfg = replace(site.config(), step_a=1e-9, single_phase_max_a=math.inf)
    return violations(cfg, demands, limits)


def _priority_due(site: SiteModel, targets: dict[str, float], now: datetime) -> list[str]:
    """Sessions whose time to reach the target at the planned rate is >= time to departure."""
    due = []
    for key, ev in site.evses.items():
        s = ev.session
        if s is None or s.priority or s.departure is None or ev.pinned:
            continue
        need = s.energy_needed_wh
        if not need:
            continue
        left_h = (s.departure - now).total_seconds() / 3600
        rate_w = power_w(site, key, targets.get(key, 0.0))
        if left_h <= 0:
            continue
        if rate_w <= 0 or need / rate_w >= left_h:
            due.append(key)
    return due


def power_w(site: SiteModel, key: str, amps: float) -> float:
    """W an EVSE draws at ``amps`` per phase: on the phases its car really uses."""
    return amps * site.voltage * len(site.evses[key].phases)


def deliverable_wh(site: SiteModel, key: str, now: datetime, amps: float) -> float | None:
    """Energy the session gets by its departure at ``amps`` per phase (None: no departure)."""
    ev = site.evses[key]
    s = ev.session
    if s is None or s.departure is None:
        return None
    hours = max(0.0, (s.departure - now).total_seconds() / 3600)
    return power_w(site, key, amps) * hours


def best_case_a(site: SiteModel, key: str, now: datetime) -> float:
    """The most the site could give this session now if it were in priority charging."""
    ev = site.evses[key]
    if ev.session is None or ev.pinned:
        return 0.0
    boosted = replace(ev, session=replace(ev.session, priority=True))
    trial = SiteModel(
        id=site.id,
        nodes=site.nodes,
        evses={**site.evses, key: boosted},
        node_of=site.node_of,
        voltage=site.voltage,
        policy=site.policy,
        single_phase_max_a=site.single_phase_max_a,
    )
    return plan(trial, now, initial_full_power_s=0).targets.get(key, 0.0)


def unsteerable_problems(site: SiteModel, pinned: dict[str, float]) -> list[str]:
    """Broken limits from the pinned EVSEs alone (the load the CSMS cannot steer)."""
    return check_commanded(site, {k: pinned.get(k, 0.0) for k in site.evses})


def admission_candidate(site: SiteModel, station_id: str, evse_id: int | None) -> str | None:
    """The EVSE a new session at ``station_id`` takes (``evse_id`` None: not said yet).

    Without an EVSE (an Authorize): the EVSE with a car waiting for its
    authorization, else the largest free one.
    """
    if evse_id is not None:
        return evse_key(station_id, evse_id)
    keys = [k for k, ev in site.evses.items() if ev.station_id == station_id]
    waiting = [k for k in keys if (s := site.evses[k].session) is not None and not s.authorized]
    free = [k for k in keys if site.evses[k].session is None]
    pool = waiting or free or keys
    return max(pool, key=lambda k: site.evses[k].max_current_a) if pool else None


def admission_problems(site: SiteModel, key: str) -> list[str]:
    """Broken limits if a new session at EVSE ``key`` (one we cannot steer) is admitted.

    The rule: the site must carry that EVSE at its full power on top of what
    it cannot steer already (the other pinned EVSEs with an authorized
    session, or offline) plus the minimum current of every steerable session
    (steerable sessions can be turned down to their minimum, no further).
    Idle EVSEs and cars still waiting for authorization count as nothing.
    """
    ev_new = site.evses.get(key)
    if ev_new is None:
        return []
    commanded: dict[str, float] = {}
    for k, ev in site.evses.items():
        s = ev.session
        if k == key:
            commanded[k] = ev.max_current_a
        elif ev.pinned:
            carried = not ev.online or (s is not None and s.authorized)
            commanded[k] = ev.pinned_load_a() if carried else 0.0
        elif s is not None and s.authorized:
            commanded[k] = max(ev.min_current_a, s.ev_min_current_a or 0.0)
        else:
            commanded[k] = 0.0
    return check_commanded(site, commanded)
