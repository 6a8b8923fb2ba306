"""REST API ``/api/v1``: advanced monitoring of OCPP 2.x stations.

* ``PUT /stations/{id}/reporting``: how often the station reports its per-EVSE
  measurements (1 s in a frequency service, 900 s otherwise);
* ``POST /stations/{id}/monitoring``: install monitors (SetVariableMonitoring);
  ``DELETE /stations/{id}/monitoring[/{monitor_id}]``: remove them;
* ``GET /stations/{id}/monitoring``: the monitors the CSMS installed;
* ``GET /stations/{id}/live``: the latest value per (component, EVSE, variable)
  reported with NotifyEvent.

The station's answers (Accepted, UnknownVariable, ...) are returned with HTTP
200; OCPP 1.6 stations, which have no monitoring, get 400 with the reason.
Monitors installed with the raw command ``POST /stations/{id}/commands/
set-variable-monitoring`` reach the station but are not listed here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from evflex.api.deps import Rt
from evflex.api.routes import station_command
from evflex.csms import commands
from evflex.csms import monitoring as mon
from evflex.services import Services
from evflex.store import repo

router = APIRouter(prefix="/api/v1", tags=["monitoring"])

PRESETS = {
    "frequency_service": mon.FREQUENCY_SERVICE_INTERVAL_S,
    "standard": mon.STANDARD_INTERVAL_S,
}


class ReportingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: int | None = Field(None, ge=1, le=86_400, description="reporting interval in s")
    preset: Literal["frequency_service", "standard"] | None = Field(
        None, description="frequency_service: 1 s; standard: 900 s"
    )
    clock_aligned: bool = Field(
        False, description="PeriodicClockAligned (multiples of the interval after midnight)"
    )
    evses: list[int] | None = Field(
        None, min_length=1, description="EVSE ids; omitted: all the station reported"
    )
    severity: int = Field(mon.REPORTING_SEVERITY, ge=0, le=9)

    @model_validator(mode="after")
    def _one_of(self) -> ReportingBody:
        if (self.interval_s is None) == (self.preset is None):
            raise ValueError("give either interval_s or preset")
        if self.evses and any(e < 1 for e in self.evses):
            raise ValueError("EVSE ids are 1 or more")
        return self

    @property
    def seconds(self) -> int:
        return self.interval_s if self.interval_s is not None else PRESETS[self.preset or ""]


class ReportingMonitorOut(BaseModel):
    evse: int | None
    component: str
    variable: str
    replaced: int | None = Field(None, description="id of the monitor this one replaced")
    status: str = Field(description="the station's SetMonitoringStatus")
    id: int | None = None
    statusInfo: dict | None = None  # noqa: N815 - the station's field


class ReportingOut(BaseModel):
    station_id: str
    interval_s: float
    type: str
    preset: str | None = None
    accepted: int
    monitors: list[ReportingMonitorOut]
    skipped: list[dict[str, Any]] = Field(description="measurements the device model lacks")
    note: str | None = None


class VariableAtOut(BaseModel):
    component: str
    component_instance: str | None
    evse: int | None
    connector: int | None
    variable: str
    variable_instance: str | None


class MonitorOut(VariableAtOut):
    id: int
    type: str
    value: float
    severity: int
    transaction: bool
    set_at: datetime
    purpose: str | None = Field(None, description="'reporting': set by PUT .../reporting")


class LiveValueOut(VariableAtOut):
    value: str
    numeric: float | None
    timestamp: datetime = Field(description="when the station measured it")
    received_at: datetime
    trigger: str
    cleared: bool
    monitor_id: int | None
    notification_type: str | None
    event_id: int | None
    transaction_id: str | None


class MonitoringResult(BaseModel):
    station_id: str
    results: list[dict[str, Any]] = Field(description="the station's answer per monitor")


async def _registered(rt: Services, station_id: str) -> None:
    async with rt.sessionmaker() as s:
        if await repo.get_station(s, station_id) is None:
            raise HTTPException(404, f"station '{station_id}' is not registered")


async def _connected(rt: Services, station_id: str) -> None:
    if rt.ocpp.connections.get(station_id) is None:
        await _registered(rt, station_id)
        raise HTTPException(409, f"station '{station_id}' is not connected")


def _send(rt: Services):
    async def send(station_id: str, name: str, body: BaseModel) -> dict:
        return await station_command(rt, station_id, name, body)

    return send


async def _guarded(rt: Services, station_id: str, coro):
    try:
        return await coro
    except commands.CommandNotAvailable as exc:
        raise HTTPException(400, str(exc)) from None
    except commands.StationNotConnected:
        raise HTTPException(409, f"station '{station_id}' is not connected") from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


@router.put("/stations/{station_id}/reporting", response_model=ReportingOut)
async def put_reporting(station_id: str, body: ReportingBody, rt: Rt):
    """Periodic reporting of each EVSE's power, voltage and frequency (those it has)."""
    await _connected(rt, station_id)
    answer = await _guarded(
        rt,
        station_id,
        mon.set_reporting_interval(
            rt,
            station_id,
            body.seconds,
            clock_aligned=body.clock_aligned,
            evses=body.evses,
            severity=body.severity,
            send=_send(rt),
        ),
    )
    return ReportingOut(preset=body.preset, **answer)


