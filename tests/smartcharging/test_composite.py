"""Composite schedules and the installed-profile rules (evflex.smartcharging.composite).

Worked examples come from the OCPP specifications themselves:

* OCPP 1.6 (2015-10-08) §3.13.7 "Example data structure for smart charging":
  a Recurring Daily TxDefaultProfile (id 100, stackLevel 0, W, 3 phases)
  limiting to 6 kW between 08:00 and 20:00 and 11 kW otherwise, from
  2013-01-01T00:00Z with duration 86400. The 1.6 text has no numeric worked
  composite, so the ChargePointMaxProfile / TxProfile added on top of it, and
  their expected results, are our own (§3.13.3: the composite is the minimum
  of the prevailing profiles of each purpose; §3.13.1: TxProfile overrules
  TxDefaultProfile for the transaction).
* OCPP 2.0.1 Part 6 test case TC_K_41_CS "Get Composite Schedule - Combining
  chargingProfilePurposes" (K08): ChargingStationMaxProfile, TxDefaultProfile
  and TxProfile, all Absolute, stack level 0, as instantiated in the OCTT
  replay fixtures published with EVerest libocpp
  (tests/lib/ocpp/v2/json/OCCT_TC_K_41_CS). The expected composite was derived
  by hand from the K08 rules and agrees with the one those fixtures expect.

Install rules: OCPP 1.6 §3.13.1/§3.13.2 and SetChargingProfile; OCPP 2.0.1
K01.FR.05/06/09/33/39 (wording as in the 2.0.1 Edition 3 errata 2025-09, §2.38
and §2.39). numberPhases of a composite period: 2.0.1 errata 2025-01 "3.7
Avoiding Phase Conflicts" (the lowest numberPhases of the applicable periods).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import ocpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft4Validator

from evflex.smartcharging import (
    ChargingProfile,
    CompositeSchedule,
    InstalledProfile,
    InstalledProfiles,
    Kind,
    Period,
    ProfileError,
    Purpose,
    RateUnit,
    Recurrency,
    Schedule,
    composite_schedule,
    convert,
    simple_profile,
)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def profile(
    pid: int,
    purpose: Purpose,
    periods: list[tuple[int, float]] | list[tuple[int, float, int | None]],
    *,
    unit: RateUnit = RateUnit.A,
    stack: int = 0,
    kind: Kind = Kind.ABSOLUTE,
    start: datetime | None = None,
    duration: int | None = None,
    recurrency: Recurrency | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    tx: str | None = None,
) -> ChargingProfile:
    return ChargingProfile(
        id=pid,
        stack_level=stack,
        purpose=purpose,
        kind=kind,
        recurrency=recurrency,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=tx,
        schedule=Schedule(
            rate_unit=unit,
            periods=tuple(Period(p[0], float(p[1]), *p[2:]) for p in periods),
            start=start,
            duration_s=duration,
        ),
    )


def recurring(
    pid: int, purpose: Purpose, periods, every: Recurrency, start: str, duration: int, **kw
) -> ChargingProfile:
    """A recurring profile: from ``start`` (UTC) again every day or week, ``duration`` s each."""
    return profile(
        pid,
        purpose,
        periods,
        kind=Kind.RECURRING,
        recurrency=every,
        start=ts(start),
        duration=duration,
        **kw,
    )


def limits(c: CompositeSchedule) -> list[tuple[int, float]]:
    return [(p.start_s, round(p.limit, 6)) for p in c.periods]


# --------------------------------------------------------------------- spec examples


def test_octt_tc_k_41_cs_combining_purposes():
    """OCPP 2.0.1 TC_K_41_CS: max 10 A, TxDefault and Tx (see module docstring)."""
    t0 = ts("2024-08-21T12:24:36")
    station_max = profile(1, Purpose.STATION_MAX, [(0, 10, 3)], start=t0, duration=86404)
    tx_default = profile(
        2,
        Purpose.TX_DEFAULT,
        [(0, 6, 3), (60, 10, 3), (120, 8, 3), (180, 15, 3), (260, 8, 3)],
        start=t0,
        duration=304,
        valid_from=t0,
        valid_to=ts("2024-08-21T12:31:25"),
    )
    tx = profile(
        3,
        Purpose.TX,
        [(0, 8, 3), (50, 11, 3), (140, 16, 3), (200, 6, 3), (240, 12, 3)],
        start=t0,
        duration=264,
        tx="f1522902-1170-416f-8e43-9e3bce28fde7",
    )
    station = InstalledProfiles()
    station.install(0, station_max)
    station.install(1, tx_default)
    station.install(1, tx, transaction_id="f1522902-1170-416f-8e43-9e3bce28fde7")

    c = station.composite(
        1,
        ts("2024-08-21T12:24:40"),
        400,
        RateUnit.A,
        transaction_id="f1522902-1170-416f-8e43-9e3bce28fde7",
    )
    # Tx 8 A; Tx 11/16 A capped to 10 A; Tx 6 A; Tx 12 A capped; Tx over ->
    # TxDefault 8 A; TxDefault over -> only the station max 10 A.
    assert limits(c) == [(0, 8.0), (46, 10.0), (196, 6.0), (236, 10.0), (260, 8.0), (300, 10.0)]
    assert {p.number_phases for p in c.periods} == {3}
    assert c.to_wire("2.0.1") == {
        "evseId": 1,
        "duration": 400,
        "scheduleStart": "2024-08-21T12:24:40.000Z",
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [
            {"startPeriod": s, "limit": v, "numberPhases": 3} for s, v in limits(c)
        ],
    }

    # Without the transaction only TxDefault and the station max remain.
    idle = station.composite(1, ts("2024-08-21T12:24:40"), 400)
    assert limits(idle) == [(0, 6.0), (56, 10.0), (116, 8.0), (176, 10.0), (256, 8.0), (300, 10.0)]
    # The station as a whole only sees its ChargingStationMaxProfile.
    assert limits(station.composite(0, ts("2024-08-21T12:24:40"), 400)) == [(0, 10.0)]


def _daily_default_16() -> ChargingProfile:
    """OCPP 1.6 §3.13.7: 11 kW, but 6 kW between 08:00h and 20:00h, every day."""
    return recurring(
        100,
        Purpose.TX_DEFAULT,
        [(0, 11000, 3), (28800, 6000, 3), (72000, 11000, 3)],
        Recurrency.DAILY,
        "2013-01-01T00:00:00",
        86400,
        unit=RateUnit.W,
    )


def test_ocpp16_example_daily_default_with_max_and_tx():
    """OCPP 1.6 §3.13.7 example TxDefaultProfile, combined per §3.13.3 with our own
    ChargePointMaxProfile (16 A = 11040 W on 3 x 230 V) and a 2 h TxProfile of 8 A."""
    station = InstalledProfiles()
    station.install(1, _daily_default_16(), "1.6")
    station.install(
        0, profile(1, Purpose.STATION_MAX, [(0, 16)], start=ts("2020-01-01T00:00:00")), "1.6"
    )
    day = ts("2024-05-10T06:00:00")

    idle = station.composite(1, day, 86400, RateUnit.W)
    assert limits(idle) == [(0, 11000), (7200, 6000), (50400, 11000)]

    tx = profile(7, Purpose.TX, [(0, 8)], start=ts("2024-05-10T12:00:00"), duration=7200, tx="42")
    station.install(1, tx, "1.6", transaction_id="42")
    charging = station.composite(
        1, day, 86400, RateUnit.W, transaction_id="42", transaction_start=ts("2024-05-10T05:00:00")
    )
    # 8 A on 3 phases = 5520 W from 12:00 to 14:00, then TxDefault again.
    assert limits(charging) == [
        (0, 11000),
        (7200, 6000),
        (21600, 5520),
        (28800, 6000),
        (50400, 11000),
    ]
    # In A: 11000 W / (3 * 230 V) = 15.94 A, below the 16 A ChargePointMaxProfile.
    in_amps = station.composite(1, day, 86400, transaction_id="42")
    assert limits(in_amps) == [
        (0, round(11000 / 690, 6)),
        (7200, round(6000 / 690, 6)),
        (21600, 8.0),
        (28800, round(6000 / 690, 6)),
        (50400, round(11000 / 690, 6)),
    ]
    wire = in_amps.to_wire("1.6")
    assert [p["limit"] for p in wire["chargingSchedule"]["chargingSchedulePeriod"]] == [
        15.9,
        8.6,
        8.0,
        8.6,
        15.9,
    ]  # rounded down to the 0.1 resolution, never up


def test_recurring_daily_wraps_over_midnight():
    station = InstalledProfiles([InstalledProfile(1, _daily_default_16())])
    c = station.composite(1, ts("2024-05-10T18:00:00"), 18 * 3600, RateUnit.W)
    assert limits(c) == [(0, 6000), (7200, 11000), (50400, 6000)]


def test_recurring_weekly_and_duration_caps_each_repetition():
    # Every Monday 00:00 (2024-01-01 was a Monday): 10 A for 2 h, then not in force.
    weekly = recurring(
        5, Purpose.TX_DEFAULT, [(0, 10)], Recurrency.WEEKLY, "2024-01-01T00:00:00", 7200
    )
    c = composite_schedule(
        [InstalledProfile(1, weekly)], 1, ts("2024-03-03T23:00:00"), 10 * 86400, max_current_a=32
    )
    week = 7 * 86400
    assert limits(c) == [
        (0, 32),
        (3600, 10),
        (3600 + 7200, 32),
        (3600 + week, 10),
        (3600 + week + 7200, 32),
    ]


def test_not_in_force_before_schedule_start():
    later = profile(1, Purpose.TX_DEFAULT, [(0, 10)], start=ts("2024-01-01T01:00:00"))
    daily = recurring(
        2, Purpose.STATION_MAX, [(0, 8)], Recurrency.DAILY, "2024-01-01T02:00:00", 600
    )
    c = composite_schedule(
        [InstalledProfile(1, later), InstalledProfile(0, daily)],
        1,
        ts("2024-01-01T00:00:00"),
        4 * 3600,
    )
    assert limits(c) == [(0, 32), (3600, 10), (7200, 8), (7800, 10)]


# --------------------------------------------------------------------- stacking


def test_stack_level_fallback_on_duration_and_validity():
    t0 = ts("2024-01-01T00:00:00")
    base = profile(1, Purpose.TX_DEFAULT, [(0, 16)], start=t0)
    middle = profile(
        2, Purpose.TX_DEFAULT, [(0, 10)], stack=1, start=t0 + timedelta(seconds=1800), duration=3600
    )
    top = profile(
        3,
        Purpose.TX_DEFAULT,
        [(0, 20)],
        stack=2,
        start=t0,
        valid_from=t0 + timedelta(seconds=2000),
        valid_to=t0 + timedelta(seconds=2500),
    )
    items = [InstalledProfile(1, p) for p in (base, middle, top)]
    c = composite_schedule(items, 1, t0, 7200)
    # The higher stack level wins even with a higher limit (20 A at 2000..2500).
    assert limits(c) == [(0, 16), (1800, 10), (2000, 20), (2500, 10), (5400, 16)]


def test_evse0_tx_default_applies_to_every_evse_but_specific_one_wins_at_same_level():
    t0 = ts("2024-01-01T00:00:00")
    station = InstalledProfiles()
    station.install(0, profile(1, Purpose.TX_DEFAULT, [(0, 20)], start=t0))
    station.install(1, profile(2, Purpose.TX_DEFAULT, [(0, 12)], start=t0))
    assert limits(station.composite(1, t0, 60)) == [(0, 12)]
    assert limits(station.composite(2, t0, 60)) == [(0, 20)]
    # EVSE 0 itself: TxDefault is not a station limit, only the hardware cap is left.
    assert limits(station.composite(0, t0, 60, max_current_a=63)) == [(0, 63)]
    # A higher stack level on EVSE 0 beats the EVSE-specific profile.
    station.install(0, profile(3, Purpose.TX_DEFAULT, [(0, 25)], stack=1, start=t0))
    assert limits(station.composite(1, t0, 60)) == [(0, 25)]


def test_external_constraints_of_station_and_evse_both_cap():
    t0 = ts("2024-01-01T00:00:00")
    station = InstalledProfiles()
    station.install(0, profile(1, Purpose.EXTERNAL, [(0, 20), (600, 8)], start=t0))
    station.install(1, profile(2, Purpose.EXTERNAL, [(0, 12)], stack=3, start=t0))
    station.install(1, profile(3, Purpose.TX_DEFAULT, [(0, 16)], start=t0))
    assert limits(station.composite(1, t0, 1200)) == [(0, 12), (600, 8)]
    assert limits(station.composite(2, t0, 1200)) == [(0, 20), (600, 8)]
    assert limits(station.composite(0, t0, 1200)) == [(0, 20), (600, 8)]


# --------------------------------------------------------------------- transactions


def test_relative_profiles_anchor_at_transaction_start_else_request_start():
    t0 = ts("2024-01-01T10:00:00")
    station = InstalledProfiles()
    station.install(1, profile(1, Purpose.TX_DEFAULT, [(0, 10), (900, 14)], kind=Kind.RELATIVE))
    # Idle: a Relative TxDefault starts at the request start.
    assert limits(station.composite(1, t0, 1800)) == [(0, 10), (900, 14)]
    # Charging since 5 minutes before the request: both are anchored there.
    station.install(
        1,
        profile(2, Purpose.TX, [(0, 6), (600, 16)], kind=Kind.RELATIVE, duration=1200),
        transaction_id="T",
    )
    c = station.composite(
        1, t0, 1800, transaction_id="T", transaction_start=t0 - timedelta(seconds=300)
    )
    # Tx 6 A until tx+600 (= 300 s), 16 A until tx+1200 (= 900 s), then TxDefault
    # (anchored at the transaction start too: 14 A from tx+900).
    assert limits(c) == [(0, 6), (300, 16), (900, 14)]


def test_tx_profile_only_during_its_transaction():
    t0 = ts("2024-01-01T10:00:00")
    station = InstalledProfiles()
    station.install(1, profile(1, Purpose.TX_DEFAULT, [(0, 16)], start=t0))
    station.install(1, profile(2, Purpose.TX, [(0, 6)], start=t0, tx="t1"), transaction_id="t1")
    assert limits(station.composite(1, t0, 60)) == [(0, 16)]
    assert limits(station.composite(1, t0, 60, transaction_id="t1")) == [(0, 6)]
    assert limits(station.composite(1, t0, 60, transaction_id="t2")) == [(0, 16)]
    # A TxProfile of EVSE 1 never limits EVSE 2.
    assert limits(station.composite(2, t0, 60, transaction_id="t1")) == [(0, 32)]
    # Not before the transaction started.
    c = station.composite(
        1, t0, 600, transaction_id="t1", transaction_start=t0 + timedelta(seconds=120)
    )
    assert limits(c) == [(0, 16), (120, 6)]
    assert station.clear_transaction(1) == [2]
    assert limits(station.composite(1, t0, 60, transaction_id="t1")) == [(0, 16)]


# --------------------------------------------------------------------- units


def test_unit_conversion_uses_the_period_phases_and_voltage():
    t0 = ts("2024-01-01T00:00:00")
    items = [
        InstalledProfile(
            0, profile(1, Purpose.STATION_MAX, [(0, 11040)], unit=RateUnit.W, start=t0)
        ),
        InstalledProfile(1, profile(2, Purpose.TX_DEFAULT, [(0, 20), (60, 10, 1)], start=t0)),
    ]
    amps = composite_schedule(items, 1, t0, 120)
    # 11040 W / (3 * 230 V) = 16 A caps 20 A; the 1-phase 10 A period is below it.
    assert [(p.start_s, p.limit, p.number_phases) for p in amps.periods] == [
        (0, 16.0, 3),
        (60, 10.0, 1),
    ]
    watts = composite_schedule(items, 1, t0, 120, RateUnit.W)
    assert [(p.start_s, p.limit, p.number_phases) for p in watts.periods] == [
        (0, 11040.0, 3),
        (60, 2300.0, 1),
    ]
    # The hardware cap follows the phases in use: 32 A on 1 phase of 110 V.
    one_phase = [InstalledProfile(1, profile(3, Purpose.TX_DEFAULT, [(0, 50, 1)], start=t0))]
    c = composite_schedule(one_phase, 1, t0, 60, RateUnit.W, voltage=110)
    assert [(p.limit, p.number_phases) for p in c.periods] == [(32 * 110, 1)]
    # Without numberPhases the caller's `phases` is used.
    c = composite_schedule(items[:1], 1, t0, 60, phases=1)
    assert [(p.limit, p.number_phases) for p in c.periods] == [(32.0, 1)]  # 48 A capped


def test_number_phases_is_the_lowest_of_the_applicable_periods():
    t0 = ts("2024-01-01T00:00:00")
    items = [
        InstalledProfile(0, profile(1, Purpose.STATION_MAX, [(0, 32, 3)], start=t0)),
        InstalledProfile(1, profile(2, Purpose.TX_DEFAULT, [(0, 16, 1)], start=t0, duration=60)),
    ]
    c = composite_schedule(items, 1, t0, 120)
    assert [(p.start_s, p.limit, p.number_phases) for p in c.periods] == [(0, 16, 1), (60, 32, 3)]


# --------------------------------------------------------------------- installed set


def test_install_same_id_replaces_anywhere():
    station = InstalledProfiles()
    assert station.install(1, simple_profile(5, Purpose.TX_DEFAULT, 10)) == []
    assert station.install(2, simple_profile(5, Purpose.TX_DEFAULT, 12)) == [5]
    assert [(i.evse_id, i.profile.schedule.periods[0].limit) for i in station] == [(2, 12.0)]


def test_install_16_same_stack_purpose_evse_replaces():
    station = InstalledProfiles()
    station.install(1, simple_profile(1, Purpose.TX_DEFAULT, 10), "1.6")
    station.install(2, simple_profile(2, Purpose.TX_DEFAULT, 10), "1.6")
    assert station.install(1, simple_profile(3, Purpose.TX_DEFAULT, 8), "1.6") == [1]
    assert station.install(1, simple_profile(4, Purpose.TX_DEFAULT, 8, stack_level=1), "1.6") == []
    assert sorted(i.profile.id for i in station) == [2, 3, 4]
    # TxProfile: same stack level replaces only within the same transaction.
    assert (
        station.install(
            1, simple_profile(10, Purpose.TX, 6, transaction_id="1"), "1.6", transaction_id="1"
        )
        == []
    )
    assert (
        station.install(
            1, simple_profile(11, Purpose.TX, 7, transaction_id="2"), "1.6", transaction_id="2"
        )
        == []
    )
    assert station.install(
        1, simple_profile(12, Purpose.TX, 8, transaction_id="2"), "1.6", transaction_id="2"
    ) == [11]
    assert station.install(1, simple_profile(13, Purpose.TX, 9), "1.6", transaction_id="2") == []


def test_install_201_conflicts_are_rejected():
    station = InstalledProfiles()
    t = ts("2024-01-01T00:00:00")
    day = timedelta(days=1)
    first = replace(simple_profile(1, Purpose.TX_DEFAULT, 10, start=t), valid_to=t + day)
    station.install(1, first)
    overlapping = replace(
        simple_profile(2, Purpose.TX_DEFAULT, 10, start=t), valid_from=t + day / 2
    )
    with pytest.raises(ProfileError, match="overlapping"):
        station.install(1, overlapping)  # K01.FR.06
    # Not overlapping ([from, to) periods), another EVSE, another stack level: fine.
    station.install(1, replace(overlapping, valid_from=t + day))
    station.install(2, replace(overlapping, id=3))
    station.install(1, replace(overlapping, id=4, stack_level=1))
    # The same id is a replacement, not a conflict (K01.FR.05).
    assert station.install(1, replace(first, schedule=overlapping.schedule)) == [1]
    assert len(station) == 4


def test_install_tx_profile_needs_its_running_transaction():
    station = InstalledProfiles()
    tx = simple_profile(1, Purpose.TX, 6, transaction_id="A")
    for version in ("1.6", "2.0.1"):
        with pytest.raises(ProfileError, match="no transaction"):
            station.install(1, tx, version)  # 1.6 §3.13.1, 2.0.1 K01.FR.09
        with pytest.raises(ProfileError, match="not running"):
            station.install(1, tx, version, transaction_id="B")  # K01.FR.33
    assert station.install(1, tx, transaction_id="A") == []
    with pytest.raises(ProfileError, match="stackLevel"):
        station.install(1, replace(tx, id=2), transaction_id="A")  # K01.FR.39
    assert station.install(1, replace(tx, id=3, stack_level=1), transaction_id="A") == []
    with pytest.raises(ProfileError):
        station.install(0, replace(tx, id=4), transaction_id="A")  # TxProfile on evse 0
    with pytest.raises(ProfileError):
        station.install(1, simple_profile(5, Purpose.STATION_MAX, 6))  # only on evse 0
    assert sorted(i.profile.id for i in station) == [1, 3]


def test_clear_select_and_clear_transaction():
    station = InstalledProfiles()
    station.install(0, simple_profile(1, Purpose.STATION_MAX, 32, start=ts("2024-01-01T00:00:00")))
    station.install(0, simple_profile(2, Purpose.TX_DEFAULT, 16))
    station.install(1, simple_profile(3, Purpose.TX_DEFAULT, 16))
    station.install(1, simple_profile(4, Purpose.TX_DEFAULT, 16, stack_level=2))
    station.install(2, simple_profile(5, Purpose.TX, 6, transaction_id="x"), transaction_id="x")
    station.install(1, simple_profile(6, Purpose.TX, 6, transaction_id="y"), transaction_id="y")

    assert [i.profile.id for i in station.select(evse_id=1)] == [3, 4, 6]
    assert [i.profile.id for i in station.select(purpose=Purpose.TX_DEFAULT, stack_level=0)] == [
        2,
        3,
    ]
    assert [i.profile.id for i in station.select(ids=[1, 5, 99])] == [1, 5]
    assert [i.profile.id for i in station.select(evse_id=0, ids=[3])] == []

    assert station.clear(profile_id=3, evse_id=2) == []  # criteria are ANDed
    assert station.clear(evse_id=1, purpose=Purpose.TX_DEFAULT, stack_level=2) == [4]
    assert station.clear_transaction(2) == [5]
    assert station.clear(profile_id=3) == [3]
    assert station.clear() == [1, 2, 6]
    assert len(station) == 0


# --------------------------------------------------------------------- wire


def _schema(version: str) -> Draft4Validator:
    folder = "v16" if version == "1.6" else "v201"
    path = Path(ocpp.__file__).parent / folder / "schemas" / "GetCompositeScheduleResponse.json"
    return Draft4Validator(json.loads(path.read_text(encoding="utf-8-sig"), parse_float=Decimal))


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_wire_round_trip_and_schema(version: str):
    c = CompositeSchedule(
        evse_id=2,
        start=ts("2024-02-03T04:05:06"),
        duration_s=3600,
        rate_unit=RateUnit.W,
        periods=(Period(0, 7400.0, 3), Period(600, 2300.5, 1, 2), Period(1800, 11000.0)),
    )
    if version == "1.6":
        c = replace(
            c, periods=(*c.periods[:1], replace(c.periods[1], phase_to_use=None), c.periods[2])
        )
    wire = c.to_wire(version)
    if version == "1.6":
        response = {"status": "Accepted", **wire}
    else:
        response = {"status": "Accepted", "schedule": wire}
    _schema(version).validate(json.loads(json.dumps(response), parse_float=Decimal))
    assert CompositeSchedule.from_wire(json.loads(json.dumps(wire)), version, 2) == c
    if version == "1.6":
        alone = CompositeSchedule.from_wire(wire["chargingSchedule"], version, 2)
        assert alone == c


def test_from_wire_merges_and_reports_errors():
    d = {
        "evseId": 1,
        "duration": 60,
        "scheduleStart": "2024-01-01T00:00:00Z",
        "chargingRateUnit": "A",
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 8},
            {"startPeriod": 30, "limit": 8},
        ],
    }
    c = CompositeSchedule.from_wire(d, "2.0.1", 1)
    assert c.periods == (Period(0, 8.0),)
    assert c.limit_at(ts("2024-01-01T00:00:59")) == 8.0
    assert c.limit_at(ts("2024-01-01T00:01:00")) is None
    assert c.limit_at(ts("2023-12-31T23:59:59")) is None
    with pytest.raises(ProfileError):
        CompositeSchedule.from_wire({**d, "chargingSchedulePeriod": []}, "2.0.1", 1)
    with pytest.raises(ProfileError):
        CompositeSchedule.from_wire({"chargingRateUnit": "A"}, "2.0.1", 1)
    no_duration = {"chargingSchedule": {k: v for k, v in d.items() if k != "duration"}}
    no_duration["scheduleStart"] = d["scheduleStart"]
    with pytest.raises(ProfileError, match="duration"):
        CompositeSchedule.from_wire(no_duration, "1.6", 1)
    assert CompositeSchedule.from_wire(no_duration, "1.6", 1, duration_s=60).duration_s == 60


def test_sub_second_boundaries_round_to_the_lower_limit():
    t0 = ts("2024-01-01T00:00:00")
    p = profile(1, Purpose.TX_DEFAULT, [(0, 10), (60, 6)], start=t0 + timedelta(milliseconds=300))
    c = composite_schedule([InstalledProfile(1, p)], 1, t0, 120)
    # [0, 0.3 s) is unlimited (32 A) and rounds into second 0 with 10 A: 10 A is kept.
    assert limits(c) == [(0, 10), (60, 6)]


# --------------------------------------------------------------------- properties

BASE = ts("2024-03-01T00:00:00")
DAY = 86400


def brute_limit(
    installed: list[InstalledProfile],
    evse_id: int,
    t: datetime,
    *,
    start: datetime,
    unit: RateUnit,
    transaction_id: str | None,
    transaction_start: datetime | None,
    voltage: float,
    phases: int,
    max_current_a: float,
) -> float:
    """The composite limit at one instant, straight from the rules (independent of the module)."""
    running = transaction_id is not None or transaction_start is not None

    def period_in_force(item: InstalledProfile) -> Period | None:
        p, s = item.profile, item.profile.schedule
        if p.valid_from is not None and t < p.valid_from:
            return None
        if p.valid_to is not None and t >= p.valid_to:
            return None
        if p.kind is Kind.RELATIVE or s.start is None:
            if p.purpose in (Purpose.TX, Purpose.TX_DEFAULT) and transaction_start is not None:
                origin = transaction_start
            else:
                origin = start
        else:
            origin = s.start
        if t < origin:
            return None
        elapsed = (t - origin).total_seconds()
        if p.kind is Kind.RECURRING:
            elapsed %= 7 * DAY if p.recurrency is Recurrency.WEEKLY else DAY
        if s.duration_s is not None and elapsed >= s.duration_s:
            return None
        current = None
        for period in s.periods:
            if period.start_s <= elapsed:
                current = period
        return current

    groups: dict[str, list[tuple[InstalledProfile, Period]]] = {}
    for item in installed:
        purpose, on = item.profile.purpose, item.evse_id
        if purpose is Purpose.STATION_MAX and on == 0:
            group = "max"
        elif purpose is Purpose.EXTERNAL and on == 0:
            group = "external-station"
        elif purpose is Purpose.EXTERNAL and on == evse_id:
            group = "external-evse"
        elif evse_id != 0 and purpose is Purpose.TX_DEFAULT and on in (0, evse_id):
            group = "txdefault"
        elif (
            evse_id != 0
            and purpose is Purpose.TX
            and on == evse_id
            and running
            and item.profile.transaction_id in (None, transaction_id)
            and (transaction_start is None or t >= transaction_start)
        ):
            group = "tx"
        else:
            continue
        period = period_in_force(item)
        if period is not None:
            groups.setdefault(group, []).append((item, period))
    if "tx" in groups:
        groups.pop("txdefault", None)

    chosen: list[tuple[float, int]] = []
    for candidates in groups.values():
        top = max(item.profile.stack_level for item, _ in candidates)
        best = [(i, p) for i, p in candidates if i.profile.stack_level == top]
        if any(i.evse_id == evse_id for i, _ in best):
            best = [(i, p) for i, p in best if i.evse_id == evse_id]
        values = []
        for item, period in best:
            n = period.number_phases or phases
            values.append(
                (convert(period.limit, item.profile.schedule.rate_unit, unit, n, voltage), n)
            )
        chosen.append(min(values))
    n = min((c[1] for c in chosen), default=phases)
    cap = max_current_a if unit is RateUnit.A else max_current_a * voltage * n
    return min([cap, *(c[0] for c in chosen)])


@st.composite
def profiles_(draw: st.DrawFn, pid: int) -> InstalledProfile:
    purpose = draw(st.sampled_from(list(Purpose)))
    kind = draw(st.sampled_from(list(Kind)))
    recurrency = None
    span = 30000
    if kind is Kind.RECURRING:
        recurrency = draw(st.sampled_from(list(Recurrency)))
        span = DAY if recurrency is Recurrency.DAILY else 7 * DAY
    start = None
    if kind is not Kind.RELATIVE and (kind is Kind.RECURRING or draw(st.integers(0, 9)) > 0):
        start = BASE + timedelta(seconds=draw(st.integers(-3 * DAY, 2 * DAY)))
    unit = draw(st.sampled_from(list(RateUnit)))
    offsets = sorted(draw(st.sets(st.integers(1, min(span, 40000) - 1), max_size=3)))
    periods = tuple(
        Period(
            start_s=o,
            limit=(
                draw(st.integers(0, 400)) / 10
                if unit is RateUnit.A
                else float(draw(st.integers(0, 250)) * 100)
            ),
            number_phases=draw(st.sampled_from([None, 1, 2, 3])),
        )
        for o in [0, *offsets]
    )
    duration = draw(st.one_of(st.none(), st.integers(1, 50000)))
    valid_from = valid_to = None
    if draw(st.booleans()):
        valid_from = BASE + timedelta(seconds=draw(st.integers(-DAY, 2 * DAY)))
    if draw(st.booleans()):
        valid_to = BASE + timedelta(seconds=draw(st.integers(-DAY // 2, 3 * DAY)))
    return InstalledProfile(
        evse_id=draw(st.sampled_from([0, 1, 2])),
        profile=ChargingProfile(
            id=pid,
            stack_level=draw(st.integers(0, 3)),
            purpose=purpose,
            kind=kind,
            recurrency=recurrency,
            valid_from=valid_from,
            valid_to=valid_to,
            transaction_id=draw(st.sampled_from([None, "t1", "t2"]))
            if purpose is Purpose.TX
            else None,
            schedule=Schedule(rate_unit=unit, periods=periods, start=start, duration_s=duration),
        ),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> dict:
    n = draw(st.integers(0, 6))
    installed = [draw(profiles_(pid)) for pid in range(1, n + 1)]
    start = BASE + timedelta(seconds=draw(st.integers(-DAY, DAY)))
    transaction_id = draw(st.sampled_from([None, "t1", "t2"]))
    transaction_start = None
    if draw(st.booleans()):
        transaction_start = start + timedelta(seconds=draw(st.integers(-DAY, 3600)))
    return {
        "installed": installed,
        "evse_id": draw(st.sampled_from([0, 1, 2])),
        "start": start,
        "duration_s": draw(st.integers(1, 3 * DAY)),
        "unit": draw(st.sampled_from(list(RateUnit))),
        "transaction_id": transaction_id,
        "transaction_start": transaction_start,
        "voltage": draw(st.sampled_from([230.0, 120.0])),
        "phases": draw(st.sampled_from([1, 3])),
        "max_current_a": float(draw(st.integers(6, 40))),
        "samples": draw(st.lists(st.floats(0, 1, exclude_max=True), max_size=20)),
    }


def _compose(s: dict, installed: list[InstalledProfile] | None = None) -> CompositeSchedule:
    return composite_schedule(
        s["installed"] if installed is None else installed,
        s["evse_id"],
        s["start"],
        s["duration_s"],
        s["unit"],
        **_session(s),
    )


def _session(s: dict) -> dict:
    """The scenario's transaction and electrical settings, as keyword arguments."""
    keys = ("transaction_id", "transaction_start", "voltage", "phases", "max_current_a")
    return {k: s[k] for k in keys}


