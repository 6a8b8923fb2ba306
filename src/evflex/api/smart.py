"""REST API for smart charging: sites, circuits, charging profiles, driver needs."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select

from evflex.api import schemas as sc
from evflex.api.deps import Rt
from evflex.api.guard import errors_out
from evflex.api.records import bill_of_record
from evflex.api.routes import station_command
from evflex.csms import commands
from evflex.domain.model import ChargingNeeds
from evflex.services import Services
from evflex.smartcharging import profiles as pf
from evflex.smartcharging.composite import CompositeSchedule, InstalledProfile, composite_schedule
from evflex.smartcharging.manager import is_lm_profile
from evflex.smartcharging.planner import evse_key
from evflex.smartcharging.verdict import Verdict
from evflex.store import records, repo
from evflex.store.tables import Circuit, Station, Transaction

log = logging.getLogger(__name__)


router = APIRouter(prefix="/api/v1")


KW = 1000.0


# ------------------------------------------------------------------ sites


def _plan_out(rt: Services, site_id: str) -> sc.PlanOut | None:
    st = rt.lm.status.get(site_id)
    if st is None or st.plan is None:
        return None
    p = st.plan
    evses = []
    total = [0.0, 0.0, 0.0]
    for key in sorted(set(p.targets) | set(p.pinned)):
        station_id, _, evse = key.rpartition("/")
        pinned = key in p.pinned
        limit = p.pinned[key] if pinned else p.targets[key]
        kind = "pinned" if pinned else "session" if key in p.active else "idle"
        w = rt.lm.dispatcher.get(station_id, rt.lm.profile_id_for(key, kind))
        evses.append(
            sc.EvseTarget(
                station_id=station_id,
                evse_id=int(evse),
                limit_a=limit,
                kind=kind,
                boosted=key in p.boosted,
                paused=key in p.paused,
                profile_status=w.status if w else None,
            )
        )
        for ph in rt.lm.phases_of(key):
            total[ph - 1] += limit
    return sc.PlanOut(
        at=p.at,
        compute_ms=st.compute_s * 1000,
        evses=evses,
        total_a=total,
        headroom_kw=p.headroom_w / KW,
        problems=p.problems,
    )


async def _site_out(rt: Services, site_id: str) -> sc.SiteOut:
    async with rt.sessionmaker() as s:
        site = await repo.get_site(s, site_id)
        if site is None:
            raise HTTPException(404, f"site '{site_id}' does not exist")
        stations = [x.id for x in await repo.stations_of_site(s, site_id)]
        circuits = [c.id for c in await repo.list_circuits(s, site_id)]
    return sc.SiteOut(
        id=site.id,
        name=site.name,
        **{k: getattr(site, k) for k in sc.SITE_LOCATION},
        import_limit_kw=site.import_limit_w / KW,
        export_limit_kw=None if site.export_limit_w is None else site.export_limit_w / KW,
        max_current_a=site.max_current_a,
        phases=site.phases,
        voltage=site.voltage,
        policy=site.policy,
        objective=site.objective,
        capacity_tariff_per_kw=site.capacity_tariff_per_kw,
        import_tariff_per_kwh=site.import_tariff_per_kwh,
        export_tariff_per_kwh=site.export_tariff_per_kwh,
        base_load_a=site.base_load_a,
        stations=stations,
        circuits=circuits,
        plan=_plan_out(rt, site_id),
        planning_error=status.last_error if (status := rt.lm.status.get(site_id)) else None,
        managed_by_config=site.config_fields or [],
    )


def _config_managed(site_id: str, fields: list[str]) -> HTTPException:
    one = len(fields) == 1
    return HTTPException(
        409,
        f"site '{site_id}': {', '.join(fields)} {'is' if one else 'are'} managed by the "
        f"configuration file ([[sites]] table); change {'it' if one else 'them'} there "
        "and restart evflex",
    )


@router.post("/sites", response_model=sc.SiteOut, status_code=201, tags=["smart charging"])
async def create_site(body: sc.SiteIn, rt: Rt):
    now = rt.clock.now()
    values = sc.body_values(body)

    async def job(s):
        if await repo.get_site(s, body.id) is not None:
            return False
        return await repo.upsert_site(s, body.id, values, now)

    if not await rt.writer.submit(job):
        raise HTTPException(409, f"site '{body.id}' already exists")
    await rt.lm.reload()
    return await _site_out(rt, body.id)


@router.get("/sites", response_model=list[sc.SiteOut], tags=["smart charging"])
async def list_sites(rt: Rt):
    async with rt.sessionmaker() as s:
        ids = [x.id for x in await repo.list_sites(s)]
    return [await _site_out(rt, i) for i in ids]


@router.get("/sites/{site_id}", response_model=sc.SiteOut, tags=["smart charging"])
async def get_site(site_id: str, rt: Rt):
    return await _site_out(rt, site_id)


@router.patch("/sites/{site_id}", response_model=sc.SiteOut, tags=["smart charging"])
async def patch_site(site_id: str, body: sc.SitePatch, rt: Rt):
    """Change a site; a new limit is planned and sent at once (decreases first)."""
    now = rt.clock.now()
    fields = set(body.model_fields_set)
    values = sc.body_values(body, fields)

    async def job(s):
        site = await repo.get_site(s, site_id)
        if site is None:
            return False
        managed = sorted(fields & set(site.config_fields or ()))
        if managed:
            return managed
        await repo.upsert_site(s, site_id, values, now)
        return True

    done = await rt.writer.submit(job)
    if not done:
        raise HTTPException(404, f"site '{site_id}' does not exist")
    if isinstance(done, list):
        raise _config_managed(site_id, done)
    await rt.lm.rebalance_now(site_id, only_site_row=True)
    rt.bus.publish("site.changed", None, site_id=site_id, fields=sorted(fields))
    return await _site_out(rt, site_id)


@router.delete("/sites/{site_id}", status_code=204, tags=["smart charging"])
async def delete_site(site_id: str, rt: Rt):
    async def job(s):
        site = await repo.get_site(s, site_id)
        if site is None:
            return False
        if site.config_fields:
            return site.config_fields
        for st in await repo.stations_of_site(s, site_id):
            st.site_id = None
            st.circuit_id = None
        await s.delete(site)
        return True

    done = await rt.writer.submit(job)
    if not done:
        raise HTTPException(404, f"site '{site_id}' does not exist")
    if isinstance(done, list):
        raise HTTPException(
            409,
            f"site '{site_id}' is defined in the configuration file ([[sites]] table); "
            "remove it there and restart evflex first",
        )
    await rt.lm.reload()
    rt.bus.publish("site.deleted", None, site_id=site_id)
    return Response(status_code=204)


@router.put("/sites/{site_id}/load", response_model=sc.SiteOut, tags=["smart charging"])
async def put_site_load(site_id: str, body: sc.SiteLoadIn, rt: Rt):
    """The site's uncontrolled load (building, heat pumps...), as measured now."""
    if (body.current_a is None) == (body.power_kw is None):
        raise HTTPException(422, "give exactly one of current_a or power_kw")
    now = rt.clock.now()

    async def job(s):
        site = await repo.get_site(s, site_id)
        if site is None:
            return False
        if body.current_a is not None:
            amps = [max(0.0, float(x)) for x in body.current_a] + [0.0] * (3 - len(body.current_a))
        else:
            per_phase = body.power_kw * KW / (site.voltage * site.phases)
            amps = [per_phase] * site.phases + [0.0] * (3 - site.phases)
        site.base_load_a = amps
        site.base_load_at = now
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(404, f"site '{site_id}' does not exist")
    await rt.lm.rebalance_now(site_id, only_site_row=True)
    return await _site_out(rt, site_id)


