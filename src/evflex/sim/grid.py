"""The grid at a simulated station: frequency, voltage and the building's own load.

A station reads these through ``SimStation.grid_frequency_hz()``,
``grid_voltage_v()`` and ``building_load_w()``; without an attached
:class:`Grid` / :class:`BuildingMeter` they return nominal values (and 0 W).

Signals are functions of the (simulation) time, so that any number of
stations can share one grid and read it at arbitrary instants:

* :class:`OuSignal`: a seeded Ornstein–Uhlenbeck process around a nominal
  value (sampled once per ``step_s`` and linearly interpolated), optionally
  with sudden step events that decay back (a power plant tripping: the
  frequency drops by 100–200 mHz and recovers within a minute or two);
* :class:`TableSignal`: points from a list or a CSV file, linearly
  interpolated, optionally repeating;
* :class:`ConstantSignal`.

:meth:`Grid.synthetic` gives a realistic Continental Europe trace: 50 Hz with
σ ≈ 30 mHz and a correlation time of about two minutes, a few frequency
events per day, and 230 V ± ~1.5 % (clipped to the EN 50160 band of ±10 %).
"""

from __future__ import annotations

import csv
import math
import random
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

NOMINAL_FREQUENCY_HZ = 50.0
NOMINAL_VOLTAGE_V = 230.0


class Signal(Protocol):
    """A value that depends on time."""

    def at(self, t: datetime) -> float: ...


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass(frozen=True)
class ConstantSignal:
    value: float

    def at(self, t: datetime) -> float:
        return self.value


@dataclass
class OuSignal:
    """Ornstein–Uhlenbeck noise around ``nominal`` with decaying step events.

    ``sigma`` is the stationary standard deviation and ``tau_s`` the
    correlation time of the noise. Step events arrive as a Poisson process
    (``events_per_hour``) with a size drawn uniformly from ``event_size``
    (signed), and decay exponentially with ``event_recovery_s``. Values are
    clipped to [``low``, ``high``]. The trace starts at ``start``; before it
    the first value holds. Same seed, same trace. Only the last ``keep_s``
    seconds before the latest instant read are kept (older reads get the
    oldest value kept).
    """

    nominal: float
    sigma: float
    tau_s: float
    seed: int | str = 0
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    step_s: float = 1.0
    events_per_hour: float = 0.0
    event_size: tuple[float, float] = (0.0, 0.0)
    event_recovery_s: float = 60.0
    low: float = -math.inf
    high: float = math.inf
    keep_s: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.sigma < 0 or self.tau_s <= 0 or self.step_s <= 0:
            raise ValueError("sigma must not be negative; tau_s and step_s must be positive")
        if self.events_per_hour < 0 or self.event_recovery_s <= 0:
            raise ValueError("events_per_hour must not be negative, event_recovery_s positive")
        self.start = _utc(self.start)
        self._rng = random.Random(f"ou:{self.seed}")
        self._decay = math.exp(-self.step_s / self.tau_s)
        self._noise = self.sigma * math.sqrt(1.0 - self._decay**2)
        self._event_decay = math.exp(-self.step_s / self.event_recovery_s)
        self._event_p = 1.0 - math.exp(-self.events_per_hour * self.step_s / 3600.0)
        self._x = self._rng.gauss(0.0, self.sigma)  # start in the stationary distribution
        self._event = 0.0
        self._values: list[float] = [self._value()]
        self._base = 0  # index of _values[0]
        self._keep = max(2, int(self.keep_s / self.step_s))

    def _value(self) -> float:
        return min(self.high, max(self.low, self.nominal + self._x + self._event))

    def _extend(self, index: int) -> None:
        rng = self._rng
        while self._base + len(self._values) <= index:
            self._x = self._x * self._decay + self._noise * rng.gauss(0.0, 1.0)
            self._event *= self._event_decay
            if self._event_p > 0 and rng.random() < self._event_p:
                self._event += rng.uniform(*self.event_size)
            self._values.append(self._value())
        if len(self._values) > 2 * self._keep:
            drop = len(self._values) - self._keep
            del self._values[:drop]
            self._base += drop

    def at(self, t: datetime) -> float:
        offset = (_utc(t) - self.start).total_seconds() / self.step_s
        if offset <= 0:
            offset = 0.0
        i = int(offset)
        self._extend(i + 1)
        if i < self._base:
            return self._values[0]
        a, b = self._values[i - self._base], self._values[i + 1 - self._base]
        return a + (b - a) * (offset - i)


