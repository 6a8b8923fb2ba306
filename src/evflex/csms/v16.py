"""OCPP 1.6-J adapter: wire messages <-> domain.

1.6 connectorId N is EVSE N (connector 1) in the domain; connector 0 is EVSE 0.
Payload building for outbound calls uses the ``ocpp`` library's message classes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ocpp.v16 import call, enums
from ocpp.v16 import datatypes as dt

from evflex.clock import isoformat, parse_datetime
from evflex.csms import commands as c
from evflex.csms import firmware
from evflex.csms.handlers import StationHandlers, handles
from evflex.csms.rpc import RpcError, reading, to_payload
from evflex.csms.service import CsmsService
from evflex.domain.model import (
    ConnectorStatus,
    MeterSample,
    StationEvent,
    StationInfo,
    StatusReport,
    TransactionUpdate,
    normalise,
)
from evflex.smartcharging import profiles as sc_profiles

log = logging.getLogger(__name__)
VERSION = "1.6"


def parse_meter_values(meter_value: list[dict]) -> list[MeterSample]:
    samples: list[MeterSample] = []
    for mv in meter_value:
        ts = parse_datetime(mv["timestamp"])
        for sv in mv.get("sampledValue", []):
            measurand = sv.get("measurand", "Energy.Active.Import.Register")
            signed = sv.get("format") == "SignedData"
            try:
                raw = float(sv["value"])
            except ValueError:
                if signed:  # a signed blob, not a number: nothing to chart
                    continue
                raise RpcError(
                    "PropertyConstraintViolation", f"sampledValue '{sv['value']}' is not a number"
                ) from None
            value, unit = normalise(raw, sv.get("unit"), measurand)
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
                    signed,
                )
            )
    return samples


class V16Handlers(StationHandlers):
    """Answers the calls a 1.6 charge point makes."""

    @handles("BootNotification")
    async def boot_notification(self, p: dict) -> dict:
        info = StationInfo(
            vendor=p["chargePointVendor"],
            model=p["chargePointModel"],
            serial_number=p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
            firmware_version=p.get("firmwareVersion"),
            iccid=p.get("iccid"),
            imsi=p.get("imsi"),
            meter_type=p.get("meterType"),
            meter_serial_number=p.get("meterSerialNumber"),
        )
        now = await self.service.boot(self.station_id, VERSION, info)
        return {
            "status": "Accepted",
            "currentTime": isoformat(now),
            "interval": self.service.heartbeat_interval,
        }

    @handles("StatusNotification")
    async def status_notification(self, p: dict) -> dict:
        connector = p["connectorId"]
        stamped = bool(p.get("timestamp"))
        ts = parse_datetime(p["timestamp"]) if stamped else self.service.clock.now()
        await self.service.status(
            self.station_id,
            StatusReport(
                evse_id=connector,
                connector_id=1 if connector else 0,
                status=ConnectorStatus(p["status"]),
                timestamp=ts,
                error_code=p["errorCode"],
                info=p.get("info"),
                vendor_error_code=p.get("vendorErrorCode"),
            ),
            live=None if stamped else False,  # a 1.6 status may report an older change
        )
        return {}

    async def _id_tag_info(
        self, id_tag: str, evse_id: int | None = None, new_session: bool = True
    ) -> dict:
        auth = await self.service.authorize(
            self.station_id, id_tag, evse_id, new_session=new_session
        )
        status = auth.status.value
        if status == "NotAtThisTime":  # a session refused by admission: 1.6 has no such status
            status = "Blocked"
        info: dict[str, Any] = {"status": _auth_status_16(status)}
        if auth.expiry:
            info["expiryDate"] = isoformat(auth.expiry)
        if auth.parent_id_token:
            info["parentIdTag"] = auth.parent_id_token
        return info

    @handles("Authorize")
    async def authorize(self, p: dict) -> dict:
        return {"idTagInfo": await self._id_tag_info(p["idTag"])}

    @handles("StartTransaction")
    async def start_transaction(self, p: dict) -> dict:
        ts = parse_datetime(p["timestamp"])
        meter_start = float(p["meterStart"])
        upd = TransactionUpdate(
            station_id=self.station_id,
            transaction_id="",
            event="started",
            timestamp=ts,
            evse_id=p["connectorId"],
            connector_id=1,
            id_token=p["idTag"],
            meter_start_wh=meter_start,
            reservation_id=p.get("reservationId"),
            samples=[
                MeterSample(
                    ts,
                    "Energy.Active.Import.Register",
                    meter_start,
                    "Wh",
                    context="Transaction.Begin",
                )
            ],
        )
        id_tag_info = await self._id_tag_info(p["idTag"], p["connectorId"] or None)
        tx_id = await self.service.start_transaction_assigning_id(upd)
        return {"transactionId": tx_id, "idTagInfo": id_tag_info}

    @handles("StopTransaction")
    async def stop_transaction(self, p: dict) -> dict:
        ts = parse_datetime(p["timestamp"])
        samples = parse_meter_values(p.get("transactionData", []))
        samples.append(
            MeterSample(
                ts,
                "Energy.Active.Import.Register",
                float(p["meterStop"]),
                "Wh",
                context="Transaction.End",
            )
        )
        upd = TransactionUpdate(
            station_id=self.station_id,
            transaction_id=str(p["transactionId"]),
            event="ended",
            timestamp=ts,
            id_token=p.get("idTag"),
            meter_stop_wh=float(p["meterStop"]),
            stop_reason=p.get("reason", "Local"),
            samples=samples,
        )
        known = await self.service.transaction_update(upd, create=False)
        if not known:
            log.warning(
                "%s: StopTransaction for unknown transaction %s",
                self.station_id,
                p["transactionId"],
            )
            await self.service.record_event(
                StationEvent(
                    self.station_id,
                    "error",
                    ts,
                    "UnknownTransaction",
                    {"transactionId": p["transactionId"], "meterStop": p["meterStop"]},
                )
            )
        if p.get("idTag"):
            return {"idTagInfo": await self._id_tag_info(p["idTag"], new_session=False)}
        return {}

    @handles("MeterValues")
    async def meter_values(self, p: dict) -> dict:
        samples = parse_meter_values(p["meterValue"])
        evse = p["connectorId"]
        tx_id = p.get("transactionId")
        if tx_id is not None and samples:
            upd = TransactionUpdate(
                station_id=self.station_id,
                transaction_id=str(tx_id),
                event="updated",
                timestamp=max(s.timestamp for s in samples),
                evse_id=evse,
                samples=samples,
            )
            if await self.service.transaction_update(upd, create=False):
                return {}
        await self.service.meter_values(self.station_id, evse, samples)
        return {}

    @handles("FirmwareStatusNotification")
    async def firmware_status(self, p: dict) -> dict:
        return await firmware.record_status(self.service, self.station_id, "firmware", p["status"])

    @handles("SignedFirmwareStatusNotification")
    async def signed_firmware_status(self, p: dict) -> dict:
        return await firmware.record_status(
            self.service, self.station_id, "firmware", p["status"], p.get("requestId")
        )

    @handles("DiagnosticsStatusNotification")
    async def diagnostics_status(self, p: dict) -> dict:
        return await firmware.record_status(
            self.service, self.station_id, "diagnostics", p["status"]
        )

    @handles("LogStatusNotification")
    async def log_status(self, p: dict) -> dict:
        return await firmware.record_status(
            self.service, self.station_id, "log", p["status"], p.get("requestId")
        )

    @handles("SignCertificate")
    async def sign_certificate(self, p: dict) -> dict:
        refusal = await self.service.certificates.sign_request(self.station_id, p["csr"])
        return {"status": "Accepted" if refusal is None else "Rejected"}


def _auth_status_16(status: str) -> str:
    # 1.6 knows Accepted, Blocked, Expired, Invalid, ConcurrentTx only.
    return (
        status
        if status in ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
        else "Invalid"
    )


# ----------------------------------------------------------------------- commands

#: What this version builds its own way (the rest: :data:`evflex.csms.commands.COMMANDS`).
BUILDERS: dict[str, c.Builder] = {}
builds = c.registry(BUILDERS)


@builds("reset")
async def _reset(b: c.ResetBody, _s) -> tuple[str, dict]:
    return to_payload(
        call.Reset(type=enums.ResetType.hard if b.type == "hard" else enums.ResetType.soft)
    )


@builds("change-availability")
async def _change_availability(b: c.ChangeAvailabilityBody, _s):
    if b.connector not in (None, 1):
        raise c.CommandNotAvailable("OCPP 1.6 addresses a connector by its EVSE number only")
    return to_payload(
        call.ChangeAvailability(
            connector_id=b.evse or 0,
            type=enums.AvailabilityType.operative
            if b.operative
            else enums.AvailabilityType.inoperative,
        )
    )


@builds("remote-start")
async def _remote_start(b: c.RemoteStartBody, _s):
    return to_payload(call.RemoteStartTransaction(id_tag=b.id_token, connector_id=b.evse))


@builds("remote-stop")
async def _remote_stop(b: c.RemoteStopBody, _s):
    try:
        tx = int(b.transaction_id)
    except ValueError:
        raise c.CommandNotAvailable("OCPP 1.6 transaction ids are integers") from None
    return to_payload(call.RemoteStopTransaction(transaction_id=tx))


@builds("trigger-message")
async def _trigger(b: c.TriggerMessageBody, _s):
    try:
        msg = enums.MessageTrigger(b.message)
    except ValueError:
        raise c.CommandNotAvailable(f"1.6 TriggerMessage cannot request {b.message}") from None
    return to_payload(call.TriggerMessage(requested_message=msg, connector_id=b.evse))


@builds("unlock-connector")
async def _unlock(b: c.UnlockConnectorBody, _s):
    return to_payload(call.UnlockConnector(connector_id=b.evse))


@builds("reserve-now")
async def _reserve(b: c.ReserveNowBody, s: CsmsService):
    rid = b.reservation_id if b.reservation_id is not None else await s.next_reservation_id()
    return to_payload(
        call.ReserveNow(
            connector_id=b.evse or 0,
            expiry_date=isoformat(b.expiry),
            id_tag=b.id_token,
            reservation_id=rid,
        )
    )


@builds("send-local-list")
async def _send_local_list(b: c.SendLocalListBody, s: CsmsService):
    entries = b.entries if b.entries is not None else await s.id_token_table()
    auth_list = [
        dt.AuthorizationData(
            id_tag=e.id_token,
            id_tag_info=dt.IdTagInfo(status=_auth_status_16(e.status)) if e.status else None,
        )
        for e in entries
    ]
    return to_payload(
        call.SendLocalList(
            list_version=b.version,
            update_type=enums.UpdateType(b.update),
            local_authorization_list=auth_list,
        )
    )


@builds("data-transfer")
async def _data_transfer(b: c.DataTransferBody, _s):
    data = b.data if isinstance(b.data, str) or b.data is None else json.dumps(b.data)
    return to_payload(call.DataTransfer(vendor_id=b.vendor_id, message_id=b.message_id, data=data))


@builds("get-configuration")
async def _get_configuration(b: c.GetConfigurationBody, _s):
    return to_payload(call.GetConfiguration(key=b.keys))


@builds("change-configuration")
async def _change_configuration(b: c.ChangeConfigurationBody, _s):
    return to_payload(call.ChangeConfiguration(key=b.key, value=b.value))


@builds("update-firmware")
async def _update_firmware(b: c.UpdateFirmwareBody, s: CsmsService):
    now = s.clock.now()
    if b.signing_certificate is not None or b.signature is not None:
        if b.signing_certificate is None or b.signature is None:
            raise c.CommandNotAvailable(
                "OCPP 1.6 SignedUpdateFirmware needs both signing_certificate and signature"
            )
        return "SignedUpdateFirmware", c.firmware_payload(b, now)
    if b.install_at is not None:
        raise c.CommandNotAvailable("OCPP 1.6 UpdateFirmware has no install_at (signed only)")
    retrieve = isoformat(b.retrieve_at or now)
    return "UpdateFirmware", {"location": b.location, "retrieveDate": retrieve, **c.retry_fields(b)}


@builds("get-diagnostics")
async def _get_diagnostics(b: c.GetDiagnosticsBody, _s):
    payload: dict = {"location": b.location, **c.retry_fields(b)}
    if b.start_time is not None:
        payload["startTime"] = isoformat(b.start_time)
    if b.stop_time is not None:
        payload["stopTime"] = isoformat(b.stop_time)
    return "GetDiagnostics", payload


# -------------------------------------------------------------- smart charging


@builds("clear-charging-profile")
async def _clear_charging_profile(b: c.ClearChargingProfileBody, _s):
    payload: dict = {}
    if b.id is not None:
        payload["id"] = b.id
    if b.evse is not None:
        payload["connectorId"] = b.evse
    if b.purpose is not None:
        payload["chargingProfilePurpose"] = sc_profiles.Purpose.parse(b.purpose).wire("1.6")
    if b.stack_level is not None:
        payload["stackLevel"] = b.stack_level
    return "ClearChargingProfile", payload


@builds("get-composite-schedule")
async def _get_composite_schedule(b: c.GetCompositeScheduleBody, _s):
    payload: dict = {"connectorId": b.evse, "duration": b.duration}
    if b.rate_unit:
        payload["chargingRateUnit"] = b.rate_unit
    return "GetCompositeSchedule", payload
