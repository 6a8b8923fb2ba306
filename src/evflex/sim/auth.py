"""Authorisation of a simulated station: online, local list, cache, reservations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from evflex.sim.model import EvseState, Reservation


class Authorization:
    """Token checks and reservations of :class:`~evflex.sim.station.SimStation`."""

    async def authorize(self, id_token: str, token_type: str | None = None) -> bool:
        """Decide whether ``id_token`` may charge (online, local list, cache, offline rules)."""
        token_type = token_type or self.spec.id_token_type
        list_enabled, cache_enabled, pre_authorize, local_offline = self._local_auth_settings()
        known: str | None = None
        if list_enabled and id_token in self.local_list:
            known = self.local_list[id_token]
        elif cache_enabled and id_token in self.auth_cache:
            known = self.auth_cache[id_token]
        if self.online:
            if pre_authorize and known == "Accepted":
                return True
            status = await self._authorize_online(id_token, token_type)
            if status is not None:
                self.remember_token(id_token, status)
                return status == "Accepted"
        if local_offline and known is not None:
            return known == "Accepted"
        return known is None and self._offline_unknown_allowed()

    def remember_token(self, id_token: str, status: str) -> None:
        _, cache_enabled, _, _ = self._local_auth_settings()
        if cache_enabled:
            if status == "Accepted":
                self.auth_cache[id_token] = status
            else:
                self.auth_cache.pop(id_token, None)

    def find_reservation(self, reservation_id: int) -> EvseState | None:
        for evse in self.evses.values():
            if evse.reservation is not None and evse.reservation.id == reservation_id:
                return evse
        return None

    def reserve(self, evse: EvseState, reservation: Reservation) -> None:
        self.clear_reservation(evse)
        evse.reservation = reservation
        reservation.timer = self.spawn(self._reservation_timer(evse, reservation))

    def clear_reservation(self, evse: EvseState) -> Reservation | None:
        reservation = evse.reservation
        evse.reservation = None
        if reservation is not None and reservation.timer is not None:
            if reservation.timer is not asyncio.current_task():
                reservation.timer.cancel()
        return reservation

    def token_matches_reservation(self, evse: EvseState, id_token: str) -> bool:
        reservation = evse.reservation
        if reservation is None:
            return True
        return id_token in (reservation.id_token, reservation.parent_id_token)

    async def _reservation_timer(self, evse: EvseState, reservation: Reservation) -> None:
        delay = (reservation.expiry - self.clock.now()).total_seconds()
        await self.clock.sleep(max(0.0, delay))
        if evse.reservation is reservation:
            evse.reservation = None
            await self._reservation_expired(evse, reservation)

    # ------------------------------------------------------------------ reservation requests

    def reservation_refusal(self, evse: EvseState, reservation_id: int) -> str | None:
        """Why ``evse`` cannot take reservation ``reservation_id`` now (None: it can).

        ``"Unavailable"`` (the EVSE or the station is inoperative) or ``"Occupied"``
        (a vehicle, a transaction or another reservation is there).
        """
        if not (evse.operative and self.station_operative):
            return "Unavailable"
        other = evse.reservation is not None and evse.reservation.id != reservation_id
        if evse.tx is not None or evse.ev is not None or other:
            return "Occupied"
        return None

    def place_reservation(self, evse: EvseState, reservation: Reservation) -> list[EvseState]:
        """Reserve ``evse``; a reservation with the same id elsewhere moves here.

        Returns the EVSEs whose status changes (report them once answered).
        """
        changed = [evse]
        previous = self.find_reservation(reservation.id)
        if previous is not None and previous is not evse:
            self.clear_reservation(previous)
            changed.insert(0, previous)
        self.reserve(evse, reservation)
        return changed

    def cancel_reservation(self, reservation_id: int) -> EvseState | None:
        """CancelReservation: the EVSE that was reserved (None: no such reservation)."""
        evse = self.find_reservation(reservation_id)
        if evse is not None:
            self.clear_reservation(evse)
        return evse

    # ------------------------------------------------------------------ local list

    @property
    def local_list_version_now(self) -> int:
        """The version of the local list (0 while it is empty)."""
        return self.local_list_version if self.local_list else 0

    def update_local_list(
        self,
        version: int,
        update_type: str,
        entries: Iterable[tuple[str, str | None]],
        max_entries: int | None = None,
    ) -> str:
        """SendLocalList: apply ``(token, status)`` entries (status None: remove the token).

        ``update_type`` is ``"Full"`` or ``"Differential"``. Returns ``"Accepted"``,
        ``"VersionMismatch"`` (a differential update not newer than the list) or
        ``"Failed"`` (the list would hold more than ``max_entries`` tokens).
        """
        if update_type == "Differential" and version <= self.local_list_version:
            return "VersionMismatch"
        updated = {} if update_type == "Full" else dict(self.local_list)
        for token, status in entries:
            if status is None:
                updated.pop(token, None)
            else:
                updated[token] = status
        if max_entries is not None and len(updated) > max_entries:
            return "Failed"
        self.local_list = updated
        self.local_list_version = version
        return "Accepted"
