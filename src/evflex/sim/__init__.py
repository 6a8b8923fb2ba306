"""Station and EV simulator: OCPP 1.6-J / 2.0.1 charging stations driven by a clock.

The simulator is the reference station for integration tests, demos and
benchmarks::

    from evflex.sim import SimConfig, Simulation

    summary = await Simulation(SimConfig(url="ws://127.0.0.1:9000/ocpp", stations=10)).run()
"""

from evflex.sim.ev import DEFAULT_FLEET, EvBattery, EvModel, EvSpec, random_ev
from evflex.sim.model import EvseState, SimStats, StationSpec, Transaction
from evflex.sim.runner import SessionPlanner, SimConfig, SimSummary, Simulation
from evflex.sim.station import EvseBusy, SimStation

# The codecs register themselves with SimStation by their OCPP version.
from evflex.sim.v16 import Station16
from evflex.sim.v21 import Station21
from evflex.sim.v201 import Station201

__all__ = [
    "DEFAULT_FLEET",
    "EvBattery",
    "EvModel",
    "EvSpec",
    "EvseBusy",
    "EvseState",
    "SessionPlanner",
    "SimConfig",
    "SimStation",
    "SimStats",
    "SimSummary",
    "Station16",
    "Station201",
    "Station21",
    "Simulation",
    "StationSpec",
    "Transaction",
    "random_ev",
]
