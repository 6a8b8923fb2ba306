"""Protocol facts become capabilities, and the load manager plans V2X from those.

The mapping (OCPP version, the EV's requested energy transfer) lives in
``csms/capabilities.py``; the store hands the capabilities to the load
manager with the rows it loads. Checked here through a real store: only a
2.1 station with an EV offering bidirectional transfer and the driver's
consent gets a discharging session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from evflex.clock import Clock
from evflex.csms.capabilities import ev_capabilities, station_capabilities
from evflex.domain.capabilities import NO_EV_CAPABILITIES, NO_STATION_CAPABILITIES
from evflex.domain.model import ChargingNeeds
from evflex.smartcharging.manager import LoadManager
from evflex.smartcharging.planner import SessionModel, evse_key
from evflex.smartcharging.profiles import OperationMode, Purpose
from evflex.store import repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.tables import Site, Station, Transaction

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)


def test_station_capabilities_follow_the_negotiated_version():
    v16, v201, v21 = (station_capabilities(v) for v in ("1.6", "2.0.1", "2.1"))
    assert v21.bidirectional and v21.runs(OperationMode.CENTRAL_SETPOINT)
    assert v21.takes(Purpose.PRIORITY) and v21.takes(Purpose.LOCAL_GENERATION)
    for caps in (v16, v201):
        assert not caps.bidirectional and not caps.v2x_modes
        assert caps.takes(Purpose.TX) and not caps.takes(Purpose.PRIORITY)
    assert v201.iso15118 and v201.phase_switching
    assert not v16.iso15118 and not v16.phase_switching
    # not negotiated yet, or a version we do not speak: nothing beyond charging
    assert station_capabilities(None) == NO_STATION_CAPABILITIES
    assert station_capabilities("3.0") == NO_STATION_CAPABILITIES


def test_ev_capabilities_follow_the_energy_transfer():
    for mode in ("AC_BPT", "DC_BPT", "AC_BPT_DER", "DC_ACDP_BPT"):
        assert ev_capabilities(mode).bidirectional, mode
    for mode in ("AC_three_phase", "AC_single_phase", "DC", "AC_DER"):
        assert not ev_capabilities(mode).bidirectional, mode
    # a bidirectional mode among those the EV offers counts too
    offer = ev_capabilities("AC_three_phase", "AC_three_phase, AC_BPT")
    assert offer.bidirectional
    assert offer.energy_transfer_modes == {"AC_three_phase", "AC_BPT"}
    assert ev_capabilities(None, None) == NO_EV_CAPABILITIES


def test_discharging_needs_station_ev_consent_and_the_mode():
    bpt, plain = ev_capabilities("AC_BPT"), ev_capabilities("AC_three_phase")
    v21 = station_capabilities("2.1")
    assert v21.may_discharge(bpt, True, OperationMode.CENTRAL_SETPOINT)
    assert not v21.may_discharge(bpt, False, OperationMode.CENTRAL_SETPOINT)
    assert not v21.may_discharge(plain, True, OperationMode.CENTRAL_SETPOINT)
    assert not station_capabilities("2.0.1").may_discharge(
        bpt, True, OperationMode.CENTRAL_SETPOINT
    )
    assert not NO_STATION_CAPABILITIES.may_discharge(bpt, True, OperationMode.CENTRAL_SETPOINT)


class _FixedClock(Clock):
    def now(self) -> datetime:
        return T0

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("not expected to wait")


class _NoDispatcher:
    def on_result(self, listener: object) -> None:
        pass


#: (station, OCPP version, EVSE, requested energy transfer, the driver's consent)
SESSIONS = [
    ("CAP21", "2.1", 1, "AC_BPT", True),
    ("CAP21", "2.1", 2, "AC_three_phase", True),  # the EV does not offer BPT
    ("CAP21", "2.1", 3, "DC_BPT", False),  # the driver did not consent
    ("CAP201", "2.0.1", 1, "AC_BPT", True),  # 2.0.1: no V2X
    ("CAP16", "1.6", 1, None, True),
]


@pytest.fixture
async def manager(tmp_path) -> AsyncIterator[LoadManager]:
    engine = make_engine(f"sqlite:///{tmp_path / 'cap.db'}")
    await migrate(engine)
    sessions = make_sessionmaker(engine)
    async with sessions() as s, s.begin():
        s.add(Site(id="CAP", import_limit_w=100_000.0, created_at=T0, updated_at=T0))
        for sid, version in {(x[0], x[1]) for x in SESSIONS}:
            s.add(Station(id=sid, site_id="CAP", ocpp_version=version, created_at=T0))
        await s.flush()
        for sid, _, evse, transfer, consent in SESSIONS:
            tx = Transaction(
                station_id=sid,
                transaction_id=f"{sid}-{evse}",
                evse_id=evse,
                id_token="TOKEN",
                state="active",
                started_at=T0,
                updated_at=T0,
            )
            s.add(tx)
            # what the adapter makes of NotifyEVChargingNeeds, and the driver's answer
            needs = ChargingNeeds(
                sid,
                evse,
                energy_transfer=transfer,
                ev_max_discharge_w=7000.0,
                v2x_allowed=consent,
            )
            repo.set_transaction_needs(tx, needs)
    lm = LoadManager(
        sessions,
        None,  # load_model neither writes nor publishes
        None,
        _FixedClock(),
        _NoDispatcher(),
        lambda sid: True,
    )
    try:
        yield lm
    finally:
        await engine.dispose()


async def test_only_a_consenting_bpt_ev_at_a_21_station_may_discharge(manager):
    model, _ = await manager.load_model("CAP")
    assert model is not None
    sessions: dict[tuple[str, int], SessionModel] = {}
    for sid, _, evse, _, _ in SESSIONS:
        session = model.evses[evse_key(sid, evse)].session
        assert session is not None
        sessions[(sid, evse)] = session
    v2x = sessions.pop(("CAP21", 1))
    assert v2x.v2x and v2x.max_discharge_w == 7000.0
    for key, session in sessions.items():
        assert not session.v2x and session.max_discharge_w == 0.0, key
