"""Hostile values on the OCPP endpoint: frames the JSON decoder refuses, values that the
schema lets through but nothing can hold (integers beyond 32 bits, negative ids,
non-finite numbers, timestamps that are none or out of range), nesting without end.

Each gets the OCPP-J CALLERROR for its kind before anything reaches the store: the
answers come while the store's writer is held, nothing is written, nothing is
logged as a crash, and a station of the ``ocpp`` library beside the attacker is
served throughout.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from ocpp.v16 import call as call16

from security.ocpphard import crashes, frame, hostile_and_good, row_counts, writer_held

TS = "2026-01-01T00:00:00Z"


def status16(connector: str) -> str:
    return frame(
        "s",
        "StatusNotification",
        f'{{"connectorId":{connector},"errorCode":"NoError","status":"Available"}}',
    )


def meter16(value: str, ts: str = TS) -> str:
    return frame(
        "m",
        "MeterValues",
        f'{{"connectorId":1,"meterValue":[{{"timestamp":"{ts}",'
        f'"sampledValue":[{{"value":"{value}"}}]}}]}}',
    )


def meter201(value: str, multiplier: int = 0, evse: str = "1", ts: str = TS) -> str:
    return frame(
        "m",
        "MeterValues",
        f'{{"evseId":{evse},"meterValue":[{{"timestamp":"{ts}","sampledValue":'
        f'[{{"value":{value},"unitOfMeasure":{{"multiplier":{multiplier}}}}}]}}]}}',
    )


def start16(connector: str = "1", meter: str = "0", reservation: str = "1") -> str:
    return frame(
        "t",
        "StartTransaction",
        f'{{"connectorId":{connector},"idTag":"T","meterStart":{meter},'
        f'"reservationId":{reservation},"timestamp":"{TS}"}}',
    )


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


PROPERTY = "PropertyConstraintViolation"
CASES_16 = [
    (status16("9" * 5000), "FormationViolation"),  # the decoder refuses it; the id is read
    (status16("1" + "0" * 20), PROPERTY),  # read as a float: no 64-bit integer holds it
    (status16("10000000000000000000"), PROPERTY),  # a 64-bit unsigned integer
    (status16(str(2**31)), PROPERTY),  # one beyond OCPP's 32-bit integer
    (status16("-1"), PROPERTY),  # a negative connector
    (meter16("NaN"), PROPERTY),
    (meter16("Infinity"), PROPERTY),
    (meter16("-Infinity"), PROPERTY),
    (meter16("1e999"), PROPERTY),
    (meter16("2e15"), PROPERTY),  # finite, but sums of such would not stay so
    (meter16("1", ts="not-a-date"), "TypeConstraintViolation"),
    (meter16("1", ts="0001-01-01T00:00:00+01:00"), PROPERTY),  # before year 1 in UTC
    (start16(meter="1" + "0" * 20), PROPERTY),
    (start16(connector="-5"), PROPERTY),
    (start16(reservation="-2"), PROPERTY),
    (
        frame("d", "DataTransfer", f'{{"vendorId":"v","data":"x","x":{deep(300)}}}'),
        "FormationViolation",
    ),
    # NUL is valid JSON, but PostgreSQL keeps it in no text column
    (frame("b", "BootNotification", r'{"chargePointVendor":"V\u0000","chargePointModel":"M"}'),
     PROPERTY),
    (frame("a", "Authorize", r'{"idTag":"T\u0000"}'), PROPERTY),
]
CASES_201 = [
    (meter201("1", evse="1" + "0" * 20), PROPERTY),
    (meter201("1", evse="-1"), PROPERTY),
    (meter201("1e308", multiplier=1), PROPERTY),  # finite as sent, infinite once scaled
    (meter201("1", multiplier=400), PROPERTY),
    (meter201("-1", multiplier=16), PROPERTY),
    (meter201("1e999"), "FormatViolation"),
    (meter201("NaN"), "FormatViolation"),
    (meter201("1", ts="not-a-date"), "TypeConstraintViolation"),
    (meter201("1", ts="9999-12-31T23:00:00-05:00"), PROPERTY),  # after year 9999 in UTC
    (frame("d", "DataTransfer", f'{{"vendorId":"v","data":{deep(300)}}}'), "FormatViolation"),
    (
        frame(
            "r",
            "NotifyReport",
            f'{{"requestId":1,"generatedAt":"{TS}","seqNo":0,'
            f'"customData":{{"vendorId":"v","x":{deep(40)}}}}}',
        ),
        "FormatViolation",
    ),
    (frame("d", "DataTransfer", r'{"vendorId":"v\u0000","data":{"k\u0000":1}}'), PROPERTY),
]


@pytest.mark.parametrize(
    "proto,cases", [("ocpp1.6", CASES_16), ("ocpp2.0.1", CASES_201), ("ocpp2.1", CASES_201)]
)
async def test_hostile_values_get_the_spec_callerror_before_the_store(node, caplog, proto, cases):
    caplog.set_level(logging.INFO)
    async with hostile_and_good(node, proto) as pair:
        before = await row_counts(node)
        async with writer_held(node):
            waiting = asyncio.create_task(pair.good.call(call16.Heartbeat()))
            for text, code in cases:
                answer = await pair.send(text)
                assert answer[:3] == [4, text[4], code], (text[:120], answer)
            assert not waiting.done()  # the good station's heartbeat waits for the writer
        assert (await waiting).current_time
        for _ in cases:  # and it goes on being served, as does the attacker
            await pair.good_is_served()
        assert (await pair.send(frame("hb", "Heartbeat", "{}")))[:2] == [3, "hb"]
        assert await row_counts(node) == before
    assert not crashes(caplog)
    assert not [r for r in caplog.records if "retrying one by one" in r.getMessage()]


async def test_a_value_in_range_is_still_taken(node):
    """At the limits: the largest 32-bit id, the largest reading, the earliest time."""
    async with hostile_and_good(node, "ocpp1.6", "EDGE") as pair:
        assert (await pair.send(status16(str(2**31 - 1))))[0] == 3
        assert (await pair.send(meter16("1e15")))[0] == 3
        assert (await pair.send(meter16("1", ts="0001-01-01T00:00:00-01:00")))[0] == 3
    rows = (await node.http.get("/api/v1/stations/EDGE/meter-values")).json()
    assert sorted(r["value"] for r in rows) == [1.0, 1e15]
