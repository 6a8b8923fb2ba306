"""Version-agnostic commands the API sends to stations.

Each command has a body model (what the REST API accepts) and one entry in
:data:`COMMANDS`: the OCPP versions that have it and, where the message is
built alike in all of them, its builder. What differs per version is built by
that version's adapter (``BUILDERS`` in :mod:`evflex.csms.v16`,
:mod:`~evflex.csms.v201`, :mod:`~evflex.csms.v21`). A command a version lacks
is refused with a reason.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evflex.clock import isoformat, utc_holds
from evflex.smartcharging import profiles as sc_profiles


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _utc_holds(cls, value: object) -> object:
        """A date-time the station is sent must be one UTC can hold."""
        return utc_holds(value)


class ResetBody(_Body):
    type: Literal["soft", "hard"] = "soft"


class ChangeAvailabilityBody(_Body):
    operative: bool
    evse: int | None = Field(None, ge=0, description="EVSE id; omitted or 0 = whole station")
    connector: int | None = Field(None, ge=1, description="2.x only: a connector of the EVSE")


class RemoteStartBody(_Body):
    id_token: str = Field(min_length=1, max_length=36)
    id_token_type: str = Field("Central", description="2.x IdTokenEnumType")
    evse: int | None = Field(None, ge=1)


class RemoteStopBody(_Body):
    transaction_id: str = Field(min_length=1, max_length=36)


class TriggerMessageBody(_Body):
    message: str = Field(description="e.g. BootNotification, Heartbeat, StatusNotification")
    evse: int | None = Field(None, ge=0)
    connector: int | None = Field(None, ge=1)


class UnlockConnectorBody(_Body):
    evse: int = Field(ge=1)
    connector: int = Field(1, ge=1)


class ReserveNowBody(_Body):
    id_token: str = Field(min_length=1, max_length=36)
    id_token_type: str = "Central"
    expiry: datetime
    evse: int | None = Field(None, ge=0)
    reservation_id: int | None = Field(None, ge=0)


class CancelReservationBody(_Body):
    reservation_id: int = Field(ge=0)


class LocalListEntry(_Body):
    id_token: str = Field(min_length=1, max_length=36)
    status: str | None = Field("Accepted", description="None removes it (Differential)")
    type: str = "ISO14443"


class SendLocalListBody(_Body):
    version: int = Field(ge=1)
    update: Literal["Full", "Differential"] = "Full"
    entries: list[LocalListEntry] | None = Field(
        None, description="Omitted: the CSMS's whole id token table"
    )


class GetConfigurationBody(_Body):
    keys: list[str] | None = None


class ChangeConfigurationBody(_Body):
    key: str = Field(min_length=1, max_length=50)
    value: str = Field(max_length=500)


class VariableRef(_Body):
    component: str = Field(min_length=1, max_length=50)
    variable: str = Field(min_length=1, max_length=50)
    evse: int | None = Field(None, ge=0)
    connector: int | None = Field(None, ge=1)
    component_instance: str | None = None
    variable_instance: str | None = None
    attribute: Literal["Actual", "Target", "MinSet", "MaxSet"] | None = None


class VariableValue(VariableRef):
    value: str = Field(max_length=1000)


class GetVariablesBody(_Body):
    variables: list[VariableRef] = Field(min_length=1)


class SetVariablesBody(_Body):
    variables: list[VariableValue] = Field(min_length=1)


class GetBaseReportBody(_Body):
    report: Literal["ConfigurationInventory", "FullInventory", "SummaryInventory"] = "FullInventory"
    request_id: int | None = None


class DataTransferBody(_Body):
    vendor_id: str = Field(min_length=1, max_length=255)
    message_id: str | None = None
    data: str | dict | list | None = None


class EmptyBody(_Body):
    pass


class SetChargingProfileBody(_Body):
    evse: int = Field(ge=0, description="EVSE id (1.6 connector); 0 = the whole station")
    profile: dict = Field(
        description="OCPP chargingProfile object in 2.0.1 form (id, stackLevel, "
        "chargingProfilePurpose, chargingProfileKind, chargingSchedule...); the 1.6 form "
        "with chargingProfileId is accepted too"
    )


class ClearChargingProfileBody(_Body):
    id: int | None = None
    evse: int | None = Field(None, ge=0)
    purpose: str | None = None
    stack_level: int | None = Field(None, ge=0)


class GetCompositeScheduleBody(_Body):
    evse: int = Field(0, ge=0)
    duration: int = Field(3600, ge=1, le=7 * 86400)
    rate_unit: Literal["A", "W"] | None = None


class GetChargingProfilesBody(_Body):
    request_id: int | None = None
    evse: int | None = Field(None, ge=0)
    purpose: str | None = None
    stack_level: int | None = Field(None, ge=0)
    ids: list[int] | None = None


MonitorType = Literal[
    "UpperThreshold", "LowerThreshold", "Delta", "Periodic", "PeriodicClockAligned"
]


class MonitorSpec(_Body):
    """One variable monitor (OCPP 2.x SetMonitoringDataType)."""

    component: str = Field(min_length=1, max_length=50)
    variable: str = Field(min_length=1, max_length=50)
    evse: int | None = Field(None, ge=1, description="EVSE of the component (EVSE, Connector)")
    connector: int | None = Field(None, ge=1, description="connector of that EVSE")
    component_instance: str | None = Field(None, min_length=1, max_length=50)
    variable_instance: str | None = Field(None, min_length=1, max_length=50)
    type: MonitorType
    value: float = Field(
        allow_inf_nan=False,
        description="threshold or delta; for Periodic and PeriodicClockAligned the interval in s",
    )
    severity: int = Field(8, ge=0, le=9, description="0 = danger ... 8 = informational, 9 = debug")
    transaction: bool = Field(False, description="only while a transaction runs on the component")
    id: int | None = Field(None, ge=0, description="id of an installed monitor to replace")

    @model_validator(mode="after")
    def _check(self) -> MonitorSpec:
        if self.connector is not None and self.evse is None:
            raise ValueError("connector needs evse")
        if self.type in ("Periodic", "PeriodicClockAligned") and self.value <= 0:
            raise ValueError(f"{self.type} needs an interval (value) above 0 s")
        if self.type == "Delta" and self.value < 0:
            raise ValueError("Delta needs a value of 0 or more")
        return self


class SetVariableMonitoringBody(_Body):
    monitors: list[MonitorSpec] = Field(min_length=1, max_length=1000)


class ClearVariableMonitoringBody(_Body):
    ids: list[int] = Field(min_length=1, max_length=1000)

    @field_validator("ids")
    @classmethod
    def _non_negative(cls, ids: list[int]) -> list[int]:
        if any(i < 0 for i in ids):
            raise ValueError("monitor ids are 0 or more")
        return ids


class ComponentVariableRef(_Body):
    component: str = Field(min_length=1, max_length=50)
    variable: str | None = Field(None, min_length=1, max_length=50)
    evse: int | None = Field(None, ge=1)
    connector: int | None = Field(None, ge=1)
    component_instance: str | None = Field(None, min_length=1, max_length=50)
    variable_instance: str | None = Field(None, min_length=1, max_length=50)


MonitoringCriterion = Literal["ThresholdMonitoring", "DeltaMonitoring", "PeriodicMonitoring"]


class GetMonitoringReportBody(_Body):
    request_id: int | None = None
    criteria: list[MonitoringCriterion] | None = Field(None, min_length=1, max_length=3)
    components: list[ComponentVariableRef] | None = Field(
        None, min_length=1, description="component (and optionally variable) filter"
    )


# ------------------------------------------------------------------ certificates

#: A CA certificate's use as OCPP 2.x names it -> the 1.6 security extension's name.
CERTIFICATE_USE_16 = {
    "CSMSRootCertificate": "CentralSystemRootCertificate",
    "ManufacturerRootCertificate": "ManufacturerRootCertificate",
}


class CertificateSignedBody(_Body):
    certificate_chain: str = Field(min_length=1, max_length=10000, description="PEM chain")
    certificate_type: (
        Literal["ChargingStationCertificate", "V2GCertificate", "V2G20Certificate"] | None
    ) = Field(None, description="2.x only")
    request_id: int | None = Field(None, description="2.1 only: the SignCertificate's requestId")


class InstallCertificateBody(_Body):
    certificate_type: str = Field(
        description="CSMSRootCertificate, ManufacturerRootCertificate, V2GRootCertificate, "
        "MORootCertificate (1.6 has the first two; CentralSystemRootCertificate is accepted)"
    )
    certificate: str = Field(min_length=1, max_length=10000, description="PEM certificate")


class GetInstalledCertificateIdsBody(_Body):
    certificate_type: list[str] | None = Field(
        None, min_length=1, description="2.x: omitted = all; 1.6 asks for exactly one"
    )


class CertificateHashData(_Body):
    hash_algorithm: Literal["SHA256", "SHA384", "SHA512"] = "SHA256"
    issuer_name_hash: str = Field(min_length=1, max_length=128)
    issuer_key_hash: str = Field(min_length=1, max_length=128)
    serial_number: str = Field(min_length=1, max_length=40)

    def wire(self) -> dict:
        return {
            "hashAlgorithm": self.hash_algorithm,
            "issuerNameHash": self.issuer_name_hash,
            "issuerKeyHash": self.issuer_key_hash,
            "serialNumber": self.serial_number,
        }


class DeleteCertificateBody(_Body):
    certificate_hash_data: CertificateHashData


class SetNetworkProfileBody(_Body):
    slot: int = Field(ge=0, description="configuration slot of the new connection profile")
    csms_url: str = Field(min_length=1, max_length=512, description="e.g. wss://csms:9443/ocpp")
    security_profile: int = Field(ge=0, le=3)
    interface: str = Field("Wired0", description="OCPPInterfaceEnumType")
    message_timeout: int = Field(30, ge=1)


# ------------------------------------------------------------------ firmware and logs

#: URL schemes a station can fetch firmware from or upload a file to.
TRANSFER_SCHEMES = ("http", "https", "ftp", "ftps", "sftp")


def transfer_url(value: str | None) -> str | None:
    """A location a station can reach: an absolute URL of a known scheme with a host."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme.lower() not in TRANSFER_SCHEMES or not parts.hostname or " " in value:
        raise ValueError(
            f"location must be an absolute {'/'.join(TRANSFER_SCHEMES)} URL with a host"
        )
    return value


