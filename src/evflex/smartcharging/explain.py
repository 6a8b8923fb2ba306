"""Why each EVSE of a site gets what the load manager gave it: the circuit view's core.

Computed on demand from a plan and the :class:`~evflex.smartcharging.planner.SiteModel`
it was made from, never while allocating: the allocation leaves every EVSE with a
session either at its own maximum or under a limit that cannot take one more step
(``step_a``) for it, so that limit can be found again afterwards.

For every EVSE, :func:`explain` gives a :class:`Why`: a reason code, a readable text
and whether the EVSE is *held back* (it gets less than the EVSE and its car could
take). The codes:

* ``site_limit``, ``circuit_limit``, ``station_limit``: a node of the tree is full on
  a phase the EVSE uses (or its power limit is reached); ``node`` names it. With
  ``priority_of_others`` the node is full and sessions in priority charging (or in
  their first seconds) under it were served first.
* ``ev_max``, ``evse_max``, ``single_phase_max``: it gets all the car, the EVSE or a
  single phase can take (not held back).
* ``ev_finished``: the car stopped drawing or its energy target is reached; it is
  kept at its minimum (not held back).
* ``external_limit``: a limit set at the station (an energy manager, the grid operator).
* ``schedule``: the site's plan ahead (policy ``optimal``) gives it this much now.
* ``v2x``: it follows the power setpoints of the site's plan (charging or discharging).
* ``policy``: under its maximum without a full limit (rounding of the site's policy).
* ``offline``, ``not_steerable``, ``profile_not_accepted``: the CSMS cannot steer it
  now; it is counted at the most it may draw (not held back: nothing holds it).
* ``waiting_authorization``: a car is plugged in and waits for its authorization.
* ``idle``: no session; the value is what the next car may start with.

Pure code: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from evflex.smartcharging.allocation import TOLERANCE_A, Node
from evflex.smartcharging.planner import SITE_NODE, EvseModel, Plan, SiteModel

__all__ = ["Phases", "Why", "allocated_a", "explain", "node_label", "subtree_sums"]

Phases = tuple[float, float, float]
"""Amps on grid phases L1, L2, L3."""

#: Reasons of the EVSE's own maximum that hold it back (the others are the car's or the EVSE's).
_HOLDING_CAPS = frozenset({"external_limit", "schedule"})


@dataclass(frozen=True, slots=True)
class Why:
    code: str
    text: str
    held_back: bool
    node: str | None = None
    """The planner's id of the node whose limit binds (``site``, ``c:<id>``, ``s:<id>``)."""


def node_label(site: SiteModel, node_id: str) -> str:
    """``site <id>``, ``circuit <id>`` or ``station <id>``."""
    if node_id == SITE_NODE:
        return f"site {site.id}"
    kind, _, ident = node_id.partition(":")
    return f"{'circuit' if kind == 'c' else 'station'} {ident}"


def _on_phases(ev: EvseModel, amps: float) -> Phases:
    return (
        amps if 1 in ev.phases else 0.0,
        amps if 2 in ev.phases else 0.0,
        amps if 3 in ev.phases else 0.0,
    )


def allocated_a(site: SiteModel, plan: Plan) -> dict[str, Phases]:
    """Per EVSE that may draw now (a session, or one the CSMS cannot steer): its limit on
    each grid phase. Idle EVSEs are left out: their limit is a reservation for the next car."""
    out: dict[str, Phases] = {}
    for key, ev in site.evses.items():
        if key in plan.pinned:
            out[key] = _on_phases(ev, plan.pinned[key])
        elif key in plan.active:
            out[key] = _on_phases(ev, plan.targets.get(key, 0.0))
    return out


