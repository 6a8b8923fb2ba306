"""What the handlers of every OCPP version share.

A version's adapter subclasses :class:`StationHandlers` and marks each method
that answers an incoming action with ``@handles("Action")``; :meth:`routes`
collects them (a subclass adds to, or replaces, its parent's). Messages that
mean the same in every version are answered here once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from evflex.clock import isoformat, parse_datetime
from evflex.csms.limits import stored_data
from evflex.csms.service import CsmsService
from evflex.domain.model import StationEvent

Handler = Callable[[dict], Awaitable[dict]]

_ACTION = "_ocpp_action"


def handles(action: str) -> Callable[[Any], Any]:
    """Mark a handler method as the answer to the incoming OCPP ``action``."""

    def mark(method: Any) -> Any:
        setattr(method, _ACTION, action)
        return method

    return mark


class StationHandlers:
    """Answers the calls of one station; subclassed once per OCPP version."""

    _actions: dict[type, dict[str, str]] = {}

    def __init__(self, service: CsmsService, station_id: str) -> None:
        self.service = service
        self.station_id = station_id

    @classmethod
    def actions(cls) -> dict[str, str]:
        """OCPP action -> handler method name, for this class and its bases."""
        found = StationHandlers._actions.get(cls)
        if found is None:
            found = {}
            for klass in reversed(cls.__mro__):
                for name, member in vars(klass).items():
                    action = getattr(member, _ACTION, None)
                    if action is not None:
                        found[action] = name
            StationHandlers._actions[cls] = found
        return found

    def routes(self) -> dict[str, Handler]:
        return {action: getattr(self, name) for action, name in self.actions().items()}

    async def _event(
        self, kind: str, type_: str | None, detail: dict | None = None, ts: str | None = None
    ) -> dict:
        """Log a station event (at the station's ``ts`` if it gave one, else now)."""
        when = parse_datetime(ts) if ts else self.service.clock.now()
        await self.service.record_event(StationEvent(self.station_id, kind, when, type_, detail))
        return {}

    @handles("Heartbeat")
    async def heartbeat(self, p: dict) -> dict:
        now = await self.service.heartbeat(self.station_id)
        return {"currentTime": isoformat(now)}

    @handles("SecurityEventNotification")
    async def security_event(self, p: dict) -> dict:
        return await self._event(
            "security", p["type"], {"techInfo": p.get("techInfo")}, p["timestamp"]
        )

    @handles("DataTransfer")
    async def data_transfer(self, p: dict) -> dict:
        data, cut = stored_data(p.get("data"))
        detail = {"messageId": p.get("messageId"), "data": data}
        if cut:  # the start of its JSON is kept, and the event says so
            detail["truncated"] = True
        await self._event("data_transfer", p["vendorId"], detail)
        return {"status": "UnknownVendorId"}