class _TransferBody(_Body):
    location: str | None = Field(
        None,
        max_length=512,
        description="URL (http, https, ftp, ftps, sftp); for an upload, omitted: this node's "
        "upload endpoint with a one-time token",
    )
    retries: int | None = Field(None, ge=0, le=100, description="attempts after the first")
    retry_interval_s: int | None = Field(None, ge=0, le=86400, description="between attempts")
    request_id: int | None = Field(
        None, ge=0, le=2**31 - 1, description="2.x and 1.6 security extension: omitted = assigned"
    )

    @field_validator("location")
    @classmethod
    def _reachable(cls, value: str | None) -> str | None:
        return transfer_url(value)


class UpdateFirmwareBody(_TransferBody):
    location: str = Field(max_length=512, description="URL of the firmware image")  # type: ignore[assignment]
    retrieve_at: datetime | None = Field(None, description="download from then on (omitted: now)")
    install_at: datetime | None = Field(None, description="2.x / signed: install from then on")
    signing_certificate: str | None = Field(
        None,
        min_length=1,
        max_length=5500,
        description="PEM; given: 1.6 sends SignedUpdateFirmware",
    )
    signature: str | None = Field(
        None, min_length=1, max_length=800, description="base64 signature of the image"
    )


class GetDiagnosticsBody(_TransferBody):
    start_time: datetime | None = None
    stop_time: datetime | None = None

    @model_validator(mode="after")
    def _window(self) -> GetDiagnosticsBody:
        if self.start_time and self.stop_time and self.start_time > self.stop_time:
            raise ValueError("start_time is after stop_time")
        return self


