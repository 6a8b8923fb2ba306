"""Version-agnostic commands the API sends to stations.

Each command has a body model (what the REST API accepts) and, per OCPP
version, a builder in that version's adapter that turns the body into the
wire action and payload. A command a version lacks is refused with a reason.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


COMMAND_BODIES: dict[str, type[BaseModel]] = {
    "reset": ResetBody,
    "change-availability": ChangeAvailabilityBody,
    "remote-start": RemoteStartBody,
    "remote-stop": RemoteStopBody,
    "trigger-message": TriggerMessageBody,
    "unlock-connector": UnlockConnectorBody,
    "reserve-now": ReserveNowBody,
    "cancel-reservation": CancelReservationBody,
    "send-local-list": SendLocalListBody,
    "get-local-list-version": EmptyBody,
    "clear-cache": EmptyBody,
    "data-transfer": DataTransferBody,
    "get-configuration": GetConfigurationBody,
    "change-configuration": ChangeConfigurationBody,
    "get-variables": GetVariablesBody,
    "set-variables": SetVariablesBody,
    "get-base-report": GetBaseReportBody,
    "set-charging-profile": SetChargingProfileBody,
    "clear-charging-profile": ClearChargingProfileBody,
    "get-composite-schedule": GetCompositeScheduleBody,
    "get-charging-profiles": GetChargingProfilesBody,
}


class CommandNotAvailable(Exception):
    """The command does not exist in the station's OCPP version."""
