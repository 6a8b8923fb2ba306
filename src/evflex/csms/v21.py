"""OCPP 2.1 adapter: the 2.0.1 adapter plus bidirectional charging (V2X) and DER control.

Everything a 2.0.1 station says means the same in 2.1, so the handlers and
command builders of :mod:`evflex.csms.v201` are reused; this module adds
what 2.1 changes or introduces:

* NotifyEVChargingNeeds with ``v2xChargingParameters`` (charge and discharge
  power, V2X energy window, target SoC), ``controlMode`` and
  ``mobilityNeedsMode``; TransactionEvent's ``operationMode``;
* NotifyPriorityCharging, NotifyDERAlarm, NotifyDERStartStop,
  ReportDERControl, PullDynamicScheduleUpdate and the SEND message
  NotifyPeriodicEventStream;
* commands: charging profiles with operation modes, UpdateDynamicSchedule,
  UsePriorityCharging, NotifyAllowedEnergyTransfer, Set/Get/ClearDERControl.

Per-phase keys (``limit_L2``...) are built here by hand or restored with
:func:`evflex.csms.rpc.fix_phase_keys`, never by the ``ocpp`` library's
case converter, which mis-cases them.
"""

from __future__ import annotations

import random
from typing import Any

from evflex.clock import parse_datetime
from evflex.csms import commands as c
from evflex.csms import v201
from evflex.csms.handlers import handles
from evflex.domain.model import ChargingNeeds, TransactionUpdate


def _opt(d: dict, key: str) -> float | None:
    value = d.get(key)
    return None if value is None else float(value)


class V21Handlers(v201.V201Handlers):
    """Answers the calls a 2.1 charging station makes."""

    version = "2.1"

    def _transaction_update(self, p: dict) -> TransactionUpdate:
        upd = super()._transaction_update(p)
        upd.operation_mode = p["transactionInfo"].get("operationMode")
        return upd

    def _charging_needs(self, p: dict) -> ChargingNeeds:
        needs = super()._charging_needs(p)
        raw = p["chargingNeeds"]
        v2x = raw.get("v2xChargingParameters") or {}
        transfer = raw.get("requestedEnergyTransfer")
        needs.energy_transfer = transfer
        available = raw.get("availableEnergyTransfer")
        if available:
            needs.allowed_energy_transfer = ",".join(available)
        needs.control_mode = raw.get("controlMode")
        needs.mobility_needs_mode = raw.get("mobilityNeedsMode")
        needs.ev_max_charge_w = _opt(v2x, "maxChargePower")
        needs.ev_min_charge_w = _opt(v2x, "minChargePower")
        needs.ev_max_discharge_w = _opt(v2x, "maxDischargePower")
        needs.ev_min_discharge_w = _opt(v2x, "minDischargePower")
        needs.v2x_min_energy_wh = _opt(v2x, "evMinV2XEnergyRequest")
        needs.v2x_max_energy_wh = _opt(v2x, "evMaxV2XEnergyRequest")
        if v2x.get("targetSoC") is not None:
            needs.target_soc = float(v2x["targetSoC"])
        target = v2x.get("evTargetEnergyRequest")
        if target is not None and needs.energy_wh is None:
            needs.energy_wh = max(0.0, float(target))
        if needs.ev_max_power_w is None and needs.ev_max_charge_w is not None:
            needs.ev_max_power_w = needs.ev_max_charge_w
        if transfer and transfer.startswith("AC_") and "phase" not in transfer:
            needs.phases = 3  # AC_BPT, AC_DER...: three-phase unless the EV says otherwise
        return needs

    @handles("NotifyPriorityCharging")
    async def notify_priority_charging(self, p: dict) -> dict:
        await self.service.priority_charging(
            self.station_id, p["transactionId"], bool(p["activated"]), source="station"
        )
        return {}

    @handles("NotifyDERAlarm")
    async def notify_der_alarm(self, p: dict) -> dict:
        detail = {k: p.get(k) for k in ("gridEventFault", "alarmEnded", "extraInfo")}
        return await self._event("der", f"alarm:{p['controlType']}", detail, p["timestamp"])

    @handles("NotifyDERStartStop")
    async def notify_der_start_stop(self, p: dict) -> dict:
        detail = {"controlId": p["controlId"], "supersededIds": p.get("supersededIds")}
        kind = "started" if p["started"] else "stopped"
        return await self._event("der", kind, detail, p["timestamp"])

    @handles("ReportDERControl")
    async def report_der_control(self, p: dict) -> dict:
        detail = {k: v for k, v in p.items() if k != "customData"}
        return await self._event("der", "ReportDERControl", detail)

    @handles("PullDynamicScheduleUpdate")
    async def pull_dynamic_schedule_update(self, p: dict) -> dict:
        update = self.service.dynamic_update(self.station_id, p["chargingProfileId"])
        if update is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownProfile"}}
        return {"status": "Accepted", "scheduleUpdate": update}

    @handles("NotifyPeriodicEventStream")
    async def notify_periodic_event_stream(self, p: dict) -> dict:
        base = parse_datetime(p["basetime"])
        values = [{"t": float(x["t"]), "v": x["v"]} for x in p["data"]]
        await self._event("stream", str(p["id"]), {"pending": p["pending"], "data": values}, None)
        self.service.bus.publish(
            "station.stream", self.station_id, stream_id=p["id"], basetime=base, data=values
        )
        return {}


