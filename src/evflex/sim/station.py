"""Simulated charging station: the parts shared by OCPP 1.6 and 2.0.1.

A :class:`SimStation` keeps the EVSE state, connects to the CSMS over a
websocket (reconnecting when the link drops), queues transaction-related
messages while offline and integrates the energy drawn by the plugged-in
vehicles on the simulation clock. ``SimStation(spec, url, clock)`` returns the
OCPP 1.6 or 2.0.1 implementation depending on ``spec.ocpp_version``.

Heartbeats, boot retries and reconnect delays run in real time (they keep the
link alive); everything else (meter values, sessions, reservations) runs on
the simulation clock.

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
import base64
import contextlib
import itertools
import json
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError, OCPPError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from evflex.clock import AcceleratedClock, Clock, DeviceClock, isoformat, parse_datetime
from evflex.csms.rpc import fix_phase_keys
from evflex.sim.ev import EvBattery, EvSpec
from evflex.sim.grid import BuildingMeter, Grid
from evflex.sim.model import (
    CURRENT,
    CURRENT_OFFERED,
    ENERGY,
    FREQUENCY,
    POWER,
    POWER_OFFERED,
    SOC,
    VOLTAGE,
    EvseState,
    Reservation,
    SimStats,
    StationSpec,
)
from evflex.smartcharging.composite import CompositeSchedule, InstalledProfiles
from evflex.smartcharging.profiles import (
    ChargingProfile,
    ProfileError,
    Purpose,
    RateUnit,
    from_wire,
    validate,
)

log = logging.getLogger(__name__)
#: Logger handed to the ``ocpp`` library (one line per frame at INFO level).
wire_log = logging.getLogger("evflex.sim.wire")

#: Wait before retrying a BootNotification answered with interval 0.
DEFAULT_BOOT_RETRY_S = 10.0
#: Upper bound of the reconnect back-off in real seconds.
MAX_RECONNECT_DELAY_S = 30.0
#: Default capacity of the transaction message queue of one station.
DEFAULT_MAX_QUEUE = 10_000

#: A station sets its clock to the CSMS's time when they differ by this much (s).
CLOCK_SYNC_MIN_STEP_S = 1.0
#: Where a simulated station takes its time from. ``csms``: BootNotification and
#: Heartbeat ``currentTime`` and (2.x) SetVariables ClockCtrlr.DateTime, like most
#: chargers; ``rtc``: its own real-time clock, set only by ClockCtrlr.DateTime;
#: ``timeline``: the simulation clock's timeline, which nothing sets (an
#: accelerated simulation is a timeline of its own, not the CSMS's).
TIME_SOURCES = ("csms", "rtc", "timeline")

#: How far ahead the station looks for the next change of its charging limit (clock-seconds).
LIMIT_HORIZON_S = 86_400

MessageHook = Callable[[str, str, Any], None]


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


class LinkDown(Exception):
    """The websocket closed before the answer to a message arrived."""


class EvseBusy(RuntimeError):
    """A vehicle cannot be plugged in: the EVSE is occupied, reserved or unavailable."""


@dataclass
class Sample:
    """One sampled meter value, independent of the OCPP version."""

    measurand: str
    value: float
    unit: str | None
    phase: str | None = None
    location: str = "Outlet"


@dataclass
class _TxItem:
    payload: Any
    future: asyncio.Future[Any]
    on_result: Callable[[Any], None] | None = None
    attempts: int = 0


@dataclass
class _Link:
    """Bookkeeping shared by both protocol-specific link classes."""

    closed: asyncio.Future[None]
    followups: list[Callable[[], Coroutine[Any, Any, Any]]] = field(default_factory=list)


class LinkMixin:
    """Mixed into the ``ocpp`` ChargePoint classes: one instance per websocket connection.

    Handlers for CSMS requests run inside the receive loop and must not wait
    for answers to their own requests; what has to happen after the response
    (StatusNotification, StartTransaction, ...) is registered with
    :meth:`later` and started once the response has been sent.
    """

    station: SimStation
    _link: _Link
    _connection: ClientConnection

    def setup_link(self, station: SimStation) -> None:
        self.station = station
        self._link = _Link(closed=asyncio.get_running_loop().create_future())

    @property
    def closed_future(self) -> asyncio.Future[None]:
        return self._link.closed

    @property
    def is_closed(self) -> bool:
        return self._link.closed.done()

    def mark_closed(self) -> None:
        if not self._link.closed.done():
            self._link.closed.set_result(None)

    def later(self, factory: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``factory()`` after the response to the current request was sent."""
        self._link.followups.append(factory)

    async def route_message(self, raw_msg: str) -> None:
        station = self.station
        station.stats.messages_received += 1
        try:
            msg = json.loads(raw_msg)
        except ValueError:
            msg = None
        if isinstance(msg, list) and len(msg) >= 4 and msg[0] == 2:
            station.received.append(str(msg[2]))
            if station.on_message is not None:
                station.on_message("in", str(msg[2]), msg[3])
            if msg[2] == "SetChargingProfile" and station.spec.profile_behaviour == "ignore":
                return  # never answered: the CSMS runs into its response timeout
        self._link.followups = []
        await super().route_message(raw_msg)  # type: ignore[misc]
        followups, self._link.followups = self._link.followups, []
        for factory in followups:
            station.spawn(factory())

    async def request(self, payload: Any, *, optional: bool = False) -> Any:
        """Send a CALL and return the CALLRESULT payload.

        Raises :class:`LinkDown` when the socket closes first, ``OCPPError`` on
        a CALLERROR and ``TimeoutError`` without an answer (both counted, except
        for an ``optional`` message the CSMS does not implement).
        """
        if self.is_closed:
            raise LinkDown
        station = self.station
        action = type(payload).__name__
        station.stats.messages_sent += 1
        if station.on_message is not None:
            station.on_message("out", action, payload)
        task = asyncio.ensure_future(
            self.call(  # type: ignore[attr-defined]
                payload, suppress=False, skip_schema_validation=not station.validate_messages
            )
        )
        try:
            await asyncio.wait({task, self._link.closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            raise LinkDown
        try:
            return task.result()
        except ConnectionClosed as exc:
            raise LinkDown from exc
        except OCPPError as exc:
            if not (optional and isinstance(exc, (OcppNotImplemented, NotSupportedError))):
                station.error(f"{action}: CALLERROR {type(exc).__name__}: {exc.description}")
            raise
        except TimeoutError:
            station.error(f"{action}: no response within {station.response_timeout_s:g}s")
            raise

    async def close_socket(self) -> None:
        with contextlib.suppress(Exception):
            await self._connection.close()


class SimStation:
    """A simulated charging station (OCPP 1.6 or 2.0.1, chosen by ``spec.ocpp_version``).

    ``url`` is the CSMS base URL; the station connects to ``{url}/{spec.id}``.
    Times given in seconds are clock-seconds unless they concern the link
    (``response_timeout_s``, ``connect_timeout_s``, ``reconnect_delay_s`` and
    the heartbeat interval are real seconds).

    ``on_message(direction, action, payload)`` is called for every request:
    ``"out"`` with the ``ocpp`` call dataclass the station sends, ``"in"`` with
    the JSON payload of a CSMS request. ``ev_factory`` makes the vehicle that is
    plugged in for a remote start; ``remote_dwell_s`` (if given) draws how long
    such a vehicle stays, otherwise it leaves when the CSMS stops the session.
    ``grid`` and ``building`` (see :mod:`evflex.sim.grid`) give the measured
    frequency, voltage and building load; without them these are nominal.
    """

    version: ClassVar[str] = ""
    subprotocol: ClassVar[str] = ""
    link_class: ClassVar[type]

    def __new__(cls, spec: StationSpec, *args: Any, **kwargs: Any) -> SimStation:
        if cls is SimStation:
            if spec.ocpp_version == "1.6":
                from evflex.sim.v16 import Station16

                cls = Station16
            elif spec.ocpp_version == "2.1":
                from evflex.sim.v21 import Station21

                cls = Station21
            else:
                from evflex.sim.v201 import Station201

                cls = Station201
        return super().__new__(cls)

    def __init__(
        self,
        spec: StationSpec,
        url: str,
        clock: Clock | None = None,
        *,
        meter_interval_s: float = 60.0,
        heartbeat_interval_s: int = 300,
        seed: int | str | None = None,
        on_message: MessageHook | None = None,
        ev_factory: Callable[[], EvSpec] | None = None,
        remote_dwell_s: Callable[[], float] | None = None,
        response_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        reconnect_delay_s: float = 1.0,
        validate_messages: bool = True,
        connect_limiter: asyncio.Semaphore | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        grid: Grid | None = None,
        building: BuildingMeter | None = None,
        clock_skew_s: float = 0.0,
        time_source: str | None = None,
    ) -> None:
        self.spec = spec
        #: Frequency and voltage at the grid connection (None: nominal values).
        self.grid = grid
        #: The building's own load behind the same grid connection (None: 0 W).
        self.building = building
        self.base_url = url.rstrip("/")
        self.url = f"{self.base_url}/{spec.id}"
        #: The station's own clock: the simulation clock, ``clock_skew_s`` off at start.
        self.clock: DeviceClock = DeviceClock(
            clock if clock is not None else AcceleratedClock(1.0), clock_skew_s
        )
        base_speed = self.clock.speed
        #: Where the station takes its time from (see TIME_SOURCES); by default the
        #: CSMS's in real time, the simulation's own timeline on an accelerated clock.
        self.time_source = time_source or ("csms" if base_speed == 1.0 else "timeline")
        if self.time_source not in TIME_SOURCES:
            raise ValueError(f"time_source must be one of {', '.join(TIME_SOURCES)}")
        #: (source, step in s) of every time the clock was set.
        self.clock_steps: list[tuple[str, float]] = []
        self.on_message = on_message
        self.ev_factory = ev_factory or EvSpec
        self.remote_dwell_s = remote_dwell_s
        self.response_timeout_s = response_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_delay_s = reconnect_delay_s
        self.validate_messages = validate_messages
        self.connect_limiter = connect_limiter
        self.max_queue = max(1, max_queue)
        self.password = spec.password
        self.rng = random.Random(f"{seed}:{spec.id}" if seed is not None else spec.id)

        self.stats = SimStats()
        #: Actions of the requests received from the CSMS, in order.
        self.received: list[str] = []
        self.boot_count = 0
        self.station_operative = True
        self.evses: dict[int, EvseState] = {
            i: EvseState(id=i, limit_w=spec.evse_limit_w, meter_wh=float(spec.meter_start_wh))
            for i in range(1, spec.evses + 1)
        }
        self.local_list: dict[str, str] = {}
        self.local_list_version = 0
        self.auth_cache: dict[str, str] = {}
        #: The charging profiles installed on this station (EVSE 0: the whole station).
        self.profiles = InstalledProfiles()
        #: Optional messages the CSMS answered with NotImplemented / NotSupported.
        self._unsupported: set[str] = set()
        #: TxProfiles of remote starts, installed once the transaction runs: EVSE → (EV, profile).
        self._pending_tx_profiles: dict[int, tuple[EvBattery, ChargingProfile]] = {}

        self._local_ids = itertools.count(1)
        self._link_obj: Any = None
        self._ready_link: Any = None
        self._needs_boot = True
        self._boot_reason = "PowerUp"
        self._rebooting = False
        self._stopping = False
        self._started = False
        self._reset_pending = False
        self._station_reported: str | None = None
        #: False while reconnecting: statuses wait until the queue has been delivered.
        self._can_report = False
        self._want_online = asyncio.Event()
        self._want_online.set()
        self._booted = asyncio.Event()
        self._synced = asyncio.Event()
        self._txq: deque[_TxItem] = deque()
        self._tx_open = False
        self._tx_wake = asyncio.Event()
        self._tx_empty = asyncio.Event()
        self._tx_empty.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_task: asyncio.Task[Any] | None = None
        self._pump_task: asyncio.Task[Any] | None = None
        self._aligned_task: asyncio.Task[Any] | None = None
        self._heartbeat_task: asyncio.Task[Any] | None = None
        self._init_protocol(
            meter_interval_s=meter_interval_s, heartbeat_interval_s=heartbeat_interval_s
        )

    # ------------------------------------------------------------------ public API

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def online(self) -> bool:
        """Connected and registered (BootNotification accepted)."""
        link = self._ready_link
        return link is not None and not link.is_closed

    @property
    def booted(self) -> bool:
        return self.boot_count > 0

    def evse(self, evse_id: int) -> EvseState:
        try:
            return self.evses[evse_id]
        except KeyError:
            raise ValueError(f"{self.id} has no EVSE {evse_id}") from None

    def status(self, evse_id: int) -> str:
        """The status of an EVSE as reported over OCPP (version-specific names)."""
        return self.evse(evse_id).status

    def attach_grid(self, grid: Grid | None = None, building: BuildingMeter | None = None) -> None:
        """Measure frequency / voltage on ``grid`` and the building load on ``building``.

        Either may be None (nominal values, no building load). Modes that
        follow live measurements pick the new sources up within a second.
        """
        self.grid = grid
        self.building = building

    def grid_frequency_hz(self) -> float:
        """The grid frequency measured now (the spec's nominal frequency without a grid)."""
        if self.grid is None:
            return float(self.spec.frequency_hz)
        return self.grid.frequency_hz(self.now())

    def grid_voltage_v(self) -> float:
        """The supply voltage measured now (line to neutral; nominal without a grid)."""
        if self.grid is None:
            return float(self.spec.voltage)
        return self.grid.voltage_v(self.now())

    def building_load_w(self) -> float:
        """The building's load at the grid connection without the EVSEs (0 without a meter)."""
        if self.building is None:
            return 0.0
        return self.building.load_w(self.now())

    def can_plug_in(self, evse_id: int) -> bool:
        """True if a vehicle could be plugged in at this EVSE now."""
        evse = self.evse(evse_id)
        return (
            evse.ev is None
            and evse.tx is None
            and evse.operative
            and self.station_operative
            and not self._rebooting
        )

    def launch(self) -> None:
        """Start connecting in the background (see :meth:`start`)."""
        if self._started:
            return
        self._started = True
        for evse in self.evses.values():
            evse.last_update = self.clock.now()
            evse.status = self._derive_status(evse)
        self._conn_task = asyncio.create_task(self._connection_loop(), name=f"{self.id}-conn")
        self._pump_task = asyncio.create_task(self._tx_pump(), name=f"{self.id}-txq")
        self._restart_aligned_loop()

    async def start(self, timeout: float | None = None) -> None:
        """Connect and boot; return once the CSMS accepted the BootNotification."""
        self.launch()
        await asyncio.wait_for(self._booted.wait(), timeout)

    async def wait_booted(self) -> None:
        """Wait until the station has been registered (BootNotification accepted) once."""
        await self._booted.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """Unplug all vehicles (ending their transactions), flush the queue, disconnect."""
        if self._stopping:
            return
        self._stopping = True
        if self._started:
            self._want_online.set()  # an offline station reconnects to deliver its queue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for evse in self.evses.values():
                    if evse.ev is not None or evse.tx is not None:
                        await self.plug_out(evse.id)
                if self._started and self.booted:
                    await self._tx_empty.wait()
        self._want_online.clear()
        tasks = [self._conn_task, self._pump_task, self._aligned_task, self._heartbeat_task]
        tasks += [evse.meter_task for evse in self.evses.values()]
        tasks += [evse.limit_task for evse in self.evses.values()]
        tasks += [evse.reservation.timer for evse in self.evses.values() if evse.reservation]
        tasks += list(self._tasks)
        for task in tasks:
            if task is not None and not task.done():
                task.cancel()
        link = self._link_obj
        if link is not None:
            await link.close_socket()
        pending = [t for t in tasks if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=2.0)

    async def go_offline(self, duration_s: float | None = None) -> None:
        """Drop the connection and stay offline (for ``duration_s`` clock-seconds if given)."""
        self._want_online.clear()
        link = self._link_obj
        if link is not None:
            self._link_down(link)
            await link.close_socket()
        if duration_s is not None:
            self.spawn(self._back_online_after(duration_s))

    async def go_online(self, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Reconnect; with ``wait``, return once the queued messages have been delivered."""
        self._want_online.set()
        if wait:
            await asyncio.wait_for(self._synced.wait(), timeout)

    async def plug_in(self, evse_id: int, ev: EvSpec, id_token: str) -> bool:
        """A driver plugs in ``ev`` and presents ``id_token``.

        Returns True once the transaction started, False when the token was
        rejected (the vehicle then leaves). Raises :class:`EvseBusy` if the EVSE
        cannot take a vehicle now.
        """
        raise NotImplementedError

    async def plug_out(self, evse_id: int) -> None:
        """The vehicle leaves: end its transaction (if any) and free the EVSE."""
        raise NotImplementedError

    @property
    def tx_backlog(self) -> int:
        """Transaction-related messages waiting to be delivered."""
        return len(self._txq)

    async def wait_idle(self, timeout: float | None = 10.0) -> None:
        """Wait until all queued transaction messages have been delivered."""
        await asyncio.wait_for(self._tx_empty.wait(), timeout)

    # ------------------------------------------------------------------ protocol hooks

    def _init_protocol(self, *, meter_interval_s: float, heartbeat_interval_s: int) -> None:
        raise NotImplementedError

    def _derive_status(self, evse: EvseState) -> str:
        raise NotImplementedError

    def _boot_payload(self) -> Any:
        raise NotImplementedError

    def _heartbeat_payload(self) -> Any:
        raise NotImplementedError

    def _status_payload(self, evse: EvseState | None, status: str) -> Any:
        raise NotImplementedError

    def _heartbeat_interval(self) -> int:
        raise NotImplementedError

    def _set_heartbeat_interval(self, interval: int) -> None:
        raise NotImplementedError

    def _meter_interval(self) -> float:
        raise NotImplementedError

    def _aligned_interval(self) -> float:
        raise NotImplementedError

    def _tx_attempts(self) -> int:
        return 3

    def _ping_interval(self) -> float:
        """Seconds between websocket pings (0: none)."""
        return 20.0

    def _tx_retry_interval(self) -> float:
        return 60.0

    def _prepare_tx(self, payload: Any) -> Any | None:
        """Last changes to a queued transaction message before it is sent."""
        return payload

    async def _periodic_sample(self, evse: EvseState) -> None:
        raise NotImplementedError

    async def _aligned_sample(self, evse: EvseState, ts: datetime) -> None:
        """Send the clock-aligned sample of ``evse`` for the interval boundary ``ts``."""
        raise NotImplementedError

    async def _check_charging_state(self, evse: EvseState) -> None:
        raise NotImplementedError

    async def _authorize_online(self, id_token: str, token_type: str) -> str | None:
        """Send Authorize; return the status, or None when there was no answer."""
        raise NotImplementedError

    def _local_auth_settings(self) -> tuple[bool, bool, bool, bool]:
        """(local list enabled, cache enabled, LocalPreAuthorize, LocalAuthorizeOffline)."""
        raise NotImplementedError

    def _offline_unknown_allowed(self) -> bool:
        raise NotImplementedError

    def _station_status(self) -> str | None:
        """Status of the station itself (1.6 connector 0) or None."""
        return None

    async def _end_for_reset(self, evse: EvseState) -> None:
        raise NotImplementedError

    async def _reservation_expired(self, evse: EvseState, reservation: Reservation) -> None:
        await self.refresh_status(evse)

    def _profile_limits(self) -> tuple[int, int, int]:
        """(highest stack level, periods per schedule, profiles installed) the station takes."""
        return (10, 24, 20)

    async def _limit_changed(self, evse: EvseState, previous_w: float) -> None:
        """Tell the CSMS that the power offered on ``evse`` changed (status, meter value)."""

    # ------------------------------------------------------------------ helpers

    def error(self, text: str) -> None:
        self.stats.error(f"{self.id}: {text}")
        log.debug("%s: %s", self.id, text)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, LinkDown):
            log.error("%s: background task failed", self.id, exc_info=exc)
            self.error(f"internal error: {exc!r}")

    def now(self) -> datetime:
        return self.clock.now()

    def set_clock(self, when: datetime, source: str) -> float:
        """Set the station's clock to ``when`` (the CSMS's time); returns the step (s).

        What the station measures keeps its pace: the meters integrate from the
        same instant and a running transaction keeps its age (relative profiles)."""
        step = self.clock.set(when)
        if step:
            shift = timedelta(seconds=step)
            for evse in self.evses.values():
                if evse.last_update is not None:
                    evse.last_update += shift
                if evse.tx is not None:
                    evse.tx.started_at += shift
            self.clock_steps.append((source, step))
        return step

    def csms_time(self, current_time: str | None, source: str) -> None:
        """The CSMS's ``currentTime`` (BootNotification, Heartbeat): synchronise to it."""
        if self.time_source != "csms" or not current_time:
            return
        try:
            when = parse_datetime(current_time)
        except ValueError:
            return
        if abs((when - self.clock.now()).total_seconds()) >= CLOCK_SYNC_MIN_STEP_S:
            self.set_clock(when, source)

    def now_text(self) -> str:
        return isoformat(self.clock.now())

    def new_local_id(self) -> int:
        return next(self._local_ids)

    def find_tx(self, transaction_id: Any) -> EvseState | None:
        for evse in self.evses.values():
            if evse.tx is not None and evse.tx.id == transaction_id:
                return evse
        return None

    def _used_phases(self, evse: EvseState) -> int:
        if evse.ev is None:
            return self.spec.phases
        return max(1, min(evse.ev.spec.phases, self.spec.phases))

    def offered_w(self, evse: EvseState) -> float:
        """Power the EVSE offers: its limit, capped by the phases the vehicle uses."""
        hardware = self.spec.max_current_a * self._used_phases(evse) * self.spec.voltage
        return max(0.0, min(evse.limit_w, hardware))

    def advance(self, evse: EvseState, now: datetime | None = None) -> None:
        """Integrate the energy drawn by the plugged-in vehicle up to ``now``."""
        now = now or self.clock.now()
        last = evse.last_update or now
        seconds = max(0.0, (now - last).total_seconds())
        evse.last_update = max(now, last)
        if evse.tx is None or evse.ev is None or not evse.tx.authorized:
            evse.power_w = 0.0
            return
        offered = self.offered_w(evse)
        if seconds > 0:
            energy = evse.ev.charge(seconds, offered)
            if energy > 0:
                evse.meter_wh += energy
                evse.session_energy_wh += energy
                self.stats.energy_wh += energy
                evse.tx.charging_s += seconds
        evse.power_w = evse.ev.accepted_power_w(offered)

    def samples(self, evse: EvseState, measurands: list[str]) -> list[Sample]:
        """Sample the meter of ``evse`` for the given measurands."""
        out: list[Sample] = []
        volts = self.spec.voltage
        phases = self._used_phases(evse)
        for measurand in measurands:
            if measurand == ENERGY:
                out.append(Sample(ENERGY, round(evse.meter_wh), "Wh"))
            elif measurand == POWER:
                out.append(Sample(POWER, round(evse.power_w, 1), "W"))
            elif measurand == CURRENT:
                amps = round(evse.power_w / (phases * volts), 2) if volts else 0.0
                for n in range(1, phases + 1):
                    out.append(Sample(CURRENT, amps, "A", f"L{n}"))
            elif measurand == VOLTAGE:
                measured = self.grid_voltage_v()
                for n in range(1, self.spec.phases + 1):
                    out.append(Sample(VOLTAGE, round(measured, 1), "V", f"L{n}-N"))
            elif measurand == SOC:
                if evse.ev is not None:
                    out.append(Sample(SOC, round(evse.ev.soc * 100.0, 1), "Percent", location="EV"))
            elif measurand == FREQUENCY:
                out.append(Sample(FREQUENCY, round(self.grid_frequency_hz(), 3), "Hz"))
            elif measurand == POWER_OFFERED:
                out.append(Sample(POWER_OFFERED, round(self.offered_w(evse), 1), "W"))
            elif measurand == CURRENT_OFFERED:
                amps = self.offered_w(evse) / (phases * volts) if volts else 0.0
                out.append(Sample(CURRENT_OFFERED, round(amps, 2), "A"))
        return out

    # ------------------------------------------------------------------ statuses

    async def refresh_status(self, evse: EvseState, *, force: bool = False) -> None:
        """Recompute the status of ``evse`` and report it if it changed."""
        status = self._derive_status(evse)
        evse.status = status
        if not self._can_report or not self.online:
            return
        if status == evse.reported_status and not force:
            return
        evse.reported_status = status
        result = await self.send(self._status_payload(evse, status))
        if result is None and evse.reported_status == status:
            evse.reported_status = None  # unknown: reported again after reconnecting

    async def refresh_station_status(self, *, force: bool = False) -> None:
        status = self._station_status()
        if status is None or not self._can_report or not self.online:
            return
        if status == self._station_reported and not force:
            return
        self._station_reported = status
        result = await self.send(self._status_payload(None, status))
        if result is None and self._station_reported == status:
            self._station_reported = None

    async def refresh_all(self, *, force: bool = False) -> None:
        await self.refresh_station_status(force=force)
        for evse in self.evses.values():
            await self.refresh_status(evse, force=force)

    # ------------------------------------------------------------------ sending

    async def send_optional(self, payload: Any) -> Any | None:
        """Like :meth:`send`, for a message the CSMS need not implement.

        A CSMS answering NotImplemented / NotSupported is not counted as an
        error, and the message is not sent to it again (until the next boot).
        """
        action = type(payload).__name__
        link = self._ready_link
        if link is None or link.is_closed or action in self._unsupported:
            return None
        try:
            return await link.request(payload, optional=True)
        except (OcppNotImplemented, NotSupportedError):
            self._unsupported.add(action)
            return None
        except (LinkDown, OCPPError, TimeoutError):
            return None

    async def send(self, payload: Any) -> Any | None:
        """Send a message that is not transaction-related; None if offline or failed."""
        link = self._ready_link
        if link is None or link.is_closed:
            return None
        try:
            return await link.request(payload)
        except (LinkDown, OCPPError, TimeoutError):
            return None

    def enqueue_tx(
        self, payload: Any, on_result: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        """Queue a transaction-related message (delivered in order, also after offline periods)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(self._txq) >= self.max_queue:
            self._drop_oldest_sample()
        self._txq.append(_TxItem(payload, future, on_result))
        self._tx_empty.clear()
        self._tx_wake.set()
        return future

    async def send_tx(
        self, payload: Any, on_result: Callable[[Any], None] | None = None, *, wait: bool = True
    ) -> Any | None:
        """Queue a transaction message; when online and ``wait``, wait for its answer."""
        future = self.enqueue_tx(payload, on_result)
        link = self._ready_link
        if not wait or link is None or link.is_closed:
            return None
        await asyncio.wait({future, link.closed_future}, return_when=asyncio.FIRST_COMPLETED)
        return future.result() if future.done() else None

    def _is_sample(self, payload: Any) -> bool:
        """True for periodic/clock meter values (dropped first when the queue is full)."""
        return False

    def _drop_oldest_sample(self) -> None:
        # Keep the head (it may be in flight); transaction starts and ends are never dropped.
        for index in range(1, len(self._txq)):
            item = self._txq[index]
            if self._is_sample(item.payload):
                del self._txq[index]
                if not item.future.done():
                    item.future.set_result(None)
                self.error(
                    f"queue full ({self.max_queue}): dropped a {type(item.payload).__name__}"
                )
                return

    async def _tx_pump(self) -> None:
        while True:
            link = self._ready_link
            if not self._txq or link is None or link.is_closed or not self._tx_open:
                if not self._txq:
                    self._tx_empty.set()
                self._tx_wake.clear()
                await self._tx_wake.wait()
                continue
            item = self._txq[0]
            payload = self._prepare_tx(item.payload)
            if payload is None:
                self._txq.popleft()
                if not item.future.done():
                    item.future.set_result(None)
                continue
            try:
                result = await link.request(payload)
            except LinkDown:
                continue
            except (OCPPError, TimeoutError):
                item.attempts += 1
                if item.attempts >= max(1, self._tx_attempts()):
                    self._txq.popleft()
                    self.error(f"{type(payload).__name__} dropped after {item.attempts} attempts")
                    if not item.future.done():
                        item.future.set_result(None)
                else:
                    await self.clock.sleep(self._tx_retry_interval() * item.attempts)
                continue
            if self._txq and self._txq[0] is item:
                self._txq.popleft()
            if item.on_result is not None:
                try:
                    item.on_result(result)
                except Exception as exc:  # a bug in a result handler must not stop the queue
                    log.exception("%s: result handler failed", self.id)
                    self.error(f"internal error: {exc!r}")
            if not item.future.done():
                item.future.set_result(result)

    async def _wait_drained(self, link: Any) -> None:
        if link is None:
            return
        waiter = asyncio.ensure_future(self._tx_empty.wait())
        try:
            await asyncio.wait({waiter, link.closed_future}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    # ------------------------------------------------------------------ connection

    def _headers(self) -> dict[str, str] | None:
        if not self.password:
            return None
        token = base64.b64encode(f"{self.id}:{self.password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def _connect(self) -> ClientConnection:
        ws = await connect(
            self.url,
            subprotocols=[self.subprotocol],  # type: ignore[list-item]
            additional_headers=self._headers(),
            open_timeout=self.connect_timeout_s,
            ping_interval=self._ping_interval() or None,
            proxy=None,
            max_size=4 * 1024 * 1024,
        )
        if ws.subprotocol != self.subprotocol:
            await ws.close()
            raise ConnectionError(f"CSMS did not accept subprotocol {self.subprotocol}")
        return ws

    async def _connection_loop(self) -> None:
        failures = 0
        while True:
            await self._want_online.wait()
            try:
                if self.connect_limiter is not None:
                    async with self.connect_limiter:
                        ws = await self._connect()
                else:
                    ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.error(f"connect failed: {exc!r}")
                delay = self.reconnect_delay_s * 2 ** min(failures - 1, 6)
                await asyncio.sleep(min(delay, MAX_RECONNECT_DELAY_S))
                continue
            failures = 0
            link = self.link_class(
                self.id, ws, response_timeout=self.response_timeout_s, logger=wire_log
            )
            link.setup_link(self)
            self._link_obj = link
            reader = asyncio.create_task(self._reader(link), name=f"{self.id}-recv")
            sync = asyncio.create_task(self._on_connected(link), name=f"{self.id}-sync")
            try:
                await reader
            finally:
                self._link_down(link)
                sync.cancel()
                await link.close_socket()
            expected = self._rebooting or self._stopping or not self._want_online.is_set()
            if self._rebooting:
                self._rebooting = False
                continue
            if not expected:
                self.stats.connection_losses += 1
                await asyncio.sleep(self.reconnect_delay_s)

    async def _reader(self, link: Any) -> None:
        try:
            await link.start()
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("%s: receive loop failed", self.id)
            self.error(f"internal error: {exc!r}")
        finally:
            self._link_down(link)

    def _link_down(self, link: Any) -> None:
        link.mark_closed()
        if self._ready_link is link:
            self._ready_link = None
        if self._link_obj is link:
            self._link_obj = None
        self._tx_open = False
        self._can_report = False
        self._synced.clear()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _on_connected(self, link: Any) -> None:
        try:
            if self._needs_boot:
                await self._boot(link)
                self._needs_boot = False
                self._boot_reason = "PowerUp"
                self._unsupported.clear()
                self.boot_count += 1
                self.stats.boots += 1
                self._ready_link = link
                self._station_reported = None
                for evse in self.evses.values():
                    evse.reported_status = None
                self._can_report = True
                await self.refresh_all(force=True)
                self._start_heartbeat(link, immediate=True)
                self._tx_open = True
                self._tx_wake.set()
                self._booted.set()
            else:
                self._ready_link = link
                self._tx_open = True
                self._tx_wake.set()
                await self._wait_drained(link)
                self._can_report = not link.is_closed
                await self.refresh_all()
                self._start_heartbeat(link, immediate=False)
            if not link.is_closed:
                self._synced.set()
        except LinkDown:
            pass
        except Exception as exc:
            log.exception("%s: connection setup failed", self.id)
            self.error(f"internal error: {exc!r}")
            await link.close_socket()

    async def _boot(self, link: Any) -> None:
        while True:
            try:
                result = await link.request(self._boot_payload())
            except (OCPPError, TimeoutError):
                await asyncio.sleep(DEFAULT_BOOT_RETRY_S)
                continue
            if result.status == "Accepted":
                self.csms_time(result.current_time, "BootNotification")
                if result.interval and result.interval > 0:
                    self._set_heartbeat_interval(int(result.interval))
                return
            await asyncio.sleep(
                result.interval if result.interval and result.interval > 0 else DEFAULT_BOOT_RETRY_S
            )

    async def send_boot_notification(self) -> None:
        """Send a BootNotification on the registered link (triggered by the CSMS)."""
        result = await self.send(self._boot_payload())
        if result is not None and result.status == "Accepted":
            self.csms_time(result.current_time, "BootNotification")
        if result is not None and result.status == "Accepted" and result.interval > 0:
            self._set_heartbeat_interval(int(result.interval))
            self._restart_heartbeat()

    def _start_heartbeat(self, link: Any, *, immediate: bool) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(link, immediate))

    def _restart_heartbeat(self) -> None:
        link = self._ready_link
        if link is not None and not link.is_closed:
            self._start_heartbeat(link, immediate=False)

    async def _heartbeat_loop(self, link: Any, immediate: bool) -> None:
        first = immediate
        while not link.is_closed:
            if not first:
                interval = self._heartbeat_interval()
                if interval <= 0:
                    return
                await asyncio.sleep(interval)
            first = False
            with contextlib.suppress(OCPPError, TimeoutError):
                result = await link.request(self._heartbeat_payload())
                self.csms_time(getattr(result, "current_time", None), "Heartbeat")

    async def send_heartbeat(self) -> None:
        result = await self.send(self._heartbeat_payload())
        if result is not None:
            self.csms_time(getattr(result, "current_time", None), "Heartbeat")

    async def _back_online_after(self, duration_s: float) -> None:
        await self.clock.sleep(duration_s)
        self._want_online.set()

    async def reboot(self) -> None:
        """Restart: drop the connection, reconnect and boot again."""
        self._needs_boot = True
        self._boot_reason = "RemoteReset"
        self._reset_pending = False
        for evse in self.evses.values():
            self.clear_reservation(evse)
            evse.status = self._derive_status(evse)
        link = self._link_obj
        if link is not None:
            self._rebooting = True
            await link.close_socket()

    async def reset_all(self) -> None:
        """End all transactions (reason chosen by the protocol) and reboot."""
        for evse in self.evses.values():
            async with evse.lock:
                await self._end_for_reset(evse)
        await self.reboot()

    def after_tx_ended(self) -> None:
        if self._reset_pending and all(e.tx is None for e in self.evses.values()):
            self._reset_pending = False
            self.spawn(self.reboot())

    # ------------------------------------------------------------------ authorization

    async def authorize(self, id_token: str, token_type: str | None = None) -> bool:
        """Decide whether ``id_token`` may charge (online, local list, cache, offline rules)."""
        token_type = token_type or self.spec.id_token_type
        list_enabled, cache_enabled, pre_authorize, local_offline = self._local_auth_settings()
        known: str | None = None
        if list_enabled and id_token in self.local_list:
            known = self.local_list[id_token]
        elif cache_enabled and id_token in self.auth_cache:
            known = self.auth_cache[id_token]
        if self.online:
            if pre_authorize and known == "Accepted":
                return True
            status = await self._authorize_online(id_token, token_type)
            if status is not None:
                self.remember_token(id_token, status)
                return status == "Accepted"
        if local_offline and known is not None:
            return known == "Accepted"
        return known is None and self._offline_unknown_allowed()

    def remember_token(self, id_token: str, status: str) -> None:
        _, cache_enabled, _, _ = self._local_auth_settings()
        if cache_enabled:
            if status == "Accepted":
                self.auth_cache[id_token] = status
            else:
                self.auth_cache.pop(id_token, None)

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

    # ------------------------------------------------------------------ smart charging

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

    # ------------------------------------------------------------------ reservations

    def find_reservation(self, reservation_id: int) -> EvseState | None:
        for evse in self.evses.values():
            if evse.reservation is not None and evse.reservation.id == reservation_id:
                return evse
        return None

    def reserve(self, evse: EvseState, reservation: Reservation) -> None:
        self.clear_reservation(evse)
        evse.reservation = reservation
        reservation.timer = self.spawn(self._reservation_timer(evse, reservation))

    def clear_reservation(self, evse: EvseState) -> Reservation | None:
        reservation = evse.reservation
        evse.reservation = None
        if reservation is not None and reservation.timer is not None:
            if reservation.timer is not asyncio.current_task():
                reservation.timer.cancel()
        return reservation

    def token_matches_reservation(self, evse: EvseState, id_token: str) -> bool:
        reservation = evse.reservation
        if reservation is None:
            return True
        return id_token in (reservation.id_token, reservation.parent_id_token)

    async def _reservation_timer(self, evse: EvseState, reservation: Reservation) -> None:
        delay = (reservation.expiry - self.clock.now()).total_seconds()
        await self.clock.sleep(max(0.0, delay))
        if evse.reservation is reservation:
            evse.reservation = None
            await self._reservation_expired(evse, reservation)

    # ------------------------------------------------------------------ meter loops

    def start_meter_loop(self, evse: EvseState) -> None:
        self.stop_meter_loop(evse)
        evse.meter_task = asyncio.create_task(self._meter_loop(evse))

    def stop_meter_loop(self, evse: EvseState) -> None:
        task = evse.meter_task
        evse.meter_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def restart_meter_loops(self) -> None:
        for evse in self.evses.values():
            if evse.meter_task is not None:
                self.start_meter_loop(evse)

    async def _meter_loop(self, evse: EvseState) -> None:
        due = self.clock.now()
        while evse.tx is not None:
            interval = self._meter_interval()
            # Without periodic samples, still look at the vehicle once a minute.
            due += timedelta(seconds=interval if interval > 0 else 60.0)
            now = self.clock.now()
            if due < now:
                due = now  # fell behind: do not try to catch up
            await self.clock.sleep((due - now).total_seconds())
            if evse.tx is None:
                return
            self.advance(evse)
            await self._check_charging_state(evse)
            if interval > 0 and evse.tx is not None:
                await self._periodic_sample(evse)

    def _restart_aligned_loop(self) -> None:
        if self._aligned_task is not None:
            self._aligned_task.cancel()
            self._aligned_task = None
        if self._started and not self._stopping:
            self._aligned_task = asyncio.create_task(self._aligned_loop())

    async def _aligned_loop(self) -> None:
        while True:
            interval = self._aligned_interval()
            if interval <= 0:
                return
            now = self.clock.now()
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
            elapsed = (now - midnight).total_seconds()
            next_at = midnight + timedelta(seconds=(math.floor(elapsed / interval) + 1) * interval)
            await self.clock.sleep((next_at - now).total_seconds())
            for evse in self.evses.values():
                self.advance(evse)
                await self._aligned_sample(evse, next_at)
