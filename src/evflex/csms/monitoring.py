"""Advanced monitoring (OCPP 2.x device model monitors), CSMS side.

Stations report the variables they monitor with NotifyEvent; this module
keeps, in memory and per :class:`CsmsService` (keyed by station id):

* the monitors the CSMS installed (SetVariableMonitoring answered Accepted),
* the latest value reported for each (component, EVSE, variable).

Nothing here is persisted: the NotifyEvent messages themselves are kept in
the event log. After a CSMS restart the list of installed monitors starts
empty (the stations keep theirs).

:func:`set_reporting_interval` switches a station's per-EVSE measurements
(active power; voltage and frequency where its device model has them) to
Periodic reporting at a given interval: 1 s while it takes part in a
frequency service, 900 s otherwise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select

from evflex.clock import parse_datetime
from evflex.csms import commands as c
from evflex.csms.attached import attached
from evflex.store.tables import Connector

#: Reporting interval while a station delivers a frequency service (s).
FREQUENCY_SERVICE_INTERVAL_S = 1
#: Reporting interval otherwise (s).
STANDARD_INTERVAL_S = 900
#: Severity of the reporting monitors (8 = Informational).
REPORTING_SEVERITY = 8
#: Per-EVSE quantities a V2X operator needs, each with the variable names tried in order.
REPORTING_VARIABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("power", ("Power",)),
    ("voltage", ("Voltage", "ACVoltage")),
    ("frequency", ("Frequency", "ACFrequency")),
)
#: Most items asked for in one GetVariables request while probing.
PROBE_ITEMS = 20
#: Purpose tag of the monitors installed by :func:`set_reporting_interval`.
REPORTING = "reporting"

Send = Callable[[str, str, BaseModel], Awaitable[dict]]


@dataclass(slots=True, kw_only=True)
class VariableAt:
    """A variable of a component (and of an EVSE and connector) in a station's device model."""

    component: str
    component_instance: str | None
    evse: int | None
    connector: int | None
    variable: str
    variable_instance: str | None

    @property
    def target(self) -> tuple:
        return _target(
            self.component,
            self.component_instance,
            self.evse,
            self.connector,
            self.variable,
            self.variable_instance,
        )


@dataclass(slots=True, kw_only=True)
class MonitorRecord(VariableAt):
    """A monitor the CSMS installed on a station."""

    id: int
    type: str
    value: float
    severity: int
    transaction: bool
    set_at: datetime
    purpose: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, kw_only=True)
class LiveValue(VariableAt):
    """The latest value of one variable, as reported with NotifyEvent."""

    value: str
    timestamp: datetime
    trigger: str
    monitor_id: int | None
    cleared: bool
    notification_type: str | None
    event_id: int | None
    transaction_id: str | None
    received_at: datetime

    @property
    def numeric(self) -> float | None:
        try:
            return float(self.value)
        except ValueError:
            return None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["numeric"] = self.numeric
        return out


def _target(component, component_instance, evse, connector, variable, variable_instance) -> tuple:
    return (
        str(component).lower(),
        component_instance.lower() if component_instance else None,
        evse,
        connector,
        str(variable).lower(),
        variable_instance.lower() if variable_instance else None,
    )


