"""Station settings of OCPP 1.6: the configuration keys (GetConfiguration, ChangeConfiguration)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from evflex.sim.model import SUPPORTED_MEASURANDS

#: Smart charging capabilities of the simulated stations (both OCPP versions).
MAX_STACK_LEVEL = 10
MAX_PERIODS = 24
MAX_PROFILES = 20

INT = "int"
BOOL = "bool"
TEXT = "str"
CSL = "csl"
MEASURANDS = "measurands"


@dataclass
class ConfigKey:
    """One OCPP 1.6 configuration key."""

    key: str
    value: str
    readonly: bool = False
    kind: str = TEXT
    max_items: int | None = None


class ConfigTable:
    """The configuration keys of an OCPP 1.6 charge point (names are case-insensitive)."""

    def __init__(
        self,
        keys: Iterable[ConfigKey],
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self._keys: dict[str, ConfigKey] = {k.key.lower(): k for k in keys}
        self.on_change = on_change

    def add(self, key: ConfigKey) -> None:
        self._keys[key.key.lower()] = key

    def __contains__(self, key: str) -> bool:
        return key.lower() in self._keys

    def keys(self) -> list[str]:
        return [k.key for k in self._keys.values()]

    def entry(self, key: str) -> ConfigKey:
        return self._keys[key.lower()]

    def text(self, key: str) -> str:
        return self.entry(key).value

    def int(self, key: str) -> int:
        try:
            return int(self.entry(key).value)
        except ValueError:
            return 0

    def bool(self, key: str) -> bool:
        return self.entry(key).value.strip().lower() == "true"

    def list(self, key: str) -> list[str]:
        return [item.strip() for item in self.entry(key).value.split(",") if item.strip()]

    def put(self, key: str, value: str) -> None:
        """Set a value from inside the station (also read-only keys)."""
        self.entry(key).value = value

    def get(self, requested: list[str] | None) -> tuple[list[dict[str, Any]], list[str]]:
        """``GetConfiguration``: the known entries and the unknown requested keys."""
        if not requested:
            entries = list(self._keys.values())
            unknown: list[str] = []
        else:
            entries = []
            unknown = []
            for key in requested:
                found = self._keys.get(key.lower())
                if found is None:
                    unknown.append(key)
                elif found not in entries:
                    entries.append(found)
        result = [{"key": e.key, "readonly": e.readonly, "value": e.value} for e in entries]
        return result, unknown

    def change(self, key: str, value: str) -> str:
        """``ChangeConfiguration``: Accepted, Rejected or NotSupported."""
        entry = self._keys.get(key.lower())
        if entry is None:
            return "NotSupported"
        if entry.readonly:
            return "Rejected"
        normalised = self._normalise(entry, value)
        if normalised is None:
            return "Rejected"
        entry.value = normalised
        if self.on_change is not None:
            self.on_change(entry.key)
        return "Accepted"

    @staticmethod
    def _normalise(entry: ConfigKey, value: str) -> str | None:
        text = value.strip()
        if entry.kind == INT:
            try:
                number = int(text)
            except ValueError:
                return None
            return str(number) if number >= 0 else None
        if entry.kind == BOOL:
            lowered = text.lower()
            return lowered if lowered in ("true", "false") else None
        if entry.kind in (CSL, MEASURANDS):
            items = [item.strip() for item in text.split(",") if item.strip()]
            if entry.max_items is not None and len(items) > entry.max_items:
                return None
            if entry.kind == MEASURANDS and any(i not in SUPPORTED_MEASURANDS for i in items):
                return None
            return ",".join(items)
        return text


def default_config_16(
    *,
    connectors: int,
    heartbeat_interval: int,
    meter_interval: int,
    sampled_data: str,
) -> list[ConfigKey]:
    """A realistic set of OCPP 1.6 configuration keys for the simulated charge point."""
    energy = "Energy.Active.Import.Register"
    return [
        ConfigKey("AllowOfflineTxForUnknownId", "false", kind=BOOL),
        ConfigKey("AuthorizationCacheEnabled", "true", kind=BOOL),
        ConfigKey("AuthorizeRemoteTxRequests", "false", kind=BOOL),
        ConfigKey("ClockAlignedDataInterval", "0", kind=INT),
        ConfigKey("ConnectionTimeOut", "60", kind=INT),
        ConfigKey("ConnectorPhaseRotation", ",".join(f"{i}.RST" for i in range(connectors + 1))),
        ConfigKey("GetConfigurationMaxKeys", "50", readonly=True, kind=INT),
        ConfigKey("HeartbeatInterval", str(heartbeat_interval), kind=INT),
        ConfigKey("LocalAuthorizeOffline", "true", kind=BOOL),
        ConfigKey("LocalPreAuthorize", "false", kind=BOOL),
        ConfigKey("MeterValuesAlignedData", energy, kind=MEASURANDS, max_items=8),
        ConfigKey("MeterValuesAlignedDataMaxLength", "8", readonly=True, kind=INT),
        ConfigKey("MeterValuesSampledData", sampled_data, kind=MEASURANDS, max_items=8),
        ConfigKey("MeterValuesSampledDataMaxLength", "8", readonly=True, kind=INT),
        ConfigKey("MeterValueSampleInterval", str(meter_interval), kind=INT),
        ConfigKey("MinimumStatusDuration", "0", kind=INT),
        ConfigKey("NumberOfConnectors", str(connectors), readonly=True, kind=INT),
        ConfigKey("ResetRetries", "3", kind=INT),
        ConfigKey("StopTransactionOnEVSideDisconnect", "true", kind=BOOL),
        ConfigKey("StopTransactionOnInvalidId", "true", kind=BOOL),
        ConfigKey("StopTxnAlignedData", energy, kind=MEASURANDS, max_items=8),
        ConfigKey("StopTxnAlignedDataMaxLength", "8", readonly=True, kind=INT),
        ConfigKey("StopTxnSampledData", energy, kind=MEASURANDS, max_items=8),
        ConfigKey("StopTxnSampledDataMaxLength", "8", readonly=True, kind=INT),
        ConfigKey(
            "SupportedFeatureProfiles",
            "Core,LocalAuthListManagement,Reservation,RemoteTrigger,SmartCharging",
            readonly=True,
            kind=CSL,
        ),
        ConfigKey("TransactionMessageAttempts", "3", kind=INT),
        ConfigKey("TransactionMessageRetryInterval", "60", kind=INT),
        ConfigKey("UnlockConnectorOnEVSideDisconnect", "true", kind=BOOL),
        ConfigKey("WebSocketPingInterval", "20", kind=INT),
        ConfigKey("LocalAuthListEnabled", "true", kind=BOOL),
        ConfigKey("LocalAuthListMaxLength", "1000", readonly=True, kind=INT),
        ConfigKey("SendLocalListMaxLength", "100", readonly=True, kind=INT),
        ConfigKey("ReserveConnectorZeroSupported", "false", readonly=True, kind=BOOL),
        # SmartCharging feature profile
        ConfigKey("ChargeProfileMaxStackLevel", str(MAX_STACK_LEVEL), readonly=True, kind=INT),
        ConfigKey(
            "ChargingScheduleAllowedChargingRateUnit", "Current,Power", readonly=True, kind=CSL
        ),
        ConfigKey("ChargingScheduleMaxPeriods", str(MAX_PERIODS), readonly=True, kind=INT),
        ConfigKey("MaxChargingProfilesInstalled", str(MAX_PROFILES), readonly=True, kind=INT),
    ]