# ------------------------------------------------------------------ circuits


def _circuit_out(c: Circuit) -> sc.CircuitOut:
    return sc.CircuitOut(
        id=c.id,
        site_id=c.site_id,
        parent_id=c.parent_id,
        name=c.name,
        max_current_a=c.max_current_a,
        max_power_kw=None if c.max_power_w is None else c.max_power_w / KW,
    )


async def _save_circuit(rt: Services, circuit_id: str, values: dict, create: bool) -> Circuit:
    now = rt.clock.now()

    async def job(s):
        existing = await s.get(Circuit, circuit_id)
        if create and existing is not None:
            raise HTTPException(409, f"circuit '{circuit_id}' already exists")
        if not create and existing is None:
            raise HTTPException(404, f"circuit '{circuit_id}' does not exist")
        site_id = values.get("site_id", existing.site_id if existing else None)
        if await repo.get_site(s, site_id) is None:
            raise HTTPException(422, f"site '{site_id}' does not exist")
        parent = values.get("parent_id", existing.parent_id if existing else None)
        seen = {circuit_id}
        while parent is not None:
            if parent in seen:
                raise HTTPException(422, f"circuit '{circuit_id}' would be its own ancestor")
            seen.add(parent)
            pc = await s.get(Circuit, parent)
            if pc is None or pc.site_id != site_id:
                raise HTTPException(422, f"parent circuit '{parent}' is not in site '{site_id}'")
            parent = pc.parent_id
        await repo.upsert_circuit(s, circuit_id, values, now)
        return await s.get(Circuit, circuit_id)

    circuit = await rt.writer.submit(job)
    await rt.lm.reload()
    return circuit


