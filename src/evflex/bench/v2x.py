"""``evflex bench v2x``: central frequency control of bidirectional EVSEs, end to end.

The setup: one evflex node in this process (a fresh SQLite file unless
``--database-url`` says otherwise) and, in a second process, simulated OCPP
2.1 stations (:class:`~evflex.sim.v21.Station21`, real time) with one
bidirectional car on every EVSE (AC_BPT, or DC_BPT for ``--dc-share`` of
them). Each car announces its V2X needs (NotifyEVChargingNeeds), the driver
consents through ``PUT /api/v1/transactions/{id}/preferences``, and all
EVSEs are enrolled with ``PUT /api/v1/frequency-service`` on an FCR-like
droop: 49.8 Hz -> full discharge, 50.0 Hz -> 0, 50.2 Hz -> full charge
(linear in between, flat beyond; every car's ``share`` scales the curve to
its own power, so each is fully activated at ±200 mHz). Then a seeded
synthetic grid frequency (:meth:`evflex.sim.grid.Grid.synthetic`: σ 30 mHz,
τ 2 min; plus, unless ``--event-mhz 0``, one frequency drop at a third of
the measured window, halfway between two samples, that recovers with a 60 s
time constant) is fed at ``--rate-hz``
through ``POST /api/v1/frequency-service/samples`` (``--feed api``, the
default) or straight into the controller (``--feed direct``); each sample's
``measured_at`` is the instant it was read from the trace.

What is measured, over the window after ``warmup`` seconds of feeding:

* ``update_rate_hz`` (= ``evse_update_rate_hz_p50``): per EVSE, acknowledged
  (Accepted) updates per second, median over EVSEs (``evse_update_rate_hz_min``:
  the slowest EVSE). There are no rounds: each EVSE gets the newest setpoint as
  soon as it acknowledged its previous one, so a sample that arrives while an
  EVSE's update is in flight supersedes the one waiting for that EVSE.
  ``samples_sent_per_s``: samples that reached at least one EVSE (``rounds`` of
  them; ``skipped``: samples that reached none);
* ``latency_p50_s`` / ``latency_p99_s``: sample measurement time -> the
  station's CALLRESULT received by the CSMS, per EVSE update, from the
  controller's records (CSMS clock); also split by AC and DC EVSEs;
* ``tracking_error_pct``: the simulated cars' actual signed power P_i(t),
  read from the station objects every 1/``sample_hz`` s, against the ideal
  I_i(t) = clamp(share_i * curve(f(t)), -D_i(t), C_i(t)), where f(t) is the
  true trace frequency at that instant and C_i / D_i are what car i could
  charge / discharge at that instant (charger limit, taper above 80 % SoC,
  0 when full; discharge power, 0 at its V2X floor). Error =
  sum|P - I| / sum|I| * 100 over all EVSEs and instants of the window (the
  mean absolute deviation over the mean absolute ideal). Cars at an SoC
  limit are kept in: their ideal is clamped to what they could do, and
  ``evs_at_soc_limit`` counts them. ``tracking_error_delayed_pct`` uses the
  ideal at f(t - latency_p50_s) (what a perfect controller with the
  measured median latency would deliver); ``tracking_best_delay_s`` is the
  delay in 0..5 s that minimises the error (the effective end-to-end
  response time, station execution included) and
  ``tracking_error_best_pct`` the error at that delay.
  ``fleet_tracking_error_pct`` does the same for the fleet's sum (what the
  grid sees): mean|sum P - sum I| / mean|sum I| * 100.

Also reported: rounds, coalesced (``skipped``) and ``failed`` updates, the
CPU of the CSMS process and of the station process (% of one core over the
window; the CSMS's also per acknowledged update, which includes the station
traffic the service causes: the periodic reports of ``--reporting-interval``
and the stations' TransactionEvents), the messages the stations exchanged,
the machine's core count and load average.

Seed targets: response within 1 s for AC and 5 s for DC EVSEs, and < 4 s
for FCR; each is judged on the p99 latency of the EVSEs concerned. Speed is
measured here, never asserted in tests; on a small shared machine quote the
median of several runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing as mp
import os
import random
import statistics
import time
import traceback
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from evflex.bench.ocpp import percentile
from evflex.bench.results import stamped_path, write_json
from evflex.bench.server import api_client, in_process_node, stop_in_process_node
from evflex.clock import SystemClock
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.sim.ev import DEFAULT_FLEET, TAPER_START_SOC
from evflex.sim.grid import Grid

#: The droop: (Hz, W) for a car of ``CURVE_REF_W``; each car's share scales it.
CURVE_REF_W = 10_000.0
DROOP_CURVE: tuple[tuple[float, float], ...] = (
    (49.8, -CURVE_REF_W),
    (50.0, 0.0),
    (50.2, CURVE_REF_W),
)
#: Seed targets (s): AC and DC response, FCR.
TARGET_AC_S = 1.0
TARGET_DC_S = 5.0
TARGET_FCR_S = 4.0
#: Delays tried for the best-fit response time (s).
BEST_DELAY_MAX_S = 5.0
BEST_DELAY_STEP_S = 0.05
#: Recovery time constant of the injected frequency event (s), as Grid.synthetic's events.
EVENT_RECOVERY_S = 60.0
ID_TOKEN = "V2XBENCH"
FEEDS = ("api", "direct")


@dataclass
class V2xBenchConfig:
    evses: int = 200
    evses_per_station: int = 2
    duration_s: float = 60.0
    rate_hz: float = 1.0
    dc_share: float = 0.2
    seed: int = 7
    database_url: str | None = None
    feed: str = "api"
    #: Periodic power/voltage/frequency reporting the service asks for (s; 0: none).
    reporting_interval_s: int = 1
    #: How often the cars' power is read in the station process (Hz).
    sample_hz: float = 10.0
    #: Frequency event at a third of the run (mHz, a drop; 0: none).
    event_mhz: float = 150.0
    #: Seconds of feeding before the measured window starts.
    warmup_s: float = 5.0

    def check(self) -> None:
        """Raise ValueError with the reason when the options make no sense."""
        if self.evses < 1:
            raise ValueError("--evses must be at least 1")
        if self.evses_per_station < 1:
            raise ValueError("--evses-per-station must be at least 1")
        if not self.duration_s > 0:
            raise ValueError("--duration must be above 0 s")
        if not 0 < self.rate_hz <= 50:
            raise ValueError("--rate-hz must be above 0 and at most 50")
        if not 0.0 <= self.dc_share <= 1.0:
            raise ValueError("--dc-share must be within 0..1")
        if self.feed not in FEEDS:
            raise ValueError(f"--feed must be one of {', '.join(FEEDS)}")
        if self.reporting_interval_s < 0:
            raise ValueError("--reporting-interval must not be negative")
        if not 0 < self.sample_hz <= 50:
            raise ValueError("--sample-hz must be above 0 and at most 50")
        if self.event_mhz < 0 or self.event_mhz > 1000:
            raise ValueError("--event-mhz must be within 0..1000 (the size of a drop)")
        if self.warmup_s < 0:
            raise ValueError("warmup must not be negative")


# ---------------------------------------------------------------- the trace


class WithEvent:
    """A frequency signal plus one drop at ``event_at`` that decays back.

    Like the events of :meth:`Grid.synthetic` (a power plant trips), but at a
    chosen time, so that every run sees one; None: no event (yet).
    """

    def __init__(self, base: Any, size_hz: float, recovery_s: float = EVENT_RECOVERY_S) -> None:
        self.base = base
        self.size_hz = size_hz
        self.recovery_s = recovery_s
        self.event_at: datetime | None = None

    def at(self, t: datetime) -> float:
        value = self.base.at(t)
        if self.event_at is not None and self.size_hz:
            dt = (t - self.event_at).total_seconds()
            if dt >= 0:
                value += self.size_hz * math.exp(-dt / self.recovery_s)
        return value


def bench_grid(seed: int, start: datetime, event_mhz: float):
    """The run's grid: same arguments, same trace (both processes build one).

    ``grid.frequency.event_at`` places the drop once the feed's start is known.
    """
    grid = Grid.synthetic(seed=seed, start=start)
    grid.frequency = WithEvent(grid.frequency, -event_mhz / 1000.0)
    return grid


# ---------------------------------------------------------------- the fleet


def fleet_plan(cfg: V2xBenchConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """Station ids with one bidirectional car (EvSpec keyword arguments) per EVSE."""
    ac_models = [m for m in DEFAULT_FLEET if m.bidirectional and not m.dc]
    dc_models = [m for m in DEFAULT_FLEET if m.bidirectional and m.dc]
    rng = random.Random(f"v2x-bench:{cfg.seed}")
    cars: list[dict[str, Any]] = []
    for i in range(cfg.evses):
        # Spread round(n * share) DC EVSEs evenly over the n.
        dc = _round_half_up((i + 1) * cfg.dc_share) > _round_half_up(i * cfg.dc_share)
        model = rng.choice(dc_models if dc else ac_models)
        cars.append(
            {
                "battery_kwh": model.battery_kwh,
                # Mid-range: minutes of full power move the SoC by a few % at most.
                "soc": round(rng.uniform(0.45, 0.7), 3),
                "target_soc": 0.9,
                "max_ac_power_w": model.max_ac_power_w,
                "phases": model.phases,
                "bidirectional": True,
                "max_discharge_power_w": model.max_discharge_power_w,
                "min_soc": model.min_soc,
                "charge_efficiency": model.charge_efficiency,
                "discharge_efficiency": model.discharge_efficiency,
                "dc": model.dc,
                "model": model.name,
            }
        )
    per = cfg.evses_per_station
    return [
        (f"V2XB{n:04d}", cars[start : start + per])
        for n, start in enumerate(range(0, len(cars), per))
    ]


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def car_share(car: dict[str, Any]) -> float:
    """Scale of the droop curve for a car: fully activated at ±200 mHz."""
    power = min(car["max_ac_power_w"], car["max_discharge_power_w"])
    return round(power / CURVE_REF_W, 4)


# ---------------------------------------------------------------- station process


def _stations_main(setup: dict[str, Any], conn) -> None:
    logging.basicConfig(level="ERROR")
    try:
        asyncio.run(_stations_async(setup, conn))
    except Exception:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))


async def _stations_async(setup: dict[str, Any], conn) -> None:
    clock = SystemClock()
    grid = bench_grid(
        setup["seed"], datetime.fromisoformat(setup["trace_start"]), setup["event_mhz"]
    )
    limiter = asyncio.Semaphore(25)
    traffic: Counter[str] = Counter()

    def on_message(direction: str, action: str, _payload: Any) -> None:
        traffic[f"{direction}:{action}"] += 1

    stations = [
        SimStation(
            StationSpec(id=sid, ocpp_version="2.1", evses=len(cars)),
            setup["url"],
            clock,
            meter_interval_s=60.0,
            seed=setup["seed"],
            connect_limiter=limiter,
            grid=grid,
            response_timeout_s=60.0,
            on_message=on_message,
        )
        for sid, cars in setup["stations"]
    ]
    loop = asyncio.get_running_loop()
    try:
        await asyncio.gather(*(st.start(timeout=180.0) for st in stations))
        plugged = await asyncio.gather(
            *(
                st.plug_in(i, EvSpec(**car), ID_TOKEN)
                for st, (_, cars) in zip(stations, setup["stations"], strict=True)
                for i, car in enumerate(cars, 1)
            )
        )
        if not all(plugged):
            raise RuntimeError(f"{plugged.count(False)} cars were refused at plug-in")
        conn.send(("ready", None))
        command = await loop.run_in_executor(None, conn.recv)
        if command[0] != "sample":
            return  # the run was given up before the feed: stop the stations
        grid.frequency.event_at = datetime.fromisoformat(command[2])
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(stations, clock, command[1], stop))
        await loop.run_in_executor(None, conn.recv)  # "stop"
        stop.set()
        series = await sampler
        series["traffic"] = dict(traffic)
        series["errors"] = sum(st.stats.errors for st in stations)
        series["error_samples"] = [e for st in stations for e in st.stats.error_samples][:10]
        conn.send(("series", series))
    finally:
        await asyncio.wait_for(
            asyncio.gather(*(st.stop(timeout=5.0) for st in stations), return_exceptions=True),
            30.0,
        )


async def _sample(stations: list, clock, hz: float, stop: asyncio.Event) -> dict[str, Any]:
    """Read every car's signed power (and what it could do) every 1/hz s until ``stop``."""
    evses = [(st, evse) for st in stations for evse in st.evses.values()]
    times = array("d")
    power = [array("d") for _ in evses]
    charge_cap = [array("d") for _ in evses]
    discharge_cap = [array("d") for _ in evses]
    at_limit = [0] * len(evses)
    soc_first: list[float | None] = [None] * len(evses)
    period = 1.0 / hz
    next_t = time.monotonic()
    while not stop.is_set():
        now = clock.now()
        times.append(now.timestamp())
        for k, (st, evse) in enumerate(evses):
            st.advance(evse, now)
            ev = evse.ev
            power[k].append(evse.power_w)
            if ev is None:
                charge_cap[k].append(0.0)
                discharge_cap[k].append(0.0)
                continue
            if soc_first[k] is None:
                soc_first[k] = ev.soc
            hardware = st.spec.evse_limit_w
            charge_cap[k].append(ev.accepted_power_w(hardware))
            discharge_cap[k].append(ev.spec.max_discharge_w if ev.can_discharge else 0.0)
            if ev.full or not ev.can_discharge or ev.soc > TAPER_START_SOC:
                at_limit[k] += 1
        next_t += period
        delay = next_t - time.monotonic()
        if delay < 0:
            next_t = time.monotonic()  # late: do not try to catch up
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, delay))
    return {
        "evses": [(st.id, evse.id) for st, evse in evses],
        "times": times,
        "power": power,
        "charge_cap": charge_cap,
        "discharge_cap": discharge_cap,
        "at_limit": at_limit,
        "soc_first": soc_first,
        "soc_last": [evse.ev.soc if evse.ev else None for _, evse in evses],
    }


