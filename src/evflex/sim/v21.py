"""OCPP 2.1 codec of the simulated charging station: V2X, DER control, priority charging.

A :class:`Station21` is a 2.0.1 station (:class:`~evflex.sim.v201.Station201`)
that speaks ``ocpp2.1``. It executes the 2.1 charging profiles of every EVSE
with signed power (:mod:`evflex.sim.v2x`: positive power charges the car,
negative power discharges it) and keeps DER controls (:mod:`evflex.sim.der`);
this module maps both to and from the 2.1 messages.

Metering: ``Energy.Active.Import.Register`` and ``Energy.Active.Export.Register``
(both only grow), ``Power.Active.Import`` / ``Power.Active.Export``,
``Power.Reactive.Import`` / ``Power.Reactive.Export``, ``SoC``, ``Frequency``
and ``Voltage``. A TransactionEvent carries ``transactionInfo.operationMode``
when the mode changed (trigger ``OperationModeChanged``) and ``evseSleep`` when
an Idle period with ``evseSleep`` switches the power electronics off or on.

The workarounds for the ``ocpp`` 2.1.0 library are in :mod:`evflex.sim.link21`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ocpp.routing import on
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21

from evflex.clock import isoformat
from evflex.csms.rpc import (
    RpcError,
)
from evflex.sim.charging import camel_kwargs
from evflex.sim.der import DER_FIELD, SUPPORTED_DER, DerControl, DerControls, _DerState
from evflex.sim.devicemodel import READ_ONLY, Variable
from evflex.sim.ev import AC_TRANSFER, EvBattery
from evflex.sim.link import LinkDown
from evflex.sim.link21 import WireLink21
from evflex.sim.model import (
    DEFAULT_SAMPLED_21,
    ENERGY,
    ENERGY_EXPORT,
    SUPPORTED_MEASURANDS_21,
    EvseState,
)
from evflex.sim.v2x import LIVE_MODES, LIVE_REPORT_INTERVAL_S, V2X, V2xEvse, V2xExecution
from evflex.sim.v201 import ALIGNED, SAMPLED, SMART, Station201, status_info
from evflex.smartcharging.profiles import (
    OperationMode,
)

SUPPORTED_TRANSFER_MODES = (
    "AC_single_phase,AC_two_phase,AC_three_phase,AC_BPT,DC,DC_BPT"  # simulated: any car fits
)
_MEASURANDS_21 = ",".join(SUPPORTED_MEASURANDS_21)
_DEFAULT_TX_ENDS = f"{ENERGY},{ENERGY_EXPORT}"


def _status_info(reason: str, info: str = "") -> dict[str, Any]:
    return status_info(reason, info, max_info=1024)


# ---------------------------------------------------------------------------
# the link
# ---------------------------------------------------------------------------


class Link21(WireLink21):
    """Handlers for the requests of an OCPP 2.1 CSMS (beyond those of 2.0.1)."""

    station: Station21

    # -- V2X

    @on(Action21.notify_allowed_energy_transfer)
    def on_notify_allowed_energy_transfer(
        self, transaction_id: str, allowed_energy_transfer: list[str], **_: Any
    ) -> Any:
        st = self.station
        evse = st.find_tx(transaction_id)
        if evse is None:
            return result21.NotifyAllowedEnergyTransfer(
                status="Rejected", status_info=_status_info("TxNotFound")
            )
        st.v2x_state(evse.id).allowed_transfer = tuple(allowed_energy_transfer)
        self.later(lambda: st.apply_profiles([evse]))
        return result21.NotifyAllowedEnergyTransfer(status="Accepted")

    @on(Action21.use_priority_charging)
    def on_use_priority_charging(self, transaction_id: str, activate: bool, **_: Any) -> Any:
        st = self.station
        evse = st.find_tx(transaction_id)
        if evse is None:
            return result21.UsePriorityCharging(
                status="Rejected", status_info=_status_info("TxNotFound")
            )
        if activate and not st.has_priority_profile(evse.id):
            return result21.UsePriorityCharging(status="NoProfile")
        st.v2x_state(evse.id).priority = bool(activate)
        self.later(lambda: st.apply_profiles([evse]))
        return result21.UsePriorityCharging(status="Accepted")

    @on(Action21.update_dynamic_schedule)
    def on_update_dynamic_schedule(
        self, charging_profile_id: int, schedule_update: dict[str, Any], **_: Any
    ) -> Any:
        st = self.station
        update = camel_kwargs(schedule_update, "2.1")
        return self.change_profiles(
            result21.UpdateDynamicSchedule,
            lambda: st.update_dynamic_schedule(charging_profile_id, update),
            _status_info,
        )

    # -- DER control

    @on(Action21.set_der_control)
    def on_set_der_control(
        self, is_default: bool, control_id: str, control_type: str, **kwargs: Any
    ) -> Any:
        st = self.station
        if control_type not in SUPPORTED_DER:
            return result21.SetDERControl(
                status="NotSupported", status_info=_status_info("UnsupportedControl")
            )
        body = kwargs.get(DER_FIELD[control_type])
        if not isinstance(body, dict):
            return result21.SetDERControl(
                status="Rejected",
                status_info=_status_info("MissingSettings", f"{control_type} needs its settings"),
            )
        superseded = st.set_der_control(control_id, control_type, bool(is_default), body)
        self.later(st.refresh_der)
        return result21.SetDERControl(status="Accepted", superseded_ids=superseded or None)

    @on(Action21.get_der_control)
    def on_get_der_control(
        self,
        request_id: int,
        is_default: bool | None = None,
        control_type: str | None = None,
        control_id: str | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        if control_type is not None and control_type not in SUPPORTED_DER:
            return result21.GetDERControl(status="NotSupported")
        found = st.select_der(is_default, control_type, control_id)
        sent = self.report_later(found, lambda f: st.send_der_report(request_id, f))
        return result21.GetDERControl(status="Accepted" if sent else "NotFound")

    @on(Action21.clear_der_control)
    def on_clear_der_control(
        self,
        is_default: bool,
        control_type: str | None = None,
        control_id: str | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        found = st.select_der(is_default, control_type, control_id)
        if not found:
            return result21.ClearDERControl(status="NotFound")
        st.clear_der(found)
        self.later(st.refresh_der)
        return result21.ClearDERControl(status="Accepted")


# ---------------------------------------------------------------------------
# the station
# ---------------------------------------------------------------------------


class Station21(V2xExecution, DerControls, Station201):
    """A simulated OCPP 2.1 charging station with bidirectional (V2X) EVSEs.

    Public API beyond :class:`~evflex.sim.station.SimStation`: plug in a
    bidirectional car with ``plug_in(evse_id, EvSpec(bidirectional=True,
    max_discharge_power_w=...), token)``; :meth:`press_priority_button`;
    :meth:`set_external_setpoint` / :meth:`set_external_limits` (a local EMS);
    :meth:`v2x_status` / :meth:`operation_mode`; :meth:`attach_grid` (grid
    frequency / voltage and building load); :meth:`send_event_stream`.
    """

    version = "2.1"
    subprotocol = "ocpp2.1"
    link_class = Link21

    def _init_protocol(self, *, meter_interval_s: float, heartbeat_interval_s: int) -> None:
        super()._init_protocol(
            meter_interval_s=meter_interval_s, heartbeat_interval_s=heartbeat_interval_s
        )
        self._v2x: dict[int, V2xEvse] = {i: V2xEvse() for i in self.evses}
        self._der = _DerState()
        self._add_v21_variables()

    def _add_v21_variables(self) -> None:
        """The 2.1 measurands and the V2XChargingCtrlr component (device model)."""
        dm = self.dm
        for component, name in (
            (SAMPLED, "TxUpdatedMeasurands"),
            (SAMPLED, "TxStartedMeasurands"),
            (SAMPLED, "TxEndedMeasurands"),
            (ALIGNED, "Measurands"),
            (ALIGNED, "TxEndedMeasurands"),
        ):
            dm.find(component, name).values_list = _MEASURANDS_21
        dm.put(SAMPLED, "TxUpdatedMeasurands", DEFAULT_SAMPLED_21)
        dm.put(SAMPLED, "TxEndedMeasurands", _DEFAULT_TX_ENDS)
        dm.put(ALIGNED, "Measurands", _DEFAULT_TX_ENDS)
        modes = ",".join(m.value for m in OperationMode)
        for var in (
            Variable(V2X, "Enabled", "true", data_type="boolean"),
            Variable(
                V2X,
                "SupportedOperationModes",
                modes,
                data_type="MemberList",
                values_list=modes,
                mutability=READ_ONLY,
            ),
            Variable(
                V2X,
                "SupportedEnergyTransferModes",
                SUPPORTED_TRANSFER_MODES,
                data_type="MemberList",
                values_list=SUPPORTED_TRANSFER_MODES,
                mutability=READ_ONLY,
            ),
            Variable(
                V2X, "LocalLoadBalancingUpperThreshold", "20000", data_type="decimal", unit="W"
            ),
            Variable(V2X, "LocalLoadBalancingLowerThreshold", "0", data_type="decimal", unit="W"),
            Variable(
                V2X,
                "LocalLoadBalancingUpperOffset",
                "0",
                data_type="decimal",
                unit="W",
                min_limit=0,
            ),
            Variable(
                V2X,
                "LocalLoadBalancingLowerOffset",
                "0",
                data_type="decimal",
                unit="W",
                min_limit=0,
            ),
        ):
            dm.add(var)

    def _variable_changed(self, var: Variable) -> None:
        super()._variable_changed(var)
        if var.component == V2X and self._started:
            self.spawn(self.apply_profiles())

    async def press_priority_button(self, evse_id: int) -> bool:
        """The driver presses the priority button: toggle priority charging, tell the CSMS.

        Returns whether priority charging is on now. Raises ValueError when no
        transaction runs on the EVSE.
        """
        evse = self.evse(evse_id)
        tx = evse.tx
        if tx is None:
            raise ValueError(f"{self.id}: no transaction on EVSE {evse_id}")
        state = self._v2x[evse_id]
        state.priority = not state.priority
        await self.apply_profiles([evse])
        await self.send(
            call21.NotifyPriorityCharging(transaction_id=str(tx.id), activated=state.priority)
        )
        return state.priority

    async def send_event_stream(
        self, stream_id: int, values: list[tuple[float, str]], *, pending: int = 0
    ) -> bool:
        """NotifyPeriodicEventStream as a SEND frame: (seconds after now, value) pairs."""
        link = self._ready_link
        if link is None or link.is_closed or not values:
            return False
        payload = {
            "id": stream_id,
            "pending": pending,
            "basetime": self.now_text(),
            "data": [{"t": t, "v": v} for t, v in values],
        }
        try:
            await link.send_frame("NotifyPeriodicEventStream", payload)
        except (LinkDown, RpcError) as exc:
            self.error(f"NotifyPeriodicEventStream not sent: {exc}")
            return False
        return True

    async def _der_started(self, control: DerControl, superseded: list[str], now: datetime) -> None:
        await self.send_optional(
            call21.NotifyDERStartStop(
                control_id=control.id,
                started=True,
                timestamp=isoformat(now),
                superseded_ids=superseded[:24] or None,
            )
        )

    async def _der_stopped(self, control: DerControl, now: datetime) -> None:
        await self.send_optional(
            call21.NotifyDERStartStop(
                control_id=control.id, started=False, timestamp=isoformat(now)
            )
        )

    async def send_der_report(self, request_id: int, found: list[DerControl]) -> None:
        """ReportDERControl for GetDERControl."""
        active = {c.id for c in self._active_der(self.now()).values()}
        curves: list[dict[str, Any]] = []
        limits: list[dict[str, Any]] = []
        for c in found:
            common = {"id": c.id, "is_default": c.is_default, "is_superseded": c.id not in active}
            if c.type == "LimitMaxDischarge":
                limits.append({**common, "limit_max_discharge": c.body})
            else:
                curves.append({**common, "curve_type": c.type, "curve": c.body})
        await self.send(
            call21.ReportDERControl(
                request_id=request_id,
                curve=curves[:24] or None,
                limit_max_discharge=limits[:24] or None,
            )
        )

    async def _limit_changed(self, evse: EvseState, previous_w: float) -> None:
        tx = evse.tx
        if tx is None or not tx.authorized or evse.ev is None:
            return
        state = self._v2x[evse.id]
        value = self.meter_value(evse, self._measurands("update"), "Other")
        charging = self._charging_state(evse)
        target = state.target_w
        if state.mode is not state.event_mode or state.sleep != state.event_sleep:
            tx.charging_state = charging
            state.reported_target_w = target
            await self._event(
                evse,
                tx,
                "Updated",
                "OperationModeChanged",
                charging_state=charging,
                meter_value=value,
                wait=False,
            )
            return
        if charging != tx.charging_state:
            tx.charging_state = charging
            state.reported_target_w = target
            await self._event(
                evse,
                tx,
                "Updated",
                "ChargingStateChanged",
                charging_state=charging,
                meter_value=value,
                wait=False,
            )
            return
        significance = self.limit_significance()
        reported = state.reported_target_w
        scale = max(abs(reported), abs(target), 0.1 * self.spec.evse_limit_w)
        if abs(target - reported) < significance * scale:
            return
        now = self.now()
        if (
            state.mode in LIVE_MODES
            and state.reported_at is not None
            and (now - state.reported_at).total_seconds() < LIVE_REPORT_INTERVAL_S
        ):
            return  # a live mode moves every second: the periodic samples show the rest
        state.reported_target_w = target
        state.reported_at = now
        await self._event(evse, tx, "Updated", "ChargingRateChanged", meter_value=value, wait=False)

    def _is_sample(self, payload: Any) -> bool:
        return isinstance(payload, call21.TransactionEvent) and payload.trigger_reason in (
            "MeterValuePeriodic",
            "MeterValueClock",
        )

    _tx_event_class = call21.TransactionEvent

    def _tx_event_extra(self, evse: EvseState, event_type: str, info: dict) -> dict:
        """2.1: the operation mode and evseSleep, each when it changed."""
        state = self._v2x[evse.id]
        if event_type != "Ended" and state.mode is not state.event_mode:
            info["operation_mode"] = state.mode.value
            state.event_mode = state.mode
        if event_type != "Ended" and state.sleep != state.event_sleep:
            state.event_sleep = state.sleep
            return {"evse_sleep": state.sleep}
        return {}

    # ------------------------------------------------------------------ EV needs

    def _charging_needs(self, ev: EvBattery) -> dict[str, Any]:
        """ChargingNeeds with the 2.1 V2X parameters of the car."""
        spec = ev.spec
        volts = self.spec.voltage
        phases = max(1, min(spec.phases, self.spec.phases))
        requested = spec.energy_transfer
        available = [requested]
        if spec.bidirectional:
            available.append("DC" if spec.dc else AC_TRANSFER[spec.phases])
        needs: dict[str, Any] = {
            "requested_energy_transfer": requested,
            "available_energy_transfer": available,
            "control_mode": spec.control_mode,
            "mobility_needs_mode": "EVCC",
        }
        if spec.dc:
            needs["dc_charging_parameters"] = {
                "ev_max_current": round(spec.max_ac_power_w / 400.0, 1),
                "ev_max_voltage": 400,
                "ev_max_power": round(spec.max_ac_power_w),
                "ev_energy_capacity": round(ev.capacity_wh),
                "energy_amount": round(ev.energy_needed_wh),
                "state_of_charge": round(ev.soc * 100),
                "full_soc": round(ev.target_soc * 100),
            }
        else:
            needs["ac_charging_parameters"] = self._ac_parameters(ev, phases)
        if spec.bidirectional:
            needs["v2x_charging_parameters"] = {
                "min_charge_power": round(spec.min_current_a * phases * volts),
                "max_charge_power": round(spec.max_ac_power_w),
                "min_discharge_power": 0,
                "max_discharge_power": round(spec.max_discharge_w),
                "ev_target_energy_request": round(ev.energy_needed_wh),
                "ev_min_energy_request": round(max(0.0, ev.energy_to_min_wh)),
                "ev_max_energy_request": round(ev.energy_to_full_wh),
                "ev_min_v2x_energy_request": round(ev.energy_to_min_wh),
                "ev_max_v2x_energy_request": round(ev.energy_to_full_wh),
                "target_soc": round(ev.target_soc * 100),
            }
        return needs

    def _needs_message(self, evse: EvseState, needs: dict[str, Any]) -> Any:
        return call21.NotifyEVChargingNeeds(
            charging_needs=needs,
            evse_id=evse.id,
            max_schedule_tuples=self.dm.int(SMART, "PeriodsPerSchedule"),
            timestamp=self.now_text(),
        )
