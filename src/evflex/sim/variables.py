"""A variable of the OCPP 2.x device model: component, name, attributes, characteristics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_ONLY = "ReadOnly"
READ_WRITE = "ReadWrite"
WRITE_ONLY = "WriteOnly"


@dataclass
class Variable:
    """One variable (with its Actual attribute) of a device model component."""

    component: str
    name: str
    value: str = ""
    data_type: str = "string"
    mutability: str = READ_WRITE
    variable_instance: str | None = None
    component_instance: str | None = None
    evse_id: int | None = None
    connector_id: int | None = None
    unit: str | None = None
    values_list: str | None = None
    min_limit: float | None = None
    max_limit: float | None = None
    persistent: bool = True
    constant: bool = False
    getter: Callable[[], str] | None = None

    @property
    def component_key(self) -> tuple[str, str | None, int | None, int | None]:
        instance = self.component_instance.lower() if self.component_instance else None
        return (self.component.lower(), instance, self.evse_id, self.connector_id)

    @property
    def key(self) -> tuple[str, str | None, int | None, int | None, str, str | None]:
        instance = self.variable_instance.lower() if self.variable_instance else None
        return (*self.component_key, self.name.lower(), instance)

    def current(self) -> str:
        return self.getter() if self.getter is not None else self.value

    @property
    def supports_monitoring(self) -> bool:
        """Monitors can watch every variable whose value can be read."""
        return self.mutability != WRITE_ONLY

    @property
    def numeric(self) -> bool:
        return self.data_type in ("integer", "decimal")

    def component_dict(self) -> dict[str, Any]:
        comp: dict[str, Any] = {"name": self.component}
        if self.component_instance:
            comp["instance"] = self.component_instance
        if self.evse_id is not None:
            evse: dict[str, Any] = {"id": self.evse_id}
            if self.connector_id is not None:
                evse["connector_id"] = self.connector_id
            comp["evse"] = evse
        return comp

    def variable_dict(self) -> dict[str, Any]:
        var: dict[str, Any] = {"name": self.name}
        if self.variable_instance:
            var["instance"] = self.variable_instance
        return var

    def report_data(self) -> dict[str, Any]:
        attribute: dict[str, Any] = {
            "type": "Actual",
            "mutability": self.mutability,
            "persistent": self.persistent,
            "constant": self.constant,
        }
        if self.mutability != WRITE_ONLY:
            attribute["value"] = self.current()
        characteristics: dict[str, Any] = {
            "data_type": self.data_type,
            "supports_monitoring": self.supports_monitoring,
            "unit": self.unit,
            "values_list": self.values_list,
            "min_limit": self.min_limit,
            "max_limit": self.max_limit,
        }
        return {
            "component": self.component_dict(),
            "variable": self.variable_dict(),
            "variable_attribute": [attribute],
            "variable_characteristics": {k: v for k, v in characteristics.items() if v is not None},
        }


def request_component_key(
    component: dict[str, Any],
) -> tuple[str, str | None, int | None, int | None]:
    evse = component.get("evse") or {}
    instance = component.get("instance")
    return (
        str(component.get("name", "")).lower(),
        instance.lower() if instance else None,
        evse.get("id"),
        evse.get("connector_id"),
    )


def request_variable_key(variable: dict[str, Any]) -> tuple[str, str | None]:
    instance = variable.get("instance")
    return (str(variable.get("name", "")).lower(), instance.lower() if instance else None)
