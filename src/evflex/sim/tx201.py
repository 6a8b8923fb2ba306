"""TransactionEvents of a simulated OCPP 2.x station: sessions, meter values, charging states.

A 2.x transaction begins when the cable is plugged in (or at a remote start)
and is authorised afterwards; every step is a TransactionEvent, queued with
the other transaction messages. Mixed into :class:`~evflex.sim.v201.Station201`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ocpp.v201 import call

from evflex.clock import isoformat
from evflex.sim.ev import EvBattery
from evflex.sim.metering import Sample
from evflex.sim.model import EvseState, Transaction
from evflex.sim.sessions import EndCause, TxEnded

SAMPLED = "SampledDataCtrlr"
ALIGNED = "AlignedDataCtrlr"
AUTH = "AuthCtrlr"
SMART = "SmartChargingCtrlr"
#: The device model variable of the measurands of each kind of sample.
MEASURANDS_201 = {
    "update": (SAMPLED, "TxUpdatedMeasurands"),
    "aligned": (ALIGNED, "Measurands"),
    "begin": (SAMPLED, "TxStartedMeasurands"),
    "end": (SAMPLED, "TxEndedMeasurands"),
}
#: (triggerReason, stoppedReason) of the TransactionEvent that ends a transaction.
ENDED_201 = {
    EndCause.EV_DISCONNECTED: ("EVCommunicationLost", "EVDisconnected"),
    EndCause.REMOTE: ("RemoteStop", "Remote"),
    EndCause.DEAUTHORIZED: ("Deauthorized", "DeAuthorized"),
    EndCause.UNLOCK: ("UnlockCommand", "Local"),
    EndCause.RESET: ("ResetCommand", "ImmediateReset"),
}


class TransactionEvents201:
    """The 2.x transaction of each EVSE, told as TransactionEvents."""

    def _supply_state(self, evse: EvseState) -> str:
        """Charging, or SuspendedEVSE while the charging profiles allow no current."""
        return "SuspendedEVSE" if self.offered_w(evse) <= 0 else "Charging"

    def _charging_state(self, evse: EvseState) -> str:
        if evse.ev is not None and evse.ev.full:
            return "SuspendedEV"
        return self._supply_state(evse)

    async def _limit_changed(self, evse: EvseState, previous_w: float) -> None:
        tx = evse.tx
        if tx is None or not tx.authorized or evse.ev is None:
            return
        value = self.meter_value(evse, self._measurands("update"), "Other")
        state = self._charging_state(evse)
        if state != tx.charging_state:
            tx.charging_state = state
            await self._event(
                evse,
                tx,
                "Updated",
                "ChargingStateChanged",
                charging_state=state,
                meter_value=value,
                wait=False,
            )
            return
        significance = self.limit_significance()
        offered = self.offered_w(evse)
        if previous_w > 0 and abs(offered - previous_w) / previous_w < significance:
            return
        await self._event(evse, tx, "Updated", "ChargingRateChanged", meter_value=value, wait=False)

    # ------------------------------------------------------------------ meter values

    def _sampled_value(self, sample: Sample, context: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "value": sample.value,
            "context": context,
            "measurand": sample.measurand,
            "location": sample.location,
        }
        if sample.phase:
            item["phase"] = sample.phase
        if sample.unit:
            item["unit_of_measure"] = {"unit": sample.unit}
        return item

    async def _event(
        self,
        evse: EvseState,
        tx: Transaction,
        event_type: str,
        trigger: str,
        *,
        charging_state: str | None = None,
        stopped_reason: str | None = None,
        id_token: bool = False,
        meter_value: dict[str, Any] | None = None,
        include_evse: bool = False,
        reservation_id: int | None = None,
        ts: datetime | None = None,
        wait: bool = True,
    ) -> Any:
        info: dict[str, Any] = {"transaction_id": tx.id}
        if charging_state is not None:
            info["charging_state"] = charging_state
        if event_type != "Started":
            info["time_spent_charging"] = int(tx.charging_s)
        if stopped_reason is not None:
            info["stopped_reason"] = stopped_reason
        if trigger == "RemoteStart" and tx.remote_start_id is not None:
            info["remote_start_id"] = tx.remote_start_id
        payload = self._tx_event_class(
            event_type=event_type,
            timestamp=isoformat(ts or self.now()),
            trigger_reason=trigger,
            seq_no=tx.next_seq(),
            transaction_info=info,
            meter_value=[meter_value] if meter_value is not None else None,
            offline=True if not self.online else None,
            number_of_phases_used=self._used_phases(evse) if include_evse else None,
            evse={"id": evse.id, "connector_id": evse.connector_id} if include_evse else None,
            id_token=(
                {"id_token": tx.id_token, "type": tx.id_token_type}
                if id_token and tx.id_token
                else None
            ),
            reservation_id=reservation_id,
            **self._tx_event_extra(evse, event_type, info),
        )
        return await self.send_tx(
            payload, on_result=lambda result: self._event_result(evse, tx, result), wait=wait
        )

    #: The TransactionEvent payload class of this version.
    _tx_event_class = call.TransactionEvent

    def _tx_event_extra(self, evse: EvseState, event_type: str, info: dict) -> dict:
        """Version-specific additions: fields of ``info`` and keyword arguments of the call."""
        return {}

    def _event_result(self, evse: EvseState, tx: Transaction, result: Any) -> None:
        info = getattr(result, "id_token_info", None)
        if not info or not tx.id_token:
            return
        status = str(info.get("status", "Accepted"))
        self.remember_token(tx.id_token, status)
        if (
            status != "Accepted"
            and evse.tx is tx
            and tx.authorized
            and self.dm.bool("TxCtrlr", "StopTxOnInvalidId")
        ):
            self.spawn(self.deauthorize(evse, tx))

    async def _periodic_sample(self, evse: EvseState, ts: datetime) -> None:
        tx = evse.tx
        value = self.meter_value(evse, self._measurands("update"), "Sample.Periodic", ts)
        if tx is not None and value is not None:
            await self._event(
                evse, tx, "Updated", "MeterValuePeriodic", meter_value=value, ts=ts, wait=False
            )

    async def _aligned_sample(self, evse: EvseState, ts: datetime) -> None:
        value = self.meter_value(evse, self._measurands("aligned"), "Sample.Clock", ts)
        if value is None:
            return
        tx = evse.tx
        if tx is not None:
            await self._event(evse, tx, "Updated", "MeterValueClock", meter_value=value, wait=False)
        else:
            await self.send(call.MeterValues(evse_id=evse.id, meter_value=[value]))

    async def trigger_meter_values(self, targets: list[EvseState]) -> None:
        for evse in targets:
            self.advance(evse)
            value = self.meter_value(evse, self._measurands("update"), "Trigger")
            if value is not None:
                await self.send(call.MeterValues(evse_id=evse.id, meter_value=[value]))

    async def trigger_transaction_events(self, targets: list[EvseState]) -> None:
        for evse in targets:
            tx = evse.tx
            if tx is None:
                continue
            self.advance(evse)
            value = self.meter_value(evse, self._measurands("update"), "Trigger")
            await self._event(
                evse, tx, "Updated", "Trigger", charging_state=tx.charging_state, meter_value=value
            )

    async def trigger_status(self, targets: list[EvseState]) -> None:
        for evse in targets:
            await self.refresh_status(evse, force=True)

    async def _check_charging_state(self, evse: EvseState) -> None:
        tx = evse.tx
        if tx is None or not tx.authorized or evse.ev is None:
            return
        state = self._charging_state(evse)
        if state != tx.charging_state:
            tx.charging_state = state
            await self._event(
                evse, tx, "Updated", "ChargingStateChanged", charging_state=state, wait=False
            )

    # ------------------------------------------------------------------ sessions

    def _measurands(self, kind: str) -> list[str]:
        return self.dm.list(*MEASURANDS_201[kind])

    def _new_tx(
        self,
        evse: EvseState,
        *,
        id_token: str | None = None,
        token_type: str | None = None,
        tx_id: str | None = None,
        remote_start_id: int | None = None,
        remote: bool = False,
    ) -> Transaction:
        return self.begin_transaction(
            evse,
            tx_id or self.new_transaction_id(),
            id_token=id_token,
            id_token_type=token_type or self.spec.id_token_type,
            remote_start_id=remote_start_id,
            remote=remote,
        )

    def _begin_value(self, evse: EvseState, ts: datetime) -> dict[str, Any] | None:
        return self.meter_value(evse, self._measurands("begin"), "Transaction.Begin", ts)

    async def _plugged_in(self, evse: EvseState, id_token: str) -> bool:
        tx = self._new_tx(evse)
        now = self.now()  # the event and its meter value carry one stamp
        await self._event(
            evse,
            tx,
            "Started",
            "CablePluggedIn",
            charging_state="EVConnected",
            meter_value=self._begin_value(evse, now),
            include_evse=True,
            ts=now,
        )
        await self.refresh_status(evse)
        if not await self.authorize(id_token):
            await self.end_transaction(evse, EndCause.DEAUTHORIZED, ev_leaves=True)
            self.stats.sessions_rejected += 1
            return False
        reservation = self.clear_reservation(evse)
        self.advance(evse)  # no energy flows before the authorization
        tx.id_token = id_token
        tx.authorized = True
        tx.charging_state = self._supply_state(evse)
        self.advance(evse)
        self.stats.sessions_started += 1
        await self._event(
            evse,
            tx,
            "Updated",
            "Authorized",
            charging_state=tx.charging_state,
            id_token=True,
            reservation_id=reservation.id if reservation else None,
        )
        self.start_meter_loop(evse)
        self.spawn(self.notify_charging_needs(evse, tx))
        return True

    async def remote_start(
        self,
        evse: EvseState,
        ev: EvBattery,
        id_token: str,
        token_type: str,
        remote_start_id: int,
        tx_id: str,
    ) -> None:
        async with evse.lock:
            if evse.ev is not ev:
                return
            if self.dm.bool(AUTH, "AuthorizeRemoteStart") and not await self.authorize(
                id_token, token_type
            ):
                await self.token_rejected(evse)
                return
            reservation = self.clear_reservation(evse)
            tx = self._new_tx(
                evse,
                id_token=id_token,
                token_type=token_type,
                tx_id=tx_id,
                remote_start_id=remote_start_id,
                remote=True,
            )
            tx.authorized = True
            self.advance(evse)  # the vehicle draws power from now on
            self.stats.sessions_started += 1
            now = self.now()
            await self._event(
                evse,
                tx,
                "Started",
                "RemoteStart",
                charging_state="EVConnected",
                id_token=True,
                meter_value=self._begin_value(evse, now),
                include_evse=True,
                reservation_id=reservation.id if reservation else None,
                ts=now,
            )
            await self.refresh_status(evse)
            tx.charging_state = self._supply_state(evse)
            await self._event(
                evse, tx, "Updated", "ChargingStateChanged", charging_state=tx.charging_state
            )
            self.start_meter_loop(evse)
        self.schedule_departure(evse, ev)
        self.spawn(self.notify_charging_needs(evse, tx))

    async def _send_tx_ended(self, ended: TxEnded) -> None:
        trigger, reason = ENDED_201[ended.cause]
        await self._event(
            ended.evse,
            ended.tx,
            "Ended",
            trigger,
            charging_state="Idle" if ended.ev_leaves else "EVConnected",
            stopped_reason=reason,
            meter_value=ended.end,
            ts=ended.ts,
        )
