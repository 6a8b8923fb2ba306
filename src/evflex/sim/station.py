"""Simulated charging station: the behaviour every OCPP version shares.

A :class:`SimStation` keeps the EVSE state, connects to the CSMS over a
websocket (reconnecting when the link drops, :mod:`evflex.sim.connection`),
queues transaction-related messages while offline, authorises tokens and keeps
reservations (:mod:`evflex.sim.auth`), executes charging profiles
(:mod:`evflex.sim.charging`) and integrates the energy drawn by the plugged-in
vehicles on the simulation clock (:mod:`evflex.sim.metering`). Each OCPP
version is a codec subclass that maps this behaviour to and from its messages
(:mod:`evflex.sim.v16`, :mod:`evflex.sim.v201`, :mod:`evflex.sim.v21`); it
registers itself by its ``version``, and ``SimStation(spec, url, clock)``
returns the codec of ``spec.ocpp_version``.

Heartbeats, boot retries and reconnect delays run in real time (they keep the
link alive); everything else (meter values, sessions, reservations) runs on
the simulation clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, ClassVar

from evflex.clock import AcceleratedClock, Clock, DeviceClock, isoformat, parse_datetime
from evflex.sim.auth import Authorization
from evflex.sim.charging import (
    LIMIT_HORIZON_S,
    ProfileRejected,
    SmartCharging,
    camel_kwargs,
    profile_from_kwargs,
)
from evflex.sim.connection import Connection, _TxItem
from evflex.sim.ev import EvBattery, EvSpec
from evflex.sim.grid import BuildingMeter, Grid
from evflex.sim.link import LinkDown, LinkMixin, MessageHook, wire_log
from evflex.sim.metering import Metering, Sample
from evflex.sim.model import EvseState, Reservation, SimStats, StationSpec
from evflex.sim.security import StationSecurity
from evflex.sim.sessions import EndCause, EvseBusy, Sessions
from evflex.smartcharging.composite import InstalledProfiles
from evflex.smartcharging.profiles import ChargingProfile

__all__ = [
    "LIMIT_HORIZON_S",
    "TIME_SOURCES",
    "EndCause",
    "EvseBusy",
    "LinkDown",
    "LinkMixin",
    "ProfileRejected",
    "Sample",
    "SimStation",
    "camel_kwargs",
    "profile_from_kwargs",
    "wire_log",
]

log = logging.getLogger(__name__)

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


class SimStation(Connection, Sessions, Authorization, SmartCharging, Metering, StationSecurity):
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

    #: The codec of each OCPP version: the subclass that maps this behaviour to its messages.
    codecs: ClassVar[dict[str, type[SimStation]]] = {}
    #: The version a spec without a known ``ocpp_version`` speaks.
    DEFAULT_VERSION: ClassVar[str] = "2.0.1"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.version:
            SimStation.codecs[cls.version] = cls

    def __new__(cls, spec: StationSpec, *args: Any, **kwargs: Any) -> SimStation:
        if cls is SimStation:
            codecs = SimStation.codecs
            found = codecs.get(spec.ocpp_version) or codecs.get(SimStation.DEFAULT_VERSION)
            if found is None:
                raise LookupError(f"no codec registered for OCPP {spec.ocpp_version}")
            cls = found
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
        self._reconnect_now = False
        self.connect_failures: deque[BaseException] = deque(maxlen=50)
        self._init_security()
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

    def set_operative(self, evse: EvseState | None, operative: bool) -> bool:
        """Make ``evse`` (None: the whole station) operative or not; True if a
        transaction runs there (the change then waits for its end)."""
        targets = list(self.evses.values()) if evse is None else [evse]
        if evse is None:
            self.station_operative = operative
        else:
            evse.operative = operative
        return any(e.tx is not None for e in targets)

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

    async def _periodic_sample(self, evse: EvseState, ts: datetime) -> None:
        """Send the periodic sample of ``evse`` taken at ``ts`` (station clock)."""
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
        same instant and a running transaction keeps its age (relative profiles);
        the sample schedules start again on the new time."""
        step = self.clock.set(when)
        if step:
            shift = timedelta(seconds=step)
            for evse in self.evses.values():
                if evse.last_update is not None:
                    evse.last_update += shift
                if evse.tx is not None:
                    evse.tx.started_at += shift
            self.clock_steps.append((source, step))
            self.restart_meter_loops()
            if self._aligned_task is not None:
                self._restart_aligned_loop()
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

    async def refresh_each(self, evses: list[EvseState], *, force: bool = False) -> None:
        for evse in evses:
            await self.refresh_status(evse, force=force)

    async def refresh_all(self, *, force: bool = False) -> None:
        await self.refresh_station_status(force=force)
        await self.refresh_each(list(self.evses.values()), force=force)

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
