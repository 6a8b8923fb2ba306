"""Variable monitors of the simulated OCPP 2.x station (functional block N, advanced monitoring).

A :class:`MonitorEngine` keeps the custom monitors the CSMS installs with
SetVariableMonitoring and fires them on the simulation clock, sending
NotifyEvent:

* UpperThreshold / LowerThreshold: ``Alerting`` when the Actual value rises
  above / falls below the monitor value, and ``Alerting`` with
  ``cleared=true`` when it returns;
* Delta: ``Delta`` when the value changed by at least the monitor value since
  the monitor was set or last reported (any change for non-numeric variables);
* Periodic: ``Periodic`` every *value* seconds from the moment it was set;
* PeriodicClockAligned: ``Periodic`` at the multiples of *value* seconds after
  midnight (UTC).

Threshold and delta monitors look at their variables every
:data:`POLL_S` clock-seconds. The settings come from the device model's
MonitoringCtrlr: Enabled, ItemsPerMessage, ActiveMonitoringLevel (events of a
lower severity, i.e. a higher number, are not sent) and
OfflineQueuingSeverity (events at least this severe, i.e. with a number this
low or lower, wait for the connection while the station is offline; others
are dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any

from ocpp.exceptions import OccurrenceConstraintViolationError
from ocpp.v201 import call as call201

from evflex.clock import isoformat
from evflex.sim.devicemodel import DeviceModel, Variable
from evflex.sim.station import SimStation

MONITORING = "MonitoringCtrlr"
THRESHOLDS = ("UpperThreshold", "LowerThreshold")
PERIODIC = ("Periodic", "PeriodicClockAligned")
MONITOR_TYPES = (*THRESHOLDS, "Delta", *PERIODIC)
CRITERIA = {
    "ThresholdMonitoring": THRESHOLDS,
    "DeltaMonitoring": ("Delta",),
    "PeriodicMonitoring": PERIODIC,
}
#: How often threshold and delta monitors look at their variable (clock-seconds).
POLL_S = 1.0
#: Most custom monitors a station holds.
MAX_MONITORS = 100
#: Most events waiting for the connection.
MAX_QUEUED_EVENTS = 1000
#: Most events in one NotifyEvent message.
EVENTS_PER_MESSAGE = 50


def grid_voltage_v(station: SimStation) -> float:
    """The AC voltage at the station: ``station.grid_voltage_v()`` if it has one, else nominal."""
    live = getattr(station, "grid_voltage_v", None)
    return float(live()) if callable(live) else float(station.spec.voltage)


def grid_frequency_hz(station: SimStation) -> float:
    """The grid frequency: ``station.grid_frequency_hz()`` if it has one, else nominal."""
    live = getattr(station, "grid_frequency_hz", None)
    return float(live()) if callable(live) else float(station.spec.frequency_hz)


def evse_power_w(station: SimStation, evse_id: int) -> float:
    """The power an EVSE delivers now (the energy drawn so far is booked first)."""
    evse = station.evses[evse_id]
    station.advance(evse)
    return evse.power_w


@dataclass
class Monitor:
    id: int
    var: Variable
    type: str
    value: float
    severity: int
    transaction: bool
    #: Threshold monitors: the value is beyond the threshold (reported, not cleared yet).
    alerting: bool = False
    #: Delta monitors: the value last reported (or seen when set / activated).
    reference: str | None = None
    #: Periodic monitors: when the next report is due.
    due: datetime | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "transaction": self.transaction,
            "value": self.value,
            "type": self.type,
            "severity": self.severity,
        }


def _status(status: str, reason: str | None = None, info: str = "") -> tuple[str, dict | None]:
    if reason is None:
        return status, None
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:512]
    return status, out


class MonitorEngine:
    """The custom monitors of one station and the task that fires them."""

    def __init__(self, station: SimStation, dm: DeviceModel, calls: ModuleType = call201) -> None:
        self.station = station
        self.dm = dm
        self.calls = calls
        self.monitors: dict[int, Monitor] = {}
        self._ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._task: asyncio.Task[Any] | None = None
        self._wake = asyncio.Event()
        self._queued: deque[dict[str, Any]] = deque(maxlen=MAX_QUEUED_EVENTS)
        #: NotifyEvent eventData sent (or queued), for tests and statistics.
        self.events_sent = 0

    # ------------------------------------------------------------------ settings

    def _int(self, name: str, instance: str | None = None, default: int = 0) -> int:
        try:
            return int(self.dm.text(MONITORING, name, instance))
        except (KeyError, ValueError):
            return default

    @property
    def enabled(self) -> bool:
        try:
            return self.dm.bool(MONITORING, "Enabled")
        except KeyError:
            return False

    def _check_items(self, count: int, instance: str) -> None:
        limit = self._int("ItemsPerMessage", instance, 0)
        if limit > 0 and count > limit:
            raise OccurrenceConstraintViolationError(
                description=f"{count} items, ItemsPerMessage {instance} is {limit}"
            )

    # ------------------------------------------------------------------ requests

    def set(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``SetVariableMonitoring``: install or replace monitors; one result per request."""
        self._check_items(len(requests), "SetVariableMonitoring")
        results = []
        for req in requests:
            (status, info), monitor = self._install(req)
            result: dict[str, Any] = {
                "status": status,
                "type": req["type"],
                "severity": req["severity"],
                "component": req["component"],
                "variable": req["variable"],
            }
            if monitor is not None:
                result["id"] = monitor.id
            if info is not None:
                result["status_info"] = info
            results.append(result)
        return results

    def _install(self, req: dict[str, Any]) -> tuple[tuple[str, dict | None], Monitor | None]:
        if not self.enabled:
            return _status("Rejected", "Disabled", "MonitoringCtrlr.Enabled is false"), None
        status, var = self.dm.lookup(req["component"], req["variable"])
        if var is None:
            return _status(status), None
        kind = str(req["type"])
        value = float(req["value"])
        severity = int(req["severity"])
        replaces = req.get("id")
        if replaces is not None and replaces not in self.monitors:
            return _status("Rejected", "UnknownMonitor", f"no monitor {replaces}"), None
        if kind not in MONITOR_TYPES or not var.supports_monitoring:
            return _status("UnsupportedMonitorType"), None
        if kind in THRESHOLDS and not var.numeric:
            return _status(
                "UnsupportedMonitorType", "NotNumeric", f"{var.name} is not numeric"
            ), None
        if not 0 <= severity <= 9:
            return _status("Rejected", "InvalidSeverity", "severity is 0..9"), None
        if not math.isfinite(value):
            return _status("Rejected", "InvalidValue"), None
        if kind in PERIODIC and value <= 0:
            return _status("Rejected", "InvalidValue", "the interval must be above 0 s"), None
        if kind == "Delta" and value < 0:
            return _status("Rejected", "InvalidValue", "a delta cannot be negative"), None
        if kind in THRESHOLDS and (
            (var.min_limit is not None and value < var.min_limit)
            or (var.max_limit is not None and value > var.max_limit)
        ):
            return _status("Rejected", "ValueOutOfRange", "outside minLimit..maxLimit"), None
        for other in self.monitors.values():
            same = other.var is var and other.type == kind and other.severity == severity
            if same and other.id != replaces:
                return _status("Duplicate", "Duplicate", f"monitor {other.id}"), None
        if replaces is None and len(self.monitors) >= MAX_MONITORS:
            return _status("Rejected", "TooManyMonitors", f"{MAX_MONITORS} installed"), None
        monitor = Monitor(
            id=replaces if replaces is not None else next(self._ids),
            var=var,
            type=kind,
            value=value,
            severity=severity,
            transaction=bool(req.get("transaction", False)),
        )
        self._arm(monitor, self.station.now())
        if kind == "Delta":
            monitor.reference = var.current()
        self.monitors[monitor.id] = monitor
        return _status("Accepted"), monitor

    def clear(self, ids: list[int]) -> list[dict[str, Any]]:
        """``ClearVariableMonitoring``: Accepted or NotFound per id."""
        self._check_items(len(ids), "ClearVariableMonitoring")
        results = []
        for monitor_id in ids:
            found = self.monitors.pop(monitor_id, None) is not None
            results.append({"id": monitor_id, "status": "Accepted" if found else "NotFound"})
        return results

    def report(
        self,
        criteria: list[str] | None = None,
        component_variable: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """``GetMonitoringReport``: MonitoringDataType items (empty: EmptyResultSet)."""
        types = {t for c in criteria or CRITERIA for t in CRITERIA.get(c, ())}
        chosen = [m for m in self.monitors.values() if m.type in types]
        if component_variable:
            chosen = [m for m in chosen if any(self._matches(m.var, f) for f in component_variable)]
        grouped: dict[int, tuple[Variable, list[Monitor]]] = {}
        for monitor in sorted(chosen, key=lambda m: m.id):
            grouped.setdefault(id(monitor.var), (monitor.var, []))[1].append(monitor)
        return [
            {
                "component": var.component_dict(),
                "variable": var.variable_dict(),
                "variable_monitoring": [m.wire() for m in monitors],
            }
            for var, monitors in grouped.values()
        ]

    @staticmethod
    def _matches(var: Variable, wanted: dict[str, Any]) -> bool:
        """Does ``var`` match a ComponentVariableType (no variable: any of the component)?"""
        component = wanted.get("component") or {}
        if str(component.get("name", "")).lower() != var.component.lower():
            return False
        instance = component.get("instance")
        if instance and (var.component_instance or "").lower() != instance.lower():
            return False
        evse = component.get("evse")
        if evse:
            if evse.get("id") != var.evse_id:
                return False
            connector = evse.get("connector_id")
            if connector is not None and connector != var.connector_id:
                return False
        variable = wanted.get("variable")
        if not variable:
            return True
        if str(variable.get("name", "")).lower() != var.name.lower():
            return False
        instance = variable.get("instance")
        return not instance or (var.variable_instance or "").lower() == instance.lower()

    # ------------------------------------------------------------------ firing

    def start(self) -> None:
        """Run the monitors (or look again at their schedule after a change)."""
        if self._task is None or self._task.done():
            if self.monitors:
                self._task = self.station.spawn(self._run())
        else:
            self._wake.set()

    async def kick(self) -> None:
        """:meth:`start` as a follow-up of a handler (after its answer was sent)."""
        self.start()

    def _arm(self, monitor: Monitor, now: datetime) -> None:
        monitor.alerting = False
        monitor.reference = None
        if monitor.type == "Periodic":
            monitor.due = now + timedelta(seconds=monitor.value)
        elif monitor.type == "PeriodicClockAligned":
            monitor.due = self._aligned_after(now, monitor.value)
        else:
            monitor.due = None

    @staticmethod
    def _aligned_after(now: datetime, interval: float) -> datetime:
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        elapsed = (now - midnight).total_seconds()
        return midnight + timedelta(seconds=(math.floor(elapsed / interval) + 1) * interval)

    def _transaction_id(self, var: Variable) -> str | None:
        evses = self.station.evses
        if var.evse_id is not None:
            evse = evses.get(var.evse_id)
            tx = evse.tx if evse is not None else None
            return str(tx.id) if tx is not None else None
        for evse in evses.values():
            if evse.tx is not None:
                return str(evse.tx.id)
        return None

    def evaluate(self, now: datetime) -> list[dict[str, Any]]:
        """Fire the monitors due at ``now``; returns their eventData (snake_case)."""
        events: list[dict[str, Any]] = []
        for monitor in list(self.monitors.values()):
            tx_id = self._transaction_id(monitor.var)
            active = self.enabled and (not monitor.transaction or tx_id is not None)
            if monitor.due is not None:
                if monitor.due <= now:
                    ts = now if monitor.type == "Periodic" else monitor.due
                    if active:
                        text = monitor.var.current()
                        events.append(self._event(monitor, "Periodic", ts, tx_id, text))
                    self._next_due(monitor, now)
                continue
            if not active:
                monitor.reference = None
                continue
            if monitor.type in THRESHOLDS:
                self._threshold(monitor, now, tx_id, events)
            elif monitor.type == "Delta":
                self._delta(monitor, now, tx_id, events)
        level = self._int("ActiveMonitoringLevel", default=9)
        return [e for e in events if e.pop("_severity") <= level]

    def _next_due(self, monitor: Monitor, now: datetime) -> None:
        """The next report after ``now`` (a station that fell behind skips, never catches up)."""
        assert monitor.due is not None
        if monitor.type == "PeriodicClockAligned":
            monitor.due = self._aligned_after(now, monitor.value)
            return
        step = timedelta(seconds=monitor.value)
        monitor.due += step * ((now - monitor.due) // step + 1)

    def _threshold(
        self, monitor: Monitor, now: datetime, tx_id: str | None, events: list[dict[str, Any]]
    ) -> None:
        text = monitor.var.current()
        try:
            value = float(text)
        except ValueError:
            return
        if monitor.type == "UpperThreshold":
            beyond = value > monitor.value
        else:
            beyond = value < monitor.value
        if beyond != monitor.alerting:
            monitor.alerting = beyond
            events.append(self._event(monitor, "Alerting", now, tx_id, text, cleared=not beyond))

    def _delta(
        self, monitor: Monitor, now: datetime, tx_id: str | None, events: list[dict[str, Any]]
    ) -> None:
        text = monitor.var.current()
        reference = monitor.reference
        if reference is None:
            monitor.reference = text
            return
        if text == reference:
            return
        if monitor.var.numeric:
            try:
                if abs(float(text) - float(reference)) < monitor.value:
                    return
            except ValueError:
                pass
        monitor.reference = text
        events.append(self._event(monitor, "Delta", now, tx_id, text))

    def _event(
        self,
        monitor: Monitor,
        trigger: str,
        ts: datetime,
        tx_id: str | None,
        text: str,
        cleared: bool = False,
    ) -> dict[str, Any]:
        var = monitor.var
        event: dict[str, Any] = {
            "event_id": next(self._event_ids),
            "timestamp": isoformat(ts),
            "trigger": trigger,
            "actual_value": text[:2500],
            "component": var.component_dict(),
            "variable": var.variable_dict(),
            "variable_monitoring_id": monitor.id,
            "event_notification_type": "CustomMonitor",
            "_severity": monitor.severity,
        }
        if cleared:
            event["cleared"] = True
        if tx_id is not None and monitor.transaction:
            event["transaction_id"] = tx_id[:36]
        return event

    def _next_wait(self, now: datetime) -> float | None:
        if not self.monitors:
            return None
        waits = [(m.due - now).total_seconds() for m in self.monitors.values() if m.due is not None]
        if any(m.due is None for m in self.monitors.values()):
            waits.append(POLL_S)
        return max(0.0, min(waits))

    async def _run(self) -> None:
        clock = self.station.clock
        while True:
            self._wake.clear()
            events = self.evaluate(clock.now())
            if events or (self._queued and self.station.online):
                # Sent in the background (in order: one CALL at a time per link), so
                # that a slow CSMS does not delay the next sample.
                self.station.spawn(self._send(events))
            wait = self._next_wait(clock.now())
            if wait is None:
                return
            if wait > 0:
                await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self.station.clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _send(self, events: list[dict[str, Any]]) -> None:
        station = self.station
        if not station.online:
            keep = self._int("OfflineQueuingSeverity", default=-1)
            self._queued.extend(e for e in events if self._severity_of(e) <= keep)
            return
        pending = [*self._queued, *events]
        self._queued.clear()
        if not pending:
            return
        chunks = [
            pending[i : i + EVENTS_PER_MESSAGE] for i in range(0, len(pending), EVENTS_PER_MESSAGE)
        ]
        for seq, chunk in enumerate(chunks):
            self.events_sent += len(chunk)
            await station.send(
                self.calls.NotifyEvent(
                    generated_at=station.now_text(),
                    seq_no=seq,
                    event_data=chunk,
                    tbc=True if seq < len(chunks) - 1 else None,
                )
            )

    def _severity_of(self, event: dict[str, Any]) -> int:
        monitor = self.monitors.get(event["variable_monitoring_id"])
        return monitor.severity if monitor is not None else 9

    async def send_report(self, request_id: int, data: list[dict[str, Any]]) -> None:
        """NotifyMonitoringReport for GetMonitoringReport, in parts of ItemsPerMessage."""
        station = self.station
        try:
            size = max(1, self.dm.int("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"))
        except KeyError:
            size = 20
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for seq, chunk in enumerate(chunks):
            await station.send(
                self.calls.NotifyMonitoringReport(
                    request_id=request_id,
                    seq_no=seq,
                    generated_at=station.now_text(),
                    monitor=chunk,
                    tbc=seq < len(chunks) - 1,
                )
            )
