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
from typing import Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select

from evflex.api import schemas as sc
from evflex.api.deps import Rt
from evflex.api.routes import bidirectional, v2x_state
from evflex.api.smart import KW, apply_preferences, apply_priority, tx_verdict
from evflex.clock import utcnow
from evflex.services import Services
from evflex.store import repo
from evflex.store.tables import Connector, DriverToken, Transaction
from evflex.web.auth import sha256

router = APIRouter(prefix="/api/v1/driver", tags=["driver"])


class ClaimIn(sc.ApiModel):
    model_config = ConfigDict(extra="forbid")

    station_id: str = Field(min_length=1, max_length=48)
    evse_id: int = Field(ge=1, le=sc.MAX_INT32)


class ClaimOut(BaseModel):
    token: str
    transaction: int


class DriverPrefsIn(sc.ApiModel):
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
    """A step of the plan: from ``start`` until the next step (or ``plan_end``)."""

    start: datetime
    power_kw: float = Field(description="Total power of the EVSE (all phases)")


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
    plan_end: datetime | None = Field(None, description="The plan's last step ends here")
    need_kwh: float | None = Field(None, description="Energy still wanted from now")
    expected_kwh_at_departure: float | None = Field(
        None, description="Net energy of the session by departure, as planned"
    )
    best_kwh_at_departure: float | None = Field(
        None, description="The most the session can reach by departure (priority charging)"
    )
    expected_soc_at_departure: float | None = None
    import_price_per_kwh: float | None = None
    export_price_per_kwh: float | None = None
    cost_so_far: float | None = None
    reward_so_far: float | None = None
    status: Literal["ACCEPTED", "NOT_POSSIBLE", "NO_NEEDS"]
    message: str


def _refused(detail: str) -> HTTPException:
    return HTTPException(401, detail, {"WWW-Authenticate": "Bearer"})


async def _claimed(rt: Services, request: Request) -> tuple[Transaction, DriverToken]:
    """The session a driver token is for; a forged token counts against its source
    (429 after too many), a forged or ended one is a security event."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _refused("this page needs its session token")
    await rt.auth.limited(request, "driver", "driver tokens")
    async with rt.sessionmaker() as s:
        row = await s.get(DriverToken, sha256(token.strip()))
        tx = await s.get(Transaction, row.transaction_pk) if row is not None else None
    if row is None or tx is None:
        await rt.auth.failed(request, "driver", "InvalidDriverToken", "unknown driver token")
        raise _refused("unknown session token")
    if tx.state != "active":
        await rt.auth.refuse(
            request, "InvalidDriverToken", "driver token of an ended session", transaction=tx.id
        )
        raise _refused("this charging session has ended")
    return tx, row


NO_SUCH_CHARGER = "no such charger"


async def _known_charger(rt: Services, station_id: str, evse_id: int) -> None:
    """404 "no such charger: ..." unless the station is registered and has this EVSE."""
    async with rt.sessionmaker() as s:
        station = await repo.get_station(s, station_id)
        if station is None:
            raise HTTPException(404, f"{NO_SUCH_CHARGER}: '{station_id}' is not registered here")
        seen = await s.scalar(
            select(Connector.evse_id)
            .where(Connector.station_id == station_id, Connector.evse_id == evse_id)
            .limit(1)
        )
        if seen is None:
            seen = await s.scalar(
                select(Transaction.id)
                .where(Transaction.station_id == station_id, Transaction.evse_id == evse_id)
                .limit(1)
            )
    if seen is None:
        raise HTTPException(404, f"{NO_SUCH_CHARGER}: '{station_id}' has no point {evse_id}")


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
        await _known_charger(rt, body.station_id, body.evse_id)
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
    await apply_preferences(
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
    return await driver_view(rt, tx, battery)


@router.post("/session/fast", response_model=DriverSession)
async def fast_on(request: Request, rt: Rt):
    """Charge as fast as possible: priority for this session."""
    return await _fast(rt, request, True)


@router.delete("/session/fast", response_model=DriverSession)
async def fast_off(request: Request, rt: Rt):
    return await _fast(rt, request, False)


async def _fast(rt: Services, request: Request, on: bool) -> DriverSession:
    tx, row = await _claimed(rt, request)
    await apply_priority(rt, tx.id, on)
    async with rt.sessionmaker() as s:
        tx = await s.get(Transaction, tx.id)
    return await driver_view(rt, tx, row.battery_kwh)


async def driver_view(
    rt: Services,
    tx: Transaction,
    battery_kwh: float | None,
) -> DriverSession:
    """What the driver page shows: the session, its plan, the price and the verdict.

    The verdict, the expected energy and the plan all come from one computation
    (``smartcharging.verdict``), the same the API and the dashboard use.
    """
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
    v = await tx_verdict(rt, tx)
    out.status = v.status
    out.plan = [PlanSlot(start=x.start, power_kw=round(x.power_w / KW, 3)) for x in v.plan]
    out.plan_end = v.plan_end
    if v.need_wh is not None:
        out.need_kwh = round(v.need_wh / KW, 3)
    if v.expected_wh is not None:
        out.expected_kwh_at_departure = round(net_kwh + v.expected_wh / KW, 2)
        if battery_kwh and tx.soc_percent is not None:
            out.expected_soc_at_departure = round(
                min(100.0, tx.soc_percent + v.expected_wh / KW / battery_kwh * 100.0), 1
            )
    if v.best_wh is not None:
        out.best_kwh_at_departure = round(net_kwh + v.best_wh / KW, 2)
    out.message = _message(out)
    return out


def _message(out: DriverSession) -> str:
    """A sentence a driver understands (no clock times: the page shows them in local time)."""
    if out.status == "NO_NEEDS":
        return (
            "Tell us when you leave and how much energy you need, and we plan your charging. "
            "Until then your car charges with the power the site can give."
        )
    if out.status == "ACCEPTED":
        text = "You will have what you asked for by your departure."
        if out.allow_discharge and out.can_discharge:
            text += " Your car may give energy back to the grid meanwhile."
        if out.priority:
            text += " It charges as fast as it can now."
        return text
    # already in priority charging: pressing the button again is no advice
    advice = (
        "It already charges as fast as it can. Leave later or ask for less."
        if out.priority
        else "Leave later, ask for less, or press “Charge as fast as possible”."
    )
    return (
        f"This cannot be met: by your departure the car can get at most about "
        f"{out.best_kwh_at_departure:.1f} kWh of the {out.energy_target_kwh:.1f} kWh you asked "
        f"for. {advice}"
    )
