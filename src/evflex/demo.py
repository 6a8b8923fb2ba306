"""``evflex demo``: a CSMS on a fresh SQLite file and a simulated site, one command."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from evflex.app import Runtime
from evflex.config import Settings
from evflex.sim import SimConfig, Simulation
from evflex.store.tables import IdToken, MeterValue, Station, Transaction

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
    error_samples: list[str] = field(default_factory=list)
    sim_hours: float = 0.0
    real_seconds: float = 0.0


DEMO_TOKENS = [f"DEMO-{i:04d}" for i in range(1, 41)]


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
    speed: float | None = None,
    seed: int = 7,
    progress: Callable[[float], None] | None = None,
) -> DemoResult:
    """Simulate a site against the running node ``rt`` and count what it stored."""
    host = rt.settings.host
    api_url = f"http://{host}:{rt.http_port}"
    ocpp_url = f"ws://{host}:{rt.ocpp_port}/ocpp"
    now = rt.clock.now()
    async with rt.sessionmaker() as s, s.begin():
        for token in DEMO_TOKENS:
            s.add(IdToken(id_token=token, status="Accepted", type="ISO14443", created_at=now))
    sim_speed = speed if speed is not None else max(1.0, hours * 3600.0 / 40.0)
    cfg = SimConfig(
        url=ocpp_url,
        stations=stations,
        v201_share=0.5,
        evses_per_station=2,
        speed=sim_speed,
        duration_s=hours * 3600.0,
        meter_interval_s=300.0,
        sessions_per_evse_per_day=2.5,
        id_tokens=DEMO_TOKENS,
        unknown_token_share=0.05,
        seed=seed,
        station_prefix="DEMO",
    )
    t0 = time.monotonic()
    summary = await Simulation(cfg).run(progress=progress)
    real = time.monotonic() - t0
    await asyncio.sleep(0.2)  # let the last answers' writes settle
    async with rt.sessionmaker() as s:
        n_st = (await s.execute(select(func.count()).select_from(Station))).scalar_one()
        n_tx = (await s.execute(select(func.count()).select_from(Transaction))).scalar_one()
        e_wh = (
            await s.execute(select(func.coalesce(func.sum(Transaction.energy_imported_wh), 0.0)))
        ).scalar_one()
        n_mv = (await s.execute(select(func.count()).select_from(MeterValue))).scalar_one()
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
        csms_energy_kwh=e_wh / 1000.0,
        csms_meter_samples=n_mv,
        errors=summary.errors,
        error_samples=list(summary.error_samples)[:5],
        sim_hours=hours,
        real_seconds=real,
    )
