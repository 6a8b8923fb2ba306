"""What a station and an EV can do, as planning code sees it.

The protocol adapters fill these in from what they negotiated and what they
were told (the station's protocol version, the energy transfer an EV asks
for); the planner, the scheduler and the load manager read them and never
the wire facts behind them. Names of operation modes and profile purposes
are the neutral ones of ``smartcharging.profiles`` (plain strings here, so
the domain stays free of protocol imports).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StationCapabilities:
    """What a station can be asked to do. The default knows of nothing beyond charging."""

    #: It can discharge an EV (V2X) when the EV and the driver agree.
    bidirectional: bool = False
    #: The operation modes a schedule period may name (CentralSetpoint, LocalFrequency, ...).
    v2x_modes: frozenset[str] = frozenset()
    #: It relays what an ISO 15118 EV says (charging needs, departure, energy transfer).
    iso15118: bool = False
    #: The charging-profile purposes it takes (TxProfile, TxDefaultProfile, ...).
    profile_purposes: frozenset[str] = frozenset()
    #: A single-phase schedule period may name the phase to use.
    phase_switching: bool = False

    def runs(self, mode: str) -> bool:
        """It can run the operation mode ``mode``."""
        return mode in self.v2x_modes

    def takes(self, purpose: str) -> bool:
        """It takes charging profiles of ``purpose``."""
        return purpose in self.profile_purposes

    def may_discharge(self, ev: EvCapabilities, consent: bool, mode: str) -> bool:
        """An EV here may be discharged in ``mode``: the station, the EV and the driver agree."""
        return consent and self.bidirectional and ev.bidirectional and self.runs(mode)


@dataclass(frozen=True, slots=True)
class EvCapabilities:
    """What an EV offers in its session. The default: charging only, nothing known."""

    #: It offers bidirectional power transfer (it may be discharged).
    bidirectional: bool = False
    #: The energy transfer modes it asked for or accepts.
    energy_transfer_modes: frozenset[str] = frozenset()


#: A station or EV of which nothing is known: it charges, that is all.
NO_STATION_CAPABILITIES = StationCapabilities()
NO_EV_CAPABILITIES = EvCapabilities()
