"""The audit helpers on their own: the event shape (no secrets), the per-source
failure limiter, one RateLimited event per window, the source behind a proxy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from evflex.clock import SystemClock
from evflex.domain.model import StationEvent
from evflex.security import audit

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_event_has_the_shared_shape_and_drops_secrets():
    ev = audit.security_event(
        "InvalidPassword", "192.0.2.7", "wrong password", NOW, station_id="CP1",
        password="hunter22", Authorization="Basic eHg6eXk=", id_token="tok", code="123456",
        username="alice",
    )  # fmt: skip
    assert ev.kind == "Security" and ev.type == "InvalidPassword" and ev.station_id == "CP1"
    assert ev.detail == {"source": "192.0.2.7", "reason": "wrong password", "username": "alice"}


def test_event_values_are_one_short_line():
    ev = audit.security_event("LoginFailed", "::1", "x\ny" + "z" * 500, NOW, username="u" * 500)
    assert "\n" not in ev.detail["reason"]
    assert len(ev.detail["reason"]) <= audit.MAX_VALUE_CHARS
    assert len(ev.detail["username"]) <= audit.MAX_VALUE_CHARS
    assert ev.station_id == ""
    long_id = audit.security_event("UnknownStation", "::1", "x", NOW, station_id="S" * 300)
    assert long_id.station_id == "S" * 48  # fits the events table on PostgreSQL too


def test_unknown_code_is_refused():
    with pytest.raises(ValueError, match="unknown security event code"):
        audit.security_event("Oops", "::1", "x", NOW)


def test_limiter_refuses_after_n_failures_per_source_only():
    lim = audit.FailureLimiter(max_failures=3, window_s=60)
    for t in range(3):
        assert lim.retry_after(["ip:a"], now=100.0 + t) is None
        lim.fail(["ip:a"], now=100.0 + t)
    assert lim.blocked(["ip:a"], now=103.0) == "ip:a"
    assert lim.retry_after(["ip:a"], now=103.0) == 58  # the oldest failure leaves at 160
    assert lim.blocked(["ip:b"], now=103.0) is None  # another source is not affected
    assert lim.retry_after(["ip:b"], now=103.0) is None
    assert lim.blocked(["ip:a"], now=160.5) is None  # the oldest failure left the window


def test_limiter_forgets_sources_whose_failures_left_the_window():
    lim = audit.FailureLimiter(max_failures=2, window_s=10)
    for i in range(100):
        lim.fail([f"ip:{i}"], now=0.0)
    lim.fail(["ip:late"], now=50.0)
    assert set(lim._failures) == {"ip:late"}


def test_first_refusal_once_per_window():
    lim = audit.FailureLimiter(max_failures=1, window_s=60)
    assert lim.first_refusal("ip:a", now=0.0)
    assert not lim.first_refusal("ip:a", now=30.0)
    assert lim.first_refusal("ip:b", now=30.0)
    assert lim.first_refusal("ip:a", now=61.0)


class Sink:
    clock = SystemClock()

    def __init__(self) -> None:
        self.events: list[StationEvent] = []

    async def record_event(self, event: StationEvent, text: str | None = None) -> None:
        self.events.append(event)


async def test_refused_records_one_rate_limited_event_per_window():
    sink, lim = Sink(), audit.FailureLimiter(max_failures=2, window_s=300)
    keys = ["ip:198.51.100.4"]
    assert await audit.refused(sink, lim, keys, "198.51.100.4", "logins") is None
    lim.fail(keys)
    lim.fail(keys)
    waits = [await audit.refused(sink, lim, keys, "198.51.100.4", "logins") for _ in range(5)]
    assert all(w is not None and w > 0 for w in waits)
    assert [e.type for e in sink.events] == ["RateLimited"]
    assert sink.events[0].detail["source"] == "198.51.100.4"
    assert sink.events[0].detail["limit"] == 2


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),  # trusted proxy: its client
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # forged left hop
        ("10.0.0.2", [], "10.0.0.2"),  # a trusted peer without the header is the source
        ("10.0.0.2", ["not-an-ip"], "not-an-ip"),
    ],
)
def test_source_address_behind_trusted_proxies(peer, forwarded, expected):
    trusted = audit.networks(["10.0.0.0/8"])
    assert audit.source_address(peer, forwarded, trusted) == expected


def test_source_address_without_trusted_proxies_is_the_peer():
    assert audit.source_address("10.0.0.2", ["198.51.100.1"]) == "10.0.0.2"


class BrokenSink(Sink):
    async def record_event(self, event: StationEvent, text: str | None = None) -> None:
        raise RuntimeError("writer not started")


async def test_a_refusal_stands_when_its_event_cannot_be_stored(caplog):
    ev = await audit.record(BrokenSink(), "ForbiddenRole", "192.0.2.1", "role too low")
    assert ev.type == "ForbiddenRole"
    assert "security event not recorded" in caplog.text and "192.0.2.1" in caplog.text
