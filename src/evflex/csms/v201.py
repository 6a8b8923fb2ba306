"""OCPP 2.0.1 adapter: wire messages <-> domain."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

from ocpp.v201 import call, enums
from ocpp.v201 import datatypes as dt

from evflex.clock import isoformat, parse_datetime
from evflex.csms import commands as c
from evflex.csms import firmware
from evflex.csms.handlers import StationHandlers, handles
from evflex.csms.monitoring import state_for as monitoring_state
from evflex.csms.rpc import reading, to_payload
from evflex.csms.service import CsmsService
from evflex.domain.model import (
    ChargingNeeds,
    ConnectorStatus,
    MeterSample,
    StationInfo,
    StatusReport,
    TransactionUpdate,
    normalise,
)
from evflex.smartcharging import profiles as sc_profiles

#: Phases an AC car draws on, by its requested energy transfer mode.
AC_PHASES = {"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3}

log = logging.getLogger(__name__)

_EVENT = {"Started": "started", "Updated": "updated", "Ended": "ended"}


def parse_meter_values(meter_value: list[dict]) -> list[MeterSample]:
    samples: list[MeterSample] = []
    for mv in meter_value:
        ts = parse_datetime(mv["timestamp"])
        for sv in mv["sampledValue"]:
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            uom = sv.get("unitOfMeasure") or {}
            try:
                raw = float(sv["value"]) * 10.0 ** uom.get("multiplier", 0)
            except OverflowError:  # 10 to a power beyond any float
                raw = math.inf
            value, unit = normalise(raw, uom.get("unit"), measurand)
            reading(value, "sampledValue/value")
            samples.append(
                MeterSample(
                    ts,
                    measurand,
                    value,
                    unit,
                    sv.get("phase"),
                    sv.get("location"),
                    sv.get("context"),
                    "signedMeterValue" in sv,
                )
            )
    return samples


class V201Handlers(StationHandlers):
    """Answers the calls a 2.0.1 charging station makes."""

    version = "2.0.1"

    @handles("BootNotification")
    async def boot_notification(self, p: dict) -> dict:
        cs = p["chargingStation"]
        modem = cs.get("modem") or {}
        info = StationInfo(
            vendor=cs["vendorName"],
            model=cs["model"],
            serial_number=cs.get("serialNumber"),
            firmware_version=cs.get("firmwareVersion"),
            iccid=modem.get("iccid"),
            imsi=modem.get("imsi"),
            boot_reason=p["reason"],
        )
        now = await self.service.boot(self.station_id, self.version, info)
        return {
            "currentTime": isoformat(now),
            "interval": self.service.heartbeat_interval,
            "status": "Accepted",
        }

    @handles("StatusNotification")
    async def status_notification(self, p: dict) -> dict:
        await self.service.status(
            self.station_id,
            StatusReport(
                evse_id=p["evseId"],
                connector_id=p["connectorId"],
                status=ConnectorStatus(p["connectorStatus"]),
                timestamp=parse_datetime(p["timestamp"]),
            ),
            live=None,  # after a reconnect it may report a change of the past
        )
        return {}

    async def _id_token_info(
        self, token: dict, evse_id: int | None = None, new_session: bool = True
    ) -> dict:
        if token.get("type") == "NoAuthorization":
            return {"status": "Accepted"}
        auth = await self.service.authorize(
            self.station_id, token["idToken"], evse_id, new_session=new_session
        )
        info: dict[str, Any] = {"status": auth.status.value}
        if auth.expiry:
            info["cacheExpiryDateTime"] = isoformat(auth.expiry)
        if auth.parent_id_token:
            info["groupIdToken"] = {"idToken": auth.parent_id_token, "type": "Central"}
        return info

    @handles("Authorize")
    async def authorize(self, p: dict) -> dict:
        return {"idTokenInfo": await self._id_token_info(p["idToken"])}

    @handles("TransactionEvent")
    async def transaction_event(self, p: dict) -> dict:
        upd = self._transaction_update(p)
        await self.service.transaction_update(upd, live=not upd.offline)
        token = p.get("idToken")
        if token:
            # A card that starts or authorizes a session must pass admission too.
            new = not upd.offline and (
                p["eventType"] == "Started" or p["triggerReason"] == "Authorized"
            )
            evse_id = upd.evse_id
            if new and evse_id is None:  # later events name the EVSE no more
                evse_id = await self.service.evse_of_transaction(
                    self.station_id, upd.transaction_id
                )
            return {"idTokenInfo": await self._id_token_info(token, evse_id, new)}
        return {}

    def _transaction_update(self, p: dict) -> TransactionUpdate:
        info = p["transactionInfo"]
        evse = p.get("evse") or {}
        token = p.get("idToken")
        return TransactionUpdate(
            station_id=self.station_id,
            transaction_id=info["transactionId"],
            event=_EVENT[p["eventType"]],
            timestamp=parse_datetime(p["timestamp"]),
            evse_id=evse.get("id"),
            connector_id=evse.get("connectorId"),
            id_token=token["idToken"] if token else None,
            samples=parse_meter_values(p.get("meterValue", [])),
            charging_state=info.get("chargingState"),
            stop_reason=info.get("stoppedReason", "Local") if p["eventType"] == "Ended" else None,
            trigger_reason=p["triggerReason"],
            seq_no=p["seqNo"],
            offline=p.get("offline", False),
            remote_start_id=info.get("remoteStartId"),
            reservation_id=p.get("reservationId"),
        )

    @handles("MeterValues")
    async def meter_values(self, p: dict) -> dict:
        samples = parse_meter_values(p["meterValue"])
        evse_id = p["evseId"]
        tx_id = (
            await self.service.transaction_id_for_evse(self.station_id, evse_id)
            if evse_id
            else None
        )
        if tx_id is not None and samples:
            await self.service.transaction_update(
                TransactionUpdate(
                    station_id=self.station_id,
                    transaction_id=tx_id,
                    event="updated",
                    timestamp=max(s.timestamp for s in samples),
                    evse_id=evse_id,
                    samples=samples,
                ),
                create=False,
            )
        else:
            await self.service.meter_values(self.station_id, evse_id, samples)
        return {}

    @handles("SignCertificate")
    async def sign_certificate(self, p: dict) -> dict:
        refusal = await self.service.certificates.sign_request(
            self.station_id, p["csr"], p.get("certificateType"), p.get("requestId")
        )
        if refusal is None:
            return {"status": "Accepted"}
        info = {"reasonCode": refusal.code, "additionalInfo": refusal.reason[:500]}
        return {"status": "Rejected", "statusInfo": info}

    @handles("Get15118EVCertificate")
    async def get_15118_ev_certificate(self, p: dict) -> dict:
        return await self.service.certificates.ev_request("Get15118EVCertificate", p, self.version)

    @handles("GetCertificateStatus")
    async def get_certificate_status(self, p: dict) -> dict:
        return await self.service.certificates.ev_request("GetCertificateStatus", p, self.version)

    @handles("FirmwareStatusNotification")
    async def firmware_status(self, p: dict) -> dict:
        rid = p.get("requestId")
        return await firmware.record_status(
            self.service, self.station_id, "firmware", p["status"], rid
        )

    @handles("LogStatusNotification")
    async def log_status(self, p: dict) -> dict:
        rid = p.get("requestId")
        return await firmware.record_status(self.service, self.station_id, "log", p["status"], rid)

    @handles("NotifyReport")
    async def notify_report(self, p: dict) -> dict:
        return await self._report("NotifyReport", p, "reportData")

    async def _report(self, action: str, p: dict, items: str) -> dict:
        """One part of a device model or monitoring report, kept in the event log."""
        detail = {"requestId": p["requestId"], "seqNo": p["seqNo"], "tbc": p.get("tbc", False)}
        detail[items] = p.get(items, [])
        return await self._event("report", action, detail, p["generatedAt"])

    @handles("NotifyEvent")
    async def notify_event(self, p: dict) -> dict:
        """Monitoring events: the reported values go to the live cache, the message to the log."""
        now = self.service.clock.now()
        values = monitoring_state(self.service).record_events(self.station_id, p["eventData"], now)
        if values:
            self.service.bus.publish(
                "monitoring.values", self.station_id, values=[v.as_dict() for v in values]
            )
        return await self._event(
            "notify_event",
            "NotifyEvent",
            {"seqNo": p["seqNo"], "eventData": p["eventData"]},
            p["generatedAt"],
        )

    @handles("NotifyMonitoringReport")
    async def notify_monitoring_report(self, p: dict) -> dict:
        return await self._report("NotifyMonitoringReport", p, "monitor")

    @handles("ReservationStatusUpdate")
    async def reservation_status_update(self, p: dict) -> dict:
        await self.service.set_reservation_status(p["reservationId"], p["reservationUpdateStatus"])
        return {}

    # ---------------------------------------------------------- smart charging

    @handles("NotifyEVChargingNeeds")
    async def notify_ev_charging_needs(self, p: dict) -> dict:
        await self.service.ev_charging_needs(self._charging_needs(p))
        # Accepted: a schedule (a TxProfile from the load manager) follows.
        return {"status": "Accepted"}

    def _charging_needs(self, p: dict) -> ChargingNeeds:
        needs = p["chargingNeeds"]
        ac = needs.get("acChargingParameters") or {}
        dc = needs.get("dcChargingParameters") or {}
        transfer = needs.get("requestedEnergyTransfer", "")
        departure = needs.get("departureTime")
        energy = ac.get("energyAmount", dc.get("energyAmount"))
        return ChargingNeeds(
            station_id=self.station_id,
            evse_id=p["evseId"],
            departure=parse_datetime(departure) if departure else None,
            energy_wh=float(energy) if energy is not None else None,
            ev_min_current_a=ac.get("evMinCurrent"),
            ev_max_current_a=ac.get("evMaxCurrent") or dc.get("evMaxCurrent"),
            ev_max_power_w=dc.get("evMaxPower"),
            phases=AC_PHASES.get(transfer),  # AC_BPT and DC: learned from meter values
            source="ev",
        )

    @handles("NotifyEVChargingSchedule")
    async def notify_ev_charging_schedule(self, p: dict) -> dict:
        await self._event(
            "smart_charging",
            "NotifyEVChargingSchedule",
            {"evseId": p["evseId"], "chargingSchedule": p["chargingSchedule"]},
            p["timeBase"],
        )
        return {"status": "Accepted"}

    @handles("NotifyChargingLimit")
    async def notify_charging_limit(self, p: dict) -> dict:
        limit = p["chargingLimit"]
        await self.service.charging_limit(
            self.station_id,
            p.get("evseId", 0),
            limit["chargingLimitSource"],
            [sc_profiles.schedule_from_wire(x) for x in p.get("chargingSchedule", [])],
            bool(limit.get("isGridCritical", False)),
        )
        return {}

    @handles("ClearedChargingLimit")
    async def cleared_charging_limit(self, p: dict) -> dict:
        await self.service.charging_limit(
            self.station_id, p.get("evseId", 0), p["chargingLimitSource"], None
        )
        return {}

    @handles("ReportChargingProfiles")
    async def report_charging_profiles(self, p: dict) -> dict:
        await self.service.charging_profiles_report(
            self.station_id,
            p["requestId"],
            p["evseId"],
            p["chargingLimitSource"],
            p["chargingProfile"],
            bool(p.get("tbc", False)),
        )
        return {}


# ----------------------------------------------------------------------- commands

#: What this version builds its own way (the rest: :data:`evflex.csms.commands.COMMANDS`).
BUILDERS: dict[str, c.Builder] = {}
builds = c.registry(BUILDERS)


@builds("reset")
async def _reset(b: c.ResetBody, _s):
    return to_payload(
        call.Reset(
            type=enums.ResetEnumType.immediate if b.type == "hard" else enums.ResetEnumType.on_idle
        )
    )


@builds("change-availability")
async def _change_availability(b: c.ChangeAvailabilityBody, _s):
    evse = dt.EVSEType(id=b.evse, connector_id=b.connector) if b.evse else None
    return to_payload(
        call.ChangeAvailability(
            operational_status=enums.OperationalStatusEnumType.operative
            if b.operative
            else enums.OperationalStatusEnumType.inoperative,
            evse=evse,
        )
    )


@builds("remote-start")
async def _remote_start(b: c.RemoteStartBody, _s):
    return to_payload(
        call.RequestStartTransaction(
            id_token=dt.IdTokenType(id_token=b.id_token, type=b.id_token_type),
            remote_start_id=random.randint(1, 2**31 - 1),
            evse_id=b.evse,
        )
    )


@builds("remote-stop")
async def _remote_stop(b: c.RemoteStopBody, _s):
    return to_payload(call.RequestStopTransaction(transaction_id=b.transaction_id))


@builds("trigger-message")
async def _trigger(b: c.TriggerMessageBody, _s):
    try:
        msg = enums.MessageTriggerEnumType(b.message)
    except ValueError:
        raise c.CommandNotAvailable(f"2.0.1 TriggerMessage cannot request {b.message}") from None
    evse = dt.EVSEType(id=b.evse, connector_id=b.connector) if b.evse else None
    return to_payload(call.TriggerMessage(requested_message=msg, evse=evse))


@builds("unlock-connector")
async def _unlock(b: c.UnlockConnectorBody, _s):
    return to_payload(call.UnlockConnector(evse_id=b.evse, connector_id=b.connector))


@builds("reserve-now")
async def _reserve(b: c.ReserveNowBody, s: CsmsService):
    rid = b.reservation_id if b.reservation_id is not None else await s.next_reservation_id()
    return to_payload(
        call.ReserveNow(
            id=rid,
            expiry_date_time=isoformat(b.expiry),
            id_token=dt.IdTokenType(id_token=b.id_token, type=b.id_token_type),
            evse_id=b.evse or None,
        )
    )


@builds("send-local-list")
async def _send_local_list(b: c.SendLocalListBody, s: CsmsService):
    entries = b.entries if b.entries is not None else await s.id_token_table()
    auth_list = [
        dt.AuthorizationData(
            id_token=dt.IdTokenType(id_token=e.id_token, type=e.type),
            id_token_info=dt.IdTokenInfoType(status=e.status) if e.status else None,
        )
        for e in entries
    ]
    return to_payload(
        call.SendLocalList(
            version_number=b.version,
            update_type=enums.UpdateEnumType(b.update),
            local_authorization_list=auth_list or None,
        )
    )


@builds("data-transfer")
async def _data_transfer(b: c.DataTransferBody, _s):
    return to_payload(
        call.DataTransfer(vendor_id=b.vendor_id, message_id=b.message_id, data=b.data)
    )


def _component(v: c.VariableRef) -> dt.ComponentType:
    evse = dt.EVSEType(id=v.evse, connector_id=v.connector) if v.evse is not None else None
    return dt.ComponentType(name=v.component, instance=v.component_instance, evse=evse)


@builds("update-firmware")
async def _update_firmware(b: c.UpdateFirmwareBody, s: CsmsService):
    return "UpdateFirmware", c.firmware_payload(b, s.clock.now())


@builds("get-variables")
async def _get_variables(b: c.GetVariablesBody, _s):
    return to_payload(
        call.GetVariables(
            get_variable_data=[
                dt.GetVariableDataType(
                    component=_component(v),
                    variable=dt.VariableType(name=v.variable, instance=v.variable_instance),
                    attribute_type=v.attribute,
                )
                for v in b.variables
            ]
        )
    )


@builds("set-variables")
async def _set_variables(b: c.SetVariablesBody, _s):
    return to_payload(
        call.SetVariables(
            set_variable_data=[
                dt.SetVariableDataType(
                    attribute_value=v.value,
                    component=_component(v),
                    variable=dt.VariableType(name=v.variable, instance=v.variable_instance),
                    attribute_type=v.attribute,
                )
                for v in b.variables
            ]
        )
    )


@builds("get-base-report")
async def _get_base_report(b: c.GetBaseReportBody, _s):
    rid = b.request_id if b.request_id is not None else random.randint(1, 2**31 - 1)
    return to_payload(
        call.GetBaseReport(request_id=rid, report_base=enums.ReportBaseEnumType(b.report))
    )


# -------------------------------------------------------------- monitoring


def _monitor_component(m: c.MonitorSpec | c.ComponentVariableRef) -> dict:
    comp: dict[str, Any] = {"name": m.component}
    if m.component_instance:
        comp["instance"] = m.component_instance
    if m.evse is not None:
        comp["evse"] = {"id": m.evse}
        if m.connector is not None:
            comp["evse"]["connectorId"] = m.connector
    return comp


def _monitor_variable(name: str, instance: str | None) -> dict:
    return {"name": name, "instance": instance} if instance else {"name": name}


@builds("set-variable-monitoring")
async def _set_variable_monitoring(b: c.SetVariableMonitoringBody, _s):
    data = []
    for m in b.monitors:
        item: dict[str, Any] = {
            "type": m.type,
            "value": m.value,
            "severity": m.severity,
            "transaction": m.transaction,
            "component": _monitor_component(m),
            "variable": _monitor_variable(m.variable, m.variable_instance),
        }
        if m.id is not None:
            item["id"] = m.id
        data.append(item)
    return "SetVariableMonitoring", {"setMonitoringData": data}


@builds("clear-variable-monitoring")
async def _clear_variable_monitoring(b: c.ClearVariableMonitoringBody, _s):
    return "ClearVariableMonitoring", {"id": list(dict.fromkeys(b.ids))}


@builds("get-monitoring-report")
async def _get_monitoring_report(b: c.GetMonitoringReportBody, _s):
    payload: dict[str, Any] = {
        "requestId": b.request_id if b.request_id is not None else random.randint(1, 2**31 - 1)
    }
    if b.criteria:
        payload["monitoringCriteria"] = list(dict.fromkeys(b.criteria))
    if b.components:
        payload["componentVariable"] = [
            {"component": _monitor_component(r)}
            | (
                {"variable": _monitor_variable(r.variable, r.variable_instance)}
                if r.variable
                else {}
            )
            for r in b.components
        ]
    return "GetMonitoringReport", payload


# -------------------------------------------------------------- smart charging


@builds("clear-charging-profile")
async def _clear_charging_profile(b: c.ClearChargingProfileBody, _s):
    payload: dict = {}
    if b.id is not None:
        payload["chargingProfileId"] = b.id
    criteria: dict = {}
    if b.evse is not None:
        criteria["evseId"] = b.evse
    if b.purpose is not None:
        criteria["chargingProfilePurpose"] = sc_profiles.Purpose.parse(b.purpose).value
    if b.stack_level is not None:
        criteria["stackLevel"] = b.stack_level
    if criteria:
        payload["chargingProfileCriteria"] = criteria
    return "ClearChargingProfile", payload


@builds("get-composite-schedule")
async def _get_composite_schedule(b: c.GetCompositeScheduleBody, _s):
    payload: dict = {"duration": b.duration, "evseId": b.evse}
    if b.rate_unit:
        payload["chargingRateUnit"] = b.rate_unit
    return "GetCompositeSchedule", payload


@builds("get-charging-profiles")
async def _get_charging_profiles(b: c.GetChargingProfilesBody, _s):
    criteria: dict = {}
    if b.purpose is not None:
        criteria["chargingProfilePurpose"] = sc_profiles.Purpose.parse(b.purpose).value
    if b.stack_level is not None:
        criteria["stackLevel"] = b.stack_level
    if b.ids:
        criteria["chargingProfileId"] = b.ids
    payload: dict = {
        "requestId": b.request_id if b.request_id is not None else random.randint(1, 2**31 - 1),
        "chargingProfile": criteria,
    }
    if b.evse is not None:
        payload["evseId"] = b.evse
    return "GetChargingProfiles", payload
