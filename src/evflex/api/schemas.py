"""Request and response models of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from evflex.clock import utc_holds

#: Sane ranges of the physical quantities a body carries: a slip such as 1e306 kW is
#: refused with its reason instead of being stored (as infinity it would stop the site's
#: planning). A site, a circuit or a station beyond these is not a charging site.
MAX_POWER_KW = 1e6
MAX_CURRENT_A = 1e5
MAX_PRICE = 1e6  # per kWh, per kW
#: The largest value of the database's integer columns (EVSE ids, profile ids, ...).
MAX_INT32 = 2**31 - 1
#: An integer as the database stores it: a row id (BIGINT), an EVSE or profile id (INTEGER).
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
Int32 = Annotated[int, Field(ge=-(2**31), le=MAX_INT32)]

Amps = Annotated[float, Field(ge=-MAX_CURRENT_A, le=MAX_CURRENT_A)]
#: A date-time in a path or query: one UTC can hold (the store keeps UTC).
UtcDatetime = Annotated[datetime, AfterValidator(utc_holds)]


class ApiModel(BaseModel):
    """A request body: NaN and the infinities are refused (JSON has neither), and so is a
    date-time UTC cannot hold (the store keeps UTC)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _utc_holds(cls, value: object) -> object:
        return utc_holds(value)


class StationTopology(ApiModel):
    """Where a station hangs in its site's tree, and what it can take."""

    model_config = ConfigDict(extra="forbid")

    site_id: str | None = Field(None, max_length=64)
    circuit_id: str | None = Field(
        None, max_length=64, description="Circuit of the site it hangs on"
    )
    max_current_a: float | None = Field(
        None, gt=0, le=MAX_CURRENT_A, description="Station limit per phase (A)"
    )
    evse_max_current_a: float | None = Field(
        None, gt=0, le=MAX_CURRENT_A, description="Each EVSE's maximum (A); 32 if unset"
    )
    phases: Literal[1, 3] | None = Field(
        None, description="Phases the station is wired with (3 if unset)"
    )
    phase_rotation: Literal[1, 2, 3] | None = Field(
        None, description="Grid phase of a single-phase station"
    )


class StationSecurity(ApiModel):
    """How a station must connect (docs/security.md)."""

    security_profile: Literal[1, 2, 3] | None = Field(
        None,
        description="OCPP security profile: 1 password (ws or wss), 2 TLS + password, "
        "3 TLS client certificate; unset: 1",
    )
    serial_number: str | None = Field(
        None, min_length=1, max_length=64,
        description="Serial number a profile-3 certificate may carry as CN instead of the id",
    )  # fmt: skip


class StationCreate(StationTopology, StationSecurity):
    id: str = Field(min_length=1, max_length=48, pattern=r"^[^/\s]+$")
    password: str | None = Field(
        None,
        min_length=16,
        max_length=40,
        description="HTTP Basic password of security profiles 1 and 2 (16..40 characters)",
    )

    @model_validator(mode="after")
    def _profile_2_password(self) -> StationCreate:
        if self.security_profile == 2 and not self.password:
            raise ValueError("security profile 2 needs a password")
        return self


class StationPatch(StationTopology, StationSecurity):
    password: str | None = Field(None, min_length=16, max_length=40)
    clear_password: bool = False


class ConnectorOut(BaseModel):
    evse_id: int
    connector_id: int
    status: str
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None
    status_at: datetime | None = None


class FirmwareOut(BaseModel):
    status: str | None = Field(
        None,
        description="Requested (accepted, nothing reported yet), then the station's "
        "FirmwareStatus: Downloading, Downloaded, Installing, Installed, DownloadFailed ...",
    )
    at: datetime | None = None
    request_id: int | None = None
    location: str | None = None


class UploadOut(BaseModel):
    kind: str | None = Field(None, description="diagnostics (1.6 GetDiagnostics) or log (GetLog)")
    status: str | None = Field(
        None, description="Requested, then Uploading, Uploaded, UploadFailed / UploadFailure ..."
    )
    at: datetime | None = None
    request_id: int | None = None
    location: str | None = Field(None, description="where to; this node's token shows as {token}")
    file: str | None = Field(None, description="the file name the station gave or uploaded")


