"""OCPP 2.0.1 behaviour of the simulated charging station."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint as OcppChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from evflex.clock import isoformat, parse_datetime
from evflex.sim.devicemodel import READ_ONLY, Variable, build_device_model
from evflex.sim.ev import EvBattery, EvSpec
from evflex.sim.model import DEFAULT_SAMPLED, EvseState, Reservation, Transaction
from evflex.sim.monitoring import MonitorEngine, evse_power_w, grid_frequency_hz, grid_voltage_v
from evflex.sim.station import (
    EvseBusy,
    LinkMixin,
    ProfileRejected,
    SimStation,
    profile_from_kwargs,
)
from evflex.smartcharging.composite import InstalledProfile
from evflex.smartcharging.profiles import ChargingProfile, ProfileError, Purpose, to_wire

SAMPLED = "SampledDataCtrlr"
ALIGNED = "AlignedDataCtrlr"
AUTH = "AuthCtrlr"
COMM = "OCPPCommCtrlr"
SMART = "SmartChargingCtrlr"
#: requestedEnergyTransfer by the number of phases of the vehicle's charger.
ENERGY_TRANSFER = {1: "AC_single_phase", 2: "AC_two_phase", 3: "AC_three_phase"}


def _status_info(reason: str, info: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:512]
    return out


class Link201(LinkMixin, OcppChargePoint):
    """Handlers for the requests of an OCPP 2.0.1 CSMS."""

    station: Station201

    @on(Action.reset)
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        st = self.station
        if evse_id is not None:
            return call_result.Reset(
                status="Rejected", status_info={"reason_code": "UnsupportedRequest"}
            )
        if type == "OnIdle" and any(e.tx is not None for e in st.evses.values()):
            st.schedule_reset()
            return call_result.Reset(status="Scheduled")
        self.later(st.reset_all)
        return call_result.Reset(status="Accepted")

    @on(Action.change_availability)
    def on_change_availability(
        self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        st = self.station
        operative = operational_status == "Operative"
        if evse is None or evse.get("id", 0) == 0:
            targets = list(st.evses.values())
            st.station_operative = operative
        else:
            target = st.evses.get(evse["id"])
            connector = evse.get("connector_id")
            if target is None or connector not in (None, target.connector_id):
                return call_result.ChangeAvailability(status="Rejected")
            targets = [target]
            target.operative = operative
        busy = any(e.tx is not None for e in targets)
        self.later(st.refresh_all)
        status = "Scheduled" if (not operative and busy) else "Accepted"
        return call_result.ChangeAvailability(status=status)

    @on(Action.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = self.station.dm.get_variables(get_variable_data)
        return call_result.GetVariables(get_variable_result=results)

    @on(Action.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = self.station.dm.set_variables(set_variable_data)
        return call_result.SetVariables(set_variable_result=results)

    @on(Action.get_base_report)
    def on_get_base_report(self, request_id: int, report_base: str, **_: Any) -> Any:
        st = self.station
        data = st.dm.report(report_base)
        if not data:
            return call_result.GetBaseReport(status="EmptyResultSet")
        self.later(lambda: st.send_report(request_id, data))
        return call_result.GetBaseReport(status="Accepted")

    # -- monitoring

    @on(Action.set_variable_monitoring)
    def on_set_variable_monitoring(
        self, set_monitoring_data: list[dict[str, Any]], **_: Any
    ) -> Any:
        results = self.station.monitoring.set(set_monitoring_data)
        self.later(self.station.monitoring.kick)
        return call_result.SetVariableMonitoring(set_monitoring_result=results)

    @on(Action.clear_variable_monitoring)
    def on_clear_variable_monitoring(self, id: list[int], **_: Any) -> Any:
        results = self.station.monitoring.clear(id)
        self.later(self.station.monitoring.kick)
        return call_result.ClearVariableMonitoring(clear_monitoring_result=results)

    @on(Action.get_monitoring_report)
    def on_get_monitoring_report(
        self,
        request_id: int,
        monitoring_criteria: list[str] | None = None,
        component_variable: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        engine = self.station.monitoring
        data = engine.report(monitoring_criteria, component_variable)
        if not data:
            return call_result.GetMonitoringReport(status="EmptyResultSet")
        self.later(lambda: engine.send_report(request_id, data))
        return call_result.GetMonitoringReport(status="Accepted")

    @on(Action.request_start_transaction)
    def on_request_start_transaction(
        self,
        id_token: dict[str, Any],
        remote_start_id: int,
        evse_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        token = str(id_token["id_token"])
        evse = st.pick_evse(evse_id, token)
        if evse is None:
            return call_result.RequestStartTransaction(status="Rejected")
        profile: ChargingProfile | None = None
        if charging_profile is not None:
            try:
                profile = profile_from_kwargs(charging_profile, st.version)
                st.check_tx_profile(evse.id, profile)
            except ProfileError as exc:
                return call_result.RequestStartTransaction(
                    status="Rejected", status_info=_status_info("InvalidProfile", str(exc))
                )
        ev = EvBattery(st.ev_factory())
        evse.ev = ev
        evse.last_update = st.now()
        if profile is not None:
            st.set_pending_tx_profile(evse, ev, profile)
        tx_id = st.new_transaction_id()
        authorize_first = st.dm.bool(AUTH, "AuthorizeRemoteStart")
        token_type = str(id_token.get("type") or st.spec.id_token_type)
        self.later(lambda: st.remote_start(evse, ev, token, token_type, remote_start_id, tx_id))
        return call_result.RequestStartTransaction(
            status="Accepted", transaction_id=None if authorize_first else tx_id
        )

    @on(Action.request_stop_transaction)
    def on_request_stop_transaction(self, transaction_id: str, **_: Any) -> Any:
        st = self.station
        evse = st.find_tx(transaction_id)
        if evse is None or evse.tx is None:
            return call_result.RequestStopTransaction(status="Rejected")
        tx = evse.tx
        self.later(lambda: st.remote_stop(evse, tx))
        return call_result.RequestStopTransaction(status="Accepted")

    @on(Action.trigger_message)
    def on_trigger_message(
        self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        st = self.station
        target: EvseState | None = None
        if evse is not None:
            target = st.evses.get(evse.get("id", 0))
            if target is None:
                return call_result.TriggerMessage(status="Rejected")
        targets = [target] if target is not None else list(st.evses.values())
        msg = requested_message
        if msg == "BootNotification":
            if st.booted and not st.needs_boot:
                return call_result.TriggerMessage(status="Rejected")
            self.later(st.send_triggered_boot)
        elif msg == "Heartbeat":
            self.later(st.send_heartbeat)
        elif msg == "StatusNotification":
            self.later(lambda: st.trigger_status(targets))
        elif msg == "MeterValues":
            self.later(lambda: st.trigger_meter_values(targets))
        elif msg == "TransactionEvent":
            if not any(e.tx is not None for e in targets):
                return call_result.TriggerMessage(status="Rejected")
            self.later(lambda: st.trigger_transaction_events(targets))
        elif msg == "FirmwareStatusNotification":
            self.later(lambda: st.send(call.FirmwareStatusNotification(status="Idle")))
        elif msg == "LogStatusNotification":
            self.later(lambda: st.send(call.LogStatusNotification(status="Idle")))
        else:
            return call_result.TriggerMessage(status="NotImplemented")
        return call_result.TriggerMessage(status="Accepted")

    @on(Action.unlock_connector)
    def on_unlock_connector(self, evse_id: int, connector_id: int, **_: Any) -> Any:
        st = self.station
        evse = st.evses.get(evse_id)
        if evse is None or connector_id != evse.connector_id:
            return call_result.UnlockConnector(status="UnknownConnector")
        if evse.tx is not None and evse.tx.authorized:
            return call_result.UnlockConnector(status="OngoingAuthorizedTransaction")
        if evse.ev is not None or evse.tx is not None:
            self.later(lambda: st.unlock(evse))
        return call_result.UnlockConnector(status="Unlocked")

    @on(Action.reserve_now)
    def on_reserve_now(
        self,
        id: int,
        expiry_date_time: str,
        id_token: dict[str, Any],
        evse_id: int | None = None,
        group_id_token: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        previous = st.find_reservation(id)
        if evse_id is not None:
            evse = st.evses.get(evse_id)
            if evse is None:
                return call_result.ReserveNow(status="Rejected")
        else:
            free = [e for e in st.evses.values() if st.can_plug_in(e.id) and e.reservation is None]
            evse = previous or (free[0] if free else None)
            if evse is None:
                return call_result.ReserveNow(status="Occupied")
        if not (evse.operative and st.station_operative):
            return call_result.ReserveNow(status="Unavailable")
        other = evse.reservation is not None and evse.reservation.id != id
        if evse.tx is not None or evse.ev is not None or other:
            return call_result.ReserveNow(status="Occupied")
        if previous is not None and previous is not evse:
            st.clear_reservation(previous)
            self.later(lambda: st.refresh_status(previous))
        group = str(group_id_token["id_token"]) if group_id_token else None
        reservation = Reservation(
            id, str(id_token["id_token"]), parse_datetime(expiry_date_time), group
        )
        st.reserve(evse, reservation)
        self.later(lambda: st.refresh_status(evse))
        return call_result.ReserveNow(status="Accepted")

    @on(Action.cancel_reservation)
    def on_cancel_reservation(self, reservation_id: int, **_: Any) -> Any:
        st = self.station
        evse = st.find_reservation(reservation_id)
        if evse is None:
            return call_result.CancelReservation(status="Rejected")
        st.clear_reservation(evse)
        self.later(lambda: st.refresh_status(evse))
        return call_result.CancelReservation(status="Accepted")

    @on(Action.send_local_list)
    def on_send_local_list(
        self,
        version_number: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        if not st.dm.bool("LocalAuthListCtrlr", "Enabled"):
            return call_result.SendLocalList(
                status="Failed", status_info={"reason_code": "Disabled"}
            )
        if update_type == "Differential" and version_number <= st.local_list_version:
            return call_result.SendLocalList(status="VersionMismatch")
        updated = {} if update_type == "Full" else dict(st.local_list)
        for entry in local_authorization_list or []:
            token = str(entry["id_token"]["id_token"])
            info = entry.get("id_token_info")
            if info is None:
                updated.pop(token, None)
            else:
                updated[token] = str(info["status"])
        st.local_list = updated
        st.local_list_version = version_number
        return call_result.SendLocalList(status="Accepted")

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> Any:
        st = self.station
        version = st.local_list_version if st.local_list else 0
        return call_result.GetLocalListVersion(version_number=version)

    @on(Action.clear_cache)
    def on_clear_cache(self, **_: Any) -> Any:
        self.station.auth_cache.clear()
        return call_result.ClearCache(status="Accepted")

    @on(Action.data_transfer)
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return call_result.DataTransfer(status="UnknownVendorId")

    # -- smart charging

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        st = self.station
        try:
            if not st.dm.bool(SMART, "Enabled"):
                raise ProfileRejected("Disabled", "SmartChargingCtrlr.Enabled is false")
            try:
                profile = profile_from_kwargs(charging_profile, st.version)
            except ProfileError as exc:
                raise ProfileRejected("InvalidProfile", str(exc)) from None
            st.install_profile(evse_id, profile)
        except ProfileRejected as exc:
            return call_result.SetChargingProfile(
                status="Rejected", status_info=_status_info(exc.reason, exc.info)
            )
        self.later(st.apply_profiles)
        return call_result.SetChargingProfile(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        if charging_profile_id is not None:
            removed = st.profiles.clear(profile_id=charging_profile_id)
        else:
            criteria = charging_profile_criteria or {}
            purpose = criteria.get("charging_profile_purpose")
            removed = st.profiles.clear(
                evse_id=criteria.get("evse_id"),
                purpose=Purpose.parse(purpose) if purpose else None,
                stack_level=criteria.get("stack_level"),
            )
        if not removed:
            return call_result.ClearChargingProfile(status="Unknown")
        self.later(st.apply_profiles)
        return call_result.ClearChargingProfile(status="Accepted")

    @on(Action.get_charging_profiles)
    def on_get_charging_profiles(
        self,
        request_id: int,
        charging_profile: dict[str, Any],
        evse_id: int | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        sources = charging_profile.get("charging_limit_source")
        purpose = charging_profile.get("charging_profile_purpose")
        found = st.profiles.select(
            evse_id=evse_id,
            purpose=Purpose.parse(purpose) if purpose else None,
            stack_level=charging_profile.get("stack_level"),
            ids=charging_profile.get("charging_profile_id") or None,
        )
        if not found or (sources and "CSO" not in sources):
            return call_result.GetChargingProfiles(status="NoProfiles")
        self.later(lambda: st.send_profile_reports(request_id, found))
        return call_result.GetChargingProfiles(status="Accepted")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        st = self.station
        if evse_id != 0 and evse_id not in st.evses:
            return call_result.GetCompositeSchedule(
                status="Rejected", status_info=_status_info("UnknownEvse", f"no EVSE {evse_id}")
            )
        schedule = st.composite(evse_id, duration, charging_rate_unit).to_wire(st.version)
        return call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)


class Station201(SimStation):
    """A simulated OCPP 2.0.1 charging station (one connector per EVSE)."""

    version = "2.0.1"
    subprotocol = "ocpp2.0.1"
    link_class = Link201

    def _init_protocol(self, *, meter_interval_s: float, heartbeat_interval_s: int) -> None:
        spec = self.spec
        self.dm = build_device_model(
            station_id=spec.id,
            vendor=spec.vendor,
            model=spec.model,
            evses=spec.evses,
            phases=spec.phases,
            evse_limit_w=spec.evse_limit_w,
            heartbeat_interval=heartbeat_interval_s,
            meter_interval=int(round(meter_interval_s)),
            sampled_data=DEFAULT_SAMPLED,
            security_profile=1 if spec.password else 0,
            availability=self._availability,
            local_list_entries=lambda: len(self.local_list),
            now_text=self.now_text,
            profile_entries=lambda: len(self.profiles),
            evse_power=lambda evse_id: evse_power_w(self, evse_id),
            grid_voltage=lambda: grid_voltage_v(self),
            grid_frequency=lambda: grid_frequency_hz(self),
        )
        self.dm.on_change = self._variable_changed
        clock_var = self.dm.find("ClockCtrlr", "DateTime")
        if self.time_source == "timeline":  # nothing sets the simulation's timeline
            clock_var.mutability = READ_ONLY
        self.dm.put(
            "ClockCtrlr",
            "TimeSource",
            "Heartbeat" if self.time_source == "csms" else "RealTimeClock",
        )
        self.monitoring = MonitorEngine(self, self.dm)

    def _availability(self, evse_id: int | None) -> str:
        if evse_id is None:
            return "Available" if self.station_operative else "Unavailable"
        return self._derive_status(self.evses[evse_id])

    def _variable_changed(self, var: Variable) -> None:
        key = (var.component, var.name)
        if key == (COMM, "HeartbeatInterval"):
            self._restart_heartbeat()
        elif key in ((SAMPLED, "TxUpdatedInterval"), (SAMPLED, "Enabled")):
            self.restart_meter_loops()
        elif key in ((ALIGNED, "Interval"), (ALIGNED, "Enabled")):
            self._restart_aligned_loop()
        elif key == ("ClockCtrlr", "DateTime"):
            self.set_clock(parse_datetime(var.value), "SetVariables")
        elif key == ("SecurityCtrlr", "BasicAuthPassword"):
            self.password = var.value or None

    def _profile_limits(self) -> tuple[int, int, int]:
        dm = self.dm
        entries = dm.find(SMART, "Entries", "ChargingProfiles").max_limit
        return (
            dm.int(SMART, "ProfileStackLevel"),
            dm.int(SMART, "PeriodsPerSchedule"),
            int(entries) if entries is not None else 1_000,
        )

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
        value = self.meter_value(evse, self.dm.list(SAMPLED, "TxUpdatedMeasurands"), "Other")
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
        try:
            significance = float(self.dm.text(SMART, "LimitChangeSignificance")) / 100.0
        except ValueError:
            significance = 0.0
        offered = self.offered_w(evse)
        if previous_w > 0 and abs(offered - previous_w) / previous_w < significance:
            return
        await self._event(evse, tx, "Updated", "ChargingRateChanged", meter_value=value, wait=False)

    async def send_profile_reports(self, request_id: int, found: list[InstalledProfile]) -> None:
        """ReportChargingProfiles for GetChargingProfiles: one message per EVSE."""
        by_evse: dict[int, list[dict[str, Any]]] = {}
        for item in sorted(found, key=lambda i: i.evse_id):
            by_evse.setdefault(item.evse_id, []).append(to_wire(item.profile, self.version))
        last = len(by_evse) - 1
        for index, (evse_id, profiles) in enumerate(by_evse.items()):
            await self.send(
                call.ReportChargingProfiles(
                    request_id=request_id,
                    charging_limit_source="CSO",
                    charging_profile=profiles,
                    evse_id=evse_id,
                    tbc=index < last,
                )
            )

    async def notify_charging_needs(self, evse: EvseState, tx: Transaction) -> None:
        """NotifyEVChargingNeeds: what the vehicle plugged into ``evse`` needs (ISO 15118 style)."""
        ev = evse.ev
        if ev is None or evse.tx is not tx:
            return
        spec = ev.spec
        volts = self.spec.voltage
        needs: dict[str, Any] = {
            "requested_energy_transfer": ENERGY_TRANSFER[spec.phases],
            "ac_charging_parameters": {
                "energy_amount": int(round(ev.energy_needed_wh)),
                "ev_min_current": int(round(spec.min_current_a)),
                "ev_max_current": max(1, int(round(spec.max_ac_power_w / (spec.phases * volts)))),
                "ev_max_voltage": int(round(volts)),
            },
        }
        if ev.departure_s is not None:
            departure = tx.started_at + timedelta(seconds=ev.departure_s)
            needs["departure_time"] = isoformat(departure)
        await self.send_optional(
            call.NotifyEVChargingNeeds(
                charging_needs=needs,
                evse_id=evse.id,
                max_schedule_tuples=self.dm.int(SMART, "PeriodsPerSchedule"),
            )
        )

    @property
    def needs_boot(self) -> bool:
        return self._needs_boot

    def new_transaction_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def schedule_reset(self) -> None:
        self._reset_pending = True

    # ------------------------------------------------------------------ protocol hooks

    def _derive_status(self, evse: EvseState) -> str:
        if evse.ev is not None or evse.tx is not None:
            return "Occupied"
        if not (evse.operative and self.station_operative):
            return "Unavailable"
        if evse.reservation is not None:
            return "Reserved"
        return "Available"

    def _status_payload(self, evse: EvseState | None, status: str) -> Any:
        assert evse is not None
        return call.StatusNotification(
            timestamp=self.now_text(),
            connector_status=status,
            evse_id=evse.id,
            connector_id=evse.connector_id,
        )

    def _boot_payload(self) -> Any:
        spec = self.spec
        station: dict[str, Any] = {
            "model": spec.model[:20],
            "vendor_name": spec.vendor[:50],
            "serial_number": (spec.serial or "")[:25] or None,
            "firmware_version": spec.firmware[:50],
        }
        if spec.iccid or spec.imsi:
            station["modem"] = {"iccid": spec.iccid, "imsi": spec.imsi}
        return call.BootNotification(charging_station=station, reason=self._boot_reason)

    async def send_triggered_boot(self) -> None:
        reason = self._boot_reason
        self._boot_reason = "Triggered"
        try:
            await self.send_boot_notification()
        finally:
            self._boot_reason = reason

    def _heartbeat_payload(self) -> Any:
        return call.Heartbeat()

    def _heartbeat_interval(self) -> int:
        return self.dm.int(COMM, "HeartbeatInterval")

    def _set_heartbeat_interval(self, interval: int) -> None:
        self.dm.put(COMM, "HeartbeatInterval", str(interval))

    def _meter_interval(self) -> float:
        if not self.dm.bool(SAMPLED, "Enabled"):
            return 0.0
        return float(self.dm.int(SAMPLED, "TxUpdatedInterval"))

    def _aligned_interval(self) -> float:
        if not self.dm.bool(ALIGNED, "Enabled"):
            return 0.0
        return float(self.dm.int(ALIGNED, "Interval"))

    def _tx_attempts(self) -> int:
        return self.dm.int(COMM, "MessageAttempts", "TransactionEvent")

    def _tx_retry_interval(self) -> float:
        return float(self.dm.int(COMM, "MessageAttemptInterval", "TransactionEvent"))

    def _ping_interval(self) -> float:
        return float(self.dm.int(COMM, "WebSocketPingInterval"))

    def _is_sample(self, payload: Any) -> bool:
        return isinstance(payload, call.TransactionEvent) and payload.trigger_reason in (
            "MeterValuePeriodic",
            "MeterValueClock",
        )

    def _local_auth_settings(self) -> tuple[bool, bool, bool, bool]:
        dm = self.dm
        return (
            dm.bool("LocalAuthListCtrlr", "Enabled"),
            dm.bool("AuthCacheCtrlr", "Enabled"),
            dm.bool(AUTH, "LocalPreAuthorize"),
            dm.bool(AUTH, "LocalAuthorizeOffline"),
        )

    def _offline_unknown_allowed(self) -> bool:
        return self.dm.bool(AUTH, "OfflineTxForUnknownIdEnabled")

    async def _authorize_online(self, id_token: str, token_type: str) -> str | None:
        result = await self.send(
            call.Authorize(id_token={"id_token": id_token, "type": token_type})
        )
        if result is None:
            return None
        return str((result.id_token_info or {}).get("status", "Invalid"))

    # ------------------------------------------------------------------ meter values

    def meter_value(
        self, evse: EvseState, measurands: list[str], context: str, ts: datetime | None = None
    ) -> dict[str, Any] | None:
        samples = self.samples(evse, measurands)
        if not samples:
            return None
        values = []
        for s in samples:
            item: dict[str, Any] = {
                "value": s.value,
                "context": context,
                "measurand": s.measurand,
                "location": s.location,
            }
            if s.phase:
                item["phase"] = s.phase
            if s.unit:
                item["unit_of_measure"] = {"unit": s.unit}
            values.append(item)
        return {"timestamp": isoformat(ts or self.now()), "sampled_value": values}

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
            self.spawn(self._deauthorize(evse, tx))

    async def _periodic_sample(self, evse: EvseState) -> None:
        tx = evse.tx
        value = self.meter_value(
            evse, self.dm.list(SAMPLED, "TxUpdatedMeasurands"), "Sample.Periodic"
        )
        if tx is not None and value is not None:
            await self._event(
                evse, tx, "Updated", "MeterValuePeriodic", meter_value=value, wait=False
            )

    async def _aligned_sample(self, evse: EvseState, ts: datetime) -> None:
        value = self.meter_value(evse, self.dm.list(ALIGNED, "Measurands"), "Sample.Clock", ts)
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
            value = self.meter_value(evse, self.dm.list(SAMPLED, "TxUpdatedMeasurands"), "Trigger")
            if value is not None:
                await self.send(call.MeterValues(evse_id=evse.id, meter_value=[value]))

    async def trigger_transaction_events(self, targets: list[EvseState]) -> None:
        for evse in targets:
            tx = evse.tx
            if tx is None:
                continue
            self.advance(evse)
            value = self.meter_value(evse, self.dm.list(SAMPLED, "TxUpdatedMeasurands"), "Trigger")
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

    async def send_report(self, request_id: int, data: list[dict[str, Any]]) -> None:
        size = max(1, self.dm.int("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"))
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        for seq, chunk in enumerate(chunks):
            await self.send(
                call.NotifyReport(
                    request_id=request_id,
                    generated_at=self.now_text(),
                    seq_no=seq,
                    report_data=chunk,
                    tbc=seq < len(chunks) - 1,
                )
            )

    async def _reservation_expired(self, evse: EvseState, reservation: Reservation) -> None:
        await self.send(
            call.ReservationStatusUpdate(
                reservation_id=reservation.id, reservation_update_status="Expired"
            )
        )
        await self.refresh_status(evse)

    # ------------------------------------------------------------------ sessions

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
        now = self.now()
        evse.last_update = now
        tx = Transaction(
            local_id=self.new_local_id(),
            id=tx_id or self.new_transaction_id(),
            id_token=id_token,
            started_at=now,
            meter_start_wh=evse.meter_wh,
            id_token_type=token_type or self.spec.id_token_type,
            remote_start_id=remote_start_id,
            remote=remote,
        )
        evse.tx = tx
        evse.session_energy_wh = 0.0
        self.profiles_tx_started(evse)
        self.advance(evse, now)
        return tx

    def _begin_value(self, evse: EvseState) -> dict[str, Any] | None:
        return self.meter_value(
            evse, self.dm.list(SAMPLED, "TxStartedMeasurands"), "Transaction.Begin"
        )

    async def plug_in(self, evse_id: int, ev: EvSpec, id_token: str) -> bool:
        evse = self.evse(evse_id)
        async with evse.lock:
            if not self.can_plug_in(evse_id):
                raise EvseBusy(f"{self.id}: EVSE {evse_id} is {evse.status}")
            if not self.token_matches_reservation(evse, id_token):
                self.stats.sessions_rejected += 1
                return False
            evse.ev = EvBattery(ev)
            tx = self._new_tx(evse)
            await self._event(
                evse,
                tx,
                "Started",
                "CablePluggedIn",
                charging_state="EVConnected",
                meter_value=self._begin_value(evse),
                include_evse=True,
            )
            await self.refresh_status(evse)
            if not await self.authorize(id_token):
                await self._end_tx(evse, "Deauthorized", "DeAuthorized", ev_leaves=True)
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

    async def plug_out(self, evse_id: int) -> None:
        evse = self.evse(evse_id)
        async with evse.lock:
            if evse.tx is not None:
                await self._end_tx(evse, "EVCommunicationLost", "EVDisconnected", ev_leaves=True)
            elif evse.ev is not None:
                evse.ev = None
                await self.refresh_status(evse)

    def pick_evse(self, evse_id: int | None, id_token: str) -> EvseState | None:
        if evse_id is not None:
            candidates = [self.evses[evse_id]] if evse_id in self.evses else []
        else:
            candidates = sorted(self.evses.values(), key=lambda e: e.reservation is not None)
        for evse in candidates:
            if self.can_plug_in(evse.id) and self.token_matches_reservation(evse, id_token):
                return evse
        return None

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
                evse.ev = None
                await self.refresh_status(evse)
                self.stats.sessions_rejected += 1
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
            await self._event(
                evse,
                tx,
                "Started",
                "RemoteStart",
                charging_state="EVConnected",
                id_token=True,
                meter_value=self._begin_value(evse),
                include_evse=True,
                reservation_id=reservation.id if reservation else None,
            )
            await self.refresh_status(evse)
            tx.charging_state = self._supply_state(evse)
            await self._event(
                evse, tx, "Updated", "ChargingStateChanged", charging_state=tx.charging_state
            )
            self.start_meter_loop(evse)
        self.schedule_departure(evse, ev)
        self.spawn(self.notify_charging_needs(evse, tx))

    async def remote_stop(self, evse: EvseState, tx: Transaction) -> None:
        async with evse.lock:
            if evse.tx is not tx:
                return
            await self._end_tx(evse, "RemoteStop", "Remote", ev_leaves=False)
        if tx.remote and self.remote_dwell_s is None:
            await self.plug_out(evse.id)

    async def unlock(self, evse: EvseState) -> None:
        async with evse.lock:
            if evse.tx is not None and not evse.tx.authorized:
                await self._end_tx(evse, "UnlockCommand", "Local", ev_leaves=True)
            elif evse.ev is not None and evse.tx is None:
                evse.ev = None
                await self.refresh_status(evse)

    async def _deauthorize(self, evse: EvseState, tx: Transaction) -> None:
        async with evse.lock:
            if evse.tx is tx:
                await self._end_tx(evse, "Deauthorized", "DeAuthorized", ev_leaves=False)

    async def _end_for_reset(self, evse: EvseState) -> None:
        if evse.tx is not None:
            await self._end_tx(
                evse, "ResetCommand", "ImmediateReset", ev_leaves=True, statuses=False
            )
        evse.ev = None

    async def _end_tx(
        self,
        evse: EvseState,
        trigger: str,
        reason: str,
        *,
        ev_leaves: bool,
        statuses: bool = True,
    ) -> None:
        tx = evse.tx
        if tx is None:
            return
        self.stop_meter_loop(evse)
        now = self.now()
        self.advance(evse, now)
        end = self.meter_value(
            evse, self.dm.list(SAMPLED, "TxEndedMeasurands"), "Transaction.End", now
        )
        evse.tx = None
        evse.power_w = 0.0
        evse.last_transaction_id = tx.id
        self.profiles_tx_ended(evse)
        if tx.authorized:
            self.stats.sessions_completed += 1
        await self._event(
            evse,
            tx,
            "Ended",
            trigger,
            charging_state="Idle" if ev_leaves else "EVConnected",
            stopped_reason=reason,
            meter_value=end,
            ts=now,
        )
        if ev_leaves:
            evse.ev = None
        if statuses:
            await self.refresh_status(evse)
        else:
            evse.status = self._derive_status(evse)
        self.after_tx_ended()
