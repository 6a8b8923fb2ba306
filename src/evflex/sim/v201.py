"""OCPP 2.0.1 codec of the simulated charging station: the CSMS's requests and the station's messages.

The transaction messages (TransactionEvent) are in :mod:`evflex.sim.tx201`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ocpp.routing import on
from ocpp.v201 import ChargePoint as OcppChargePoint
from ocpp.v201 import call, call_result
from ocpp.v201.enums import Action

from evflex.clock import isoformat, parse_datetime
from evflex.sim.charging import ProfileRejected, profile_from_kwargs
from evflex.sim.devicemodel import READ_ONLY, Variable, build_device_model
from evflex.sim.ev import EvBattery
from evflex.sim.firmware import FirmwareLink201, FirmwareUpdates
from evflex.sim.handlers import CommonHandlers
from evflex.sim.link import LinkMixin
from evflex.sim.model import DEFAULT_SAMPLED, EvseState, Reservation, Transaction
from evflex.sim.monitoring import MonitorEngine, evse_power_w, grid_frequency_hz, grid_voltage_v
from evflex.sim.security201 import Security201, SecurityLink201
from evflex.sim.station import SimStation
from evflex.sim.tx201 import ALIGNED, AUTH, SAMPLED, SMART, TransactionEvents201
from evflex.smartcharging.composite import InstalledProfile
from evflex.smartcharging.profiles import ProfileError, Purpose, to_wire

__all__ = ["ALIGNED", "AUTH", "COMM", "SAMPLED", "SMART", "Link201", "Station201", "status_info"]

COMM = "OCPPCommCtrlr"
#: requestedEnergyTransfer by the number of phases of the vehicle's charger.
ENERGY_TRANSFER = {1: "AC_single_phase", 2: "AC_two_phase", 3: "AC_three_phase"}


def status_info(reason: str, info: str = "", max_info: int = 512) -> dict[str, Any]:
    """A StatusInfo: the reason code and, if given, the additional info (cut to size)."""
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:max_info]
    return out


class Link201(SecurityLink201, FirmwareLink201, CommonHandlers, LinkMixin, OcppChargePoint):
    """Handlers for the requests of an OCPP 2.0.1 CSMS."""

    results = call_result
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
        target: EvseState | None = None
        if evse is not None and evse.get("id", 0) != 0:
            target = self.station.evses.get(evse["id"])
            connector = evse.get("connector_id")
            if target is None or connector not in (None, target.connector_id):
                return call_result.ChangeAvailability(status="Rejected")
        status = self.set_availability(target, operational_status)
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
        found = self.report_later(
            st.dm.report(report_base), lambda d: st.send_report(request_id, d)
        )
        return call_result.GetBaseReport(status="Accepted" if found else "EmptyResultSet")

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
        found = self.report_later(
            engine.report(monitoring_criteria, component_variable),
            lambda d: engine.send_report(request_id, d),
        )
        return call_result.GetMonitoringReport(status="Accepted" if found else "EmptyResultSet")

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
        try:
            profile = st.remote_start_profile(evse.id, charging_profile)
        except ProfileError as exc:
            return call_result.RequestStartTransaction(
                status="Rejected", status_info=status_info("InvalidProfile", str(exc))
            )
        ev = st.plug_remote_ev(evse, profile)
        tx_id = st.new_transaction_id()
        authorize_first = st.dm.bool(AUTH, "AuthorizeRemoteStart")
        token_type = str(id_token.get("type") or st.spec.id_token_type)
        self.later(lambda: st.remote_start(evse, ev, token, token_type, remote_start_id, tx_id))
        return call_result.RequestStartTransaction(
            status="Accepted", transaction_id=None if authorize_first else tx_id
        )

    @on(Action.request_stop_transaction)
    def on_request_stop_transaction(self, transaction_id: str, **_: Any) -> Any:
        return call_result.RequestStopTransaction(status=self.stop_remotely(transaction_id))

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
        if msg == "BootNotification" and st.booted and not st.needs_boot:
            return call_result.TriggerMessage(status="Rejected")
        if msg == "TransactionEvent" and not any(e.tx is not None for e in targets):
            return call_result.TriggerMessage(status="Rejected")
        actions = {
            "BootNotification": st.send_triggered_boot,
            "Heartbeat": st.send_heartbeat,
            "StatusNotification": lambda: st.trigger_status(targets),
            "MeterValues": lambda: st.trigger_meter_values(targets),
            "TransactionEvent": lambda: st.trigger_transaction_events(targets),
            "FirmwareStatusNotification": lambda: st.report_transfer(
                "firmware", call.FirmwareStatusNotification(status="Idle")
            ),
            "LogStatusNotification": lambda: st.report_transfer(
                "log", call.LogStatusNotification(status="Idle")
            ),
            "SignChargingStationCertificate": st.request_certificate,
        }
        return call_result.TriggerMessage(status=self.trigger(msg, actions))

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
        group = str(group_id_token["id_token"]) if group_id_token else None
        reservation = Reservation(
            id, str(id_token["id_token"]), parse_datetime(expiry_date_time), group
        )
        return call_result.ReserveNow(status=self.reserve(evse, reservation))

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
        tokens = [
            (
                str(e["id_token"]["id_token"]),
                str(e["id_token_info"]["status"]) if e.get("id_token_info") is not None else None,
            )
            for e in local_authorization_list or []
        ]
        status = st.update_local_list(version_number, update_type, tokens)
        return call_result.SendLocalList(status=status)

    @on(Action.get_local_list_version)
    def on_get_local_list_version(self, **_: Any) -> Any:
        return call_result.GetLocalListVersion(version_number=self.station.local_list_version_now)

    @on(Action.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        st = self.station

        def install() -> None:
            if not st.dm.bool(SMART, "Enabled"):
                raise ProfileRejected("Disabled", "SmartChargingCtrlr.Enabled is false")
            try:
                profile = profile_from_kwargs(charging_profile, st.version)
            except ProfileError as exc:
                raise ProfileRejected("InvalidProfile", str(exc)) from None
            st.install_profile(evse_id, profile)

        return self.change_profiles(call_result.SetChargingProfile, install)

    def change_profiles(
        self,
        answer: Callable[..., Any],
        change: Callable[[], Any],
        info: Callable[[str, str], dict[str, Any]] = status_info,
    ) -> Any:
        """Run ``change`` (it raises ProfileRejected) and ``answer`` Rejected with its
        reason, or Accepted; the limits are re-evaluated after the answer."""
        try:
            change()
        except ProfileRejected as exc:
            return answer(status="Rejected", status_info=info(exc.reason, exc.info))
        self.later(self.station.apply_profiles)
        return answer(status="Accepted")

    @on(Action.clear_charging_profile)
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        criteria = charging_profile_criteria or {}
        removed = st.clear_profiles(
            charging_profile_id,
            criteria.get("evse_id"),
            criteria.get("charging_profile_purpose"),
            criteria.get("stack_level"),
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
        if sources and "CSO" not in sources:
            found = []
        sent = self.report_later(found, lambda f: st.send_profile_reports(request_id, f))
        return call_result.GetChargingProfiles(status="Accepted" if sent else "NoProfiles")

    @on(Action.get_composite_schedule)
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        st = self.station
        if evse_id != 0 and evse_id not in st.evses:
            return call_result.GetCompositeSchedule(
                status="Rejected", status_info=status_info("UnknownEvse", f"no EVSE {evse_id}")
            )
        schedule = st.composite(evse_id, duration, charging_rate_unit).to_wire(st.version)
        return call_result.GetCompositeSchedule(status="Accepted", schedule=schedule)


class Station201(TransactionEvents201, Security201, FirmwareUpdates, SimStation):
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
            security_profile=self.security_profile,
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
        self._add_security_variables()

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
        self._security_variable_changed(var)

    def _profile_limits(self) -> tuple[int, int, int]:
        dm = self.dm
        entries = dm.find(SMART, "Entries", "ChargingProfiles").max_limit
        return (
            dm.int(SMART, "ProfileStackLevel"),
            dm.int(SMART, "PeriodsPerSchedule"),
            int(entries) if entries is not None else 1_000,
        )

    def limit_significance(self) -> float:
        """SmartChargingCtrlr.LimitChangeSignificance as a fraction (0 if unreadable)."""
        try:
            return float(self.dm.text(SMART, "LimitChangeSignificance")) / 100.0
        except ValueError:
            return 0.0

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
        needs = self._charging_needs(ev)
        if ev.departure_s is not None:
            needs["departure_time"] = isoformat(tx.started_at + timedelta(seconds=ev.departure_s))
        await self.send_optional(self._needs_message(evse, needs))

    def _charging_needs(self, ev: EvBattery) -> dict[str, Any]:
        return {
            "requested_energy_transfer": ENERGY_TRANSFER[ev.spec.phases],
            "ac_charging_parameters": self._ac_parameters(ev, ev.spec.phases),
        }

    def _ac_parameters(self, ev: EvBattery, phases: int) -> dict[str, Any]:
        """ACChargingParameters of ``ev`` drawing on ``phases`` phases."""
        spec = ev.spec
        volts = self.spec.voltage
        return {
            "energy_amount": int(round(ev.energy_needed_wh)),
            "ev_min_current": int(round(spec.min_current_a)),
            "ev_max_current": max(1, int(round(spec.max_ac_power_w / (phases * volts)))),
            "ev_max_voltage": int(round(volts)),
        }

    def _needs_message(self, evse: EvseState, needs: dict[str, Any]) -> Any:
        return call.NotifyEVChargingNeeds(
            charging_needs=needs,
            evse_id=evse.id,
            max_schedule_tuples=self.dm.int(SMART, "PeriodsPerSchedule"),
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