@dataclass
class TableSignal:
    """Linear interpolation between (seconds from ``start``, value) points.

    Before the first point the first value holds, after the last the last one
    (or, with ``repeat``, the table starts over after its last point).
    """

    points: Sequence[tuple[float, float]]
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    repeat: bool = False

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a table signal needs at least one point")
        self.points = sorted((float(x), float(y)) for x, y in self.points)
        self.start = _utc(self.start)
        self._xs = [x for x, _ in self.points]

    def at(self, t: datetime) -> float:
        x = (_utc(t) - self.start).total_seconds()
        first, last = self._xs[0], self._xs[-1]
        if self.repeat and last > first and x > last:
            x = first + (x - first) % (last - first)
        i = bisect_right(self._xs, x)
        if i == 0:
            return self.points[0][1]
        if i >= len(self.points):
            return self.points[-1][1]
        (x0, y0), (x1, y1) = self.points[i - 1], self.points[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        column: str | int = 1,
        *,
        start: datetime | None = None,
        repeat: bool = False,
    ) -> TableSignal:
        """Read a CSV file with a header row: time in column 0, values in ``column``.

        Times are seconds from the first row, or ISO 8601 timestamps (then the
        first timestamp becomes ``start`` unless one is given).
        """
        with Path(path).open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.reader(fh) if r and not r[0].lstrip().startswith("#")]
        if len(rows) < 2:
            raise ValueError(f"{path}: a header and at least one row are needed")
        header, body = rows[0], rows[1:]
        index = header.index(column) if isinstance(column, str) else column
        times: list[float] = []
        anchor: datetime | None = None
        for row in body:
            text = row[0].strip()
            try:
                times.append(float(text))
            except ValueError:
                ts = _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
                anchor = anchor or ts
                times.append((ts - anchor).total_seconds())
        values = [float(r[index]) for r in body]
        origin = start or anchor or datetime.now(UTC)
        return cls(list(zip(times, values, strict=True)), start=origin, repeat=repeat)


class Grid:
    """Frequency and voltage at the grid connection (shared by any number of stations)."""

    def __init__(
        self,
        frequency: Signal | None = None,
        voltage: Signal | None = None,
        *,
        nominal_hz: float = NOMINAL_FREQUENCY_HZ,
        nominal_v: float = NOMINAL_VOLTAGE_V,
    ) -> None:
        self.nominal_hz = nominal_hz
        self.nominal_v = nominal_v
        self.frequency: Signal = frequency or ConstantSignal(nominal_hz)
        self.voltage: Signal = voltage or ConstantSignal(nominal_v)

    def frequency_hz(self, t: datetime) -> float:
        return self.frequency.at(t)

    def voltage_v(self, t: datetime) -> float:
        return self.voltage.at(t)

    @classmethod
    def synthetic(
        cls,
        seed: int | str = 0,
        start: datetime | None = None,
        *,
        nominal_hz: float = NOMINAL_FREQUENCY_HZ,
        nominal_v: float = NOMINAL_VOLTAGE_V,
        sigma_hz: float = 0.03,
        tau_s: float = 120.0,
        events_per_day: float = 4.0,
        sigma_v_pct: float = 1.5,
        tau_v_s: float = 600.0,
    ) -> Grid:
        """A seeded, realistic trace (see the module docstring)."""
        origin = start or datetime.now(UTC)
        frequency = OuSignal(
            nominal_hz,
            sigma_hz,
            tau_s,
            seed=f"{seed}:f",
            start=origin,
            events_per_hour=events_per_day / 24.0,
            event_size=(-0.2, -0.1),
            event_recovery_s=60.0,
            low=nominal_hz - 1.0,
            high=nominal_hz + 1.0,
        )
        voltage = OuSignal(
            nominal_v,
            nominal_v * sigma_v_pct / 100.0,
            tau_v_s,
            seed=f"{seed}:v",
            start=origin,
            step_s=5.0,
            low=nominal_v * 0.9,
            high=nominal_v * 1.1,
        )
        return cls(frequency, voltage, nominal_hz=nominal_hz, nominal_v=nominal_v)

    @classmethod
    def from_csv(
        cls,
        frequency_csv: str | Path | None = None,
        voltage_csv: str | Path | None = None,
        *,
        start: datetime | None = None,
        repeat: bool = True,
        nominal_hz: float = NOMINAL_FREQUENCY_HZ,
        nominal_v: float = NOMINAL_VOLTAGE_V,
    ) -> Grid:
        """Traces from CSV files (see :meth:`TableSignal.from_csv`); missing ones are nominal."""
        freq = (
            TableSignal.from_csv(frequency_csv, start=start, repeat=repeat)
            if frequency_csv
            else None
        )
        volt = (
            TableSignal.from_csv(voltage_csv, start=start, repeat=repeat) if voltage_csv else None
        )
        return cls(freq, volt, nominal_hz=nominal_hz, nominal_v=nominal_v)


