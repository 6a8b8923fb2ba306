"""Station settings of OCPP 2.x: the device model (Get/SetVariables, reports).

The OCPP 1.6 configuration keys are in :mod:`evflex.sim.config16`, a device
model variable in :mod:`evflex.sim.variables`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from evflex.clock import parse_datetime
from evflex.sim.config16 import MAX_PERIODS, MAX_PROFILES, MAX_STACK_LEVEL
from evflex.sim.model import SUPPORTED_MEASURANDS
from evflex.sim.variables import (
    READ_ONLY,
    READ_WRITE,
    WRITE_ONLY,
    Variable,
    request_component_key,
    request_variable_key,
)

__all__ = ["READ_ONLY", "READ_WRITE", "WRITE_ONLY", "DeviceModel", "Variable", "build_device_model"]

# ---------------------------------------------------------------------------
# OCPP 2.0.1 device model
# ---------------------------------------------------------------------------


class DeviceModel:
    """A small OCPP 2.0.1 device model: components, variables, Actual attributes."""

    def __init__(self, on_change: Callable[[Variable], None] | None = None) -> None:
        self._vars: dict[tuple[Any, ...], Variable] = {}
        self._components: set[tuple[str, str | None, int | None, int | None]] = set()
        self.on_change = on_change
        #: Why a SetVariables value is refused beyond its type and limits (a reason code).
        self.check: Callable[[Variable, str], str | None] | None = None

    def add(self, variable: Variable) -> Variable:
        self._vars[variable.key] = variable
        self._components.add(variable.component_key)
        return variable

    def variables(self) -> list[Variable]:
        return list(self._vars.values())

    def find(self, component: str, name: str, instance: str | None = None) -> Variable:
        key = (
            component.lower(),
            None,
            None,
            None,
            name.lower(),
            instance.lower() if instance else None,
        )
        return self._vars[key]

    def text(self, component: str, name: str, instance: str | None = None) -> str:
        return self.find(component, name, instance).current()

    def int(self, component: str, name: str, instance: str | None = None) -> int:
        try:
            return int(self.text(component, name, instance))
        except ValueError:
            return 0

    def bool(self, component: str, name: str, instance: str | None = None) -> bool:
        return self.text(component, name, instance).strip().lower() == "true"

    def list(self, component: str, name: str, instance: str | None = None) -> list[str]:
        value = self.text(component, name, instance)
        return [item.strip() for item in value.split(",") if item.strip()]

    def put(self, component: str, name: str, value: str, instance: str | None = None) -> None:
        """Set a value from inside the station (also read-only variables)."""
        self.find(component, name, instance).value = value

    def _lookup(
        self, component: dict[str, Any], variable: dict[str, Any]
    ) -> tuple[str, Variable | None]:
        comp_key = request_component_key(component)
        if comp_key not in self._components:
            return "UnknownComponent", None
        found = self._vars.get((*comp_key, *request_variable_key(variable)))
        if found is None:
            return "UnknownVariable", None
        return "Accepted", found

    def lookup(
        self, component: dict[str, Any], variable: dict[str, Any]
    ) -> tuple[str, Variable | None]:
        """("Accepted", variable), ("UnknownComponent", None) or ("UnknownVariable", None)."""
        return self._lookup(component, variable)

    def _resolve(self, req: dict[str, Any]) -> tuple[dict[str, Any], Variable | None]:
        """The result skeleton shared by Get/SetVariables: lookup and attribute check."""
        component = req["component"]
        variable = req["variable"]
        status, var = self._lookup(component, variable)
        result: dict[str, Any] = {
            "attribute_status": status,
            "component": component,
            "variable": variable,
            "attribute_type": req.get("attribute_type"),
        }
        if var is not None and (req.get("attribute_type") or "Actual") != "Actual":
            result["attribute_status"] = "NotSupportedAttributeType"
        return result, var

    def get_variables(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Results for ``GetVariablesRequest.getVariableData``."""
        results = []
        for req in requests:
            result, var = self._resolve(req)
            if var is not None and result["attribute_status"] == "Accepted":
                if var.mutability == WRITE_ONLY:
                    result["attribute_status"] = "Rejected"
                    result["attribute_status_info"] = {"reason_code": "WriteOnly"}
                else:
                    result["attribute_value"] = var.current()
            results.append(result)
        return results

    def set_variables(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Results for ``SetVariablesRequest.setVariableData`` (applies accepted values)."""
        results = []
        changed: list[Variable] = []
        for req in requests:
            result, var = self._resolve(req)
            if var is not None and result["attribute_status"] == "Accepted":
                if var.mutability == READ_ONLY:
                    result["attribute_status"] = "Rejected"
                    result["attribute_status_info"] = {"reason_code": "ReadOnly"}
                else:
                    value = self._normalise(var, str(req["attribute_value"]))
                    reason = "InvalidValue" if value is None else self._refusal(var, value)
                    if reason is not None:
                        result["attribute_status"] = "Rejected"
                        result["attribute_status_info"] = {"reason_code": reason}
                    else:
                        var.value = value
                        changed.append(var)
            results.append(result)
        if self.on_change is not None:
            for var in changed:
                self.on_change(var)
        return results

    def _refusal(self, var: Variable, value: str) -> str | None:
        return self.check(var, value) if self.check is not None else None

    @staticmethod
    def _normalise(var: Variable, value: str) -> str | None:
        text = value.strip()
        kind = var.data_type
        if kind == "integer":
            try:
                number = int(text)
            except ValueError:
                return None
            if var.min_limit is not None and number < var.min_limit:
                return None
            if var.max_limit is not None and number > var.max_limit:
                return None
            return str(number)
        if kind == "decimal":
            try:
                decimal = float(text)
            except ValueError:
                return None
            if var.min_limit is not None and decimal < var.min_limit:
                return None
            if var.max_limit is not None and decimal > var.max_limit:
                return None
            return text
        if kind == "boolean":
            lowered = text.lower()
            return lowered if lowered in ("true", "false") else None
        allowed = [v.strip() for v in (var.values_list or "").split(",") if v.strip()]
        if kind == "OptionList":
            return text if text in allowed else None
        if kind in ("MemberList", "SequenceList"):
            items = [item.strip() for item in text.split(",") if item.strip()]
            if allowed and any(item not in allowed for item in items):
                return None
            return ",".join(items)
        if kind == "dateTime":
            try:
                parse_datetime(text)
            except ValueError:
                return None
            return text
        return value if len(value) <= 2500 else None

    def report(self, report_base: str) -> list[dict[str, Any]]:
        """Report data for ``GetBaseReport``."""
        if report_base == "FullInventory":
            chosen = self.variables()
        elif report_base == "ConfigurationInventory":
            chosen = [v for v in self.variables() if v.mutability != READ_ONLY]
        elif report_base == "SummaryInventory":
            chosen = [v for v in self.variables() if v.name == "AvailabilityState"]
        else:
            chosen = []
        return [v.report_data() for v in chosen]


MEASURAND_LIST = ",".join(SUPPORTED_MEASURANDS)
#: MonitoringCtrlr.ItemsPerMessage of Set/ClearVariableMonitoring.
MONITORS_PER_MESSAGE = 20


def _reading(read: Callable[[int], float], evse_id: int, digits: int) -> Callable[[], str]:
    """A getter giving the measurement ``read(evse_id)`` as decimal text."""

    def getter() -> str:
        return f"{read(evse_id):.{digits}f}"

    return getter


AVAILABILITY_STATES = "Available,Occupied,Reserved,Unavailable,Faulted"


def build_device_model(
    *,
    station_id: str,
    vendor: str,
    model: str,
    evses: int,
    phases: int,
    evse_limit_w: float,
    heartbeat_interval: int,
    meter_interval: int,
    sampled_data: str,
    security_profile: int,
    availability: Callable[[int | None], str],
    local_list_entries: Callable[[], int],
    now_text: Callable[[], str],
    profile_entries: Callable[[], int] | None = None,
    evse_power: Callable[[int], float] | None = None,
    grid_voltage: Callable[[], float] | None = None,
    grid_frequency: Callable[[], float] | None = None,
) -> DeviceModel:
    """The device model of the simulated OCPP 2.0.1 charging station.

    ``availability(evse_id)`` returns the AvailabilityState of the station
    (``None``) or of one EVSE and its connector. ``evse_power(evse_id)`` is
    the power an EVSE delivers now (W; the Actual value of ``EVSE.Power``,
    whose maxLimit is the hardware limit); ``grid_voltage()`` and
    ``grid_frequency()`` the AC supply measured at the station (the Actual
    values of ``EVSE.Voltage`` and ``EVSE.Frequency``). Without them
    ``EVSE.Power`` reads the hardware limit and the supply variables are absent.
    """
    dm = DeviceModel()
    energy = "Energy.Active.Import.Register"

    def add(component: str, name: str, value: str = "", **kw: Any) -> None:
        dm.add(Variable(component, name, value, **kw))

    # Charging station, EVSEs and connectors
    add(
        "ChargingStation",
        "AvailabilityState",
        data_type="OptionList",
        mutability=READ_ONLY,
        values_list=AVAILABILITY_STATES,
        persistent=False,
        getter=lambda: availability(None),
    )
    add("ChargingStation", "Available", "true", data_type="boolean", mutability=READ_ONLY)
    add("ChargingStation", "Model", model, mutability=READ_ONLY, constant=True)
    add("ChargingStation", "VendorName", vendor, mutability=READ_ONLY, constant=True)
    add("ChargingStation", "SupplyPhases", str(phases), data_type="integer", mutability=READ_ONLY)
    for evse_id in range(1, evses + 1):

        def state(evse_id: int = evse_id) -> str:
            return availability(evse_id)

        for connector in (None, 1):
            component = "EVSE" if connector is None else "Connector"
            common = {"evse_id": evse_id, "connector_id": connector, "mutability": READ_ONLY}
            add(
                component,
                "AvailabilityState",
                data_type="OptionList",
                values_list=AVAILABILITY_STATES,
                persistent=False,
                getter=state,
                **common,
            )
            add(component, "Available", "true", data_type="boolean", **common)
            add(component, "SupplyPhases", str(phases), data_type="integer", **common)
        add(
            "EVSE",
            "Power",
            f"{evse_limit_w:.0f}",
            data_type="decimal",
            unit="W",
            max_limit=evse_limit_w,
            evse_id=evse_id,
            mutability=READ_ONLY,
            persistent=evse_power is None,
            getter=None if evse_power is None else _reading(evse_power, evse_id, 1),
        )
        if grid_voltage is not None:
            add(
                "EVSE",
                "Voltage",
                data_type="decimal",
                unit="V",
                evse_id=evse_id,
                mutability=READ_ONLY,
                persistent=False,
                getter=_reading(lambda _e: grid_voltage(), evse_id, 1),
            )
        if grid_frequency is not None:
            add(
                "EVSE",
                "Frequency",
                data_type="decimal",
                unit="Hz",
                evse_id=evse_id,
                mutability=READ_ONLY,
                persistent=False,
                getter=_reading(lambda _e: grid_frequency(), evse_id, 3),
            )
        add(
            "Connector",
            "ConnectorType",
            "cType2",
            evse_id=evse_id,
            connector_id=1,
            mutability=READ_ONLY,
            constant=True,
        )

    # Controllers
    ocpp = "OCPPCommCtrlr"
    add(
        ocpp,
        "HeartbeatInterval",
        str(heartbeat_interval),
        data_type="integer",
        unit="s",
        min_limit=0,
    )
    add(
        ocpp,
        "MessageTimeout",
        "30",
        data_type="integer",
        unit="s",
        variable_instance="Default",
        mutability=READ_ONLY,
    )
    add(
        ocpp,
        "MessageAttempts",
        "3",
        data_type="integer",
        variable_instance="TransactionEvent",
        min_limit=1,
    )
    add(
        ocpp,
        "MessageAttemptInterval",
        "60",
        data_type="integer",
        unit="s",
        variable_instance="TransactionEvent",
        min_limit=0,
    )
    add(ocpp, "OfflineThreshold", "60", data_type="integer", unit="s", min_limit=0)
    add(ocpp, "ResetRetries", "2", data_type="integer", min_limit=0)
    add(ocpp, "WebSocketPingInterval", "20", data_type="integer", unit="s", min_limit=0)

    sampled = "SampledDataCtrlr"
    add(sampled, "Enabled", "true", data_type="boolean")
    add(
        sampled,
        "TxUpdatedInterval",
        str(meter_interval),
        data_type="integer",
        unit="s",
        min_limit=0,
    )
    add(
        sampled,
        "TxUpdatedMeasurands",
        sampled_data,
        data_type="MemberList",
        values_list=MEASURAND_LIST,
    )
    add(sampled, "TxStartedMeasurands", energy, data_type="MemberList", values_list=MEASURAND_LIST)
    add(sampled, "TxEndedMeasurands", energy, data_type="MemberList", values_list=MEASURAND_LIST)
    add(sampled, "TxEndedInterval", "0", data_type="integer", unit="s", min_limit=0)

    aligned = "AlignedDataCtrlr"
    add(aligned, "Enabled", "true", data_type="boolean")
    add(aligned, "Interval", "0", data_type="integer", unit="s", min_limit=0)
    add(aligned, "Measurands", energy, data_type="MemberList", values_list=MEASURAND_LIST)
    add(aligned, "TxEndedInterval", "0", data_type="integer", unit="s", min_limit=0)
    add(aligned, "TxEndedMeasurands", energy, data_type="MemberList", values_list=MEASURAND_LIST)

    auth = "AuthCtrlr"
    add(auth, "Enabled", "true", data_type="boolean")
    add(auth, "AuthorizeRemoteStart", "false", data_type="boolean")
    add(auth, "LocalAuthorizeOffline", "true", data_type="boolean")
    add(auth, "LocalPreAuthorize", "false", data_type="boolean")
    add(auth, "OfflineTxForUnknownIdEnabled", "false", data_type="boolean")
    add("AuthCacheCtrlr", "Enabled", "true", data_type="boolean")

    local = "LocalAuthListCtrlr"
    add(local, "Enabled", "true", data_type="boolean")
    add(
        local,
        "Entries",
        data_type="integer",
        mutability=READ_ONLY,
        persistent=False,
        getter=lambda: str(local_list_entries()),
    )
    add(local, "ItemsPerMessage", "100", data_type="integer", mutability=READ_ONLY)
    add(local, "BytesPerMessage", "65536", data_type="integer", mutability=READ_ONLY)

    tx = "TxCtrlr"
    add(tx, "EVConnectionTimeOut", "60", data_type="integer", unit="s", min_limit=0)
    add(tx, "StopTxOnEVSideDisconnect", "true", data_type="boolean", mutability=READ_ONLY)
    add(tx, "StopTxOnInvalidId", "true", data_type="boolean")
    add(
        tx,
        "TxStartPoint",
        "EVConnected,Authorized",
        data_type="MemberList",
        mutability=READ_ONLY,
        values_list="ParkingBayOccupancy,EVConnected,Authorized,DataSigned,PowerPathClosed,EnergyTransfer",
    )
    add(
        tx,
        "TxStopPoint",
        "EVConnected,Authorized",
        data_type="MemberList",
        mutability=READ_ONLY,
        values_list="ParkingBayOccupancy,EVConnected,Authorized,DataSigned,PowerPathClosed,EnergyTransfer",
    )

    security = "SecurityCtrlr"
    add(
        security,
        "SecurityProfile",
        str(security_profile),
        data_type="integer",
        mutability=READ_ONLY,
    )
    add(security, "Identity", station_id, mutability=READ_ONLY)
    add(security, "BasicAuthPassword", "", mutability=WRITE_ONLY)
    add(security, "OrganizationName", vendor)

    device = "DeviceDataCtrlr"
    for instance, items in (("GetReport", "20"), ("GetVariables", "50"), ("SetVariables", "50")):
        add(
            device,
            "ItemsPerMessage",
            items,
            data_type="integer",
            variable_instance=instance,
            mutability=READ_ONLY,
        )
        add(
            device,
            "BytesPerMessage",
            "65536",
            data_type="integer",
            variable_instance=instance,
            mutability=READ_ONLY,
        )

    smart = "SmartChargingCtrlr"
    add(smart, "Enabled", "true", data_type="boolean")
    add(smart, "Available", "true", data_type="boolean", mutability=READ_ONLY)
    add(
        smart,
        "LimitChangeSignificance",
        "10",
        data_type="decimal",
        unit="Percent",
        min_limit=0,
        max_limit=100,
    )
    add(
        smart,
        "PeriodsPerSchedule",
        str(MAX_PERIODS),
        data_type="integer",
        mutability=READ_ONLY,
    )
    add(smart, "ProfileStackLevel", str(MAX_STACK_LEVEL), data_type="integer", mutability=READ_ONLY)
    add(
        smart,
        "RateUnit",
        "A,W",
        data_type="MemberList",
        values_list="A,W",
        mutability=READ_ONLY,
    )
    add(
        smart,
        "Entries",
        data_type="integer",
        variable_instance="ChargingProfiles",
        max_limit=MAX_PROFILES,
        mutability=READ_ONLY,
        persistent=False,
        getter=lambda: str(profile_entries() if profile_entries is not None else 0),
    )

    monitoring = "MonitoringCtrlr"
    add(monitoring, "Enabled", "true", data_type="boolean")
    add(monitoring, "Available", "true", data_type="boolean", mutability=READ_ONLY)
    for instance in ("SetVariableMonitoring", "ClearVariableMonitoring"):
        add(
            monitoring,
            "ItemsPerMessage",
            str(MONITORS_PER_MESSAGE),
            data_type="integer",
            variable_instance=instance,
            mutability=READ_ONLY,
        )
        add(
            monitoring,
            "BytesPerMessage",
            "65536",
            data_type="integer",
            variable_instance=instance,
            mutability=READ_ONLY,
        )
    add(
        monitoring,
        "ActiveMonitoringBase",
        "All",
        data_type="OptionList",
        values_list="All,FactoryDefault,HardWiredOnly",
        mutability=READ_ONLY,
    )
    add(monitoring, "ActiveMonitoringLevel", "9", data_type="integer", min_limit=0, max_limit=9)
    add(monitoring, "OfflineQueuingSeverity", "0", data_type="integer", min_limit=0, max_limit=9)

    add("ReservationCtrlr", "Enabled", "true", data_type="boolean", mutability=READ_ONLY)
    add("ReservationCtrlr", "NonEvseSpecific", "true", data_type="boolean", mutability=READ_ONLY)
    # Setting DateTime sets the station's clock (the station's on_change does it).
    add("ClockCtrlr", "DateTime", data_type="dateTime", persistent=False, getter=now_text)
    add(
        "ClockCtrlr",
        "TimeSource",
        "Heartbeat",
        data_type="SequenceList",
        mutability=READ_ONLY,
        values_list="Heartbeat,NTP,GPS,RealTimeClock,MobileNetwork,RadioTimeTransmitter",
    )
    return dm