class GetLogBody(_TransferBody):
    log_type: Literal["DiagnosticsLog", "SecurityLog"] = "DiagnosticsLog"
    oldest: datetime | None = None
    latest: datetime | None = None

    @model_validator(mode="after")
    def _window(self) -> GetLogBody:
        if self.oldest and self.latest and self.oldest > self.latest:
            raise ValueError("oldest is after latest")
        return self


class CommandNotAvailable(Exception):
    """The command does not exist in the station's OCPP version."""


class StationNotConnected(Exception):
    """The station has no open connection to this node."""


# ------------------------------------------------------------------ OCPP 2.1 V2X


class DynamicScheduleBody(_Body):
    """UpdateDynamicSchedule: new values for the running period of a dynamic profile."""

    charging_profile_id: int
    limit: float | None = Field(None, ge=0)
    setpoint: float | None = Field(None, description="negative = discharge")
    discharge_limit: float | None = Field(None, le=0)
    setpoint_reactive: float | None = None


class PriorityChargingBody(_Body):
    transaction_id: str = Field(min_length=1, max_length=36)
    activate: bool = True


EnergyTransferMode = Literal[
    "AC_single_phase",
    "AC_two_phase",
    "AC_three_phase",
    "DC",
    "AC_BPT",
    "AC_BPT_DER",
    "AC_DER",
    "DC_BPT",
    "DC_ACDP",
    "DC_ACDP_BPT",
    "WPT",
]