#: A building's base load over the day in W (hourly, 00:00 .. 23:00 UTC): a small
#: office / apartment block with a morning ramp, a midday plateau and an evening peak.
DEFAULT_DAY_PROFILE_W: tuple[float, ...] = (
    4_000, 3_500, 3_200, 3_000, 3_000, 3_500, 5_500, 8_000,
    10_000, 11_000, 11_500, 12_000, 12_000, 11_500, 11_000, 11_000,
    11_500, 13_000, 15_000, 14_000, 11_000, 8_000, 6_000, 4_500,
)  # fmt: skip


class BuildingMeter:
    """The building's own load at the grid connection, without the EVSEs (W).

    By default a daily profile (``day_profile_w``, hourly points interpolated
    linearly) times ``scale``, plus seeded noise of ``noise_w`` (σ); negative
    values mean the building exports (e.g. solar). :meth:`set_load_w` pins the
    load to a fixed value (None: back to the profile); ``signal`` replaces the
    profile altogether.
    """

    def __init__(
        self,
        day_profile_w: Sequence[float] = DEFAULT_DAY_PROFILE_W,
        *,
        scale: float = 1.0,
        noise_w: float = 0.0,
        seed: int | str = 0,
        signal: Signal | None = None,
        load_w: float | None = None,
    ) -> None:
        if not day_profile_w:
            raise ValueError("the day profile needs at least one value")
        self.day_profile_w = tuple(float(x) for x in day_profile_w)
        self.scale = scale
        self.signal = signal
        self._fixed = load_w
        self._noise_w = noise_w
        self._seed = seed
        self._noise: OuSignal | None = None

    def set_load_w(self, watts: float | None) -> None:
        """Pin the building's load (None: follow the profile again)."""
        self._fixed = None if watts is None else float(watts)

    def load_w(self, t: datetime) -> float:
        if self._fixed is not None:
            return self._fixed
        if self.signal is not None:
            base = self.signal.at(t)
        else:
            t = _utc(t)
            n = len(self.day_profile_w)
            hours = (t.hour + t.minute / 60.0 + t.second / 3600.0) * n / 24.0
            i = int(hours) % n
            frac = hours - int(hours)
            a, b = self.day_profile_w[i], self.day_profile_w[(i + 1) % n]
            base = (a + (b - a) * frac) * self.scale
        if self._noise_w > 0:
            if self._noise is None:  # starts where it is first read
                self._noise = OuSignal(0.0, self._noise_w, 300.0, seed=f"{self._seed}:b", start=t)
            base += self._noise.at(t)
        return base
