"""What an EVSE does in each OCPP 2.1 operation mode: the signed power it aims for.

Pure functions shared by the simulator (which executes them) and the CSMS
(which computes central frequency setpoints with the same curve). Positive
power charges the EV, negative power discharges it.

* ``Idle``: nothing (``evseSleep`` may also switch the power electronics off).
* ``ChargingOnly``: charge as much as the limit and the EV allow.
* ``CentralSetpoint`` / ``CentralFrequency``: follow the CSMS ``setpoint``.
* ``ExternalSetpoint``: follow the setpoint of a local energy management
  system; the CSMS's ``limit`` / ``dischargeLimit`` bound it.
* ``ExternalLimits``: an EMS sets the limits; the EV charges as much as it may.
* ``LocalFrequency``: ``v2xBaseline`` plus the ``v2xFreqWattCurve`` read at
  the measured frequency by linear interpolation (flat beyond the ends).
* ``LocalLoadBalancing``: keep the building's grid connection between a
  lower and an upper threshold: above the upper one the EV gives back what
  is needed to come down to ``upper - upper offset``; below the lower one
  (e.g. solar export) it takes what is needed to reach ``lower + lower offset``;
  in between it holds the power it has (so a car that had to give back keeps
  giving until the building falls below the lower threshold).

Every result is clamped to ``[-discharge limit, charge limit]`` and to the
EV's own charge and discharge power.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from evflex.smartcharging.composite import V2xControl
from evflex.smartcharging.profiles import OperationMode


def freq_watt(curve: Sequence[tuple[float, float]], frequency_hz: float) -> float:
    """Power (W) of a frequency-watt curve at ``frequency_hz``, linear between points."""
    if not curve:
        raise ValueError("empty frequency-watt curve")
    points = sorted(curve)
    if frequency_hz <= points[0][0]:
        return points[0][1]
    for (f0, p0), (f1, p1) in zip(points, points[1:], strict=False):
        if frequency_hz <= f1:
            return p0 + (p1 - p0) * (frequency_hz - f0) / (f1 - f0)
    return points[-1][1]


def curve_value(curve: Sequence[tuple[float, float]], x: float) -> float:
    """Any piecewise-linear curve given as (x, y) points (VoltVar uses this too)."""
    return freq_watt(curve, x)


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    """Thresholds (W of import at the grid connection; negative = export) and offsets."""

    upper_w: float
    lower_w: float = 0.0
    upper_offset_w: float = 0.0
    lower_offset_w: float = 0.0

    def __post_init__(self) -> None:
        if self.lower_w > self.upper_w:
            raise ValueError("the lower threshold must not be above the upper one")


@dataclass(frozen=True, slots=True)
class Measurements:
    frequency_hz: float = 50.0
    voltage_v: float = 230.0
    #: Building import at the grid connection without this EV (W).
    building_w: float = 0.0


def target_power_w(
    ctrl: V2xControl,
    *,
    phases: int,
    voltage: float,
    ev_max_charge_w: float,
    ev_max_discharge_w: float,
    measured: Measurements | None = None,
    balancing: LoadBalancing | None = None,
    external_setpoint_w: float | None = None,
    external_limits_w: tuple[float, float] | None = None,
    current_w: float = 0.0,
) -> float:
    """The signed power the EVSE aims for now (see the module docstring).

    ``external_limits_w`` is (charge limit, discharge limit), both >= 0;
    ``current_w`` is the EV's power now (LocalLoadBalancing holds it in the band).
    """
    m = measured or Measurements()
    period = ctrl.period
    mode = ctrl.mode
    high = max(0.0, min(ctrl.charge_limit_w, ev_max_charge_w))
    low = -max(0.0, min(ctrl.discharge_limit_w, ev_max_discharge_w))

    def conv(value: float) -> float:
        return ctrl.to_w(value, phases, voltage)

    setpoint = None
    total = period.total("setpoint") if period is not None else None
    if total is not None:
        setpoint = conv(total)
    if mode is OperationMode.IDLE:
        return 0.0
    if mode is OperationMode.CHARGING_ONLY:
        want = high
    elif mode in (OperationMode.CENTRAL_SETPOINT, OperationMode.CENTRAL_FREQUENCY):
        want = setpoint if setpoint is not None else 0.0
    elif mode is OperationMode.EXTERNAL_SETPOINT:
        want = external_setpoint_w if external_setpoint_w is not None else (setpoint or 0.0)
    elif mode is OperationMode.EXTERNAL_LIMITS:
        if external_limits_w is not None:
            high = min(high, max(0.0, external_limits_w[0]))
            low = max(low, -max(0.0, external_limits_w[1]))
        want = high
    elif mode is OperationMode.LOCAL_FREQUENCY:
        base = conv(period.v2x_baseline) if period and period.v2x_baseline is not None else 0.0
        curve = period.v2x_freq_watt_curve if period is not None else None
        want = base + (freq_watt(curve, m.frequency_hz) if curve else 0.0)
    elif mode is OperationMode.LOCAL_LOAD_BALANCING:
        want = setpoint if setpoint is not None else 0.0
        if balancing is not None:
            grid = m.building_w + current_w
            if grid > balancing.upper_w:
                want = balancing.upper_w - balancing.upper_offset_w - m.building_w
            elif grid < balancing.lower_w:
                want = balancing.lower_w + balancing.lower_offset_w - m.building_w
            else:
                want = current_w
    else:  # pragma: no cover - every mode is listed above
        raise ValueError(f"unknown operation mode {mode}")
    return max(low, min(high, want))


def reactive_setpoint_var(ctrl: V2xControl, phases: int, voltage: float) -> float | None:
    """The period's reactive power setpoint in var (A setpoints times voltage)."""
    period = ctrl.period
    total = period.total("setpoint_reactive") if period is not None else None
    if total is None:
        return None
    return ctrl.to_w(total, phases, voltage)
