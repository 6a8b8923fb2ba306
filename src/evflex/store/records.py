"""Charge records (one per ended transaction) and site tariffs in the store."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.billing import EnergyPoint, price, usage
from evflex.domain.model import (
    ENERGY_EXPORT_REGISTER,
    ENERGY_IMPORT_REGISTER,
    POWER_EXPORT,
    POWER_IMPORT,
    TransactionState,
)
from evflex.smartcharging.sitelog import need_served
from evflex.store import repo
from evflex.store.record_tables import ChargeRecord, SiteTariff
from evflex.store.tables import MeterValue, Site, Station, Transaction
from evflex.store.writer import queued_rows

log = logging.getLogger(__name__)

_REGISTERS = {ENERGY_IMPORT_REGISTER: "import", ENERGY_EXPORT_REGISTER: "export"}
_POWERS = {POWER_IMPORT: "import", POWER_EXPORT: "export"}
_WANTED = {*_REGISTERS, *_POWERS}
#: A need counts as met if at most this much (Wh) is missing (meter rounding).
NEED_TOLERANCE_WH = 1.0


# ------------------------------------------------------------------ tariffs


async def tariff_versions(session: AsyncSession, site_id: str) -> list[SiteTariff]:
    """Every version of a site's tariff, newest first."""
    res = await session.execute(
        select(SiteTariff)
        .where(SiteTariff.site_id == site_id)
        .order_by(SiteTariff.valid_from.desc(), SiteTariff.id.desc())
    )
    return list(res.scalars())


async def tariff_at(session: AsyncSession, site_id: str, at: datetime) -> SiteTariff | None:
    """The version in force at ``at``: the latest ``valid_from`` not after it."""
    res = await session.execute(
        select(SiteTariff)
        .where(SiteTariff.site_id == site_id, SiteTariff.valid_from <= at)
        .order_by(SiteTariff.valid_from.desc(), SiteTariff.id.desc())
        .limit(1)
    )
    return res.scalar_one_or_none()


def tariff_snapshot(row: SiteTariff) -> dict:
    """A tariff version as plain JSON (what a record keeps)."""
    return {
        "source": "tariff",
        "version": row.id,
        "site_id": row.site_id,
        "valid_from": row.valid_from.isoformat(),
        "energy_price_per_kwh": row.energy_price_per_kwh,
        "time_of_use": row.time_of_use or [],
        "feed_in_reward_per_kwh": row.feed_in_reward_per_kwh,
        "idle_fee_per_minute": row.idle_fee_per_minute,
        "idle_grace_minutes": row.idle_grace_minutes,
        "timezone": row.timezone,
    }


def site_fallback(site: Site) -> dict | None:
    """The site's own import/export prices as a tariff (None: it has no import price)."""
    if site.import_tariff_per_kwh is None:
        return None
    return {
        "source": "site",
        "version": None,
        "site_id": site.id,
        "valid_from": None,
        "energy_price_per_kwh": site.import_tariff_per_kwh,
        "time_of_use": [],
        "feed_in_reward_per_kwh": site.export_tariff_per_kwh or 0.0,
        "idle_fee_per_minute": 0.0,
        "idle_grace_minutes": 0.0,
        "timezone": "UTC",
    }


async def tariff_for(
    session: AsyncSession, site_id: str | None, at: datetime
) -> tuple[dict | None, str | None]:
    """(tariff snapshot, None) in force at ``at`` for a site, or (None, why there is none)."""
    if site_id is None:
        return None, "the station belongs to no site"
    row = await tariff_at(session, site_id, at)
    if row is not None:
        return tariff_snapshot(row), None
    site = await session.get(Site, site_id)
    if site is None:
        return None, f"site '{site_id}' does not exist"
    fallback = site_fallback(site)
    if fallback is None:
        return None, f"site '{site_id}' has no tariff and no import_tariff_per_kwh"
    return fallback, None


# ------------------------------------------------------------------ building a record


@dataclass(slots=True)
class _Readings:
    points: list[EnergyPoint]
    peak_import_w: float | None
    peak_export_w: float | None