class StationOut(BaseModel):
    id: str
    connected: bool
    ocpp_version: str | None = None
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    site_id: str | None = None
    circuit_id: str | None = None
    max_current_a: float | None = None
    evse_max_current_a: float | None = None
    phases: int | None = None
    phase_rotation: int | None = None
    has_password: bool = False
    registration_status: str | None = None
    last_boot_at: datetime | None = None
    last_heartbeat_at: datetime | None = Field(
        None,
        description="When the station was last heard from: its last Heartbeat or any other "
        "message (OCPP lets a station skip Heartbeats while it sends others), or its connect",
    )
    heartbeat_age_s: float | None = Field(None, description="Seconds since last_heartbeat_at")
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    clock_offset_s: float | None = Field(
        None, description="How far the station's clock is ahead of ours (s; negative: behind)"
    )
    clock_skewed: bool = Field(False, description="The offset is beyond clock_tolerance_s")
    steerable: bool = Field(
        True, description="False once the station refuses charging profiles (see admission)"
    )
    not_steerable_reason: str | None = Field(
        None, description="Why not steerable: the station's last refusal of a profile"
    )
    security_profile: int | None = Field(None, description="Required profile (unset: 1)")
    security_profile_reached: int | None = Field(
        None, description="Highest profile it connected with; a lower one is refused"
    )
    firmware: FirmwareOut | None = Field(None, description="the last firmware update")
    upload: UploadOut | None = Field(None, description="the last diagnostics or log upload")
    connectors: list[ConnectorOut] = []


class IdTokenIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    id_token: str = Field(min_length=1, max_length=36)
    status: Literal[
        "Accepted",
        "Blocked",
        "Expired",
        "Invalid",
        "ConcurrentTx",
        "NoCredit",
        "NotAllowedTypeEVSE",
        "NotAtThisLocation",
        "NotAtThisTime",
        "Unknown",
    ] = "Accepted"
    type: str = Field("ISO14443", max_length=20)
    expiry: datetime | None = None
    parent_id_token: str | None = Field(None, max_length=36)


class IdTokenOut(IdTokenIn):
    created_at: datetime | None = None


class MeterValueOut(BaseModel):
    """One sample; a row's empty phase, location or context reads as null."""

    timestamp: datetime
    evse_id: int
    measurand: str
    value: float
    unit: str
    phase: str | None = None
    location: str | None = None
    context: str | None = None
    transaction_pk: int | None = None
    signed: bool = False

    @field_validator("phase", "location", "context", mode="before")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class TransactionOut(BaseModel):
    id: int
    station_id: str
    transaction_id: str
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    state: str
    active: bool
    charging_state: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    energy_imported_wh: float
    energy_exported_wh: float
    power_w: float | None = Field(None, description="Signed: + charging, - discharging")
    soc_percent: float | None = None
    last_meter_at: datetime | None = None
    last_meter_values: list[MeterValueOut] = []
    offline_messages: int = 0
    departure_at: datetime | None = None
    energy_target_wh: float | None = Field(None, description="Energy the session should reach")
    needs_source: str | None = Field(None, description="ev (NotifyEVChargingNeeds) or driver")
    priority: bool = False
    v2x_allowed: bool = Field(False, description="The driver consented to discharging")
    bidirectional: bool = Field(False, description="The EV asked for AC_BPT / DC_BPT")
    operation_mode: str | None = Field(None, description="OCPP 2.1 mode the station reports")
    v2x_state: Literal["charging", "discharging", "idle"] | None = Field(
        None, description="From the signed power: feeding back or not"
    )


class EventOut(BaseModel):
    id: int
    station_id: str | None
    timestamp: datetime
    kind: str
    type: str | None = None
    detail: dict | None = None


class CommandResult(BaseModel):
    station_id: str
    command: str
    ocpp_version: str
    response: dict


# ------------------------------------------------------------------ smart charging

Policy = Literal["equal", "priority", "deadline", "optimal"]
Objective = Literal[
    "load_balancing", "reduce_capacity", "cost", "res", "self_consumption", "flexibility",
    "v2g_arbitrage",
]  # fmt: skip


def _iana_zone(v: str | None) -> str | None:
    if v is not None:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{v}' is not an IANA time zone") from None
    return v


#: Where a site is, as roaming (OCPI) partners show it; all optional.
SITE_LOCATION = ("address", "city", "postal_code", "country", "latitude", "longitude", "time_zone")


