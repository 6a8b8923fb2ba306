"""Site samples (what a site imports, exports, generates, against its limit) and site KPIs.

A :class:`SiteSampler` writes one :class:`~evflex.store.tables.SiteSample`
per site every ``interval_s`` clock-seconds and publishes it as
``site.sample`` on the event bus: the dashboard's live chart follows these,
and :func:`site_kpis` sums them over a period.

Everything here runs on the CSMS's clock: samples are stamped with it, and a
session counts from when it started on it (``Transaction.csms_started_at``),
not from the station's own stamp, which may be minutes off (a drifting clock,
a simulator on an accelerated timeline).

The "uncontrolled" reference of the KPIs is the usual one of the smart
charging literature: every session charges at its EVSE's full power from the
moment it starts until it has its energy, with no discharging, on top of the
same uncontrolled load and PV. A session still running counts as charging
flat out until it reaches its target (or for as long as it runs, without one).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.events import EventBus
from evflex.smartcharging.allocation import SINGLE_PHASE_MAX_A
from evflex.smartcharging.mpc import Forecast
from evflex.store.tables import Site, SiteSample, Station, Transaction
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

KW = 1000.0
DEFAULT_EVSE_A = 32.0  # an EVSE without a configured maximum


def _kw(w: float | None) -> float | None:
    return None if w is None else round(w / KW, 3)


def sample_out(site_id: str, s: SiteSample) -> dict[str, str | float | None]:
    """A sample as the API and the event stream show it (kW)."""
    net = s.ev_import_w - s.ev_export_w + s.base_load_w - s.pv_w
    return {
        "site_id": site_id,
        "at": s.ts.isoformat(),
        "net_kw": _kw(net),
        "ev_import_kw": _kw(s.ev_import_w),
        "ev_export_kw": _kw(s.ev_export_w),
        "base_load_kw": _kw(s.base_load_w),
        "pv_kw": _kw(s.pv_w),
        "import_limit_kw": _kw(s.import_limit_w),
        "export_limit_kw": _kw(s.export_limit_w),
        "price": s.price,
    }


def site_now(site: Site, txs: list[Transaction], now: datetime) -> SiteSample:
    """The site's sample at ``now`` from its active sessions, measured load and forecast."""
    power = [t.power_w or 0.0 for t in txs]
    forecast = Forecast.from_json(site.forecast)
    base = None
    if site.base_load_a:  # measured (PUT /sites/{id}/load) beats the forecast
        base = sum(site.base_load_a) * site.voltage
    elif forecast is not None:
        base = forecast.at("base_load_w", now)
    pv = forecast.at("pv_w", now) if forecast is not None else None
    price = forecast.at("import_price", now) if forecast is not None else None
    return SiteSample(
        site_id=site.id,
        ts=now,
        ev_import_w=sum(p for p in power if p > 0),
        ev_export_w=-sum(p for p in power if p < 0),
        base_load_w=base or 0.0,
        pv_w=pv or 0.0,
        import_limit_w=site.import_limit_w,
        export_limit_w=site.export_limit_w,
        price=price if price is not None else site.import_tariff_per_kwh,
    )


class SiteSampler:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: GroupCommitWriter,
        bus: EventBus,
        clock: Clock,
        interval_s: float = 60.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.bus = bus
        self.clock = clock
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="evflex-site-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        # At most one round per real second, however fast a simulation clock runs.
        pause = max(1.0, self.interval_s / getattr(self.clock, "speed", 1.0))
        while True:
            try:
                await self.sample()
            except Exception:  # a failed round must not end the sampling
                log.exception("site sampling failed")
            await asyncio.sleep(pause)

    async def sample(self) -> list[SiteSample]:
        """Sample every site now: store, publish, return the samples."""
        now = self.clock.now()
        async with self.sessionmaker() as s:
            sites = list((await s.execute(select(Site))).scalars())
            if not sites:
                return []
            rows = await s.execute(
                select(Station.site_id, Transaction)
                .join(Transaction, Transaction.station_id == Station.id)
                .where(Station.site_id.is_not(None), Transaction.state == "active")
            )
            by_site: dict[str | None, list[Transaction]] = {}
            for site_id, tx in rows:
                by_site.setdefault(site_id, []).append(tx)
        samples = [site_now(site, by_site.get(site.id, []), now) for site in sites]

        async def job(s: AsyncSession) -> None:
            s.add_all(samples)

        await self.writer.submit(job)
        for x in samples:
            self.bus.publish("site.sample", None, **sample_out(x.site_id, x))
        return samples


