"""'Drivers served' (C6): one rule for the dashboard's KPI and ``evflex demo``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from evflex.smartcharging.sitelog import need_judged, need_served
from evflex.store.tables import Site, Station, Transaction

T0 = datetime(2026, 1, 1, 8, tzinfo=UTC)
SITE = Site(id="s", phases=3, voltage=230.0)
STATION = Station(id="cp", evse_max_current_a=32.0)


def _tx(target_kwh: float, got_kwh: float, hours: float = 4.0, **kw) -> Transaction:
    values = dict(
        state="ended", started_at=T0, departure_at=T0 + timedelta(hours=hours),
        stopped_at=T0 + timedelta(hours=hours), energy_target_wh=target_kwh * 1000,
        energy_imported_wh=got_kwh * 1000, energy_exported_wh=0.0, ev_max_current_a=16.0,
    )  # fmt: skip
    values.update(kw)
    return Transaction(**values)


def test_the_need_or_all_the_car_could_take_on_its_phases():
    # 3-phase 16 A: 11 kW x 4 h = 44 kWh possible; asked 20, got 20
    assert need_served(_tx(20, 20, ev_phases=3), STATION, SITE)
    assert not need_served(_tx(20, 15, ev_phases=3), STATION, SITE)
    # single-phase: 16 A x 230 V x 4 h = 14.7 kWh is all it could take
    assert need_served(_tx(20, 14.5, ev_phases=1), STATION, SITE)
    assert not need_served(_tx(20, 12, ev_phases=1), STATION, SITE)
    # a full battery took all it would
    assert need_served(_tx(20, 12, ev_phases=1, soc_percent=97.0), STATION, SITE)


def test_a_car_that_left_before_its_departure_is_not_judged():
    stayed = _tx(20, 5)
    early = _tx(20, 5, stopped_at=T0 + timedelta(hours=1))
    assert need_judged(stayed) and not need_judged(early)
    assert not need_judged(_tx(20, 5, state="active"))
    assert not need_judged(_tx(20, 5, departure_at=None))
