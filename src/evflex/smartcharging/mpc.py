"""Model-predictive control: the site scheduler inside the load manager's loop.

On every rebalance of a site whose policy is ``optimal`` (every event, every
tick, and at least at every slot boundary) the load manager turns its
:class:`~evflex.smartcharging.planner.SiteModel` into a scheduling
:class:`~evflex.scheduling.Problem` starting now, solves it, rounds the first
slot to currents a station accepts, and uses those as each session's cap in
the ordinary allocation, which keeps every limit as before. The rest of the
plan is what the dashboard and the driver see ahead.

What the model does not know is filled in plainly: a session without a
departure is assumed to stay ``default_dwell_h``; a session without an energy
need, or in priority charging, needs "full power until departure", which is
the brief's fallback. EVSEs the CSMS cannot steer count as uncontrolled load
at the most they may draw. A forecast is never stretched past its horizon:
outside it the site's defaults hold (its tariff for the price, no feed-in
price, no PV, the measured base load), and every slot of the result says which
it used. Pure code: time and settings are arguments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from evflex.scheduling import SITE, Circuit, Objective, Problem, Schedule, Vehicle, solve
from evflex.scheduling.wire import WireRules, wire_currents
from evflex.smartcharging.planner import SITE_NODE, SiteModel

log = logging.getLogger(__name__)

MAX_HORIZON_H = 72.0
PRIORITY_WEIGHT = 100.0


@dataclass(frozen=True, slots=True)
class Forecast:
    """Step series from ``start``, one value per ``slot_s``, up to :attr:`end` and no further."""

    start: datetime
    slot_s: float
    import_price: tuple[float, ...] = ()
    export_price: tuple[float, ...] = ()
    pv_w: tuple[float, ...] = ()
    base_load_w: tuple[float, ...] = ()

    @property
    def slots(self) -> int:
        return max((len(getattr(self, k)) for k in _SERIES), default=0)

    @property
    def end(self) -> datetime:
        """The end of the horizon: no value is known from here on."""
        return self.start + timedelta(seconds=self.slots * self.slot_s)

    def covers(self, t: datetime) -> bool:
        return self.start <= t < self.end

    def at(self, name: str, t: datetime) -> float | None:
        """The value of series ``name`` at ``t``; None outside the series (never extrapolated)."""
        values = getattr(self, name)
        if not values or t < self.start:
            return None
        i = int((t - self.start).total_seconds() // self.slot_s)
        return values[i] if i < len(values) else None

    def problems(self) -> list[str]:
        """What makes this forecast unusable (empty when it is fine)."""
        out = []
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            out.append("start must have a time zone")
        if not (math.isfinite(self.slot_s) and self.slot_s > 0):
            out.append("the slot length must be > 0")
        lengths = {k: len(getattr(self, k)) for k in _SERIES if getattr(self, k)}
        if not lengths:
            out.append("give at least one series")
        elif len(set(lengths.values())) > 1:
            out.append(f"series must have the same length, got {lengths}")
        for k in _SERIES:
            values = getattr(self, k)
            if not all(math.isfinite(x) for x in values):
                out.append(f"{k}: every value must be a finite number")
            elif k in _NON_NEGATIVE and any(x < 0 for x in values):
                out.append(f"{k}: values must be >= 0")
        return out

    def from_now(self, now: datetime) -> tuple[Forecast, list[str]]:
        """This forecast for use at ``now``: the slots that ended before now dropped.

        Raises ``ValueError`` when nothing of it is left (it ends at or before
        now); the list says what was dropped.
        """
        if self.end <= now:
            raise ValueError(
                f"the forecast ends at {self.end.isoformat()}, not after now ({now.isoformat()})"
            )
        gone = int((now - self.start).total_seconds() // self.slot_s) if now > self.start else 0
        if gone <= 0:
            return self, []
        start = self.start + timedelta(seconds=gone * self.slot_s)
        kept = Forecast(
            start=start,
            slot_s=self.slot_s,
            **{k: getattr(self, k)[gone:] for k in _SERIES},
        )
        return kept, [
            f"the forecast starts in the past ({self.start.isoformat()}): its first {gone} "
            f"slot(s) ended before now and were dropped; it is used from {start.isoformat()}"
        ]

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Forecast | None:
        """The stored forecast; None (the site's defaults) for one that cannot be used."""
        if not data:
            return None
        try:
            f = cls(
                start=datetime.fromisoformat(data["start"]),
                slot_s=float(data["slot_s"]),
                **{k: tuple(float(x) for x in data.get(k) or ()) for k in _SERIES},
            )
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("stored forecast ignored: %s", exc)
            return None
        if problems := f.problems():
            log.warning("stored forecast ignored: %s", "; ".join(problems))
            return None
        return f

    def to_json(self) -> dict[str, str | float | list[float]]:
        out: dict[str, str | float | list[float]] = {
            "start": self.start.isoformat(),
            "slot_s": self.slot_s,
        }
        out.update({k: list(getattr(self, k)) for k in _SERIES})
        return out


_SERIES = ("import_price", "export_price", "pv_w", "base_load_w")
_NON_NEGATIVE = ("pv_w", "base_load_w")
FORECAST, DEFAULT = "forecast", "default"


@dataclass(frozen=True, slots=True)
class MpcSettings:
    objective: Objective = Objective.COST
    slot_s: float = 900.0
    horizon_h: float = 24.0
    capacity_tariff_per_kw: float = 0.0
    default_dwell_h: float = 8.0
    export_limit_w: float | None = None
    forecast: Forecast | None = None
    peak_so_far_w: float = 0.0
    #: Per kWh outside the forecast's horizon (the site's tariff; feed-in earns nothing)
    default_import_price: float = 0.0
    #: What drivers pay per kWh charged and get per kWh discharged (the site's
    #: tariffs): with either, a V2X session is never planned at its driver's loss
    driver_import_tariff: float | None = None
    driver_export_tariff: float | None = None


@dataclass(slots=True)
class MpcResult:
    at: datetime
    problem: Problem
    schedule: Schedule  # vehicle ids are evse keys
    caps: dict[str, float]  # evse key -> A per phase for now
    #: V2X sessions: evse key -> signed W per slot (the CentralSetpoint profile ahead)
    setpoints: dict[str, list[float]] = field(default_factory=dict)
    infeasible: list[str] = field(default_factory=list)  # stated needs the site cannot meet
    stated: set[str] = field(default_factory=set)  # sessions with departure and energy
    #: per slot: FORECAST when the forecast covers it, DEFAULT when the site's defaults held
    sources: list[str] = field(default_factory=list)
    forecast_end: datetime | None = None  # where the forecast's horizon ends


def build_problem(site: SiteModel, now: datetime, cfg: MpcSettings) -> tuple[Problem, set[str]]:
    """The scheduling problem of ``site`` from ``now``; also the keys with stated needs."""
    volt = site.voltage
    root = next(n for n in site.nodes if n.id == SITE_NODE)
    # what we cannot steer: uncontrolled load and pinned EVSEs, per node and phase
    # (a node carries its own base load and everything below it)
    fixed_a: dict[str, list[float]] = {n.id: [0.0, 0.0, 0.0] for n in site.nodes}
    parent = {n.id: n.parent for n in site.nodes}

    def chain(node: str | None) -> Iterator[str]:
        while node is not None:
            yield node
            node = parent.get(node)

    for n in site.nodes:
        for up in chain(n.id):
            for p in range(3):
                fixed_a[up][p] += n.base_current_a[p]
    measured_w = sum(fixed_a[SITE_NODE]) * volt
    pinned_w = 0.0
    for key, ev in site.evses.items():
        if ev.pinned:
            amps = ev.pinned_load_a()
            pinned_w += amps * volt * len(ev.phases)
            for node in chain(site.node_of[key]):
                for p in ev.phases:
                    fixed_a[node][p - 1] += amps

    circuits = []
    for n in site.nodes:
        limit = n.max_current_a if n.max_current_a is not None else math.inf
        if n.max_power_w is not None:
            limit = min(limit, n.max_power_w / (volt * 3))
        limit = max(0.0, limit - max(fixed_a[n.id]))
        if n.id == SITE_NODE:
            continue
        circuits.append(Circuit(n.id, limit, parent=n.parent or SITE))
    site_phase_a = root.max_current_a if root.max_current_a is not None else math.inf
    site_phase_a = max(0.0, site_phase_a - max(fixed_a[SITE_NODE]))

    vehicles: list[Vehicle] = []
    stated: set[str] = set()
    latest = now + timedelta(hours=cfg.horizon_h)
    for key, ev in site.evses.items():
        s = ev.session
        if s is None or ev.pinned or s.finished:
            continue
        nph = len(ev.phases)
        cap_a = ev.max_current_a
        if s.ev_max_current_a is not None:
            cap_a = min(cap_a, s.ev_max_current_a)
        if ev.external_limit_a is not None:
            cap_a = min(cap_a, ev.external_limit_a)
        if nph == 1:
            cap_a = min(cap_a, site.single_phase_max_a)
        max_w = max(0.0, cap_a) * volt * nph
        min_slot = timedelta(seconds=cfg.slot_s)
        if s.departure is not None and s.departure > now:
            departure = max(s.departure, now + min_slot)
        else:
            departure = now + timedelta(hours=cfg.default_dwell_h)
        departure = min(departure, now + timedelta(hours=MAX_HORIZON_H))
        latest = max(latest, departure)
        dwell_h = (departure - now).total_seconds() / 3600
        need = s.energy_needed_wh
        if need is not None and s.departure is not None and not s.priority:
            stated.add(key)
        if need is None or s.priority:
            need = max_w * dwell_h  # full power until departure
        min_a = max(ev.min_current_a, s.ev_min_current_a or 0.0)
        vehicles.append(
            Vehicle(
                id=key,
                arrival=now,
                departure=departure,
                max_charge_w=max_w,
                energy_wh=need,
                min_charge_w=min_a * volt * nph,
                node=site.node_of[key],
                phases=ev.phases,
                priority=PRIORITY_WEIGHT if s.priority else 1.0,
                v2x_allowed=s.v2x and not s.priority,
                max_discharge_w=min(s.max_discharge_w, ev.max_current_a * volt * nph),
                v2x_floor_wh=s.v2x_floor_wh if s.v2x_floor_wh is not None else 0.0,
                driver_import_price=cfg.driver_import_tariff,
                driver_export_price=cfg.driver_export_tariff,
            )
        )

    slots = max(1, math.ceil((latest - now).total_seconds() / cfg.slot_s))
    starts = [now + timedelta(seconds=t * cfg.slot_s) for t in range(slots)]

    def series(name: str, default: float) -> list[float]:
        f = cfg.forecast
        values = [f.at(name, t) if f else None for t in starts]
        return [default if v is None else v for v in values]

    base = series("base_load_w", measured_w)
    base[0] = measured_w  # the measurement beats the forecast for now
    base = [b + pinned_w for b in base]
    problem = Problem(
        start=now,
        slots=slots,
        slot_s=cfg.slot_s,
        vehicles=vehicles,
        circuits=circuits,
        import_limit_w=root.max_power_w if root.max_power_w is not None else math.inf,
        export_limit_w=cfg.export_limit_w if cfg.export_limit_w is not None else math.inf,
        phase_limit_a=site_phase_a,
        voltage=volt,
        base_load_w=base,
        pv_w=series("pv_w", 0.0),
        import_price=series("import_price", cfg.default_import_price),
        export_price=series("export_price", 0.0),
        capacity_tariff_per_kw=cfg.capacity_tariff_per_kw,
        peak_so_far_w=cfg.peak_so_far_w,
        objective=cfg.objective,
    )
    return problem, stated


def mpc_step(
    site: SiteModel, now: datetime, cfg: MpcSettings, rules: WireRules | None = None
) -> MpcResult:
    """Plan the site from now; the first slot, rounded, becomes each session's cap."""
    problem, stated = build_problem(site, now, cfg)
    schedule = solve(problem)
    rules = rules or WireRules(single_phase_max_a=site.single_phase_max_a)
    amps = wire_currents(problem, schedule, 0, rules) if problem.vehicles else {}
    caps = {key: max(0.0, a) for key, a in amps.items()}  # discharging is a setpoint
    infeasible = sorted(k for k in stated if not schedule.vehicles[k].feasible)
    setpoints = {}
    for v in problem.vehicles:
        if v.can_discharge:
            watts = list(schedule.vehicles[v.id].power_w)
            # the first slot as wired: whole amps, the minimum current, every limit kept
            watts[0] = amps.get(v.id, 0.0) * problem.voltage * len(v.phases)
            setpoints[v.id] = watts
    f = cfg.forecast
    return MpcResult(
        at=now,
        problem=problem,
        schedule=schedule,
        caps=caps,
        infeasible=infeasible,
        stated=stated,
        setpoints=setpoints,
        sources=slot_sources(problem, f),
        forecast_end=f.end if f is not None else None,
    )


def slot_sources(problem: Problem, forecast: Forecast | None) -> list[str]:
    """Per slot of ``problem``: FORECAST if the forecast covers its start, else DEFAULT."""
    return [
        FORECAST if forecast is not None and forecast.covers(problem.slot_start(t)) else DEFAULT
        for t in range(problem.slots)
    ]
