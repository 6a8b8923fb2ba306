"""V2X services: central frequency control over OCPP 2.1 (``CentralFrequency``).

``PUT /api/v1/frequency-service`` enrols EVSEs with running, consenting V2X
sessions on 2.1 stations and starts the service; ``POST .../samples`` feeds
grid frequency measurements; ``GET`` reports what was sent and how fast the
stations acknowledged; ``DELETE`` stops it and hands the EVSEs back to the
load manager.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from evflex.api import schemas as sc
from evflex.api.deps import Rt
from evflex.api.routes import bidirectional
from evflex.csms import commands, v21
from evflex.csms.monitoring import set_reporting_interval
from evflex.services import Services
from evflex.smartcharging import profiles as pf
from evflex.smartcharging.frequency import (
    FREQUENCY_STACK_LEVEL,
    Enrolled,
    FrequencyController,
    frequency_profile_id,
)
from evflex.store import repo

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")


#: A power of the frequency service's curve or baseline (W), within the API's sane range.
Watts = Annotated[float, Field(ge=-sc.MAX_POWER_KW * 1000, le=sc.MAX_POWER_KW * 1000)]


class EvseRef(sc.ApiModel):
    model_config = ConfigDict(extra="forbid")

    station_id: str
    evse_id: int = Field(ge=1, le=sc.MAX_INT32)
    share: float = Field(1.0, gt=0, le=10, description="multiplies the curve's power")


class FrequencyServiceIn(sc.ApiModel):
    model_config = ConfigDict(extra="forbid")

    evses: list[EvseRef] = Field(min_length=1)
    curve: list[tuple[Annotated[float, Field(ge=40, le=70)], Watts]] = Field(
        min_length=2, max_length=20, description="(Hz, W) points; W > 0 charges, < 0 discharges"
    )
    baseline_w: Watts = 0.0
    reporting_interval_s: int | None = Field(
        1, ge=1, description="periodic reporting of the enrolled stations (None: leave as is)"
    )


class EnrolledOut(BaseModel):
    station_id: str
    evse_id: int
    transaction_id: str
    max_charge_w: float
    max_discharge_w: float
    last_setpoint_w: float | None
    failures: int


class FrequencyServiceOut(BaseModel):
    running: bool
    baseline_w: float | None = None
    curve: list[tuple[float, float]] | None = None
    evses: list[EnrolledOut] = []
    refused: dict[str, str] = Field({}, description="station/evse -> why it was not enrolled")
    stats: dict = {}


class SampleIn(sc.ApiModel):
    model_config = ConfigDict(extra="forbid")

    frequency_hz: float = Field(ge=40, le=70)
    measured_at: datetime | None = None


def _out(ctrl: FrequencyController | None, refused: dict | None = None) -> FrequencyServiceOut:
    if ctrl is None:
        return FrequencyServiceOut(running=False, refused=refused or {})
    return FrequencyServiceOut(
        running=True,
        baseline_w=ctrl.baseline_w,
        curve=ctrl.curve,
        evses=[
            EnrolledOut(
                station_id=e.station_id,
                evse_id=e.evse_id,
                transaction_id=e.transaction_id,
                max_charge_w=e.max_charge_w,
                max_discharge_w=e.max_discharge_w,
                last_setpoint_w=e.last_setpoint_w,
                failures=e.failures,
            )
            for e in ctrl.evses.values()
        ],
        refused=refused or {},
        stats=ctrl.stats.summary(),
    )


async def _set_reporting(rt: Services, station_id: str, seconds: int) -> None:
    try:
        await set_reporting_interval(rt, station_id, seconds)
    except Exception as exc:
        log.warning("reporting interval of %s not changed: %s", station_id, exc)


@router.put("/frequency-service", response_model=FrequencyServiceOut, tags=["v2x"])
async def start_frequency_service(body: FrequencyServiceIn, rt: Rt):
    """Enrol EVSEs in central frequency control; EVSEs that cannot take part are listed."""
    if rt.frequency is not None:
        raise HTTPException(409, "a frequency service runs already; DELETE it first")

    async def send_update(station_id: str, evse_id: int, profile_id: int, setpoint: float):
        # Straight to the station's connection: one small payload, built once.
        conn = rt.ocpp.connections.get(station_id)
        if conn is None:
            raise commands.StationNotConnected(station_id)
        payload = v21.update_dynamic_schedule_payload(profile_id, setpoint=setpoint)
        return await conn.call("UpdateDynamicSchedule", payload)

    try:
        ctrl = FrequencyController(rt.clock, send_update, body.curve, body.baseline_w)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    refused: dict[str, str] = {}
    for ref in body.evses:
        name = f"{ref.station_id}/{ref.evse_id}"
        reason, enrolled = await _enrol(rt, ctrl, ref)
        if reason is not None:
            refused[name] = reason
        elif enrolled is not None:
            ctrl.enrol(enrolled)
    if not ctrl.evses:
        raise HTTPException(409, {"reason": "no EVSE could be enrolled", "refused": refused})
    rt.frequency = ctrl
    ctrl.start()
    if body.reporting_interval_s is not None:
        for station_id in {e.station_id for e in ctrl.evses.values()}:
            await _set_reporting(rt, station_id, body.reporting_interval_s)
    return _out(ctrl, refused)


async def _enrol(rt: Services, ctrl: FrequencyController, ref: EvseRef):
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, ref.station_id)
        tx = await repo.active_transaction_for_evse(s, ref.station_id, ref.evse_id)
    if st is None:
        return "unknown station", None
    if st.ocpp_version != "2.1":
        return f"the station speaks OCPP {st.ocpp_version or '?'}, not 2.1", None
    if not rt.ocpp.is_connected(st.id):
        return "the station is not connected", None
    if tx is None:
        return "no transaction runs on this EVSE", None
    if not tx.v2x_allowed:
        return "the driver has not allowed discharging", None
    if not bidirectional(tx):
        return "the EV did not ask for bidirectional transfer", None
    voltage = 230.0
    phases = st.phases or 3
    max_charge = (st.evse_max_current_a or 32.0) * voltage * phases
    if tx.ev_max_charge_w:
        max_charge = min(max_charge, tx.ev_max_charge_w)
    max_discharge = min(tx.ev_max_discharge_w or 0.0, max_charge)
    ev = Enrolled(ref.station_id, ref.evse_id, tx.transaction_id, max_charge, max_discharge)
    ev.share = ref.share
    start = ctrl.setpoint_w(ev, 50.0)
    profile = pf.ChargingProfile(
        id=frequency_profile_id(ref.evse_id),
        stack_level=FREQUENCY_STACK_LEVEL,
        purpose=pf.Purpose.TX,
        kind=pf.Kind.RELATIVE,
        transaction_id=tx.transaction_id,
        schedule=pf.Schedule(
            pf.RateUnit.W,
            (
                pf.Period(
                    0,
                    round(max_charge),
                    operation_mode=pf.OperationMode.CENTRAL_FREQUENCY,
                    setpoint=round(start, 1),
                    discharge_limit=-round(max_discharge),
                ),
            ),
        ),
    )
    wire = pf.to_wire(profile, "2.1")
    try:
        answer = await rt.ocpp.send_command(
            st.id,
            "set-charging-profile",
            commands.SetChargingProfileBody(evse=ref.evse_id, profile=wire),
        )
    except Exception as exc:
        return f"SetChargingProfile failed: {exc}", None
    if answer.get("status") != "Accepted":
        return f"the station answered {answer.get('status')}", None
    return None, ev


@router.post("/frequency-service/samples", status_code=202, tags=["v2x"])
async def frequency_sample(body: SampleIn, rt: Rt):
    """One grid frequency measurement; the newest is sent to every enrolled EVSE."""
    if rt.frequency is None:
        raise HTTPException(409, "no frequency service runs")
    rt.frequency.sample(body.frequency_hz, body.measured_at)
    return {"accepted": True}


@router.get("/frequency-service", response_model=FrequencyServiceOut, tags=["v2x"])
async def frequency_service(rt: Rt):
    return _out(rt.frequency)


@router.delete("/frequency-service", response_model=FrequencyServiceOut, tags=["v2x"])
async def stop_frequency_service(rt: Rt):
    """Stop; remove the CentralFrequency profiles; reporting back to 15 minutes."""
    ctrl = rt.frequency
    if ctrl is None:
        raise HTTPException(404, "no frequency service runs")
    await ctrl.stop()
    rt.frequency = None
    out = _out(ctrl)
    out.running = False
    for ev in ctrl.evses.values():
        try:
            await rt.ocpp.send_command(
                ev.station_id,
                "clear-charging-profile",
                commands.ClearChargingProfileBody(id=frequency_profile_id(ev.evse_id)),
            )
        except Exception as exc:
            log.warning("clearing the frequency profile on %s failed: %s", ev.station_id, exc)
    for station_id in {e.station_id for e in ctrl.evses.values()}:
        await _set_reporting(rt, station_id, 900)
    return out