# ---------------------------------------------------------------- the run


def _cpu_s(pid: int | None = None) -> float | None:
    import psutil

    try:
        t = psutil.Process(pid).cpu_times() if pid else psutil.Process().cpu_times()
    except (psutil.Error, ValueError):
        return None
    return t.user + t.system


async def _recv(conn, proc, timeout: float, what: str):
    """The station process's next message (raising its error, or on timeout / death)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(conn.poll, 0.2):
        if not proc.is_alive():
            raise RuntimeError(f"the station process died while {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the station process took over {timeout:g} s {what}")
    msg = conn.recv()
    if msg[0] == "error":
        raise RuntimeError(f"station process failed while {what}:\n{msg[1]}")
    return msg


async def run_v2x_bench(cfg: V2xBenchConfig, log=print) -> dict[str, Any]:
    cfg.check()
    plan = fleet_plan(cfg)
    cars = {(sid, i): car for sid, cs in plan for i, car in enumerate(cs, 1)}
    n_evses = len(cars)
    rt, tmp = await in_process_node(
        cfg.database_url, "evflex-bench-v2x-", allow_unknown_stations=True
    )
    http = api_client(rt, 600)
    # The trace starts now (both processes build it from the seed and this instant).
    trace_start = datetime.now(UTC)
    parent, child = mp.Pipe()
    ctx = mp.get_context("spawn")
    setup = {
        "url": f"ws://127.0.0.1:{rt.ocpp_port}/ocpp",
        "stations": plan,
        "seed": cfg.seed,
        "trace_start": trace_start.isoformat(),
        "event_mhz": cfg.event_mhz,
    }
    result: dict[str, Any] = {
        "benchmark": "v2x",
        "evses": n_evses,
        "stations": len(plan),
        "evses_per_station": cfg.evses_per_station,
        "dc_evses": sum(1 for c in cars.values() if c["dc"]),
        "ac_evses": sum(1 for c in cars.values() if not c["dc"]),
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "requested_rate_hz": cfg.rate_hz,
        "feed": cfg.feed,
        "reporting_interval_s": cfg.reporting_interval_s,
        "sample_hz": cfg.sample_hz,
        "event_mhz": cfg.event_mhz,
        "seed": cfg.seed,
        "curve": [list(p) for p in DROOP_CURVE],
        "database": "postgresql" if rt.settings.database_url.startswith("postgres") else "sqlite",
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "started_at": trace_start.isoformat(),
    }
    proc = None
    t0 = time.perf_counter()
    try:
        r = await http.post("/id-tokens", json={"id_token": ID_TOKEN, "status": "Accepted"})
        r.raise_for_status()
        proc = ctx.Process(target=_stations_main, args=(setup, child), daemon=True)
        proc.start()
        await _recv(parent, proc, 300.0, "starting the stations")
        log(
            f"{len(plan)} stations, {n_evses} cars plugged in after {time.perf_counter() - t0:.1f} s"
        )
        txs = await _wait_bidirectional(http, n_evses, 120.0)
        await _consent(http, txs)
        t1 = time.perf_counter()
        body = {
            "evses": [
                {"station_id": sid, "evse_id": e, "share": car_share(car)}
                for (sid, e), car in cars.items()
            ],
            "curve": [list(p) for p in DROOP_CURVE],
            "reporting_interval_s": cfg.reporting_interval_s or None,
        }
        r = await http.put("/frequency-service", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"frequency service not started: {r.status_code} {r.text[:500]}")
        refused = r.json()["refused"]
        if refused:
            raise RuntimeError(f"{len(refused)} EVSEs refused: {dict(list(refused.items())[:5])}")
        result["enrol_s"] = round(time.perf_counter() - t1, 2)
        result["setup_s"] = round(time.perf_counter() - t0, 1)
        log(f"{n_evses} EVSEs enrolled in {result['enrol_s']} s; feeding {cfg.rate_hz:g} Hz")
        grid = bench_grid(cfg.seed, trace_start, cfg.event_mhz)
        await _feed_and_measure(rt, http, grid, cfg, cars, parent, proc, result)
    finally:
        if proc is not None:
            with contextlib.suppress(Exception):
                parent.send(("stop",))
            await asyncio.to_thread(proc.join, 40)
            if proc.is_alive():
                proc.kill()
        await http.aclose()
        await stop_in_process_node(rt, tmp)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


async def _wait_bidirectional(http, n: int, timeout: float) -> list[dict]:
    """Until the CSMS holds n running transactions of cars that asked for *_BPT."""
    deadline = time.monotonic() + timeout
    while True:
        r = await http.get("/transactions", params={"active": True, "limit": 10_000})
        r.raise_for_status()
        txs = [t for t in r.json() if t["bidirectional"]]
        if len(txs) >= n:
            return txs
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(txs)}/{n} transactions with V2X needs in time")
        await asyncio.sleep(0.25)


async def _consent(http, txs: list[dict]) -> None:
    """Every driver allows discharging (PUT .../preferences)."""
    limit = asyncio.Semaphore(8)

    async def one(tx: dict) -> None:
        async with limit:
            r = await http.put(
                f"/transactions/{tx['id']}/preferences", json={"allow_discharge": True}
            )
            r.raise_for_status()

    await asyncio.gather(*(one(t) for t in txs))


async def _feed_and_measure(
    rt, http, grid, cfg: V2xBenchConfig, cars, parent, proc, result: dict
) -> None:
    ctrl = rt.frequency
    assert ctrl is not None
    t_begin = time.time() + 0.5
    t_measure = t_begin + cfg.warmup_s
    t_end = t_measure + cfg.duration_s
    # The drop comes at about a third of the measured window, halfway between two
    # samples (an event does not wait for the feed: on average it is half a period off).
    event_s = (math.floor(cfg.duration_s / 3.0 * cfg.rate_hz) + 0.5) / cfg.rate_hz
    event_at = datetime.fromtimestamp(t_measure + event_s, UTC)
    grid.frequency.event_at = event_at
    result["event_at_s"] = round(event_s, 3) if cfg.event_mhz else None
    parent.send(("sample", cfg.sample_hz, event_at.isoformat()))
    fed: list[tuple[float, float]] = []
    slips: list[float] = []
    cpu0 = cpu1 = st_cpu0 = st_cpu1 = None
    k = 0
    while True:
        target = t_begin + k / cfg.rate_hz
        if target >= t_end:
            break
        delay = target - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if cpu0 is None and target >= t_measure:
            cpu0, st_cpu0 = _cpu_s(), _cpu_s(proc.pid)
        now = datetime.now(UTC)
        slips.append(now.timestamp() - target)
        f = grid.frequency_hz(now)
        if cfg.feed == "api":
            r = await http.post(
                "/frequency-service/samples",
                json={"frequency_hz": round(f, 5), "measured_at": now.isoformat()},
            )
            r.raise_for_status()
        else:
            ctrl.sample(round(f, 5), now)
        fed.append((now.timestamp(), f))
        k += 1
    await asyncio.sleep(max(0.0, t_end - time.time()))
    cpu1, st_cpu1 = _cpu_s(), _cpu_s(proc.pid)
    # The updates in flight at the end finish (their records count if their sample was in time).
    for _ in range(1200):  # at most 60 s
        if ctrl.idle:
            break  # nothing pending, every update sent answered
        await asyncio.sleep(0.05)
    parent.send(("stop",))
    _, series = await _recv(parent, proc, 120.0, "sending the sampled power")

    # ---- rate and latency, from the controller's records of the measured window
    records = [r for r in ctrl.stats.records if t_measure <= r.sample_at.timestamp() < t_end]
    window = cfg.duration_s
    ok = [r for r in records if r.ok]
    dc_keys = {key for key, car in cars.items() if car["dc"]}
    per_evse = Counter((r.station_id, r.evse_id) for r in ok)
    evse_rates = sorted(per_evse.get(key, 0) / window for key in cars)
    lat = sorted(r.latency_s for r in ok)
    lat_ac = sorted(r.latency_s for r in ok if (r.station_id, r.evse_id) not in dc_keys)
    lat_dc = sorted(r.latency_s for r in ok if (r.station_id, r.evse_id) in dc_keys)
    rounds = len({r.sample_at for r in records})
    fed_window = [x for x in fed if t_measure <= x[0] < t_end]
    summary = ctrl.stats.summary()
    result.update(
        samples=len(fed_window),
        samples_per_s=_r(len(fed_window) / window, 3),
        rounds=rounds,
        # Every EVSE is updated on its own as soon as its previous update is answered:
        # the rate is the acknowledged updates per second of an EVSE (median over EVSEs).
        update_rate_hz=_r(statistics.median(evse_rates), 3),
        evse_update_rate_hz_p50=_r(statistics.median(evse_rates), 3),
        evse_update_rate_hz_min=_r(evse_rates[0], 3),
        samples_sent_per_s=_r(rounds / window, 3),
        updates=len(ok),
        failed=len(records) - len(ok),
        skipped=max(0, len(fed_window) - rounds),
        latency_p50_s=_r(percentile(lat, 50), 4),
        latency_p99_s=_r(percentile(lat, 99), 4),
        latency_max_s=_r(lat[-1] if lat else None, 4),
        latency_ac_p50_s=_r(percentile(lat_ac, 50), 4),
        latency_ac_p99_s=_r(percentile(lat_ac, 99), 4),
        latency_dc_p50_s=_r(percentile(lat_dc, 50), 4),
        latency_dc_p99_s=_r(percentile(lat_dc, 99), 4),
        feed_slip_p99_s=_r(percentile(sorted(slips), 99), 4),
        controller_totals={
            k: summary[k]
            for k in (
                "samples",
                "rounds",
                "skipped",
                "stale",
                "superseded",
                "unchanged",
                "updates",
                "failed",
            )
        },
        csms_process_cpu_pct=_pct(cpu0, cpu1, window),
        csms_cpu_ms_per_update=(
            _r(1000.0 * (cpu1 - cpu0) / len(ok), 2) if cpu0 is not None and cpu1 and ok else None
        ),
        station_process_cpu_pct=_pct(st_cpu0, st_cpu1, window),
        station_traffic=series["traffic"],
        station_errors=series["errors"],
        station_error_samples=series["error_samples"],
    )

    # ---- tracking, from the sampled power
    result.update(
        tracking_error(
            series,
            grid,
            {key: car_share(car) for key, car in cars.items()},
            t_measure,
            t_end,
            result["latency_p50_s"],
        )
    )
    p99 = result["latency_p99_s"]
    result["targets"] = {
        "ac_s": TARGET_AC_S,
        "dc_s": TARGET_DC_S,
        "fcr_s": TARGET_FCR_S,
        "judged_on": "p99 latency (sample -> station acknowledged)",
        "ac_met": _met(result["latency_ac_p99_s"], TARGET_AC_S),
        "dc_met": _met(result["latency_dc_p99_s"], TARGET_DC_S),
        "fcr_met": None if p99 is None else p99 < TARGET_FCR_S,
    }


def tracking_error(
    series: dict[str, Any],
    grid,
    shares: dict[tuple[str, int], float],
    t_from: float,
    t_to: float,
    delay_s: float | None,
) -> dict[str, Any]:
    """Delivered vs ideal power (see the module docstring for the definitions)."""
    import numpy as np

    times = np.frombuffer(series["times"], dtype=float)
    keep = (times >= t_from) & (times < t_to)
    t = times[keep]
    if t.size == 0:
        raise RuntimeError("no power samples in the measured window")
    keys = [tuple(k) for k in series["evses"]]
    share = np.array([shares[k] for k in keys])[:, None]
    power = np.array([np.frombuffer(a, dtype=float) for a in series["power"]])[:, keep]
    c_cap = np.array([np.frombuffer(a, dtype=float) for a in series["charge_cap"]])[:, keep]
    d_cap = np.array([np.frombuffer(a, dtype=float) for a in series["discharge_cap"]])[:, keep]
    xs = np.array([p[0] for p in DROOP_CURVE])
    ys = np.array([p[1] for p in DROOP_CURVE])

    def freq(delay: float) -> np.ndarray:
        return np.array(
            [grid.frequency_hz(datetime.fromtimestamp(x - delay, UTC)) for x in t.tolist()]
        )

    def errors(delay: float) -> tuple[float, float, float]:
        ideal = np.clip(share * np.interp(freq(delay), xs, ys)[None, :], -d_cap, c_cap)
        denom = np.abs(ideal).sum()
        per_evse = 100.0 * np.abs(power - ideal).sum() / denom if denom > 0 else math.nan
        fleet_ideal = ideal.sum(axis=0)
        fleet_denom = np.abs(fleet_ideal).mean()
        fleet = (
            100.0 * np.abs(power.sum(axis=0) - fleet_ideal).mean() / fleet_denom
            if fleet_denom > 0
            else math.nan
        )
        return per_evse, fleet, float(np.abs(ideal).mean())

    err0, fleet0, mean_ideal = errors(0.0)
    delayed = errors(delay_s)[0] if delay_s is not None else None
    best = (math.inf, 0.0)
    steps = int(round(BEST_DELAY_MAX_S / BEST_DELAY_STEP_S))
    for i in range(steps + 1):
        d = i * BEST_DELAY_STEP_S
        e = errors(d)[0]
        if e < best[0]:
            best = (e, d)
    at_limit = sum(1 for k, n in zip(keys, series["at_limit"], strict=True) if n and k in shares)
    gaps = np.diff(t)
    return {
        "tracking_error_pct": _r(err0, 2),
        "tracking_error_delayed_pct": _r(delayed, 2),
        "tracking_delay_s": delay_s,
        "tracking_best_delay_s": round(best[1], 2),
        "tracking_error_best_pct": _r(best[0], 2),
        "fleet_tracking_error_pct": _r(fleet0, 2),
        "mean_abs_ideal_kw": _r(mean_ideal / 1000.0, 3),
        "mean_abs_delivered_kw": _r(float(np.abs(power).mean()) / 1000.0, 3),
        "power_samples": int(t.size),
        "power_sample_gap_p99_s": _r(float(np.percentile(gaps, 99)) if gaps.size else None, 3),
        "evs_at_soc_limit": at_limit,
        "soc_limit_policy": "kept in; their ideal is clamped to what the car could do",
        "soc_range": [
            _r(min(x for x in series["soc_first"] if x is not None), 3),
            _r(max(x for x in series["soc_last"] if x is not None), 3),
        ],
    }


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(value, digits)


def _pct(a: float | None, b: float | None, seconds: float) -> float | None:
    if a is None or b is None or seconds <= 0:
        return None
    return round(100.0 * (b - a) / seconds, 1)


def _met(value: float | None, target: float) -> bool | None:
    return None if value is None else value <= target


# ---------------------------------------------------------------- CLI


def _fmt(value: Any, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def render(result: dict[str, Any]):
    from rich.table import Table

    table = Table(
        title=(
            f"V2X central frequency control: {result['evses']} EVSEs "
            f"({result['ac_evses']} AC / {result['dc_evses']} DC) on {result['stations']} "
            f"stations, {result['requested_rate_hz']:g} Hz fed ({result['feed']}), "
            f"{result['duration_s']:g} s"
        )
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("how")
    rows = [
        ("samples fed / s", _fmt(result["samples_per_s"]), "frequency samples in the window"),
        (
            "acked updates / s per EVSE",
            _fmt(result["update_rate_hz"]),
            f"median over EVSEs (slowest {_fmt(result['evse_update_rate_hz_min'])}); "
            f"{result['updates']} ok, {result['failed']} failed",
        ),
        (
            "samples sent / s",
            _fmt(result["samples_sent_per_s"]),
            f"{result['rounds']} samples reached an EVSE, {result['skipped']} none "
            f"(superseded in every lane)",
        ),
        ("latency p50", _fmt(result["latency_p50_s"], " s"), "sample -> station CALLRESULT"),
        (
            "latency p99",
            _fmt(result["latency_p99_s"], " s"),
            f"max {_fmt(result['latency_max_s'])}",
        ),
        (
            "latency AC p50 / p99",
            f"{_fmt(result['latency_ac_p50_s'])} / {_fmt(result['latency_ac_p99_s'])} s",
            "",
        ),
        (
            "latency DC p50 / p99",
            f"{_fmt(result['latency_dc_p50_s'])} / {_fmt(result['latency_dc_p99_s'])} s",
            "",
        ),
        (
            "tracking error",
            _fmt(result["tracking_error_pct"], " %", 1),
            "Σ|P−I| / Σ|I|, I = share·curve(f(t)) clamped to the car",
        ),
        (
            "tracking error, ideal delayed",
            _fmt(result["tracking_error_delayed_pct"], " %", 1),
            f"I at f(t − p50 latency = {_fmt(result['tracking_delay_s'])} s)",
        ),
        (
            "effective response delay",
            _fmt(result["tracking_best_delay_s"], " s", 2),
            f"delay minimising the error ({_fmt(result['tracking_error_best_pct'], ' %', 1)})",
        ),
        (
            "fleet tracking error",
            _fmt(result["fleet_tracking_error_pct"], " %", 1),
            "mean|ΣP − ΣI| / mean|ΣI| (what the grid sees)",
        ),
        (
            "mean |ideal| / |delivered| per EVSE",
            f"{_fmt(result['mean_abs_ideal_kw'], '', 2)} / "
            f"{_fmt(result['mean_abs_delivered_kw'], ' kW', 2)}",
            f"{result['power_samples']} power samples at {result['sample_hz']:g} Hz",
        ),
        (
            "EVs at an SoC limit",
            str(result["evs_at_soc_limit"]),
            result["soc_limit_policy"],
        ),
        (
            "CPU: CSMS / stations process",
            f"{_fmt(result['csms_process_cpu_pct'], '', 0)} / "
            f"{_fmt(result['station_process_cpu_pct'], ' %', 0)}",
            f"of one core; CSMS {_fmt(result['csms_cpu_ms_per_update'], ' ms', 2)} per "
            f"acked update; {result['cpus']} cores, load {result['loadavg_before']}",
        ),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def target_lines(result: dict[str, Any]) -> list[str]:
    t = result["targets"]

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    return [
        f"target AC: acknowledged within {t['ac_s']:g} s (p99 "
        f"{_fmt(result['latency_ac_p99_s'])} s) — {verdict(t['ac_met'])}",
        f"target DC: acknowledged within {t['dc_s']:g} s (p99 "
        f"{_fmt(result['latency_dc_p99_s'])} s) — {verdict(t['dc_met'])}",
        f"target FCR: under {t['fcr_s']:g} s (p99 {_fmt(result['latency_p99_s'])} s) — "
        f"{verdict(t['fcr_met'])}",
    ]


def bench_v2x_command(
    evses: Annotated[
        int | None, typer.Option(help="Bidirectional EVSEs  [default: 200; 4 with --quick]")
    ] = None,
    evses_per_station: Annotated[int, typer.Option(help="EVSEs per station")] = 2,
    duration: Annotated[
        float | None,
        typer.Option(help="Measured seconds of real time  [default: 60; 3 with --quick]"),
    ] = None,
    rate_hz: Annotated[float, typer.Option(help="Frequency samples fed per second")] = 1.0,
    dc_share: Annotated[float, typer.Option(help="Share of DC_BPT EVSEs (0..1)")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the fleet and the frequency trace")] = 7,
    feed: Annotated[
        str, typer.Option(help="api: POST .../samples; direct: the controller in-process")
    ] = "api",
    reporting_interval: Annotated[
        int, typer.Option(help="Periodic reporting asked of the stations (s; 0: none)")
    ] = 1,
    event_mhz: Annotated[
        float, typer.Option(help="Frequency drop at a third of the run (mHz; 0: none)")
    ] = 150.0,
    sample_hz: Annotated[float, typer.Option(help="Cars' power read per second")] = 10.0,
    database_url: Annotated[str | None, typer.Option(help="Default: a fresh SQLite file")] = None,
    quick: Annotated[bool, typer.Option(help="Small and short (for tests)")] = False,
    out: Annotated[Path | None, typer.Option(help="JSON result file")] = None,
) -> None:
    """N bidirectional EVSEs in CentralFrequency mode following a frequency trace."""
    from rich.console import Console

    cfg = V2xBenchConfig(
        evses=evses if evses is not None else (4 if quick else 200),
        evses_per_station=evses_per_station,
        duration_s=duration if duration is not None else (3.0 if quick else 60.0),
        rate_hz=rate_hz,
        dc_share=dc_share,
        seed=seed,
        database_url=database_url,
        feed=feed,
        reporting_interval_s=reporting_interval,
        sample_hz=sample_hz,
        event_mhz=event_mhz,
        warmup_s=1.0 if quick else 5.0,
    )
    try:
        cfg.check()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    console = Console()
    result = asyncio.run(run_v2x_bench(cfg, log=console.print))
    result["config"] = asdict(cfg) | {"database_url": None}
    console.print(render(result))
    for line in target_lines(result):
        console.print(line)
    out = out or stamped_path(f"v2x-{result['evses']}")
    write_json(out, result)
    console.print(f"wrote {out}")
