"""Electric vehicle model used by the station simulator.

An :class:`EvSpec` describes a car as it arrives (battery, state of charge,
on-board charger). An :class:`EvBattery` is the live state of that car while it
is plugged in: it accepts power up to its on-board charger limit, tapers above
80 % state of charge and stops at its target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class EvModel:
    """An entry of the fleet table: a car type and how common it is."""

    name: str
    battery_kwh: float
    max_ac_power_w: float
    phases: int
    weight: float = 1.0
    bidirectional: bool = False


#: A small fleet: compact single-phase cars up to large three-phase 22 kW cars.
DEFAULT_FLEET: tuple[EvModel, ...] = (
    EvModel("Compact 40", 40.0, 7_400.0, 1, weight=2.0),
    EvModel("Hatchback 60", 60.0, 11_000.0, 3, weight=3.0),
    EvModel("Saloon 75", 75.0, 11_000.0, 3, weight=3.0),
    EvModel("SUV 100", 100.0, 22_000.0, 3, weight=1.5),
    EvModel("Van 75", 75.0, 7_400.0, 1, weight=1.0),
)


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
        model=model.name,
    )


class EvBattery:
    """Live state of a plugged-in vehicle."""

    def __init__(self, spec: EvSpec) -> None:
        self.spec = spec
        self.soc = spec.soc
        self.charged_wh = 0.0
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
        while remaining > 1e-9:
            step = min(remaining, INTEGRATION_STEP_S)
            power = self.accepted_power_w(offered_w)
            if power <= 0:
                break
            energy = power * step / 3600.0
            needed = (self.target_soc - self.soc) * self.capacity_wh
            if energy >= needed:
                energy = max(0.0, needed)
                self.soc = self.target_soc
            else:
                self.soc += energy / self.capacity_wh
            taken += energy
            remaining -= step
        self.charged_wh += taken
        return taken