class MonitoringState:
    """What the CSMS knows about the monitors of its stations (in memory)."""

    def __init__(self) -> None:
        self.monitors: dict[str, dict[int, MonitorRecord]] = {}
        self.live: dict[str, dict[tuple, LiveValue]] = {}
        #: NotifyEvent eventData items seen per station.
        self.events: dict[str, int] = {}

    # ------------------------------------------------------------ monitors

    def monitors_of(self, station_id: str) -> list[MonitorRecord]:
        return sorted(self.monitors.get(station_id, {}).values(), key=lambda m: m.id)

    def record_set(
        self,
        station_id: str,
        specs: list[c.MonitorSpec],
        results: list[dict],
        now: datetime,
        purpose: str | None = None,
    ) -> None:
        """Remember the monitors a SetVariableMonitoring answer accepted (answers in order)."""
        installed = self.monitors.setdefault(station_id, {})
        for spec, result in zip(specs, results, strict=False):
            if result.get("status") != "Accepted" or not isinstance(result.get("id"), int):
                continue
            if spec.id is not None:
                installed.pop(spec.id, None)
            installed[result["id"]] = MonitorRecord(
                id=result["id"],
                component=spec.component,
                variable=spec.variable,
                type=spec.type,
                value=spec.value,
                severity=spec.severity,
                transaction=spec.transaction,
                evse=spec.evse,
                connector=spec.connector,
                component_instance=spec.component_instance,
                variable_instance=spec.variable_instance,
                set_at=now,
                purpose=purpose,
            )

    def record_cleared(self, station_id: str, results: list[dict]) -> None:
        """Forget the monitors a ClearVariableMonitoring answer removed (or did not know)."""
        installed = self.monitors.get(station_id, {})
        for result in results:
            if result.get("status") in ("Accepted", "NotFound"):
                installed.pop(result.get("id"), None)

    # ------------------------------------------------------------ live values

    def record_events(
        self, station_id: str, event_data: list[dict], received_at: datetime
    ) -> list[LiveValue]:
        """Take the values of NotifyEvent.eventData; returns those that are now the latest."""
        latest = self.live.setdefault(station_id, {})
        updated: list[LiveValue] = []
        for item in event_data:
            self.events[station_id] = self.events.get(station_id, 0) + 1
            component = item.get("component") or {}
            variable = item.get("variable") or {}
            evse = component.get("evse") or {}
            try:
                ts = parse_datetime(item["timestamp"])
            except (KeyError, ValueError):
                ts = received_at
            value = LiveValue(
                component=str(component.get("name", "")),
                component_instance=component.get("instance"),
                evse=evse.get("id"),
                connector=evse.get("connectorId"),
                variable=str(variable.get("name", "")),
                variable_instance=variable.get("instance"),
                value=str(item.get("actualValue", "")),
                timestamp=ts,
                trigger=str(item.get("trigger", "")),
                monitor_id=item.get("variableMonitoringId"),
                cleared=bool(item.get("cleared", False)),
                notification_type=item.get("eventNotificationType"),
                event_id=item.get("eventId"),
                transaction_id=item.get("transactionId"),
                received_at=received_at,
            )
            key = value.target
            previous = latest.get(key)
            if previous is not None and previous.timestamp > value.timestamp:
                continue  # a late (queued) report does not replace a newer value
            latest[key] = value
            updated.append(value)
        return updated

    def live_of(self, station_id: str) -> list[LiveValue]:
        values = self.live.get(station_id, {}).values()
        return sorted(
            values,
            key=lambda v: (v.evse or 0, v.connector or 0, v.component.lower(), v.variable.lower()),
        )

    def value(
        self, station_id: str, component: str, variable: str, evse: int | None = None
    ) -> LiveValue | None:
        """The latest value of one variable (no instances), if any was reported."""
        key = _target(component, None, evse, None, variable, None)
        return self.live.get(station_id, {}).get(key)


def state_for(service: Any) -> MonitoringState:
    """The monitoring state of a CSMS (a CsmsService, or anything with ``.service``)."""
    return attached(service, MonitoringState)


# ---------------------------------------------------------------- operations


def _server(target: Any) -> Any:
    """The OcppServer of a Runtime (``.ocpp``) or the server itself."""
    return getattr(target, "ocpp", target)


def _check_version(server: Any, station_id: str) -> None:
    conn = server.connections.get(station_id)
    if conn is None:
        raise c.StationNotConnected(station_id)
    if conn.version == "1.6":
        raise c.CommandNotAvailable(
            "advanced monitoring (SetVariableMonitoring, NotifyEvent) does not exist in OCPP 1.6"
        )


async def set_monitors(
    target: Any,
    station_id: str,
    body: c.SetVariableMonitoringBody,
    *,
    purpose: str | None = None,
    send: Send | None = None,
) -> list[dict]:
    """Install monitors on a station and remember the accepted ones.

    Returns the station's ``setMonitoringResult`` items (in request order).
    Raises what :meth:`OcppServer.send_command` raises.
    """
    server = _server(target)
    send = send or server.send_command
    answer = await send(station_id, "set-variable-monitoring", body)
    results = list(answer.get("setMonitoringResult") or [])
    state_for(server.service).record_set(
        station_id, body.monitors, results, server.service.clock.now(), purpose
    )
    return results


async def clear_monitors(
    target: Any, station_id: str, ids: list[int], *, send: Send | None = None
) -> list[dict]:
    """Remove monitors from a station; returns its ``clearMonitoringResult`` items."""
    server = _server(target)
    send = send or server.send_command
    answer = await send(
        station_id, "clear-variable-monitoring", c.ClearVariableMonitoringBody(ids=ids)
    )
    results = list(answer.get("clearMonitoringResult") or [])
    state_for(server.service).record_cleared(station_id, results)
    return results


async def _evse_ids(service: Any, station_id: str) -> list[int]:
    async with service.sessionmaker() as s:
        rows = await s.execute(
            select(Connector.evse_id).where(Connector.station_id == station_id).distinct()
        )
        return sorted(e for e in rows.scalars() if e and e > 0)