class AllowedEnergyTransferBody(_Body):
    transaction_id: str = Field(min_length=1, max_length=36)
    allowed: list[EnergyTransferMode] = Field(min_length=1)


class DerCurve(_Body):
    priority: int = Field(0, ge=0)
    y_unit: Literal["Not_Applicable", "PctMaxW", "PctMaxVar", "PctWAvail", "PctVarAvail"] = (
        "PctMaxVar"
    )
    points: list[tuple[float, float]] = Field(min_length=1, max_length=10)
    response_time_s: float | None = Field(None, ge=0)
    v_ref: float | None = Field(None, gt=0, description="reference voltage of the x axis")


class DerControlBody(_Body):
    control_id: str = Field(min_length=1, max_length=36)
    control_type: str = Field(description="DERControlEnumType, e.g. VoltVar, FreqWatt")
    is_default: bool = False
    curve: DerCurve | None = None
    parameters: dict | None = Field(
        None, description="other SetDERControl fields as on the wire (camelCase)"
    )


class DerQueryBody(_Body):
    control_id: str | None = Field(None, max_length=36)
    control_type: str | None = None
    is_default: bool | None = None
    request_id: int | None = None


# ------------------------------------------------------------------ the table

V16, V201, V21 = "1.6", "2.0.1", "2.1"
EVERY = (V16, V201, V21)
V2 = (V201, V21)  # the 2.x family

#: Builds a command's wire message from its body: (body, service) -> (action, payload).
Builder = Callable[[Any, Any], Awaitable[tuple[str, dict]]]
#: The same for a command built alike in every version that has it: (version, body, service).
SharedBuilder = Callable[[str, Any, Any], Awaitable[tuple[str, dict]]]


@dataclass(frozen=True)
class Command:
    """What a command means, once for every OCPP version.

    ``versions`` are the versions that have it; ``build`` is given where the
    message is built the same way in each of them (the version only picks the
    wire spelling). Otherwise each version's adapter has a builder of its own,
    for exactly what differs (see :func:`builder`).
    """

    body: type[BaseModel]
    versions: tuple[str, ...]
    build: SharedBuilder | None = None


async def _cancel_reservation(_v: str, b: CancelReservationBody, _s: Any) -> tuple[str, dict]:
    return "CancelReservation", {"reservationId": b.reservation_id}


async def _get_local_list_version(_v: str, _b: Any, _s: Any) -> tuple[str, dict]:
    return "GetLocalListVersion", {}


async def _clear_cache(_v: str, _b: Any, _s: Any) -> tuple[str, dict]:
    return "ClearCache", {}


async def _set_charging_profile(v: str, b: SetChargingProfileBody, _s: Any) -> tuple[str, dict]:
    profile = sc_profiles.from_any_wire(b.profile)
    return "SetChargingProfile", sc_profiles.set_profile_payload(profile, b.evse, v)