def _interesting_instants(s: dict, c: CompositeSchedule) -> set[int]:
    """Offsets (s) to check: random ones, the result's own boundaries and every profile
    boundary we can think of, each with its neighbours."""
    d = s["duration_s"]
    points = {int(x * d) for x in s["samples"]}
    points |= {p.start_s for p in c.periods}
    anchors = [s["start"], s["transaction_start"]]
    for item in s["installed"]:
        p, sched = item.profile, item.profile.schedule
        times = [p.valid_from, p.valid_to]
        origins = [sched.start] if sched.start is not None else anchors
        cycle = {Recurrency.DAILY: DAY, Recurrency.WEEKLY: 7 * DAY, None: 0}[p.recurrency]
        for origin in origins:
            if origin is None:
                continue
            reps = range(-1, 8) if cycle else range(1)
            for k in reps:
                base = origin + timedelta(seconds=k * cycle)
                times += [base + timedelta(seconds=q.start_s) for q in sched.periods]
                if sched.duration_s is not None:
                    times.append(base + timedelta(seconds=sched.duration_s))
        for x in times:
            if x is not None:
                points.add(int((x - s["start"]).total_seconds()))
    if s["transaction_start"] is not None:
        points.add(int((s["transaction_start"] - s["start"]).total_seconds()))
    near = {q + delta for q in points for delta in (-1, 0, 1)}
    return {q for q in near if 0 <= q < d}


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_composite_matches_brute_force(s: dict):
    c = _compose(s)
    for offset in sorted(_interesting_instants(s, c)):
        t = s["start"] + timedelta(seconds=offset)
        expected = brute_limit(
            s["installed"],
            s["evse_id"],
            t,
            start=s["start"],
            unit=s["unit"],
            **_session(s),
        )
        got = c.limit_at(t)
        assert got is not None
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9), (offset, got, expected)
    assert c.limit_at(s["start"] - timedelta(seconds=1)) is None
    assert c.limit_at(s["start"] + timedelta(seconds=s["duration_s"])) is None


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_property_adding_a_station_cap_never_raises(s: dict, data: st.DataObject):
    # Lift the existing profiles one stack level so that the new one is the lowest of
    # its purpose: it then only applies where nothing else does (a higher stack level
    # may legitimately raise the limit: it replaces the lower one).
    lifted = [
        replace(i, profile=replace(i.profile, stack_level=i.profile.stack_level + 1))
        for i in s["installed"]
    ]
    extra = data.draw(profiles_(99))
    purpose = data.draw(st.sampled_from([Purpose.STATION_MAX, Purpose.EXTERNAL]))
    evse = 0 if purpose is Purpose.STATION_MAX else data.draw(st.sampled_from([0, s["evse_id"]]))
    schedule = extra.profile.schedule
    if s["unit"] is RateUnit.W:
        # In W an explicit numberPhases above the caller's default may legitimately raise
        # the hardware cap where nothing else applied (6 A on 1 phase -> 6 A on 3 phases).
        periods = tuple(replace(q, number_phases=None) for q in schedule.periods)
        schedule = replace(schedule, periods=periods)
    extra = InstalledProfile(
        evse,
        replace(
            extra.profile,
            purpose=purpose,
            stack_level=0,
            transaction_id=None,
            schedule=schedule,
        ),
    )
    before = _compose(s, lifted)
    after = _compose(s, [*lifted, extra])
    # Both are piecewise constant: comparing at every period start of either is exhaustive.
    for offset in {p.start_s for p in (*before.periods, *after.periods)}:
        t = s["start"] + timedelta(seconds=offset)
        assert after.limit_at(t) <= before.limit_at(t) + 1e-9


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_property_never_above_hardware_limit_and_well_formed(s: dict):
    c = _compose(s)
    assert c.rate_unit is s["unit"]
    assert c.periods and c.periods[0].start_s == 0
    for a, b in zip(c.periods, c.periods[1:], strict=False):
        assert a.start_s < b.start_s
        assert (a.limit, a.number_phases) != (b.limit, b.number_phases)
    for p in c.periods:
        assert 0 <= p.start_s < s["duration_s"]
        assert p.number_phases in (1, 2, 3)
        cap = s["max_current_a"]
        if s["unit"] is RateUnit.W:
            cap *= s["voltage"] * p.number_phases
        assert 0 <= p.limit <= cap + 1e-9
    # The wire form never reports more than was computed.
    wire = c.to_wire("2.0.1")["chargingSchedulePeriod"]
    assert all(w["limit"] <= p.limit + 1e-9 for w, p in zip(wire, c.periods, strict=True))
