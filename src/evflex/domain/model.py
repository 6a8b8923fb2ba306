"""The one internal model every protocol adapter maps into.

Plain typed objects, no protocol library imports. Conventions:

* power is **signed**: positive = the EV charges (import from the grid),
  negative = the EV discharges (V2X export);
* energy is kept on two separate, never-negative registers: imported and
  exported Wh;
* an EVSE is the unit that can run one transaction. OCPP 1.6 has no EVSE, so
  a 1.6 ``connectorId`` N maps to EVSE N with connector 1; connector 0 of 1.6
  (the whole station) maps to EVSE 0.
* all timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class OcppVersion(StrEnum):
    V16 = "1.6"
    V201 = "2.0.1"
    V21 = "2.1"

    @property
    def subprotocol(self) -> str:
        return "ocpp" + self.value

    @classmethod
    def from_subprotocol(cls, name: str) -> OcppVersion:
        return cls(name.removeprefix("ocpp"))


class ConnectorStatus(StrEnum):
    """Union of the 1.6 ChargePointStatus and 2.x ConnectorStatusEnum values."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    OCCUPIED = "Occupied"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class AuthorizationStatus(StrEnum):
    """Union of 1.6 AuthorizationStatus and 2.x AuthorizationStatusEnum."""

    ACCEPTED = "Accepted"
    BLOCKED = "Blocked"
    EXPIRED = "Expired"
    INVALID = "Invalid"
    CONCURRENT_TX = "ConcurrentTx"
    UNKNOWN = "Unknown"
    NO_CREDIT = "NoCredit"
    NOT_ALLOWED_TYPE_EVSE = "NotAllowedTypeEVSE"
    NOT_AT_THIS_LOCATION = "NotAtThisLocation"
    NOT_AT_THIS_TIME = "NotAtThisTime"