def _certificate_use(version: str, use: str) -> str:
    if version == V16:
        return CERTIFICATE_USE_16.get(use, use)
    back = {v: k for k, v in CERTIFICATE_USE_16.items()}
    return back.get(use, use)


async def _certificate_signed(v: str, b: CertificateSignedBody, _s: Any) -> tuple[str, dict]:
    payload: dict = {"certificateChain": b.certificate_chain}
    if b.certificate_type and v != V16:
        payload["certificateType"] = b.certificate_type
    if b.request_id is not None and v == V21:
        payload["requestId"] = b.request_id
    return "CertificateSigned", payload


async def _install_certificate(v: str, b: InstallCertificateBody, _s: Any) -> tuple[str, dict]:
    use = _certificate_use(v, b.certificate_type)
    return "InstallCertificate", {"certificateType": use, "certificate": b.certificate}


async def _get_installed_certificate_ids(
    v: str, b: GetInstalledCertificateIdsBody, _s: Any
) -> tuple[str, dict]:
    uses = [_certificate_use(v, u) for u in b.certificate_type or []]
    if v != V16:
        return "GetInstalledCertificateIds", {"certificateType": uses} if uses else {}
    if len(uses) != 1:
        raise CommandNotAvailable("OCPP 1.6 asks for exactly one certificate_type at a time")
    return "GetInstalledCertificateIds", {"certificateType": uses[0]}


async def _delete_certificate(_v: str, b: DeleteCertificateBody, _s: Any) -> tuple[str, dict]:
    return "DeleteCertificate", {"certificateHashData": b.certificate_hash_data.wire()}


async def _extended_trigger(_v: str, b: TriggerMessageBody, _s: Any) -> tuple[str, dict]:
    payload: dict = {"requestedMessage": b.message}
    if b.evse is not None:
        payload["connectorId"] = b.evse
    return "ExtendedTriggerMessage", payload


async def _set_network_profile(v: str, b: SetNetworkProfileBody, _s: Any) -> tuple[str, dict]:
    data = {
        "ocppVersion": "OCPP21" if v == V21 else "OCPP20",
        "ocppTransport": "JSON",
        "ocppCsmsUrl": b.csms_url,
        "messageTimeout": b.message_timeout,
        "securityProfile": b.security_profile,
        "ocppInterface": b.interface,
    }
    return "SetNetworkProfile", {"configurationSlot": b.slot, "connectionData": data}


def retry_fields(b: _TransferBody) -> dict:
    """retries and retryInterval, where given."""
    payload: dict = {}
    if b.retries is not None:
        payload["retries"] = b.retries
    if b.retry_interval_s is not None:
        payload["retryInterval"] = b.retry_interval_s
    return payload


def firmware_payload(b: UpdateFirmwareBody, now: datetime) -> dict:
    """2.x UpdateFirmware and 1.6 SignedUpdateFirmware: requestId, firmware, retries."""
    firmware: dict = {"location": b.location, "retrieveDateTime": isoformat(b.retrieve_at or now)}
    if b.install_at is not None:
        firmware["installDateTime"] = isoformat(b.install_at)
    if b.signing_certificate is not None:
        firmware["signingCertificate"] = b.signing_certificate
    if b.signature is not None:
        firmware["signature"] = b.signature
    return {"requestId": b.request_id, "firmware": firmware, **retry_fields(b)}


async def _get_log(_v: str, b: GetLogBody, _s: Any) -> tuple[str, dict]:
    log: dict = {"remoteLocation": b.location}
    if b.oldest is not None:
        log["oldestTimestamp"] = isoformat(b.oldest)
    if b.latest is not None:
        log["latestTimestamp"] = isoformat(b.latest)
    return "GetLog", {
        "logType": b.log_type,
        "requestId": b.request_id,
        "log": log,
        **retry_fields(b),
    }


