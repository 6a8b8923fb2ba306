"""The dashboard's HTTP side: login, the live event stream, site history and KPIs, pages."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from importlib.resources import files
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from evflex.api.deps import Rt
from evflex.api.smart import VerdictOut, site_verdicts, unplanned_verdict, verdict_out
from evflex.smartcharging import sitelog
from evflex.smartcharging.planner import evse_key
from evflex.store import repo
from evflex.store.tables import Station, Transaction
from evflex.web.auth import SESSION_COOKIE, LoginRefused, Principal, authorize

STATIC_DIR = files("evflex.web") / "static"

# ------------------------------------------------------------------ login

auth_router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    totp: str = Field(min_length=1, max_length=16, description="6-digit code of the app")


class WhoAmI(BaseModel):
    username: str
    role: str
    kind: str
    csrf_token: str | None = None


def _whoami(p: Principal) -> WhoAmI:
    return WhoAmI(username=p.name, role=p.role, kind=p.kind, csrf_token=p.csrf_token)


@auth_router.post("/login", response_model=WhoAmI)
async def login(body: LoginIn, request: Request, rt: Rt, response: Response):
    """Password and TOTP code: sets the session cookie; 401 if wrong, 429 when rate limited."""
    client = rt.auth.source(request)
    try:
        sid, principal = await rt.auth.login(body.username, body.password, body.totp, client)
    except LoginRefused as exc:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
        return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)
    response.set_cookie(
        SESSION_COOKIE,
        sid,
        max_age=int(rt.auth.session_s),
        httponly=True,
        samesite="strict",
        secure=rt.auth.cookie_secure(request),
        path="/",
    )
    return _whoami(principal)


@auth_router.post("/logout", status_code=204)
async def logout(request: Request, rt: Rt, response: Response):
    await rt.auth.logout(request.cookies.get(SESSION_COOKIE))
    response.delete_cookie(SESSION_COOKIE, path="/")


# ------------------------------------------------------------------ authenticated extras

router = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)])
Who = Annotated[Principal, Depends(authorize)]


@router.get("/auth/me", response_model=WhoAmI, tags=["auth"])
async def me(who: Who):
    return _whoami(who)


@router.get("/stream", tags=["dashboard"])
async def stream(request: Request, rt: Rt):
    """Server-sent events: every domain event (station, transaction, site.sample ...)."""

    async def events():
        async with rt.bus.subscribe(queue_size=500) as q:
            yield "retry: 2000\n\n"
            while not rt.stopping.is_set():
                get = asyncio.ensure_future(q.get())
                stop = asyncio.ensure_future(rt.stopping.wait())
                done, _ = await asyncio.wait(
                    {get, stop}, timeout=15.0, return_when="FIRST_COMPLETED"
                )
                stop.cancel()
                if get not in done:
                    get.cancel()
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                ev = get.result()
                data = {
                    "topic": ev.topic,
                    "station_id": ev.station_id,
                    "data": ev.data,
                    "at": rt.clock.now().isoformat(),
                }
                yield f"event: {ev.topic}\ndata: {json.dumps(data, default=str)}\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _site(rt, site_id: str):
    async with rt.sessionmaker() as s:
        site = await repo.get_site(s, site_id)
    if site is None:
        raise HTTPException(404, f"site '{site_id}' does not exist")
    return site


@router.get("/sites/{site_id}/history", tags=["dashboard"])
async def site_history(site_id: str, rt: Rt, hours: float = Query(24.0, gt=0, le=24 * 31)) -> dict:
    """The site's samples (import, export, PV, load, limit, price) of the last ``hours``."""
    await _site(rt, site_id)
    since = rt.clock.now() - timedelta(hours=hours)
    async with rt.sessionmaker() as s:
        rows = await sitelog.history(s, site_id, since)
    return {"site_id": site_id, "samples": [sitelog.sample_out(site_id, x) for x in rows]}


PERIODS = {"day": timedelta(days=1), "week": timedelta(days=7), "month": timedelta(days=30)}


@router.get("/sites/{site_id}/kpis", tags=["dashboard"])
async def site_kpis(site_id: str, rt: Rt, period: Literal["day", "week", "month"] = "day") -> dict:
    """Energy, cost and peak vs uncontrolled charging, drivers served, PV use, export."""
    site = await _site(rt, site_id)
    end = rt.clock.now()
    async with rt.sessionmaker() as s:
        k = await sitelog.load_kpis(s, site, end - PERIODS[period], end)
    return k.to_json()


@router.get("/needs", response_model=list[VerdictOut], tags=["dashboard"])
async def needs(rt: Rt, site_id: str | None = None) -> list[VerdictOut]:
    """The verdict on every active session's need: the same the driver page and the
    preferences API give (``NOT_POSSIBLE`` = at risk)."""
    async with rt.sessionmaker() as s:
        q = select(Transaction).where(Transaction.state == "active").order_by(Transaction.id)
        txs = list((await s.execute(q)).scalars())
        stations = {x.id: x.site_id for x in (await s.execute(select(Station))).scalars()}
    if site_id is not None:
        await _site(rt, site_id)
        txs = [t for t in txs if stations.get(t.station_id) == site_id]
    by_site: dict[str, dict] = {}
    out = []
    for tx in txs:
        site = stations.get(tx.station_id)
        if site is not None and site not in by_site:
            by_site[site] = await site_verdicts(rt, site)
        v = (by_site.get(site) or {}).get(evse_key(tx.station_id, tx.evse_id or 0))
        out.append(verdict_out(tx, v if v is not None else unplanned_verdict(rt, tx)))
    return out


# ------------------------------------------------------------------ pages

pages = APIRouter(include_in_schema=False)


def _page(name: str) -> FileResponse:
    return FileResponse(str(STATIC_DIR / name), headers={"Cache-Control": "no-cache"})


@pages.get("/favicon.ico")
async def favicon():
    return FileResponse(
        str(STATIC_DIR / "favicon.ico"),
        media_type="image/x-icon",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@pages.get("/")
async def index(request: Request):
    if SESSION_COOKIE not in request.cookies:
        return RedirectResponse("/login", 303)
    return _page("index.html")


@pages.get("/login")
async def login_page():
    return _page("login.html")


@pages.get("/charge/{station_id}/{evse_id}")
async def charge_page(station_id: str, evse_id: int):
    return _page("charge.html")