async def _readings(session: AsyncSession, tx: Transaction) -> _Readings:
    """The transaction's energy registers (merged per time stamp) and power peaks."""
    res = await session.execute(
        select(MeterValue.timestamp, MeterValue.measurand, MeterValue.phase, MeterValue.value)
        .where(
            MeterValue.transaction_pk == tx.id,
            MeterValue.measurand.in_(_WANTED),
            MeterValue.location.in_(["", "Outlet"]),
        )
        .order_by(MeterValue.timestamp)
    )
    rows = list(res.all())
    rows += [  # this batch's readings, written after its jobs
        (r["timestamp"], r["measurand"], r["phase"], r["value"])
        for r in queued_rows(session, repo.SAMPLES)
        if r["transaction_pk"] == tx.id
        and r["measurand"] in _WANTED
        and r["location"] in ("", "Outlet")
    ]
    registers: list[tuple[datetime, str, float]] = []
    power: dict[datetime, dict[str, dict[str, float]]] = {}
    for ts, measurand, phase, value in rows:
        if measurand in _REGISTERS:
            if not phase:
                registers.append((ts, _REGISTERS[measurand], value))
        else:
            power.setdefault(ts, {}).setdefault(_POWERS[measurand], {})[phase] = value
    if tx.meter_start_wh is not None and tx.started_at is not None:
        registers.append((tx.started_at, "import", tx.meter_start_wh))
    if tx.meter_stop_wh is not None and tx.stopped_at is not None:
        registers.append((tx.stopped_at, "import", tx.meter_stop_wh))
    registers.sort(key=lambda r: r[0])
    level = {
        kind: min((v for _, k, v in registers if k == kind), default=0.0)
        for kind in ("import", "export")
    }
    points: list[EnergyPoint] = []
    for ts, kind, value in registers:
        level[kind] = max(level[kind], value)  # registers only rise
        point = EnergyPoint(ts, level["import"], level["export"])
        if points and points[-1].at == ts:
            points[-1] = point
        else:
            points.append(point)
    peaks: dict[str, float | None] = {"import": None, "export": None}
    for by_kind in power.values():
        signed = sum(_total(by_kind.get("import"))) - sum(_total(by_kind.get("export")))
        kind, value = ("import", signed) if signed >= 0 else ("export", -signed)
        if peaks[kind] is None or value > peaks[kind]:
            peaks[kind] = value
    return _Readings(points, peaks["import"], peaks["export"])


def _total(by_phase: dict[str, float] | None) -> list[float]:
    """The total of one power measurand: its phase-less value, else the phases' sum."""
    if not by_phase:
        return []
    return [by_phase[""]] if "" in by_phase else list(by_phase.values())


def _net_at(points: list[EnergyPoint], at: datetime) -> float:
    """Net energy (import minus export) delivered from the first reading until ``at``."""
    if not points:
        return 0.0
    first = points[0].import_wh - points[0].export_wh
    prev = points[0]
    for p in points:
        if p.at > at:
            span = (p.at - prev.at).total_seconds()
            share = (at - prev.at).total_seconds() / span if span > 0 else 0.0
            net = prev.import_wh - prev.export_wh
            return net + share * ((p.import_wh - p.export_wh) - net) - first
        prev = p
    return prev.import_wh - prev.export_wh - first


def _need_met(
    tx: Transaction, st: Station | None, site: Site | None, points: list[EnergyPoint],
    stop: datetime,
) -> str:  # fmt: skip
    """``yes`` when the need was there by departure, or when the driver is served by the
    rule the dashboard's KPI and ``evflex demo`` use (all the car could take in its stay)."""
    if tx.energy_target_wh is None:
        return "unknown"
    by = min(tx.departure_at, stop) if tx.departure_at is not None else stop
    if _net_at(points, by) >= tx.energy_target_wh - NEED_TOLERANCE_WH:
        return "yes"
    return "yes" if st is not None and site is not None and need_served(tx, st, site) else "no"


