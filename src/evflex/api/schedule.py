"""REST API of the site scheduler: forecast in, plan ahead and flexibility out."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from evflex.api import schemas as sc
from evflex.api.deps import Rt
from evflex.api.smart import KW
from evflex.scheduling.flex import flexibility
from evflex.scheduling.lp import SchedulingError, series
from evflex.services import Services
from evflex.smartcharging.mpc import DEFAULT, Forecast, MpcResult
from evflex.store import repo

router = APIRouter(prefix="/api/v1", tags=["scheduling"])

MAX_FORECAST_SLOTS = 7 * 24 * 4 * 4  # a week of 3.75-min slots is plenty


# Within sane ranges: a price of 1e306 would make the site's LP unsolvable.
Price = Annotated[float, Field(ge=-sc.MAX_PRICE, le=sc.MAX_PRICE)]
Power = Annotated[float, Field(le=sc.MAX_POWER_KW)]  # >= 0 is checked below with a reason


class ForecastIn(sc.ApiModel):
    """Step series from ``start``, one value per slot, all of the same length.

    Nothing is extrapolated: after the last slot the site's defaults hold (its
    import tariff for the price, no feed-in price, no PV, its measured base
    load). Slots that ended before now are dropped (the answer's ``warnings``
    says so); a forecast that ends before now is refused.
    """

    model_config = ConfigDict(extra="forbid")

    start: AwareDatetime
    slot_minutes: float = Field(15.0, gt=0, le=1440)
    import_price: list[Price] = Field([], max_length=MAX_FORECAST_SLOTS, description="per kWh")
    export_price: list[Price] = Field([], max_length=MAX_FORECAST_SLOTS, description="per kWh")
    pv_kw: list[Power] = Field([], max_length=MAX_FORECAST_SLOTS)
    base_load_kw: list[Power] = Field(
        [], max_length=MAX_FORECAST_SLOTS, description="Uncontrolled load"
    )

    @model_validator(mode="after")
    def _lengths(self) -> ForecastIn:
        given = {
            k: len(v)
            for k, v in (
                ("import_price", self.import_price),
                ("export_price", self.export_price),
                ("pv_kw", self.pv_kw),
                ("base_load_kw", self.base_load_kw),
            )
            if v
        }
        if not given:
            raise ValueError("give at least one series")
        if len(set(given.values())) > 1:
            raise ValueError(f"series must have the same length, got {given}")
        if any(x < 0 for x in self.pv_kw + self.base_load_kw):
            raise ValueError("pv_kw and base_load_kw must be >= 0")
        return self


class SlotOut(BaseModel):
    start: datetime
    source: Literal["forecast", "default"] = Field(
        description="Where the slot's price, PV and load come from: the forecast, or the "
        "site's defaults (outside the forecast's horizon)"
    )
    import_kw: float
    export_kw: float
    import_limit_kw: float | None
    pv_kw: float
    base_load_kw: float
    import_price: float


class VehicleOut(BaseModel):
    station_id: str
    evse_id: int
    departure: datetime
    need_kwh: float | None
    planned_kwh: float
    feasible: bool
    stated_need: bool = Field(description="The driver or EV gave departure and energy")
    max_deliverable_kwh: float | None = None
    cap_a_now: float | None = None
    power_kw: list[float]


class PlanAheadOut(BaseModel):
    site_id: str
    at: datetime
    applied: bool = Field(description="True when the site's policy is 'optimal' and this is sent")
    objective: str
    slot_s: float
    solve_ms: float
    forecast_end: datetime | None = Field(
        description="The end of the forecast's horizon (none stored: null); the site's "
        "defaults hold after it"
    )
    slots: list[SlotOut]
    vehicles: list[VehicleOut]
    kpis: dict[str, float | int | None]
    warnings: list[str] = Field([], description="What was odd in the input and how it was taken")


class FlexSlotOut(BaseModel):
    start: datetime
    planned_kw: float
    min_kw: float
    max_kw: float
    up_kw: float
    down_kw: float


def _finite_kw(w: float) -> float | None:
    return None if w == float("inf") else w / KW


def plan_out(
    site_id: str, r: MpcResult, applied: bool, warnings: list[str] | None = None
) -> PlanAheadOut:
    p, s = r.problem, r.schedule
    sources = r.sources if len(r.sources) == p.slots else [DEFAULT] * p.slots
    base = series(p.base_load_w, p.slots, "base_load_w").tolist()
    pv = series(p.pv_w, p.slots, "pv_w").tolist()
    price = series(p.import_price, p.slots, "import_price").tolist()
    slots = [
        SlotOut(
            start=p.slot_start(t),
            source=sources[t],
            import_kw=s.import_w[t] / KW,
            export_kw=s.export_w[t] / KW,
            import_limit_kw=_finite_kw(s.import_limit_w[t]),
            pv_kw=pv[t] / KW,
            base_load_kw=base[t] / KW,
            import_price=price[t],
        )
        for t in range(p.slots)
    ]
    vehicles = []
    for v in p.vehicles:
        vp = s.vehicles[v.id]
        station_id, _, evse = v.id.rpartition("/")
        vehicles.append(
            VehicleOut(
                station_id=station_id,
                evse_id=int(evse),
                departure=v.departure,
                need_kwh=None if vp.need_wh is None else vp.need_wh / KW,
                planned_kwh=vp.energy_wh / KW,
                feasible=vp.feasible,
                stated_need=v.id in r.stated,
                max_deliverable_kwh=None
                if vp.max_deliverable_wh is None
                else vp.max_deliverable_wh / KW,
                cap_a_now=r.caps.get(v.id),
                power_kw=[x / KW for x in vp.power_w],
            )
        )
    k = s.kpis
    return PlanAheadOut(
        site_id=site_id,
        at=r.at,
        applied=applied,
        objective=str(p.objective),
        slot_s=p.slot_s,
        solve_ms=s.solve_s * 1000,
        forecast_end=r.forecast_end,
        slots=slots,
        vehicles=vehicles,
        kpis={name: getattr(k, name) for name in k.__dataclass_fields__},
        warnings=warnings or [],
    )


async def _plan(rt: Services, site_id: str) -> tuple[MpcResult, bool]:
    async with rt.sessionmaker() as s:
        if await repo.get_site(s, site_id) is None:
            raise HTTPException(404, f"site '{site_id}' does not exist")
    try:
        result, applied = await rt.lm.plan_ahead(site_id)
    except SchedulingError as exc:  # stored values the solver refuses
        raise HTTPException(409, f"site '{site_id}' cannot be planned ahead: {exc}") from None
    if result is None:
        status = rt.lm.status.get(site_id)
        if status is not None and status.last_error:
            raise HTTPException(409, f"site '{site_id}' {status.last_error}")
        raise HTTPException(404, f"site '{site_id}' does not exist")
    return result, applied


@router.get("/sites/{site_id}/plan", response_model=PlanAheadOut)
async def get_plan(site_id: str, rt: Rt):
    """The site's schedule ahead: per slot import, limit, PV, load, price; per EV power.

    For a site whose policy is not ``optimal`` this is what the scheduler
    would do (``applied: false``); nothing is sent.
    """
    result, applied = await _plan(rt, site_id)
    return plan_out(site_id, result, applied)


@router.put("/sites/{site_id}/forecast", response_model=PlanAheadOut)
async def put_forecast(site_id: str, body: ForecastIn, rt: Rt):
    """Prices, PV and uncontrolled load ahead; the site is planned again at once.

    422 with the reason for what cannot be right (series of unequal length, a
    slot length <= 0, a time without zone, a value that is not a number,
    negative PV or load, a forecast that ends before now); a forecast that
    starts in the past is taken from now on, and ``warnings`` says so.
    """
    forecast = Forecast(
        start=body.start,
        slot_s=body.slot_minutes * 60,
        import_price=tuple(body.import_price),
        export_price=tuple(body.export_price),
        pv_w=tuple(x * KW for x in body.pv_kw),
        base_load_w=tuple(x * KW for x in body.base_load_kw),
    )
    if problems := forecast.problems():
        raise HTTPException(422, "; ".join(problems))
    try:
        forecast, warnings = forecast.from_now(rt.clock.now())
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None

    async def job(s):
        site = await repo.get_site(s, site_id)
        if site is None:
            return False
        site.forecast = forecast.to_json()
        site.updated_at = rt.clock.now()
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(404, f"site '{site_id}' does not exist")
    await rt.lm.rebalance_now(site_id, only_site_row=True)
    result, applied = await _plan(rt, site_id)
    return plan_out(site_id, result, applied, warnings)


@router.get("/sites/{site_id}/flexibility", response_model=list[FlexSlotOut])
async def get_flexibility(
    site_id: str, rt: Rt, slots: int = Query(8, ge=1, le=96, description="Slots ahead")
):
    """How far the site's net import could go down or up in each slot ahead
    without any driver getting less than planned (for an aggregator or DSO)."""
    result, _ = await _plan(rt, site_id)
    last = min(result.problem.slots, slots) - 1
    try:
        flex = await asyncio.to_thread(flexibility, result.problem, result.schedule, 0, last)
    except SchedulingError as exc:
        raise HTTPException(409, f"site '{site_id}' cannot be planned ahead: {exc}") from None
    return [
        FlexSlotOut(
            start=result.problem.slot_start(f.slot),
            planned_kw=f.planned_w / KW,
            min_kw=f.min_w / KW,
            max_kw=f.max_w / KW,
            up_kw=f.up_w / KW,
            down_kw=f.down_w / KW,
        )
        for f in flex
    ]