class SiteLocation(ApiModel):
    """Where a site is, as OCPI Locations give it to roaming partners (docs: OCPI)."""

    address: str | None = Field(None, max_length=45, description="Street and house number")
    city: str | None = Field(None, max_length=45)
    postal_code: str | None = Field(None, max_length=10)
    country: str | None = Field(
        None, pattern=r"^[A-Z]{3}$", description="ISO 3166-1 alpha-3 code, e.g. DEU"
    )
    latitude: float | None = Field(None, ge=-90, le=90, description="WGS 84, decimal degrees")
    longitude: float | None = Field(None, ge=-180, le=180, description="WGS 84, decimal degrees")
    time_zone: Annotated[str | None, AfterValidator(_iana_zone)] = Field(
        None, max_length=64, description="IANA time zone, e.g. Europe/Berlin"
    )


class SiteIn(SiteLocation):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[^/\s]+$")
    name: str | None = Field(None, max_length=128)
    import_limit_kw: float = Field(
        ge=0, le=MAX_POWER_KW, description="Grid connection import limit (kW)"
    )
    export_limit_kw: float | None = Field(
        None, ge=0, le=MAX_POWER_KW, description="Export limit (kW), V2X"
    )
    max_current_a: float | None = Field(
        None, gt=0, le=MAX_CURRENT_A, description="Per-phase fuse of the connection (A)"
    )
    phases: Literal[1, 3] = 3
    voltage: float = Field(230.0, gt=0, le=1000, description="Phase-to-neutral voltage")
    policy: Policy = Field(
        "equal", description="How sessions share the site; 'optimal' plans ahead with the LP"
    )
    objective: Objective | None = Field(None, description="Use case of policy 'optimal'")
    capacity_tariff_per_kw: float | None = Field(
        None,
        ge=0,
        le=MAX_PRICE,
        description="Price per kW of the month's peak import (policy 'optimal')",
    )
    import_tariff_per_kwh: float | None = Field(
        None, ge=0, le=MAX_PRICE, description="Billing: price per kWh a session imports"
    )
    export_tariff_per_kwh: float | None = Field(
        None, ge=0, le=MAX_PRICE, description="Billing: reward per kWh a session feeds back (V2X)"
    )


