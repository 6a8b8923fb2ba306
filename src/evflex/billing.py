"""Pricing a session: energy at the tariff's time-of-use prices, feed-in reward, idle fee.

Pure functions over a session's energy registers (``EnergyPoint``: a time and the
cumulative import and export registers in Wh). Energy between two readings is
spread evenly over the time between them; a period that spans a time-of-use
boundary is split at it. Feed-in is rewarded at one price. The idle time is from
the end of the last reading interval in which energy flowed to the session's end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

KWH = 1000.0
WEEK_MIN = 7 * 1440
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
#: Amounts are kept to this many decimals.
PLACES = 4


@dataclass(frozen=True, slots=True)
class EnergyPoint:
    at: datetime
    import_wh: float
    export_wh: float


@dataclass(slots=True)
class Usage:
    """How a session used its time (seconds), from its energy readings."""

    charging_s: float = 0.0
    discharging_s: float = 0.0
    idle_s: float = 0.0


@dataclass(slots=True)
class Cost:
    energy_cost: float
    feed_in_reward: float
    idle_fee: float
    total: float
    detail: list[dict] = field(default_factory=list)


def hhmm(text: str) -> int:
    """Minutes after midnight of "HH:MM" (00:00..24:00); ValueError otherwise."""
    hours, sep, minutes = text.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2 or not (hours + minutes).isdigit():
        raise ValueError(f"'{text}' is not a time HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) > 59 or value > 1440:
        raise ValueError(f"'{text}' is not a time between 00:00 and 24:00")
    return value


def week_map(windows: list[dict]) -> list[int]:
    """Each minute of the week (Monday 00:00 = 0): the index of its window, or -1.

    A window runs from ``start`` to ``end`` (an ``end`` not after ``start`` runs over
    midnight) on its ``days`` (default: every day; the day the window starts).
    ValueError names two windows that overlap or a window that is empty."""
    owner = [-1] * WEEK_MIN
    for i, w in enumerate(windows):
        start, end = hhmm(w["start"]), hhmm(w["end"])
        if start == 1440:
            raise ValueError(f"window {i + 1}: start must be before 24:00")
        length = (end - start) % 1440 or 1440
        days = w.get("days") or list(DAYS)
        for day in days:
            base = DAYS.index(day) * 1440 + start
            for m in range(base, base + length):
                m %= WEEK_MIN
                if owner[m] >= 0:
                    raise ValueError(f"windows {owner[m] + 1} and {i + 1} overlap on {day}")
                owner[m] = i
    return owner


def _minute_of_week(at: datetime, tz: ZoneInfo) -> int:
    local = at.astimezone(tz)
    return local.weekday() * 1440 + local.hour * 60 + local.minute


def _pieces(t0: datetime, t1: datetime, owner: list[int], tz: ZoneInfo):
    """(window index, share of [t0, t1]) for the parts of [t0, t1] in each window."""
    span = (t1 - t0).total_seconds()
    if span <= 0:
        yield owner[_minute_of_week(t1, tz)], 1.0
        return
    cur = t0
    while cur < t1:
        nxt = min(t1, cur.replace(second=0, microsecond=0) + timedelta(minutes=1))
        yield owner[_minute_of_week(cur, tz)], (nxt - cur).total_seconds() / span
        cur = nxt


def usage(points: list[EnergyPoint], stop: datetime) -> Usage:
    """Charging and discharging time (intervals in which a register rose) and the idle
    time after the last one (the whole session if energy never flowed)."""
    u = Usage()
    if not points:
        return u
    last_flow = points[0].at
    for a, b in zip(points, points[1:], strict=False):
        dt = (b.at - a.at).total_seconds()
        if b.import_wh > a.import_wh:
            u.charging_s += dt
        if b.export_wh > a.export_wh:
            u.discharging_s += dt
        if b.import_wh > a.import_wh or b.export_wh > a.export_wh:
            last_flow = b.at
    u.idle_s = max(0.0, (stop - last_flow).total_seconds())
    return u


def price(tariff: dict, points: list[EnergyPoint], idle_s: float) -> Cost:
    """The cost of a session's readings at ``tariff`` (a tariff snapshot, see
    :func:`evflex.store.records.tariff_snapshot`)."""
    windows = tariff.get("time_of_use") or []
    owner = week_map(windows)
    tz = ZoneInfo(tariff.get("timezone") or "UTC")
    base = float(tariff["energy_price_per_kwh"])
    per_window: dict[int, float] = {}
    for a, b in zip(points, points[1:], strict=False):
        wh = b.import_wh - a.import_wh
        if wh <= 0:
            continue
        for idx, share in _pieces(a.at, b.at, owner, tz):
            per_window[idx] = per_window.get(idx, 0.0) + wh * share
    detail = []
    energy_cost = 0.0
    for idx in sorted(per_window, key=lambda i: (i < 0, i)):
        kwh = per_window[idx] / KWH
        if idx < 0:
            rate, period = base, "base"
        else:
            w = windows[idx]
            rate = float(w["price_per_kwh"])
            period = f"{w['start']}-{w['end']}" + (
                f" {','.join(w['days'])}" if w.get("days") else ""
            )
        cost = kwh * rate
        energy_cost += cost
        detail.append(
            {"period": period, "kwh": round(kwh, PLACES), "price_per_kwh": rate,
             "cost": round(cost, PLACES)}
        )  # fmt: skip
    exported = (points[-1].export_wh - points[0].export_wh) / KWH if points else 0.0
    reward = max(0.0, exported) * float(tariff.get("feed_in_reward_per_kwh") or 0.0)
    grace = float(tariff.get("idle_grace_minutes") or 0.0)
    idle_min = max(0.0, idle_s / 60.0 - grace)
    idle_fee = idle_min * float(tariff.get("idle_fee_per_minute") or 0.0)
    total = energy_cost - reward + idle_fee
    return Cost(
        energy_cost=round(energy_cost, PLACES),
        feed_in_reward=round(reward, PLACES),
        idle_fee=round(idle_fee, PLACES),
        total=round(total, PLACES),
        detail=detail,
    )
