"""Charge records and tariffs: /api/v1/charge-records, /api/v1/sites/{id}/tariff.

A viewer sees id tokens masked (all but their last 4 characters) and may not
filter by one; operators and admins see them whole.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evflex.api.deps import Rt
from evflex.api.schemas import ApiModel, BillOut, Int64, UtcDatetime
from evflex.billing import KWH, hhmm, week_map
from evflex.services import Services
from evflex.store import records
from evflex.store.record_tables import ChargeRecord, SiteTariff
from evflex.store.tables import Site
from evflex.web.auth import Principal, authorize

router = APIRouter(prefix="/api/v1")
TAGS: list = ["charge records"]
MAX_LIMIT = 1000


# ------------------------------------------------------------------ models


class TouWindow(ApiModel):
    model_config = ConfigDict(extra="forbid")

    start: str = Field(description='"HH:MM" local time the window starts')
    end: str = Field(description='"HH:MM" (up to "24:00"); not after start: runs past midnight')
    days: list[Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]] | None = Field(
        None, description="Days the window starts on (default: every day)"
    )
    price_per_kwh: float = Field(ge=0)

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str) -> str:
        hhmm(v)
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> TouWindow:
        if hhmm(self.start) == 1440:
            raise ValueError("start must be before 24:00")
        if hhmm(self.start) == hhmm(self.end) % 1440 and self.end != "24:00":
            raise ValueError(f"window {self.start}-{self.end} is empty (a whole day: 00:00-24:00)")
        return self


class TariffIn(ApiModel):
    model_config = ConfigDict(extra="forbid")

    energy_price_per_kwh: float = Field(
        ge=0, description="Price of imported energy outside windows"
    )
    time_of_use: list[TouWindow] = Field(default_factory=list, max_length=100)
    feed_in_reward_per_kwh: float = Field(0.0, description="Paid per kWh fed back (may be < 0)")
    idle_fee_per_minute: float = Field(0.0, ge=0)
    idle_grace_minutes: float = Field(0.0, ge=0)
    timezone: str = Field("UTC", description="IANA time zone of the windows")
    valid_from: datetime | None = Field(None, description="Default: now")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{v}' is not an IANA time zone") from None
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> TariffIn:
        week_map([w.model_dump() for w in self.time_of_use])
        return self


class TariffOut(BaseModel):
    version: int
    site_id: str
    energy_price_per_kwh: float
    time_of_use: list[dict]
    feed_in_reward_per_kwh: float
    idle_fee_per_minute: float
    idle_grace_minutes: float
    timezone: str
    valid_from: datetime
    created_at: datetime


class SiteTariffOut(BaseModel):
    site_id: str
    currency: str
    current: TariffOut | None = Field(description="The version in force now")
    fallback: dict | None = Field(
        description="Without a version in force: the site's import/export prices"
    )
    history: list[TariffOut] = Field(description="Every version, newest first")


class ChargeRecordOut(BaseModel):
    id: int
    transaction: int
    transaction_id: str
    station_id: str
    evse_id: int | None
    connector_id: int | None
    site_id: str | None
    id_token: str | None
    started_at: datetime
    stopped_at: datetime
    station_started_at: datetime | None
    station_stopped_at: datetime | None
    duration_s: float
    stop_reason: str | None
    energy_imported_kwh: float
    energy_exported_kwh: float
    peak_import_kw: float | None
    peak_export_kw: float | None
    departure_at: datetime | None
    energy_need_kwh: float | None
    need_met: Literal["yes", "no", "unknown"]
    charging_s: float
    discharging_s: float
    idle_s: float
    currency: str
    energy_cost: float | None
    feed_in_reward: float | None
    idle_fee: float | None
    total_cost: float | None
    cost_error: str | None


class ChargeRecordDetail(ChargeRecordOut):
    cost_detail: list[dict] | None = Field(description="Energy and cost per price period")
    tariff: dict | None = Field(description="The tariff that priced it")


# ------------------------------------------------------------------ helpers


def mask(token: str | None) -> str | None:
    """A viewer's view of an id token: its last 4 characters."""
    if token is None:
        return None
    return "****" + (token[-4:] if len(token) > 4 else "")


def _k(wh: float | None) -> float | None:
    return None if wh is None else round(wh / KWH, 3)