async def create_record(
    session: AsyncSession, tx: Transaction, stopped_at: datetime, currency: str, now: datetime
) -> ChargeRecord | None:
    """Write the charge record of ``tx`` (just ended; ``stopped_at`` on the CSMS's clock).

    None if it has one already (a repeated end). A session that cannot be priced
    still gets its record: costs null and ``cost_error`` saying why."""
    have = await session.execute(
        select(ChargeRecord.id).where(ChargeRecord.transaction_pk == tx.id)
    )
    if have.first() is not None:
        return None
    station = await session.get(Station, tx.station_id)
    site_id = station.site_id if station is not None else None
    site = await session.get(Site, site_id) if site_id is not None else None
    readings = await _readings(session, tx)
    station_stop = tx.stopped_at or stopped_at
    started = tx.csms_started_at or tx.started_at or stopped_at
    spent = usage(readings.points, station_stop)
    rec = ChargeRecord(
        transaction_pk=tx.id,
        transaction_id=tx.transaction_id,
        station_id=tx.station_id,
        evse_id=tx.evse_id,
        connector_id=tx.connector_id,
        site_id=site_id,
        id_token=tx.id_token,
        started_at=started,
        stopped_at=max(stopped_at, started),
        station_started_at=tx.started_at,
        station_stopped_at=tx.stopped_at,
        stop_reason=tx.stop_reason,
        energy_imported_wh=tx.energy_imported_wh or 0.0,
        energy_exported_wh=tx.energy_exported_wh or 0.0,
        peak_import_w=readings.peak_import_w,
        peak_export_w=readings.peak_export_w,
        departure_at=tx.departure_at,
        energy_need_wh=tx.energy_target_wh,
        need_met=_need_met(tx, station, site, readings.points, station_stop),
        charging_s=spent.charging_s,
        discharging_s=spent.discharging_s,
        idle_s=spent.idle_s,
        currency=currency,
        created_at=now,
    )
    try:
        tariff, why = await tariff_for(session, site_id, started)
        if tariff is not None:
            cost = price(tariff, readings.points, spent.idle_s)
            rec.energy_cost, rec.feed_in_reward = cost.energy_cost, cost.feed_in_reward
            rec.idle_fee, rec.total_cost, rec.cost_detail = cost.idle_fee, cost.total, cost.detail
            rec.tariff = tariff
        rec.cost_error = why
    except Exception as exc:  # a record without a cost beats no record
        log.exception("transaction %s: not priced", tx.id)
        rec.cost_error = f"pricing failed: {exc}"
        rec.tariff = rec.energy_cost = rec.feed_in_reward = rec.idle_fee = None
        rec.total_cost = rec.cost_detail = None
    session.add(rec)
    await session.flush()
    return rec


async def rebuild(session: AsyncSession, currency: str, now: datetime) -> int:
    """Write the missing records of ended transactions (ended before records existed);
    their stop on the CSMS's clock is taken as the station's stamp. Returns how many."""
    res = await session.execute(
        select(Transaction)
        .outerjoin(ChargeRecord, ChargeRecord.transaction_pk == Transaction.id)
        .where(Transaction.state == TransactionState.ENDED.value, ChargeRecord.id.is_(None))
        .order_by(Transaction.id)
    )
    made = 0
    for tx in res.scalars().all():
        if await create_record(session, tx, tx.stopped_at or tx.updated_at, currency, now):
            made += 1
    return made


# ------------------------------------------------------------------ queries


@dataclass(slots=True)
class RecordFilter:
    station_id: str | None = None
    site_id: str | None = None
    id_token: str | None = None
    start: datetime | None = None  # on the session's start, inclusive
    end: datetime | None = None  # exclusive


def _filtered(stmt: Select, f: RecordFilter) -> Select:
    conds = []
    if f.station_id is not None:
        conds.append(ChargeRecord.station_id == f.station_id)
    if f.site_id is not None:
        conds.append(ChargeRecord.site_id == f.site_id)
    if f.id_token is not None:
        conds.append(ChargeRecord.id_token == f.id_token)
    if f.start is not None:
        conds.append(ChargeRecord.started_at >= f.start)
    if f.end is not None:
        conds.append(ChargeRecord.started_at < f.end)
    return stmt.where(and_(*conds)) if conds else stmt


async def count_records(session: AsyncSession, f: RecordFilter) -> int:
    res = await session.execute(_filtered(select(func.count(ChargeRecord.id)), f))
    return int(res.scalar() or 0)


def records_query(f: RecordFilter, offset: int = 0, limit: int | None = None) -> Select:
    """Records matching ``f``, newest start first."""
    stmt = _filtered(select(ChargeRecord), f).order_by(
        ChargeRecord.started_at.desc(), ChargeRecord.id.desc()
    )
    stmt = stmt.offset(offset)
    return stmt.limit(limit) if limit is not None else stmt


async def record_of_transaction(session: AsyncSession, tx_pk: int) -> ChargeRecord | None:
    res = await session.execute(select(ChargeRecord).where(ChargeRecord.transaction_pk == tx_pk))
    return res.scalar_one_or_none()
