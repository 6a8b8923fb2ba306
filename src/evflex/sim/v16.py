"""OCPP 1.6-J behaviour of the simulated charge point."""

from __future__ import annotations

import dataclasses
import itertools
from datetime import datetime
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from evflex.clock import isoformat, parse_datetime
from evflex.sim.charging import ProfileRejected, profile_from_kwargs
from evflex.sim.config16 import ConfigTable, default_config_16
from evflex.sim.ev import EvBattery
from evflex.sim.firmware import FirmwareLink16, FirmwareUpdates
from evflex.sim.handlers import CommonHandlers
from evflex.sim.link import LinkMixin
from evflex.sim.metering import Sample
from evflex.sim.model import DEFAULT_SAMPLED, EvseState, Reservation, Transaction
from evflex.sim.security16 import Security16, SecurityLink16
from evflex.sim.sessions import EndCause, TxEnded
from evflex.sim.station import SimStation
from evflex.smartcharging.profiles import ProfileError

#: The configuration key of the measurands of each kind of sample.
MEASURANDS_16 = {
    "update": "MeterValuesSampledData",
    "aligned": "MeterValuesAlignedData",
    "begin": "StopTxnSampledData",
    "end": "StopTxnSampledData",
}
#: StopTransaction reasons (a reset: SoftReset or HardReset, as asked).
STOP_REASONS = {
    EndCause.EV_DISCONNECTED: "EVDisconnected",
    EndCause.REMOTE: "Remote",
    EndCause.DEAUTHORIZED: "DeAuthorized",
    EndCause.UNLOCK: "UnlockCommand",
}