class TransactionState(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class ChargingState(StrEnum):
    """What the EV is doing inside a transaction (2.x ChargingStateEnum, plus V2X)."""

    EV_CONNECTED = "EVConnected"
    CHARGING = "Charging"
    DISCHARGING = "Discharging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    IDLE = "Idle"


@dataclass(slots=True)
class StationInfo:
    """What a station says about itself at boot."""

    vendor: str
    model: str
    serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    meter_type: str | None = None
    meter_serial_number: str | None = None
    boot_reason: str | None = None


@dataclass(slots=True)
class StatusReport:
    evse_id: int
    connector_id: int
    status: ConnectorStatus
    timestamp: datetime
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None


@dataclass(slots=True)
class MeterSample:
    """One sampled value. ``value`` is in the SI base unit named by ``unit``.

    Units are normalised on the way in: kWh -> Wh, kW -> W, kvar -> var,
    kVA -> VA, kvarh -> varh, Percent -> "%", Celcius/Celsius -> "Celsius".
    Export measurands stay positive here; the sign convention of power is
    applied where a signed power is derived (:func:`signed_power_w`).
    """

    timestamp: datetime
    measurand: str
    value: float
    unit: str
    phase: str | None = None
    location: str | None = None
    context: str | None = None
    signed: bool = False  # carries signedData / is billing-grade (MID)


ENERGY_IMPORT_REGISTER = "Energy.Active.Import.Register"
ENERGY_EXPORT_REGISTER = "Energy.Active.Export.Register"
POWER_IMPORT = "Power.Active.Import"
POWER_EXPORT = "Power.Active.Export"
SOC = "SoC"

_UNIT_SCALE = {
    "kWh": ("Wh", 1000.0),
    "kW": ("W", 1000.0),
    "kvar": ("var", 1000.0),
    "kvarh": ("varh", 1000.0),
    "kVA": ("VA", 1000.0),
    "Percent": ("%", 1.0),
    "Celcius": ("Celsius", 1.0),
}

_DEFAULT_UNIT = {
    "Energy": "Wh",
    "Power.Active": "W",
    "Power.Offered": "W",
    "Power.Reactive": "var",
    "Power.Factor": "",
    "Current": "A",
    "Voltage": "V",
    "Frequency": "Hz",
    "SoC": "%",
    "Temperature": "Celsius",
    "RPM": "",
}


def default_unit(measurand: str) -> str:
    for prefix, unit in _DEFAULT_UNIT.items():
        if measurand.startswith(prefix):
            if prefix == "Energy" and "Reactive" in measurand:
                return "varh"
            return unit
    return ""


def normalise(value: float, unit: str | None, measurand: str) -> tuple[float, str]:
    """Scale a reading into the base unit; a missing unit takes the spec's default."""
    if not unit:
        return value, default_unit(measurand)
    if unit in _UNIT_SCALE:
        base, factor = _UNIT_SCALE[unit]
        return value * factor, base
    return value, unit


def signed_power_w(samples: list[MeterSample]) -> float | None:
    """Net active power in W from a sample set: import minus export (total, not per phase)."""
    imp = exp = None
    per_phase_imp = per_phase_exp = 0.0
    have_phase_imp = have_phase_exp = False
    for s in samples:
        if s.measurand == POWER_IMPORT:
            if s.phase is None:
                imp = s.value
            else:
                per_phase_imp += s.value
                have_phase_imp = True
        elif s.measurand == POWER_EXPORT:
            if s.phase is None:
                exp = s.value
            else:
                per_phase_exp += s.value
                have_phase_exp = True
    if imp is None and have_phase_imp:
        imp = per_phase_imp
    if exp is None and have_phase_exp:
        exp = per_phase_exp
    if imp is None and exp is None:
        return None
    return (imp or 0.0) - (exp or 0.0)


def register_value(samples: list[MeterSample], measurand: str) -> float | None:
    """The total (phase-less, outlet) reading of an energy register, if present."""
    best = None
    for s in samples:
        if s.measurand == measurand and s.phase is None:
            if s.location in (None, "Outlet"):
                return s.value
            best = s.value if best is None else best
    return best


#: Per-phase current below this (A) counts as "not drawing on that phase".
PHASE_DRAW_MIN_A = 1.0


def phases_drawn(samples: list[MeterSample], voltage: float = 230.0) -> int | None:
    """How many phases the EV draws on, from one sample set (None: cannot tell).

    The per-phase ``Current.Import`` values name the phases in use. A station
    that reports only some phases' currents must not make a three-phase car
    look single-phase (that would undercount the load on the other phases):
    the total power, where reported, gives a floor, ``P / (V * I_max)``.
    """
    per_phase = {
        s.phase[:2]: s.value
        for s in samples
        if s.measurand == "Current.Import" and s.phase and s.phase[:2] in ("L1", "L2", "L3")
    }
    drawing = [a for a in per_phase.values() if a >= PHASE_DRAW_MIN_A]
    if not drawing:
        return None
    n = len(drawing)
    power = signed_power_w(samples)
    if power is not None and power > 0:
        floor = power / (voltage * max(drawing))
        n = max(n, min(3, math.ceil(floor - 0.15)))  # 15 % for voltage and rounding
    return n


def soc_percent(samples: list[MeterSample]) -> float | None:
    for s in samples:
        if s.measurand == SOC:
            return s.value
    return None


@dataclass(slots=True)
class TransactionUpdate:
    """A version-neutral account of what a station said about a transaction.

    1.6 StartTransaction, MeterValues (with transactionId) and StopTransaction
    and 2.x TransactionEvent all become one of these.
    """

    station_id: str
    transaction_id: str
    event: str  # "started" | "updated" | "ended"
    timestamp: datetime
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    samples: list[MeterSample] = field(default_factory=list)
    charging_state: str | None = None
    stop_reason: str | None = None
    trigger_reason: str | None = None
    seq_no: int | None = None
    offline: bool = False
    remote_start_id: int | None = None
    reservation_id: int | None = None
    operation_mode: str | None = None  # 2.1 transactionInfo.operationMode


@dataclass(slots=True)
class StationEvent:
    """A logged, non-transactional fact: security event, firmware status, data transfer, ..."""

    station_id: str
    kind: str
    timestamp: datetime
    type: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(slots=True)
class ChargingNeeds:
    """What an EV (2.0.1 NotifyEVChargingNeeds) or its driver (the API) asks for."""

    station_id: str
    evse_id: int
    departure: datetime | None = None
    energy_wh: float | None = None  # energy still wanted from now on
    ev_min_current_a: float | None = None
    ev_max_current_a: float | None = None
    ev_max_power_w: float | None = None
    phases: int | None = None
    source: str = "ev"
    # V2X (OCPP 2.1 v2xChargingParameters and the driver's consent).
    v2x_allowed: bool | None = None
    energy_transfer: str | None = None  # requestedEnergyTransfer, e.g. AC_BPT
    allowed_energy_transfer: str | None = None  # comma-separated modes
    ev_max_charge_w: float | None = None
    ev_min_charge_w: float | None = None
    ev_max_discharge_w: float | None = None
    ev_min_discharge_w: float | None = None
    v2x_min_energy_wh: float | None = None
    v2x_max_energy_wh: float | None = None
    target_soc: float | None = None
    control_mode: str | None = None
    mobility_needs_mode: str | None = None