@router.get("/stations/{station_id}/monitoring", response_model=list[MonitorOut])
async def list_monitors(station_id: str, rt: Rt):
    """The monitors the CSMS installed on the station (kept in memory since the CSMS started)."""
    await _registered(rt, station_id)
    return [m.as_dict() for m in mon.state_for(rt.service).monitors_of(station_id)]


@router.post("/stations/{station_id}/monitoring", response_model=MonitoringResult)
async def set_monitors(station_id: str, body: commands.SetVariableMonitoringBody, rt: Rt):
    """SetVariableMonitoring; the accepted monitors are listed by GET .../monitoring."""
    await _connected(rt, station_id)
    results = await _guarded(rt, station_id, mon.set_monitors(rt, station_id, body, send=_send(rt)))
    return MonitoringResult(station_id=station_id, results=results)


@router.delete("/stations/{station_id}/monitoring/{monitor_id}", response_model=MonitoringResult)
async def clear_monitor(station_id: str, monitor_id: int, rt: Rt):
    """ClearVariableMonitoring of one monitor (Accepted, Rejected or NotFound)."""
    await _connected(rt, station_id)
    if monitor_id < 0:
        raise HTTPException(422, "monitor ids are 0 or more")
    results = await _guarded(
        rt, station_id, mon.clear_monitors(rt, station_id, [monitor_id], send=_send(rt))
    )
    return MonitoringResult(station_id=station_id, results=results)


@router.delete("/stations/{station_id}/monitoring", response_model=MonitoringResult)
async def clear_monitors(station_id: str, rt: Rt):
    """ClearVariableMonitoring of all monitors the CSMS installed on the station."""
    await _connected(rt, station_id)
    ids = [m.id for m in mon.state_for(rt.service).monitors_of(station_id)]
    if not ids:
        return MonitoringResult(station_id=station_id, results=[])
    results = await _guarded(
        rt, station_id, mon.clear_monitors(rt, station_id, ids, send=_send(rt))
    )
    return MonitoringResult(station_id=station_id, results=results)


@router.get("/stations/{station_id}/live", response_model=list[LiveValueOut])
async def live_values(
    station_id: str,
    rt: Rt,
    evse: int | None = None,
    variable: str | None = None,
):
    """The latest value of each monitored variable (from NotifyEvent), with its timestamp."""
    await _registered(rt, station_id)
    values = mon.state_for(rt.service).live_of(station_id)
    if evse is not None:
        values = [v for v in values if v.evse == evse]
    if variable is not None:
        values = [v for v in values if v.variable.lower() == variable.lower()]
    return [v.as_dict() for v in values]