# ----------------------------------------------------------------------- commands

#: What 2.1 adds to the 2.0.1 builders (the rest: :data:`evflex.csms.commands.COMMANDS`).
BUILDERS: dict[str, c.Builder] = {}
builds = c.registry(BUILDERS)


def update_dynamic_schedule_payload(
    profile_id: int,
    *,
    limit: float | None = None,
    setpoint: float | None = None,
    discharge_limit: float | None = None,
    setpoint_reactive: float | None = None,
) -> dict[str, Any]:
    """The UpdateDynamicSchedule payload: new values for a dynamic profile's running period."""
    update: dict[str, Any] = {}
    for key, value in (
        ("limit", limit),
        ("setpoint", setpoint),
        ("dischargeLimit", discharge_limit),
        ("setpointReactive", setpoint_reactive),
    ):
        if value is not None:
            update[key] = round(float(value), 1)
    return {"chargingProfileId": profile_id, "scheduleUpdate": update}


@builds("update-dynamic-schedule")
async def _update_dynamic_schedule(b: c.DynamicScheduleBody, _s):
    return "UpdateDynamicSchedule", update_dynamic_schedule_payload(
        b.charging_profile_id,
        limit=b.limit,
        setpoint=b.setpoint,
        discharge_limit=b.discharge_limit,
        setpoint_reactive=b.setpoint_reactive,
    )


@builds("use-priority-charging")
async def _use_priority_charging(b: c.PriorityChargingBody, _s):
    return "UsePriorityCharging", {"transactionId": b.transaction_id, "activate": b.activate}


@builds("allowed-energy-transfer")
async def _allowed_energy_transfer(b: c.AllowedEnergyTransferBody, _s):
    return "NotifyAllowedEnergyTransfer", {
        "transactionId": b.transaction_id,
        "allowedEnergyTransfer": list(b.allowed),
    }


@builds("set-der-control")
async def _set_der_control(b: c.DerControlBody, _s):
    payload: dict[str, Any] = {
        "isDefault": b.is_default,
        "controlId": b.control_id,
        "controlType": b.control_type,
    }
    if b.curve is not None:
        curve: dict[str, Any] = {
            "priority": b.curve.priority,
            "yUnit": b.curve.y_unit,
            "curveData": [{"x": x, "y": y} for x, y in b.curve.points],
        }
        if b.curve.response_time_s is not None:
            curve["responseTime"] = b.curve.response_time_s
        if b.curve.v_ref is not None:
            curve["reactivePowerParams"] = {"vRef": b.curve.v_ref}
        payload["curve"] = curve
    if b.parameters:
        payload.update(b.parameters)
    return "SetDERControl", payload


@builds("get-der-control")
async def _get_der_control(b: c.DerQueryBody, _s):
    payload: dict[str, Any] = {"requestId": b.request_id or random.randint(1, 2**31 - 1)}
    if b.control_id is not None:
        payload["controlId"] = b.control_id
    if b.control_type is not None:
        payload["controlType"] = b.control_type
    if b.is_default is not None:
        payload["isDefault"] = b.is_default
    return "GetDERControl", payload


@builds("clear-der-control")
async def _clear_der_control(b: c.DerQueryBody, _s):
    payload: dict[str, Any] = {"isDefault": bool(b.is_default)}
    if b.control_id is not None:
        payload["controlId"] = b.control_id
    if b.control_type is not None:
        payload["controlType"] = b.control_type
    return "ClearDERControl", payload