@router.post("/circuits", response_model=sc.CircuitOut, status_code=201, tags=["smart charging"])
async def create_circuit(body: sc.CircuitIn, rt: Rt):
    return _circuit_out(await _save_circuit(rt, body.id, sc.body_values(body), True))


@router.patch("/circuits/{circuit_id}", response_model=sc.CircuitOut, tags=["smart charging"])
async def patch_circuit(circuit_id: str, body: sc.CircuitPatch, rt: Rt):
    values = sc.body_values(body, set(body.model_fields_set))
    return _circuit_out(await _save_circuit(rt, circuit_id, values, False))


@router.get("/circuits", response_model=list[sc.CircuitOut], tags=["smart charging"])
async def list_circuits(rt: Rt, site_id: str | None = None):
    async with rt.sessionmaker() as s:
        return [_circuit_out(c) for c in await repo.list_circuits(s, site_id)]


@router.delete("/circuits/{circuit_id}", status_code=204, tags=["smart charging"])
async def delete_circuit(circuit_id: str, rt: Rt):
    async def job(s):
        c = await s.get(Circuit, circuit_id)
        if c is None:
            return False
        used = (await s.execute(select(Station.id).where(Station.circuit_id == circuit_id))).first()
        children = (
            await s.execute(select(Circuit.id).where(Circuit.parent_id == circuit_id))
        ).first()
        if used or children:
            raise HTTPException(409, f"circuit '{circuit_id}' still has stations or circuits")
        await s.delete(c)
        return True

    if not await rt.writer.submit(job):
        raise HTTPException(404, f"circuit '{circuit_id}' does not exist")
    await rt.lm.reload()
    return Response(status_code=204)


# ------------------------------------------------------------------ charging profiles


async def _station(rt: Services, station_id: str) -> Station:
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, station_id)
    if st is None:
        raise HTTPException(404, f"station '{station_id}' is not registered")
    return st


def _profile_out(evse_id: int, p: pf.ChargingProfile, w, note: str | None = None) -> sc.ProfileOut:
    return sc.ProfileOut(
        evse_id=evse_id,
        profile_id=p.id,
        purpose=p.purpose.value,
        stack_level=p.stack_level,
        transaction_id=p.transaction_id,
        source=w.source,
        status=w.status,
        attempts=w.attempts,
        error=w.error,
        profile=pf.to_wire(p, pf.NEUTRAL),
        note=note,
    )


@router.get(
    "/stations/{station_id}/charging-profiles",
    response_model=list[sc.ProfileOut],
    tags=["smart charging"],
)
async def list_profiles(station_id: str, rt: Rt, evse_id: sc.Int32 | None = None):
    """The profiles evflex has set on the station (operator's and load manager's)."""
    await _station(rt, station_id)
    wanted = rt.lm.dispatcher.wanted(station_id)
    return [
        _profile_out(w.evse_id, w.profile, w)
        for _, w in sorted(wanted.items())
        if evse_id is None or w.evse_id == evse_id
    ]


async def _rate_units(rt: Services, station: Station) -> set[str] | None:
    """The rate units the station accepts (None: unknown, e.g. not connected)."""
    if not rt.ocpp.is_connected(station.id):
        return None
    try:
        if station.ocpp_version == "1.6":
            body = commands.GetConfigurationBody(keys=["ChargingScheduleAllowedChargingRateUnit"])
            res = await rt.ocpp.send_command(station.id, "get-configuration", body)
            text = next((k.get("value") for k in res.get("configurationKey", [])), None)
        else:
            body = commands.GetVariablesBody(
                variables=[
                    commands.VariableRef(component="SmartChargingCtrlr", variable="RateUnit")
                ]
            )
            res = await rt.ocpp.send_command(station.id, "get-variables", body)
            results = res.get("getVariableResult", [])
            text = results[0].get("attributeValue") if results else None
    except Exception:
        return None
    if not text:
        return None
    units = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        units.add({"Current": "A", "Power": "W"}.get(part, part))
    return units & {"A", "W"} or None


