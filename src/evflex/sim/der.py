"""DER controls of a simulated OCPP 2.1 station (SetDERControl, VoltVar, LimitMaxDischarge).

The station keeps the controls, knows which one of each type is in force and
starts and stops them on time; what it tells the CSMS about it
(NotifyDERStartStop) is the codec's (:meth:`DerControls._der_started`,
:meth:`DerControls._der_stopped`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from evflex.clock import parse_datetime
from evflex.sim.model import (
    EvseState,
)
from evflex.smartcharging.v2x import (
    curve_value,
)

#: DER control types the station executes (others are answered NotSupported).
SUPPORTED_DER = ("VoltVar", "LimitMaxDischarge")
#: The request field holding the settings of each supported DER control type.
DER_FIELD = {"VoltVar": "curve", "LimitMaxDischarge": "limit_max_discharge"}


@dataclass
class DerControl:
    """One DER control set with SetDERControl (``body``: its settings, snake_case)."""

    id: str
    type: str
    is_default: bool
    body: dict[str, Any]
    installed_at: datetime
    #: NotifyDERStartStop(started=True) was sent and no stop since.
    running: bool = False
    seq: int = 0

    @property
    def priority(self) -> int:
        return int(self.body.get("priority", 0))

    @property
    def start(self) -> datetime | None:
        text = self.body.get("start_time")
        return parse_datetime(text) if text else None

    @property
    def end(self) -> datetime | None:
        duration = self.body.get("duration")
        if duration is None:
            return None
        return (self.start or self.installed_at) + timedelta(seconds=float(duration))

    def in_force(self, now: datetime) -> bool:
        start, end = self.start, self.end
        return (start is None or start <= now) and (end is None or now < end)


@dataclass
class _DerState:
    controls: dict[str, DerControl] = field(default_factory=dict)
    #: Cleared controls whose stop has not been reported yet.
    removed: list[DerControl] = field(default_factory=list)
    timer: asyncio.Task[Any] | None = None
    seq: int = 0


class DerControls:
    """The DER controls of a 2.1 station (mixed into :class:`~evflex.sim.v21.Station21`)."""

    _der: _DerState

    @property
    def der_controls(self) -> dict[str, DerControl]:
        return self._der.controls

    def set_der_control(
        self, control_id: str, control_type: str, is_default: bool, body: dict[str, Any]
    ) -> list[str]:
        """Install a DER control; return the ids of the controls it supersedes now."""
        now = self.now()
        before = self._active_der(now).get(control_type)
        self._der.seq += 1
        self._der.controls[control_id] = DerControl(
            control_id, control_type, is_default, dict(body), now, seq=self._der.seq
        )
        after = self._active_der(now).get(control_type)
        if before is not None and after is not None and after.id == control_id:
            if before.id != control_id:
                return [before.id]
        return []

    def clear_der(self, controls: list[DerControl]) -> None:
        """ClearDERControl: remove ``controls`` (call :meth:`refresh_der` afterwards)."""
        for control in controls:
            if self._der.controls.pop(control.id, None) is not None:
                self._der.removed.append(control)

    def select_der(
        self,
        is_default: bool | None = None,
        control_type: str | None = None,
        control_id: str | None = None,
    ) -> list[DerControl]:
        return [
            c
            for c in self._der.controls.values()
            if (is_default is None or c.is_default == is_default)
            and (control_type is None or c.type == control_type)
            and (control_id is None or c.id == control_id)
        ]

    def _active_der(self, now: datetime) -> dict[str, DerControl]:
        """Per control type: the control in force now (non-default before default,
        then the lowest priority number, then the newest)."""
        best: dict[str, DerControl] = {}
        for c in self._der.controls.values():
            if not c.in_force(now):
                continue
            current = best.get(c.type)
            key = (c.is_default, c.priority, -c.seq)
            if current is None or key < (current.is_default, current.priority, -current.seq):
                best[c.type] = c
        return best

    async def refresh_der(self) -> None:
        """Start / stop DER controls and apply them to the EVSEs."""
        now = self.now()
        active = self._active_der(now)
        running = {c.id for c in active.values()}
        stopped = [c for c in self._der.controls.values() if c.running and c.id not in running]
        stopped += [c for c in self._der.removed if c.running]
        self._der.removed.clear()
        for control in stopped:
            control.running = False
            await self._der_stopped(control, now)
        for control in active.values():
            if control.running:
                continue
            control.running = True
            superseded = [
                c.id
                for c in self._der.controls.values()
                if c.type == control.type and c.id != control.id and c.in_force(now)
            ]
            await self._der_started(control, superseded, now)
        self._schedule_der_timer(now)
        await self.apply_profiles()

    async def _der_started(self, control: DerControl, superseded: list[str], now: datetime) -> None:
        """Tell the CSMS that ``control`` is in force now (superseding ``superseded``)."""
        raise NotImplementedError

    async def _der_stopped(self, control: DerControl, now: datetime) -> None:
        """Tell the CSMS that ``control`` is no longer in force."""
        raise NotImplementedError

    def _schedule_der_timer(self, now: datetime) -> None:
        timer = self._der.timer
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        self._der.timer = None
        edges = [
            t
            for c in self._der.controls.values()
            for t in (c.start, c.end)
            if t is not None and t > now
        ]
        if edges:
            self._der.timer = self.spawn(self._der_timer(min(edges)))

    async def _der_timer(self, when: datetime) -> None:
        await self.clock.sleep(max(0.0, (when - self.now()).total_seconds()) + 0.001)
        if self._der.timer is asyncio.current_task():
            self._der.timer = None
        # Controls whose duration ran out are gone after their stop was reported.
        await self.refresh_der()
        now = self.now()
        for control in list(self._der.controls.values()):
            end = control.end
            if end is not None and end <= now and not control.running:
                self._der.controls.pop(control.id, None)

    def _voltvar_var(self, evse: EvseState) -> float | None:
        """Q(U) of the active VoltVar curve (var, > 0 absorbed), None without one."""
        control = self._active_der(self.now()).get("VoltVar")
        if control is None:
            return None
        points = [(float(p["x"]), float(p["y"])) for p in control.body.get("curve_data") or []]
        if not points:
            return None
        percent_v = 100.0 * self.grid_voltage_v() / self.spec.voltage
        # y: % of the maximum reactive power, > 0 injected (over-excited, raises the voltage).
        injected = curve_value(points, percent_v) / 100.0 * self._max_var(evse)
        return -injected

    def _max_var(self, evse: EvseState) -> float:
        return self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage

    def _discharge_cap_w(self, evse: EvseState) -> float:
        """LimitMaxDischarge: the share of the EVSE's discharge power allowed (W)."""
        hardware = self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage
        control = self._active_der(self.now()).get("LimitMaxDischarge")
        pct = control.body.get("pct_max_discharge_power") if control is not None else None
        if pct is None:
            return hardware
        return max(0.0, hardware * float(pct) / 100.0)
