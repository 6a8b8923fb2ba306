"""A fleet of simulated stations with random drivers, run on an accelerated clock."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from evflex.clock import AcceleratedClock, Clock
from evflex.sim.ev import DEFAULT_FLEET, EvModel, EvSpec, random_ev, with_bidirectional
from evflex.sim.grid import BuildingMeter, Grid
from evflex.sim.model import SecuritySettings, StationSpec
from evflex.sim.station import EvseBusy, SimStation


def _default_tokens() -> list[str]:
    return [f"TOKEN{i}" for i in range(1, 11)]


@dataclass
class SimConfig:
    """Parameters of a simulation run (times in clock-seconds unless noted)."""

    url: str = "ws://127.0.0.1:9000/ocpp"
    stations: int = 10
    v201_share: float = 0.5
    #: Share of OCPP 2.1 stations (of all stations; ``v201_share + v21_share <= 1``).
    v21_share: float = 0.0
    evses_per_station: int = 2
    #: Clock-seconds per real second. Above 1 the fleet lives on a timeline of its
    #: own (a simulated day in real minutes): its stations keep their own time and
    #: a real-time CSMS sees their clocks run away (it flags them, and decides on
    #: its own clock anyway).
    speed: float = 60.0
    #: Every station's clock starts this far off (s; negative: behind).
    clock_skew_s: float = 0.0
    #: Where the stations take their time from (sim.station.TIME_SOURCES; None: by speed).
    time_source: str | None = None
    duration_s: float = 86_400.0
    meter_interval_s: float = 60.0
    sessions_per_evse_per_day: float = 3.0
    id_tokens: list[str] = field(default_factory=_default_tokens)
    unknown_token_share: float = 0.0
    password: str | None = None
    #: Security profile, TLS files (``{id}`` in a file name: the station's id), attacks.
    security: SecuritySettings = field(default_factory=SecuritySettings)
    seed: int = 1
    #: Probability that a station loses its connection within one clock-hour.
    disconnect_per_hour: float = 0.0
    offline_duration_s: float = 600.0
    station_prefix: str = "SIM"
    dwell_min_s: float = 3_600.0
    dwell_max_s: float = 36_000.0
    max_current_a: float = 32.0
    phases: int = 3
    voltage: float = 230.0
    fleet: Sequence[EvModel] = DEFAULT_FLEET
    #: Share of bidirectional (V2X) cars among the arrivals (0: the fleet's own weights).
    bidirectional_share: float = 0.0
    #: Attach a seeded synthetic grid (frequency, voltage) and a building meter per station.
    synthetic_grid: bool = False
    #: Concurrent websocket handshakes while the fleet connects.
    connect_concurrency: int = 50
    #: Real seconds to wait for an answer to a message.
    response_timeout_s: float = 30.0
    validate_messages: bool = True

    def __post_init__(self) -> None:
        if self.stations < 0:
            raise ValueError("stations must not be negative")
        if not 0.0 <= self.v201_share <= 1.0:
            raise ValueError("v201_share must be within 0..1")
        if not 0.0 <= self.v21_share <= 1.0 or self.v201_share + self.v21_share > 1.0 + 1e-9:
            raise ValueError("v21_share must be within 0..1 and v201_share + v21_share <= 1")
        if not 0.0 <= self.bidirectional_share <= 1.0:
            raise ValueError("bidirectional_share must be within 0..1")
        if self.bidirectional_share > 0:
            self.fleet = with_bidirectional(self.fleet, self.bidirectional_share)
        if not 0.0 <= self.unknown_token_share <= 1.0:
            raise ValueError("unknown_token_share must be within 0..1")
        if self.dwell_max_s < self.dwell_min_s:
            raise ValueError("dwell_max_s must not be below dwell_min_s")
        if not self.id_tokens and self.unknown_token_share < 1.0:
            raise ValueError("id_tokens must not be empty")


@dataclass
class SimSummary:
    stations: int
    stations_booted: int
    sessions_started: int
    sessions_completed: int
    sessions_rejected: int
    energy_wh: float
    messages_sent: int
    errors: int
    error_samples: list[str]
    sim_seconds: float = 0.0
    real_seconds: float = 0.0
    #: Transaction messages still undelivered when the run ended (CSMS too slow or offline).
    tx_backlog: int = 0
    #: Stations whose connect attempts all failed (the CSMS refused them, or was not there).
    stations_refused: int = 0


@dataclass
class Arrival:
    """One planned visit of a driver at an EVSE."""

    gap_s: float
    ev: EvSpec
    id_token: str
    dwell_s: float


class SessionPlanner:
    """Random but reproducible visits for one EVSE (one generator per EVSE)."""

    def __init__(self, config: SimConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng

    def next(self) -> Arrival:
        cfg = self.config
        rng = self.rng
        rate = cfg.sessions_per_evse_per_day / 86_400.0
        gap = rng.expovariate(rate) if rate > 0 else math.inf
        ev = random_ev(rng, cfg.fleet)
        if rng.random() < cfg.unknown_token_share or not cfg.id_tokens:
            token = f"UNKNOWN{rng.randrange(1_000_000):06d}"
        else:
            token = rng.choice(cfg.id_tokens)
        dwell = rng.uniform(cfg.dwell_min_s, cfg.dwell_max_s)
        if ev.departure_s is None:  # the driver knows when they will leave
            ev = dataclasses.replace(ev, departure_s=round(dwell))
        return Arrival(gap, ev, token, dwell)


def station_ids(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def is_v201(index: int, share: float) -> bool:
    """Spread the 2.0.1 stations evenly: station ``index`` is 2.0.1 or not."""
    return math.floor((index + 1) * share + 1e-9) > math.floor(index * share + 1e-9)


def ocpp_versions(count: int, v201_share: float, v21_share: float = 0.0) -> list[str]:
    """The OCPP version of each of ``count`` stations, each share spread evenly.

    The 2.1 stations are placed first; the 2.0.1 stations are spread over the
    others (so that without 2.1 stations the result is that of :func:`is_v201`).
    """
    rest_share = v201_share / (1.0 - v21_share) if v21_share < 1.0 else 0.0
    out: list[str] = []
    others = 0
    for index in range(count):
        if is_v201(index, v21_share):
            out.append("2.1")
        else:
            out.append("2.0.1" if is_v201(others, min(1.0, rest_share)) else "1.6")
            others += 1
    return out


class Simulation:
    """Run ``config.stations`` stations with random sessions for ``config.duration_s``."""

    def __init__(self, config: SimConfig, clock: Clock | None = None) -> None:
        self.config = config
        self.clock: Clock = clock if clock is not None else AcceleratedClock(config.speed)
        self.stations: list[SimStation] = []
        self._stop = asyncio.Event()
        versions = ocpp_versions(config.stations, config.v201_share, config.v21_share)
        #: The grid shared by all stations (with ``synthetic_grid``).
        self.grid: Grid | None = None
        if config.synthetic_grid:
            self.grid = Grid.synthetic(config.seed, self.clock.now(), nominal_v=config.voltage)
        for index, station_id in enumerate(station_ids(config.station_prefix, config.stations)):
            rng = random.Random(f"{config.seed}:{station_id}:spec")
            spec = StationSpec(
                id=station_id,
                ocpp_version=versions[index],
                evses=config.evses_per_station,
                max_current_a=config.max_current_a,
                phases=config.phases,
                voltage=config.voltage,
                password=config.password,
                security=config.security.for_station(station_id),
                iccid=f"8949{rng.randrange(10**15):015d}",
                meter_start_wh=float(rng.randrange(100_000, 5_000_000)),
            )
            remote_rng = random.Random(f"{config.seed}:{station_id}:remote")
            self.stations.append(
                SimStation(
                    spec,
                    config.url,
                    self.clock,
                    meter_interval_s=config.meter_interval_s,
                    seed=config.seed,
                    ev_factory=lambda r=remote_rng: random_ev(r, config.fleet),
                    remote_dwell_s=lambda r=remote_rng: r.uniform(
                        config.dwell_min_s, config.dwell_max_s
                    ),
                    response_timeout_s=config.response_timeout_s,
                    validate_messages=config.validate_messages,
                    clock_skew_s=config.clock_skew_s,
                    time_source=config.time_source,
                    grid=self.grid,
                    building=BuildingMeter(noise_w=300.0, seed=f"{config.seed}:{station_id}")
                    if config.synthetic_grid
                    else None,
                )
            )

    async def run(self, progress: Callable[[float], None] | None = None) -> SimSummary:
        """Run until ``duration_s`` clock-seconds have passed, then stop every station."""
        cfg = self.config
        self._stop.clear()
        limiter = asyncio.Semaphore(max(1, cfg.connect_concurrency))
        real_start = time.monotonic()
        start = self.clock.now()
        elapsed = 0.0
        drivers: list[asyncio.Task[None]] = []
        for station in self.stations:
            station.connect_limiter = limiter
            station.launch()
            for evse_id in station.evses:
                rng = random.Random(f"{cfg.seed}:{station.id}:{evse_id}")
                drivers.append(asyncio.create_task(self._drive(station, evse_id, rng)))
            if cfg.disconnect_per_hour > 0:
                rng = random.Random(f"{cfg.seed}:{station.id}:network")
                drivers.append(asyncio.create_task(self._network(station, rng)))
        try:
            while True:
                elapsed = (self.clock.now() - start).total_seconds()
                if progress is not None:
                    progress(min(1.0, elapsed / cfg.duration_s) if cfg.duration_s > 0 else 1.0)
                if elapsed >= cfg.duration_s:
                    break
                remaining_real = (cfg.duration_s - elapsed) / self.clock.speed
                await asyncio.sleep(min(0.2, max(0.001, remaining_real)))
        finally:
            self._stop.set()
            if drivers:
                _, pending = await asyncio.wait(drivers, timeout=5.0)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.wait(pending, timeout=1.0)
            await asyncio.gather(*(s.stop() for s in self.stations), return_exceptions=True)
        if progress is not None:
            progress(1.0)
        return self.summary(sim_seconds=elapsed, real_seconds=time.monotonic() - real_start)

    def summary(self, *, sim_seconds: float = 0.0, real_seconds: float = 0.0) -> SimSummary:
        samples: list[str] = []
        for station in self.stations:
            for text in station.stats.error_samples:
                if len(samples) < 20:
                    samples.append(text)
        return SimSummary(
            stations=len(self.stations),
            stations_booted=sum(1 for s in self.stations if s.boot_count > 0),
            sessions_started=sum(s.stats.sessions_started for s in self.stations),
            sessions_completed=sum(s.stats.sessions_completed for s in self.stations),
            sessions_rejected=sum(s.stats.sessions_rejected for s in self.stations),
            energy_wh=sum(s.stats.energy_wh for s in self.stations),
            messages_sent=sum(s.stats.messages_sent for s in self.stations),
            errors=sum(s.stats.errors for s in self.stations),
            error_samples=samples,
            sim_seconds=sim_seconds,
            real_seconds=real_seconds,
            tx_backlog=sum(s.tx_backlog for s in self.stations),
            stations_refused=sum(1 for s in self.stations if s.connect_failures and not s.booted),
        )

    async def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` clock-seconds; False if the simulation stops meanwhile."""
        if self._stop.is_set():
            return False
        if math.isinf(seconds):
            await self._stop.wait()
            return False
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
        return not self._stop.is_set()

    async def _until_booted(self, station: SimStation) -> bool:
        """Wait for the first boot of ``station``; False if the simulation stops first."""
        booted = asyncio.ensure_future(station.wait_booted())
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({booted, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            booted.cancel()
            stopper.cancel()
        return not self._stop.is_set()

    async def _drive(self, station: SimStation, evse_id: int, rng: random.Random) -> None:
        planner = SessionPlanner(self.config, rng)
        # Drivers start arriving once the station has been commissioned (first boot).
        if not await self._until_booted(station):
            return
        while True:
            arrival = planner.next()
            if not await self._wait(arrival.gap_s):
                return
            if not station.can_plug_in(evse_id):
                continue  # the driver finds the EVSE busy and goes elsewhere
            try:
                started = await station.plug_in(evse_id, arrival.ev, arrival.id_token)
            except EvseBusy:
                continue
            if not started:
                continue
            battery = station.evse(evse_id).ev
            if not await self._wait(arrival.dwell_s):
                return
            if battery is not None and station.evse(evse_id).ev is battery:
                await station.plug_out(evse_id)

    async def _network(self, station: SimStation, rng: random.Random) -> None:
        if not await self._until_booted(station):
            return
        p = min(self.config.disconnect_per_hour, 0.999_999)
        rate = (
            -math.log(1.0 - p) / 3600.0
            if self.config.disconnect_per_hour < 1
            else (self.config.disconnect_per_hour / 3600.0)
        )
        while True:
            if not await self._wait(rng.expovariate(rate)):
                return
            await station.go_offline()
            if not await self._wait(self.config.offline_duration_s):
                await station.go_online(wait=False)
                return
            await station.go_online(wait=False)