def _text(value: float) -> str:
    """Sampled value text: plain decimal notation without trailing zeros."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


class Link16(SecurityLink16, FirmwareLink16, CommonHandlers, LinkMixin, OcppChargePoint):
    """Handlers for the requests of an OCPP 1.6 central system."""

    results = call_result
    station: Station16

    @on(Action.reset)
    def on_reset(self, type: str, **_: Any) -> call_result.Reset:
        self.station.reset_kind = type
        self.later(self.station.reset_all)
        return call_result.Reset(status="Accepted")

    @on(Action.change_availability)
    def on_change_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        evse = self.station.evses.get(connector_id)
        if connector_id != 0 and evse is None:
            return call_result.ChangeAvailability(status="Rejected")
        return call_result.ChangeAvailability(status=self.set_availability(evse, type))

    @on(Action.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        entries, unknown = self.station.config.get(key)
        return call_result.GetConfiguration(configuration_key=entries, unknown_key=unknown or None)

    @on(Action.change_configuration)
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        st = self.station
        status = st.security_configuration(key, value) or st.config.change(key, value)
        return call_result.ChangeConfiguration(status=status)

    @on(Action.remote_start_transaction)
    def on_remote_start_transaction(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        evse = st.pick_evse(connector_id, id_tag)
        if evse is None:
            return call_result.RemoteStartTransaction(status="Rejected")
        try:
            profile = st.remote_start_profile(evse.id, charging_profile)
        except ProfileError:
            return call_result.RemoteStartTransaction(status="Rejected")
        ev = st.plug_remote_ev(evse, profile)
        self.later(lambda: st.remote_start(evse, ev, id_tag))
        return call_result.RemoteStartTransaction(status="Accepted")

    @on(Action.remote_stop_transaction)
    def on_remote_stop_transaction(self, transaction_id: int, **_: Any) -> Any:
        return call_result.RemoteStopTransaction(status=self.stop_remotely(transaction_id))

    @on(Action.trigger_message)
    def on_trigger_message(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> Any:
        if connector_id not in (None, 0) and connector_id not in self.station.evses:
            return call_result.TriggerMessage(status="Rejected")
        actions = self.trigger_actions(connector_id)
        return call_result.TriggerMessage(status=self.trigger(requested_message, actions))

    def trigger_actions(self, connector_id: int | None) -> dict[str, Any]:
        """What TriggerMessage can ask for (ExtendedTriggerMessage adds to these)."""
        st = self.station
        return {
            "BootNotification": st.send_boot_notification,
            "Heartbeat": st.send_heartbeat,
            "StatusNotification": lambda: st.trigger_status(connector_id),
            "MeterValues": lambda: st.trigger_meter_values(connector_id),
            "FirmwareStatusNotification": lambda: st.report_transfer(
                "firmware", call.FirmwareStatusNotification(status="Idle")
            ),
            "DiagnosticsStatusNotification": lambda: st.report_transfer(
                "diagnostics", call.DiagnosticsStatusNotification(status="Idle")
            ),
        }

    @on(Action.unlock_connector)
    def on_unlock_connector(self, connector_id: int, **_: Any) -> Any:
        st = self.station
        evse = st.evses.get(connector_id)
        if evse is None:
            return call_result.UnlockConnector(status="NotSupported")
        if evse.tx is not None or evse.ev is not None:
            self.later(lambda: st.unlock(evse))
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.reserve_now)
    def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        parent_id_tag: str | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        if connector_id == 0 and not st.config.bool("ReserveConnectorZeroSupported"):
            return call_result.ReserveNow(status="Rejected")
        evse = st.evses.get(connector_id)
        if evse is None:
            return call_result.ReserveNow(status="Rejected")
        reservation = Reservation(
            reservation_id, id_tag, parse_datetime(expiry_date), parent_id_tag
        )
        return call_result.ReserveNow(status=self.reserve(evse, reservation))

    @on(Action.send_local_list)
    def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        if not st.config.bool("LocalAuthListEnabled"):
            return call_result.SendLocalList(status="NotSupported")
        entries = local_authorization_list or []
        if len(entries) > st.config.int("SendLocalListMaxLength"):
            return call_result.SendLocalList(status="Failed")
        tokens = [
            (
                str(e["id_tag"]),
                str(e["id_tag_info"]["status"]) if e.get("id_tag_info") is not None else None,
            )
            for e in entries
        ]
        max_entries = st.config.int("LocalAuthListMaxLength")
        status = st.update_local_list(list_version, update_type, tokens, max_entries)
        return call_result.SendLocalList(status=status)

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> Any:
        st = self.station
        if not st.config.bool("LocalAuthListEnabled"):
            return call_result.GetLocalListVersion(list_version=-1)
        return call_result.GetLocalListVersion(list_version=st.local_list_version_now)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> Any:
        st = self.station
        try:
            profile = profile_from_kwargs(cs_charging_profiles, st.version)
            st.install_profile(connector_id, profile)
        except (ProfileError, ProfileRejected):
            return call_result.SetChargingProfile(status="Rejected")
        self.later(st.apply_profiles)
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        removed = st.clear_profiles(id, connector_id, charging_profile_purpose, stack_level)
        if not removed:
            return call_result.ClearChargingProfile(status="Unknown")
        self.later(st.apply_profiles)
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        st = self.station
        if connector_id != 0 and connector_id not in st.evses:
            return call_result.GetCompositeSchedule(status="Rejected")
        wire = st.composite(connector_id, duration, charging_rate_unit).to_wire(st.version)
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=wire["connectorId"],
            schedule_start=wire["scheduleStart"],
            charging_schedule=wire["chargingSchedule"],
        )


class Station16(Security16, FirmwareUpdates, SimStation):
    """A simulated OCPP 1.6-J charge point (one connector per EVSE, connector id = EVSE id)."""

    version = "1.6"
    subprotocol = "ocpp1.6"
    link_class = Link16
    evse_term = "connector"

    def _init_protocol(self, *, meter_interval_s: float, heartbeat_interval_s: int) -> None:
        self.config = ConfigTable(
            default_config_16(
                connectors=self.spec.evses,
                heartbeat_interval=heartbeat_interval_s,
                meter_interval=int(round(meter_interval_s)),
                sampled_data=DEFAULT_SAMPLED,
            ),
            on_change=self._config_changed,
        )
        self._add_security_keys()
        self.reset_kind = "Soft"
        self._placeholders = itertools.count(-1, -1)
        #: Local placeholder → transaction id assigned by the central system.
        self.transaction_ids: dict[int, int] = {}

    def _profile_limits(self) -> tuple[int, int, int]:
        c = self.config
        return (
            c.int("ChargeProfileMaxStackLevel"),
            c.int("ChargingScheduleMaxPeriods"),
            c.int("MaxChargingProfilesInstalled"),
        )

    async def _limit_changed(self, evse: EvseState, previous_w: float) -> None:
        await self.refresh_status(evse)
        tx = evse.tx
        value = self.meter_value(evse, self._measurands("update"), "Other")
        if value is not None and tx is not None:
            self.enqueue_tx(self._meter_message(evse, value))

    def _config_changed(self, key: str) -> None:
        if key == "HeartbeatInterval":
            self._restart_heartbeat()
        elif key == "MeterValueSampleInterval":
            self.restart_meter_loops()
        elif key == "ClockAlignedDataInterval":
            self._restart_aligned_loop()

    # ------------------------------------------------------------------ protocol hooks

    def _derive_status(self, evse: EvseState) -> str:
        if evse.tx is not None:
            if evse.ev is not None and evse.ev.full:
                return "SuspendedEV"
            if self.offered_w(evse) <= 0:
                return "SuspendedEVSE"
            return "Charging"
        if evse.ev is not None:
            return "Finishing" if evse.finishing else "Preparing"
        if not (evse.operative and self.station_operative):
            return "Unavailable"
        if evse.reservation is not None:
            return "Reserved"
        return "Available"

    def _station_status(self) -> str | None:
        return "Available" if self.station_operative else "Unavailable"

    @property
    def connector0_status(self) -> str:
        """Status of connector 0 (the charge point as a whole)."""
        return self._station_status() or "Available"

    def _status_payload(self, evse: EvseState | None, status: str) -> Any:
        return call.StatusNotification(
            connector_id=evse.id if evse is not None else 0,
            error_code="NoError",
            status=status,
            timestamp=self.now_text(),
        )

    def _boot_payload(self) -> Any:
        spec = self.spec
        return call.BootNotification(
            charge_point_model=spec.model[:20],
            charge_point_vendor=spec.vendor[:20],
            charge_point_serial_number=(spec.serial or "")[:25] or None,
            firmware_version=spec.firmware[:50],
            iccid=spec.iccid[:20] if spec.iccid else None,
            imsi=spec.imsi[:20] if spec.imsi else None,
        )

    def _heartbeat_payload(self) -> Any:
        return call.Heartbeat()

    def _heartbeat_interval(self) -> int:
        return self.config.int("HeartbeatInterval")

    def _set_heartbeat_interval(self, interval: int) -> None:
        self.config.put("HeartbeatInterval", str(interval))

    def _meter_interval(self) -> float:
        return float(self.config.int("MeterValueSampleInterval"))

    def _aligned_interval(self) -> float:
        return float(self.config.int("ClockAlignedDataInterval"))

    def _tx_attempts(self) -> int:
        return self.config.int("TransactionMessageAttempts")

    def _tx_retry_interval(self) -> float:
        return float(self.config.int("TransactionMessageRetryInterval"))

    def _ping_interval(self) -> float:
        return float(self.config.int("WebSocketPingInterval"))

    def _local_auth_settings(self) -> tuple[bool, bool, bool, bool]:
        c = self.config
        return (
            c.bool("LocalAuthListEnabled"),
            c.bool("AuthorizationCacheEnabled"),
            c.bool("LocalPreAuthorize"),
            c.bool("LocalAuthorizeOffline"),
        )

    def _offline_unknown_allowed(self) -> bool:
        return self.config.bool("AllowOfflineTxForUnknownId")

    async def _authorize_online(self, id_token: str, token_type: str) -> str | None:
        result = await self.send(call.Authorize(id_tag=id_token))
        if result is None:
            return None
        return str((result.id_tag_info or {}).get("status", "Invalid"))

    def _is_sample(self, payload: Any) -> bool:
        return isinstance(payload, call.MeterValues)

    def _prepare_tx(self, payload: Any) -> Any | None:
        tx_id = getattr(payload, "transaction_id", None)
        if isinstance(tx_id, int) and tx_id < 0:
            real = self.transaction_ids.get(tx_id)
            if real is None:
                self.error(f"{type(payload).__name__} dropped: transaction {tx_id} never started")
                return None
            return dataclasses.replace(payload, transaction_id=real)
        return payload

    # ------------------------------------------------------------------ meter values

    def _sampled_value(self, sample: Sample, context: str) -> dict[str, Any]:
        item: dict[str, Any] = {
            "value": _text(sample.value),
            "context": context,
            "format": "Raw",
            "measurand": sample.measurand,
            "location": sample.location,
        }
        if sample.phase:
            item["phase"] = sample.phase
        if sample.unit and sample.unit != "Hz":  # OCPP 1.6 has no unit for frequency
            item["unit"] = sample.unit
        return item

    def _meter_message(self, evse: EvseState, value: dict[str, Any]) -> Any:
        return call.MeterValues(
            connector_id=evse.id, meter_value=[value], transaction_id=evse.transaction_id
        )

    async def _periodic_sample(self, evse: EvseState, ts: datetime) -> None:
        value = self.meter_value(evse, self._measurands("update"), "Sample.Periodic", ts)
        if value is not None and evse.tx is not None:
            self.enqueue_tx(self._meter_message(evse, value))

    async def _aligned_sample(self, evse: EvseState, ts: datetime) -> None:
        value = self.meter_value(evse, self._measurands("aligned"), "Sample.Clock", ts)
        await self._send_meter_value(evse, value)

    async def _send_meter_value(self, evse: EvseState, value: dict[str, Any] | None) -> None:
        """MeterValues: queued with the transaction's messages while one runs."""
        if value is None:
            return
        if evse.tx is not None:
            self.enqueue_tx(self._meter_message(evse, value))
        else:
            await self.send(self._meter_message(evse, value))

    async def trigger_meter_values(self, connector_id: int | None) -> None:
        targets = (
            list(self.evses.values()) if connector_id in (None, 0) else [self.evses[connector_id]]
        )
        for evse in targets:
            self.advance(evse)
            value = self.meter_value(evse, self._measurands("update"), "Trigger")
            await self._send_meter_value(evse, value)

    async def trigger_status(self, connector_id: int | None) -> None:
        if connector_id is None:
            await self.refresh_all(force=True)
        elif connector_id == 0:
            await self.refresh_station_status(force=True)
        else:
            await self.refresh_status(self.evses[connector_id], force=True)

    async def _check_charging_state(self, evse: EvseState) -> None:
        await self.refresh_status(evse)

    # ------------------------------------------------------------------ sessions

    def _measurands(self, kind: str) -> list[str]:
        return self.config.list(MEASURANDS_16[kind])

    async def _plugged_in(self, evse: EvseState, id_token: str) -> bool:
        await self.refresh_status(evse)
        if not await self.authorize(id_token):
            await self.token_rejected(evse)
            return False
        reservation = self.clear_reservation(evse)
        await self._start_transaction(
            evse, id_token, reservation_id=reservation.id if reservation else None
        )
        return True

    async def remote_start(self, evse: EvseState, ev: EvBattery, id_tag: str) -> None:
        async with evse.lock:
            if evse.ev is not ev:
                return
            await self.refresh_status(evse)
            if self.config.bool("AuthorizeRemoteTxRequests") and not await self.authorize(id_tag):
                await self.token_rejected(evse)
                return
            reservation = self.clear_reservation(evse)
            await self._start_transaction(
                evse, id_tag, reservation_id=reservation.id if reservation else None, remote=True
            )
        self.schedule_departure(evse, ev)

    async def _start_transaction(
        self,
        evse: EvseState,
        id_tag: str,
        *,
        reservation_id: int | None = None,
        remote: bool = False,
    ) -> None:
        tx = self.begin_transaction(
            evse,
            next(self._placeholders),
            id_token=id_tag,
            reservation_id=reservation_id,
            remote=remote,
            authorized=True,
            charging_state="Charging",
        )
        now = tx.started_at
        tx.begin_sample = self.meter_value(
            evse, self._measurands("begin"), "Transaction.Begin", now
        )
        self.stats.sessions_started += 1
        payload = call.StartTransaction(
            connector_id=evse.id,
            id_tag=id_tag,
            meter_start=int(round(evse.meter_wh)),
            timestamp=isoformat(now),
            reservation_id=reservation_id,
        )
        await self.send_tx(payload, on_result=lambda result: self._start_result(evse, tx, result))
        await self.refresh_status(evse)
        self.start_meter_loop(evse)

    def _start_result(self, evse: EvseState, tx: Transaction, result: Any) -> None:
        placeholder = tx.id
        real = int(result.transaction_id)
        if isinstance(placeholder, int) and placeholder < 0:
            self.transaction_ids[placeholder] = real
            if evse.last_transaction_id == placeholder:
                evse.last_transaction_id = real
        tx.id = real
        status = str((result.id_tag_info or {}).get("status", "Accepted"))
        if tx.id_token:
            self.remember_token(tx.id_token, status)
        if (
            status != "Accepted"
            and evse.tx is tx
            and self.config.bool("StopTransactionOnInvalidId")
        ):
            self.spawn(self.deauthorize(evse, tx))

    async def _send_tx_ended(self, ended: TxEnded) -> None:
        if ended.cause is EndCause.RESET:
            reason = "HardReset" if self.reset_kind == "Hard" else "SoftReset"
        else:
            reason = STOP_REASONS[ended.cause]
        data = [m for m in (ended.tx.begin_sample, ended.end) if m is not None]
        payload = call.StopTransaction(
            meter_stop=int(round(ended.evse.meter_wh)),
            timestamp=isoformat(ended.ts),
            transaction_id=ended.tx.id,
            reason=reason,
            transaction_data=data or None,
        )
        await self.send_tx(payload)
