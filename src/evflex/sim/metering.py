"""Metering of a simulated station: energy integration, samples, meter loops."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from evflex.clock import isoformat
from evflex.sim.model import (
    CURRENT,
    CURRENT_OFFERED,
    ENERGY,
    FREQUENCY,
    POWER,
    POWER_OFFERED,
    SOC,
    VOLTAGE,
    EvseState,
)


@dataclass
class Sample:
    """One sampled meter value, independent of the OCPP version."""

    measurand: str
    value: float
    unit: str | None
    phase: str | None = None
    location: str = "Outlet"


#: A meter loop further behind than this many intervals starts again from now.
MAX_SAMPLES_OWED = 10


class Metering:
    """The meter side of :class:`~evflex.sim.station.SimStation` (mixed into it)."""

    def _used_phases(self, evse: EvseState) -> int:
        if evse.ev is None:
            return self.spec.phases
        return max(1, min(evse.ev.spec.phases, self.spec.phases))

    def offered_w(self, evse: EvseState) -> float:
        """Power the EVSE offers: its limit, capped by the phases the vehicle uses."""
        hardware = self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage
        return max(0.0, min(evse.limit_w, hardware))

    def advance(self, evse: EvseState, now: datetime | None = None) -> None:
        """Integrate the energy drawn by the plugged-in vehicle up to ``now``."""
        now = now or self.clock.now()
        last = evse.last_update or now
        seconds = max(0.0, (now - last).total_seconds())
        evse.last_update = max(now, last)
        if evse.tx is None or evse.ev is None or not evse.tx.authorized:
            evse.power_w = 0.0
            return
        offered = self.offered_w(evse)
        if seconds > 0:
            energy = evse.ev.charge(seconds, offered)
            if energy > 0:
                evse.meter_wh += energy
                evse.session_energy_wh += energy
                self.stats.energy_wh += energy
                evse.tx.charging_s += seconds
        evse.power_w = evse.ev.accepted_power_w(offered)

    def meter_value(
        self, evse: EvseState, measurands: list[str], context: str, ts: datetime | None = None
    ) -> dict[str, Any] | None:
        """A MeterValue of ``evse`` at ``ts`` (default: now); None with nothing to sample.

        The codec writes each sample in its version's form (``_sampled_value``).
        """
        samples = self.samples(evse, measurands)
        if not samples:
            return None
        return {
            "timestamp": isoformat(ts or self.now()),
            "sampled_value": [self._sampled_value(s, context) for s in samples],
        }

    def samples(self, evse: EvseState, measurands: list[str]) -> list[Sample]:
        """Sample the meter of ``evse`` for the given measurands."""
        out: list[Sample] = []
        volts = self.spec.voltage
        phases = self._used_phases(evse)
        for measurand in measurands:
            if measurand == ENERGY:
                out.append(Sample(ENERGY, round(evse.meter_wh), "Wh"))
            elif measurand == POWER:
                out.append(Sample(POWER, round(evse.power_w, 1), "W"))
            elif measurand == CURRENT:
                amps = round(evse.power_w / (phases * volts), 2) if volts else 0.0
                for n in range(1, phases + 1):
                    out.append(Sample(CURRENT, amps, "A", f"L{n}"))
            elif measurand == VOLTAGE:
                measured = self.grid_voltage_v()
                for n in range(1, self.spec.phases + 1):
                    out.append(Sample(VOLTAGE, round(measured, 1), "V", f"L{n}-N"))
            elif measurand == SOC:
                if evse.ev is not None:
                    out.append(Sample(SOC, round(evse.ev.soc * 100.0, 1), "Percent", location="EV"))
            elif measurand == FREQUENCY:
                out.append(Sample(FREQUENCY, round(self.grid_frequency_hz(), 3), "Hz"))
            elif measurand == POWER_OFFERED:
                out.append(Sample(POWER_OFFERED, round(self.offered_w(evse), 1), "W"))
            elif measurand == CURRENT_OFFERED:
                amps = self.offered_w(evse) / (phases * volts) if volts else 0.0
                out.append(Sample(CURRENT_OFFERED, round(amps, 2), "A"))
        return out

    # ------------------------------------------------------------------ meter loops

    def start_meter_loop(self, evse: EvseState) -> None:
        self.stop_meter_loop(evse)
        evse.meter_task = asyncio.create_task(self._meter_loop(evse))

    def stop_meter_loop(self, evse: EvseState) -> None:
        task = evse.meter_task
        evse.meter_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def restart_meter_loops(self) -> None:
        for evse in self.evses.values():
            if evse.meter_task is not None:
                self.start_meter_loop(evse)

    async def _meter_loop(self, evse: EvseState) -> None:
        """Sample ``evse`` every sample interval of the station's clock.

        Each sample is taken and stamped at its boundary on the station's clock,
        whenever the task gets to run: a loop that wakes late (a busy event loop
        on an accelerated clock) still samples at the configured pace and takes
        the samples it owes. Only when it is more than ``MAX_SAMPLES_OWED``
        intervals behind (the clock was set forward) does it start again from now.
        """
        due = self.clock.now()
        while evse.tx is not None:
            interval = self._meter_interval()
            # Without periodic samples, still look at the vehicle once a minute.
            step = interval if interval > 0 else 60.0
            due += timedelta(seconds=step)
            now = self.clock.now()
            if (now - due).total_seconds() > MAX_SAMPLES_OWED * step:
                due = now
            if due > now:
                await self.clock.sleep((due - now).total_seconds())
            if evse.tx is None:
                return
            self.advance(evse, due)
            await self._check_charging_state(evse)
            if interval > 0 and evse.tx is not None:
                await self._periodic_sample(evse, due)

    def _restart_aligned_loop(self) -> None:
        if self._aligned_task is not None:
            self._aligned_task.cancel()
            self._aligned_task = None
        if self._started and not self._stopping:
            self._aligned_task = asyncio.create_task(self._aligned_loop())

    async def _aligned_loop(self) -> None:
        while True:
            interval = self._aligned_interval()
            if interval <= 0:
                return
            now = self.clock.now()
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
            elapsed = (now - midnight).total_seconds()
            next_at = midnight + timedelta(seconds=(math.floor(elapsed / interval) + 1) * interval)
            await self.clock.sleep((next_at - now).total_seconds())
            for evse in self.evses.values():
                self.advance(evse)
                await self._aligned_sample(evse, next_at)
