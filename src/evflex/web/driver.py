"""The driver's API behind ``/charge/{station_id}/{evse_id}`` (the QR code on the charger).

No operator login: whoever opens the page at the charger first while a
session runs there gets a token for that session (the phone keeps it). A
second device is refused with 409, so a passer-by cannot take over a car
whose driver already opened the page. The token is good only while that
transaction runs; ``Authorization: Bearer <token>`` carries it.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from evflex.api import schemas as sc
from evflex.api.routes import bidirectional, v2x_state
from evflex.api.smart import KW, Rt, apply_preferences, apply_priority
from evflex.clock import utcnow
from evflex.smartcharging.planner import evse_key
from evflex.store import repo
from evflex.store.tables import DriverToken, Transaction
from evflex.web.auth import sha256

if TYPE_CHECKING:
    from evflex.app import Runtime

router = APIRouter(prefix="/api/v1/driver", tags=["driver"])


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    station_id: str = Field(min_length=1, max_length=48)
    evse_id: int = Field(ge=1)


class ClaimOut(BaseModel):
    token: str
    transaction: int


class DriverPrefsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    departure_time: AwareDatetime | None = None
    energy_kwh: float | None = Field(None, gt=0, le=1000, description="Energy still wanted")
    target_soc: float | None = Field(None, gt=0, le=100, description="Or: SoC wanted (%)")
    battery_kwh: float | None = Field(None, gt=0, le=1000, description="Battery size (kWh)")
    allow_discharge: bool | None = None

    @model_validator(mode="after")
    def _one_need(self) -> DriverPrefsIn:
        if self.energy_kwh is not None and self.target_soc is not None:
            raise ValueError("give energy_kwh or target_soc, not both")
        return self


class PlanSlot(BaseModel):
    start: datetime
    power_kw: float


class DriverSession(BaseModel):
    station_id: str
    evse_id: int
    transaction: int
    active: bool
    started_at: datetime | None = None
    power_kw: float | None = None
    energy_kwh: float = Field(description="Net energy into the car so far")
    exported_kwh: float
    soc_percent: float | None = None
    departure_at: datetime | None = None
    energy_target_kwh: float | None = None
    battery_kwh: float | None = None
    allow_discharge: bool = False
    can_discharge: bool = Field(description="The car asked for bidirectional power transfer")
    priority: bool = False
    v2x_state: str | None = None
    plan: list[PlanSlot] = []
    expected_kwh_at_departure: float | None = None
    expected_soc_at_departure: float | None = None
    import_price_per_kwh: float | None = None
    export_price_per_kwh: float | None = None
    cost_so_far: float | None = None
    reward_so_far: float | None = None
    status: Literal["ACCEPTED", "NOT_POSSIBLE", "NO_NEEDS"]
    message: str


def _refused(detail: str) -> HTTPException:
    return HTTPException(401, detail, {"WWW-Authenticate": "Bearer"})


async def _claimed(rt: Runtime, request: Request) -> tuple[Transaction, DriverToken]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _refused("this page needs its session token")
    async with rt.sessionmaker() as s:
        row = await s.get(DriverToken, sha256(token.strip()))
        tx = await s.get(Transaction, row.transaction_pk) if row is not None else None
    if row is None or tx is None:
        raise _refused("unknown session token")
    if tx.state != "active":
        raise _refused("this charging session has ended")
    return tx, row


@router.post("/sessions", response_model=ClaimOut, status_code=201)
async def claim(body: ClaimIn, rt: Rt):
    """A token for the session running on this EVSE (first device only)."""
    async with rt.sessionmaker() as s:
        tx = (
            (
                await s.execute(
                    select(Transaction)
                    .where(
                        Transaction.station_id == body.station_id,
                        Transaction.evse_id == body.evse_id,
                        Transaction.state == "active",
                    )
                    .order_by(Transaction.id.desc())
                )
            )
            .scalars()
            .first()
        )
    if tx is None:
        raise HTTPException(404, "no charging session on this charger")
    token = "drv_" + secrets.token_urlsafe(24)

    async def job(s):
        taken = (
            await s.execute(select(DriverToken).where(DriverToken.transaction_pk == tx.id))
        ).scalar_one_or_none()
        if taken is not None:
            return False
        s.add(DriverToken(token_sha256=sha256(token), transaction_pk=tx.id, created_at=utcnow()))
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(
            409, "this session is already opened on another device; ask the operator for help"
        )
    return ClaimOut(token=token, transaction=tx.id)


@router.get("/session", response_model=DriverSession)
async def get_session(request: Request, rt: Rt):
    tx, row = await _claimed(rt, request)
    return await driver_view(rt, tx, row.battery_kwh)


@router.put("/session/preferences", response_model=DriverSession)
async def put_preferences(body: DriverPrefsIn, request: Request, rt: Rt):
    """Departure, energy (or target SoC) and consent to discharge; says plainly if it can be met."""
    tx, row = await _claimed(rt, request)
    battery = body.battery_kwh or row.battery_kwh
    energy = body.energy_kwh
    if body.target_soc is not None:
        if battery is None:
            raise HTTPException(422, "a target SoC needs the battery size (battery_kwh)")
        if tx.soc_percent is None:
            raise HTTPException(422, "the car does not report its SoC here: give energy_kwh")
        if body.target_soc <= tx.soc_percent:
            raise HTTPException(
                422, f"the battery is already at {tx.soc_percent:.0f} %: choose a higher target"
            )
        energy = (body.target_soc - tx.soc_percent) / 100.0 * battery
    if body.battery_kwh is not None:

        async def keep_battery(s):
            r = await s.get(DriverToken, row.token_sha256)
            r.battery_kwh = body.battery_kwh

        await rt.writer.submit(keep_battery)
    answer = await apply_preferences(
        rt,
        tx.id,
        sc.PreferencesIn(
            departure_time=body.departure_time,
            energy_kwh=energy,
            allow_discharge=body.allow_discharge,
        ),
    )
    async with rt.sessionmaker() as s:
        tx = await s.get(Transaction, tx.id)
    return await driver_view(rt, tx, battery, answer)


@router.post("/session/fast", response_model=DriverSession)
async def fast_on(request: Request, rt: Rt):
    """Charge as fast as possible: priority for this session."""
    return await _fast(rt, request, True)


@router.delete("/session/fast", response_model=DriverSession)
async def fast_off(request: Request, rt: Rt):
    return await _fast(rt, request, False)


async def _fast(rt: Runtime, request: Request, on: bool) -> DriverSession:
    tx, row = await _claimed(rt, request)
    await apply_priority(rt, tx.id, on)
    async with rt.sessionmaker() as s:
        tx = await s.get(Transaction, tx.id)
    return await driver_view(rt, tx, row.battery_kwh)


def _hhmm(t: datetime) -> str:
    return t.strftime("%H:%M UTC on %d %b")


async def driver_view(
    rt: Runtime,
    tx: Transaction,
    battery_kwh: float | None,
    answer: sc.PreferencesOut | None = None,
) -> DriverSession:
    """What the driver page shows: the session, its plan, the price and a plain verdict."""
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, tx.station_id)
        site = await repo.get_site(s, st.site_id) if st is not None and st.site_id else None
    net_kwh = ((tx.energy_imported_wh or 0.0) - (tx.energy_exported_wh or 0.0)) / KW
    out = DriverSession(
        station_id=tx.station_id,
        evse_id=tx.evse_id or 0,
        transaction=tx.id,
        active=tx.state == "active",
        started_at=tx.started_at,
        power_kw=None if tx.power_w is None else round(tx.power_w / KW, 2),
        energy_kwh=round(net_kwh, 3),
        exported_kwh=round((tx.energy_exported_wh or 0.0) / KW, 3),
        soc_percent=tx.soc_percent,
        departure_at=tx.departure_at,
        energy_target_kwh=None if tx.energy_target_wh is None else tx.energy_target_wh / KW,
        battery_kwh=battery_kwh,
        allow_discharge=bool(tx.v2x_allowed),
        can_discharge=bidirectional(tx),
        priority=bool(tx.priority),
        v2x_state=v2x_state(tx),
        status="NO_NEEDS",
        message="",
    )
    if site is not None:
        out.import_price_per_kwh = site.import_tariff_per_kwh
        out.export_price_per_kwh = site.export_tariff_per_kwh
        if site.import_tariff_per_kwh is not None:
            out.cost_so_far = round(
                (tx.energy_imported_wh or 0) / KW * site.import_tariff_per_kwh, 2
            )
        if site.export_tariff_per_kwh is not None:
            out.reward_so_far = round(
                (tx.energy_exported_wh or 0) / KW * site.export_tariff_per_kwh, 2
            )
    key = evse_key(tx.station_id, tx.evse_id or 0)
    planned_wh = None
    feasible = None
    deliverable_wh = None
    if site is not None and tx.departure_at is not None:
        mpc = rt.lm.status[site.id].mpc if site.id in rt.lm.status else None
        if mpc is None or key not in mpc.schedule.vehicles:
            mpc, _ = await rt.lm.plan_ahead(site.id)
        if mpc is not None and key in mpc.schedule.vehicles:
            vp = mpc.schedule.vehicles[key]
            p = mpc.problem
            out.plan = [
                PlanSlot(start=p.slot_start(t), power_kw=round(w / KW, 2))
                for t, w in enumerate(vp.power_w)
                if p.slot_start(t) < tx.departure_at
            ]
            planned_wh = vp.energy_wh
            feasible = vp.feasible
            deliverable_wh = vp.max_deliverable_wh
    if planned_wh is not None:
        expected = net_kwh + planned_wh / KW
        out.expected_kwh_at_departure = round(expected, 2)
        if battery_kwh and tx.soc_percent is not None:
            out.expected_soc_at_departure = round(
                min(100.0, tx.soc_percent + planned_wh / KW / battery_kwh * 100.0), 1
            )
    _verdict(out, tx, answer, feasible, deliverable_wh)
    return out


def _verdict(
    out: DriverSession,
    tx: Transaction,
    answer: sc.PreferencesOut | None,
    feasible: bool | None,
    deliverable_wh: float | None,
) -> None:
    """Status and a sentence a driver understands."""
    need = out.energy_target_kwh
    if tx.departure_at is None or need is None:
        out.status = "NO_NEEDS"
        out.message = (
            "Tell us when you leave and how much energy you need, and we plan your charging. "
            "Until then your car charges with the power the site can give."
        )
        return
    if answer is not None:
        possible = answer.accepted
        most = answer.deliverable_kwh
    else:
        possible = feasible is not False
        most = None if deliverable_wh is None else deliverable_wh / KW
    when = _hhmm(tx.departure_at)
    if possible:
        out.status = "ACCEPTED"
        out.message = f"You will have what you asked for by {when}."
        if out.allow_discharge and out.can_discharge:
            out.message += " Your car may give energy back to the grid meanwhile."
        if out.priority:
            out.message += " It charges as fast as it can now."
    else:
        out.status = "NOT_POSSIBLE"
        got = f"at most about {most:.1f} kWh" if most is not None else "less than you asked for"
        out.message = (
            f"This cannot be met: by {when} the car can get {got}, not what you asked for. "
            "Leave later, ask for less, or press “Charge as fast as possible”."
        )