def record_out(r: ChargeRecord, who: Principal, cls: type[ChargeRecordOut] = ChargeRecordOut):
    extra = {"cost_detail": r.cost_detail, "tariff": r.tariff} if cls is ChargeRecordDetail else {}
    return cls(
        id=r.id,
        transaction=r.transaction_pk,
        transaction_id=r.transaction_id,
        station_id=r.station_id,
        evse_id=r.evse_id,
        connector_id=r.connector_id,
        site_id=r.site_id,
        id_token=r.id_token if who.role != "viewer" else mask(r.id_token),
        started_at=r.started_at,
        stopped_at=r.stopped_at,
        station_started_at=r.station_started_at,
        station_stopped_at=r.station_stopped_at,
        duration_s=(r.stopped_at - r.started_at).total_seconds(),
        stop_reason=r.stop_reason,
        energy_imported_kwh=_k(r.energy_imported_wh),
        energy_exported_kwh=_k(r.energy_exported_wh),
        peak_import_kw=_k(r.peak_import_w),
        peak_export_kw=_k(r.peak_export_w),
        departure_at=r.departure_at,
        energy_need_kwh=_k(r.energy_need_wh),
        need_met=r.need_met,
        charging_s=r.charging_s,
        discharging_s=r.discharging_s,
        idle_s=r.idle_s,
        currency=r.currency,
        energy_cost=r.energy_cost,
        feed_in_reward=r.feed_in_reward,
        idle_fee=r.idle_fee,
        total_cost=r.total_cost,
        cost_error=r.cost_error,
        **extra,
    )


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def record_filter(
    who: Annotated[Principal, Depends(authorize)],
    station_id: Annotated[str | None, Query(max_length=48)] = None,
    site_id: Annotated[str | None, Query(max_length=64)] = None,
    id_token: Annotated[str | None, Query(max_length=255)] = None,
    start: Annotated[UtcDatetime | None, Query(alias="from", description="Sessions from")] = None,
    end: Annotated[
        UtcDatetime | None, Query(alias="to", description="Sessions started before")
    ] = None,
) -> records.RecordFilter:
    """The filters of a record query (on the session's start); 422 if ``to`` < ``from``."""
    start, end = _utc(start), _utc(end)
    if start is not None and end is not None and end < start:
        raise HTTPException(422, f"'to' ({end.isoformat()}) is before 'from' ({start.isoformat()})")
    if id_token is not None and who.role == "viewer":
        raise HTTPException(403, "filtering by id token needs the role 'operator'")
    return records.RecordFilter(station_id, site_id, id_token, start, end)


Filter = Annotated[records.RecordFilter, Depends(record_filter)]
Who = Annotated[Principal, Depends(authorize)]


# ------------------------------------------------------------------ charge records


@router.get("/charge-records", response_model=list[ChargeRecordOut], tags=TAGS)
async def list_records(
    rt: Rt,
    who: Who,
    f: Filter,
    request: Request,
    response: Response,
    offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
):
    """Charge records, newest start first; ``X-Total-Count`` and a ``Link`` rel="next"."""
    async with rt.sessionmaker() as s:
        total = await records.count_records(s, f)
        rows = list((await s.execute(records.records_query(f, offset, limit))).scalars())
    response.headers["X-Total-Count"] = str(total)
    if offset + len(rows) < total:
        nxt = request.url.include_query_params(offset=offset + len(rows), limit=limit)
        response.headers["Link"] = f'<{nxt}>; rel="next"'
    return [record_out(r, who) for r in rows]


CSV_COLUMNS = (
    "id", "transaction", "transaction_id", "station_id", "evse_id", "connector_id", "site_id",
    "id_token", "started_at", "stopped_at", "duration_s", "stop_reason", "energy_imported_kwh",
    "energy_exported_kwh", "peak_import_kw", "peak_export_kw", "departure_at", "energy_need_kwh",
    "need_met", "charging_s", "discharging_s", "idle_s", "energy_cost", "feed_in_reward",
    "idle_fee", "total_cost", "currency", "cost_error",
)  # fmt: skip


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text  # never a formula in a spreadsheet
    return text


async def _csv_rows(rt: Services, who: Principal, f: records.RecordFilter) -> AsyncIterator[str]:
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_COLUMNS)
    offset, page = 0, 500
    while True:
        async with rt.sessionmaker() as s:
            rows = list((await s.execute(records.records_query(f, offset, page))).scalars())
        for r in rows:
            d = record_out(r, who).model_dump()
            out.writerow([_cell(d[c]) for c in CSV_COLUMNS])
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
        if len(rows) < page:
            return
        offset += page