async def _probe(
    send: Send, station_id: str, evses: list[int]
) -> tuple[dict[tuple[int, str], str], int | None]:
    """Which reporting variables each EVSE has, and the station's SetVariableMonitoring limit."""
    refs: list[c.VariableRef] = [
        c.VariableRef(
            component="MonitoringCtrlr",
            variable="ItemsPerMessage",
            variable_instance="SetVariableMonitoring",
        )
    ]
    for evse in evses:
        for _, names in REPORTING_VARIABLES:
            refs += [c.VariableRef(component="EVSE", variable=n, evse=evse) for n in names]
    accepted: set[tuple[int | None, str]] = set()
    limit: int | None = None
    for start in range(0, len(refs), PROBE_ITEMS):
        chunk = refs[start : start + PROBE_ITEMS]
        answer = await send(station_id, "get-variables", c.GetVariablesBody(variables=chunk))
        for item in answer.get("getVariableResult") or []:
            if item.get("attributeStatus") != "Accepted":
                continue
            name = (item.get("variable") or {}).get("name", "")
            comp = item.get("component") or {}
            if comp.get("name") == "MonitoringCtrlr":
                try:
                    limit = int(item.get("attributeValue", ""))
                except ValueError:
                    pass
                continue
            accepted.add(((comp.get("evse") or {}).get("id"), name))
    chosen: dict[tuple[int, str], str] = {}
    for evse in evses:
        for quantity, names in REPORTING_VARIABLES:
            for name in names:
                if (evse, name) in accepted:
                    chosen[(evse, quantity)] = name
                    break
    return chosen, limit if limit and limit > 0 else None


async def set_reporting_interval(
    target: Any,
    station_id: str,
    seconds: float,
    *,
    clock_aligned: bool = False,
    evses: list[int] | None = None,
    severity: int = REPORTING_SEVERITY,
    send: Send | None = None,
) -> dict[str, Any]:
    """Report a station's per-EVSE power, voltage and frequency every ``seconds``.

    ``target`` is the Runtime (or its OcppServer). Installs (or replaces, by
    the id the CSMS remembers) one Periodic monitor (``clock_aligned``:
    PeriodicClockAligned) per EVSE and measurement the station's device model
    has. The V2X engine calls it with 1 when a station enters a frequency
    service and with 900 when it leaves. Returns the station's answer per
    monitor; raises what :meth:`OcppServer.send_command` raises
    (StationNotConnected, CommandNotAvailable for OCPP 1.6, TimeoutError, ...).
    """
    if not seconds > 0:
        raise ValueError("the reporting interval must be above 0 s")
    server = _server(target)
    _check_version(server, station_id)
    send = send or server.send_command
    service = server.service
    state = state_for(service)
    evse_ids = sorted(set(evses)) if evses else await _evse_ids(service, station_id)
    kind = "PeriodicClockAligned" if clock_aligned else "Periodic"
    if not evse_ids:
        return _reporting_answer(station_id, seconds, kind, [], [], "no EVSE known")
    chosen, limit = await _probe(send, station_id, evse_ids)
    skipped = [
        {"evse": evse, "quantity": quantity, "reason": "not in the device model"}
        for evse in evse_ids
        for quantity, _ in REPORTING_VARIABLES
        if (evse, quantity) not in chosen
    ]
    existing = {m.target: m.id for m in state.monitors_of(station_id) if m.purpose == REPORTING}
    specs = [
        c.MonitorSpec(
            component="EVSE",
            variable=name,
            evse=evse,
            type=kind,
            value=float(seconds),
            severity=severity,
            id=existing.get(_target("EVSE", None, evse, None, name, None)),
        )
        for (evse, _quantity), name in chosen.items()
    ]
    results = await _set_in_chunks(server, station_id, specs, limit, send)
    # A monitor the station no longer has (reset to factory defaults, ...): install it anew.
    retry = [
        i
        for i, (spec, res) in enumerate(zip(specs, results, strict=True))
        if spec.id is not None and res.get("status") == "Rejected"
    ]
    if retry:
        state.record_cleared(station_id, [{"id": specs[i].id, "status": "NotFound"} for i in retry])
        fresh = [specs[i].model_copy(update={"id": None}) for i in retry]
        again = await _set_in_chunks(server, station_id, fresh, limit, send)
        for i, spec, res in zip(retry, fresh, again, strict=True):
            specs[i], results[i] = spec, res
    items = [
        {
            "evse": spec.evse,
            "component": spec.component,
            "variable": spec.variable,
            "replaced": spec.id,
            "status": res.get("status", "?"),
            "id": res.get("id"),
            **({"statusInfo": res["statusInfo"]} if res.get("statusInfo") else {}),
        }
        for spec, res in zip(specs, results, strict=False)
    ]
    return _reporting_answer(station_id, seconds, kind, items, skipped)


async def _set_in_chunks(
    server: Any, station_id: str, specs: list[c.MonitorSpec], limit: int | None, send: Send
) -> list[dict]:
    results: list[dict] = []
    size = limit or max(1, len(specs))
    for start in range(0, len(specs), size):
        chunk = specs[start : start + size]
        body = c.SetVariableMonitoringBody(monitors=chunk)
        answer = await set_monitors(server, station_id, body, purpose=REPORTING, send=send)
        answer += [{"status": "?"}] * (len(chunk) - len(answer))
        results += answer[: len(chunk)]
    return results


def _reporting_answer(
    station_id: str, seconds: float, kind: str, items: list, skipped: list, note: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "station_id": station_id,
        "interval_s": seconds,
        "type": kind,
        "monitors": items,
        "skipped": skipped,
        "accepted": sum(1 for i in items if i["status"] == "Accepted"),
    }
    if note:
        out["note"] = note
    return out