async def history(
    s: AsyncSession, site_id: str, since: datetime, until: datetime | None = None
) -> list[SiteSample]:
    q = select(SiteSample).where(SiteSample.site_id == site_id, SiteSample.ts >= since)
    if until is not None:
        q = q.where(SiteSample.ts < until)
    return list((await s.execute(q.order_by(SiteSample.ts))).scalars())


# ------------------------------------------------------------------ KPIs


@dataclass
class SiteKpis:
    site_id: str
    start: datetime
    end: datetime
    samples: int
    sessions: int
    energy_imported_kwh: float
    energy_exported_kwh: float
    cost: float | None
    cost_uncontrolled: float | None
    cost_saving_pct: float | None
    peak_kw: float | None
    peak_uncontrolled_kw: float | None
    peak_reduction_pct: float | None
    drivers_with_needs: int
    drivers_served: int
    drivers_served_pct: float | None
    pv_kwh: float
    pv_self_consumption_pct: float | None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["from"] = out.pop("start").isoformat()
        out["to"] = out.pop("end").isoformat()
        return out


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return round(100.0 * part / whole, 1)


def _durations_h(ts: list[datetime], end: datetime) -> list[float]:
    """How long each sample stands for (h): up to the next one, gaps capped at 2 intervals."""
    if not ts:
        return []
    gaps = [(b - a).total_seconds() for a, b in zip(ts, ts[1:], strict=False)]
    typical = statistics.median(gaps) if gaps else 60.0
    gaps.append(min(typical, max(0.0, (end - ts[-1]).total_seconds())))
    return [min(g, 2 * typical) / 3600.0 for g in gaps]


def uncontrolled_ev_w(sessions: list[tuple[datetime, float, float]], at: datetime) -> float:
    """EV draw at ``at`` if every (start, energy Wh, max W) session charged flat out."""
    total = 0.0
    for start, energy_wh, max_w in sessions:
        if max_w <= 0 or at < start:
            continue
        if energy_wh == float("inf") or at < start + timedelta(hours=energy_wh / max_w):
            total += max_w
    return total


def started_on_our_clock(tx: Transaction) -> datetime | None:
    """When a session started on the CSMS's clock (the station's stamp for old rows)."""
    return tx.csms_started_at or tx.started_at


def ev_max_w(tx: Transaction, st: Station, site: Site) -> float:
    """The most the car draws uncontrolled: its current and the EVSE's, on its own phases."""
    amps = min(st.evse_max_current_a or DEFAULT_EVSE_A, tx.ev_max_current_a or float("inf"))
    return amps * _phases(tx, st, site) * (site.voltage or 230.0)


def _phases(tx: Transaction, st: Station, site: Site) -> int:
    return tx.ev_phases or st.phases or site.phases or 3


def deliverable_need_wh(tx: Transaction, st: Station, site: Site) -> float:
    """The stated need, capped by what the car could take alone in its stay (our clock).

    Its full power: its own current and the EVSE's, on the phases it draws on; a
    single-phase car at the site's single-phase limit (B8).
    """
    started = started_on_our_clock(tx)
    stay_h = 0.0
    if started is not None and tx.departure_at is not None:
        stay_h = max(0.0, (tx.departure_at - started).total_seconds() / 3600)
    return min(tx.energy_target_wh or 0.0, ev_charge_w(tx, st, site) * stay_h)


def ev_charge_w(tx: Transaction, st: Station, site: Site) -> float:
    """The most the car may draw on this site: as uncontrolled, but a single-phase car
    at the site's single-phase limit (B8)."""
    phases = _phases(tx, st, site)
    amps = min(st.evse_max_current_a or DEFAULT_EVSE_A, tx.ev_max_current_a or float("inf"))
    if phases == 1:
        amps = min(amps, SINGLE_PHASE_MAX_A)
    return amps * (site.voltage or 230.0) * phases


#: A car that leaves this much before its stated departure left early.
EARLY_LEAVE = timedelta(minutes=5)


