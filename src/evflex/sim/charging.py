"""Charging-profile execution of a simulated station (OCPP 1.6, 2.0.1 and 2.1).

Charging profiles (SetChargingProfile, RemoteStart/RequestStartTransaction
with a TxProfile) are kept in an :class:`InstalledProfiles` and executed: each
EVSE offers at most the limit of its composite schedule (the shared
:mod:`evflex.smartcharging` computation), re-evaluated when profiles change,
when transactions start and end, and at the schedule's boundaries. A limit
below ``StationSpec.min_current_a`` pauses charging (SuspendedEVSE).
``StationSpec.profile_behaviour`` makes a station reject or ignore profiles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ocpp.charge_point import snake_to_camel_case

from evflex.csms.rpc import fix_phase_keys
from evflex.sim.ev import EvBattery
from evflex.sim.model import EvseState
from evflex.smartcharging.composite import CompositeSchedule
from evflex.smartcharging.profiles import (
    ChargingProfile,
    ProfileError,
    Purpose,
    RateUnit,
    from_wire,
    validate,
)

#: How far ahead the station looks for the next change of its charging limit (clock-seconds).
LIMIT_HORIZON_S = 86_400


def profile_from_kwargs(data: dict[str, Any], version: str) -> ChargingProfile:
    """A charging profile from a handler argument (the ``ocpp`` library's snake_case dict)."""
    return from_wire(_plain_numbers(camel_kwargs(data, version)), version)


def camel_kwargs(data: Any, version: str) -> Any:
    """A handler argument back in the spelling of the wire (camelCase).

    OCPP 2.1 per-phase keys (``limit_L2``, ...) reach the handlers as
    ``limit_l2``; the ``ocpp`` library's converter makes ``limitL2`` of them,
    :func:`~evflex.csms.rpc.fix_phase_keys` restores the spec's spelling.
    """
    camel = snake_to_camel_case(data)
    return fix_phase_keys(camel) if version == "2.1" else camel


def _plain_numbers(data: Any) -> Any:
    # The ocpp library parses 1.6 schedules with Decimal to validate "multipleOf 0.1".
    if isinstance(data, dict):
        return {k: _plain_numbers(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain_numbers(v) for v in data]
    if isinstance(data, Decimal):
        return float(data)
    return data


class ProfileRejected(Exception):
    """A charging profile the station does not install; ``reason`` is a 2.0.1 reason code."""

    def __init__(self, reason: str, info: str = "") -> None:
        super().__init__(info or reason)
        self.reason = reason
        self.info = info


class SmartCharging:
    """Profile installation and execution of :class:`~evflex.sim.station.SimStation`."""

    def install_profile(self, evse_id: int, profile: ChargingProfile) -> list[int]:
        """Install a profile from SetChargingProfile; raise :class:`ProfileRejected` if not.

        Returns the ids of the profiles it replaced. Call :meth:`apply_profiles`
        afterwards (once the answer has been sent).
        """
        if self.spec.profile_behaviour != "execute":
            raise ProfileRejected("UnsupportedRequest", "this station does not take profiles")
        if evse_id != 0 and evse_id not in self.evses:
            raise ProfileRejected("UnknownEvse", f"no EVSE {evse_id}")
        try:
            validate(profile, evse_id, self.version)
        except ProfileError as exc:
            raise ProfileRejected("InvalidProfile", str(exc)) from None
        max_level, max_periods, max_profiles = self._profile_limits()
        if profile.stack_level > max_level:
            raise ProfileRejected("InvalidStackLevel", f"stackLevel above {max_level}")
        for schedule in (profile.schedule, *profile.extra_schedules):
            if len(schedule.periods) > max_periods:
                raise ProfileRejected("InvalidSchedule", f"more than {max_periods} periods")
        tx_id: str | None = None
        if profile.purpose is Purpose.TX:
            tx = self.evses[evse_id].tx if evse_id in self.evses else None
            if tx is None:
                raise ProfileRejected("TxNotFound", f"no transaction on EVSE {evse_id}")
            tx_id = str(tx.id)
            if profile.transaction_id is not None and profile.transaction_id != tx_id:
                raise ProfileRejected("TxNotFound", f"transaction {profile.transaction_id} unknown")
            if self.version != "1.6":
                profile = replace(profile, transaction_id=tx_id)
        replaces = self.profiles.get(profile.id) is not None or any(
            i.evse_id == evse_id
            and i.profile.purpose is profile.purpose
            and i.profile.stack_level == profile.stack_level
            for i in self.profiles
        )
        if len(self.profiles) >= max_profiles and not replaces:
            raise ProfileRejected("TooManyProfiles", f"{max_profiles} profiles installed")
        try:
            return self.profiles.install(evse_id, profile, self.version, transaction_id=tx_id)
        except ProfileError as exc:  # valid, transaction checked: a stack level conflict
            raise ProfileRejected("DuplicateProfile", str(exc)) from None

    def check_tx_profile(self, evse_id: int, profile: ChargingProfile) -> None:
        """Check the TxProfile of a remote start (ProfileError if it cannot be used)."""
        if profile.purpose is not Purpose.TX:
            raise ProfileError("the profile of a remote start must be a TxProfile")
        validate(profile, evse_id, self.version)

    def remote_start_profile(
        self, evse_id: int, data: dict[str, Any] | None
    ) -> ChargingProfile | None:
        """The TxProfile of a remote start from its handler argument (ProfileError if unusable)."""
        if data is None:
            return None
        profile = profile_from_kwargs(data, self.version)
        self.check_tx_profile(evse_id, profile)
        return profile

    def clear_profiles(
        self,
        profile_id: int | None = None,
        evse_id: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> list[int]:
        """ClearChargingProfile: by id, else by the criteria given; returns what went."""
        if profile_id is not None:
            return self.profiles.clear(profile_id=profile_id)
        return self.profiles.clear(
            evse_id=evse_id,
            purpose=Purpose.parse(purpose) if purpose else None,
            stack_level=stack_level,
        )

    def set_pending_tx_profile(
        self, evse: EvseState, ev: EvBattery, profile: ChargingProfile
    ) -> None:
        """Install ``profile`` as TxProfile once the transaction of ``ev`` starts."""
        if self.spec.profile_behaviour == "execute":
            self._pending_tx_profiles[evse.id] = (ev, profile)

    def composite(
        self, evse_id: int, duration_s: int, rate_unit: RateUnit | str | None = None
    ) -> CompositeSchedule:
        """GetCompositeSchedule: the composite of ``evse_id`` from now (whole seconds).

        The conversion between A and W uses the station's phases and voltage; the
        hardware cap is ``max_current_a`` (for EVSE 0 that of all EVSEs together).
        """
        start = self.now().replace(microsecond=0)
        evse = self.evses.get(evse_id)
        tx = evse.tx if evse is not None else None
        cap = self.spec.max_current_a * (self.spec.evses if evse_id == 0 else 1)
        return self.profiles.composite(
            evse_id,
            start,
            max(0, int(duration_s)),
            RateUnit(rate_unit) if rate_unit else None,
            transaction_id=str(tx.id) if tx is not None else None,
            transaction_start=tx.started_at if tx is not None else None,
            voltage=self.spec.voltage,
            phases=self.spec.phases,
            max_current_a=cap,
        )

    def _profile_limit(
        self, evse: EvseState, now: datetime
    ) -> tuple[float | None, datetime | None]:
        """The limit of the profiles in force on ``evse`` in W and when to look again.

        The composite schedule rounds its boundaries to whole seconds from
        ``now`` and keeps the lower limit where two fall into one second. The
        station therefore wakes up half a second before a boundary and
        compares the exact limits (zero-length composites) now and half a
        second later: if they differ, the lower limit applies and the station
        looks again after that half second. Cuts thus take effect on time (or
        up to a second early), raises at most half a second late.
        """
        if not len(self.profiles):
            return None, None
        phases = self._used_phases(evse)
        tx = evse.tx
        kw: dict[str, Any] = {
            "transaction_id": str(tx.id) if tx is not None else None,
            "transaction_start": tx.started_at if tx is not None else None,
            "voltage": self.spec.voltage,
            "phases": phases,
            "max_current_a": self.spec.max_current_a,
        }
        ahead = self.profiles.composite(evse.id, now, LIMIT_HORIZON_S, RateUnit.A, **kw)
        exact = self.profiles.composite(evse.id, now, 0, RateUnit.A, **kw).periods[0]
        soon = now + timedelta(seconds=0.5)
        probe = self.profiles.composite(evse.id, soon, 0, RateUnit.A, **kw).periods[0]
        period = ahead.periods[0]  # the lowest limit of the next half second
        following = [p for p in ahead.periods if p.start_s > 0]
        key = (exact.limit, exact.number_phases)
        if key != (probe.limit, probe.number_phases) or key != (
            period.limit,
            period.number_phases,
        ):
            wait = 0.5
        elif following:
            wait = max(0.5, following[0].start_s - 0.5)
        else:
            wait = float(LIMIT_HORIZON_S)
        change = now + timedelta(seconds=wait)
        amps = period.limit
        if amps < self.spec.min_current_a - 1e-9:
            return 0.0, change
        used = min(phases, period.number_phases or phases)
        return amps * used * self.spec.voltage, change

    def update_limit(self, evse: EvseState) -> float:
        """Set ``evse.limit_w`` from the profiles in force now; return the previous offer in W.

        The energy drawn so far is booked at the old limit first. While a
        transaction runs, a timer re-evaluates the limit at the next change of
        the composite schedule.
        """
        now = self.now()
        self.advance(evse, now)
        previous = self.offered_w(evse)
        limit, change = self._profile_limit(evse, now)
        evse.profile_limit_w = limit
        hardware = self.spec.evse_limit_w
        evse.limit_w = hardware if limit is None else max(0.0, min(hardware, limit))
        self.advance(evse, now)  # the vehicle's power at the new limit
        self._cancel_limit_timer(evse)
        if change is not None and evse.tx is not None:
            evse.limit_task = self.spawn(self._limit_timer(evse, change))
        return previous

    def _cancel_limit_timer(self, evse: EvseState) -> None:
        task = evse.limit_task
        evse.limit_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _limit_timer(self, evse: EvseState, when: datetime) -> None:
        await self.clock.sleep(max(0.0, (when - self.now()).total_seconds()))
        if evse.limit_task is asyncio.current_task():
            evse.limit_task = None
        await self.apply_profiles([evse])

    async def apply_profiles(self, evses: Iterable[EvseState] | None = None) -> None:
        """Re-evaluate the limits (after a profile change) and report what changed."""
        targets = list(evses if evses is not None else self.evses.values())
        previous = [self.update_limit(evse) for evse in targets]  # all at the same instant
        for evse, before in zip(targets, previous, strict=True):
            if evse.tx is not None and abs(self.offered_w(evse) - before) > 1e-6:
                await self._limit_changed(evse, before)

    def profiles_tx_started(self, evse: EvseState) -> None:
        """A transaction started on ``evse``: install a pending TxProfile, set the limit."""
        pending = self._pending_tx_profiles.pop(evse.id, None)
        tx = evse.tx
        if pending is not None and tx is not None and pending[0] is evse.ev:
            profile = pending[1]
            if self.version != "1.6":
                profile = replace(profile, transaction_id=str(tx.id))
            try:
                self.profiles.install(evse.id, profile, self.version, transaction_id=str(tx.id))
            except ProfileError as exc:
                self.error(f"TxProfile of the remote start not installed: {exc}")
        self.update_limit(evse)

    def profiles_tx_ended(self, evse: EvseState) -> None:
        """The transaction on ``evse`` ended: its TxProfiles go, the limit is re-evaluated."""
        self.profiles.clear_transaction(evse.id)
        self._cancel_limit_timer(evse)
        self.update_limit(evse)