def _converted(p: pf.ChargingProfile, unit: pf.RateUnit, st: Station, voltage: float):
    phases = st.phases or 3

    def conv(s: pf.Schedule) -> pf.Schedule:
        def one(value: float, n: int | None) -> float:
            return round(pf.convert(value, s.rate_unit, unit, n or phases, voltage), 1)

        def pair(values, n):
            return None if values is None else (one(values[0], 1), one(values[1], 1))

        def opt(value, n):
            return None if value is None else one(value, n)

        periods = tuple(
            replace(
                x,
                limit=one(x.limit, x.number_phases),
                setpoint=opt(x.setpoint, x.number_phases),
                discharge_limit=opt(x.discharge_limit, x.number_phases),
                v2x_baseline=opt(x.v2x_baseline, x.number_phases),
                limit_l23=pair(x.limit_l23, 1),
                setpoint_l23=pair(x.setpoint_l23, 1),
                discharge_limit_l23=pair(x.discharge_limit_l23, 1),
            )
            for x in s.periods
        )
        mr = s.min_rate
        if mr is not None:
            mr = round(pf.convert(mr, s.rate_unit, unit, phases, voltage), 1)
        return pf.Schedule(unit, periods, s.id, s.start, s.duration_s, mr)

    return replace(
        p, schedule=conv(p.schedule), extra_schedules=tuple(conv(x) for x in p.extra_schedules)
    )


@router.put(
    "/stations/{station_id}/charging-profiles",
    response_model=sc.ProfileOut,
    tags=["smart charging"],
)
async def put_profile(
    station_id: str, body: sc.ProfileIn, rt: Rt, wait: float = Query(10, ge=0, le=60)
):
    """Set a charging profile; answers after the station did (or ``wait`` s passed).

    An invalid profile is refused with 422 and the rule it breaks. A profile
    in a rate unit the station does not support is converted (with a note).
    The profile is kept: it is retried with backoff while the station rejects
    it or is unreachable, and set again when the station reconnects.
    """
    st = await _station(rt, station_id)
    version = st.ocpp_version or "2.0.1"
    try:
        profile = pf.checked(body.profile, body.evse_id, version)
    except pf.ProfileError as exc:
        raise HTTPException(422, f"invalid charging profile: {exc}") from None
    if is_lm_profile(profile.id):
        raise HTTPException(422, f"profile id {profile.id} is reserved for the load manager")
    note = None
    units = await _rate_units(rt, st)
    unit = profile.schedule.rate_unit
    if units is not None and unit.value not in units:
        other = pf.RateUnit.A if unit is pf.RateUnit.W else pf.RateUnit.W
        voltage = await _voltage(rt, st)
        profile = _converted(profile, other, st, voltage)
        note = (
            f"station accepts only {other.value}; limits converted from {unit.value} "
            f"at {voltage:g} V and {st.phases or 3} phases"
        )
    rt.lm.dispatcher.put(station_id, body.evse_id, profile, "operator")
    w = await rt.lm.dispatcher.wait_settled(station_id, profile.id, wait)
    return _profile_out(body.evse_id, profile, w, note)


async def _voltage(rt: Services, st: Station) -> float:
    if st.site_id:
        async with rt.sessionmaker() as s:
            site = await repo.get_site(s, st.site_id)
        if site is not None:
            return site.voltage
    return pf.DEFAULT_VOLTAGE


