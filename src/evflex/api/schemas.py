"""Request and response models of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=48, pattern=r"^[^/\s]+$")
    password: str | None = Field(
        None,
        min_length=16,
        max_length=40,
        description="OCPP security profile 1 basic-auth password (16..40 characters)",
    )
    site_id: str | None = Field(None, max_length=64)


class StationPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(None, min_length=16, max_length=40)
    clear_password: bool = False
    site_id: str | None = Field(None, max_length=64)


class ConnectorOut(BaseModel):
    evse_id: int
    connector_id: int
    status: str
    error_code: str | None = None
    info: str | None = None
    vendor_error_code: str | None = None
    status_at: datetime | None = None


class StationOut(BaseModel):
    id: str
    connected: bool
    ocpp_version: str | None = None
    vendor: str | None = None
    model: str | None = None
    serial_number: str | None = None
    firmware_version: str | None = None
    iccid: str | None = None
    site_id: str | None = None
    has_password: bool = False
    registration_status: str | None = None
    last_boot_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    heartbeat_age_s: float | None = None
    last_connected_at: datetime | None = None
    last_disconnected_at: datetime | None = None
    connectors: list[ConnectorOut] = []


class IdTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_token: str = Field(min_length=1, max_length=36)
    status: Literal[
        "Accepted",
        "Blocked",
        "Expired",
        "Invalid",
        "ConcurrentTx",
        "NoCredit",
        "NotAllowedTypeEVSE",
        "NotAtThisLocation",
        "NotAtThisTime",
        "Unknown",
    ] = "Accepted"
    type: str = Field("ISO14443", max_length=20)
    expiry: datetime | None = None
    parent_id_token: str | None = Field(None, max_length=36)


class IdTokenOut(IdTokenIn):
    created_at: datetime | None = None


class MeterValueOut(BaseModel):
    timestamp: datetime
    evse_id: int
    measurand: str
    value: float
    unit: str
    phase: str | None = None
    location: str | None = None
    context: str | None = None
    transaction_pk: int | None = None
    signed: bool = False


class TransactionOut(BaseModel):
    id: int
    station_id: str
    transaction_id: str
    evse_id: int | None = None
    connector_id: int | None = None
    id_token: str | None = None
    state: str
    active: bool
    charging_state: str | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None
    stop_reason: str | None = None
    meter_start_wh: float | None = None
    meter_stop_wh: float | None = None
    energy_imported_wh: float
    energy_exported_wh: float
    power_w: float | None = Field(None, description="Signed: + charging, - discharging")
    soc_percent: float | None = None
    last_meter_at: datetime | None = None
    last_meter_values: list[MeterValueOut] = []
    offline_messages: int = 0


class EventOut(BaseModel):
    id: int
    station_id: str | None
    timestamp: datetime
    kind: str
    type: str | None = None
    detail: dict | None = None


class CommandResult(BaseModel):
    station_id: str
    command: str
    ocpp_version: str
    response: dict
