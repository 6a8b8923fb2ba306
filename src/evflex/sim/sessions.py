"""Charging sessions of a simulated station, independent of the OCPP version.

The station decides when a transaction begins and ends and what happens to
the EVSE; the codec of its OCPP version says it (StartTransaction /
StopTransaction in 1.6, TransactionEvent in 2.x). Why a transaction ends is
an :class:`EndCause`; each codec maps it to its reason codes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from evflex.sim.ev import EvBattery, EvSpec
from evflex.sim.metering import Sample
from evflex.sim.model import EvseState, Transaction
from evflex.smartcharging.profiles import ChargingProfile


class EvseBusy(RuntimeError):
    """A vehicle cannot be plugged in: the EVSE is occupied, reserved or unavailable."""


class EndCause(enum.Enum):
    """Why a transaction ends (each codec maps it to its trigger and reason codes)."""

    EV_DISCONNECTED = "ev-disconnected"
    REMOTE = "remote"
    DEAUTHORIZED = "deauthorized"
    UNLOCK = "unlock"
    RESET = "reset"


@dataclass
class TxEnded:
    """A transaction that just ended, for the codec to report."""

    evse: EvseState
    tx: Transaction
    cause: EndCause
    #: The vehicle leaves with it (else it stays plugged in).
    ev_leaves: bool
    #: The codec's MeterValue of the Transaction.End sample (None: nothing sampled).
    end: dict[str, Any] | None
    ts: datetime


class Sessions:
    """Plugging in and out, remote starts and stops, ending transactions."""

    #: What the codec calls an EVSE in messages to people ("connector" in 1.6).
    evse_term: ClassVar[str] = "EVSE"

    def pick_evse(self, evse_id: int | None, id_token: str) -> EvseState | None:
        """The EVSE a remote start for ``id_token`` uses (``evse_id``, or a free one)."""
        if evse_id is not None:
            candidates = [self.evses[evse_id]] if evse_id in self.evses else []
        else:
            candidates = sorted(self.evses.values(), key=lambda e: e.reservation is not None)
        for evse in candidates:
            if self.can_plug_in(evse.id) and self.token_matches_reservation(evse, id_token):
                return evse
        return None

    def plug_remote_ev(self, evse: EvseState, profile: ChargingProfile | None) -> EvBattery:
        """A remote start was accepted: the vehicle for it is at ``evse`` now."""
        ev = EvBattery(self.ev_factory())
        evse.ev = ev
        evse.finishing = False
        evse.last_update = self.now()
        if profile is not None:
            self.set_pending_tx_profile(evse, ev, profile)
        return ev

    async def plug_in(self, evse_id: int, ev: EvSpec, id_token: str) -> bool:
        """A driver plugs in ``ev`` and presents ``id_token``.

        Returns True once the transaction started, False when the token was
        rejected (the vehicle then leaves). Raises :class:`EvseBusy` if the EVSE
        cannot take a vehicle now.
        """
        evse = self.evse(evse_id)
        async with evse.lock:
            if not self.may_plug_in(evse, id_token):
                return False
            evse.ev = EvBattery(ev)
            evse.finishing = False
            evse.last_update = self.now()
            return await self._plugged_in(evse, id_token)

    def may_plug_in(self, evse: EvseState, id_token: str) -> bool:
        """Check a local plug-in: EvseBusy if the EVSE cannot take a car, False if reserved."""
        if not self.can_plug_in(evse.id):
            raise EvseBusy(f"{self.id}: {self.evse_term} {evse.id} is {evse.status}")
        if not self.token_matches_reservation(evse, id_token):
            self.stats.sessions_rejected += 1
            return False
        return True

    async def token_rejected(self, evse: EvseState) -> None:
        """The token was not authorised before a transaction began: the vehicle leaves."""
        evse.ev = None
        await self.refresh_status(evse)
        self.stats.sessions_rejected += 1

    def begin_transaction(self, evse: EvseState, tx_id: Any, **fields: Any) -> Transaction:
        """A transaction begins on ``evse`` now (its profiles and limit follow)."""
        now = self.now()
        evse.last_update = now
        tx = Transaction(
            local_id=self.new_local_id(),
            id=tx_id,
            started_at=now,
            meter_start_wh=evse.meter_wh,
            **fields,
        )
        evse.tx = tx
        evse.finishing = False
        evse.session_energy_wh = 0.0
        self.profiles_tx_started(evse)
        self.advance(evse, now)
        return tx

    async def plug_out(self, evse_id: int) -> None:
        """The vehicle leaves: end its transaction (if any) and free the EVSE."""
        await self._release(self.evse(evse_id), EndCause.EV_DISCONNECTED)

    async def unlock(self, evse: EvseState) -> None:
        """UnlockConnector: a transaction ends, the vehicle is free to leave."""
        await self._release(evse, EndCause.UNLOCK)

    async def _release(self, evse: EvseState, cause: EndCause) -> None:
        async with evse.lock:
            if evse.tx is not None:
                await self.end_transaction(evse, cause, ev_leaves=True)
            elif evse.ev is not None:
                evse.ev = None
                evse.finishing = False
                await self.refresh_status(evse)

    async def remote_stop(self, evse: EvseState, tx: Transaction) -> None:
        """The CSMS stops ``tx``; a remotely started car without a dwell time leaves."""
        async with evse.lock:
            if evse.tx is not tx:
                return
            await self.end_transaction(evse, EndCause.REMOTE, ev_leaves=False)
        if tx.remote and self.remote_dwell_s is None:
            await self.plug_out(evse.id)

    async def deauthorize(self, evse: EvseState, tx: Transaction) -> None:
        """The CSMS refused the token of a running transaction: it ends."""
        async with evse.lock:
            if evse.tx is tx:
                await self.end_transaction(evse, EndCause.DEAUTHORIZED, ev_leaves=False)

    async def _end_for_reset(self, evse: EvseState) -> None:
        if evse.tx is not None:
            await self.end_transaction(evse, EndCause.RESET, ev_leaves=True, statuses=False)
        evse.ev = None
        evse.finishing = False

    async def end_transaction(
        self, evse: EvseState, cause: EndCause, *, ev_leaves: bool, statuses: bool = True
    ) -> None:
        """End the transaction on ``evse``: final sample, the codec's message, statuses."""
        tx = evse.tx
        if tx is None:
            return
        self.stop_meter_loop(evse)
        now = self.now()
        self.advance(evse, now)
        end = self.meter_value(evse, self._measurands("end"), "Transaction.End", now)
        evse.tx = None
        evse.power_w = 0.0
        evse.last_transaction_id = tx.id
        if tx.authorized:
            self.stats.sessions_completed += 1
        self.profiles_tx_ended(evse)
        await self._send_tx_ended(TxEnded(evse, tx, cause, ev_leaves, end, now))
        if evse.ev is not None:
            evse.finishing = True
            if statuses:
                await self.refresh_status(evse)
        if ev_leaves:
            evse.ev = None
            evse.finishing = False
        if statuses:
            await self.refresh_status(evse)
        else:
            evse.status = self._derive_status(evse)
        self.after_tx_ended()

    def schedule_departure(self, evse: EvseState, ev: EvBattery) -> None:
        """For remotely started sessions: let the vehicle leave after a random dwell time."""
        if self.remote_dwell_s is not None:
            dwell = float(self.remote_dwell_s())
            if ev.departure_s is None:
                ev.departure_s = dwell
            self.spawn(self._depart_after(evse, ev, dwell))

    async def _depart_after(self, evse: EvseState, ev: EvBattery, dwell_s: float) -> None:
        await self.clock.sleep(dwell_s)
        if evse.ev is ev:
            await self.plug_out(evse.id)

    # ------------------------------------------------------------------ codec hooks

    def _measurands(self, kind: str) -> list[str]:
        """The measurands configured for ``kind`` of sample: ``"update"`` (periodic,
        triggered, a changed limit), ``"aligned"``, ``"begin"`` or ``"end"``."""
        raise NotImplementedError

    async def _plugged_in(self, evse: EvseState, id_token: str) -> bool:
        """A car is plugged into ``evse`` (its lock held) with ``id_token``: begin the
        session as the version does; False if the token is rejected (the car left)."""
        raise NotImplementedError

    def _sampled_value(self, sample: Sample, context: str) -> dict[str, Any]:
        """One SampledValue of the codec's version."""
        raise NotImplementedError

    async def _send_tx_ended(self, ended: TxEnded) -> None:
        """Tell the CSMS that a transaction ended (queued: delivered also after offline periods)."""
        raise NotImplementedError
