"""Electric vehicle model used by the station simulator.

An :class:`EvSpec` describes a car as it arrives (battery, state of charge,
on-board charger). An :class:`EvBattery` is the live state of that car while it
is plugged in: it accepts power up to its on-board charger limit, tapers above
80 % state of charge and stops at its target.

Bidirectional cars (``bidirectional=True``: ISO 15118-20 AC_BPT, or DC_BPT
with ``dc=True``) also give power back, up to ``max_discharge_power_w`` and
never below ``min_soc``. Powers are signed at the grid side (positive:
charging, negative: discharging): charging raises the state of charge by
P·t·η_ch, discharging lowers it by P·t/η_dis.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

#: State of charge above which the accepted power tapers off.
TAPER_START_SOC = 0.8
#: Share of the full power still accepted at 100 % state of charge.
TAPER_END_FRACTION = 0.1
#: Longest integration step in seconds (the taper is evaluated per step).
INTEGRATION_STEP_S = 60.0


@dataclass
class EvSpec:
    """A vehicle as it arrives at the charger."""

    battery_kwh: float = 60.0
    soc: float = 0.3
    target_soc: float = 1.0
    max_ac_power_w: float = 11_000.0
    phases: int = 3
    bidirectional: bool = False
    max_discharge_power_w: float = 0.0
    model: str = "Generic EV"
    #: Seconds after plugging in at which the driver wants to leave (None: unknown).
    departure_s: float | None = None
    #: Lowest charging current per phase the on-board charger accepts (A).
    min_current_a: float = 6.0
    #: V2X floor: a bidirectional car never discharges below this state of charge.
    min_soc: float = 0.2
    #: Share of the energy drawn from the grid that ends up in the battery.
    charge_efficiency: float = 1.0
    #: Share of the energy taken from the battery that reaches the grid.
    discharge_efficiency: float = 1.0
    #: DC charging (DC / DC_BPT) instead of the on-board AC charger (AC_three_phase / AC_BPT).
    dc: bool = False
    #: ISO 15118-20 control mode the car asks for: "ScheduledControl" or "DynamicControl".
    control_mode: str = "ScheduledControl"

    def __post_init__(self) -> None:
        if self.battery_kwh <= 0:
            raise ValueError("battery_kwh must be positive")
        if not 0.0 <= self.soc <= 1.0:
            raise ValueError("soc must be within 0..1")
        if not 0.0 <= self.target_soc <= 1.0:
            raise ValueError("target_soc must be within 0..1")
        if self.max_ac_power_w < 0:
            raise ValueError("max_ac_power_w must not be negative")
        if self.phases not in (1, 2, 3):
            raise ValueError("phases must be 1, 2 or 3")
        if self.departure_s is not None and self.departure_s < 0:
            raise ValueError("departure_s must not be negative")
        if self.max_discharge_power_w < 0:
            raise ValueError("max_discharge_power_w must not be negative")
        if not 0.0 <= self.min_soc <= 1.0:
            raise ValueError("min_soc must be within 0..1")
        for name in ("charge_efficiency", "discharge_efficiency"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within (0, 1]")
        if self.control_mode not in CONTROL_MODES:
            raise ValueError(f"control_mode must be one of {CONTROL_MODES}")

    @property
    def max_discharge_w(self) -> float:
        """Power the car can give back (0 unless it is bidirectional)."""
        return self.max_discharge_power_w if self.bidirectional else 0.0

    @property
    def energy_transfer(self) -> str:
        """The ISO 15118 / OCPP EnergyTransferMode the car asks for."""
        if self.dc:
            return "DC_BPT" if self.bidirectional else "DC"
        if self.bidirectional:
            return "AC_BPT"
        return AC_TRANSFER[self.phases]


CONTROL_MODES = ("ScheduledControl", "DynamicControl")
#: EnergyTransferMode of a charge-only AC car by the number of phases of its charger.
AC_TRANSFER = {1: "AC_single_phase", 2: "AC_two_phase", 3: "AC_three_phase"}


@dataclass(frozen=True)
class EvModel:
    """An entry of the fleet table: a car type and how common it is."""

    name: str
    battery_kwh: float
    max_ac_power_w: float
    phases: int
    weight: float = 1.0
    bidirectional: bool = False
    max_discharge_power_w: float = 0.0
    dc: bool = False
    min_soc: float = 0.2
    charge_efficiency: float = 1.0
    discharge_efficiency: float = 1.0


#: A small fleet: compact single-phase cars up to large three-phase 22 kW cars,
#: and bidirectional (V2X) cars that only come when asked for: their weight is
#: 0 (see :func:`with_bidirectional`), so random runs draw the same cars as
#: before they existed.
DEFAULT_FLEET: tuple[EvModel, ...] = (
    EvModel("Compact 40", 40.0, 7_400.0, 1, weight=2.0),
    EvModel("Hatchback 60", 60.0, 11_000.0, 3, weight=3.0),
    EvModel("Saloon 75", 75.0, 11_000.0, 3, weight=3.0),
    EvModel("SUV 100", 100.0, 22_000.0, 3, weight=1.5),
    EvModel("Van 75", 75.0, 7_400.0, 1, weight=1.0),
    EvModel(
        "V2X Hatchback 60",
        60.0,
        11_000.0,
        3,
        weight=0.0,
        bidirectional=True,
        max_discharge_power_w=11_000.0,
        charge_efficiency=0.95,
        discharge_efficiency=0.95,
    ),
    EvModel(
        "V2X SUV 82",
        82.0,
        11_000.0,
        3,
        weight=0.0,
        bidirectional=True,
        max_discharge_power_w=11_000.0,
        min_soc=0.3,
        charge_efficiency=0.94,
        discharge_efficiency=0.94,
    ),
    EvModel(
        "V2X Kei 20 DC",
        20.0,
        6_000.0,
        1,
        weight=0.0,
        bidirectional=True,
        max_discharge_power_w=6_000.0,
        dc=True,
        charge_efficiency=0.96,
        discharge_efficiency=0.96,
    ),
)


def with_bidirectional(fleet: Sequence[EvModel], share: float) -> tuple[EvModel, ...]:
    """``fleet`` with the bidirectional models drawn with probability ``share``.

    The bidirectional models keep their relative weights (equal if all are 0),
    and so do the others.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError("share must be within 0..1")
    bidi = [m for m in fleet if m.bidirectional]
    other = [m for m in fleet if not m.bidirectional]
    if not bidi:
        if share > 0:
            raise ValueError("the fleet has no bidirectional models")
        return tuple(fleet)
    if not other and share < 1:
        raise ValueError("the fleet has only bidirectional models")

    def scaled(models: list[EvModel], total: float) -> dict[str, float]:
        weights = [m.weight for m in models]
        if sum(weights) <= 0:
            weights = [1.0] * len(models)
        return {m.name: total * w / sum(weights) for m, w in zip(models, weights, strict=True)}

    new = {**scaled(other, 1.0 - share), **scaled(bidi, share)} if other else scaled(bidi, 1.0)
    return tuple(replace(m, weight=new[m.name]) for m in fleet)