@router.get("/charge-records.csv", tags=TAGS, response_class=StreamingResponse)
async def records_csv(rt: Rt, who: Who, f: Filter):
    """The same records as CSV (same filters, all of them), streamed; a header row."""
    return StreamingResponse(
        _csv_rows(rt, who, f),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="charge-records.csv"'},
    )


@router.get("/charge-records/{record_id}", response_model=ChargeRecordDetail, tags=TAGS)
async def get_record(record_id: Int64, rt: Rt, who: Who):
    """One record with the tariff that priced it and its cost per price period."""
    async with rt.sessionmaker() as s:
        row = await s.get(ChargeRecord, record_id)
    if row is None:
        raise HTTPException(404, f"charge record {record_id} not found")
    return record_out(row, who, ChargeRecordDetail)


def bill_of_record(r: ChargeRecord) -> BillOut:
    """A transaction's bill from its charge record (the total includes the idle fee)."""
    tariff = r.tariff or {}
    return BillOut(
        transaction=r.transaction_pk,
        station_id=r.station_id,
        site_id=r.site_id,
        energy_imported_kwh=round(r.energy_imported_wh / KWH, 4),
        energy_exported_kwh=round(r.energy_exported_wh / KWH, 4),
        import_tariff_per_kwh=tariff.get("energy_price_per_kwh"),
        export_tariff_per_kwh=tariff.get("feed_in_reward_per_kwh"),
        import_cost=r.energy_cost,
        export_reward=r.feed_in_reward,
        total=r.total_cost,
    )


# ------------------------------------------------------------------ tariffs


def tariff_out(t: SiteTariff) -> TariffOut:
    return TariffOut(
        version=t.id,
        site_id=t.site_id,
        energy_price_per_kwh=t.energy_price_per_kwh,
        time_of_use=t.time_of_use or [],
        feed_in_reward_per_kwh=t.feed_in_reward_per_kwh,
        idle_fee_per_minute=t.idle_fee_per_minute,
        idle_grace_minutes=t.idle_grace_minutes,
        timezone=t.timezone,
        valid_from=t.valid_from,
        created_at=t.created_at,
    )


@router.get("/sites/{site_id}/tariff", response_model=SiteTariffOut, tags=TAGS)
async def get_tariff(site_id: str, rt: Rt):
    """The site's tariff in force now, and every version (a record uses the version in
    force at its session's start)."""
    now = rt.clock.now()
    async with rt.sessionmaker() as s:
        site = await s.get(Site, site_id)
        if site is None:
            raise HTTPException(404, f"site '{site_id}' not found")
        history = await records.tariff_versions(s, site_id)
    current = next((t for t in history if t.valid_from <= now), None)
    return SiteTariffOut(
        site_id=site_id,
        currency=rt.service.currency,
        current=tariff_out(current) if current is not None else None,
        fallback=records.site_fallback(site) if current is None else None,
        history=[tariff_out(t) for t in history],
    )


@router.put("/sites/{site_id}/tariff", response_model=TariffOut, tags=TAGS)
async def put_tariff(site_id: str, body: TariffIn, rt: Rt):
    """A new version of the site's tariff, in force from ``valid_from`` (default now);
    earlier versions are kept."""
    now = rt.clock.now()

    async def job(s) -> SiteTariff | None:
        if await s.get(Site, site_id) is None:
            return None
        row = SiteTariff(
            site_id=site_id,
            energy_price_per_kwh=body.energy_price_per_kwh,
            time_of_use=[w.model_dump(exclude_none=True) for w in body.time_of_use],
            feed_in_reward_per_kwh=body.feed_in_reward_per_kwh,
            idle_fee_per_minute=body.idle_fee_per_minute,
            idle_grace_minutes=body.idle_grace_minutes,
            timezone=body.timezone,
            valid_from=_utc(body.valid_from) or now,
            created_at=now,
        )
        s.add(row)
        await s.flush()
        return row

    row = await rt.writer.submit(job)
    if row is None:
        raise HTTPException(404, f"site '{site_id}' not found")
    rt.bus.publish("tariff.changed", None, site_id=site_id, version=row.id,
                   valid_from=row.valid_from.isoformat())  # fmt: skip
    return tariff_out(row)
