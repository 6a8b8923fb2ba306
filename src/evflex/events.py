"""In-process publish/subscribe of domain events (control loop, dashboard, streams)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Event:
    topic: str  # e.g. "station.booted", "transaction.updated"
    station_id: str | None
    data: dict[str, Any] = field(default_factory=dict)


class EventBus:
    """Fan-out to subscribers; a slow subscriber loses its oldest events, never blocks."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size
        self.published = 0

    def publish(self, topic: str, station_id: str | None = None, **data: Any) -> None:
        self.published += 1
        if not self._subscribers:
            return
        event = Event(topic, station_id, data)
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self, queue_size: int | None = None) -> AsyncIterator[asyncio.Queue[Event]]:
        q: asyncio.Queue[Event] = asyncio.Queue(queue_size or self._queue_size)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
