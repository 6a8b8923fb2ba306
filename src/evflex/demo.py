"""``evflex demo``: a CSMS on a fresh SQLite file and a simulated site, one command."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pyotp
from sqlalchemy import func, select

from evflex.app import Runtime
from evflex.clock import AcceleratedClock
from evflex.config import Settings
from evflex.scheduling import Objective, Problem, Vehicle, solve
from evflex.sim import SimConfig, Simulation
from evflex.sim.runner import station_ids
from evflex.smartcharging.mpc import Forecast
from evflex.smartcharging.sitelog import ev_charge_w, need_judged, need_served
from evflex.store import repo
from evflex.store.tables import IdToken, MeterValue, Station, Transaction
from evflex.web.auth import add_user

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    api_url: str
    ocpp_url: str
    database: str
    stations: int
    stations_booted: int
    sessions_started: int
    sessions_completed: int
    sessions_rejected: int
    sim_energy_kwh: float
    csms_stations: int
    csms_transactions: int
    csms_energy_kwh: float
    csms_meter_samples: int
    errors: int
    csms_refused_transactions: int = 0  # ended at once for a refused card (2.x)
    error_samples: list[str] = field(default_factory=list)
    sim_hours: float = 0.0
    real_seconds: float = 0.0
    site_limit_kw: float = 0.0
    site_peak_kw: float = 0.0  # the most the simulated EVs drew at once (sampled)
    sessions_with_needs: int = 0  # ended sessions with a stated need, judged (stayed until departure)
    sessions_served: int = 0  # ... that got their energy by departure
    # V2X (--v2x): what the CSMS metered and billed
    v2x: bool = False
    v2x_sessions: int = 0  # sessions whose driver allowed discharging
    csms_exported_kwh: float = 0.0
    import_cost: float = 0.0
    export_reward: float = 0.0
    #: exported kWh by when they went out (the meters' export registers, hour by hour)
    exported_peak_kwh: float = 0.0  # inside the evening peak (PEAK_HOURS)
    exported_off_peak_kwh: float = 0.0
    #: what discharging saved the site that day (see :func:`v2g_saving`)
    v2g_saving: float = 0.0


DEMO_TOKENS = [f"DEMO-{i:04d}" for i in range(1, 41)]
DEMO_ADMIN = "demo-admin"


@dataclass
class DemoLogin:
    username: str
    password: str
    totp_secret: str

    def code_now(self) -> str:
        return pyotp.TOTP(self.totp_secret).now()


async def create_demo_admin(rt: Runtime) -> DemoLogin:
    """An admin account with a fresh random password and TOTP secret, for the dashboard."""
    password = secrets.token_urlsafe(12)
    async with rt.sessionmaker() as s, s.begin():
        user = await add_user(s, DEMO_ADMIN, password, "admin")
    return DemoLogin(DEMO_ADMIN, password, user.totp_secret)


def demo_clock(hours: float, speed: float | None = None) -> AcceleratedClock:
    """The demo's clock, shared by the CSMS and the simulator (default: the run in ~40 s)."""
    return AcceleratedClock(speed if speed is not None else max(1.0, hours * 3600.0 / 40.0))


def demo_settings(db_path: Path, host: str, ocpp_port: int, http_port: int) -> Settings:
    """A fresh SQLite file (any old one is removed) and unknown stations allowed."""
    for p in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        p.unlink(missing_ok=True)
    return Settings(
        host=host,
        ocpp_port=ocpp_port,
        http_port=http_port,
        database_url=f"sqlite+aiosqlite:///{db_path}",
        allow_unknown_stations=True,
    )