def random_ev(rng: random.Random, fleet: Sequence[EvModel] = DEFAULT_FLEET) -> EvSpec:
    """Draw a car from ``fleet`` with a random arrival and target state of charge."""
    model = rng.choices(list(fleet), weights=[m.weight for m in fleet])[0]
    soc = round(rng.uniform(0.10, 0.60), 3)
    target = rng.choice((0.8, 0.9, 1.0))
    return EvSpec(
        battery_kwh=model.battery_kwh,
        soc=soc,
        target_soc=target,
        max_ac_power_w=model.max_ac_power_w,
        phases=model.phases,
        bidirectional=model.bidirectional,
        max_discharge_power_w=model.max_discharge_power_w,
        dc=model.dc,
        min_soc=model.min_soc,
        charge_efficiency=model.charge_efficiency,
        discharge_efficiency=model.discharge_efficiency,
        model=model.name,
    )


class EvBattery:
    """Live state of a plugged-in vehicle."""

    def __init__(self, spec: EvSpec) -> None:
        self.spec = spec
        self.soc = spec.soc
        #: Energy drawn from the grid (Wh) and given back to it (Wh).
        self.charged_wh = 0.0
        self.discharged_wh = 0.0
        #: Planned stay in seconds after plugging in (the spec's, or a drawn dwell time).
        self.departure_s = spec.departure_s

    @property
    def capacity_wh(self) -> float:
        return self.spec.battery_kwh * 1000.0

    @property
    def target_soc(self) -> float:
        return min(self.spec.target_soc, 1.0)

    @property
    def energy_needed_wh(self) -> float:
        """Energy still needed to reach the target state of charge."""
        return max(0.0, (self.target_soc - self.soc) * self.capacity_wh)

    @property
    def full(self) -> bool:
        """True once the car has reached its target (or 100 %)."""
        return self.soc >= self.target_soc - 1e-9

    @property
    def min_soc(self) -> float:
        return self.spec.min_soc

    @property
    def can_discharge(self) -> bool:
        """True while a bidirectional car is above its V2X floor."""
        return self.spec.max_discharge_w > 0 and self.soc > self.min_soc + 1e-9

    @property
    def energy_to_min_wh(self) -> float:
        """Battery energy from now to the V2X floor (negative: that much may be given back)."""
        return (self.min_soc - self.soc) * self.capacity_wh

    @property
    def energy_to_full_wh(self) -> float:
        return (1.0 - self.soc) * self.capacity_wh

    def power_w(self, target_w: float) -> float:
        """The signed grid power of the car when the EVSE aims for ``target_w``."""
        if target_w >= 0:
            return self.accepted_power_w(target_w)
        if not self.can_discharge:
            return 0.0
        return -min(self.spec.max_discharge_w, -target_w)

    def exchange(self, seconds: float, target_w: float) -> tuple[float, float]:
        """Run for ``seconds`` at ``target_w`` (signed); return (Wh imported, Wh exported).

        Charging stops at the target state of charge, discharging at ``min_soc``.
        """
        if target_w >= 0:
            return self.charge(seconds, target_w), 0.0
        given = 0.0
        remaining = max(0.0, seconds)
        eff = self.spec.discharge_efficiency
        while remaining > 1e-9:
            step = min(remaining, INTEGRATION_STEP_S)
            power = -self.power_w(target_w)
            if power <= 0:
                break
            energy = power * step / 3600.0  # at the grid
            available = (self.soc - self.min_soc) * self.capacity_wh * eff
            if energy >= available:
                energy = max(0.0, available)
                self.soc = self.min_soc
            else:
                self.soc -= energy / eff / self.capacity_wh
            given += energy
            remaining -= step
        self.discharged_wh += given
        return 0.0, given

    def accepted_power_w(self, offered_w: float) -> float:
        """Power the car draws now when the EVSE offers ``offered_w``."""
        if self.full or offered_w <= 0:
            return 0.0
        base = min(self.spec.max_ac_power_w, offered_w)
        if self.soc <= TAPER_START_SOC:
            return base
        span = 1.0 - TAPER_START_SOC
        fraction = 1.0 - (1.0 - TAPER_END_FRACTION) * (self.soc - TAPER_START_SOC) / span
        return base * max(TAPER_END_FRACTION, fraction)

    def charge(self, seconds: float, offered_w: float) -> float:
        """Charge for ``seconds`` at up to ``offered_w``; return the energy taken in Wh."""
        taken = 0.0
        remaining = max(0.0, seconds)
        eff = self.spec.charge_efficiency
        while remaining > 1e-9:
            step = min(remaining, INTEGRATION_STEP_S)
            power = self.accepted_power_w(offered_w)
            if power <= 0:
                break
            energy = power * step / 3600.0  # at the grid
            needed = (self.target_soc - self.soc) * self.capacity_wh / eff
            if energy >= needed:
                energy = max(0.0, needed)
                self.soc = self.target_soc
            else:
                self.soc += energy * eff / self.capacity_wh
            taken += energy
            remaining -= step
        self.charged_wh += taken
        return taken
