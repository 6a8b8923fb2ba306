"""Composite charging schedules and the set of profiles installed on a station.

:func:`composite_schedule` merges installed charging profiles into the one
piecewise-constant limit schedule an EVSE (or the whole station, EVSE 0)
executes, following OCPP 1.6 §3.13 (Smart Charging) and OCPP 2.0.1 K08
(Get Composite Schedule):

* A profile is *in force* at instant ``t`` when ``valid_from <= t < valid_to``
  (each bound only if set) and its schedule covers ``t``:

  - Absolute: from ``startSchedule`` for ``duration`` seconds (no duration:
    the last period continues indefinitely);
  - Recurring Daily / Weekly: the schedule restarts every 24 h / 7 days from
    ``startSchedule``; ``duration`` caps each repetition;
  - Relative (and a 1.6 Absolute profile without ``startSchedule``, which the
    1.6 spec defines as "relative to start of charging"): a TxProfile or
    TxDefaultProfile is anchored at ``transaction_start`` when one is given;
    every other Relative profile, and a Relative TxDefaultProfile while no
    transaction runs, is anchored at ``start`` (the start of the request).

  Before the schedule's start the profile is not in force (a Recurring
  profile does not repeat backwards either).

* Within one purpose the in-force profile with the highest stack level wins;
  when it is not in force, the next lower stack level in force applies. For
  TxDefaultProfile a profile on this EVSE beats one on EVSE 0 at the same
  stack level; an EVSE 0 TxDefaultProfile applies to every EVSE. Two profiles
  of one group at the same level (which the install rules prevent) resolve to
  the lower limit.
* A TxProfile (installed on this EVSE, with the running transaction's id or
  no id) applies only while a transaction runs (``transaction_id`` or
  ``transaction_start`` given, and not before ``transaction_start``). Where
  one is in force it replaces TxDefaultProfile.
* ChargingStationMaxProfile (EVSE 0), ChargingStationExternalConstraints on
  EVSE 0 (a station-wide limit) and ChargingStationExternalConstraints on this
  EVSE each cap the EVSE: the limit is the minimum of these winners, the
  Tx-or-TxDefault winner and the hardware limit ``max_current_a``. Groups with
  nothing in force are skipped; with nothing in force at all the hardware
  limit applies.
* The composite of EVSE 0 uses only the EVSE 0 ChargingStationMaxProfile and
  ChargingStationExternalConstraints profiles (and the hardware limit).
* Limits are converted to the result unit with the period's ``numberPhases``
  (absent: ``phases``) and ``voltage`` (OCPP 2.0.1 K01.FR.49/50). The result
  period's ``numberPhases`` is the lowest of those of the periods in force
  (absent: ``phases``), or ``phases`` when none is (OCPP 2.0.1 Edition 3
  errata 2025-09, §2.36 "3.7 Avoiding Phase Conflicts"). ``phaseToUse`` is
  kept only on 1-phase periods where the periods in force agree on it.

Results are exact: every boundary inside the window (period starts, validity
bounds, recurrences, durations, transaction start) is a breakpoint. Only
boundaries that fall between whole seconds of the window are rounded to the
nearest second; when two collapse into one second the lower limit is kept.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from evflex.clock import isoformat, parse_datetime
from evflex.smartcharging.profiles import (
    DISCHARGING_MODES,
    ChargingProfile,
    Kind,
    OperationMode,
    Period,
    ProfileError,
    Purpose,
    RateUnit,
    Recurrency,
    convert,
    validate,
)

__all__ = [
    "CompositeSchedule",
    "InstalledProfile",
    "InstalledProfiles",
    "V2xControl",
    "composite_schedule",
    "next_change",
    "period_index",
    "v2x_control",
    "validity_overlaps",
]

_US = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_US = 86_400 * _US
_WEEK_US = 7 * _DAY_US


def _us(ts: datetime) -> int:
    """Microseconds since the epoch (naive datetimes are taken as UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // timedelta(microseconds=1)


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class InstalledProfile:
    evse_id: int
    profile: ChargingProfile


# --------------------------------------------------------------------- result


@dataclass(frozen=True, slots=True)
class CompositeSchedule:
    """A composite schedule: ``periods[i]`` holds from ``start + start_s``.

    ``start_s`` values are relative to ``start``, strictly increasing, the
    first is 0; adjacent periods never have the same (limit, number_phases,
    phase_to_use) (phase_to_use is None unless a 1-phase profile sets it).
    """

    evse_id: int
    start: datetime
    duration_s: int
    rate_unit: RateUnit
    periods: tuple[Period, ...]

    def limit_at(self, t: datetime) -> float | None:
        """The limit (in ``rate_unit``) at ``t``; None outside [start, start+duration)."""
        period = self.period_at(t)
        return None if period is None else period.limit

    def period_at(self, t: datetime) -> Period | None:
        offset = (_utc(t) - self.start).total_seconds()
        if offset < 0 or offset >= self.duration_s or not self.periods:
            return None
        starts = [p.start_s for p in self.periods]
        return self.periods[bisect_right(starts, offset) - 1]

    def to_wire(self, version: str) -> dict[str, Any]:
        """The OCPP object: 1.6 GetCompositeSchedule.conf fields, 2.0.1 CompositeScheduleType.

        Limits are rounded *down* to the 0.1 resolution OCPP allows, so the
        reported schedule never exceeds the computed one. The 1.6 answer
        still needs its ``status``.
        """
        periods = [_period_to_wire(p, version) for p in self.periods]
        start = isoformat(self.start)
        if version == "1.6":
            return {
                "connectorId": self.evse_id,
                "scheduleStart": start,
                "chargingSchedule": {
                    "duration": self.duration_s,
                    "startSchedule": start,
                    "chargingRateUnit": self.rate_unit.value,
                    "chargingSchedulePeriod": periods,
                },
            }
        return {
            "evseId": self.evse_id,
            "duration": self.duration_s,
            "scheduleStart": start,
            "chargingRateUnit": self.rate_unit.value,
            "chargingSchedulePeriod": periods,
        }

    @classmethod
    def from_wire(
        cls, d: dict[str, Any], version: str, evse_id: int, *, duration_s: int | None = None
    ) -> CompositeSchedule:
        """Read a station's GetCompositeSchedule answer.

        1.6: the ``.conf`` payload (``scheduleStart`` + ``chargingSchedule``)
        or its ``chargingSchedule`` alone (then ``startSchedule`` is needed).
        2.0.1: the ``schedule`` (CompositeScheduleType). ``duration_s`` is
        used only when the answer has no duration (optional in 1.6).
        Adjacent equal periods are merged.
        """
        try:
            if version == "1.6":
                if "chargingSchedule" in d:
                    sched = d["chargingSchedule"]
                    start_text = d.get("scheduleStart") or sched.get("startSchedule")
                else:
                    sched = d
                    start_text = d.get("startSchedule") or d.get("scheduleStart")
            else:
                sched = d
                start_text = d["scheduleStart"]
            if not start_text:
                raise ProfileError("composite schedule without a start time")
            duration = sched.get("duration", duration_s)
            if duration is None:
                raise ProfileError("composite schedule without a duration")
            periods = [
                Period(
                    start_s=int(x["startPeriod"]),
                    limit=float(x["limit"]),
                    number_phases=None if x.get("numberPhases") is None else int(x["numberPhases"]),
                    phase_to_use=None if x.get("phaseToUse") is None else int(x["phaseToUse"]),
                )
                for x in sched["chargingSchedulePeriod"]
            ]
            unit = RateUnit(sched["chargingRateUnit"])
            start = parse_datetime(start_text)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, ProfileError):
                raise
            raise ProfileError(f"malformed composite schedule: {exc!r}") from exc
        if not periods or periods[0].start_s != 0:
            raise ProfileError("a composite schedule must start with a period at 0")
        if any(b.start_s <= a.start_s for a, b in zip(periods, periods[1:], strict=False)):
            raise ProfileError("composite startPeriod values must be strictly increasing")
        return cls(evse_id, start, int(duration), unit, _merge(periods))