@router.delete(
    "/stations/{station_id}/charging-profiles",
    tags=["smart charging"],
)
async def clear_profiles(
    station_id: str,
    rt: Rt,
    profile_id: sc.Int32 | None = Query(None, alias="id"),
    evse_id: sc.Int32 | None = None,
    purpose: str | None = None,
    stack_level: sc.Int32 | None = None,
):
    """ClearChargingProfile with these criteria (none: all), then forget the matches."""
    await _station(rt, station_id)
    if purpose is not None:
        try:
            purpose = pf.Purpose.parse(purpose).value
        except ValueError:
            raise HTTPException(422, f"unknown purpose '{purpose}'") from None
    try:
        body = commands.ClearChargingProfileBody(
            id=profile_id, evse=evse_id, purpose=purpose, stack_level=stack_level
        )
    except ValidationError as exc:  # e.g. a negative id
        raise HTTPException(422, errors_out(exc.errors(include_url=False))) from None
    answer = await station_command(rt, station_id, "clear-charging-profile", body)
    forgotten = []
    for pid, w in rt.lm.dispatcher.wanted(station_id).items():
        p = w.profile
        if (
            (profile_id is None or pid == profile_id)
            and (evse_id is None or w.evse_id == evse_id)
            and (purpose is None or p.purpose.value == purpose)
            and (stack_level is None or p.stack_level == stack_level)
        ):
            rt.lm.dispatcher.forget(station_id, pid)
            forgotten.append(pid)
    if any(is_lm_profile(pid) for pid in forgotten):
        rt.lm.mark_dirty(rt.lm.site_of(station_id))
    return {"station": answer, "forgotten": forgotten}


@router.get("/stations/{station_id}/composite-schedule", tags=["smart charging"])
async def composite(
    station_id: str,
    rt: Rt,
    evse: int = Query(0, ge=0, le=sc.MAX_INT32),
    duration: int = Query(3600, ge=1, le=7 * 86400),
    unit: str | None = Query(None, pattern="^(A|W)$"),
):
    """The station's own composite schedule (GetCompositeSchedule) next to the one evflex
    computes from the profiles it set; ``agree`` says whether they match."""
    st = await _station(rt, station_id)
    version = st.ocpp_version or "2.0.1"
    rate = pf.RateUnit(unit) if unit else pf.RateUnit.A
    now = rt.clock.now()
    wanted = rt.lm.dispatcher.wanted(station_id)
    installed = [
        InstalledProfile(w.evse_id, w.profile) for w in wanted.values() if w.status == "accepted"
    ]
    tx_id, tx_start = None, None
    if evse:
        async with rt.sessionmaker() as s:
            tx = await repo.active_transaction_for_evse(s, station_id, evse)
        if tx is not None:
            # Relative profiles run from the start as the CSMS saw it (our clock)
            tx_id, tx_start = tx.transaction_id, tx.csms_started_at or tx.started_at
    ours = composite_schedule(
        installed,
        evse,
        now,
        duration,
        rate,
        transaction_id=tx_id,
        transaction_start=tx_start,
        voltage=await _voltage(rt, st),
        phases=st.phases or 3,
        max_current_a=(st.evse_max_current_a or 32.0) if evse else (st.max_current_a or 32.0 * 3),
    )
    out: dict = {"csms": ours.to_wire("2.0.1"), "station": None, "agree": None}
    if rt.ocpp.is_connected(station_id):
        body = commands.GetCompositeScheduleBody(evse=evse, duration=duration, rate_unit=rate.value)
        answer = await station_command(rt, station_id, "get-composite-schedule", body)
        out["station_answer"] = answer
        raw = answer.get("schedule") or answer
        if answer.get("status") == "Accepted" and (
            "chargingSchedule" in raw or "chargingSchedulePeriod" in raw
        ):
            theirs = CompositeSchedule.from_wire(raw, version, evse)
            # the station stamps its schedule on its own clock: compare on ours
            offset = rt.service.clocks.offset(station_id) or 0.0
            if offset:
                theirs = replace(theirs, start=theirs.start - timedelta(seconds=offset))
                out["station_clock_offset_s"] = round(offset, 1)
            out["station"] = theirs.to_wire("2.0.1")
            out["agree"] = _same(ours, theirs)
    return out


def _same(a: CompositeSchedule, b: CompositeSchedule) -> bool:
    """Same limits over the common window (start times may differ by the request delay)."""
    span = min(a.duration_s, b.duration_s)
    start = max(a.start, b.start)
    marks = {0} | {p.start_s for p in a.periods} | {p.start_s for p in b.periods}
    for m in sorted(x for x in marks if x < span):
        t = start + timedelta(seconds=m + 1)
        la, lb = a.limit_at(t), b.limit_at(t)
        if la is None or lb is None or abs(la - lb) > 0.1:
            return False
    return True


# ------------------------------------------------------------------ driver needs


async def _tx(rt: Services, tx_pk: int) -> Transaction:
    async with rt.sessionmaker() as s:
        tx = await s.get(Transaction, tx_pk)
    if tx is None:
        raise HTTPException(404, f"transaction {tx_pk} not found")
    if tx.state != "active":
        raise HTTPException(409, f"transaction {tx_pk} has ended")
    return tx


