"""Optimal site scheduling: one LP for charging, discharging and storage.

Pure code, no I/O: build a :class:`Problem`, call :func:`solve`, read the
:class:`Schedule`. :mod:`evflex.scheduling.wire` turns a plan into currents
a station accepts; :mod:`evflex.scheduling.flex` computes a site's up/down
flexibility for an aggregator or DSO.
"""

from evflex.scheduling.lp import SchedulingError, solve
from evflex.scheduling.problem import (
    PRESETS,
    SITE,
    Circuit,
    FlexRequest,
    Kpis,
    Objective,
    Problem,
    Schedule,
    Storage,
    StoragePlan,
    Vehicle,
    VehiclePlan,
    Weights,
)

__all__ = [
    "PRESETS",
    "SITE",
    "Circuit",
    "FlexRequest",
    "Kpis",
    "Objective",
    "Problem",
    "Schedule",
    "SchedulingError",
    "Storage",
    "StoragePlan",
    "Vehicle",
    "VehiclePlan",
    "Weights",
    "solve",
]
