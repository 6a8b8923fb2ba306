"""Independent OCPP clients for the tests: the ``ocpp`` library's own ChargePoint.

These are deliberately *not* our simulator: they show that a third-party
implementation of the protocol interoperates with the CSMS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as r16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as r201


class Lib16(CP16):
    """A 1.6 charge point answering the CSMS's commands like a compliant station."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.received: list[tuple[str, dict]] = []
        self.config = {
            "HeartbeatInterval": "300",
            "MeterValueSampleInterval": "60",
            "NumberOfConnectors": "2",
        }

    @on("Reset")
    def on_reset(self, **kw):
        self.received.append(("Reset", kw))
        return r16.Reset(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, **kw):
        self.received.append(("ChangeAvailability", kw))
        return r16.ChangeAvailability(status="Accepted")

    @on("GetConfiguration")
    def on_get_configuration(self, key=None, **kw):
        self.received.append(("GetConfiguration", {"key": key}))
        keys = key or list(self.config)
        known = [
            {"key": k, "readonly": k == "NumberOfConnectors", "value": self.config[k]}
            for k in keys
            if k in self.config
        ]
        unknown = [k for k in keys if k not in self.config]
        return r16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key, value, **kw):
        self.received.append(("ChangeConfiguration", {"key": key, "value": value}))
        if key not in self.config:
            return r16.ChangeConfiguration(status="NotSupported")
        if key == "NumberOfConnectors":
            return r16.ChangeConfiguration(status="Rejected")
        self.config[key] = value
        return r16.ChangeConfiguration(status="Accepted")

    @on("RemoteStartTransaction")
    def on_remote_start(self, **kw):
        self.received.append(("RemoteStartTransaction", kw))
        return r16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def on_remote_stop(self, **kw):
        self.received.append(("RemoteStopTransaction", kw))
        return r16.RemoteStopTransaction(status="Accepted")

    @on("TriggerMessage")
    def on_trigger(self, **kw):
        self.received.append(("TriggerMessage", kw))
        return r16.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def on_unlock(self, **kw):
        self.received.append(("UnlockConnector", kw))
        return r16.UnlockConnector(status="Unlocked")

    @on("ReserveNow")
    def on_reserve(self, **kw):
        self.received.append(("ReserveNow", kw))
        return r16.ReserveNow(status="Accepted")

    @on("CancelReservation")
    def on_cancel(self, **kw):
        self.received.append(("CancelReservation", kw))
        return r16.CancelReservation(status="Accepted")

    @on("SendLocalList")
    def on_send_local_list(self, **kw):
        self.received.append(("SendLocalList", kw))
        return r16.SendLocalList(status="Accepted")


class Lib201(CP201):
    """A 2.0.1 charging station answering the CSMS's commands."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.received: list[tuple[str, dict]] = []
        self.variables = {("OCPPCommCtrlr", "HeartbeatInterval"): "300"}

    @on("Reset")
    def on_reset(self, **kw):
        self.received.append(("Reset", kw))
        return r201.Reset(status="Accepted")

    @on("ChangeAvailability")
    def on_change_availability(self, **kw):
        self.received.append(("ChangeAvailability", kw))
        return r201.ChangeAvailability(status="Accepted")

    @on("GetVariables")
    def on_get_variables(self, get_variable_data, **kw):
        self.received.append(("GetVariables", {"get_variable_data": get_variable_data}))
        return r201.GetVariables(get_variable_result=self._variables(get_variable_data))

    @on("SetVariables")
    def on_set_variables(self, set_variable_data, **kw):
        self.received.append(("SetVariables", {"set_variable_data": set_variable_data}))
        return r201.SetVariables(set_variable_result=self._variables(set_variable_data, True))

    def _variables(self, items: list[dict], setting: bool = False) -> list[dict]:
        """Each item read (its value in the answer) or set; a variable we lack is unknown."""
        out = []
        for item in items:
            key = (item["component"]["name"], item["variable"]["name"])
            status, value = "Accepted", {}
            if key not in self.variables:
                status = "UnknownVariable"
            elif setting:
                self.variables[key] = item["attribute_value"]
            else:
                value = {"attribute_value": self.variables[key]}
            out.append(
                {
                    "attribute_status": status,
                    **value,
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return out

    @on("GetBaseReport")
    def on_get_base_report(self, **kw):
        self.received.append(("GetBaseReport", kw))
        return r201.GetBaseReport(status="Accepted")

    @on("RequestStartTransaction")
    def on_request_start(self, **kw):
        self.received.append(("RequestStartTransaction", kw))
        return r201.RequestStartTransaction(status="Accepted", transaction_id="tx-remote-1")

    @on("RequestStopTransaction")
    def on_request_stop(self, **kw):
        self.received.append(("RequestStopTransaction", kw))
        return r201.RequestStopTransaction(status="Accepted")

    @on("TriggerMessage")
    def on_trigger(self, **kw):
        self.received.append(("TriggerMessage", kw))
        return r201.TriggerMessage(status="Accepted")

    @on("UnlockConnector")
    def on_unlock(self, **kw):
        self.received.append(("UnlockConnector", kw))
        return r201.UnlockConnector(status="Unlocked")

    @on("ReserveNow")
    def on_reserve(self, **kw):
        self.received.append(("ReserveNow", kw))
        return r201.ReserveNow(status="Accepted")

    @on("CancelReservation")
    def on_cancel(self, **kw):
        self.received.append(("CancelReservation", kw))
        return r201.CancelReservation(status="Accepted")

    @on("SendLocalList")
    def on_send_local_list(self, **kw):
        self.received.append(("SendLocalList", kw))
        return r201.SendLocalList(status="Accepted")


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.asynccontextmanager
async def connected(cls, url: str, station_id: str, subprotocol: str, headers=None, **connect):
    """Connect a library ChargePoint and run its receive loop for the block (``connect``:
    more options of ``websockets.connect``, such as ``local_addr``)."""
    async with websockets.connect(
        f"{url}/{station_id}", subprotocols=[subprotocol], additional_headers=headers, **connect
    ) as ws:
        cp = cls(station_id, ws, response_timeout=5)
        task = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class GhostStation(Lib201):
    """Knows only the transactions in ``known``; refuses TxProfiles for others."""

    known: set[str] = set()

    @on("SetChargingProfile")
    def on_set_charging_profile(self, evse_id, charging_profile, **kw):
        self.received.append(("SetChargingProfile", {"evse_id": evse_id, **charging_profile}))
        tx = charging_profile.get("transaction_id")
        if charging_profile["charging_profile_purpose"] == "TxProfile" and tx not in self.known:
            return r201.SetChargingProfile(
                status="Rejected", status_info={"reason_code": "TxNotFound"}
            )
        return r201.SetChargingProfile(status="Accepted")
