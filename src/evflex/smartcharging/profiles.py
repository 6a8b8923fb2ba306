"""Version-neutral OCPP charging profiles, their validation and wire mapping.

One model for 1.6 and 2.0.1 profiles. Purposes use the 2.0.1 names; the 1.6
``ChargePointMaxProfile`` is :attr:`Purpose.STATION_MAX`. An EVSE id of 0
means the whole station (1.6 connector 0).

Nothing here does I/O: the CSMS, the simulator and the load manager all
build, check and translate profiles with these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from evflex.clock import isoformat, parse_datetime


class Purpose(StrEnum):
    STATION_MAX = "ChargingStationMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"
    EXTERNAL = "ChargingStationExternalConstraints"
    PRIORITY = "PriorityCharging"  # 2.1: what the station runs in priority charging
    LOCAL_GENERATION = "LocalGeneration"  # 2.1: local generation the station may use

    def wire(self, version: str) -> str:
        if version == "1.6" and self is Purpose.STATION_MAX:
            return "ChargePointMaxProfile"
        return self.value

    @classmethod
    def parse(cls, text: str) -> Purpose:
        if text == "ChargePointMaxProfile":
            return cls.STATION_MAX
        return cls(text)


class Kind(StrEnum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    A = "A"
    W = "W"


class OperationMode(StrEnum):
    """OCPP 2.1 ``OperationModeEnumType``: what an EVSE does in a schedule period."""

    IDLE = "Idle"
    CHARGING_ONLY = "ChargingOnly"
    CENTRAL_SETPOINT = "CentralSetpoint"
    EXTERNAL_SETPOINT = "ExternalSetpoint"
    EXTERNAL_LIMITS = "ExternalLimits"
    CENTRAL_FREQUENCY = "CentralFrequency"
    LOCAL_FREQUENCY = "LocalFrequency"
    LOCAL_LOAD_BALANCING = "LocalLoadBalancing"


#: Modes that may leave ``limit`` out (the 2.1 schema makes it optional for them).
LIMIT_OPTIONAL = frozenset(
    {
        OperationMode.CENTRAL_SETPOINT,
        OperationMode.EXTERNAL_SETPOINT,
        OperationMode.EXTERNAL_LIMITS,
        OperationMode.LOCAL_FREQUENCY,
        OperationMode.LOCAL_LOAD_BALANCING,
    }
)
#: Modes that need a ``setpoint`` in every period.
SETPOINT_REQUIRED = frozenset({OperationMode.CENTRAL_SETPOINT, OperationMode.CENTRAL_FREQUENCY})
#: Modes in which the EV may discharge.
DISCHARGING_MODES = frozenset(OperationMode) - {OperationMode.IDLE, OperationMode.CHARGING_ONLY}

#: The 2.1 per-phase fields: domain name -> wire name of L1 (or total), L2, L3.
PHASE_FIELDS = {
    "limit": ("limit", "limit_L2", "limit_L3"),
    "discharge_limit": ("dischargeLimit", "dischargeLimit_L2", "dischargeLimit_L3"),
    "setpoint": ("setpoint", "setpoint_L2", "setpoint_L3"),
    "setpoint_reactive": ("setpointReactive", "setpointReactive_L2", "setpointReactive_L3"),
}


DEFAULT_VOLTAGE = 230.0

#: The wire form used inside evflex (store, API, dispatcher): 2.x with every 2.1
#: field, so nothing is lost; each station's adapter checks and re-encodes it
#: for its own version (a 2.0.1 station refuses V2X fields with a reason).
NEUTRAL = "2.1"


class ProfileError(ValueError):
    """A profile that breaks the OCPP rules; the message says which rule."""


@dataclass(frozen=True, slots=True)
class Period:
    """One schedule period. ``limit`` is ``math.inf`` where a 2.1 period leaves it out.

    The OCPP 2.1 fields (operation mode, setpoints, discharge limits, per-phase
    values, frequency curve) are ``None`` when absent; per-phase tuples hold the
    L2 and L3 values, and then ``limit``/``setpoint``/... are the L1 values.
    """

    start_s: int
    limit: float
    number_phases: int | None = None
    phase_to_use: int | None = None
    operation_mode: OperationMode | None = None
    setpoint: float | None = None
    discharge_limit: float | None = None  # <= 0, as on the wire
    setpoint_reactive: float | None = None
    limit_l23: tuple[float, float] | None = None
    setpoint_l23: tuple[float, float] | None = None
    discharge_limit_l23: tuple[float, float] | None = None
    setpoint_reactive_l23: tuple[float, float] | None = None
    v2x_baseline: float | None = None
    v2x_freq_watt_curve: tuple[tuple[float, float], ...] | None = None
    evse_sleep: bool | None = None
    preconditioning_request: bool | None = None

    @property
    def mode(self) -> OperationMode:
        return self.operation_mode or OperationMode.CHARGING_ONLY

    @property
    def is_v2x(self) -> bool:
        """True if the period uses anything beyond a 2.0.1 charging limit."""
        return any(
            getattr(self, name) is not None
            for name in (
                "operation_mode",
                "setpoint",
                "discharge_limit",
                "setpoint_reactive",
                "limit_l23",
                "v2x_baseline",
                "v2x_freq_watt_curve",
                "evse_sleep",
                "preconditioning_request",
            )
        ) or math.isinf(self.limit)

    def total(self, name: str) -> float | None:
        """A per-phase quantity summed over the phases (``setpoint``, ``limit``, ...)."""
        value: float | None = getattr(self, name)
        if value is None:
            return None
        rest: tuple[float, float] | None = getattr(self, f"{name}_l23")
        return value if rest is None else value + rest[0] + rest[1]


@dataclass(frozen=True, slots=True)
class Schedule:
    rate_unit: RateUnit
    periods: tuple[Period, ...]
    id: int = 0
    start: datetime | None = None
    duration_s: int | None = None
    min_rate: float | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    id: int
    stack_level: int
    purpose: Purpose
    kind: Kind
    schedule: Schedule
    recurrency: Recurrency | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | None = None
    # 2.0.1 allows up to three schedules (ISO 15118 alternatives); the first one
    # is the one a station executes, the rest are kept for round trips.
    extra_schedules: tuple[Schedule, ...] = field(default=())

    def with_schedule(self, schedule: Schedule) -> ChargingProfile:
        return replace(self, schedule=schedule)


# --------------------------------------------------------------------- checks


#: The largest id or stack level: stations and the store hold them in 32 bits.
MAX_ID = 2**31 - 1


def validate(profile: ChargingProfile, evse_id: int, version: str = "2.0.1") -> None:
    """Raise :class:`ProfileError` if ``profile`` may not be set on ``evse_id``."""
    p, s = profile, profile.schedule
    for name, number in (
        ("chargingProfileId", p.id),
        ("stackLevel", p.stack_level),
        ("evse id", evse_id),
        *(("chargingSchedule id", x.id) for x in (s, *p.extra_schedules)),
    ):
        if abs(number) > MAX_ID:
            raise ProfileError(f"{name} {number} does not fit in 32 bits")
    if p.purpose in (Purpose.PRIORITY, Purpose.LOCAL_GENERATION) and version != "2.1":
        raise ProfileError(f"{p.purpose.value} profiles exist only in OCPP 2.1")
    if p.id < 0 and version == "1.6":
        raise ProfileError("chargingProfileId must not be negative")
    if p.stack_level < 0:
        raise ProfileError("stackLevel must not be negative")
    if evse_id < 0:
        raise ProfileError("evse id must not be negative")
    if p.purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL) and evse_id != 0:
        if p.purpose is Purpose.STATION_MAX or version == "1.6":
            raise ProfileError(f"{p.purpose.wire(version)} can only be set on evse 0")
    if p.purpose is Purpose.EXTERNAL and version == "1.6":
        raise ProfileError("ChargingStationExternalConstraints does not exist in OCPP 1.6")
    if p.purpose is Purpose.TX and evse_id == 0:
        raise ProfileError("TxProfile must name an evse (not 0)")
    if p.purpose is not Purpose.TX and p.transaction_id is not None:
        raise ProfileError("transactionId is only allowed on a TxProfile")
    if p.kind is Kind.RECURRING:
        if p.recurrency is None:
            raise ProfileError("a Recurring profile needs recurrencyKind")
        if s.start is None:
            raise ProfileError("a Recurring profile needs startSchedule")
    if p.kind is Kind.ABSOLUTE and s.start is None and version != "1.6":
        raise ProfileError("an Absolute profile needs startSchedule")
    if p.kind is Kind.RELATIVE and p.purpose is Purpose.STATION_MAX and version != "1.6":
        raise ProfileError("a ChargingStationMaxProfile cannot be Relative (K01.FR.38)")
    if p.kind is Kind.RELATIVE and s.start is not None:
        raise ProfileError("a Relative profile must not have startSchedule")
    if p.kind is not Kind.RECURRING and p.recurrency is not None:
        raise ProfileError("recurrencyKind is only allowed on a Recurring profile")
    if p.valid_from and p.valid_to and p.valid_to <= p.valid_from:
        raise ProfileError("validTo must be after validFrom")
    for sched in (s, *p.extra_schedules):
        _validate_schedule(sched, p)
        for period in sched.periods:
            _validate_v2x(period, version)


def _validate_schedule(s: Schedule, p: ChargingProfile) -> None:
    if not s.periods:
        raise ProfileError("chargingSchedulePeriod must hold at least one period")
    if s.periods[0].start_s != 0:
        raise ProfileError("the first chargingSchedulePeriod must have startPeriod 0")
    last = -1
    for period in s.periods:
        if period.start_s <= last:
            raise ProfileError("startPeriod values must be strictly increasing")
        last = period.start_s
        if period.limit < 0:
            raise ProfileError(
                "a charging limit must not be negative (discharging: OCPP 2.1 dischargeLimit)"
            )
        if period.number_phases is not None and period.number_phases not in (1, 2, 3):
            raise ProfileError("numberPhases must be 1, 2 or 3")
        if period.phase_to_use is not None:
            if period.phase_to_use not in (1, 2, 3):
                raise ProfileError("phaseToUse must be 1, 2 or 3")
            if period.number_phases != 1:
                raise ProfileError("phaseToUse is only allowed with numberPhases 1")
    if s.duration_s is not None and s.duration_s < 0:
        raise ProfileError("duration must not be negative")
    if s.min_rate is not None and s.min_rate < 0:
        raise ProfileError("minChargingRate must not be negative")
    if p.kind is Kind.RECURRING:
        span = 86400 if p.recurrency is Recurrency.DAILY else 7 * 86400
        if s.periods[-1].start_s >= span:
            raise ProfileError(f"a {p.recurrency} schedule cannot start a period after {span} s")


def _validate_v2x(period: Period, version: str) -> None:
    """The OCPP 2.1 rules of a period's V2X fields (and that older versions have none)."""
    if version != "2.1":
        if period.is_v2x:
            raise ProfileError(
                "operationMode, setpoint, dischargeLimit, per-phase values and an absent "
                f"limit are OCPP 2.1 (this station speaks {version})"
            )
        return
    mode = period.mode
    if math.isinf(period.limit) and mode not in LIMIT_OPTIONAL:
        raise ProfileError(f"operationMode {mode.value} needs a limit")
    if mode in SETPOINT_REQUIRED and period.setpoint is None:
        raise ProfileError(f"operationMode {mode.value} needs a setpoint")
    if mode is OperationMode.LOCAL_FREQUENCY and not period.v2x_freq_watt_curve:
        raise ProfileError("operationMode LocalFrequency needs a v2xFreqWattCurve")
    curve = period.v2x_freq_watt_curve or ()
    if any(b[0] <= a[0] for a, b in zip(curve, curve[1:], strict=False)):
        raise ProfileError("v2xFreqWattCurve frequencies must be strictly increasing")
    if period.discharge_limit is not None and period.discharge_limit > 0:
        raise ProfileError("dischargeLimit must be zero or negative (it is a discharge)")
    if period.discharge_limit_l23 is not None and max(period.discharge_limit_l23) > 0:
        raise ProfileError("dischargeLimit_L2/L3 must be zero or negative")
    for name in PHASE_FIELDS:
        if getattr(period, f"{name}_l23") is not None and getattr(period, name) is None:
            raise ProfileError(f"{name}_L2/L3 need the L1 value in {PHASE_FIELDS[name][0]}")
    # A dischargeLimit without a mode is a cap (e.g. on a ChargingStationMaxProfile).
    discharges = (period.setpoint is not None and period.setpoint < 0) or (
        period.discharge_limit is not None
        and period.discharge_limit < 0
        and period.operation_mode is not None
    )
    if discharges and mode in (OperationMode.CHARGING_ONLY, OperationMode.IDLE):
        raise ProfileError(f"operationMode {mode.value} cannot discharge")
    setpoint = period.total("setpoint")
    if setpoint is not None:
        limit = period.total("limit")  # never None: a period always has a limit
        if limit is not None and setpoint > limit + 1e-9:
            raise ProfileError("setpoint is above the period's limit")
        low = period.total("discharge_limit")
        if low is not None and setpoint < low - 1e-9:
            raise ProfileError("setpoint is below the period's dischargeLimit")


