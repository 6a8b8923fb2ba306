"""The load manager: keeps every site inside its limits, event by event.

On every event that can change what a site may do (a car plugs in or
leaves, a station connects or drops, an EV states its needs, a station
reports a local limit, an operator changes a limit or a preference) the
site is marked dirty; its loop re-reads the site from the database, plans
(:mod:`evflex.smartcharging.planner`) and pushes the targets as charging
profiles through the :class:`ProfileDispatcher`:

* a TxProfile for an EVSE with a session (the priority stack level if the
  session is in priority charging), a TxDefaultProfile for an idle EVSE;
* **decreases first**: rises are sent only after every decrease has been
  accepted, so the site is inside its limits at every moment, also while
  profiles travel. A decrease that is not accepted pins that EVSE at its
  old limit and the site is planned again around it;
* rises go through the setpoint shaper (maximum ramp rate, random delay).

A site whose policy is ``optimal`` is also planned ahead: each rebalance
solves the site scheduler from now (:mod:`evflex.smartcharging.mpc`) and the
first slot of its plan caps each session (model-predictive control). The
site is rebalanced at least at every slot boundary.

Stations that refuse charging profiles (a CALLERROR NotImplemented /
NotSupported, or a Rejected that is not TxNotFound) are *not steerable*:
logged once per change (``NotSteerable`` / ``Steerable``), shown on the
station, and their EVSEs count at full power while they have a session.
The site is kept safe by **admission** (:meth:`LoadManager.admission`): a new
session at such a station is admitted only if the site can carry that EVSE
at its full power on top of what it cannot steer already plus the minimum
current of every steerable session; otherwise the CSMS refuses the driver's
authorization (``AdmissionRefused``). When the load it cannot steer is over
the site's limits all the same (sessions that were running when the station
stopped taking profiles), ``SiteOverLimit`` is logged once per excursion and,
as a last resort, once it has lasted ``remote_stop_grace_s``, the newest
session on such a station is remote-stopped (one per rebalance, at most one
per ``remote_stop_cooldown_s``; ``RemoteStopForLimit``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from types import SimpleNamespace
from typing import Any, TypedDict

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.domain.capabilities import (
    NO_EV_CAPABILITIES,
    NO_STATION_CAPABILITIES,
    EvCapabilities,
    StationCapabilities,
)
from evflex.domain.model import StationEvent
from evflex.events import EventBus
from evflex.scheduling import Objective
from evflex.smartcharging.allocation import Node, Policy, SetpointShaper, ShaperConfig
from evflex.smartcharging.dispatcher import ProfileDispatcher, Wanted
from evflex.smartcharging.mpc import Forecast, MpcResult, MpcSettings, mpc_step
from evflex.smartcharging.planner import (
    SITE_NODE,
    EvseModel,
    Plan,
    SessionModel,
    SiteModel,
    admission_candidate,
    admission_problems,
    circuit_node,
    evse_key,
    plan,
    station_node,
    unsteerable_problems,
)
from evflex.smartcharging.profiles import (
    ChargingProfile,
    Kind,
    OperationMode,
    Period,
    Purpose,
    RateUnit,
    Schedule,
    convert,
)
from evflex.smartcharging.verdict import Verdict, session_verdict
from evflex.store import repo
from evflex.store.tables import Connector, Site, Station, Transaction
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

# Profile ids the load manager owns on every station: one TxProfile and one
# TxDefaultProfile per EVSE. Operators should use other ids.
TX_PROFILE_BASE = 1_900_000_000
#: How long a bare Rejected of a TxProfile waits for its transaction's end before it counts (s).
TX_REJECT_GRACE_S = 2.0
DEFAULT_PROFILE_BASE = 1_900_100_000


def tx_profile_id(evse_id: int) -> int:
    return TX_PROFILE_BASE + evse_id


def default_profile_id(evse_id: int) -> int:
    return DEFAULT_PROFILE_BASE + evse_id


def is_lm_profile(profile_id: int) -> bool:
    return TX_PROFILE_BASE <= profile_id < DEFAULT_PROFILE_BASE + 100_000


@dataclass(slots=True)
class _EvseMemory:
    wanted_a: float | None = None
    commanded_a: float | None = None
    steerable: bool = True
    wanted_profile: int | None = None


@dataclass(slots=True)
class SiteStatus:
    plan: Plan | None = None
    compute_s: float = 0.0
    load_s: float = 0.0
    planned_at: float = 0.0  # time.perf_counter() when the last plan was made
    rebalances: int = 0
    sent: int = 0
    last_error: str | None = None
    mpc: MpcResult | None = None  # the site's plan ahead (policy ``optimal``)
    model: SiteModel | None = None  # what ``plan`` was made from (the circuit view explains it)
    caps: dict[str, float] | None = None  # the scheduler's caps ``plan`` was made with


class LoadManager:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: GroupCommitWriter,
        bus: EventBus,
        clock: Clock,
        dispatcher: ProfileDispatcher,
        is_connected: Callable[[str], bool],
        *,
        initial_full_power_s: float = 30.0,
        ramp_kw_per_s: float | None = None,
        random_delay_s: float = 0.0,
        stack_level: int = 1,
        priority_stack_level: int = 5,
        rebalance_interval_s: float = 30.0,
        settle_timeout_s: float = 10.0,
        debounce_s: float = 0.02,
        stop_session: Callable[[str, str], Awaitable[object]] | None = None,
        remote_stop_cooldown_s: float = 60.0,
        remote_stop_grace_s: float = 30.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.bus = bus
        self.clock = clock
        self.dispatcher = dispatcher
        self.is_connected = is_connected
        self.initial_full_power_s = initial_full_power_s
        self.ramp_kw_per_s = ramp_kw_per_s
        self.random_delay_s = random_delay_s
        self.stack_level = stack_level
        self.priority_stack_level = priority_stack_level
        self.rebalance_interval_s = rebalance_interval_s
        self.settle_timeout_s = settle_timeout_s
        self.debounce_s = debounce_s
        #: Remote-stops a session (station id, transaction id): the last resort
        #: when the load the site cannot steer stays over its limits.
        self.stop_session = stop_session
        self.remote_stop_cooldown_s = remote_stop_cooldown_s
        self.remote_stop_grace_s = remote_stop_grace_s
        self.status: dict[str, SiteStatus] = {}
        self._station_site: dict[str, str] = {}
        self._memory: dict[str, _EvseMemory] = {}
        self._phases: dict[str, tuple[int, ...]] = {}
        self._rows: dict[str, _Rows] = {}  # site -> rows of its last full load
        self._stale: set[str] = set()  # sites whose rows must be read again
        # limit schedules a station reported, and when (monotonic s)
        self._external: dict[tuple[str, int], tuple[list[Schedule], float]] = {}
        self._dirty: dict[str, asyncio.Event] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._shapers: dict[str, SetpointShaper] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._mpc_cfg: dict[str, MpcSettings] = {}
        self._peak: dict[str, tuple[str, float]] = {}  # site -> (month, planned peak W)
        # Transactions a station said it does not know (TxNotFound): they hold no
        # capacity and get no TxProfile until the station reports them again.
        self._ghosts: set[tuple[str, str]] = set()
        # Stations that refuse our profiles -> why (the last error).
        self._refusing: dict[str, str] = {}
        self._unplannable: dict[str, str] = {}  # site -> why it is not planned (bad values)
        # sites whose unsteerable load is over a limit -> since when (CSMS clock)
        self._over: dict[str, datetime] = {}
        self._last_stop: dict[str, datetime] = {}  # site -> last remote stop for the limit
        self._stops: set[asyncio.Task[None]] = set()
        dispatcher.on_result(self._on_profile_result)

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.reload()
        ready = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._events(ready), name="lm-events"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="lm-ticker"))
        await ready.wait()

    async def stop(self) -> None:
        for t in [*self._tasks, *self._loops.values(), *self._stops]:
            t.cancel()
        await asyncio.gather(
            *self._tasks, *self._loops.values(), *self._stops, return_exceptions=True
        )
        for h in self._timers.values():
            h.cancel()
        self._tasks.clear()
        self._loops.clear()

    async def reload(self) -> None:
        """Re-read which stations belong to which site (after a topology change)."""
        async with self.sessionmaker() as s:
            sites = await repo.list_sites(s)
            rows = (await s.execute(select(Station.id, Station.site_id))).all()
        site_ids = {x.id for x in sites}
        self._station_site = {sid: site for sid, site in rows if site in site_ids}
        for site_id in site_ids:
            self._ensure_loop(site_id)
            self.mark_dirty(site_id)
        for gone in set(self._loops) - site_ids:
            self._loops.pop(gone).cancel()
            self.status.pop(gone, None)

    def phases_of(self, key: str) -> tuple[int, ...]:
        return self._phases.get(key, (1, 2, 3))

    def profile_id_for(self, key: str, kind: str) -> int:
        evse = int(key.rpartition("/")[2])
        return tx_profile_id(evse) if kind == "session" else default_profile_id(evse)

    def site_of(self, station_id: str) -> str | None:
        return self._station_site.get(station_id)

    def _ensure_loop(self, site_id: str) -> None:
        if site_id in self._loops and not self._loops[site_id].done():
            return
        self._dirty[site_id] = asyncio.Event()
        self._done[site_id] = asyncio.Event()
        self.status.setdefault(site_id, SiteStatus())
        self._loops[site_id] = asyncio.create_task(self._site_loop(site_id), name=f"lm-{site_id}")

    def mark_dirty(self, site_id: str | None, only_site_row: bool = False) -> None:
        """Plan the site again soon; ``only_site_row``: nothing but the site's row changed."""
        if site_id is not None and site_id in self._dirty:
            if not only_site_row:
                self._stale.add(site_id)
            self._done[site_id].clear()
            self._dirty[site_id].set()

    async def rebalance_now(
        self, site_id: str, timeout: float = 30.0, only_site_row: bool = False
    ) -> Plan | None:
        """Plan the site and send the result; returns once the decreases are settled."""
        if site_id not in self._dirty:
            await self.reload()
        if site_id not in self._dirty:
            return None
        self.mark_dirty(site_id, only_site_row)
        await asyncio.wait_for(self._done[site_id].wait(), timeout)
        return self.status[site_id].plan

    # ------------------------------------------------------------- events

    async def _events(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(queue_size=100_000) as q:
            ready.set()
            while True:
                ev = await q.get()
                try:
                    self._on_event(ev.topic, ev.station_id, ev.data)
                except Exception:  # one bad event must not stop load management
                    log.exception("load manager: event %s", ev.topic)

    def _on_event(self, topic: str, station_id: str | None, data: dict[str, Any]) -> None:
        if station_id is None:
            return
        site = self._station_site.get(station_id)
        if topic == "station.connected":
            self.dispatcher.station_connected(station_id)
        elif topic == "transaction.ended":
            evse = data.get("evse_id")
            if evse is not None:
                # The station drops a TxProfile with its transaction.
                self.dispatcher.forget(station_id, tx_profile_id(evse))
                mem = self._memory.get(evse_key(station_id, evse))
                if mem is not None and mem.wanted_profile == tx_profile_id(evse):
                    mem.wanted_profile = None
        elif topic == "transaction.updated":
            if (station_id, str(data.get("transaction_id"))) in self._ghosts:
                self._ghosts.discard((station_id, str(data.get("transaction_id"))))
                self.mark_dirty(site)  # the station knows it after all
                return
            evse = data.get("evse_id")
            phases = data.get("ev_phases")
            known = self._phases.get(evse_key(station_id, evse)) if evse is not None else None
            new_phases = phases is not None and known is not None and len(known) != phases
            if not new_phases and data.get("charging_state") not in (
                "SuspendedEV",
                "EVConnected",
                "Idle",
            ):
                return  # meter values alone do not change the plan; the ticker catches up
        elif topic == "charging_limit":
            key = (station_id, int(data.get("evse_id") or 0))
            if data.get("schedules"):
                self._external[key] = (data["schedules"], time.monotonic())
            else:
                self._external.pop(key, None)
        elif topic not in (
            "station.disconnected",
            "transaction.started",
            "ev.charging_needs",
            "connector.status",
            "transaction.priority",
            "transaction.v2x",
        ):
            return
        self.mark_dirty(site)

    def _on_profile_result(self, station_id: str, profile_id: int, w: Wanted) -> None:
        if not is_lm_profile(profile_id) and w.status == "accepted":
            return
        key = evse_key(station_id, w.evse_id)
        mem = self._memory.setdefault(key, _EvseMemory())
        if w.status == "rejected" and w.code == "TxNotFound" and w.profile.transaction_id:
            self._ghost(station_id, w, mem)
            return
        before = mem.steerable
        if w.status == "accepted":
            mem.commanded_a = _charging_amps(w.profile, len(self._phases.get(key, (1, 2, 3))))
            mem.steerable = True
            if is_lm_profile(profile_id):
                self._set_refusing(station_id, None)
        elif w.status == "rejected" and w.code is None and w.profile.transaction_id:
            # A bare Rejected (1.6 gives no reason) of a TxProfile: the transaction may have
            # ended while the profile was on its way. Judge once the end has had time to
            # arrive: a profile no longer wanted says nothing about the station.
            loop = asyncio.get_running_loop()
            loop.call_later(TX_REJECT_GRACE_S, self._refused, station_id, profile_id, w, mem)
            return
        else:
            self._refused(station_id, profile_id, w, mem)
            return
        if before != mem.steerable:
            self.mark_dirty(self._station_site.get(station_id))

    def _refused(self, station_id: str, profile_id: int, w: Wanted, mem: _EvseMemory) -> None:
        if w.profile.transaction_id and mem.wanted_profile != profile_id:
            return  # its transaction ended: the station dropped it with the transaction
        before = mem.steerable
        mem.steerable = False
        reason = refusal(w)
        if reason is not None and is_lm_profile(profile_id):
            self._set_refusing(station_id, reason)
        if before != mem.steerable:
            self.mark_dirty(self._station_site.get(station_id))

    # ------------------------------------------------------------- steerability

    def steerability(self, station_id: str) -> tuple[bool, str | None]:
        """(steerable, why not): False once the station refuses our charging profiles."""
        reason = self._refusing.get(station_id)
        return reason is None, reason

    def _set_refusing(self, station_id: str, reason: str | None) -> None:
        was = station_id in self._refusing
        if reason is None:
            if not was:
                return
            del self._refusing[station_id]
            type_, detail = "Steerable", {"reason": "the station accepts charging profiles again"}
            log.info("station %s: steerable again", station_id)
        else:
            self._refusing[station_id] = reason
            if was:
                return
            type_, detail = "NotSteerable", {"reason": reason}
            log.warning("station %s: not steerable (%s)", station_id, reason)
        self._site_event(station_id, type_, detail)
        site = self._station_site.get(station_id)
        if site is not None:
            self._stale.add(site)
        self.mark_dirty(site)

    def _site_event(self, station_id: str, type_: str, detail: dict[str, Any]) -> None:
        now = self.clock.now()
        event = StationEvent(station_id, "smart_charging", now, type_, detail)

        async def job(s: AsyncSession) -> None:
            await repo.log_event(s, event)

        if self.writer is not None:
            self.writer.submit_nowait(job)
        if self.bus is not None:
            self.bus.publish("station.smart_charging", station_id, type=type_, **detail)

    async def admission(self, station_id: str, evse_id: int | None = None) -> str | None:
        """Why a new session at ``station_id`` must be refused now (None: admit it).

        Only stations that refuse charging profiles are checked: the site must
        carry the EVSE at its full power on top of what it cannot steer already
        plus the minimum current of every steerable session
        (:func:`~evflex.smartcharging.planner.admission_problems`).
        """
        why = self._refusing.get(station_id)
        site_id = self._station_site.get(station_id)
        if why is None or site_id is None:
            return None
        self._stale.add(site_id)  # the sessions as they are now
        model, _ = await self.load_model(site_id)
        if model is None:
            return None
        key = admission_candidate(model, station_id, evse_id)
        if key is None:
            return None
        problems = admission_problems(model, key)
        if not problems:
            return None
        ev = model.evses[key]
        kw = ev.max_current_a * model.voltage * len(ev.phases) / 1000
        return (
            f"site {site_id} cannot carry {kw:.1f} kW more at EVSE {ev.evse_id}: the station "
            f"does not take charging limits ({why}); {problems[0]}"
        )

    def _guard_unsteerable(self, model: SiteModel, result: Plan, now: datetime) -> None:
        """The load the site cannot steer over its limits: tell, and stop the newest session.

        Only EVSEs with a session count here: the planner reserves room for an
        offline station's EVSEs at full power, but an alarm for a load nobody
        knows to be there (every site's stations are offline at start) is no
        alarm an operator can act on.
        """
        drawing = {k: a for k, a in result.pinned.items() if model.evses[k].session is not None}
        problems = unsteerable_problems(model, drawing)
        if not problems:
            self._over.pop(model.id, None)
            return
        held = [
            ev
            for key, ev in model.evses.items()
            if key in result.pinned
            and ev.refuses_profiles
            and ev.online
            and ev.session is not None
            and ev.session.authorized
        ]
        held.sort(key=lambda ev: ev.session.started_at or now if ev.session else now)
        first = next(iter(drawing))
        witness = held[-1].station_id if held else model.evses[first].station_id
        if model.id not in self._over:
            self._over[model.id] = now
            site = next(n for n in model.nodes if n.id == SITE_NODE)
            detail = {
                "site_id": model.id,
                "unsteerable_kw": round(
                    sum(a * model.voltage * len(model.evses[k].phases) for k, a in drawing.items())
                    / 1000,
                    2,
                ),
                "import_limit_kw": None if site.max_power_w is None else site.max_power_w / 1000,
                "max_current_a": site.max_current_a,
                "pinned": {k: round(a, 1) for k, a in drawing.items() if a > 0},
                "problems": problems[:3],
            }
            log.error("site %s: load it cannot steer is over its limits: %s", model.id, problems)
            self._site_event(witness, "SiteOverLimit", detail)
        last = self._last_stop.get(model.id)
        if (
            not held
            or self.stop_session is None
            or (now - self._over[model.id]).total_seconds() < self.remote_stop_grace_s
            or (last is not None and (now - last).total_seconds() < self.remote_stop_cooldown_s)
        ):
            return
        ev = held[-1]
        assert ev.session is not None
        self._last_stop[model.id] = now
        tx_id = ev.session.transaction_id
        detail = {
            "site_id": model.id,
            "evse_id": ev.evse_id,
            "transaction_id": tx_id,
            "reason": f"the load site {model.id} cannot steer is over its limits: {problems[0]}",
        }
        log.warning("site %s: remote stop of %s/%s for the limit", model.id, ev.key, tx_id)
        self._site_event(ev.station_id, "RemoteStopForLimit", detail)
        stop = self.stop_session

        async def run() -> None:
            try:
                await stop(ev.station_id, tx_id)
            except Exception as exc:  # offline, refused: the next rebalance tries again
                log.warning("station %s: remote stop of %s failed: %s", ev.station_id, tx_id, exc)

        task = asyncio.create_task(run(), name=f"lm-stop-{ev.station_id}")
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    def _ghost(self, station_id: str, w: Wanted, mem: _EvseMemory) -> None:
        """The station does not know the transaction we limit: release what it holds.

        Retrying the TxProfile would fail forever and keep capacity pinned for a
        session that does not exist. The EVSE is planned as idle (TxDefault) and
        the operator is told; an update from the station about that transaction
        brings it back.
        """
        tx_id = str(w.profile.transaction_id)
        self._ghosts.add((station_id, tx_id))
        self.dispatcher.forget(station_id, w.profile.id)
        mem.wanted_profile = None
        mem.steerable = True
        log.warning("station %s: transaction %s not known by the station", station_id, tx_id)
        detail = {"transaction_id": tx_id, "evse_id": w.evse_id, "error": w.error}
        self._site_event(station_id, "TxNotFound", detail)
        site = self._station_site.get(station_id)
        if site is not None:
            self._stale.add(site)
        self.mark_dirty(site)

    async def _ticker(self) -> None:
        while True:
            await self.clock.sleep(self.rebalance_interval_s)
            for site_id in list(self._dirty):
                self.mark_dirty(site_id)

    def _wake_at(self, site_id: str, seconds: float) -> None:
        old = self._timers.pop(site_id, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        real = max(0.0, seconds) / getattr(self.clock, "speed", 1.0)  # clock seconds -> real
        self._timers[site_id] = loop.call_later(real, self.mark_dirty, site_id)

    # ------------------------------------------------------------- the loop

    async def _site_loop(self, site_id: str) -> None:
        dirty = self._dirty[site_id]
        while True:
            await dirty.wait()
            await asyncio.sleep(self.debounce_s)
            dirty.clear()
            try:
                await self._rebalance(site_id)
                self.status[site_id].last_error = self._unplannable.get(site_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("load manager: site %s", site_id)
                self.status[site_id].last_error = f"{type(exc).__name__}: {exc}"
            if not dirty.is_set():
                self._done[site_id].set()

    async def _rebalance(self, site_id: str) -> None:
        st = self.status[site_id]
        t0 = time.perf_counter()
        model, txs = await self.load_model(site_id)
        t1 = time.perf_counter()
        if model is None:
            return
        now = self.clock.now()
        caps = await self._schedule(model, now)
        result = plan(model, now, initial_full_power_s=self.initial_full_power_s, caps=caps)
        due = result.priority_due if st.mpc is None else st.mpc.infeasible
        if due:
            await self._switch_to_priority(model, txs, due)
            caps = await self._schedule(model, now)
            result = plan(model, now, initial_full_power_s=self.initial_full_power_s, caps=caps)
        st.planned_at = time.perf_counter()
        st.compute_s = st.planned_at - t1
        st.load_s = t1 - t0
        st.plan, st.model, st.caps = result, model, caps
        st.rebalances += 1
        self._guard_unsteerable(model, result, now)
        if result.problems:
            log.error("site %s: plan breaks limits, not sent: %s", site_id, result.problems[:3])
            return
        targets = self._shape(site_id, model, result)
        await self._send(model, result, targets)
        wake = [] if st.mpc is None else [st.mpc.problem.slot_s]
        if result.next_boost_end is not None:
            wake.append((result.next_boost_end - now).total_seconds() + 0.01)
        if wake:
            self._wake_at(site_id, min(wake))

    async def plan_ahead(self, site_id: str) -> tuple[MpcResult | None, bool]:
        """The site's plan ahead and whether it is applied (policy ``optimal``).

        The plan of the last rebalance (events, ticks and slot boundaries keep
        it fresh; its ``at`` says when). Other sites get one computed on
        demand, to show what the scheduler would do; nothing is sent for it.
        """
        st = self.status.get(site_id)
        if st is not None and st.mpc is not None:
            return st.mpc, True
        model, _ = await self.load_model(site_id)
        if model is None:
            return None, False
        if model.policy is Policy.OPTIMAL:  # not planned yet: plan it now
            await self.rebalance_now(site_id)
            st = self.status.get(site_id)
            if st is not None and st.mpc is not None:
                return st.mpc, True
        now = self.clock.now()
        cfg = self._mpc_cfg.get(site_id, MpcSettings())
        return await asyncio.to_thread(mpc_step, model, now, cfg), False

    async def _schedule(self, model: SiteModel, now: datetime) -> dict[str, float] | None:
        """Policy ``optimal``: solve the site from now; the caps for this moment."""
        st = self.status[model.id]
        if model.policy is not Policy.OPTIMAL:
            st.mpc = None
            return None
        cfg = self._mpc_cfg.get(model.id, MpcSettings())
        month = now.strftime("%Y-%m")
        seen = self._peak.get(model.id)
        peak = seen[1] if seen is not None and seen[0] == month else 0.0
        cfg = replace(cfg, peak_so_far_w=peak)
        try:
            st.mpc = await asyncio.to_thread(mpc_step, model, now, cfg)
        except Exception:  # never stop steering: share by deadline until it plans again
            log.exception("site %s: scheduler failed; deadline sharing meanwhile", model.id)
            st.mpc = None
            return None
        planned_now = st.mpc.schedule.import_w[0] if st.mpc.schedule.import_w else 0.0
        self._peak[model.id] = (month, max(peak, planned_now))
        return st.mpc.caps

    def _shape(self, site_id: str, model: SiteModel, result: Plan) -> dict[str, float]:
        targets = {k: v for k, v in result.targets.items() if k not in result.pinned}
        if not self.ramp_kw_per_s and not self.random_delay_s:
            return targets
        shaper = self._shapers.get(site_id)
        if shaper is None:
            ramp = None
            if self.ramp_kw_per_s:
                ramp = self.ramp_kw_per_s * 1000 / (model.voltage * 3)  # A/s per phase, 3-phase
            shaper = SetpointShaper(ShaperConfig(ramp, self.random_delay_s))
            self._shapers[site_id] = shaper
        now = time.monotonic()
        shaped = shaper.shape(targets, now)
        for key, amps in shaped.items():
            ev = model.evses[key]
            if 0 < amps < ev.min_current_a:
                shaped[key] = 0.0
        nxt = shaper.next_change_at()
        if nxt is not None:
            self._wake_at(site_id, nxt - now)
        return shaped

    async def _send(self, model: SiteModel, result: Plan, targets: dict[str, float]) -> None:
        st = self.status[model.id]
        downs: list[tuple[EvseModel, float, ChargingProfile]] = []
        ups: list[tuple[EvseModel, float, ChargingProfile]] = []
        setpoints = st.mpc.setpoints if st.mpc is not None else {}
        for key, amps in targets.items():
            ev = model.evses[key]
            mem = self._memory.setdefault(key, _EvseMemory())
            if key in setpoints and st.mpc is not None:
                profile = self._setpoint_profile(ev, amps, setpoints[key], st.mpc, model.voltage)
                # what the EVSE draws now, in A per phase (a discharge draws nothing)
                amps = _charging_amps(profile, len(ev.phases), model.voltage)
            else:
                profile = self._limit_profile(ev, amps)
            cur = self.dispatcher.get(ev.station_id, profile.id)
            same = cur is not None and _same_profile(cur.profile, profile)
            if same and mem.wanted_profile == profile.id:
                continue
            old = mem.wanted_a if mem.wanted_a is not None else ev.max_current_a
            (downs if amps <= old else ups).append((ev, amps, profile))
        for ev, amps, profile in downs:
            self._put(ev, amps, profile)
        st.sent += len(downs) + len(ups)
        if downs and ups:
            waits = [
                self.dispatcher.wait_settled(ev.station_id, self._pid(ev), self.settle_timeout_s)
                for ev, _, _ in downs
            ]
            settled = await asyncio.gather(*waits)
            if any(w is None or w.status != "accepted" for w in settled):
                # Keep the rises back: the site is planned again with those EVSEs pinned.
                st.sent -= len(ups)
                self.mark_dirty(model.id)
                return
        for ev, amps, profile in ups:
            self._put(ev, amps, profile)

    def _pid(self, ev: EvseModel) -> int:
        return tx_profile_id(ev.evse_id) if ev.session else default_profile_id(ev.evse_id)

    def _stack(self, ev: EvseModel) -> int:
        if ev.session is not None and ev.session.priority:
            return self.priority_stack_level
        return self.stack_level

    def _setpoint_profile(
        self, ev: EvseModel, amps: float, watts: list[float], mpc: MpcResult, voltage: float
    ) -> ChargingProfile:
        """The plan ahead of a V2X session as a 2.1 CentralSetpoint TxProfile (W)."""
        assert ev.session is not None
        max_charge = ev.max_current_a * voltage * len(ev.phases)
        vehicle = next((v for v in mpc.problem.vehicles if v.id == ev.key), None)
        max_discharge = vehicle.max_discharge_w if vehicle is not None else 0.0
        periods: list[Period] = []
        for t, w in enumerate(watts[:SETPOINT_PERIODS]):
            if t == 0:
                w = min(w, amps * voltage * len(ev.phases))  # the allocator's cap wins
            w = round(max(-max_discharge, min(max_charge, w)))
            if periods and periods[-1].setpoint == w:
                continue
            periods.append(
                Period(
                    int(t * mpc.problem.slot_s),
                    float(round(max_charge)),
                    operation_mode=OperationMode.CENTRAL_SETPOINT,
                    setpoint=float(w),
                    discharge_limit=-float(round(max_discharge)),
                )
            )
        return ChargingProfile(
            id=tx_profile_id(ev.evse_id),
            stack_level=self._stack(ev),
            purpose=Purpose.TX,
            kind=Kind.ABSOLUTE,
            transaction_id=ev.session.transaction_id,
            schedule=Schedule(RateUnit.W, tuple(periods), start=mpc.at.replace(microsecond=0)),
        )

    def _limit_profile(self, ev: EvseModel, amps: float) -> ChargingProfile:
        schedule = _limit_schedule(float(amps), len(ev.phases))
        if ev.session is not None:
            return ChargingProfile(
                tx_profile_id(ev.evse_id),
                self._stack(ev),
                Purpose.TX,
                Kind.RELATIVE,
                schedule,
                transaction_id=ev.session.transaction_id,
            )
        return ChargingProfile(
            default_profile_id(ev.evse_id),
            self.stack_level,
            Purpose.TX_DEFAULT,
            Kind.RELATIVE,
            schedule,
        )

    def _put(self, ev: EvseModel, amps: float, profile: ChargingProfile) -> None:
        mem = self._memory.setdefault(ev.key, _EvseMemory())
        mem.wanted_a = amps
        mem.wanted_profile = profile.id
        self.dispatcher.put(ev.station_id, ev.evse_id, profile, "load-manager")

    async def _switch_to_priority(
        self, model: SiteModel, txs: dict[str, int], keys: list[str]
    ) -> None:
        # priority False (not None) was turned off by a person: it is not turned back on
        rows = self._rows.get(model.id, ((), (), (), ()))[3]
        off = {evse_key(t.station_id, t.evse_id) for t in rows if t.priority is False}
        keys = [k for k in keys if k not in off]
        now = self.clock.now()
        pks = [txs[k] for k in keys if k in txs]
        for key in keys:
            ev = model.evses[key]
            if ev.session is not None:
                ev.session.priority = True
            log.info("site %s: %s switches to priority charging (departure at risk)", model.id, key)

        async def job(s: AsyncSession) -> None:
            for pk in pks:
                tx = await s.get(Transaction, pk)
                if tx is not None:
                    tx.priority = True
                    tx.updated_at = now

        await self.writer.submit(job)
        for key in keys:
            ev = model.evses[key]
            self.bus.publish(
                "transaction.priority", ev.station_id, evse_id=ev.evse_id, reason="departure"
            )

    # ------------------------------------------------------------- model

    async def verdicts(self, site_id: str) -> dict[str, Verdict]:
        """The verdict on every session's need at a site (evse key -> verdict), from the
        plan applied to it (:mod:`evflex.smartcharging.verdict`)."""
        model, _ = await self.load_model(site_id)
        if model is None:
            return {}
        now = self.clock.now()
        st = self.status.get(site_id)
        current = st.plan if st is not None else None
        if current is None:
            current = plan(model, now, initial_full_power_s=0.0)
        mpc = st.mpc if st is not None else None
        return {
            key: session_verdict(model, key, now, targets=current.targets, mpc=mpc)
            for key, ev in model.evses.items()
            if ev.session is not None
        }

    async def load_model(self, site_id: str) -> tuple[SiteModel | None, dict[str, int]]:
        """The site as the planner sees it now, and evse key -> transaction pk."""
        cached = self._rows.get(site_id)
        if cached is not None and site_id not in self._stale:
            # Only the site row changed (a new limit, a base load): keep the rest.
            async with self.sessionmaker() as s:
                site = await repo.get_site(s, site_id)
            if site is None:
                return None, {}
            circuits, stations, conns, txs = cached
            model = self._checked_model(site, circuits, stations, conns, txs)
            return model, {evse_key(t.station_id, t.evse_id): t.id for t in txs if t.evse_id}
        self._stale.discard(site_id)
        async with self.sessionmaker() as s:
            site = await repo.get_site(s, site_id)
            if site is None:
                return None, {}
            circuit_rows = await repo.list_circuits(s, site_id)
            station_rows = await repo.stations_of_site(s, site_id)
            ids = [x.id for x in station_rows]
            conn_rows: list[Connector] = []
            if ids:
                q = select(Connector).where(Connector.station_id.in_(ids))
                conn_rows = list((await s.execute(q)).scalars())
            tx_rows = await repo.active_transactions(s, ids)
        # Plain copies: the model is rebuilt from them on every limit change, and reading
        # a plain attribute costs a fraction of reading one through the ORM.
        circuits, stations, conns, txs = (
            _snapshot(circuit_rows),
            _snapshot(station_rows),
            _snapshot(conn_rows),
            _snapshot(tx_rows),
        )
        self._rows[site_id] = (circuits, stations, conns, txs)
        model = self._checked_model(site, circuits, stations, conns, txs)
        return model, {evse_key(t.station_id, t.evse_id): t.id for t in txs if t.evse_id}

    def _checked_model(
        self,
        site: Site,
        circuits: Sequence[SimpleNamespace],
        stations: Sequence[SimpleNamespace],
        conns: Sequence[SimpleNamespace],
        txs: Sequence[SimpleNamespace],
    ) -> SiteModel | None:
        """The site's model, or None (the site is skipped, logged once) while a stored
        number of it cannot be planned with: the other sites plan on."""
        bad = not_finite(site, circuits, stations)
        if not bad:
            if self._unplannable.pop(site.id, None) is not None:
                log.info("site %s: its values are numbers again, planned again", site.id)
            return self.build_model(site, circuits, stations, conns, txs)
        problem = "not planned: not a finite number: " + ", ".join(bad)
        if self._unplannable.get(site.id) != problem:
            log.error("site %s: %s", site.id, problem)
        self._unplannable[site.id] = problem
        status = self.status.setdefault(site.id, SiteStatus())
        status.plan, status.last_error = None, problem
        return None

    def build_model(
        self,
        site: Site | SimpleNamespace,
        circuits: Sequence[SimpleNamespace],
        stations: Sequence[SimpleNamespace],
        conns: Sequence[SimpleNamespace],
        txs: Sequence[SimpleNamespace],
    ) -> SiteModel:
        """The planner's view of a site from its rows (any objects with those attributes)."""
        site_id = site.id
        for stn in stations:
            self._station_site[stn.id] = site_id
        base = tuple((site.base_load_a or [0.0, 0.0, 0.0])[:3])
        nodes = [
            Node(
                SITE_NODE,
                None,
                max_current_a=site.max_current_a,
                max_power_w=site.import_limit_w,
                base_current_a=base,
            )
        ]
        known = {c.id for c in circuits}
        for c in circuits:
            parent = circuit_node(c.parent_id) if c.parent_id in known else SITE_NODE
            nodes.append(Node(circuit_node(c.id), parent, c.max_current_a, c.max_power_w))
        model = SiteModel(
            id=site_id,
            nodes=nodes,
            voltage=site.voltage or 230.0,
            policy=Policy(site.policy or "equal"),
        )
        self._mpc_cfg[site_id] = MpcSettings(
            objective=Objective(getattr(site, "objective", None) or "cost"),
            capacity_tariff_per_kw=getattr(site, "capacity_tariff_per_kw", None) or 0.0,
            export_limit_w=getattr(site, "export_limit_w", None),
            forecast=Forecast.from_json(getattr(site, "forecast", None)),
            default_import_price=getattr(site, "import_tariff_per_kwh", None) or 0.0,
            driver_import_tariff=getattr(site, "import_tariff_per_kwh", None),
            driver_export_tariff=getattr(site, "export_tariff_per_kwh", None),
        )
        status: dict[tuple[str, int], str] = {}
        evses_of: dict[str, set[int]] = {}
        for c in conns:
            if c.evse_id >= 1:
                status[(c.station_id, c.evse_id)] = c.status
                evses_of.setdefault(c.station_id, set()).add(c.evse_id)
        by_evse = {(t.station_id, t.evse_id): t for t in txs if t.evse_id}
        for sid, e in by_evse:
            evses_of.setdefault(sid, set()).add(e)
        for stn in stations:
            parent = circuit_node(stn.circuit_id) if stn.circuit_id in known else SITE_NODE
            node = station_node(stn.id)
            nodes.append(Node(node, parent, max_current_a=stn.max_current_a))
            station_phases = (stn.phase_rotation or 1,) if (stn.phases or 3) == 1 else (1, 2, 3)
            evse_ids = evses_of.get(stn.id, ())
            online = self.is_connected(stn.id)
            refuses = stn.id in self._refusing
            for e in sorted(evse_ids):
                key = evse_key(stn.id, e)
                mem = self._memory.get(key) or _EvseMemory()
                tx = by_evse.get((stn.id, e))
                phases = ev_phases(station_phases, stn, tx)
                ev = EvseModel(
                    station_id=stn.id,
                    evse_id=e,
                    phases=phases,
                    max_current_a=stn.evse_max_current_a or 32.0,
                    online=online,
                    steerable=mem.steerable and not refuses,
                    refuses_profiles=refuses,
                    wanted_a=mem.wanted_a,
                    commanded_a=mem.commanded_a,
                    external_limit_a=self._external_limit(stn.id, e, model, len(phases)),
                )
                if tx is not None and (stn.id, str(tx.transaction_id)) not in self._ghosts:
                    ev.session = SessionModel(
                        transaction_id=tx.transaction_id,
                        started_at=tx.csms_started_at or tx.started_at,  # on our clock
                        departure=tx.departure_at,
                        energy_target_wh=tx.energy_target_wh,
                        energy_delivered_wh=repo.net_energy_wh(tx),
                        priority=bool(tx.priority),
                        ev_max_current_a=tx.ev_max_current_a,
                        ev_min_current_a=tx.ev_min_current_a,
                        finished=status.get((stn.id, e)) == "SuspendedEV"
                        or tx.charging_state == "SuspendedEV",
                        authorized=_authorized(tx),
                        **_v2x_session(stn, tx, ev, model.voltage),
                    )
                model.evses[key] = ev
                model.node_of[key] = node
                self._phases[key] = phases
        return model

    def _external_limit(
        self, station_id: str, evse_id: int, model: SiteModel, phases: int
    ) -> float | None:
        """The lowest limit in force now among those the station reported for it or evse 0."""
        now = self.clock.now()
        found: list[float] = []
        for key in ((station_id, evse_id), (station_id, 0)):
            entry = self._external.get(key)
            if entry is None:
                continue
            for sched in entry[0]:
                limit = _schedule_limit_at(sched, now)
                if limit is not None:
                    found.append(convert(limit, sched.rate_unit, RateUnit.A, phases, model.voltage))
        return min(found) if found else None


#: A site's circuits, stations, connectors and active transactions, as plain copies.
_Rows = tuple[
    list[SimpleNamespace], list[SimpleNamespace], list[SimpleNamespace], list[SimpleNamespace]
]


_SITE_NUMBERS = ("import_limit_w", "export_limit_w", "max_current_a", "voltage")
_LIMIT_NUMBERS = ("max_current_a", "max_power_w", "evse_max_current_a")


def not_finite(
    site: Site | SimpleNamespace,
    circuits: Sequence[SimpleNamespace],
    stations: Sequence[SimpleNamespace],
) -> list[str]:
    """The stored numbers of a site, its circuits and stations that are NaN or infinite
    (written before the API bounded them, or by hand), as "where field=value"."""
    found: list[str] = []

    def check(where: str, row: object, names: Iterable[str]) -> None:
        for name in names:
            value = getattr(row, name, None)
            if isinstance(value, float) and not math.isfinite(value):
                found.append(f"{where} {name}={value}")

    check(f"site {site.id}", site, _SITE_NUMBERS)
    for i, amps in enumerate(site.base_load_a or ()):
        if isinstance(amps, float) and not math.isfinite(amps):
            found.append(f"site {site.id} base_load_a[{i}]={amps}")
    for c in circuits:
        check(f"circuit {c.id}", c, _LIMIT_NUMBERS)
    for stn in stations:
        check(f"station {stn.id}", stn, _LIMIT_NUMBERS)
    return found


def _snapshot(rows: Iterable[object]) -> list[SimpleNamespace]:
    """Plain copies of loaded ORM rows: their column values, nothing lazy."""
    return [
        SimpleNamespace(**{k: v for k, v in vars(r).items() if not k.startswith("_")}) for r in rows
    ]


@lru_cache(maxsize=4096)
def _limit_schedule(amps: float, phases: int) -> Schedule:
    """The one-period schedule of a limit profile (shared: schedules are immutable)."""
    return Schedule(RateUnit.A, (Period(0, amps, phases),))


def refusal(w: Wanted) -> str | None:
    """Why a profile's answer says the station does not take profiles (None: it may).

    A CALLERROR NotImplemented / NotSupported, or a Rejected that is not
    TxNotFound (that one is about the transaction, see ``_ghost``). No answer
    or a closed link say nothing about the station's support.
    """
    if w.status == "rejected":
        return None if w.code == "TxNotFound" else w.error or "rejected"
    if w.status == "failed" and w.code in ("NotImplemented", "NotSupported"):
        return w.error
    return None


def _authorized(tx: SimpleNamespace) -> bool:
    """False for a car plugged in and waiting for its authorization (it draws nothing)."""
    if getattr(tx, "id_token", None) is not None:
        return True
    return getattr(tx, "charging_state", None) not in (None, "EVConnected", "Idle")


def ev_phases(
    station_phases: tuple[int, ...], stn: SimpleNamespace, tx: SimpleNamespace | None
) -> tuple[int, ...]:
    """The grid phases an EVSE loads: the station's, narrowed to what its car draws on.

    A single-phase car on a three-phase station loads one phase only (the
    station's L1, which is grid phase ``phase_rotation``); planning it as three
    phases would promise it three times the energy it can take. The car's
    phase count comes from its charging needs or its per-phase meter values;
    until one is known the station's phases are assumed (the safe side for
    the limits).
    """
    n = getattr(tx, "ev_phases", None) if tx is not None else None
    if not n or n >= len(station_phases):
        return station_phases
    first = (getattr(stn, "phase_rotation", None) or 1) - 1
    return tuple(sorted((first + i) % 3 + 1 for i in range(n)))


#: Periods of the plan ahead a CentralSetpoint profile carries (2.x stations take >= 24).
SETPOINT_PERIODS = 24


def _charging_amps(profile: ChargingProfile, phases: int, voltage: float = 230.0) -> float:
    """What a profile lets the EVSE draw now, in A per phase (a discharge draws 0)."""
    first = profile.schedule.periods[0]
    if profile.schedule.rate_unit is RateUnit.A:
        return first.limit
    value = first.setpoint if first.setpoint is not None else first.limit
    return max(0.0, value) / (voltage * phases)


def _same_profile(a: ChargingProfile, b: ChargingProfile) -> bool:
    """True if sending ``b`` over ``a`` would change nothing worth a message."""
    if (a.stack_level, a.transaction_id, a.schedule.rate_unit) != (
        b.stack_level,
        b.transaction_id,
        b.schedule.rate_unit,
    ):
        return False
    if b.schedule.rate_unit is RateUnit.A:
        return abs(a.schedule.periods[0].limit - b.schedule.periods[0].limit) < 0.05
    # A plan ahead (W, Absolute from "now") re-made within its first period with the same
    # values: the profile the station has still says the same thing.
    sa, sb = a.schedule, b.schedule
    if sa.start is None or sb.start is None or sa.periods != sb.periods:
        return sa == sb
    first = sa.periods[1].start_s if len(sa.periods) > 1 else math.inf
    return 0 <= (sb.start - sa.start).total_seconds() < first


class _V2xFields(TypedDict, total=False):
    v2x: bool
    max_discharge_w: float
    v2x_floor_wh: float | None


def _v2x_session(
    stn: SimpleNamespace, tx: SimpleNamespace, ev: EvseModel, voltage: float
) -> _V2xFields:
    """The V2X fields of a session: the driver's consent, an EV that offers bidirectional
    transfer and a station that runs CentralSetpoint (what the plan sends it)."""
    # the store fills both in; a row without them (built by hand) can do nothing more
    station: StationCapabilities = getattr(stn, "capabilities", NO_STATION_CAPABILITIES)
    offer: EvCapabilities = getattr(tx, "ev_capabilities", NO_EV_CAPABILITIES)
    consent = bool(getattr(tx, "v2x_allowed", False))
    if not station.may_discharge(offer, consent, OperationMode.CENTRAL_SETPOINT):
        return {}
    max_w = min(tx.ev_max_discharge_w or 0.0, ev.max_current_a * voltage * len(ev.phases))
    if max_w <= 0:
        return {}
    floor = None
    if tx.v2x_min_energy_wh is not None:
        floor = min(0.0, tx.v2x_min_energy_wh - repo.net_energy_wh(tx))
    return {"v2x": True, "max_discharge_w": max_w, "v2x_floor_wh": floor}


def _schedule_limit_at(sched: Schedule, now: datetime) -> float | None:
    """Limit of a reported schedule at ``now`` (a schedule without start applies from now)."""
    offset = 0.0 if sched.start is None else (now - sched.start).total_seconds()
    if offset < 0:
        return None
    if sched.duration_s is not None and offset >= sched.duration_s:
        return None
    limit = None
    for period in sched.periods:
        if period.start_s <= offset:
            limit = period.limit
    return limit