def need_judged(tx: Transaction) -> bool:
    """An ended session with a stated need whose car stayed until its departure.

    A car that left early is not judged: the site planned for the time it was
    told (an optimising site may well have planned the energy for later).
    """
    return (
        tx.state != "active"
        and bool(tx.energy_target_wh)
        and tx.departure_at is not None
        and (tx.stopped_at is None or tx.stopped_at >= tx.departure_at - EARLY_LEAVE)
    )


def need_served(tx: Transaction, st: Station, site: Site) -> bool:
    """A driver is served who got the need, or all the car could take in its stay.

    5 % (and 100 Wh) are allowed for the battery's taper, which the CSMS cannot see;
    a car that reported its battery at 95 % or more took all it would. The
    dashboard's KPI and ``evflex demo`` count drivers with this one rule.
    """
    got = (tx.energy_imported_wh or 0.0) - (tx.energy_exported_wh or 0.0)
    full = tx.soc_percent is not None and tx.soc_percent >= 95.0
    return full or got >= 0.95 * deliverable_need_wh(tx, st, site) - 100.0


def site_kpis(
    site: Site,
    samples: list[SiteSample],
    txs: list[tuple[Transaction, Station]],
    start: datetime,
    end: datetime,
) -> SiteKpis:
    """KPIs of ``site`` over [start, end) from its samples and the sessions that started then."""
    hours = _durations_h([x.ts for x in samples], end)
    sessions = []
    for tx, st in txs:
        started = started_on_our_clock(tx)
        if started is None:
            continue
        max_w = ev_max_w(tx, st, site)
        energy = tx.energy_imported_wh or 0.0
        if tx.state == "active":  # still plugged in: uncontrolled, it would still be charging
            energy = max(energy, tx.energy_target_wh or float("inf"))
        sessions.append((started, energy, max_w))
    cost = cost_unc = 0.0
    priced = bool(samples) and all(x.price is not None for x in samples)
    peak = peak_unc = None
    pv_wh = pv_used_wh = 0.0
    for x, h in zip(samples, hours, strict=True):
        rest = x.base_load_w - x.pv_w
        net = x.ev_import_w - x.ev_export_w + rest
        net_unc = uncontrolled_ev_w(sessions, x.ts) + rest
        peak = net if peak is None else max(peak, net)
        peak_unc = net_unc if peak_unc is None else max(peak_unc, net_unc)
        if priced and x.price is not None:  # priced: every sample has a price
            cost += max(net, 0.0) / KW * h * x.price
            cost_unc += max(net_unc, 0.0) / KW * h * x.price
        pv_wh += x.pv_w * h
        pv_used_wh += min(x.pv_w, x.ev_import_w + x.base_load_w) * h
    needs = [(tx, st) for tx, st in txs if need_judged(tx)]
    served = sum(1 for tx, st in needs if need_served(tx, st, site))
    return SiteKpis(
        site_id=site.id,
        start=start,
        end=end,
        samples=len(samples),
        sessions=len(txs),
        energy_imported_kwh=round(sum(t.energy_imported_wh or 0 for t, _ in txs) / KW, 3),
        energy_exported_kwh=round(sum(t.energy_exported_wh or 0 for t, _ in txs) / KW, 3),
        cost=round(cost, 2) if priced else None,
        cost_uncontrolled=round(cost_unc, 2) if priced else None,
        cost_saving_pct=_pct(cost_unc - cost, cost_unc) if priced else None,
        peak_kw=_kw(peak),
        peak_uncontrolled_kw=_kw(peak_unc),
        peak_reduction_pct=(
            _pct(peak_unc - peak, peak_unc)
            if peak is not None and peak_unc is not None and peak_unc > 0
            else None
        ),
        drivers_with_needs=len(needs),
        drivers_served=served,
        drivers_served_pct=_pct(served, len(needs)),
        pv_kwh=round(pv_wh / KW, 3),
        pv_self_consumption_pct=_pct(pv_used_wh, pv_wh),
    )


async def load_kpis(s: AsyncSession, site: Site, start: datetime, end: datetime) -> SiteKpis:
    samples = await history(s, site.id, start, end)
    started = func.coalesce(Transaction.csms_started_at, Transaction.started_at)
    rows = await s.execute(
        select(Transaction, Station)
        .join(Station, Transaction.station_id == Station.id)
        .where(Station.site_id == site.id, started >= start, started < end)
    )
    return site_kpis(site, samples, [(tx, st) for tx, st in rows], start, end)