# --------------------------------------------------------------------- units


def to_watts(limit: float, unit: RateUnit, phases: int, voltage: float = DEFAULT_VOLTAGE) -> float:
    return limit if unit is RateUnit.W else limit * voltage * phases


def to_amps(limit: float, unit: RateUnit, phases: int, voltage: float = DEFAULT_VOLTAGE) -> float:
    return limit if unit is RateUnit.A else limit / (voltage * phases)


def convert(limit: float, src: RateUnit, dst: RateUnit, phases: int, voltage: float) -> float:
    if src is dst:
        return limit
    if dst is RateUnit.W:
        return to_watts(limit, src, phases, voltage)
    return to_amps(limit, src, phases, voltage)


# --------------------------------------------------------------------- wire


def _opt_time(text: str | None) -> datetime | None:
    return parse_datetime(text) if text else None


def _opt_float(d: dict[str, Any], key: str) -> float | None:
    value = d.get(key)
    return None if value is None else float(value)


def _pair(d: dict[str, Any], keys: tuple[str, str, str]) -> tuple[float, float] | None:
    l2, l3 = d.get(keys[1]), d.get(keys[2])
    if l2 is None and l3 is None:
        return None
    if l2 is None or l3 is None:
        raise ProfileError(f"{keys[1]} and {keys[2]} come together")
    return float(l2), float(l3)


