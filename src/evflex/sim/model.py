"""Data model of a simulated charging station: spec, EVSE state, transactions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from evflex.sim.ev import EvBattery

OCPP_VERSIONS = ("1.6", "2.0.1", "2.1")
PROFILE_BEHAVIOURS = ("execute", "reject", "ignore")
ProfileBehaviour = Literal["execute", "reject", "ignore"]

ENERGY = "Energy.Active.Import.Register"
POWER = "Power.Active.Import"
CURRENT = "Current.Import"
VOLTAGE = "Voltage"
SOC = "SoC"
FREQUENCY = "Frequency"
CURRENT_OFFERED = "Current.Offered"
POWER_OFFERED = "Power.Offered"

#: Measurands the simulated meter can sample.
SUPPORTED_MEASURANDS = (
    ENERGY,
    POWER,
    CURRENT,
    VOLTAGE,
    SOC,
    FREQUENCY,
    CURRENT_OFFERED,
    POWER_OFFERED,
)
DEFAULT_SAMPLED = ",".join((ENERGY, POWER, CURRENT, VOLTAGE, SOC, FREQUENCY))

# OCPP 2.1 (MeasurandEnumType): the two directions of a bidirectional EVSE.
ENERGY_EXPORT = "Energy.Active.Export.Register"
POWER_EXPORT = "Power.Active.Export"
CURRENT_EXPORT = "Current.Export"
REACTIVE_IMPORT = "Power.Reactive.Import"
REACTIVE_EXPORT = "Power.Reactive.Export"
POWER_EXPORT_OFFERED = "Power.Export.Offered"
POWER_SETPOINT = "Power.Active.Setpoint"

#: Measurands the meter of an OCPP 2.1 station can sample.
SUPPORTED_MEASURANDS_21 = (
    *SUPPORTED_MEASURANDS,
    ENERGY_EXPORT,
    POWER_EXPORT,
    CURRENT_EXPORT,
    REACTIVE_IMPORT,
    REACTIVE_EXPORT,
    POWER_EXPORT_OFFERED,
    POWER_SETPOINT,
)
DEFAULT_SAMPLED_21 = ",".join(
    (
        ENERGY,
        ENERGY_EXPORT,
        POWER,
        POWER_EXPORT,
        REACTIVE_IMPORT,
        REACTIVE_EXPORT,
        VOLTAGE,
        SOC,
        FREQUENCY,
    )
)


@dataclass
class StationSpec:
    """Static description of a simulated charging station."""

    id: str
    ocpp_version: str = "1.6"
    evses: int = 2
    max_current_a: float = 32.0
    phases: int = 3
    voltage: float = 230.0
    vendor: str = "evflex"
    model: str = "SimCharger"
    serial: str | None = None
    firmware: str = "1.0.0"
    iccid: str | None = None
    imsi: str | None = None
    password: str | None = None
    id_token_type: str = "ISO14443"
    meter_start_wh: float = 0.0
    frequency_hz: float = 50.0
    #: Below this charging current (A) the EVSE pauses charging (IEC 61851: 6 A).
    min_current_a: float = 6.0
    #: What the station does with charging profiles: "execute" them, answer
    #: SetChargingProfile with "reject", or "ignore" it (never answer).
    profile_behaviour: ProfileBehaviour = "execute"

    def __post_init__(self) -> None:
        if self.ocpp_version not in OCPP_VERSIONS:
            raise ValueError(f"ocpp_version must be one of {OCPP_VERSIONS}")
        if self.profile_behaviour not in PROFILE_BEHAVIOURS:
            raise ValueError(f"profile_behaviour must be one of {PROFILE_BEHAVIOURS}")
        if self.min_current_a < 0:
            raise ValueError("min_current_a must not be negative")
        if self.evses < 1:
            raise ValueError("a station needs at least one EVSE")
        if self.phases not in (1, 3):
            raise ValueError("phases must be 1 or 3")
        if self.serial is None:
            self.serial = f"SN-{self.id}"

    @property
    def evse_limit_w(self) -> float:
        """Hardware limit of one EVSE in W (current × phases × voltage)."""
        return self.max_current_a * self.phases * self.voltage


@dataclass
class Reservation:
    id: int
    id_token: str
    expiry: datetime
    parent_id_token: str | None = None
    timer: asyncio.Task[Any] | None = field(default=None, repr=False)


@dataclass
class Transaction:
    """A running transaction on one EVSE."""

    local_id: int
    #: 1.6: the CSMS transaction id (a negative placeholder until known);
    #: 2.0.1: the station-generated transaction id text.
    id: int | str
    id_token: str | None
    started_at: datetime
    meter_start_wh: float
    id_token_type: str = "ISO14443"
    remote_start_id: int | None = None
    reservation_id: int | None = None
    remote: bool = False
    authorized: bool = False
    charging_state: str = "EVConnected"
    charging_s: float = 0.0
    seq_no: int = 0
    begin_sample: dict[str, Any] | None = None

    def next_seq(self) -> int:
        seq = self.seq_no
        self.seq_no += 1
        return seq


@dataclass
class EvseState:
    """Live state of one EVSE (with one connector)."""

    id: int
    #: Station limit for this EVSE in W. The vehicle draws at most this much
    #: (and at most what its phases allow): the hardware limit, lowered by the
    #: charging profiles in force (see ``SimStation.apply_profiles``).
    limit_w: float
    meter_wh: float
    connector_id: int = 1
    status: str = "Available"
    ev: EvBattery | None = None
    tx: Transaction | None = None
    operative: bool = True
    reservation: Reservation | None = None
    power_w: float = 0.0
    #: Energy of the running transaction or, when idle, of the last one.
    session_energy_wh: float = 0.0
    #: OCPP 2.1: Energy.Active.Export.Register (Wh given back to the grid; ``meter_wh``
    #: is the import register). Both only ever grow.
    export_wh: float = 0.0
    #: OCPP 2.1: reactive power (var, positive = absorbed from the grid).
    reactive_var: float = 0.0
    last_transaction_id: int | str | None = None
    finishing: bool = False
    last_update: datetime | None = None
    reported_status: str | None = field(default=None, repr=False)
    #: Limit of the charging profiles in force in W (None: no profile limits this EVSE).
    profile_limit_w: float | None = None
    meter_task: asyncio.Task[Any] | None = field(default=None, repr=False)
    #: Wakes up at the next boundary of the composite schedule.
    limit_task: asyncio.Task[Any] | None = field(default=None, repr=False)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def transaction_id(self) -> int | str | None:
        return self.tx.id if self.tx is not None else None

    @property
    def soc(self) -> float | None:
        return self.ev.soc if self.ev is not None else None

    @property
    def plugged(self) -> bool:
        return self.ev is not None


@dataclass
class SimStats:
    """Counters of one station (summed up by the simulation)."""

    messages_sent: int = 0
    messages_received: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    boots: int = 0
    connection_losses: int = 0
    sessions_started: int = 0
    sessions_completed: int = 0
    sessions_rejected: int = 0
    energy_wh: float = 0.0

    max_samples: int = 20

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < self.max_samples:
            self.error_samples.append(text)
