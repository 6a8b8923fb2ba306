"""Data model of a simulated charging station: spec, EVSE state, transactions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from evflex.sim.ev import EvBattery

OCPP_VERSIONS = ("1.6", "2.0.1", "2.1")
#: How a simulated station can attack the CSMS (each must be refused):
#: ``wrong-ca`` a client certificate from a CA of its own making, ``expired`` an
#: expired one, ``other-station`` the certificate of another station, and
#: ``downgrade`` a connection one security profile below the one it reached
#: (profile 2 without a client certificate; plain ws; no password).
ATTACKS = ("wrong-ca", "expired", "other-station", "downgrade")
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
class SecuritySettings:
    """How a simulated station secures its link (OCPP security profiles 0 to 3).

    Without ``profile``: 3 with a client certificate, 2 for a ``wss://`` URL,
    1 with a password, else 0. Files may be paths or PEM text. ``ca_file`` is the CA the station trusts
    for the CSMS's server certificate (profiles 2 and 3; without it the
    system's trust store); ``client_cert`` / ``client_key`` the station's own
    certificate (chain) and key for profile 3 (a certificate the CSMS signs
    later replaces them). ``cpo_name`` is the O of its CSRs, their CN its id
    (``csr_common_name="id"``) or its serial number. ``tls_url`` /
    ``plain_url`` are where to connect with (and without) TLS when that is not
    the station's URL with the scheme changed. ``attack`` (see ``ATTACKS``)
    makes it an attacker; ``signer_cert`` / ``signer_key`` are a CA that signs
    the certificates of the ``expired`` and ``other-station`` attacks (without
    them these present ``client_cert`` as it is); ``other_station`` is whose
    certificate ``other-station`` presents.
    """

    profile: int | None = None
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    cpo_name: str | None = None
    csr_common_name: Literal["id", "serial"] = "id"
    key_kind: Literal["ec", "rsa"] = "ec"
    tls_url: str | None = None
    plain_url: str | None = None
    attack: str | None = None
    signer_cert: str | None = None
    signer_key: str | None = None
    other_station: str | None = None

    def __post_init__(self) -> None:
        if self.profile is not None and self.profile not in (0, 1, 2, 3):
            raise ValueError("security profile must be 0, 1, 2 or 3")
        if self.attack is not None and self.attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("a client certificate needs its key (and a key its certificate)")
        if (self.signer_cert is None) != (self.signer_key is None):
            raise ValueError("the signing CA needs its certificate and its key")
        if self.csr_common_name not in ("id", "serial"):
            raise ValueError("csr_common_name must be 'id' or 'serial'")

    def for_station(self, station_id: str) -> SecuritySettings:
        """These settings with ``{id}`` in the file names replaced by ``station_id``
        (one certificate per station in a fleet: ``--client-cert certs/{id}.pem``)."""
        files = ("ca_file", "client_cert", "client_key", "signer_cert", "signer_key")
        changes = {
            name: value.replace("{id}", station_id)
            for name in files
            if isinstance(value := getattr(self, name), str)
        }
        return replace(self, **changes)

    def missing_file(self, station_ids: list[str]) -> str | None:
        """The first TLS file these settings name that is not there for one of
        ``station_ids`` (after ``{id}`` is replaced), or None."""
        files = ("ca_file", "client_cert", "client_key", "signer_cert", "signer_key")
        for sid in station_ids:
            one = self.for_station(sid)
            for name in files:
                path = getattr(one, name)
                if isinstance(path, str) and not Path(path).is_file():
                    return path
        return None


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
    #: Security profile, TLS files, CPO name and attacker mode.
    security: SecuritySettings = field(default_factory=SecuritySettings)

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
