"""Site load allocation: per-EVSE current limits that respect every limit of the site.

Pure code (no I/O, no clock, no asyncio). The CSMS load manager calls
:func:`allocate` on every event and sends the result to the stations as
charging profiles in A; :func:`violations` is its last guard and the oracle
of the tests; :class:`SetpointShaper` smooths increases between allocations.

Model
-----
The site is a tree of :class:`Node` (root, circuits, stations). Every node
may carry a per-phase fuse (``max_current_a``, checked on L1, L2 and L3
separately) and an import limit on its total active power (``max_power_w``).
The load of a node on phase ``p`` is the uncontrolled ``base_current_a[p]``
of the node and of all its descendants plus the limits of all EVSEs below it
that use phase ``p``; its power is ``voltage * (L1 + L2 + L3)``. A limit is
what an EVSE may draw, so the limits themselves must fit.

Internally everything is counted in whole steps (``step_a``), so every
constraint is ``sum(weight * steps) <= capacity`` with integer weights (1 for a
phase of a fuse, the number of phases for a power limit) and integer
capacities (rounded down). The allocation then runs in stages:

1. Admission: in order of importance every EVSE is given its minimum current
   if it still fits next to the EVSEs admitted before it; the others are
   paused. Importance: boosted first, then (PRIORITY) the higher class or
   (DEADLINE) the smaller laxity, then the earlier arrival (unknown arrival
   last), then the key. So a paused EVSE is one whose minimum does not fit
   next to the more important ones; the least important go first and an
   EVSE in a circuit with room to spare is never paused for another circuit.
2. Boost: boosted EVSEs are water-filled up from their minimum.
3. Policy: EQUAL water-fills everyone else; PRIORITY water-fills class by
   class (descending), each with what the classes above left over; DEADLINE
   raises every EV with a finite laxity, least laxity first, to the current it
   needs to finish in time (as far as capacity allows), then water-fills all
   admitted EVSEs with the already granted currents as floors (top-up).

Water-filling is max-min fair (progressive filling): all EVSEs of the stage
rise together, each stops at its own maximum or when a constraint it takes
part in is full, the others continue. It is computed exactly on real numbers
(an event-driven sweep over the common level with a heap of the levels at
which constraints fill up), rounded down to whole steps, and the remainder
is handed out one step at a time, lowest current first (ties: importance,
key), as long as it fits. After every stage each EVSE of the stage is at its
maximum or cannot take one more step, so no capacity is left on the table.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = [
    "Allocation",
    "Demand",
    "Node",
    "Policy",
    "SetpointShaper",
    "ShaperConfig",
    "SiteConfig",
    "TOLERANCE_A",
    "TOLERANCE_W",
    "allocate",
    "deliverable_wh",
    "violations",
]

TOLERANCE_A = 1e-6
"""Currents may exceed a limit by this much before :func:`violations` reports it."""
TOLERANCE_W = 1e-3
"""Powers may exceed a limit by this much before :func:`violations` reports it."""

_UNIT_EPS_A = 1e-6  # float noise absorbed when converting amps to whole steps (1 µA)
_FILL_EPS = 1e-7  # when rounding the real water level down to whole steps


class Policy(StrEnum):
    EQUAL = "equal"
    PRIORITY = "priority"
    DEADLINE = "deadline"
    OPTIMAL = "optimal"
    """The site scheduler (``evflex.scheduling``) sets each session's cap; the
    allocation then works as ``deadline`` within those caps."""


#: Single-phase charging is held to this current by default (B8: 3.7 kW / 16 A).
SINGLE_PHASE_MAX_A = 16.0


@dataclass(frozen=True, slots=True)
class Node:
    """The site root, a circuit or a station."""

    id: str
    parent: str | None
    max_current_a: float | None = None
    max_power_w: float | None = None
    base_current_a: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class Demand:
    """One EVSE with a session that wants power."""

    key: str
    node: str
    phases: tuple[int, ...] = (1, 2, 3)
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    priority: int = 0
    boost: bool = False
    arrived: datetime | None = None
    departure: datetime | None = None
    energy_needed_wh: float | None = None


@dataclass(frozen=True, slots=True)
class SiteConfig:
    nodes: tuple[Node, ...]
    voltage: float = 230.0
    step_a: float = 1.0
    single_phase_max_a: float = SINGLE_PHASE_MAX_A


@dataclass(frozen=True, slots=True)
class Allocation:
    limits_a: dict[str, float]
    """Key -> per-phase amps, for every demand (in input order); 0 means pause."""
    paused: tuple[str, ...]
    """Keys whose limit is 0 (not enough room for their minimum), sorted."""
    headroom_w: float
    """Root power left unused (>= 0); ``math.inf`` when the root has no limit."""


def deliverable_wh(limit_a: float, phases: int, voltage: float, hours: float) -> float:
    """Energy an EVSE delivers at ``limit_a`` per phase on ``phases`` phases in ``hours``."""
    return limit_a * phases * voltage * hours


# --------------------------------------------------------------------------- site tree


@dataclass(slots=True)
class _Tree:
    nodes: dict[str, Node]
    root: str
    chain: dict[str, tuple[str, ...]]  # node -> (node, parent, ..., root)
    base: dict[str, tuple[float, float, float]]  # node -> base load of its subtree


def _build_tree(site: SiteConfig) -> _Tree:
    if not site.voltage > 0:
        raise ValueError("voltage must be > 0")
    if not site.step_a > 0:
        raise ValueError("step_a must be > 0")
    nodes: dict[str, Node] = {}
    for node in site.nodes:
        if node.id in nodes:
            raise ValueError(f"duplicate node id {node.id!r}")
        if len(node.base_current_a) != 3:
            raise ValueError(f"node {node.id!r}: base_current_a needs 3 phases")
        nodes[node.id] = node
    roots = [n.id for n in site.nodes if n.parent is None]
    if len(roots) != 1:
        raise ValueError(f"the site needs exactly one root node, found {len(roots)}")
    chain: dict[str, tuple[str, ...]] = {}
    for node in site.nodes:
        path: list[str] = []
        seen: set[str] = set()
        cur: str | None = node.id
        while cur is not None and cur not in chain:
            if cur in seen:
                raise ValueError(f"cycle in the node tree at {cur!r}")
            seen.add(cur)
            path.append(cur)
            parent = nodes[cur].parent
            if parent is not None and parent not in nodes:
                raise ValueError(f"node {cur!r}: unknown parent {parent!r}")
            cur = parent
        tail = chain[cur] if cur is not None else ()
        for i in range(len(path) - 1, -1, -1):
            tail = (path[i], *tail)
            chain[path[i]] = tail
    sums = {nid: [0.0, 0.0, 0.0] for nid in nodes}
    for node in site.nodes:
        b0, b1, b2 = node.base_current_a
        for anc in chain[node.id]:
            acc = sums[anc]
            acc[0] += b0
            acc[1] += b1
            acc[2] += b2
    base = {nid: (s[0], s[1], s[2]) for nid, s in sums.items()}
    return _Tree(nodes, roots[0], chain, base)


def _check_phases(d: Demand) -> None:
    if (
        not d.phases
        or len(set(d.phases)) != len(d.phases)
        or any(p not in (1, 2, 3) for p in d.phases)
    ):
        raise ValueError(f"demand {d.key!r}: phases must be distinct values out of 1, 2, 3")


def _max_current(d: Demand, site: SiteConfig) -> float:
    """The highest limit the EVSE may get, before rounding to steps."""
    if len(d.phases) == 1:
        return min(d.max_current_a, site.single_phase_max_a)
    return d.max_current_a


# --------------------------------------------------------------------------- allocation


@dataclass(slots=True)
class _Problem:
    """Demands (sorted by key) and constraints in whole steps."""

    demands: list[Demand]
    lo: list[int]  # minimum in steps
    hi: list[int]  # maximum in steps
    nph: list[int]
    cons: list[list[tuple[int, int]]]  # demand -> [(constraint, weight)]
    blocked: list[bool]  # an ancestor's base load alone breaks its limit
    cap: list[int]  # constraint -> capacity left by the base load, in steps


def _build_problem(site: SiteConfig, tree: _Tree, demands: Sequence[Demand]) -> _Problem:
    step = site.step_a
    volt = site.voltage
    cap: list[int] = []
    node_cons: dict[str, list[tuple[int, int]]] = {}  # node -> [(constraint, phase or 0)]
    blocked_nodes: set[str] = set()
    for node in tree.nodes.values():
        entries: list[tuple[int, int]] = []
        sub = tree.base[node.id]
        if node.max_current_a is not None:
            for p in range(3):
                room = node.max_current_a - sub[p]
                if room < -TOLERANCE_A:
                    blocked_nodes.add(node.id)
                entries.append((len(cap), p + 1))
                cap.append(math.floor((room + _UNIT_EPS_A) / step))
        if node.max_power_w is not None:
            room = node.max_power_w / volt - (sub[0] + sub[1] + sub[2])
            if room * volt < -TOLERANCE_W:
                blocked_nodes.add(node.id)
            entries.append((len(cap), 0))
            cap.append(math.floor((room + _UNIT_EPS_A) / step))
        if entries:
            node_cons[node.id] = entries

    seen: set[str] = set()
    for d in demands:
        if d.key in seen:
            raise ValueError(f"duplicate demand key {d.key!r}")
        seen.add(d.key)
        if d.node not in tree.nodes:
            raise ValueError(f"demand {d.key!r}: unknown node {d.node!r}")
        _check_phases(d)
        for name in ("max_current_a", "min_current_a"):
            if not math.isfinite(getattr(d, name)):
                raise ValueError(f"demand {d.key!r}: {name} must be finite")

    ordered = sorted(demands, key=lambda d: d.key)
    lo: list[int] = []
    hi: list[int] = []
    nph: list[int] = []
    cons: list[list[tuple[int, int]]] = []
    blocked: list[bool] = []
    for d in ordered:
        n = len(d.phases)
        nph.append(n)
        lo.append(max(0, math.ceil((d.min_current_a - _UNIT_EPS_A) / step)))
        hi.append(math.floor((_max_current(d, site) + _UNIT_EPS_A) / step))
        chain = tree.chain[d.node]
        blocked.append(any(nid in blocked_nodes for nid in chain))
        mine: list[tuple[int, int]] = []
        for nid in chain:
            for c, phase in node_cons.get(nid, ()):
                if phase == 0:
                    mine.append((c, n))
                elif phase in d.phases:
                    mine.append((c, 1))
        cons.append(mine)
    return _Problem(ordered, lo, hi, nph, cons, blocked, cap)


def _laxity_s(d: Demand, max_a: float, nph: int, volt: float, now: datetime) -> float:
    """Seconds the EV can still wait: time left minus time needed at full power."""
    if d.departure is None or d.energy_needed_wh is None:
        return math.inf
    left = (d.departure - now).total_seconds()
    power = max_a * nph * volt
    if d.energy_needed_wh <= 0:
        return left
    if power <= 0:
        return math.inf
    return left - d.energy_needed_wh * 3600.0 / power


def _fits(cons: list[tuple[int, int]], slack: list[int], steps: int) -> bool:
    for c, a in cons:
        if slack[c] < a * steps:
            return False
    return True


def _take(cons: list[tuple[int, int]], slack: list[int], steps: int) -> None:
    for c, a in cons:
        slack[c] -= a * steps


def _fill(
    members: Sequence[int],
    x: list[int],
    hi: list[int],
    slack: list[int],
    cons: list[list[tuple[int, int]]],
    rank: list[int],
) -> None:
    """Max-min fair water-filling of ``members`` from their current ``x`` up to ``hi``.

    Everybody else keeps their value. ``x`` and ``slack`` are updated in place.
    """
    rising = [d for d in members if x[d] < hi[d]]
    if not rising:
        return
    old = {d: x[d] for d in rising}
    if not _sweep(rising, x, hi, slack, cons):
        for d, v in old.items():  # float trouble (should not happen): exact steps only
            _take(cons[d], slack, v - x[d])
            x[d] = v
    # hand out what rounding down left, one step at a time, lowest first
    heap = [(x[d], rank[d], d) for d in rising if x[d] < hi[d]]
    heapq.heapify(heap)
    while heap:
        v, r, d = heapq.heappop(heap)
        mine = cons[d]
        if _fits(mine, slack, 1):
            _take(mine, slack, 1)
            x[d] = v + 1
            if v + 1 < hi[d]:
                heapq.heappush(heap, (v + 1, r, d))


def _sweep(
    rising: list[int],
    x: list[int],
    hi: list[int],
    slack: list[int],
    cons: list[list[tuple[int, int]]],
) -> bool:
    """Real-valued progressive filling, rounded down into ``x``; False if it did not fit."""
    members_of: dict[int, list[int]] = {}
    events: list[tuple[int, int, int]] = []
    for d in rising:
        for c, _a in cons[d]:
            lst = members_of.get(c)
            if lst is None:
                members_of[c] = [d]
            else:
                lst.append(d)
        events.append((x[d], 0, d))  # starts rising when the level reaches its floor
        events.append((hi[d], 1, d))  # stops at its maximum
    events.sort()
    rate: dict[int, int] = dict.fromkeys(members_of, 0)
    room: dict[int, float] = {c: float(slack[c]) for c in members_of}  # slack at `since`
    since: dict[int, float] = dict.fromkeys(members_of, 0.0)
    version: dict[int, int] = dict.fromkeys(members_of, 0)
    heap: list[tuple[float, int, int]] = []  # (level at which c is full, version, c)
    state: dict[int, int] = dict.fromkeys(rising, 0)  # 0 waiting, 1 rising, 2 done
    level_of: dict[int, float] = {}
    dirty: set[int] = set()  # constraints whose rate changed since the last flush
    push = heapq.heappush
    pop = heapq.heappop

    def change(d: int, level: float, sign: int) -> None:
        for c, a in cons[d]:
            r = rate[c]
            if r:
                room[c] -= r * (level - since[c])
            since[c] = level
            rate[c] = r + sign * a
            dirty.add(c)

    def flush(level: float) -> None:
        for c in dirty:
            version[c] += 1
            r = rate[c]
            if r > 0:
                push(heap, (level + room[c] / r, version[c], c))
        dirty.clear()

    level = 0.0
    ei = 0
    n_events = len(events)
    inf = math.inf
    while True:
        while heap and heap[0][1] != version[heap[0][2]]:
            pop(heap)
        t_full = heap[0][0] if heap else inf
        t_event = events[ei][0] if ei < n_events else inf
        if t_full == inf and t_event == inf:
            break
        if t_full <= t_event:
            c = pop(heap)[2]
            version[c] += 1
            if t_full > level:
                level = t_full
            for d in members_of[c]:
                st = state[d]
                if st == 2:
                    continue
                state[d] = 2
                if st == 1:
                    level_of[d] = level
                    change(d, level, -1)
                else:
                    level_of[d] = x[d]
        else:
            level = t_event
            while ei < n_events and events[ei][0] == t_event:  # all events at this level
                _lvl, kind, d = events[ei]
                ei += 1
                if state[d] == 2:
                    continue
                if kind == 0:
                    state[d] = 1
                    change(d, level, 1)
                else:
                    state[d] = 2
                    level_of[d] = hi[d]
                    change(d, level, -1)
        flush(level)

    touched: set[int] = set()
    for d in rising:
        new = min(hi[d], max(x[d], math.floor(level_of[d] + _FILL_EPS)))
        if new != x[d]:
            _take(cons[d], slack, new - x[d])
            touched.update(c for c, _a in cons[d])
            x[d] = new
    return all(slack[c] >= 0 for c in touched)


def allocate(
    site: SiteConfig,
    demands: Sequence[Demand],
    policy: Policy = Policy.EQUAL,
    now: datetime | None = None,
) -> Allocation:
    """Per-phase current limits for ``demands`` that keep every limit of ``site``.

    ``now`` is required for :attr:`Policy.DEADLINE`. Raises ``ValueError`` for
    an invalid tree or demand (unknown node, duplicate key, bad phases); a base
    load that alone breaks a limit is not an error: every EVSE below that node
    gets 0.
    """
    policy = Policy(policy)
    if policy is Policy.OPTIMAL:
        policy = Policy.DEADLINE
    if policy is Policy.DEADLINE and now is None:
        raise ValueError("Policy.DEADLINE needs `now`")
    tree = _build_tree(site)
    prob = _build_problem(site, tree, demands)
    step = site.step_a
    volt = site.voltage
    n = len(prob.demands)
    lo, hi, cons = prob.lo, prob.hi, prob.cons

    laxity = [math.inf] * n
    if policy is Policy.DEADLINE:
        assert now is not None
        for i, d in enumerate(prob.demands):
            laxity[i] = _laxity_s(d, hi[i] * step, prob.nph[i], volt, now)

    def importance(i: int) -> tuple[object, ...]:
        d = prob.demands[i]
        if policy is Policy.PRIORITY:
            cls: float = -d.priority
        elif policy is Policy.DEADLINE:
            cls = laxity[i]
        else:
            cls = 0
        arrived = (0, d.arrived) if d.arrived is not None else (1, None)
        return (not d.boost, cls, arrived, i)

    order = sorted(range(n), key=importance)
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r

    # 1. admission of the minimums, most important first
    slack = list(prob.cap)
    x = [0] * n
    admitted: list[int] = []
    for i in order:
        if prob.blocked[i] or lo[i] > hi[i]:
            continue
        if _fits(cons[i], slack, lo[i]):
            _take(cons[i], slack, lo[i])
            x[i] = lo[i]
            admitted.append(i)

    # 2. boost, 3. policy
    boosted = [i for i in admitted if prob.demands[i].boost]
    rest = [i for i in admitted if not prob.demands[i].boost]
    _fill(boosted, x, hi, slack, cons, rank)
    if policy is Policy.EQUAL:
        _fill(rest, x, hi, slack, cons, rank)
    elif policy is Policy.PRIORITY:
        classes: dict[int, list[int]] = {}
        for i in rest:
            classes.setdefault(prob.demands[i].priority, []).append(i)
        for prio in sorted(classes, reverse=True):
            _fill(classes[prio], x, hi, slack, cons, rank)
    else:
        assert now is not None
        for i in rest:  # `rest` is in order of increasing laxity
            if laxity[i] == math.inf:
                continue
            need = _need_steps(prob.demands[i], prob.nph[i], step, volt, now, lo[i], hi[i])
            grant = need - x[i]
            for c, a in cons[i]:
                grant = min(grant, slack[c] // a)
            if grant > 0:
                _take(cons[i], slack, grant)
                x[i] += grant
        _fill(admitted, x, hi, slack, cons, rank)

    by_key = {d.key: _amps(x[i], step) for i, d in enumerate(prob.demands)}
    limits = {d.key: by_key[d.key] for d in demands}
    paused = tuple(d.key for i, d in enumerate(prob.demands) if x[i] == 0)
    return Allocation(limits, paused, _headroom(site, tree, prob.demands, by_key))


def _need_steps(
    d: Demand, nph: int, step: float, volt: float, now: datetime, lo: int, hi: int
) -> int:
    """Steps needed to deliver the remaining energy by the departure, within [lo, hi]."""
    assert d.departure is not None and d.energy_needed_wh is not None
    hours = (d.departure - now).total_seconds() / 3600.0
    if d.energy_needed_wh <= 0:
        return lo
    if hours <= 0:
        return hi
    amps = d.energy_needed_wh / (hours * nph * volt)
    return min(hi, max(lo, math.ceil((amps - _UNIT_EPS_A) / step)))


def _amps(steps: int, step: float) -> float:
    return round(steps * step, 9) if steps else 0.0


def _headroom(
    site: SiteConfig, tree: _Tree, demands: Sequence[Demand], limits: Mapping[str, float]
) -> float:
    root = tree.nodes[tree.root]
    load = list(tree.base[tree.root])
    for d in demands:
        for p in d.phases:
            load[p - 1] += limits[d.key]
    candidates = []
    if root.max_power_w is not None:
        candidates.append(root.max_power_w - site.voltage * sum(load))
    if root.max_current_a is not None:
        candidates.append(site.voltage * sum(max(0.0, root.max_current_a - v) for v in load))
    if not candidates:
        return math.inf
    return max(0.0, min(candidates))


# --------------------------------------------------------------------------- checking


def violations(
    site: SiteConfig, demands: Sequence[Demand], limits_a: Mapping[str, float]
) -> list[str]:
    """Every rule that ``limits_a`` breaks, human-readable; empty means OK.

    Checked: each demand has a limit; a limit is 0 or in [min, max] (max also
    capped by ``single_phase_max_a`` for a single-phase EVSE) and a multiple
    of ``step_a``; per node and phase, base load plus the limits below it stay
    within ``max_current_a``; per node the power stays within ``max_power_w``.
    A node limit broken by its base load alone is reported only if an EVSE
    below it adds to that phase (or, for power, draws at all): the limits are
    then not to blame and 0 is all they can do. Limits of keys without a
    demand are ignored. Tolerances: :data:`TOLERANCE_A`, :data:`TOLERANCE_W`.
    Raises ``ValueError`` only for an invalid tree.
    """
    tree = _build_tree(site)
    step = site.step_a
    out: list[str] = []
    ctrl = {nid: [0.0, 0.0, 0.0] for nid in tree.nodes}
    for d in demands:
        if d.key not in limits_a:
            out.append(f"{d.key}: no limit")
            continue
        lim = float(limits_a[d.key])
        if d.node not in tree.nodes:
            out.append(f"{d.key}: unknown node {d.node!r}")
            continue
        try:
            _check_phases(d)
        except ValueError as exc:
            out.append(str(exc))
            continue
        if math.isnan(lim) or lim < -TOLERANCE_A:
            out.append(f"{d.key}: limit {lim} A is not a current")
            continue
        if abs(lim) > TOLERANCE_A:
            if lim < d.min_current_a - TOLERANCE_A:
                out.append(f"{d.key}: limit {lim} A below min {d.min_current_a} A (and not 0)")
            if lim > d.max_current_a + TOLERANCE_A:
                out.append(f"{d.key}: limit {lim} A above max {d.max_current_a} A")
            if len(d.phases) == 1 and lim > site.single_phase_max_a + TOLERANCE_A:
                out.append(
                    f"{d.key}: limit {lim} A above the single-phase max {site.single_phase_max_a} A"
                )
            units = lim / step
            if abs(units - round(units)) * step > TOLERANCE_A:
                out.append(f"{d.key}: limit {lim} A is not a multiple of {step} A")
            for nid in tree.chain[d.node]:
                acc = ctrl[nid]
                for p in d.phases:
                    acc[p - 1] += lim
    for nid, node in tree.nodes.items():
        mine = ctrl[nid]
        base = tree.base[nid]
        if node.max_current_a is not None:
            for p in range(3):
                load = base[p] + mine[p]
                if mine[p] > TOLERANCE_A and load > node.max_current_a + TOLERANCE_A:
                    out.append(
                        f"node {nid}: L{p + 1} load {load:.6g} A > max {node.max_current_a} A"
                    )
        if node.max_power_w is not None and sum(mine) > TOLERANCE_A:
            power = site.voltage * (sum(base) + sum(mine))
            if power > node.max_power_w + TOLERANCE_W:
                out.append(f"node {nid}: power {power:.6g} W > max {node.max_power_w} W")
    return out


# --------------------------------------------------------------------------- setpoint shaper


@dataclass
class ShaperConfig:
    ramp_a_per_s: float | None = None
    """Max increase rate of a limit (A/s); None = no ramp. Decreases are immediate."""
    random_delay_s: float = 0.0
    """An increase starts after a uniform random 0..random_delay_s delay."""
    seed: int | None = None
    step_a: float = 1.0
    """Commanded values are rounded down to multiples of this."""
    min_current_a: float = 6.0
    """Leaving 0 (or anything below this) jumps straight to this value."""


@dataclass(slots=True)
class _Setpoint:
    commanded: float = 0.0
    changed_at: float | None = None  # when `commanded` last changed
    release_at: float | None = None  # an increase is pending and may start at this time


class SetpointShaper:
    """Delays and ramps increases of EVSE limits; decreases pass immediately.

    Stateful but pure: the caller passes the time (monotonic seconds). For each
    key, :meth:`shape` returns what may be commanded now, never above the
    target (rounded down to ``step_a``):

    * target below the commanded value: the target, at once;
    * target above it: an increase episode starts, with a random delay drawn
      once per episode (a target that rises further meanwhile keeps it); once
      the delay is over the value rises by at most ``ramp_a_per_s`` times the
      time since the later of the last commanded change and the end of the
      delay, so calling again at :meth:`next_change_at` gives an exact ramp;
    * from 0 (or anything below the minimum) the first allowed increase
      jumps to the minimum (``min_current_a``, or the per-key ``mins``), capped
      at the target, because an EVSE cannot be told 0 < limit < min;
    * an unknown key starts at 0, so its first increase is delayed and ramped.
    """

    def __init__(self, cfg: ShaperConfig) -> None:
        if cfg.ramp_a_per_s is not None and not cfg.ramp_a_per_s > 0:
            raise ValueError("ramp_a_per_s must be > 0 or None")
        if not cfg.random_delay_s >= 0:
            raise ValueError("random_delay_s must be >= 0")
        if not cfg.step_a > 0:
            raise ValueError("step_a must be > 0")
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)
        self._points: dict[str, _Setpoint] = {}
        self._active: set[str] = set()
        self._now: float | None = None

    def _down(self, value: float) -> float:
        step = self.cfg.step_a
        return round(math.floor((value + _UNIT_EPS_A) / step) * step, 9)

    def _up(self, value: float) -> float:
        step = self.cfg.step_a
        return round(math.ceil((value - _UNIT_EPS_A) / step) * step, 9)

    def shape(
        self, targets: Mapping[str, float], now: float, mins: Mapping[str, float] | None = None
    ) -> dict[str, float]:
        """What may be commanded at ``now`` for each key of ``targets``."""
        cfg = self.cfg
        out: dict[str, float] = {}
        for key in sorted(targets):
            sp = self._points.get(key)
            if sp is None:
                sp = self._points[key] = _Setpoint()
            goal = max(0.0, self._down(float(targets[key])))
            if goal < sp.commanded - TOLERANCE_A:
                sp.commanded = goal
                sp.changed_at = now
                sp.release_at = None
            elif goal <= sp.commanded + TOLERANCE_A:
                sp.release_at = None
            else:
                if sp.release_at is None:
                    delay = (
                        self._rng.uniform(0.0, cfg.random_delay_s) if cfg.random_delay_s else 0.0
                    )
                    sp.release_at = now + delay
                if now >= sp.release_at:
                    floor_a = mins.get(key, cfg.min_current_a) if mins else cfg.min_current_a
                    value = self._raise(sp, goal, now, self._up(floor_a))
                    if value != sp.commanded:
                        sp.commanded = value
                        sp.changed_at = now
                    if value >= goal - TOLERANCE_A:
                        sp.release_at = None
            out[key] = sp.commanded
        self._active = set(targets)
        self._now = now
        return out

    def _raise(self, sp: _Setpoint, goal: float, now: float, floor_a: float) -> float:
        ramp = self.cfg.ramp_a_per_s
        assert sp.release_at is not None
        if ramp is None:
            value = goal
        else:
            start = sp.release_at if sp.changed_at is None else max(sp.changed_at, sp.release_at)
            value = min(goal, self._down(sp.commanded + ramp * max(0.0, now - start)))
        if sp.commanded < floor_a - TOLERANCE_A:
            value = min(goal, max(value, floor_a))
        return max(value, sp.commanded)

    def next_change_at(self) -> float | None:
        """When :meth:`shape` (with the same targets) would next give a different answer."""
        ramp = self.cfg.ramp_a_per_s
        best: float | None = None
        for key in self._active:
            sp = self._points.get(key)
            if sp is None or sp.release_at is None:
                continue
            if self._now is None or self._now < sp.release_at or ramp is None:
                when = sp.release_at
            else:
                start = (
                    sp.release_at if sp.changed_at is None else max(sp.changed_at, sp.release_at)
                )
                when = start + self.cfg.step_a / ramp
            if best is None or when < best:
                best = when
        return best

    def forget(self, key: str) -> None:
        """Drop all state of ``key`` (session ended)."""
        self._points.pop(key, None)
        self._active.discard(key)