def subtree_sums(site: SiteModel, per_evse: Mapping[str, Phases]) -> dict[str, list[float]]:
    """Per node of the tree: its own and its descendants' base load plus ``per_evse`` of the
    EVSEs below it, per grid phase."""
    parent = {n.id: n.parent for n in site.nodes}
    out = {n.id: [0.0, 0.0, 0.0] for n in site.nodes}

    def add(start: str | None, amps: Phases) -> None:
        nid = start
        while nid is not None and nid in out:
            acc = out[nid]
            for p in range(3):
                acc[p] += amps[p]
            nid = parent[nid]

    for n in site.nodes:
        add(n.id, n.base_current_a)
    for key, amps in per_evse.items():
        add(site.node_of.get(key), amps)
    return out


@dataclass(slots=True)
class _Ctx:
    """What explaining one plan needs, with each station node's chain to the root."""

    site: SiteModel
    plan: Plan
    caps: Mapping[str, float] | None
    loads: dict[str, list[float]]
    step: float
    nodes: dict[str, Node]
    chains: dict[str, list[Node]]

    def chain(self, key: str) -> list[Node]:
        """The nodes from the EVSE's station up to the root."""
        start = self.site.node_of.get(key, "")
        found = self.chains.get(start)
        if found is None:
            found = []
            nid: str | None = start
            while nid is not None and nid in self.nodes:
                found.append(self.nodes[nid])
                nid = self.nodes[nid].parent
            self.chains[start] = found
        return found


def _room(node: Node, load: list[float], ev: EvseModel, voltage: float) -> tuple[float, str]:
    """Amps per phase the EVSE could still add under ``node``, and how that limit reads."""
    best, text = math.inf, ""
    if node.max_current_a is not None:
        for p in ev.phases:
            room = node.max_current_a - load[p - 1]
            if room < best:
                best, text = room, f"{node.max_current_a:g} A per phase, full on L{p}"
    if node.max_power_w is not None:
        room = (node.max_power_w / voltage - sum(load)) / len(ev.phases)
        if room < best:
            kw = voltage * sum(load) / 1000
            best, text = room, f"{node.max_power_w / 1000:g} kW, {kw:.1f} kW in use"
    return best, text


def _own_caps(
    site: SiteModel, ev: EvseModel, plan: Plan, caps: Mapping[str, float] | None
) -> list[tuple[str, float, str]]:
    """The maximums the planner gave the session (as ``planner._demand`` does), the one that
    explains a tie first."""
    s = ev.session
    assert s is not None
    min_a = max(ev.min_current_a, s.ev_min_current_a or 0.0)
    out: list[tuple[str, float, str]] = []
    need = s.energy_needed_wh
    if s.finished or (need is not None and need <= 0):
        why = "the car stopped drawing" if s.finished else "its energy target is reached"
        out.append(("ev_finished", min_a, f"{why}: kept at its minimum {min_a:g} A"))
    if caps is not None:
        planned = caps.get(ev.key, 0.0)
        if ev.key in plan.boosted and not s.priority:  # in its first seconds: the minimum
            planned = max(planned, min_a)
        out.append(("schedule", planned, f"the site's plan ahead gives it {planned:g} A now"))
    if ev.external_limit_a is not None:
        out.append(
            (
                "external_limit",
                ev.external_limit_a,
                f"limit set at the station: {ev.external_limit_a:g} A",
            )
        )
    if s.ev_max_current_a is not None:
        out.append(("ev_max", s.ev_max_current_a, f"the EV's own maximum {s.ev_max_current_a:g} A"))
    if len(ev.phases) == 1:
        out.append(
            (
                "single_phase_max",
                site.single_phase_max_a,
                f"single-phase maximum {site.single_phase_max_a:g} A",
            )
        )
    out.append(("evse_max", ev.max_current_a, f"the EVSE's maximum {ev.max_current_a:g} A"))
    return out


def _pinned_why(ev: EvseModel, amps: float) -> Why:
    if not ev.online:
        return Why("offline", f"station offline: counted at {amps:g} A", False)
    if ev.refuses_profiles:
        return Why(
            "not_steerable",
            f"the station does not take charging limits: counted at {amps:g} A",
            False,
        )
    return Why(
        "profile_not_accepted",
        f"its last charging limit was not accepted: counted at {amps:g} A",
        False,
    )


