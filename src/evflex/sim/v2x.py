"""V2X execution of a simulated OCPP 2.1 station: signed power from the profiles in force.

:meth:`InstalledProfiles.v2x` says what the profiles in force want (operation
mode, setpoint, charge and discharge limits) and
:func:`evflex.smartcharging.v2x.target_power_w` turns that into the power the
EVSE aims for, given the live measurements (grid frequency, voltage, building
load from :mod:`evflex.sim.grid`), the local EMS inputs
(:meth:`V2xExecution.set_external_setpoint` / :meth:`~V2xExecution.set_external_limits`)
and what the car can do (:class:`~evflex.sim.ev.EvBattery`: bidirectional or
not, its V2X floor ``min_soc``). Positive power charges the car, negative
power discharges it. The target is re-evaluated when profiles change, at every
boundary of a profile in force, and once per clock-second while it depends on
live inputs (LocalFrequency, LocalLoadBalancing, ExternalSetpoint,
ExternalLimits, or an active VoltVar curve).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from evflex.sim.charging import LIMIT_HORIZON_S, ProfileRejected
from evflex.sim.metering import Sample
from evflex.sim.model import (
    CURRENT,
    CURRENT_EXPORT,
    ENERGY_EXPORT,
    POWER,
    POWER_EXPORT,
    POWER_EXPORT_OFFERED,
    POWER_OFFERED,
    POWER_SETPOINT,
    REACTIVE_EXPORT,
    REACTIVE_IMPORT,
    EvseState,
)
from evflex.smartcharging.composite import V2xControl, period_index
from evflex.smartcharging.profiles import (
    OperationMode,
    ProfileError,
    Purpose,
)
from evflex.smartcharging.v2x import (
    LoadBalancing,
    Measurements,
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


class V2xExecution:
    """Signed-power execution of a 2.1 station (mixed into :class:`~evflex.sim.v21.Station21`)."""

    _v2x: dict[int, V2xEvse]

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
