"""Security audit: every refused connection or control attempt becomes an event, and
repeated failures from one source are refused for a while.

An event has one shape whoever records it (the OCPP endpoint, the API, the
driver page): ``kind="Security"``, ``type`` a CamelCase code (:data:`CODES`),
``detail={"source": <peer address>, "reason": <one line>, ...}``. Details never
carry secrets: keys that name one (password, token, authorization, ...) are
dropped and long values are cut (:func:`security_event`).

:class:`FailureLimiter` counts failures per key (a source address, a user name)
in a sliding window; a key with ``max_failures`` failures in the window is
refused until its oldest failure leaves it. :func:`refused` turns a refusal into
one ``RateLimited`` event per key and window, not one per attempt.

The source of a request behind a reverse proxy is the client it forwarded for,
but only when the proxy is trusted (:func:`source_address`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol

from evflex.clock import Clock
from evflex.domain.model import StationEvent

log = logging.getLogger(__name__)

SECURITY = "Security"
CODES = frozenset({
    "InvalidPassword", "UnknownStation", "InvalidCertificate", "CertificateForOtherStation",
    "ProfileDowngrade", "PlainConnectionRefused", "LoginFailed", "ForbiddenRole",
    "InvalidDriverToken", "InvalidApiToken", "InvalidCsrfToken", "RateLimited", "InvalidCsr",
    "CertificateRejected",
})  # fmt: skip
#: Refusals that count as a failed login against their source (the limiter).
AUTH_FAILURES = frozenset({
    "InvalidPassword", "UnknownStation", "InvalidCertificate", "CertificateForOtherStation",
    "LoginFailed", "InvalidApiToken", "InvalidDriverToken",
})  # fmt: skip
#: Detail keys never stored (whatever the caller passes): they would carry a secret.
SECRET_WORDS = ("password", "passwd", "secret", "token", "authorization", "cookie")
SECRET_KEYS = frozenset({"code", "otp", "totp", "key", "private_key"})
MAX_VALUE_CHARS = 120
STATION_ID_CHARS = 48


class EventSink(Protocol):
    """Where events go: the CSMS service (stored and published on the bus)."""

    clock: Clock

    async def record_event(self, event: StationEvent, text: str | None = None) -> None: ...


def _secret(key: str) -> bool:
    k = key.lower()
    return k in SECRET_KEYS or any(s in k for s in SECRET_WORDS)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        value = value.replace("\r", " ").replace("\n", " ")
        return value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 1] + "…"
    if isinstance(value, int | float | bool) or value is None:
        return value
    return _clean(str(value))


def security_event(
    code: str,
    source: str | None,
    reason: str,
    now: datetime,
    /,
    station_id: str | None = "",
    **detail: Any,
) -> StationEvent:
    """The ``Security`` event of a refused attempt (secrets dropped, long values cut)."""
    if code not in CODES:
        raise ValueError(f"unknown security event code {code!r}")
    clean = {k: _clean(v) for k, v in detail.items() if not _secret(k) and v is not None}
    clean["source"] = _clean(source or "")
    clean["reason"] = _clean(reason)
    station = _clean(station_id or "")[:STATION_ID_CHARS]  # what the events table holds
    return StationEvent(station, SECURITY, now, code, clean)


async def record(
    sink: EventSink,
    code: str,
    source: str | None,
    reason: str,
    /,
    station_id: str | None = "",
    **detail: Any,
) -> StationEvent:
    """Record (store + publish) the ``Security`` event of a refused attempt; returns it.
    The refusal stands whatever happens to the record: a store that cannot take it
    (stopped, failing) is logged with the event, never raised to the caller."""
    event = security_event(code, source, reason, sink.clock.now(), station_id, **detail)
    try:
        await sink.record_event(event)
    except Exception as exc:
        log.error("security event not recorded (%r): %s %s", exc, event.type, event.detail)
    return event


# ------------------------------------------------------------------ limiter


class FailureLimiter:
    """Failures per key in a sliding window; a key over the limit is refused.

    Keys are free strings (``"ip:192.0.2.7"``, ``"user:alice"``). Keys whose
    failures all left the window are forgotten, so memory stays bounded by the
    sources that failed recently.
    """

    def __init__(self, max_failures: int = 5, window_s: float = 300.0) -> None:
        if max_failures < 1 or window_s <= 0:
            raise ValueError("max_failures must be >= 1 and window_s > 0")
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._reported: dict[str, float] = {}  # key -> when its last RateLimited was recorded
        self._next_sweep = 0.0

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures[key]
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.window_s
        for key in [k for k, q in self._failures.items() if not q or q[-1] <= now - self.window_s]:
            del self._failures[key]
        for key in [k for k, t in self._reported.items() if t <= now - self.window_s]:
            del self._reported[key]

    def retry_after(self, keys: Iterable[str], now: float | None = None) -> int | None:
        """Seconds until the last of ``keys`` may try again; None if none is blocked."""
        now = time.monotonic() if now is None else now
        waits = [
            q[0] + self.window_s - now
            for q in (self._recent(k, now) for k in keys if k in self._failures)
            if len(q) >= self.max_failures
        ]
        return max(1, int(max(waits)) + 1) if waits else None

    def blocked(self, keys: Iterable[str], now: float | None = None) -> str | None:
        """The first of ``keys`` that is over the limit, or None."""
        now = time.monotonic() if now is None else now
        for k in keys:
            if k in self._failures and len(self._recent(k, now)) >= self.max_failures:
                return k
        return None

    def fail(self, keys: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._sweep(now)
        for k in keys:
            self._recent(k, now).append(now)

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)
        self._reported.pop(key, None)

    def first_refusal(self, key: str, now: float | None = None) -> bool:
        """True for the first refusal of ``key`` in a window (that one is recorded)."""
        now = time.monotonic() if now is None else now
        last = self._reported.get(key)
        if last is not None and now - last < self.window_s:
            return False
        self._reported[key] = now
        return True


async def refused(
    sink: EventSink,
    limiter: FailureLimiter,
    keys: Iterable[str],
    source: str | None,
    what: str,
    station_id: str | None = "",
) -> int | None:
    """If one of ``keys`` is over the limit: seconds to wait (one ``RateLimited``
    event per key and window is recorded); None if the attempt may go on."""
    keys = list(keys)
    now = time.monotonic()
    key = limiter.blocked(keys, now)
    if key is None:
        return None
    wait = limiter.retry_after(keys, now) or 1
    if limiter.first_refusal(key, now):
        await record(
            sink,
            "RateLimited",
            source,
            f"too many failed {what} for {key}; refused for {wait} s",
            station_id,
            limit=limiter.max_failures,
            window_s=limiter.window_s,
        )
    return wait


# ------------------------------------------------------------------ source address


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "127.0.0.1"]`` -> networks; a bad entry raises ValueError."""
    return tuple(ipaddress.ip_network(s.strip(), strict=False) for s in specs)


def within(address: str, trusted: tuple[Network, ...]) -> bool:
    """Whether ``address`` (an IP, IPv6 possibly in brackets) is in one of ``trusted``."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def source_address(
    peer: str | None, forwarded_for: Iterable[str] = (), trusted: tuple[Network, ...] = ()
) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy, the
    nearest ``X-Forwarded-For`` hop that is not itself a trusted proxy."""
    address = peer or ""
    if not trusted or not within(address, trusted):
        return address
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        address = hop
        if not within(hop, trusted):
            break
    return address