def _period_from_wire(d: dict[str, Any]) -> Period:
    mode = d.get("operationMode")
    curve = d.get("v2xFreqWattCurve")
    return Period(
        start_s=int(d["startPeriod"]),
        limit=float(d["limit"]) if d.get("limit") is not None else math.inf,
        number_phases=d.get("numberPhases"),
        phase_to_use=d.get("phaseToUse"),
        operation_mode=OperationMode(mode) if mode is not None else None,
        setpoint=_opt_float(d, "setpoint"),
        discharge_limit=_opt_float(d, "dischargeLimit"),
        setpoint_reactive=_opt_float(d, "setpointReactive"),
        limit_l23=_pair(d, PHASE_FIELDS["limit"]),
        setpoint_l23=_pair(d, PHASE_FIELDS["setpoint"]),
        discharge_limit_l23=_pair(d, PHASE_FIELDS["discharge_limit"]),
        setpoint_reactive_l23=_pair(d, PHASE_FIELDS["setpoint_reactive"]),
        v2x_baseline=_opt_float(d, "v2xBaseline"),
        v2x_freq_watt_curve=tuple((float(x["frequency"]), float(x["power"])) for x in curve)
        if curve is not None
        else None,
        evse_sleep=d.get("evseSleep"),
        preconditioning_request=d.get("preconditioningRequest"),
    )


