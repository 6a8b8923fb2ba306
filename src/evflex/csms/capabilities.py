"""Protocol facts -> capabilities: what the negotiated OCPP version and the EV's
requested energy transfer mean for planning.

The only place that turns an OCPP version or an energy transfer mode into
"may discharge", "takes PriorityCharging profiles" and the like. The store
derives the capabilities of the rows it loads with these functions, so the
load manager and the planner read :class:`StationCapabilities` and
:class:`EvCapabilities` only.
"""

from __future__ import annotations

from evflex.domain.capabilities import (
    NO_EV_CAPABILITIES,
    NO_STATION_CAPABILITIES,
    EvCapabilities,
    StationCapabilities,
)
from evflex.domain.model import OcppVersion
from evflex.smartcharging.profiles import OperationMode, Purpose

#: Purposes a CSMS may set on every version (1.6 calls the first ChargePointMaxProfile).
_BASE_PURPOSES = frozenset({Purpose.STATION_MAX, Purpose.TX_DEFAULT, Purpose.TX})

_BY_VERSION = {
    OcppVersion.V16: StationCapabilities(profile_purposes=_BASE_PURPOSES),
    # 2.0.1: ISO 15118 charging needs reach us; a period may name phaseToUse.
    OcppVersion.V201: StationCapabilities(
        iso15118=True, profile_purposes=_BASE_PURPOSES, phase_switching=True
    ),
    # 2.1: bidirectional transfer, every operation mode, priority and local generation.
    OcppVersion.V21: StationCapabilities(
        bidirectional=True,
        v2x_modes=frozenset(OperationMode),
        iso15118=True,
        profile_purposes=_BASE_PURPOSES | {Purpose.PRIORITY, Purpose.LOCAL_GENERATION},
        phase_switching=True,
    ),
}

#: 2.1 EnergyTransferModeEnumType values with bidirectional power transfer.
BIDIRECTIONAL_TRANSFERS = frozenset({"AC_BPT", "AC_BPT_DER", "DC_BPT", "DC_ACDP_BPT"})


def station_capabilities(version: str | None) -> StationCapabilities:
    """What a station can do, from the OCPP version it negotiated (None: not known yet)."""
    if version is None:
        return NO_STATION_CAPABILITIES
    try:
        return _BY_VERSION[OcppVersion(version)]
    except ValueError:
        return NO_STATION_CAPABILITIES


def ev_capabilities(requested: str | None, available: str | None = None) -> EvCapabilities:
    """What an EV offers, from its 2.x ``requestedEnergyTransfer`` and the comma-separated
    ``availableEnergyTransfer`` modes (as stored on its transaction)."""
    modes = {m.strip() for m in (available or "").split(",") if m.strip()}
    if requested:
        modes.add(requested)
    if not modes:
        return NO_EV_CAPABILITIES
    return EvCapabilities(
        bidirectional=not modes.isdisjoint(BIDIRECTIONAL_TRANSFERS),
        energy_transfer_modes=frozenset(modes),
    )
