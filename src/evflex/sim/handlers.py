"""CSMS requests whose fields read alike in OCPP 1.6 and 2.x, handled once.

Each codec's link mixes :class:`CommonHandlers` in and names the module of
its version's answers (``results``: the ``ocpp`` library's ``call_result``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from types import ModuleType
from typing import Any, ClassVar

from ocpp.routing import on

from evflex.sim.model import EvseState, Reservation


class CommonHandlers:
    """CancelReservation, ClearCache and DataTransfer for any OCPP version; the core of
    ChangeAvailability, ReserveNow, TriggerMessage and a remote stop."""

    results: ClassVar[ModuleType]
    station: Any
    later: Callable[[Callable[[], Coroutine[Any, Any, Any]]], None]

    def reserve(self, evse: EvseState, reservation: Reservation) -> str:
        """ReserveNow on ``evse``: the status to answer (statuses follow the answer)."""
        st = self.station
        refusal = st.reservation_refusal(evse, reservation.id)
        if refusal is not None:
            return str(refusal)
        changed = st.place_reservation(evse, reservation)
        self.later(lambda: st.refresh_each(changed))
        return "Accepted"

    def stop_remotely(self, transaction_id: Any) -> str:
        """RemoteStop / RequestStopTransaction: the status to answer."""
        st = self.station
        evse = st.find_tx(transaction_id)
        if evse is None or evse.tx is None:
            return "Rejected"
        tx = evse.tx
        self.later(lambda: st.remote_stop(evse, tx))
        return "Accepted"

    def trigger(
        self, requested: str, actions: dict[str, Callable[[], Coroutine[Any, Any, Any]]]
    ) -> str:
        """TriggerMessage: run the action for ``requested`` after the answer; its status."""
        factory = actions.get(requested)
        if factory is None:
            return "NotImplemented"
        self.later(factory)
        return "Accepted"

    def set_availability(self, evse: EvseState | None, operative: str) -> str:
        """ChangeAvailability of ``evse`` (None: the station): the status to answer."""
        st = self.station
        busy = st.set_operative(evse, operative == "Operative")
        self.later(st.refresh_all)
        return "Scheduled" if (operative != "Operative" and busy) else "Accepted"

    def report_later(
        self, found: list[Any], send: Callable[[list[Any]], Coroutine[Any, Any, Any]]
    ) -> bool:
        """A Get...Report request: send ``found`` after the answer; False if nothing was found."""
        if not found:
            return False
        self.later(lambda: send(found))
        return True

    @on("CancelReservation")
    def on_cancel_reservation(self, reservation_id: int, **_: Any) -> Any:
        st = self.station
        evse = st.cancel_reservation(reservation_id)
        if evse is None:
            return self.results.CancelReservation(status="Rejected")
        self.later(lambda: st.refresh_status(evse))
        return self.results.CancelReservation(status="Accepted")

    @on("ClearCache")
    def on_clear_cache(self, **_: Any) -> Any:
        self.station.auth_cache.clear()
        return self.results.ClearCache(status="Accepted")

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return self.results.DataTransfer(status="UnknownVendorId")