@router.put(
    "/transactions/{tx_pk}/preferences",
    response_model=sc.PreferencesOut,
    tags=["smart charging"],
)
async def put_preferences(tx_pk: sc.Int64, body: sc.PreferencesIn, rt: Rt):
    """A driver's departure time and energy; the answer says whether the site can deliver."""
    return await apply_preferences(rt, tx_pk, body)


async def apply_preferences(rt: Services, tx_pk: int, body: sc.PreferencesIn) -> sc.PreferencesOut:
    """Store a driver's needs on the session and tell whether the site can meet them."""
    tx = await _tx(rt, tx_pk)
    now = rt.clock.now()
    if body.departure_time is not None and body.departure_time <= now:
        raise HTTPException(422, "departure_time is in the past")
    needs = ChargingNeeds(
        station_id=tx.station_id,
        evse_id=tx.evse_id or 0,
        departure=body.departure_time,
        energy_wh=None if body.energy_kwh is None else body.energy_kwh * KW,
        source="driver",
        v2x_allowed=body.allow_discharge,
    )

    async def job(s):
        row = await s.get(Transaction, tx_pk)
        repo.set_transaction_needs(row, needs)

    await rt.writer.submit(job)
    return await _preferences_answer(rt, tx_pk, request="needs")


@router.get("/transactions/{tx_pk}/bill", response_model=sc.BillOut, tags=["smart charging"])
async def bill(tx_pk: sc.Int64, rt: Rt):
    """Imported energy at the site's import tariff minus exported energy at its feed-in reward
    (an ended transaction: its charge record's cost, with the tariff that priced it)."""
    async with rt.sessionmaker() as s:
        record = await records.record_of_transaction(s, tx_pk)
    if record is not None:
        return bill_of_record(record)
    tx = await _tx(rt, tx_pk)
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, tx.station_id)
        site = await repo.get_site(s, st.site_id) if st is not None and st.site_id else None
    imported = (tx.energy_imported_wh or 0.0) / KW
    exported = (tx.energy_exported_wh or 0.0) / KW
    price = site.import_tariff_per_kwh if site is not None else None
    reward = site.export_tariff_per_kwh if site is not None else None
    cost = None if price is None else round(imported * price, 4)
    paid = None if reward is None else round(exported * reward, 4)
    return sc.BillOut(
        transaction=tx.id,
        station_id=tx.station_id,
        site_id=site.id if site is not None else None,
        energy_imported_kwh=round(imported, 4),
        energy_exported_kwh=round(exported, 4),
        import_tariff_per_kwh=price,
        export_tariff_per_kwh=reward,
        import_cost=cost,
        export_reward=paid,
        total=None if cost is None else round(cost - (paid or 0.0), 4),
    )


class VerdictOut(BaseModel):
    """The verdict on a session's need (one computation: ``smartcharging.verdict``)."""

    transaction: int
    station_id: str
    evse_id: int
    status: Literal["ACCEPTED", "NOT_POSSIBLE", "NO_NEEDS"]
    at_risk: bool = Field(description="A stated need the plan does not meet by departure")
    departure: datetime | None = None
    need_kwh: float | None = Field(None, description="Energy still wanted from now")
    expected_kwh: float | None = Field(None, description="What the plan brings by departure")
    best_kwh: float | None = Field(None, description="The most reachable by departure")
    priority: bool = False
    source: str = Field(description="schedule (policy optimal), allocation, or none")


def verdict_out(tx: Transaction, v: Verdict) -> VerdictOut:
    def kwh(wh: float | None) -> float | None:
        return None if wh is None else round(wh / KW, 3)

    return VerdictOut(
        transaction=tx.id,
        station_id=tx.station_id,
        evse_id=tx.evse_id or 0,
        status=v.status,
        at_risk=v.at_risk,
        departure=v.departure,
        need_kwh=kwh(v.need_wh),
        expected_kwh=kwh(v.expected_wh),
        best_kwh=kwh(v.best_wh),
        priority=v.priority,
        source=v.source,
    )


async def site_verdicts(rt: Services, site_id: str) -> dict[str, Verdict]:
    """The verdict of every session of a site (evse key -> verdict), from the applied plan."""
    return await rt.lm.verdicts(site_id)


