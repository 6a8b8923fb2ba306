"""The typed input and output of the site scheduler.

A :class:`Problem` is one site over a horizon cut into equal slots: its
import/export limits, circuits, the EVs that are (or will be) plugged in,
stationary storage, uncontrolled load and PV, prices and DSO requests.
:func:`evflex.scheduling.solve` turns it into a :class:`Schedule`: signed
power per EV and slot (negative = discharging), storage power, the site's
import and export, state-of-charge trajectories, KPIs, and per EV whether its
need can be met.

Units: power in W, energy in Wh, prices in currency per kWh, the capacity
tariff in currency per kW of the period's peak import. Times are aware
datetimes; an EV present for part of a slot gets that fraction of its power
in that slot, so energies stay exact whatever the slot length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

SITE = "site"


class Objective(StrEnum):
    """Use-case presets (CEN CWA 17851 Table 2; SCALE §1.2)."""

    LOAD_BALANCING = "load_balancing"
    REDUCE_CAPACITY = "reduce_capacity"
    COST = "cost"
    RES = "res"
    SELF_CONSUMPTION = "self_consumption"
    FLEXIBILITY = "flexibility"
    V2G_ARBITRAGE = "v2g_arbitrage"


@dataclass(frozen=True, slots=True)
class Weights:
    """Weights of the objective terms, in currency (or currency-like units).

    ``energy_cost``, ``capacity`` and ``degradation`` multiply the money the
    problem states (prices, tariff, degradation cost). ``import_kwh`` and
    ``export_kwh`` penalise every kWh crossing the connection (RES-driven and
    self-consumption use cases). ``unmet_per_kwh`` is the penalty for energy a
    driver asked for and does not get: large, so it dominates. ``peak_per_kw``
    is a tariff-free push to flatten the site's import. ``early_per_kwh`` is a
    small regulariser: between equal plans, prefer the one that charges
    earlier (less risk if a car leaves early) and spreads power evenly.
    """

    energy_cost: float = 1.0
    capacity: float = 1.0
    degradation: float = 1.0
    import_kwh: float = 0.0
    export_kwh: float = 0.0
    unmet_per_kwh: float = 1000.0
    peak_per_kw: float = 0.0
    early_per_kwh: float = 1e-4
    curtail_per_kwh: float = 1e-3
    limit_breach_per_kwh: float = 1e5


PRESETS: dict[Objective, Weights] = {
    Objective.LOAD_BALANCING: Weights(energy_cost=0.0, capacity=0.0, peak_per_kw=0.01),
    Objective.REDUCE_CAPACITY: Weights(energy_cost=0.1, capacity=1.0, peak_per_kw=1.0),
    Objective.COST: Weights(),
    Objective.RES: Weights(energy_cost=0.1, import_kwh=1.0, capacity=0.1),
    Objective.SELF_CONSUMPTION: Weights(energy_cost=0.1, import_kwh=0.5, export_kwh=0.5),
    Objective.FLEXIBILITY: Weights(),
    Objective.V2G_ARBITRAGE: Weights(capacity=1.0),
}


@dataclass(frozen=True, slots=True)
class Vehicle:
    """One charging session, present or expected.

    The need is ``energy_wh`` (energy into the battery by departure), or, when
    ``battery_wh``, ``soc`` and ``target_soc`` are all given, the energy to go
    from ``soc`` to ``target_soc``. No need at all means "as much as the
    battery takes, if it is cheap"; without a battery size it means nothing is
    owed. Discharging needs ``v2x_allowed`` (the driver's consent) and a
    ``max_discharge_w`` above 0 (what the EV and the EVSE both allow).
    """

    id: str
    arrival: datetime
    departure: datetime
    max_charge_w: float
    energy_wh: float | None = None
    battery_wh: float | None = None
    soc: float | None = None  # 0..1 at arrival (or now, if already plugged in)
    target_soc: float | None = None
    min_soc: float = 0.0  # never discharge below
    max_discharge_w: float = 0.0
    min_charge_w: float = 0.0  # the wire's minimum (6 A), used when rounding
    eta_charge: float = 1.0
    eta_discharge: float = 1.0
    v2x_allowed: bool = False
    v2x_daily_cap_wh: float | None = None
    #: Without a battery size: the lowest energy level relative to now the EV may be
    #: taken to (0: give back only what it got in the horizon; -5000: 5 kWh more).
    v2x_floor_wh: float | None = None
    node: str = SITE
    phases: tuple[int, ...] = (1, 2, 3)
    priority: float = 1.0  # multiplies the unmet-energy penalty
    #: The driver's tariffs per kWh: paid for charging, received for discharging
    #: (the latter flat or per slot). When either is given, discharging this EV
    #: must not cost its driver money (``lp.driver_margin``).
    driver_import_price: float | None = None
    driver_export_price: Series | None = None

    def need_wh(self) -> float | None:
        if self.battery_wh is not None and self.soc is not None and self.target_soc is not None:
            return max(0.0, (self.target_soc - self.soc) * self.battery_wh)
        if self.energy_wh is not None:
            return max(0.0, self.energy_wh)
        return None

    @property
    def can_discharge(self) -> bool:
        return self.v2x_allowed and self.max_discharge_w > 0


@dataclass(frozen=True, slots=True)
class Storage:
    """A stationary battery behind the site's meter."""

    id: str
    capacity_wh: float
    soc: float
    max_charge_w: float
    max_discharge_w: float
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    min_soc: float = 0.1
    max_soc: float = 0.9
    end_soc: float | None = None  # None: end no lower than it started
    node: str = SITE
    phases: tuple[int, ...] = (1, 2, 3)


@dataclass(frozen=True, slots=True)
class Circuit:
    """A node of the site's tree with a per-phase current limit (A)."""

    id: str
    max_current_a: float
    parent: str = SITE


@dataclass(frozen=True, slots=True)
class FlexRequest:
    """A DSO's temporary cap on the site's import and/or export (W)."""

    start: datetime
    end: datetime
    max_import_w: float | None = None
    max_export_w: float | None = None
    id: str = ""


Series = float | Sequence[float]


@dataclass(frozen=True, slots=True)
class Problem:
    start: datetime
    slots: int = 96
    slot_s: float = 900.0
    vehicles: Sequence[Vehicle] = ()
    storages: Sequence[Storage] = ()
    circuits: Sequence[Circuit] = ()
    import_limit_w: Series = math.inf
    export_limit_w: Series = math.inf
    phase_limit_a: float = math.inf  # the site's own per-phase fuse
    voltage: float = 230.0
    base_load_w: Series = 0.0  # uncontrolled load, measured then forecast
    pv_w: Series = 0.0
    import_price: Series = 0.0  # per kWh
    export_price: Series = 0.0  # per kWh fed in (a reward; may be 0)
    capacity_tariff_per_kw: float = 0.0
    peak_so_far_w: float = 0.0  # the period's peak import before ``start``
    degradation_per_kwh: float = 0.0  # per kWh discharged from an EV or storage
    flex_requests: Sequence[FlexRequest] = ()
    objective: Objective = Objective.COST
    weights: Weights | None = None  # None: the preset of ``objective``

    @property
    def end(self) -> datetime:
        return self.start + timedelta(seconds=self.slots * self.slot_s)

    @property
    def slot_h(self) -> float:
        return self.slot_s / 3600.0

    def slot_start(self, t: int) -> datetime:
        return self.start + timedelta(seconds=t * self.slot_s)

    def effective_weights(self) -> Weights:
        return self.weights if self.weights is not None else PRESETS[self.objective]


@dataclass(slots=True)
class VehiclePlan:
    id: str
    power_w: list[float]  # signed per slot: > 0 charging, < 0 discharging
    energy_wh: float  # net energy into the battery over the horizon
    need_wh: float | None
    unmet_wh: float
    feasible: bool
    max_deliverable_wh: float | None  # when not feasible: the most it could get with priority
    soc: list[float] | None  # at the end of every slot (None without a battery size)
    discharged_wh: float = 0.0
    #: With driver tariffs: what discharging earns the driver net of buying that
    #: energy back (>= 0 in every plan); None without tariffs.
    driver_v2x_net: float | None = None


@dataclass(slots=True)
class StoragePlan:
    id: str
    power_w: list[float]
    soc: list[float]


@dataclass(slots=True)
class Kpis:
    import_kwh: float
    export_kwh: float
    energy_cost: float
    capacity_cost: float
    peak_import_w: float
    ev_energy_kwh: float
    unmet_kwh: float
    drivers_served: int
    drivers_with_need: int
    pv_kwh: float
    pv_self_consumption_pct: float | None  # share of PV used on site
    curtailed_kwh: float
    discharged_kwh: float
    limit_breach_kwh: float  # uncontrolled load alone above the limit (not ours to fix)


@dataclass(slots=True)
class Schedule:
    problem: Problem
    status: str  # HiGHS model status, "Optimal" when all went well
    vehicles: dict[str, VehiclePlan]
    storages: dict[str, StoragePlan]
    import_w: list[float]
    export_w: list[float]
    curtail_w: list[float]
    import_limit_w: list[float]
    export_limit_w: list[float]
    kpis: Kpis
    objective_value: float
    solve_s: float
    build_s: float
    size: dict[str, int] = field(default_factory=dict)  # rows, cols, nonzeros
    method: str = ""  # the solver method used: "simplex" (dual) or "ipm"

    def first_slot_w(self) -> dict[str, float]:
        """What every EV should draw now (signed W): the MPC's output."""
        return {k: (v.power_w[0] if v.power_w else 0.0) for k, v in self.vehicles.items()}