async def run_demo(
    rt: Runtime,
    stations: int = 10,
    hours: float = 24.0,
    seed: int = 7,
    progress: Callable[[float], None] | None = None,
    site_limit_kw: float = 80.0,
    sessions_per_evse_per_day: float = 1.2,
    v2x: bool = False,
) -> DemoResult:
    """Simulate a site against the running node ``rt`` and count what it stored.

    All stations hang on one grid connection of ``site_limit_kw`` managed by
    the load manager (deadline-aware sharing); the EVs' real draw is sampled
    from the simulator while it runs.
    """
    host = rt.settings.host
    api_url = f"http://{host}:{rt.http_port}"
    ocpp_url = f"ws://{host}:{rt.ocpp_port}/ocpp"
    now = rt.clock.now()
    async with rt.sessionmaker() as s, s.begin():
        for token in DEMO_TOKENS:
            s.add(IdToken(id_token=token, status="Accepted", type="ISO14443", created_at=now))
    sim_speed = getattr(rt.clock, "speed", 1.0)
    ids = station_ids("DEMO", stations)
    async with rt.sessionmaker() as s, s.begin():
        values = {"import_limit_w": site_limit_kw * 1000, "policy": "deadline"}
        if v2x:
            values.update(v2x_site(now, hours))
        await repo.upsert_site(s, "demo-site", {"name": "Demo depot", **values}, now)
        await s.flush()
        for sid in ids:
            await repo.register_station(s, sid, now, None, {"site_id": "demo-site"})
    await rt.lm.reload()
    cfg = SimConfig(
        url=ocpp_url,
        stations=stations,
        evses_per_station=2,
        speed=sim_speed,
        duration_s=hours * 3600.0,
        meter_interval_s=300.0,
        sessions_per_evse_per_day=sessions_per_evse_per_day,
        id_tokens=DEMO_TOKENS,
        unknown_token_share=0.05,
        seed=seed,
        station_prefix="DEMO",
        v201_share=0.25 if v2x else 0.5,
        v21_share=0.5 if v2x else 0.0,
        bidirectional_share=0.7 if v2x else 0.0,
        # a V2G depot: cars stay for the evening peak and the night
        dwell_min_s=(6 if v2x else 1) * 3600.0,
        dwell_max_s=(14 if v2x else 10) * 3600.0,
    )
    t0 = time.monotonic()
    sim = Simulation(cfg, clock=rt.clock)  # one clock for the CSMS and the site
    peak = {"w": 0.0}
    sampler = asyncio.create_task(_sample_peak(sim, peak))
    drivers = asyncio.create_task(_drivers_consent(rt, seed)) if v2x else None
    try:
        summary = await sim.run(progress=progress)
    finally:
        sampler.cancel()
        if drivers is not None:
            drivers.cancel()
    real = time.monotonic() - t0
    await asyncio.sleep(0.2)  # let the last answers' writes settle
    async with rt.sessionmaker() as s:
        n_st = (await s.execute(select(func.count()).select_from(Station))).scalar_one()
        n_tx = (await s.execute(select(func.count()).select_from(Transaction))).scalar_one()
        # a 2.x station opens a transaction before the card is checked; a refused card
        # ends it at once (DeAuthorized): stored, but no session the simulator counts
        n_deauth = (
            await s.execute(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.stop_reason == "DeAuthorized")
            )
        ).scalar_one()
        e_wh = (
            await s.execute(select(func.coalesce(func.sum(Transaction.energy_imported_wh), 0.0)))
        ).scalar_one()
        x_wh = (
            await s.execute(select(func.coalesce(func.sum(Transaction.energy_exported_wh), 0.0)))
        ).scalar_one()
        n_v2x = (
            await s.execute(
                select(func.count()).select_from(Transaction).where(Transaction.v2x_allowed)
            )
        ).scalar_one()
        n_mv = (await s.execute(select(func.count()).select_from(MeterValue))).scalar_one()
        needs = list(
            (
                await s.execute(
                    select(Transaction).where(
                        Transaction.energy_target_wh.is_not(None),
                        Transaction.departure_at.is_not(None),
                        Transaction.state == "ended",
                    )
                )
            ).scalars()
        )
    # judged and served by the rules the dashboard's KPI uses (sitelog)
    due = [t for t in needs if need_judged(t)]
    async with rt.sessionmaker() as s:
        site = await repo.get_site(s, "demo-site")
        stations = {x.id: x for x in await repo.stations_of_site(s, "demo-site")}
    served = [
        t for t in due if t.station_id in stations and need_served(t, stations[t.station_id], site)
    ]
    peak_kwh = off_peak_kwh = saving = 0.0
    if v2x:
        async with rt.sessionmaker() as s:
            peak_kwh, off_peak_kwh = await exported_by_peak(s)
            saving = await v2g_saving(s, "demo-site", site_limit_kw * 1000)
    return DemoResult(
        api_url=api_url,
        ocpp_url=ocpp_url,
        database=rt.settings.database_url,
        stations=summary.stations,
        stations_booted=summary.stations_booted,
        sessions_started=summary.sessions_started,
        sessions_completed=summary.sessions_completed,
        sessions_rejected=summary.sessions_rejected,
        sim_energy_kwh=summary.energy_wh / 1000.0,
        csms_stations=n_st,
        csms_transactions=n_tx,
        csms_refused_transactions=n_deauth,
        csms_energy_kwh=e_wh / 1000.0,
        csms_meter_samples=n_mv,
        errors=summary.errors,
        error_samples=list(summary.error_samples)[:5],
        sim_hours=hours,
        real_seconds=real,
        site_limit_kw=site_limit_kw,
        site_peak_kw=peak["w"] / 1000.0,
        sessions_with_needs=len(due),
        sessions_served=len(served),
        v2x=v2x,
        v2x_sessions=n_v2x,
        csms_exported_kwh=x_wh / 1000.0,
        import_cost=e_wh / 1000.0 * IMPORT_TARIFF if v2x else 0.0,
        export_reward=x_wh / 1000.0 * EXPORT_TARIFF if v2x else 0.0,
        exported_peak_kwh=peak_kwh,
        exported_off_peak_kwh=off_peak_kwh,
        v2g_saving=saving,
    )