def explain(
    site: SiteModel,
    plan: Plan,
    caps: Mapping[str, float] | None = None,
    setpoints: Collection[str] = (),
) -> dict[str, Why]:
    """Why every EVSE of ``site`` got its value in ``plan`` (evse key -> :class:`Why`).

    ``caps`` are the scheduler's caps the plan was made with (policy ``optimal``),
    ``setpoints`` the keys that follow the scheduler's power setpoints (V2X).
    """
    ctx = _Ctx(
        site,
        plan,
        caps,
        subtree_sums(site, allocated_a(site, plan)),
        site.config().step_a,
        {n.id: n for n in site.nodes},
        {},
    )
    out: dict[str, Why] = {}
    for key, ev in site.evses.items():
        s = ev.session
        if key in plan.pinned:
            out[key] = _pinned_why(ev, plan.pinned[key])
        elif s is None:
            amps = plan.targets.get(key, 0.0)
            out[key] = Why("idle", f"no session: the next car may start at {amps:g} A", False)
        elif not s.authorized:
            out[key] = Why("waiting_authorization", "a car waits for its authorization", False)
        else:
            out[key] = _session_why(ctx, key, ev)
            if key in setpoints and out[key].node is None:
                out[key] = Why("v2x", "V2X: follows the power setpoints of the site's plan", True)
    return out


def _session_why(ctx: _Ctx, key: str, ev: EvseModel) -> Why:
    assert ev.session is not None
    site, plan, step = ctx.site, ctx.plan, ctx.step
    amps = plan.targets.get(key, 0.0)
    own = _own_caps(site, ev, plan, ctx.caps)
    code, cap, text = min(own, key=lambda c: c[1])  # the first of equal ones
    hi = math.floor((max(0.0, cap) + TOLERANCE_A) / step) * step
    min_a = max(ev.min_current_a, ev.session.ev_min_current_a or 0.0)
    if amps > 0 and amps >= hi - TOLERANCE_A:
        return Why(code, text, code in _HOLDING_CAPS)
    if amps <= 0 and hi < min_a - TOLERANCE_A:
        return Why(code, f"{text}, below its minimum {min_a:g} A: paused", True)
    need = step if amps > 0 else min_a
    found: tuple[float, Node, str] | None = None  # the fullest; of equal ones the nearest
    for node in ctx.chain(key):
        room, limit = _room(node, ctx.loads[node.id], ev, site.voltage)
        if room < need - TOLERANCE_A and (found is None or room < found[0] - TOLERANCE_A):
            found = (room, node, limit)
    if found is None:
        return Why("policy", f"shared by the site's policy ({site.policy.value})", True)
    _, node, limit = found
    label = node_label(site, node.id)
    kind = label.partition(" ")[0]
    text = f"{label} limit ({limit})"
    if amps <= 0:
        text = f"paused: its minimum {min_a:g} A does not fit under the {text}"
    first = _served_first(ctx, key, ev, node)
    if first:
        return Why(
            "priority_of_others",
            f"{text}; {first} session(s) in priority charging or just started served first",
            True,
            node.id,
        )
    return Why(f"{kind}_limit", text, True, node.id)


def _served_first(ctx: _Ctx, key: str, ev: EvseModel, node: Node) -> int:
    """Boosted sessions below ``node`` on a phase of ``ev`` with more than ``key`` has,
    while ``key`` itself is not boosted."""
    site, plan = ctx.site, ctx.plan
    if key in plan.boosted:
        return 0
    mine = plan.targets.get(key, 0.0)
    count = 0
    for other in plan.boosted:
        o = site.evses.get(other)
        if o is None or other == key or not set(o.phases) & set(ev.phases):
            continue
        if plan.targets.get(other, 0.0) > mine and node in ctx.chain(other):
            count += 1
    return count