def _period_to_wire(p: Period, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"startPeriod": p.start_s}
    if not math.isinf(p.limit):
        out["limit"] = round(p.limit, 1)
    elif version != "2.1":
        raise ProfileError(f"a period without limit cannot be sent over OCPP {version}")
    if p.number_phases is not None:
        out["numberPhases"] = p.number_phases
    if p.phase_to_use is not None and version != "1.6":
        out["phaseToUse"] = p.phase_to_use
    if version == "2.1":
        for name, keys in PHASE_FIELDS.items():
            value, rest = getattr(p, name), getattr(p, f"{name}_l23")
            if name != "limit" and value is not None:
                out[keys[0]] = round(value, 1)
            if rest is not None:
                out[keys[1]], out[keys[2]] = round(rest[0], 1), round(rest[1], 1)
        if p.v2x_baseline is not None:
            out["v2xBaseline"] = round(p.v2x_baseline, 1)
        if p.v2x_freq_watt_curve is not None:
            out["v2xFreqWattCurve"] = [
                {"frequency": f, "power": w} for f, w in p.v2x_freq_watt_curve
            ]
        if p.evse_sleep is not None:
            out["evseSleep"] = p.evse_sleep
        if p.preconditioning_request is not None:
            out["preconditioningRequest"] = p.preconditioning_request
        if p.operation_mode is not None:
            out["operationMode"] = p.operation_mode.value
    return out


def schedule_from_wire(d: dict[str, Any]) -> Schedule:
    return Schedule(
        id=int(d.get("id", 0)),
        rate_unit=RateUnit(d["chargingRateUnit"]),
        periods=tuple(_period_from_wire(x) for x in d["chargingSchedulePeriod"]),
        start=_opt_time(d.get("startSchedule")),
        duration_s=d.get("duration"),
        min_rate=d.get("minChargingRate"),
    )