async def tx_verdict(rt: Services, tx: Transaction) -> Verdict:
    """The verdict on one session's need (a session off any site: no limit, nothing at risk)."""
    site_id = rt.lm.site_of(tx.station_id)
    if site_id is None:
        async with rt.sessionmaker() as s:
            st = await repo.get_station(s, tx.station_id)
        site_id = st.site_id if st is not None else None
    found = await site_verdicts(rt, site_id) if site_id is not None else {}
    v = found.get(evse_key(tx.station_id, tx.evse_id or 0))
    return v if v is not None else unplanned_verdict(rt, tx)


def unplanned_verdict(rt: Services, tx: Transaction) -> Verdict:
    """A session no site plans (off any site): no limit applies, nothing is at risk."""
    return Verdict(
        status="NO_NEEDS" if tx.departure_at is None or tx.energy_target_wh is None else "ACCEPTED",
        at=rt.clock.now(),
        departure=tx.departure_at,
        priority=bool(tx.priority),
    )


async def _preferences_answer(rt: Services, tx_pk: int, *, request: str):
    """The answer to a change of needs (``request="needs"``) or of priority charging."""
    tx = await _tx(rt, tx_pk)
    site_id = rt.lm.site_of(tx.station_id)
    out = sc.PreferencesOut(
        transaction=tx_pk,
        accepted=True,
        priority=bool(tx.priority),
        allow_discharge=bool(tx.v2x_allowed),
    )
    if site_id is None:
        out.reason = "station is not on a site: no limit applies, it charges at full power"
        return out
    current = await rt.lm.rebalance_now(site_id)
    tx = await _tx(rt, tx_pk)
    out.priority = bool(tx.priority)
    key = evse_key(tx.station_id, tx.evse_id or 0)
    if current is not None:
        out.limit_a = current.targets.get(key, current.pinned.get(key))
    v = await tx_verdict(rt, tx)
    out.need_status = v.status
    if v.status == "NO_NEEDS":
        return out
    out.requested_kwh = round(v.need_wh / KW, 3)
    out.planned_kwh = round(v.expected_wh / KW, 3)
    out.deliverable_kwh = round(v.best_wh / KW, 3)
    by = v.departure.isoformat()
    if v.at_risk:
        out.reason = (
            f"{v.need_wh / KW:.2f} kWh cannot be delivered by {by}: the plan brings "
            f"{v.expected_wh / KW:.2f} kWh, at most {v.best_wh / KW:.2f} kWh is reachable"
        )
        if request == "needs":
            out.accepted = False  # the need is stored all the same
    else:
        out.reason = f"{v.need_wh / KW:.2f} kWh by {by}: the plan brings it"
    out.status = "ACCEPTED" if out.accepted else "NOT_POSSIBLE"
    return out


@router.post(
    "/transactions/{tx_pk}/priority",
    response_model=sc.PreferencesOut,
    tags=["smart charging"],
)
async def set_priority(tx_pk: sc.Int64, rt: Rt):
    """Priority charging: the session gets the most the site allows, before all others."""
    return await apply_priority(rt, tx_pk, True)


@router.delete(
    "/transactions/{tx_pk}/priority",
    response_model=sc.PreferencesOut,
    tags=["smart charging"],
)
async def clear_priority(tx_pk: sc.Int64, rt: Rt):
    return await apply_priority(rt, tx_pk, False)


async def apply_priority(rt: Services, tx_pk: int, on: bool) -> sc.PreferencesOut:
    """Priority charging on or off for a running session (2.1 stations are told too)."""
    tx = await _tx(rt, tx_pk)
    now = rt.clock.now()
    if tx.state == "active" and rt.ocpp.is_connected(tx.station_id):
        async with rt.sessionmaker() as s:
            st = await repo.get_station(s, tx.station_id)
        if st is not None and st.ocpp_version == "2.1":
            # 2.1 has a message for it: the station switches to its PriorityCharging profile
            body = commands.PriorityChargingBody(transaction_id=tx.transaction_id, activate=on)
            try:
                await rt.ocpp.send_command(tx.station_id, "use-priority-charging", body)
            except Exception as exc:  # the load manager's priority still applies
                log.warning("UsePriorityCharging on %s failed: %s", tx.station_id, exc)

    async def job(s):
        row = await s.get(Transaction, tx_pk)
        row.priority = on
        row.updated_at = now

    await rt.writer.submit(job)
    return await _preferences_answer(rt, tx_pk, request="priority")
