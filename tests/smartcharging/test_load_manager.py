"""The load manager's safety invariant, driven by random site histories.

The real :class:`LoadManager` plans and sends; the stations are simulated by
a dispatcher double that applies (or refuses) each profile the moment it is
sent and records what every EVSE may physically draw. Cars arrive at idle
EVSEs and draw that EVSE's TxDefault until their TxProfile comes, stations
go offline and keep their last limit, some stations reject profiles, base
load and the site limit change. Checked: no profile that raises what an
EVSE may draw ever takes a circuit, phase or site over its limit, and after
every rebalance the site is inside all its limits — unless the EVSEs the
CSMS cannot steer (offline, rejecting) break them on their own.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from evflex.clock import Clock
from evflex.smartcharging.dispatcher import Wanted
from evflex.smartcharging.manager import (
    LoadManager,
    SiteStatus,
    default_profile_id,
    tx_profile_id,
)
from evflex.smartcharging.planner import check_commanded, evse_key

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


class FixedClock(Clock):
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)


class Stations:
    """Dispatcher double: what each EVSE may draw, and which station answers."""

    def __init__(self) -> None:
        self.listeners = []
        self.wanted: dict[tuple[str, int], Wanted] = {}
        self.installed: dict[tuple[str, int], float] = {}  # (station, profile id) -> A
        self.online: set[str] = set()
        self.rejecting: set[str] = set()
        self.sessions: set[str] = set()  # evse keys with a car
        self.after_put = None
        self.sent = 0

    # --- what the manager calls
    def on_result(self, listener) -> None:
        self.listeners.append(listener)

    def get(self, station_id: str, profile_id: int):
        return self.wanted.get((station_id, profile_id))

    def put(self, station_id, evse_id, profile, source):
        w = Wanted(evse_id, profile, source)
        self.wanted[(station_id, profile.id)] = w
        self.sent += 1
        before = self.may_draw(station_id, evse_id, 32.0)
        if station_id in self.online and station_id not in self.rejecting:
            self.installed[(station_id, profile.id)] = profile.schedule.periods[0].limit
            w.status = "accepted"
        else:
            w.status = "rejected" if station_id in self.online else "failed"
        for listener in self.listeners:
            listener(station_id, profile.id, w)
        if self.after_put is not None and self.may_draw(station_id, evse_id, 32.0) > before:
            self.after_put()  # a rise must never take the site over a limit
        return w

    async def wait_settled(self, station_id, profile_id, timeout):
        return self.wanted.get((station_id, profile_id))

    def forget(self, station_id, profile_id) -> None:
        self.wanted.pop((station_id, profile_id), None)
        self.installed.pop((station_id, profile_id), None)

    def station_connected(self, station_id) -> None:
        pass

    # --- physics
    def may_draw(self, station_id: str, evse_id: int, hw_max: float) -> float:
        """A station without any profile may draw its hardware maximum."""
        if evse_key(station_id, evse_id) in self.sessions:
            tx = self.installed.get((station_id, tx_profile_id(evse_id)))
            if tx is not None:
                return tx
        default = self.installed.get((station_id, default_profile_id(evse_id)))
        return hw_max if default is None else default


class World:
    """A site with two circuits and a few stations, as database-like rows."""

    def __init__(self, data) -> None:
        self.site = SimpleNamespace(
            id="S",
            import_limit_w=data["site_kw"] * 1000,
            max_current_a=data["fuse_a"],
            base_load_a=[0.0, 0.0, 0.0],
            voltage=230.0,
            policy=data["policy"],
        )
        self.circuits = [
            SimpleNamespace(id="C1", parent_id=None, max_current_a=data["c1_a"], max_power_w=None),
            SimpleNamespace(id="C2", parent_id="C1", max_current_a=data["c2_a"], max_power_w=None),
        ]
        self.stations = []
        for i, (circuit, phases, rot, smax) in enumerate(data["stations"]):
            self.stations.append(
                SimpleNamespace(
                    id=f"CS{i}",
                    circuit_id=circuit,
                    phases=phases,
                    phase_rotation=rot,
                    max_current_a=smax,
                    evse_max_current_a=32.0,
                )
            )
        self.conns = [
            SimpleNamespace(station_id=s.id, evse_id=e, status="Available")
            for s in self.stations
            for e in (1, 2)
        ]
        self.txs: dict[str, SimpleNamespace] = {}
        self.n = 0


def make_manager(world: World, stations: Stations, clock: FixedClock) -> LoadManager:
    lm = LoadManager(
        None,
        None,
        None,
        clock,
        stations,
        lambda sid: sid in stations.online,
        initial_full_power_s=30,
        debounce_s=0,
    )

    async def load_model(site_id):
        model = lm.build_model(
            world.site, world.circuits, world.stations, world.conns, list(world.txs.values())
        )
        return model, {}

    async def no_priority_switch(model, txs, keys):
        for key in keys:
            model.evses[key].session.priority = True

    lm.load_model = load_model
    lm._switch_to_priority = no_priority_switch
    return lm


def physical(world: World, stations: Stations) -> dict[str, float]:
    """What each EVSE may draw. Idle at an online station that refuses profiles it
    draws nothing: a car there must first pass admission (not modelled here)."""
    out = {}
    for c in world.conns:
        key = evse_key(c.station_id, c.evse_id)
        refusing = c.station_id in stations.rejecting and c.station_id in stations.online
        idle = key not in stations.sessions
        out[key] = 0.0 if refusing and idle else stations.may_draw(c.station_id, c.evse_id, 32.0)
    return out


station_row = st.tuples(
    st.sampled_from([None, "C1", "C2"]),
    st.sampled_from([1, 3]),
    st.integers(1, 3),
    st.one_of(st.none(), st.integers(10, 40).map(float)),
)
event = st.one_of(
    st.tuples(st.just("arrive"), st.integers(0, 9), st.integers(0, 1)),
    st.tuples(st.just("leave"), st.integers(0, 9), st.integers(0, 1)),
    st.tuples(st.just("energy"), st.integers(0, 9), st.integers(0, 40_000)),
    st.tuples(st.just("limit"), st.integers(5, 120), st.just(0)),
    st.tuples(st.just("base"), st.integers(0, 60), st.integers(1, 3)),
    st.tuples(st.just("offline"), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("online"), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("reject"), st.integers(0, 9), st.booleans()),
    st.tuples(st.just("needs"), st.integers(0, 9), st.integers(1, 8)),
    st.tuples(st.just("wait"), st.integers(1, 120), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(
    data=st.fixed_dictionaries(
        {
            "site_kw": st.integers(10, 150),
            "fuse_a": st.one_of(st.none(), st.integers(32, 160).map(float)),
            "c1_a": st.one_of(st.none(), st.integers(16, 100).map(float)),
            "c2_a": st.one_of(st.none(), st.integers(16, 64).map(float)),
            "policy": st.sampled_from(["equal", "priority", "deadline", "optimal"]),
            "stations": st.lists(station_row, min_size=1, max_size=5),
        }
    ),
    events=st.lists(event, min_size=1, max_size=25),
)
def test_commanded_limits_never_exceed_any_limit(data, events):
    asyncio.run(_run(data, events))


async def _run(data, events) -> None:
    world = World(data)
    stations = Stations()
    stations.online = {s.id for s in world.stations}
    # Commissioning: every idle EVSE starts with a TxDefault of 0 A installed.
    for c in world.conns:
        stations.installed[(c.station_id, default_profile_id(c.evse_id))] = 0.0
    clock = FixedClock(T0)
    lm = make_manager(world, stations, clock)
    lm._dirty["S"] = asyncio.Event()
    lm._done["S"] = asyncio.Event()
    lm.status["S"] = SiteStatus()

    broken: list[str] = []

    def check() -> None:
        if not _inside_or_uncontrollable(lm, world, stations):
            model, _ = _model(lm, world)
            broken.extend(check_commanded(model, physical(world, stations)))

    stations.after_put = check
    await settle(lm)
    assert not broken, broken
    for kind, a, b in events:
        stn = world.stations[a % len(world.stations)] if world.stations else None
        if kind == "arrive":
            key = evse_key(stn.id, b + 1)
            if key not in world.txs:
                world.n += 1
                world.txs[key] = SimpleNamespace(
                    id=world.n,
                    station_id=stn.id,
                    evse_id=b + 1,
                    transaction_id=f"T{world.n}",
                    started_at=clock.now(),
                    csms_started_at=clock.now(),
                    departure_at=None,
                    energy_target_wh=None,
                    energy_imported_wh=0.0,
                    priority=False,
                    ev_max_current_a=None,
                    ev_min_current_a=None,
                    charging_state="Charging",
                )
                stations.sessions.add(key)
        elif kind == "leave":
            key = evse_key(stn.id, b + 1)
            if world.txs.pop(key, None) is not None:
                stations.sessions.discard(key)
                stations.forget(stn.id, tx_profile_id(b + 1))  # the station drops it
                lm._on_event("transaction.ended", stn.id, {"evse_id": b + 1})
        elif kind == "energy":
            for tx in world.txs.values():
                if tx.station_id == stn.id:
                    tx.energy_imported_wh = float(b)
        elif kind == "limit":
            world.site.import_limit_w = a * 1000.0
        elif kind == "base":
            world.site.base_load_a = [float(a) if p == b else 0.0 for p in (1, 2, 3)]
        elif kind == "offline":
            stations.online.discard(stn.id)
        elif kind == "online":
            stations.online.add(stn.id)
        elif kind == "reject":
            (stations.rejecting.add if b else stations.rejecting.discard)(stn.id)
        elif kind == "needs":
            for tx in world.txs.values():
                if tx.station_id == stn.id:
                    tx.departure_at = clock.now() + timedelta(hours=b)
                    tx.energy_target_wh = 10_000.0 * b
        elif kind == "wait":
            clock.t += timedelta(seconds=a)
        await settle(lm)
        assert _inside_or_uncontrollable(lm, world, stations), "over a limit after the rebalance"
        assert not broken, (kind, a, b, broken[:3])


async def settle(lm: LoadManager) -> None:
    """What the site loop does: plan again while something marked the site dirty."""
    for _ in range(6):
        lm._dirty["S"].clear()
        await lm._rebalance("S")
        if not lm._dirty["S"].is_set():
            return
    raise AssertionError("the site does not settle")


def _model(lm: LoadManager, world: World):
    model = lm.build_model(
        world.site, world.circuits, world.stations, world.conns, list(world.txs.values())
    )
    return model, {}


def _inside_or_uncontrollable(lm: LoadManager, world: World, stations: Stations) -> bool:
    """Inside the limits, unless EVSEs we cannot steer alone already break them."""
    model, _ = _model(lm, world)
    if not check_commanded(model, physical(world, stations)):
        return True
    # Only the pinned (offline / rejecting) EVSEs may draw anything then.
    floor = {k: (v if model.evses[k].pinned else 0.0) for k, v in physical(world, stations).items()}
    return bool(check_commanded(model, floor))