def schedule_to_wire(s: Schedule, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if version != "1.6":
        out["id"] = s.id
    if s.start is not None:
        out["startSchedule"] = isoformat(s.start)
    if s.duration_s is not None:
        out["duration"] = int(s.duration_s)
    out["chargingRateUnit"] = s.rate_unit.value
    out["chargingSchedulePeriod"] = [_period_to_wire(p, version) for p in s.periods]
    if s.min_rate is not None:
        out["minChargingRate"] = round(s.min_rate, 1)
    return out


def from_wire(d: dict[str, Any], version: str) -> ChargingProfile:
    """Read an OCPP ``chargingProfile`` / ``csChargingProfiles`` object (camelCase)."""
    try:
        if version == "1.6":
            pid = int(d["chargingProfileId"])
            schedules = [schedule_from_wire(d["chargingSchedule"])]
        else:
            pid = int(d["id"])
            raw = d["chargingSchedule"]
            schedules = [schedule_from_wire(x) for x in (raw if isinstance(raw, list) else [raw])]
        tx = d.get("transactionId")
        return ChargingProfile(
            id=pid,
            stack_level=int(d["stackLevel"]),
            purpose=Purpose.parse(d["chargingProfilePurpose"]),
            kind=Kind(d["chargingProfileKind"]),
            recurrency=Recurrency(d["recurrencyKind"]) if d.get("recurrencyKind") else None,
            valid_from=_opt_time(d.get("validFrom")),
            valid_to=_opt_time(d.get("validTo")),
            transaction_id=None if tx is None else str(tx),
            schedule=schedules[0],
            extra_schedules=tuple(schedules[1:]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"malformed charging profile: {exc!r}") from exc


def to_wire(p: ChargingProfile, version: str) -> dict[str, Any]:
    """The OCPP ``chargingProfile`` object for ``version`` ("1.6", "2.0.1" or "2.1")."""
    out: dict[str, Any] = {}
    out["chargingProfileId" if version == "1.6" else "id"] = p.id
    if p.transaction_id is not None:
        out["transactionId"] = int(p.transaction_id) if version == "1.6" else p.transaction_id
    out["stackLevel"] = p.stack_level
    out["chargingProfilePurpose"] = p.purpose.wire(version)
    out["chargingProfileKind"] = p.kind.value
    if p.recurrency is not None:
        out["recurrencyKind"] = p.recurrency.value
    if p.valid_from is not None:
        out["validFrom"] = isoformat(p.valid_from)
    if p.valid_to is not None:
        out["validTo"] = isoformat(p.valid_to)
    if version == "1.6":
        out["chargingSchedule"] = schedule_to_wire(p.schedule, version)
    else:
        out["chargingSchedule"] = [
            schedule_to_wire(s, version) for s in (p.schedule, *p.extra_schedules)
        ]
    return out


def set_profile_payload(p: ChargingProfile, evse_id: int, version: str) -> dict[str, Any]:
    """The SetChargingProfile payload that sets ``p`` on ``evse_id`` over ``version``.

    Raises :class:`ProfileError` if the profile may not be set there.
    """
    validate(p, evse_id, version)
    if version == "1.6":
        return {"connectorId": evse_id, "csChargingProfiles": to_wire(p, version)}
    return {"evseId": evse_id, "chargingProfile": to_wire(p, version)}


def simple_profile(
    profile_id: int,
    purpose: Purpose,
    limit: float,
    unit: RateUnit = RateUnit.A,
    *,
    stack_level: int = 0,
    start: datetime | None = None,
    transaction_id: str | None = None,
    number_phases: int | None = None,
    min_rate: float | None = None,
) -> ChargingProfile:
    """A one-period profile: ``limit`` from ``start`` (Absolute) or from now (Relative)."""
    kind = Kind.ABSOLUTE if start is not None else Kind.RELATIVE
    return ChargingProfile(
        id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        transaction_id=transaction_id,
        schedule=Schedule(
            rate_unit=unit,
            periods=(Period(0, float(limit), number_phases),),
            start=start,
            min_rate=min_rate,
        ),
    )


def from_any_wire(d: dict[str, Any]) -> ChargingProfile:
    """Read a profile in either wire form (1.6 if it has ``chargingProfileId``)."""
    if not isinstance(d, dict):
        raise ProfileError("a charging profile must be a JSON object")
    return from_wire(d, "1.6" if "chargingProfileId" in d else "2.0.1")


def checked(d: dict[str, Any], evse_id: int, version: str) -> ChargingProfile:
    """Read a profile in either wire form and check it may be set on ``evse_id``."""
    profile = from_any_wire(d)
    validate(profile, evse_id, version)
    return profile