class SitePatch(SiteLocation):
    """The fields to change; null removes an optional one (a required one cannot be removed)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=128)
    import_limit_kw: float | None = Field(None, ge=0, le=MAX_POWER_KW)
    export_limit_kw: float | None = Field(None, ge=0, le=MAX_POWER_KW)
    max_current_a: float | None = Field(None, gt=0, le=MAX_CURRENT_A)
    phases: Literal[1, 3] | None = None
    voltage: float | None = Field(None, gt=0, le=1000)
    policy: Policy | None = None
    objective: Objective | None = None
    capacity_tariff_per_kw: float | None = Field(None, ge=0, le=MAX_PRICE)
    import_tariff_per_kwh: float | None = Field(None, ge=0, le=MAX_PRICE)
    export_tariff_per_kwh: float | None = Field(None, ge=0, le=MAX_PRICE)

    @model_validator(mode="after")
    def _required_kept(self) -> SitePatch:
        removed = [
            name
            for name in ("import_limit_kw", "phases", "voltage", "policy")
            if name in self.model_fields_set and getattr(self, name) is None
        ]
        if removed:
            raise ValueError(f"{', '.join(removed)} cannot be removed (null): give a value")
        return self


class SiteLoadIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    current_a: list[Amps] | None = Field(
        None, min_length=1, max_length=3, description="Uncontrolled load per phase L1..L3 (A)"
    )
    power_kw: float | None = Field(
        None,
        ge=0,
        le=MAX_POWER_KW,
        description="Uncontrolled load as total power, spread evenly over the phases",
    )


class EvseTarget(BaseModel):
    station_id: str
    evse_id: int
    limit_a: float
    kind: Literal["session", "idle", "pinned"]
    boosted: bool = False
    paused: bool = False
    profile_status: str | None = None


class PlanOut(BaseModel):
    at: datetime
    compute_ms: float
    evses: list[EvseTarget]
    total_a: list[float] = Field(description="Per phase, all EVSE limits plus pinned EVSEs")
    headroom_kw: float
    problems: list[str]


class SiteOut(BaseModel):
    id: str
    name: str | None = None
    address: str | None = None
    city: str | None = None
    postal_code: str | None = None
    country: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    time_zone: str | None = None
    import_limit_kw: float
    export_limit_kw: float | None = None
    max_current_a: float | None = None
    phases: int
    voltage: float
    policy: str
    objective: str | None = None
    capacity_tariff_per_kw: float | None = None
    import_tariff_per_kwh: float | None = None
    export_tariff_per_kwh: float | None = None
    base_load_a: list[float] | None = None
    stations: list[str] = []
    circuits: list[str] = []
    plan: PlanOut | None = None
    planning_error: str | None = Field(
        None, description="Why the load manager could not plan the site the last time it tried"
    )
    managed_by_config: list[str] = Field(
        [], description="Fields set by the configuration file's [[sites]] table: read-only here"
    )


class CircuitIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64, pattern=r"^[^/\s]+$")
    site_id: str = Field(min_length=1, max_length=64)
    parent_id: str | None = Field(
        None, max_length=64, description="Parent circuit; none = the site"
    )
    name: str | None = Field(None, max_length=128)
    max_current_a: float | None = Field(
        None, gt=0, le=MAX_CURRENT_A, description="Per-phase limit (A)"
    )
    max_power_kw: float | None = Field(None, gt=0, le=MAX_POWER_KW)


class CircuitPatch(ApiModel):
    model_config = ConfigDict(extra="forbid")

    parent_id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=128)
    max_current_a: float | None = Field(None, gt=0, le=MAX_CURRENT_A)
    max_power_kw: float | None = Field(None, gt=0, le=MAX_POWER_KW)


class CircuitOut(BaseModel):
    id: str
    site_id: str
    parent_id: str | None = None
    name: str | None = None
    max_current_a: float | None = None
    max_power_kw: float | None = None


class ProfileIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    evse_id: int = Field(ge=0, le=MAX_INT32, description="0 = the whole station")
    profile: dict = Field(description="OCPP chargingProfile object (2.0.1 form, or 1.6 form)")


class ProfileOut(BaseModel):
    evse_id: int
    profile_id: int
    purpose: str
    stack_level: int
    transaction_id: str | None = None
    source: str
    status: str = Field(description="pending, sending, accepted, rejected or failed")
    attempts: int
    error: str | None = None
    profile: dict
    note: str | None = None


class PreferencesIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    departure_time: AwareDatetime | None = Field(None, description="With a time zone")
    energy_kwh: float | None = Field(None, gt=0, le=1000, description="Energy still wanted (kWh)")
    allow_discharge: bool | None = Field(
        None, description="The driver's consent to V2X discharging (default: no)"
    )


class PreferencesOut(BaseModel):
    transaction: int
    accepted: bool
    status: Literal["ACCEPTED", "NOT_POSSIBLE"] = "ACCEPTED"
    reason: str | None = None
    requested_kwh: float | None = None
    deliverable_kwh: float | None = Field(
        None, description="Most the site can deliver by departure (this session in priority)"
    )
    planned_kwh: float | None = Field(
        None, description="What the current plan delivers by departure"
    )
    limit_a: float | None = None
    priority: bool = False
    allow_discharge: bool = False
    need_status: Literal["ACCEPTED", "NOT_POSSIBLE", "NO_NEEDS"] = Field(
        "NO_NEEDS", description="The verdict on the stated need (NOT_POSSIBLE: at risk)"
    )


def kw_to_w(values: dict) -> dict:
    """Turn ``*_kw`` fields of an API body into the store's ``*_w`` columns."""
    out = {}
    for name, v in values.items():
        if name.endswith("_kw") and not name.endswith("_per_kw"):  # a tariff stays per kW
            out[name.removesuffix("_kw") + "_w"] = None if v is None else v * 1000.0
        else:
            out[name] = v
    return out


def body_values(body: BaseModel, fields: set[str] | None = None) -> dict:
    """Store values of a site or circuit body: the given fields (default all), ids left out."""
    names = set(type(body).model_fields) if fields is None else fields
    return kw_to_w({k: getattr(body, k) for k in names if k != "id"})


class BillOut(BaseModel):
    transaction: int
    station_id: str
    site_id: str | None = None
    energy_imported_kwh: float
    energy_exported_kwh: float
    import_tariff_per_kwh: float | None
    export_tariff_per_kwh: float | None
    import_cost: float | None = Field(None, description="imported kWh x import tariff")
    export_reward: float | None = Field(None, description="exported kWh x feed-in tariff")
    total: float | None = Field(None, description="cost minus reward (negative: owed to driver)")