#: The V2G demo's tariffs per kWh (EUR): what drivers pay, and what they get for feeding
#: back. A kWh fed back must earn the driver more than buying it back costs, or no
#: driver should agree (and the planner does not discharge): 0.45 > 0.30. At 0.45 the
#: site gains only where discharging saves more than 0.45 - 0.30 per kWh: in the
#: evening peak (0.48 to buy or 0.44 to sell, 0.12 or 0.24 to buy back), not at
#: 0.24 with 0.12 to buy back.
CURRENCY = "EUR"
IMPORT_TARIFF = 0.30
EXPORT_TARIFF = 0.45
#: The evening peak of the demo's price day (UTC hours, [start, end))
PEAK_HOURS = (17, 21)


def v2x_site(now: datetime, hours: float) -> dict:
    """A V2G depot: planned with the LP against a day of prices with an evening peak.

    Energy is cheap at night and around noon and dear from 17:00 to 21:00, when
    the grid pays almost as much for energy fed back: cars that may discharge
    give some back in the peak and charge it again later, within their needs,
    and their drivers earn on it (``EXPORT_TARIFF`` vs ``IMPORT_TARIFF``).
    """
    slot = 3600.0
    start = now.replace(minute=0, second=0, microsecond=0)
    n = int(hours) + 26
    price, feed_in = [], []
    for i in range(n):
        hour = (start.hour + i) % 24
        peak = PEAK_HOURS[0] <= hour < PEAK_HOURS[1]
        cheap = hour < 6 or 11 <= hour < 15
        p = 0.48 if peak else 0.12 if cheap else 0.24
        price.append(p)
        feed_in.append(0.44 if peak else 0.05)
    forecast = Forecast(start, slot, tuple(price), tuple(feed_in))
    return {
        "policy": "optimal",
        "objective": "cost",
        "import_tariff_per_kwh": IMPORT_TARIFF,
        "export_tariff_per_kwh": EXPORT_TARIFF,
        "forecast": forecast.to_json(),
    }


async def _drivers_consent(rt: Runtime, seed: int, share: float = 0.8) -> None:
    """Drivers of bidirectional cars answer the 'allow discharging?' question (80 % yes)."""
    rng = random.Random(seed)
    asked: set[int] = set()
    while True:
        async with rt.sessionmaker() as s:
            rows = list(
                (
                    await s.execute(
                        select(Transaction.id).where(
                            Transaction.state == "active",
                            Transaction.energy_transfer.like("%BPT%"),
                        )
                    )
                ).scalars()
            )
        fresh = [pk for pk in rows if pk not in asked]
        for pk in fresh:
            asked.add(pk)
            if rng.random() < share:
                await rt.writer.submit(_consent_job(pk))
        if fresh:
            await rt.lm.reload()
        await rt.clock.sleep(300.0)


def _consent_job(pk: int):
    async def job(s):
        row = await s.get(Transaction, pk)
        if row is not None:
            row.v2x_allowed = True

    return job


def v2x_summary(res: DemoResult) -> str:
    """The V2G demo's closing figures, each one from the store (see tests/test_demo.py)."""
    a, b = PEAK_HOURS
    return (
        f"V2G: imported {res.csms_energy_kwh:.1f} kWh, exported {res.csms_exported_kwh:.1f} kWh"
        f" ({res.exported_peak_kwh:.1f} kWh in the {a}:00-{b}:00 peak, "
        f"{res.exported_off_peak_kwh:.1f} kWh outside it) · drivers pay "
        f"{res.import_cost:.2f} {CURRENCY} for charging and get {res.export_reward:.2f} "
        f"{CURRENCY} for what they fed back · V2G saved the site {res.v2g_saving:.2f} "
        f"{CURRENCY} (the day's sessions planned twice, with and without discharging)"
    )