COMMANDS: dict[str, Command] = {
    "reset": Command(ResetBody, EVERY),
    "change-availability": Command(ChangeAvailabilityBody, EVERY),
    "remote-start": Command(RemoteStartBody, EVERY),
    "remote-stop": Command(RemoteStopBody, EVERY),
    "trigger-message": Command(TriggerMessageBody, EVERY),
    "unlock-connector": Command(UnlockConnectorBody, EVERY),
    "reserve-now": Command(ReserveNowBody, EVERY),
    "cancel-reservation": Command(CancelReservationBody, EVERY, _cancel_reservation),
    "send-local-list": Command(SendLocalListBody, EVERY),
    "get-local-list-version": Command(EmptyBody, EVERY, _get_local_list_version),
    "clear-cache": Command(EmptyBody, EVERY, _clear_cache),
    "data-transfer": Command(DataTransferBody, EVERY),
    "get-configuration": Command(GetConfigurationBody, (V16,)),
    "change-configuration": Command(ChangeConfigurationBody, (V16,)),
    "get-variables": Command(GetVariablesBody, V2),
    "set-variables": Command(SetVariablesBody, V2),
    "get-base-report": Command(GetBaseReportBody, V2),
    "set-charging-profile": Command(SetChargingProfileBody, EVERY, _set_charging_profile),
    "clear-charging-profile": Command(ClearChargingProfileBody, EVERY),
    "get-composite-schedule": Command(GetCompositeScheduleBody, EVERY),
    "get-charging-profiles": Command(GetChargingProfilesBody, V2),
    "set-variable-monitoring": Command(SetVariableMonitoringBody, V2),
    "clear-variable-monitoring": Command(ClearVariableMonitoringBody, V2),
    "get-monitoring-report": Command(GetMonitoringReportBody, V2),
    "update-dynamic-schedule": Command(DynamicScheduleBody, (V21,)),
    "use-priority-charging": Command(PriorityChargingBody, (V21,)),
    "allowed-energy-transfer": Command(AllowedEnergyTransferBody, (V21,)),
    "set-der-control": Command(DerControlBody, (V21,)),
    "get-der-control": Command(DerQueryBody, (V21,)),
    "clear-der-control": Command(DerQueryBody, (V21,)),
    "certificate-signed": Command(CertificateSignedBody, EVERY, _certificate_signed),
    "install-certificate": Command(InstallCertificateBody, EVERY, _install_certificate),
    "get-installed-certificate-ids": Command(
        GetInstalledCertificateIdsBody, EVERY, _get_installed_certificate_ids
    ),
    "delete-certificate": Command(DeleteCertificateBody, EVERY, _delete_certificate),
    "extended-trigger-message": Command(TriggerMessageBody, (V16,), _extended_trigger),
    "set-network-profile": Command(SetNetworkProfileBody, V2, _set_network_profile),
    "update-firmware": Command(UpdateFirmwareBody, EVERY),
    "get-diagnostics": Command(GetDiagnosticsBody, (V16,)),
    "get-log": Command(GetLogBody, EVERY, _get_log),
}

#: The REST body of each command.
COMMAND_BODIES: dict[str, type[BaseModel]] = {name: c.body for name, c in COMMANDS.items()}


def registry(table: dict[str, Builder]) -> Callable[[str], Callable[[Builder], Builder]]:
    """A decorator that files an adapter's builder under its command's name in ``table``."""

    def builds(name: str) -> Callable[[Builder], Builder]:
        if name not in COMMANDS:
            raise KeyError(f"'{name}' is not a command")

        def file(fn: Builder) -> Builder:
            table[name] = fn
            return fn

        return file

    return builds


def exists(name: str, version: str) -> bool:
    command = COMMANDS.get(name)
    return command is not None and version in command.versions


def builder(name: str, version: str, own: Sequence[Mapping[str, Builder]]) -> Builder:
    """How to build command ``name`` for a ``version`` station.

    ``own`` are that version's adapter builders, most specific first (2.1
    looks in its own, then in 2.0.1's). Raises :class:`CommandNotAvailable`
    for a command the version lacks.
    """
    command = COMMANDS.get(name)
    if command is None or version not in command.versions:
        raise CommandNotAvailable(f"'{name}' does not exist in OCPP {version}")
    if command.build is not None:
        return functools.partial(command.build, version)
    for table in own:
        if name in table:
            return table[name]
    raise LookupError(f"the OCPP {version} adapter has no builder for '{name}'")
