"""Domain objects shared by every adapter, planner and store."""

from evflex.domain.capabilities import EvCapabilities, StationCapabilities
from evflex.domain.model import (
    AuthorizationStatus,
    ChargingState,
    ConnectorStatus,
    MeterSample,
    OcppVersion,
    StationEvent,
    StationInfo,
    StatusReport,
    TransactionState,
    TransactionUpdate,
)

__all__ = [
    "AuthorizationStatus",
    "ChargingState",
    "ConnectorStatus",
    "EvCapabilities",
    "MeterSample",
    "OcppVersion",
    "StationCapabilities",
    "StationEvent",
    "StationInfo",
    "StatusReport",
    "TransactionState",
    "TransactionUpdate",
]