EXPORT_REGISTER = "Energy.Active.Export.Register"


async def exported_by_peak(s) -> tuple[float, float]:
    """kWh fed back inside and outside the evening peak, from the stored meter values.

    Each rise of a transaction's export register between two samples is counted
    in the hour of the later sample (samples are 5 clock-minutes apart).
    """
    rows = (
        await s.execute(
            select(MeterValue.transaction_pk, MeterValue.timestamp, MeterValue.value)
            .where(
                MeterValue.measurand == EXPORT_REGISTER,
                MeterValue.phase == "",
                MeterValue.transaction_pk.is_not(None),
            )
            .order_by(MeterValue.transaction_pk, MeterValue.timestamp)
        )
    ).all()
    peak = off = 0.0
    last: dict[int, float] = {}
    for pk, ts, wh in rows:
        before = last.get(pk)
        last[pk] = wh if before is None else max(before, wh)
        if before is None or wh <= before:
            continue
        if PEAK_HOURS[0] <= ts.hour < PEAK_HOURS[1]:
            peak += wh - before
        else:
            off += wh - before
    return peak / 1000.0, off / 1000.0


async def v2g_saving(s, site_id: str, limit_w: float) -> float:
    """What discharging saved the site on the stored day, in the site's currency.

    Two LP solves of the same day: every stored session (plug-in to plug-out,
    the energy it really took net of what it fed back, its car's power on the
    phases it drew on, the energy its car offered to give back) under the
    site's limit and price day, once with the
    drivers who allowed it discharging and once with nobody discharging. The
    saving is the difference of the site's energy cost, counting what the site
    pays the drivers beyond what they pay to charge the energy back.
    """
    site = await repo.get_site(s, site_id)
    forecast = Forecast.from_json(site.forecast) if site is not None else None
    txs = list(
        (
            await s.execute(
                select(Transaction).where(
                    Transaction.started_at.is_not(None), Transaction.stopped_at.is_not(None)
                )
            )
        ).scalars()
    )
    if site is None or forecast is None or not txs:
        return 0.0
    stations = {x.id: x for x in await repo.stations_of_site(s, site_id)}
    start = forecast.start
    end = max(t.stopped_at for t in txs)
    slots = max(1, min(forecast.slots, -int(-(end - start).total_seconds() // forecast.slot_s)))
    horizon_end = start + timedelta(seconds=slots * forecast.slot_s)

    def problem(discharge: bool) -> Problem:
        vehicles = []
        for t in txs:
            arrival = max(t.started_at, start)
            departure = min(t.stopped_at, horizon_end)
            net_wh = (t.energy_imported_wh or 0.0) - (t.energy_exported_wh or 0.0)
            if departure <= arrival or net_wh <= 0 or t.station_id not in stations:
                continue
            max_w = ev_charge_w(t, stations[t.station_id], site)
            vehicles.append(
                Vehicle(
                    id=str(t.id),
                    arrival=arrival,
                    departure=departure,
                    max_charge_w=max_w,
                    energy_wh=net_wh,
                    v2x_allowed=discharge and bool(t.v2x_allowed),
                    max_discharge_w=min(t.ev_max_discharge_w or max_w, max_w),
                    # what the car offered to give back at plug-in (its V2X window)
                    v2x_floor_wh=min(0.0, t.v2x_min_energy_wh or 0.0),
                    driver_import_price=site.import_tariff_per_kwh,
                    driver_export_price=site.export_tariff_per_kwh,
                )
            )
        return Problem(
            start=start,
            slots=slots,
            slot_s=forecast.slot_s,
            vehicles=vehicles,
            import_limit_w=limit_w,
            import_price=list(forecast.import_price[:slots]),
            export_price=list(forecast.export_price[:slots]),
            objective=Objective.COST,
        )

    def cost(discharge: bool) -> float:
        plan = solve(problem(discharge))
        drivers = sum(v.driver_v2x_net or 0.0 for v in plan.vehicles.values())
        return plan.kpis.energy_cost + drivers

    return await asyncio.to_thread(lambda: cost(False) - cost(True))


async def _sample_peak(sim: Simulation, peak: dict) -> None:
    """What all simulated EVs draw together, sampled every 20 ms of real time."""
    while True:
        total = 0.0
        for station in sim.stations:
            for evse in station.evses.values():
                station.advance(evse)
                total += max(0.0, evse.power_w)
        peak["w"] = max(peak["w"], total)
        await asyncio.sleep(0.02)