def _wire_limit(limit: float) -> float:
    # Round down to 0.1 (the tiny epsilon keeps e.g. 0.3 from becoming 0.2).
    return math.floor(limit * 10 + 1e-6) / 10


def _period_to_wire(p: Period, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"startPeriod": p.start_s, "limit": _wire_limit(p.limit)}
    if p.number_phases is not None:
        out["numberPhases"] = p.number_phases
    if p.phase_to_use is not None and version != "1.6":
        out["phaseToUse"] = p.phase_to_use
    return out


def _merge(periods: Iterable[Period]) -> tuple[Period, ...]:
    out: list[Period] = []
    for p in periods:
        if out and (out[-1].limit, out[-1].number_phases, out[-1].phase_to_use) == (
            p.limit,
            p.number_phases,
            p.phase_to_use,
        ):
            continue
        out.append(p)
    return tuple(out)


# --------------------------------------------------------------------- sources

# Groups that each contribute one winner per instant. "tx" replaces "txdefault".
_MAX, _EXT_STATION, _EXT_EVSE, _TX, _TX_DEFAULT = "max", "ext0", "ext", "tx", "txdefault"


@dataclass(frozen=True, slots=True)
class _Source:
    """One installed profile, prepared for evaluation (all times in µs since the epoch)."""

    group: str
    rank: tuple[int, int]  # (stack level, 1 if installed on the requested EVSE)
    profile: ChargingProfile
    origin: int  # where the schedule's offset 0 lies
    cycle: int | None  # recurrence length, None if not Recurring
    duration: int | None
    offsets: tuple[int, ...]  # period starts
    valid_from: int | None
    valid_to: int | None
    not_before: int | None  # a TxProfile does not apply before its transaction starts

    def period_at(self, t: int) -> Period | None:
        if self.valid_from is not None and t < self.valid_from:
            return None
        if self.valid_to is not None and t >= self.valid_to:
            return None
        if self.not_before is not None and t < self.not_before:
            return None
        offset = t - self.origin
        if offset < 0:
            return None
        if self.cycle is not None:
            offset %= self.cycle
        if self.duration is not None and offset >= self.duration:
            return None
        return self.profile.schedule.periods[bisect_right(self.offsets, offset) - 1]

    def breakpoints(self, lo: int, hi: int) -> Iterator[int]:
        """Every instant in (lo, hi) at which :meth:`period_at` may change."""
        points: list[int] = [
            x for x in (self.valid_from, self.valid_to, self.not_before) if x is not None
        ]
        if self.cycle is None:
            points.extend(self.origin + o for o in self.offsets)
            if self.duration is not None:
                points.append(self.origin + self.duration)
        else:
            first = max(0, (lo - self.origin) // self.cycle)
            last = (hi - self.origin) // self.cycle
            for k in range(first, last + 1):
                base = self.origin + k * self.cycle
                points.extend(base + o for o in self.offsets)
                if self.duration is not None and self.duration < self.cycle:
                    points.append(base + self.duration)
        return (x for x in points if lo < x < hi)


def _group(item: InstalledProfile, evse_id: int, priority: bool = False) -> str | None:
    purpose, on = item.profile.purpose, item.evse_id
    if purpose is Purpose.LOCAL_GENERATION:
        return None
    if priority and purpose in (Purpose.TX, Purpose.TX_DEFAULT):
        return None  # 2.1 priority charging sets the transaction's profiles aside
    if purpose is Purpose.PRIORITY:
        return _TX if priority and evse_id != 0 and on in (0, evse_id) else None
    if purpose is Purpose.STATION_MAX:
        return _MAX if on == 0 else None
    if purpose is Purpose.EXTERNAL:
        if on == 0:
            return _EXT_STATION
        return _EXT_EVSE if on == evse_id else None
    if evse_id == 0:
        return None
    if purpose is Purpose.TX_DEFAULT:
        return _TX_DEFAULT if on in (0, evse_id) else None
    return _TX if on == evse_id else None


def _sources(
    installed: Iterable[InstalledProfile],
    evse_id: int,
    start_us: int,
    transaction_id: str | None,
    transaction_start: datetime | None,
    priority: bool = False,
) -> list[_Source]:
    running = transaction_id is not None or transaction_start is not None
    tx_start = None if transaction_start is None else _us(transaction_start)
    out: list[_Source] = []
    for item in installed:
        group = _group(item, evse_id, priority)
        if group is None:
            continue
        p, s = item.profile, item.profile.schedule
        if group == _TX and p.purpose is Purpose.TX:
            if not running:
                continue
            if p.transaction_id is not None and p.transaction_id != transaction_id:
                continue
        if p.kind is Kind.RELATIVE or s.start is None:
            if group in (_TX, _TX_DEFAULT) and tx_start is not None:
                origin = tx_start
            else:
                origin = start_us
        else:
            origin = _us(s.start)
        cycle = None
        if p.kind is Kind.RECURRING:
            cycle = _WEEK_US if p.recurrency is Recurrency.WEEKLY else _DAY_US
        out.append(
            _Source(
                group=group,
                rank=(p.stack_level, int(item.evse_id == evse_id)),
                profile=p,
                origin=origin,
                cycle=cycle,
                duration=None if s.duration_s is None else int(s.duration_s) * _US,
                offsets=tuple(period.start_s * _US for period in s.periods),
                valid_from=None if p.valid_from is None else _us(p.valid_from),
                valid_to=None if p.valid_to is None else _us(p.valid_to),
                not_before=tx_start if group == _TX else None,
            )
        )
    return out


def _effective_limit(period: Period, unit: RateUnit) -> float:
    """A period's limit as one value: with OCPP 2.1 per-phase limits (``limit_L2/L3``)
    ``limit`` is that of L1; in W the phases add up, in A the lowest phase current binds."""
    if period.limit_l23 is None:
        return period.limit
    if unit is RateUnit.W:
        return period.limit + period.limit_l23[0] + period.limit_l23[1]
    return min(period.limit, *period.limit_l23)


@dataclass(frozen=True, slots=True)
class _Evaluator:
    sources: list[_Source]
    unit: RateUnit
    voltage: float
    phases: int
    max_current_a: float

    def winners(self, t: int) -> dict[str, tuple[_Source, Period, float, int]]:
        """Per group: the winning source, its period, its limit in ``unit`` and its phases."""
        best: dict[str, tuple[tuple[int, int, float], _Source, Period, float, int]] = {}
        for src in self.sources:
            period = src.period_at(t)
            if period is None:
                continue
            n = period.number_phases or self.phases
            limit = convert(
                _effective_limit(period, src.profile.schedule.rate_unit),
                src.profile.schedule.rate_unit,
                self.unit,
                n,
                self.voltage,
            )
            key = (*src.rank, -limit)
            current = best.get(src.group)
            if current is None or key > current[0]:
                best[src.group] = (key, src, period, limit, n)
        if _TX in best:
            best.pop(_TX_DEFAULT, None)
        return {g: (src, period, limit, n) for g, (_, src, period, limit, n) in best.items()}

    def at(self, t: int) -> Period:
        """The composite limit at ``t`` as a period (``start_s`` left 0)."""
        winners = self.winners(t)
        n = min((w[3] for w in winners.values()), default=self.phases)
        cap = convert(self.max_current_a, RateUnit.A, self.unit, n, self.voltage)
        limit = min([cap, *(w[2] for w in winners.values())])
        phase_to_use = None
        if n == 1:
            chosen = {
                w[1].phase_to_use
                for w in winners.values()
                if w[1].number_phases == 1 and w[1].phase_to_use is not None
            }
            if len(chosen) == 1:
                phase_to_use = chosen.pop()
        return Period(0, limit, n, phase_to_use)


def composite_schedule(
    installed: Iterable[InstalledProfile],
    evse_id: int,
    start: datetime,
    duration_s: int,
    rate_unit: RateUnit | None = None,
    *,
    transaction_id: str | None = None,
    transaction_start: datetime | None = None,
    voltage: float = 230.0,
    phases: int = 3,
    max_current_a: float = 32.0,
    priority_charging: bool = False,
) -> CompositeSchedule:
    """The composite schedule of ``evse_id`` over [start, start + duration_s).

    ``rate_unit`` None means A. ``transaction_id`` / ``transaction_start``
    describe the EVSE's running transaction (both None: idle). ``phases`` is
    used for A<->W conversion where a period has no numberPhases, and
    ``max_current_a`` (per phase) is the limit where no profile applies and a
    cap everywhere. See the module docstring for the rules.
    """
    if duration_s < 0:
        raise ValueError("duration must not be negative")
    if evse_id < 0:
        raise ValueError("evse id must not be negative")
    unit = RateUnit.A if rate_unit is None else RateUnit(rate_unit)
    start = _utc(start)
    lo = _us(start)
    hi = lo + int(duration_s) * _US
    sources = _sources(installed, evse_id, lo, transaction_id, transaction_start, priority_charging)
    evaluator = _Evaluator(sources, unit, float(voltage), int(phases), float(max_current_a))

    instants = sorted({lo, *(x for src in sources for x in src.breakpoints(lo, hi))})
    by_second: dict[int, Period] = {}
    for t in instants:
        second = (t - lo + _US // 2) // _US
        if second >= duration_s and second > 0:
            continue
        period = evaluator.at(t)
        previous = by_second.get(second)
        if previous is None or period.limit < previous.limit:
            by_second[second] = Period(
                second, period.limit, period.number_phases, period.phase_to_use
            )
    periods = _merge(by_second[s] for s in sorted(by_second))
    return CompositeSchedule(evse_id, start, int(duration_s), unit, periods)


# --------------------------------------------------------------------- V2X


@dataclass(frozen=True, slots=True)
class V2xControl:
    """What an EVSE is told to do at one instant under OCPP 2.1 (powers in W).

    ``period`` is the winning TxProfile / TxDefaultProfile (or PriorityCharging)
    period with its V2X fields, ``None`` where no such profile is in force;
    ``unit`` is its schedule's rate unit. ``charge_limit_w`` is the composite
    limit; ``discharge_limit_w`` the largest discharge power every profile in
    force allows (0 unless the mode may discharge).
    """

    mode: OperationMode
    period: Period | None
    unit: RateUnit
    charge_limit_w: float
    discharge_limit_w: float

    def to_w(self, value: float, phases: int, voltage: float) -> float:
        return convert(value, self.unit, RateUnit.W, phases, voltage)


def v2x_control(
    installed: Iterable[InstalledProfile],
    evse_id: int,
    at: datetime,
    *,
    transaction_id: str | None = None,
    transaction_start: datetime | None = None,
    voltage: float = 230.0,
    phases: int = 3,
    max_current_a: float = 32.0,
    priority_charging: bool = False,
) -> V2xControl:
    """The operation mode, setpoint source and both limits of ``evse_id`` at ``at``."""
    t = _us(_utc(at))
    sources = _sources(installed, evse_id, t, transaction_id, transaction_start, priority_charging)
    evaluator = _Evaluator(sources, RateUnit.W, float(voltage), int(phases), float(max_current_a))
    winners = evaluator.winners(t)
    charge = evaluator.at(t)
    assert charge.number_phases is not None  # at() always names the phases
    hardware_w = convert(max_current_a, RateUnit.A, RateUnit.W, charge.number_phases, voltage)
    tx = winners.get(_TX) or winners.get(_TX_DEFAULT)
    period = tx[1] if tx is not None else None
    unit = tx[0].profile.schedule.rate_unit if tx is not None else RateUnit.W
    mode = period.mode if period is not None else OperationMode.CHARGING_ONLY
    discharge = 0.0
    if mode in DISCHARGING_MODES:
        discharge = hardware_w
        for src, p, _limit, n in winners.values():
            total = p.total("discharge_limit")
            if total is not None:
                bound = convert(-total, src.profile.schedule.rate_unit, RateUnit.W, n, voltage)
                discharge = min(discharge, bound)
    return V2xControl(mode, period, unit, charge.limit, max(0.0, discharge))


def next_change(
    installed: Iterable[InstalledProfile],
    evse_id: int,
    at: datetime,
    horizon_s: float,
    *,
    transaction_id: str | None = None,
    transaction_start: datetime | None = None,
    priority_charging: bool = False,
) -> datetime | None:
    """The first instant in (at, at + horizon_s) where a profile of ``evse_id`` may change.

    Every period start, validity bound, recurrence, duration end and the
    transaction start counts, also where the composite limit stays the same
    (an OCPP 2.1 period may change only its setpoint or operation mode).
    """
    lo = _us(_utc(at))
    hi = lo + int(horizon_s * _US)
    sources = _sources(installed, evse_id, lo, transaction_id, transaction_start, priority_charging)
    points = [x for src in sources for x in src.breakpoints(lo, hi)]
    return _EPOCH + timedelta(microseconds=min(points)) if points else None


def period_index(
    item: InstalledProfile,
    evse_id: int,
    at: datetime,
    *,
    transaction_id: str | None = None,
    transaction_start: datetime | None = None,
) -> int | None:
    """Index of the period of ``item``'s first schedule in force on ``evse_id`` at ``at``.

    None when the profile is not in force there and then.
    """
    t = _us(_utc(at))
    priority = item.profile.purpose is Purpose.PRIORITY
    for src in _sources([item], evse_id, t, transaction_id, transaction_start, priority):
        period = src.period_at(t)
        if period is not None:
            periods = src.profile.schedule.periods
            return next(i for i, p in enumerate(periods) if p is period)
    return None


# --------------------------------------------------------------------- installed set


def validity_overlaps(a: ChargingProfile, b: ChargingProfile) -> bool:
    """Whether the [validFrom, validTo) periods of two profiles overlap (unset = unbounded)."""
    a_from = a.valid_from or datetime.min.replace(tzinfo=UTC)
    b_from = b.valid_from or datetime.min.replace(tzinfo=UTC)
    a_to = a.valid_to or datetime.max.replace(tzinfo=UTC)
    b_to = b.valid_to or datetime.max.replace(tzinfo=UTC)
    return _utc(a_from) < _utc(b_to) and _utc(b_from) < _utc(a_to)


class InstalledProfiles:
    """The set of profiles installed on one station, with the OCPP replace/clear rules."""

    def __init__(self, items: Iterable[InstalledProfile] = ()) -> None:
        self._items: list[InstalledProfile] = list(items)

    def __iter__(self) -> Iterator[InstalledProfile]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"InstalledProfiles({self._items!r})"

    def get(self, profile_id: int) -> InstalledProfile | None:
        return next((i for i in self._items if i.profile.id == profile_id), None)

    def install(
        self,
        evse_id: int,
        profile: ChargingProfile,
        version: str = "2.0.1",
        *,
        transaction_id: str | None = None,
    ) -> list[int]:
        """Install ``profile`` on ``evse_id``; return the ids of the profiles it replaced.

        ``transaction_id`` is the EVSE's running transaction (None: idle).
        Raises :class:`ProfileError` (answer Rejected) when the profile is
        invalid, when it is a TxProfile and no transaction runs on the EVSE
        (1.6 §3.13.1, 2.0.1 K01.FR.09) or the profile names another
        transaction (K01.FR.33), and in 2.0.1 when another profile (different
        id) has the same stack level, purpose and EVSE with an overlapping
        validity period (K01.FR.06), or for a TxProfile the same stack level
        and transaction (K01.FR.39).

        Replaced: a profile with the same id anywhere on the station (1.6
        SetChargingProfile, 2.0.1 K01.FR.05) and, in 1.6, one with the same
        stack level, purpose and EVSE (for a TxProfile: and transaction)
        (1.6 §3.13.2).
        """
        validate(profile, evse_id, version)
        if profile.purpose is Purpose.TX:
            if transaction_id is None:
                raise ProfileError(f"no transaction is running on evse {evse_id}")
            if profile.transaction_id is not None and profile.transaction_id != transaction_id:
                raise ProfileError(
                    f"transaction {profile.transaction_id} is not running on evse {evse_id}"
                )
        replaced: list[InstalledProfile] = []
        for item in self._items:
            other = item.profile
            if other.id == profile.id:
                replaced.append(item)
                continue
            if other.purpose is not profile.purpose or other.stack_level != profile.stack_level:
                continue
            if item.evse_id != evse_id:
                continue
            same_tx = other.transaction_id == profile.transaction_id
            if version == "1.6":
                if profile.purpose is not Purpose.TX or same_tx:
                    replaced.append(item)
            elif profile.purpose is Purpose.TX:
                if same_tx:
                    raise ProfileError(
                        f"TxProfile {other.id} already has stackLevel {profile.stack_level}"
                        " for this transaction"
                    )
            elif validity_overlaps(other, profile):
                raise ProfileError(
                    f"profile {other.id} has the same stackLevel, purpose and evse"
                    " with an overlapping validity period"
                )
        gone = {id(i) for i in replaced}
        self._items = [i for i in self._items if id(i) not in gone]
        self._items.append(InstalledProfile(evse_id, profile))
        return [i.profile.id for i in replaced]

    def clear(
        self,
        *,
        profile_id: int | None = None,
        evse_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> list[int]:
        """Remove the profiles matching all given criteria (none given: all); return their ids."""
        removed = self.select(
            evse_id=evse_id,
            purpose=purpose,
            stack_level=stack_level,
            ids=None if profile_id is None else [profile_id],
        )
        gone = {id(i) for i in removed}
        self._items = [i for i in self._items if id(i) not in gone]
        return [i.profile.id for i in removed]

    def clear_transaction(self, evse_id: int) -> list[int]:
        """Drop the TxProfiles of ``evse_id``: a TxProfile lives only as long as its transaction."""
        return self.clear(evse_id=evse_id, purpose=Purpose.TX)

    def select(
        self,
        *,
        evse_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
        ids: Iterable[int] | None = None,
    ) -> list[InstalledProfile]:
        """The installed profiles matching all given criteria (GetChargingProfiles)."""
        wanted = None if ids is None else set(ids)
        return [
            i
            for i in self._items
            if (evse_id is None or i.evse_id == evse_id)
            and (purpose is None or i.profile.purpose is Purpose(purpose))
            and (stack_level is None or i.profile.stack_level == stack_level)
            and (wanted is None or i.profile.id in wanted)
        ]

    def composite(
        self,
        evse_id: int,
        start: datetime,
        duration_s: int,
        rate_unit: RateUnit | None = None,
        **kw: Any,
    ) -> CompositeSchedule:
        """:func:`composite_schedule` over the installed profiles."""
        return composite_schedule(self._items, evse_id, start, duration_s, rate_unit, **kw)

    def v2x(self, evse_id: int, at: datetime, **kw: Any) -> V2xControl:
        """:func:`v2x_control` over the installed profiles."""
        return v2x_control(self._items, evse_id, at, **kw)

    def next_change(
        self, evse_id: int, at: datetime, horizon_s: float, **kw: Any
    ) -> datetime | None:
        """:func:`next_change` over the installed profiles."""
        return next_change(self._items, evse_id, at, horizon_s, **kw)
