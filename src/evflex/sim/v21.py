"""OCPP 2.1 behaviour of the simulated charging station: V2X, DER control, priority charging.

A :class:`Station21` is a 2.0.1 station (:class:`~evflex.sim.v201.Station201`)
that speaks ``ocpp2.1`` and executes the 2.1 charging profiles of every EVSE
with signed power: :meth:`InstalledProfiles.v2x` says what the profiles in
force want (operation mode, setpoint, charge and discharge limits) and
:func:`evflex.smartcharging.v2x.target_power_w` turns that into the power the
EVSE aims for, given the live measurements (grid frequency, voltage, building
load from :mod:`evflex.sim.grid`), the local EMS inputs
(:meth:`Station21.set_external_setpoint` / :meth:`~Station21.set_external_limits`)
and what the car can do (:class:`~evflex.sim.ev.EvBattery`: bidirectional or
not, its V2X floor ``min_soc``). Positive power charges the car, negative
power discharges it. The target is re-evaluated when profiles change, at every
boundary of a profile in force, and once per clock-second while it depends on
live inputs (LocalFrequency, LocalLoadBalancing, ExternalSetpoint,
ExternalLimits, or an active VoltVar curve).

Metering: ``Energy.Active.Import.Register`` and ``Energy.Active.Export.Register``
(both only grow), ``Power.Active.Import`` / ``Power.Active.Export``,
``Power.Reactive.Import`` / ``Power.Reactive.Export``, ``SoC``, ``Frequency``
and ``Voltage``. A TransactionEvent carries ``transactionInfo.operationMode``
when the mode changed (trigger ``OperationModeChanged``) and ``evseSleep`` when
an Idle period with ``evseSleep`` switches the power electronics off or on.

Workarounds for the ``ocpp`` 2.1.0 library (see :class:`Link21`): per-phase
keys (``limit_L2``) are re-cased on every payload; SEND and CALLRESULTERROR
frames are understood; a CALL without handler gets a CALLERROR
(NotSupported for a known 2.1 action, NotImplemented for an unknown one).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ocpp.charge_point import (
    camel_to_snake_case,
    remove_nones,
    serialize_as_dict,
    snake_to_camel_case,
)
from ocpp.exceptions import GenericError, NotSupportedError, OCPPError, UnknownCallErrorCodeError
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.messages import Call, CallError, MessageType, validate_payload
from ocpp.routing import on
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v21.enums import Action as Action21

from evflex.clock import isoformat, parse_datetime
from evflex.csms.rpc import (
    CALLRESULTERROR,
    SEND,
    SEND_ACTIONS,
    RpcError,
    encode_send,
    fix_phase_keys,
)
from evflex.csms.rpc import validate as validate_frame
from evflex.sim.devicemodel import READ_ONLY, Variable
from evflex.sim.ev import AC_TRANSFER
from evflex.sim.model import (
    CURRENT,
    CURRENT_EXPORT,
    DEFAULT_SAMPLED_21,
    ENERGY,
    ENERGY_EXPORT,
    POWER,
    POWER_EXPORT,
    POWER_EXPORT_OFFERED,
    POWER_OFFERED,
    POWER_SETPOINT,
    REACTIVE_EXPORT,
    REACTIVE_IMPORT,
    SUPPORTED_MEASURANDS_21,
    EvseState,
    Transaction,
)
from evflex.sim.station import LIMIT_HORIZON_S, LinkDown, ProfileRejected, Sample, camel_kwargs
from evflex.sim.v201 import ALIGNED, SAMPLED, SMART, Link201, Station201
from evflex.smartcharging.composite import V2xControl, period_index
from evflex.smartcharging.profiles import (
    OperationMode,
    ProfileError,
    Purpose,
)
from evflex.smartcharging.v2x import (
    LoadBalancing,
    Measurements,
    curve_value,
    reactive_setpoint_var,
    target_power_w,
)

V2X = "V2XChargingCtrlr"
#: Operation modes whose target follows live inputs (re-evaluated every clock-second).
LIVE_MODES = frozenset(
    {
        OperationMode.LOCAL_FREQUENCY,
        OperationMode.LOCAL_LOAD_BALANCING,
        OperationMode.EXTERNAL_SETPOINT,
        OperationMode.EXTERNAL_LIMITS,
    }
)
#: How often live modes are re-evaluated (clock-seconds).
LIVE_INTERVAL_S = 1.0
#: Live modes report a changed rate (ChargingRateChanged) at most this often (clock-seconds).
LIVE_REPORT_INTERVAL_S = 10.0
#: DER control types the station executes (others are answered NotSupported).
SUPPORTED_DER = ("VoltVar", "LimitMaxDischarge")
#: The request field holding the settings of each supported DER control type.
DER_FIELD = {"VoltVar": "curve", "LimitMaxDischarge": "limit_max_discharge"}
SUPPORTED_TRANSFER_MODES = (
    "AC_single_phase,AC_two_phase,AC_three_phase,AC_BPT,DC,DC_BPT"  # simulated: any car fits
)
_ACTIONS_21 = frozenset(a.value for a in Action21) | SEND_ACTIONS
_MEASURANDS_21 = ",".join(SUPPORTED_MEASURANDS_21)
_DEFAULT_TX_ENDS = f"{ENERGY},{ENERGY_EXPORT}"


def _status_info(reason: str, info: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"reason_code": reason[:20]}
    if info:
        out["additional_info"] = info[:1024]
    return out


# ---------------------------------------------------------------------------
# the link
# ---------------------------------------------------------------------------


class Link21(Link201):
    """Handlers for the requests of an OCPP 2.1 CSMS, and the library workarounds.

    * (a) :meth:`call` serialises outgoing payloads itself so that the
      per-phase keys keep the spec's spelling (``limit_L2``); handlers read
      nested 2.1 objects through :func:`~evflex.sim.station.camel_kwargs`.
    * (b) :meth:`route_message` understands SEND (6, answered with nothing)
      and CALLRESULTERROR (5): one about a CALL of ours fails that call at
      once; one about a CALLRESULT of ours is counted as an error.
    * (c) :meth:`_handle_call` answers a CALL without handler with CALLERROR
      NotSupported (a known 2.1 action) or NotImplemented (unknown action);
      the library answers nothing at all for version 2.1.
    """

    _call = call21
    _call_result = result21
    _ocpp_version = "2.1"

    station: Station21
    _pending_call_id: str | None = None

    # -- (a) outgoing payloads

    async def call(
        self,
        payload: Any,
        suppress: bool = True,
        unique_id: str | None = None,
        skip_schema_validation: bool = False,
    ) -> Any:
        action = type(payload).__name__
        body = fix_phase_keys(snake_to_camel_case(remove_nones(serialize_as_dict(payload))))
        message_id = unique_id if unique_id is not None else str(self._unique_id_generator())
        request = Call(unique_id=message_id, action=action, payload=body)
        if not skip_schema_validation:
            await validate_payload(request, self._ocpp_version)
        async with self._call_lock:
            self._pending_call_id = message_id
            try:
                await self._send(request.to_json())
                try:
                    response = await self._get_specific_response(message_id, self._response_timeout)
                except TimeoutError:
                    raise TimeoutError(
                        f"Waited {self._response_timeout}s for the response to {action}"
                    ) from None
            finally:
                self._pending_call_id = None
        if response.message_type_id == MessageType.CallError:
            if suppress:
                return None
            try:
                error = response.to_exception()
            except UnknownCallErrorCodeError:
                error = GenericError(
                    description=response.error_description, details=response.error_details
                )
            raise error
        if not skip_schema_validation:
            response.action = action
            await validate_payload(response, self._ocpp_version)
        result_class = getattr(self._call_result, action)
        return result_class(**camel_to_snake_case(fix_phase_keys(response.payload)))

    async def send_frame(self, action: str, payload: dict[str, Any]) -> None:
        """Send a SEND frame (OCPP 2.1: a message that gets no answer), schema-checked."""
        if self.is_closed:
            raise LinkDown
        st = self.station
        validate_frame(SEND, action, payload, "2.1")
        st.stats.messages_sent += 1
        if st.on_message is not None:
            st.on_message("out", action, payload)
        await self._send(encode_send(str(self._unique_id_generator()), action, payload))

    # -- (b) SEND and CALLRESULTERROR frames

    async def route_message(self, raw_msg: str) -> None:
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and msg and msg[0] in (SEND, CALLRESULTERROR):
            self._route_21(msg)
            return
        await super().route_message(raw_msg)

    def _route_21(self, msg: list[Any]) -> None:
        st = self.station
        st.stats.messages_received += 1
        if msg[0] == SEND:
            if len(msg) == 4 and isinstance(msg[2], str) and isinstance(msg[3], dict):
                st.received.append(msg[2])
                if st.on_message is not None:
                    st.on_message("in", msg[2], msg[3])
            else:
                st.error(f"malformed SEND frame: {msg!r:.200}")
            return
        if len(msg) not in (4, 5):
            st.error(f"malformed CALLRESULTERROR frame: {msg!r:.200}")
            return
        message_id, code, description = str(msg[1]), str(msg[2]), str(msg[3])
        details = msg[4] if len(msg) == 5 else {}
        if message_id == self._pending_call_id:
            # An error about a CALL of ours: fail the call instead of waiting for the timeout.
            self._response_queue.put_nowait(CallError(message_id, code, description, details))
        else:
            st.error(f"CALLRESULTERROR {code} for our response {message_id}: {description}")

    # -- (c) CALLs without handler

    async def _handle_call(self, msg: Any) -> Any:
        handlers = self.route_map.get(msg.action)
        if handlers is None or "_on_action" not in handlers:
            error: OCPPError
            if msg.action in _ACTIONS_21:
                error = NotSupportedError(
                    description=f"{msg.action} is not supported by this station",
                    details={"cause": f"no handler for {msg.action}"},
                )
            else:
                error = OcppNotImplemented(
                    description=f"{msg.action} is not an OCPP 2.1 action",
                    details={"cause": f"unknown action {msg.action}"},
                )
            await self._send(msg.create_call_error(error).to_json())
            return None
        return await super()._handle_call(msg)

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
        try:
            st.update_dynamic_schedule(charging_profile_id, camel_kwargs(schedule_update, "2.1"))
        except ProfileRejected as exc:
            return result21.UpdateDynamicSchedule(
                status="Rejected", status_info=_status_info(exc.reason, exc.info)
            )
        self.later(st.apply_profiles)
        return result21.UpdateDynamicSchedule(status="Accepted")

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
        found = st.select_der(
            is_default=is_default, control_type=control_type, control_id=control_id
        )
        if not found:
            return result21.GetDERControl(status="NotFound")
        self.later(lambda: st.send_der_report(request_id, found))
        return result21.GetDERControl(status="Accepted")

    @on(Action21.clear_der_control)
    def on_clear_der_control(
        self,
        is_default: bool,
        control_type: str | None = None,
        control_id: str | None = None,
        **_: Any,
    ) -> Any:
        st = self.station
        found = st.select_der(
            is_default=is_default, control_type=control_type, control_id=control_id
        )
        if not found:
            return result21.ClearDERControl(status="NotFound")
        st.clear_der(found)
        self.later(st.refresh_der)
        return result21.ClearDERControl(status="Accepted")


# ---------------------------------------------------------------------------
# the station
# ---------------------------------------------------------------------------


@dataclass
class V2xEvse:
    """The OCPP 2.1 state of one EVSE."""

    mode: OperationMode = OperationMode.CHARGING_ONLY
    ctrl: V2xControl | None = None
    #: Signed power the EVSE aims for (W): > 0 charging, < 0 discharging.
    target_w: float = 0.0
    #: Idle with evseSleep: the power electronics are off.
    sleep: bool = False
    #: Reactive power the EVSE aims for (var, > 0 absorbed from the grid).
    reactive_var: float = 0.0
    #: The measurements the target was computed from.
    measured: Measurements | None = None
    #: Priority charging of the running transaction (UsePriorityCharging / the button).
    priority: bool = False
    #: A local EMS: setpoint (W, signed) and (charge, discharge) limits (W, >= 0).
    external_setpoint_w: float | None = None
    external_limits_w: tuple[float, float] | None = None
    #: NotifyAllowedEnergyTransfer of the running transaction (None: not restricted).
    allowed_transfer: tuple[str, ...] | None = None
    #: Mode, sleep state and target last reported in a TransactionEvent.
    event_mode: OperationMode | None = None
    event_sleep: bool = False
    reported_target_w: float = 0.0
    reported_at: datetime | None = None


@dataclass
class DerControl:
    """One DER control set with SetDERControl (``body``: its settings, snake_case)."""

    id: str
    type: str
    is_default: bool
    body: dict[str, Any]
    installed_at: datetime
    #: NotifyDERStartStop(started=True) was sent and no stop since.
    running: bool = False
    seq: int = 0

    @property
    def priority(self) -> int:
        return int(self.body.get("priority", 0))

    @property
    def start(self) -> datetime | None:
        text = self.body.get("start_time")
        return parse_datetime(text) if text else None

    @property
    def end(self) -> datetime | None:
        duration = self.body.get("duration")
        if duration is None:
            return None
        return (self.start or self.installed_at) + timedelta(seconds=float(duration))

    def in_force(self, now: datetime) -> bool:
        start, end = self.start, self.end
        return (start is None or start <= now) and (end is None or now < end)


@dataclass
class _DerState:
    controls: dict[str, DerControl] = field(default_factory=dict)
    #: Cleared controls whose stop has not been reported yet.
    removed: list[DerControl] = field(default_factory=list)
    timer: asyncio.Task[Any] | None = None
    seq: int = 0


class Station21(Station201):
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

    # ------------------------------------------------------------------ public V2X API

    def v2x_state(self, evse_id: int) -> V2xEvse:
        self.evse(evse_id)
        return self._v2x[evse_id]

    def operation_mode(self, evse_id: int) -> OperationMode:
        """The operation mode the EVSE executes now."""
        return self.v2x_state(evse_id).mode

    def v2x_status(self, evse_id: int) -> str:
        """``"charging"``, ``"discharging"`` or ``"idle"``: where the power flows now."""
        evse = self.evse(evse_id)
        self.advance(evse)
        if evse.power_w > 1e-6:
            return "charging"
        if evse.power_w < -1e-6:
            return "discharging"
        return "idle"

    def set_external_setpoint(self, evse_id: int, watts: float | None) -> None:
        """A local EMS sets the power for ExternalSetpoint (W, negative: discharge; None: clear)."""
        evse = self.evse(evse_id)
        self._v2x[evse_id].external_setpoint_w = None if watts is None else float(watts)
        self._reevaluate(evse)

    def set_external_limits(
        self, evse_id: int, charge_w: float | None, discharge_w: float | None = None
    ) -> None:
        """A local EMS sets the limits for ExternalLimits (W, both >= 0; None: clear)."""
        evse = self.evse(evse_id)
        state = self._v2x[evse_id]
        if charge_w is None and discharge_w is None:
            state.external_limits_w = None
        else:
            state.external_limits_w = (
                max(0.0, float(charge_w if charge_w is not None else math.inf)),
                max(0.0, float(discharge_w if discharge_w is not None else math.inf)),
            )
        self._reevaluate(evse)

    def has_priority_profile(self, evse_id: int) -> bool:
        return any(
            i.profile.purpose is Purpose.PRIORITY and i.evse_id in (0, evse_id)
            for i in self.profiles
        )

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

    # ------------------------------------------------------------------ dynamic schedules

    def update_dynamic_schedule(self, profile_id: int, update: dict[str, Any]) -> None:
        """UpdateDynamicSchedule: new values for the period in force of profile ``profile_id``.

        ``update`` is the camelCase ``scheduleUpdate``. Raises
        :class:`ProfileRejected` when the profile is unknown, not in force, or
        the updated period breaks the 2.1 rules. Call :meth:`apply_profiles`
        afterwards.
        """
        item = self.profiles.get(profile_id)
        if item is None:
            raise ProfileRejected("UnknownProfile", f"no charging profile {profile_id}")
        evse_id = item.evse_id or next(
            (e.id for e in self.evses.values() if e.tx is not None), min(self.evses)
        )
        tx = self.evses[evse_id].tx
        index = period_index(
            item,
            evse_id,
            self.now(),
            transaction_id=str(tx.id) if tx is not None else None,
            transaction_start=tx.started_at if tx is not None else None,
        )
        if index is None:
            raise ProfileRejected("NotInForce", f"profile {profile_id} is not in force now")
        profile = item.profile
        periods = list(profile.schedule.periods)
        changes: dict[str, Any] = {}
        for name, (key, l2, l3) in (
            ("limit", ("limit", "limit_L2", "limit_L3")),
            ("discharge_limit", ("dischargeLimit", "dischargeLimit_L2", "dischargeLimit_L3")),
            ("setpoint", ("setpoint", "setpoint_L2", "setpoint_L3")),
            (
                "setpoint_reactive",
                ("setpointReactive", "setpointReactive_L2", "setpointReactive_L3"),
            ),
        ):
            if update.get(key) is not None:
                changes[name] = float(update[key])
            if update.get(l2) is not None or update.get(l3) is not None:
                if update.get(l2) is None or update.get(l3) is None:
                    raise ProfileRejected("InvalidSchedule", f"{l2} and {l3} come together")
                changes[f"{name}_l23"] = (float(update[l2]), float(update[l3]))
        if not changes:
            raise ProfileRejected("InvalidSchedule", "scheduleUpdate holds no value")
        periods[index] = replace(periods[index], **changes)
        updated = replace(profile, schedule=replace(profile.schedule, periods=tuple(periods)))
        tx_id = profile.transaction_id if profile.purpose is Purpose.TX else None
        try:
            self.profiles.install(item.evse_id, updated, self.version, transaction_id=tx_id)
        except ProfileError as exc:
            raise ProfileRejected("InvalidSchedule", str(exc)) from None

    # ------------------------------------------------------------------ DER control

    @property
    def der_controls(self) -> dict[str, DerControl]:
        return self._der.controls

    def set_der_control(
        self, control_id: str, control_type: str, is_default: bool, body: dict[str, Any]
    ) -> list[str]:
        """Install a DER control; return the ids of the controls it supersedes now."""
        now = self.now()
        before = self._active_der(now).get(control_type)
        self._der.seq += 1
        self._der.controls[control_id] = DerControl(
            control_id, control_type, is_default, dict(body), now, seq=self._der.seq
        )
        after = self._active_der(now).get(control_type)
        if before is not None and after is not None and after.id == control_id:
            if before.id != control_id:
                return [before.id]
        return []

    def clear_der(self, controls: list[DerControl]) -> None:
        """ClearDERControl: remove ``controls`` (call :meth:`refresh_der` afterwards)."""
        for control in controls:
            if self._der.controls.pop(control.id, None) is not None:
                self._der.removed.append(control)

    def select_der(
        self,
        *,
        is_default: bool | None = None,
        control_type: str | None = None,
        control_id: str | None = None,
    ) -> list[DerControl]:
        return [
            c
            for c in self._der.controls.values()
            if (is_default is None or c.is_default == is_default)
            and (control_type is None or c.type == control_type)
            and (control_id is None or c.id == control_id)
        ]

    def _active_der(self, now: datetime) -> dict[str, DerControl]:
        """Per control type: the control in force now (non-default before default,
        then the lowest priority number, then the newest)."""
        best: dict[str, DerControl] = {}
        for c in self._der.controls.values():
            if not c.in_force(now):
                continue
            current = best.get(c.type)
            key = (c.is_default, c.priority, -c.seq)
            if current is None or key < (current.is_default, current.priority, -current.seq):
                best[c.type] = c
        return best

    async def refresh_der(self) -> None:
        """Start / stop DER controls (NotifyDERStartStop) and apply them to the EVSEs."""
        now = self.now()
        active = self._active_der(now)
        running = {c.id for c in active.values()}
        stopped = [c for c in self._der.controls.values() if c.running and c.id not in running]
        stopped += [c for c in self._der.removed if c.running]
        self._der.removed.clear()
        for control in stopped:
            control.running = False
            await self.send_optional(
                call21.NotifyDERStartStop(
                    control_id=control.id, started=False, timestamp=isoformat(now)
                )
            )
        for control in active.values():
            if control.running:
                continue
            control.running = True
            superseded = [
                c.id
                for c in self._der.controls.values()
                if c.type == control.type and c.id != control.id and c.in_force(now)
            ]
            await self.send_optional(
                call21.NotifyDERStartStop(
                    control_id=control.id,
                    started=True,
                    timestamp=isoformat(now),
                    superseded_ids=superseded[:24] or None,
                )
            )
        self._schedule_der_timer(now)
        await self.apply_profiles()

    def _schedule_der_timer(self, now: datetime) -> None:
        timer = self._der.timer
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        self._der.timer = None
        edges = [
            t
            for c in self._der.controls.values()
            for t in (c.start, c.end)
            if t is not None and t > now
        ]
        if edges:
            self._der.timer = self.spawn(self._der_timer(min(edges)))

    async def _der_timer(self, when: datetime) -> None:
        await self.clock.sleep(max(0.0, (when - self.now()).total_seconds()) + 0.001)
        if self._der.timer is asyncio.current_task():
            self._der.timer = None
        # Controls whose duration ran out are gone after their stop was reported.
        await self.refresh_der()
        now = self.now()
        for control in list(self._der.controls.values()):
            end = control.end
            if end is not None and end <= now and not control.running:
                self._der.controls.pop(control.id, None)

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

    def _voltvar_var(self, evse: EvseState) -> float | None:
        """Q(U) of the active VoltVar curve (var, > 0 absorbed), None without one."""
        control = self._active_der(self.now()).get("VoltVar")
        if control is None:
            return None
        points = [(float(p["x"]), float(p["y"])) for p in control.body.get("curve_data") or []]
        if not points:
            return None
        percent_v = 100.0 * self.grid_voltage_v() / self.spec.voltage
        # y: % of the maximum reactive power, > 0 injected (over-excited, raises the voltage).
        injected = curve_value(points, percent_v) / 100.0 * self._max_var(evse)
        return -injected

    def _max_var(self, evse: EvseState) -> float:
        return self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage

    def _discharge_cap_w(self, evse: EvseState) -> float:
        """LimitMaxDischarge: the share of the EVSE's discharge power allowed (W)."""
        hardware = self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage
        control = self._active_der(self.now()).get("LimitMaxDischarge")
        pct = control.body.get("pct_max_discharge_power") if control is not None else None
        if pct is None:
            return hardware
        return max(0.0, hardware * float(pct) / 100.0)

    # ------------------------------------------------------------------ execution

    def _balancing(self) -> LoadBalancing | None:
        dm = self.dm
        try:
            return LoadBalancing(
                upper_w=float(dm.text(V2X, "LocalLoadBalancingUpperThreshold")),
                lower_w=float(dm.text(V2X, "LocalLoadBalancingLowerThreshold")),
                upper_offset_w=float(dm.text(V2X, "LocalLoadBalancingUpperOffset")),
                lower_offset_w=float(dm.text(V2X, "LocalLoadBalancingLowerOffset")),
            )
        except ValueError:
            return None

    def _discharge_allowed(self, evse: EvseState) -> bool:
        state = self._v2x[evse.id]
        if not self.dm.bool(V2X, "Enabled"):
            return False
        allowed = state.allowed_transfer
        return allowed is None or any("BPT" in mode for mode in allowed)

    def _evaluate(self, evse: EvseState, now: datetime) -> datetime | None:
        """Set the EVSE's mode, limits and target power for ``now``; return when to look again."""
        state = self._v2x[evse.id]
        tx, ev = evse.tx, evse.ev
        phases = self._used_phases(evse)
        volts = self.spec.voltage
        kw: dict[str, Any] = {
            "transaction_id": str(tx.id) if tx is not None else None,
            "transaction_start": tx.started_at if tx is not None else None,
            "priority_charging": state.priority,
        }
        ctrl = self.profiles.v2x(
            evse.id,
            now,
            voltage=volts,
            phases=phases,
            max_current_a=self.spec.max_current_a,
            **kw,
        )
        hardware = self.spec.max_current_a * phases * volts
        charge_limit = max(0.0, min(ctrl.charge_limit_w, hardware))
        if (
            ctrl.mode is OperationMode.CHARGING_ONLY
            and charge_limit / (phases * volts) < self.spec.min_current_a - 1e-9
        ):
            charge_limit = 0.0  # below the IEC 61851 minimum: pause
        ctrl = replace(ctrl, charge_limit_w=charge_limit)
        state.ctrl = ctrl
        state.mode = ctrl.mode
        state.sleep = bool(
            ctrl.mode is OperationMode.IDLE and ctrl.period is not None and ctrl.period.evse_sleep
        )
        evse.profile_limit_w = charge_limit if len(self.profiles) else None
        evse.limit_w = charge_limit
        target = 0.0
        reactive = 0.0
        if tx is not None and ev is not None:
            discharge = ev.spec.max_discharge_w if self._discharge_allowed(evse) else 0.0
            discharge = min(discharge, self._discharge_cap_w(evse))
            others = sum(e.power_w for e in self.evses.values() if e is not evse)
            state.measured = Measurements(
                frequency_hz=self.grid_frequency_hz(),
                voltage_v=self.grid_voltage_v(),
                building_w=self.building_load_w() + others,
            )
            target = target_power_w(
                ctrl,
                phases=phases,
                voltage=volts,
                ev_max_charge_w=ev.spec.max_ac_power_w,
                ev_max_discharge_w=discharge,
                measured=state.measured,
                balancing=self._balancing(),
                external_setpoint_w=state.external_setpoint_w,
                external_limits_w=state.external_limits_w,
                current_w=evse.power_w,
            )
            if ev.spec.bidirectional and not state.sleep:
                q = self._voltvar_var(evse)
                if q is None:
                    q = reactive_setpoint_var(ctrl, phases, volts)
                if q is not None:
                    cap = self._max_var(evse)
                    reactive = max(-cap, min(cap, q))
        state.target_w = target
        state.reactive_var = reactive
        change = self.profiles.next_change(evse.id, now, LIMIT_HORIZON_S, **kw)
        live = ctrl.mode in LIVE_MODES or (
            ev is not None and ev.spec.bidirectional and "VoltVar" in self._active_der(now)
        )
        if live:
            tick = now + timedelta(seconds=LIVE_INTERVAL_S)
            change = tick if change is None else min(change, tick)
        elif change is not None:
            change += timedelta(milliseconds=1)  # just past the boundary
        return change

    def offered_w(self, evse: EvseState) -> float:
        """The signed power the EVSE aims for (OCPP 2.1: negative offers discharge)."""
        return self._v2x[evse.id].target_w

    def update_limit(self, evse: EvseState) -> float:
        """Re-evaluate the EVSE's target power now; return the previous target (W)."""
        now = self.now()
        self.advance(evse, now)
        previous = self.offered_w(evse)
        change = self._evaluate(evse, now)
        self.advance(evse, now)  # the vehicle's power at the new target
        self._cancel_limit_timer(evse)
        if change is not None and evse.tx is not None:
            evse.limit_task = self.spawn(self._limit_timer(evse, change))
        return previous

    async def apply_profiles(self, evses: Any = None) -> None:
        targets = list(evses if evses is not None else self.evses.values())
        previous = [self.update_limit(evse) for evse in targets]
        for evse, before in zip(targets, previous, strict=True):
            await self._report_change(evse, before)

    def _reevaluate(self, evse: EvseState) -> None:
        before = self.update_limit(evse)
        if self._started:
            self.spawn(self._report_change(evse, before))

    async def _report_change(self, evse: EvseState, before: float) -> None:
        if evse.tx is None:
            return
        state = self._v2x[evse.id]
        if (
            state.mode is not state.event_mode
            or state.sleep != state.event_sleep
            or abs(self.offered_w(evse) - before) > 1e-6
        ):
            await self._limit_changed(evse, before)

    async def _limit_changed(self, evse: EvseState, previous_w: float) -> None:
        tx = evse.tx
        if tx is None or not tx.authorized or evse.ev is None:
            return
        state = self._v2x[evse.id]
        value = self.meter_value(evse, self.dm.list(SAMPLED, "TxUpdatedMeasurands"), "Other")
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
        try:
            significance = float(self.dm.text(SMART, "LimitChangeSignificance")) / 100.0
        except ValueError:
            significance = 0.0
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

    def advance(self, evse: EvseState, now: datetime | None = None) -> None:
        """Integrate the signed energy flow of the plugged-in vehicle up to ``now``."""
        now = now or self.clock.now()
        last = evse.last_update or now
        seconds = max(0.0, (now - last).total_seconds())
        evse.last_update = max(now, last)
        state = self._v2x[evse.id]
        if evse.tx is None or evse.ev is None or not evse.tx.authorized:
            evse.power_w = 0.0
            evse.reactive_var = 0.0
            return
        target = state.target_w
        if seconds > 0:
            imported, exported = evse.ev.exchange(seconds, target)
            evse.meter_wh += imported
            evse.export_wh += exported
            evse.session_energy_wh += imported - exported
            self.stats.energy_wh += imported
            if imported > 0 or exported > 0:
                evse.tx.charging_s += seconds
        evse.power_w = evse.ev.power_w(target)
        evse.reactive_var = state.reactive_var

    def profiles_tx_started(self, evse: EvseState) -> None:
        state = self._v2x[evse.id]
        state.priority = False
        state.allowed_transfer = None
        state.event_mode = None
        state.event_sleep = False
        super().profiles_tx_started(evse)
        state.reported_target_w = state.target_w

    def profiles_tx_ended(self, evse: EvseState) -> None:
        state = self._v2x[evse.id]
        state.priority = False
        state.allowed_transfer = None
        super().profiles_tx_ended(evse)

    def _supply_state(self, evse: EvseState) -> str:
        state = self._v2x[evse.id]
        if state.sleep or abs(state.target_w) <= 1e-9:
            return "SuspendedEVSE"
        return "Charging"

    def _charging_state(self, evse: EvseState) -> str:
        ev = evse.ev
        target = self._v2x[evse.id].target_w
        if ev is not None:
            if target < 0 and not ev.can_discharge:
                return "SuspendedEV"
            if target >= 0 and ev.full:
                return "SuspendedEV"
        return self._supply_state(evse)

    # ------------------------------------------------------------------ metering

    def samples(self, evse: EvseState, measurands: list[str]) -> list[Sample]:
        out: list[Sample] = []
        power = evse.power_w
        reactive = evse.reactive_var
        volts = self.spec.voltage
        phases = self._used_phases(evse)
        state = self._v2x[evse.id]
        for m in measurands:
            if m == POWER:
                out.append(Sample(POWER, round(max(0.0, power), 1), "W"))
            elif m == POWER_EXPORT:
                out.append(Sample(POWER_EXPORT, round(max(0.0, -power), 1), "W"))
            elif m == ENERGY_EXPORT:
                out.append(Sample(ENERGY_EXPORT, round(evse.export_wh), "Wh"))
            elif m in (CURRENT, CURRENT_EXPORT):
                flow = max(0.0, power if m == CURRENT else -power)
                amps = round(flow / (phases * volts), 2) if volts else 0.0
                for n in range(1, phases + 1):
                    out.append(Sample(m, amps, "A", f"L{n}"))
            elif m == REACTIVE_IMPORT:
                out.append(Sample(REACTIVE_IMPORT, round(max(0.0, reactive), 1), "var"))
            elif m == REACTIVE_EXPORT:
                out.append(Sample(REACTIVE_EXPORT, round(max(0.0, -reactive), 1), "var"))
            elif m == POWER_OFFERED:
                out.append(Sample(POWER_OFFERED, round(max(0.0, state.target_w), 1), "W"))
            elif m == POWER_EXPORT_OFFERED:
                out.append(Sample(POWER_EXPORT_OFFERED, round(max(0.0, -state.target_w), 1), "W"))
            elif m == POWER_SETPOINT:
                out.append(Sample(POWER_SETPOINT, round(state.target_w, 1), "W"))
            else:
                out.extend(super().samples(evse, [m]))
        return out

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

    async def notify_charging_needs(self, evse: EvseState, tx: Transaction) -> None:
        """NotifyEVChargingNeeds with the 2.1 V2X parameters of the car."""
        ev = evse.ev
        if ev is None or evse.tx is not tx:
            return
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
            needs["ac_charging_parameters"] = {
                "energy_amount": int(round(ev.energy_needed_wh)),
                "ev_min_current": int(round(spec.min_current_a)),
                "ev_max_current": max(1, int(round(spec.max_ac_power_w / (phases * volts)))),
                "ev_max_voltage": int(round(volts)),
            }
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
        if ev.departure_s is not None:
            needs["departure_time"] = isoformat(tx.started_at + timedelta(seconds=ev.departure_s))
        await self.send_optional(
            call21.NotifyEVChargingNeeds(
                charging_needs=needs,
                evse_id=evse.id,
                max_schedule_tuples=self.dm.int(SMART, "PeriodsPerSchedule"),
                timestamp=self.now_text(),
            )
        )
