"""REST API ``/api/v1``: the fleet, id tokens, transactions, meter values, commands."""

from __future__ import annotations

import json
from typing import Annotated

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from sqlalchemy import Text, cast, select, tuple_

from evflex.api import schemas as sc
from evflex.api.deps import Rt, delete_row
from evflex.api.guard import errors_out, shown
from evflex.csms import commands
from evflex.csms.capabilities import ev_capabilities
from evflex.csms.certificates import PROFILE_COMMANDS
from evflex.csms.connection import CallErrorReceived
from evflex.csms.limits import too_deep
from evflex.security import hash_password
from evflex.services import Services
from evflex.store import repo
from evflex.store.tables import Connector, EventLog, IdToken, MeterValue, Station, Transaction
from evflex.web.auth import OPERATOR_COMMANDS

router = APIRouter(prefix="/api/v1")


# ------------------------------------------------------------------ stations


def _station_out(rt: Services, st: Station, connectors: list[Connector]) -> sc.StationOut:
    now = rt.clock.now()
    # any message shows the station alive, not only a Heartbeat (the live connection
    # knows its last one; the store has it from the last Heartbeat, connect or disconnect)
    seen = [t for t in (st.last_heartbeat_at, rt.ocpp.last_message_at(st.id)) if t is not None]
    last_seen = max(seen) if seen else None
    return sc.StationOut(
        id=st.id,
        connected=rt.ocpp.is_connected(st.id),
        ocpp_version=st.ocpp_version,
        vendor=st.vendor,
        model=st.model,
        serial_number=st.serial_number,
        firmware_version=st.firmware_version,
        iccid=st.iccid,
        site_id=st.site_id,
        circuit_id=st.circuit_id,
        max_current_a=st.max_current_a,
        evse_max_current_a=st.evse_max_current_a,
        phases=st.phases,
        phase_rotation=st.phase_rotation,
        has_password=bool(st.password_hash),
        registration_status=st.registration_status,
        last_boot_at=st.last_boot_at,
        last_heartbeat_at=last_seen,
        heartbeat_age_s=None if last_seen is None else (now - last_seen).total_seconds(),
        last_connected_at=st.last_connected_at,
        last_disconnected_at=st.last_disconnected_at,
        clock_offset_s=_clock_offset(rt, st.id),
        clock_skewed=_clock_skewed(rt, st.id),
        steerable=rt.lm.steerability(st.id)[0],
        not_steerable_reason=rt.lm.steerability(st.id)[1],
        security_profile=st.security_profile,
        security_profile_reached=st.security_profile_reached,
        firmware=None
        if st.firmware_status is None
        else sc.FirmwareOut(
            status=st.firmware_status,
            at=st.firmware_status_at,
            request_id=st.firmware_request_id,
            location=st.firmware_location,
        ),
        upload=None
        if st.upload_status is None
        else sc.UploadOut(
            kind=st.upload_kind,
            status=st.upload_status,
            at=st.upload_status_at,
            request_id=st.upload_request_id,
            location=st.upload_location,
            file=st.upload_file,
        ),
        connectors=[
            sc.ConnectorOut(
                evse_id=c.evse_id,
                connector_id=c.connector_id,
                status=c.status,
                error_code=c.error_code,
                info=c.info,
                vendor_error_code=c.vendor_error_code,
                status_at=c.status_at,
            )
            for c in sorted(connectors, key=lambda c: (c.evse_id, c.connector_id))
        ],
    )


def _clock_offset(rt: Services, station_id: str) -> float | None:
    offset = rt.service.clocks.offset(station_id)
    return None if offset is None else round(offset, 3)


def _clock_skewed(rt: Services, station_id: str) -> bool:
    state = rt.service.clocks.state(station_id)
    return state is not None and state.skewed


@router.get("/stations", response_model=list[sc.StationOut], tags=["stations"])
async def list_stations(
    rt: Rt,
    connected: bool | None = None,
    site_id: str | None = None,
    limit: int = Query(1000, ge=1, le=50_000),
    offset: int = Query(0, ge=0),
):
    async with rt.sessionmaker() as s:
        q = select(Station).order_by(Station.id)
        if site_id is not None:
            q = q.where(Station.site_id == site_id)
        stations = list((await s.execute(q)).scalars())
        if connected is not None:
            stations = [st for st in stations if rt.ocpp.is_connected(st.id) == connected]
        stations = stations[offset : offset + limit]
        ids = [st.id for st in stations]
        conns: dict[str, list[Connector]] = {i: [] for i in ids}
        if ids:
            for c in (
                await s.execute(select(Connector).where(Connector.station_id.in_(ids)))
            ).scalars():
                conns[c.station_id].append(c)
    return [_station_out(rt, st, conns[st.id]) for st in stations]


async def _load_station(rt: Services, station_id: str) -> sc.StationOut:
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, station_id)
        if st is None:
            raise HTTPException(404, f"station '{station_id}' is not registered")
        conns = list(
            (await s.execute(select(Connector).where(Connector.station_id == station_id))).scalars()
        )
    return _station_out(rt, st, conns)


@router.get("/stations/{station_id}", response_model=sc.StationOut, tags=["stations"])
async def get_station(station_id: str, rt: Rt):
    return await _load_station(rt, station_id)


@router.post("/stations", response_model=sc.StationOut, status_code=201, tags=["stations"])
async def create_station(body: sc.StationCreate, rt: Rt):
    pw_hash = hash_password(body.password) if body.password else None
    now = rt.clock.now()

    topology = body.model_dump(include=set(repo.STATION_TOPOLOGY), exclude_unset=True)
    security = body.model_dump(include=set(sc.StationSecurity.model_fields), exclude_unset=True)

    async def job(s):
        return await repo.register_station(s, body.id, now, pw_hash, topology, security)

    try:
        created = await rt.writer.submit(job)
    except repo.TopologyError as exc:
        raise HTTPException(422, str(exc)) from None
    if not created:
        raise HTTPException(409, f"station '{body.id}' already exists")
    if body.site_id:
        await rt.lm.reload()
    rt.bus.publish("station.changed", body.id)
    return await _load_station(rt, body.id)


class ProfileError(ValueError):
    """A station's security profile that its other settings do not allow."""


@router.patch("/stations/{station_id}", response_model=sc.StationOut, tags=["stations"])
async def patch_station(station_id: str, body: sc.StationPatch, rt: Rt):
    pw_hash = hash_password(body.password) if body.password else None
    fields = body.model_fields_set

    async def job(s):
        st = await repo.get_station(s, station_id)
        if st is None:
            return False
        if pw_hash:
            st.password_hash = pw_hash
        elif body.clear_password:
            st.password_hash = None
        for name in fields & set(sc.StationSecurity.model_fields):
            setattr(st, name, getattr(body, name))
        if st.security_profile == 2 and not st.password_hash:
            raise ProfileError("security profile 2 needs a password")
        await repo.set_topology(s, st, {k: getattr(body, k) for k in topology})
        return True

    topology = fields & set(repo.STATION_TOPOLOGY)
    try:
        found = await rt.writer.submit(job)
    except (repo.TopologyError, ProfileError) as exc:
        raise HTTPException(422, str(exc)) from None
    if not found:
        raise HTTPException(404, f"station '{station_id}' is not registered")
    rt.ocpp.forget_credentials(station_id)
    if topology:
        await rt.lm.reload()
        rt.bus.publish("station.changed", station_id)
    return await _load_station(rt, station_id)


@router.delete("/stations/{station_id}", status_code=204, tags=["stations"])
async def delete_station(station_id: str, rt: Rt):
    await delete_row(rt, repo.get_station, station_id, f"station '{station_id}' is not registered")
    rt.ocpp.forget_credentials(station_id)
    rt.bus.publish("station.changed", station_id, deleted=True)
    return Response(status_code=204)


# ------------------------------------------------------------------ id tokens


def _token_out(t: IdToken) -> sc.IdTokenOut:
    return sc.IdTokenOut.model_validate(t, from_attributes=True)


async def _upsert_token(rt: Services, body: sc.IdTokenIn, create_only: bool) -> bool:
    now = rt.clock.now()

    async def job(s):
        return await repo.put_id_token(
            s,
            body.id_token,
            now,
            body.status,
            body.type,
            body.expiry,
            body.parent_id_token,
            create_only=create_only,
        )

    done = await rt.writer.submit(job)
    if done:  # roaming partners learn of the card (OCPI Tokens)
        rt.bus.publish("id_token.changed", None, id_token=body.id_token)
    return done


@router.post("/id-tokens", response_model=sc.IdTokenOut, status_code=201, tags=["id tokens"])
async def create_id_token(body: sc.IdTokenIn, rt: Rt):
    if not await _upsert_token(rt, body, create_only=True):
        raise HTTPException(409, f"id token '{body.id_token}' exists; PUT to replace it")
    return await get_id_token(body.id_token, rt)


@router.put("/id-tokens/{id_token}", response_model=sc.IdTokenOut, tags=["id tokens"])
async def put_id_token(id_token: str, body: sc.IdTokenIn, rt: Rt):
    if body.id_token != id_token:
        raise HTTPException(400, "id_token in the body differs from the one in the path")
    await _upsert_token(rt, body, create_only=False)
    return await get_id_token(id_token, rt)


@router.get("/id-tokens", response_model=list[sc.IdTokenOut], tags=["id tokens"])
async def list_id_tokens(rt: Rt):
    async with rt.sessionmaker() as s:
        return [_token_out(t) for t in await repo.list_id_tokens(s)]


@router.get("/id-tokens/{id_token}", response_model=sc.IdTokenOut, tags=["id tokens"])
async def get_id_token(id_token: str, rt: Rt):
    async with rt.sessionmaker() as s:
        t = await repo.get_id_token(s, id_token)
    if t is None:
        raise HTTPException(404, f"id token '{id_token}' not found")
    return _token_out(t)


@router.delete("/id-tokens/{id_token}", status_code=204, tags=["id tokens"])
async def delete_id_token(id_token: str, rt: Rt):
    async with rt.sessionmaker() as s:
        t = await repo.get_id_token(s, id_token)
    await delete_row(rt, repo.get_id_token, id_token, f"id token '{id_token}' not found")
    rt.bus.publish("id_token.changed", None, id_token=id_token, deleted=True,
                   type=t.type if t else None)  # fmt: skip
    return Response(status_code=204)


# ------------------------------------------------------------------ transactions


def _mv_out(m: MeterValue) -> sc.MeterValueOut:
    return sc.MeterValueOut.model_validate(m, from_attributes=True)


async def _tx_out(s, txs: list[Transaction]) -> list[sc.TransactionOut]:
    keys = [(t.id, t.last_meter_at) for t in txs if t.last_meter_at is not None]
    latest: dict[int, list[MeterValue]] = {}
    if keys:
        rows = await s.execute(
            select(MeterValue)
            .where(tuple_(MeterValue.transaction_pk, MeterValue.timestamp).in_(keys))
            .order_by(MeterValue.id)
        )
        for m in rows.scalars():
            latest.setdefault(m.transaction_pk, []).append(m)
    return [
        sc.TransactionOut(
            id=t.id,
            station_id=t.station_id,
            transaction_id=t.transaction_id,
            evse_id=t.evse_id,
            connector_id=t.connector_id,
            id_token=t.id_token,
            state=t.state,
            active=t.state == "active",
            charging_state=t.charging_state,
            started_at=t.started_at,
            stopped_at=t.stopped_at,
            stop_reason=t.stop_reason,
            meter_start_wh=t.meter_start_wh,
            meter_stop_wh=t.meter_stop_wh,
            energy_imported_wh=t.energy_imported_wh or 0.0,
            energy_exported_wh=t.energy_exported_wh or 0.0,
            power_w=t.power_w,
            soc_percent=t.soc_percent,
            last_meter_at=t.last_meter_at,
            last_meter_values=[_mv_out(m) for m in latest.get(t.id, [])],
            offline_messages=t.offline_messages or 0,
            departure_at=t.departure_at,
            energy_target_wh=t.energy_target_wh,
            needs_source=t.needs_source,
            priority=bool(t.priority),
            v2x_allowed=bool(t.v2x_allowed),
            bidirectional=bidirectional(t),
            operation_mode=t.operation_mode,
            v2x_state=v2x_state(t),
        )
        for t in txs
    ]


def bidirectional(t: Transaction) -> bool:
    """The EV asked for bidirectional power transfer (AC_BPT, DC_BPT, ...)."""
    return ev_capabilities(t.energy_transfer).bidirectional


def v2x_state(t: Transaction) -> str | None:
    """charging / discharging / idle from the signed power (50 W dead band)."""
    if t.state != "active" or t.power_w is None:
        return None
    if t.power_w > 50:
        return "charging"
    return "discharging" if t.power_w < -50 else "idle"


@router.get("/transactions", response_model=list[sc.TransactionOut], tags=["transactions"])
async def list_transactions(
    rt: Rt,
    active: bool | None = None,
    station_id: str | None = None,
    limit: int = Query(100, ge=1, le=10_000),
    offset: int = Query(0, ge=0, le=sc.MAX_INT32),
):
    q = select(Transaction).order_by(Transaction.id.desc()).limit(limit).offset(offset)
    if active is not None:
        q = q.where(Transaction.state == ("active" if active else "ended"))
    if station_id is not None:
        q = q.where(Transaction.station_id == station_id)
    async with rt.sessionmaker() as s:
        txs = list((await s.execute(q)).scalars())
        return await _tx_out(s, txs)


@router.get("/transactions/{tx_pk}", response_model=sc.TransactionOut, tags=["transactions"])
async def get_transaction(tx_pk: sc.Int64, rt: Rt):
    async with rt.sessionmaker() as s:
        tx = await s.get(Transaction, tx_pk)
        if tx is None:
            raise HTTPException(404, f"transaction {tx_pk} not found")
        return (await _tx_out(s, [tx]))[0]


# ------------------------------------------------------------------ meter values & events


@router.get(
    "/stations/{station_id}/meter-values",
    response_model=list[sc.MeterValueOut],
    tags=["meter values"],
)
async def meter_values(
    station_id: str,
    rt: Rt,
    from_: Annotated[sc.UtcDatetime | None, Query(alias="from")] = None,
    to: sc.UtcDatetime | None = None,
    evse: sc.Int32 | None = None,
    measurand: str | None = None,
    limit: int = Query(10_000, ge=1, le=100_000),
):
    if from_ and to and to <= from_:
        raise HTTPException(400, "'to' must be after 'from'")
    async with rt.sessionmaker() as s:
        if await repo.get_station(s, station_id) is None:
            raise HTTPException(404, f"station '{station_id}' is not registered")
        rows = await repo.meter_values_between(s, station_id, from_, to, evse, measurand, limit)
    return [_mv_out(m) for m in rows]


@router.get("/events", response_model=list[sc.EventOut], tags=["events"])
async def events(
    rt: Rt,
    station_id: str | None = None,
    kind: str | None = None,
    limit: int = Query(200, ge=1, le=10_000),
):
    # the detail is read as text and parsed row by row: one that cannot be read is shown
    # with a note, and never fails the list
    detail = cast(EventLog.detail, Text).label("detail")
    cols = (EventLog.id, EventLog.station_id, EventLog.timestamp, EventLog.kind, EventLog.type)
    q = select(*cols, detail).order_by(EventLog.id.desc()).limit(limit)
    if station_id:
        q = q.where(EventLog.station_id == station_id)
    if kind:
        q = q.where(EventLog.kind == kind)
    async with rt.sessionmaker() as s:
        rows = (await s.execute(q)).all()
    return [sc.EventOut(**{**row._asdict(), "detail": _shown_detail(row.detail)}) for row in rows]


def _shown_detail(text: str | None) -> dict | None:
    """A stored event detail as the API shows it: a JSON object within the depth JSON
    encoders take, else a note saying it cannot be shown."""
    try:
        detail = None if text is None else orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"unreadable": "stored text that is not JSON"}
    if detail is not None and (not isinstance(detail, dict) or too_deep(detail)):
        return {"unreadable": f"a stored {type(detail).__name__} that cannot be shown"}
    return detail


# ------------------------------------------------------------------ commands


async def station_command(rt: Services, station_id: str, name: str, body) -> dict:
    """Send a command; the station's failures become HTTP errors with a reason."""
    try:
        return await rt.ocpp.send_command(station_id, name, body)
    except commands.CommandNotAvailable as exc:
        raise HTTPException(400, str(exc)) from None
    except commands.StationNotConnected:
        raise HTTPException(409, f"station '{station_id}' is not connected") from None
    except TimeoutError:
        raise HTTPException(
            504, f"station '{station_id}' did not answer within {rt.ocpp.response_timeout:g} s"
        ) from None
    except ConnectionError:
        raise HTTPException(502, f"station '{station_id}' disconnected before answering") from None
    except CallErrorReceived as exc:
        raise HTTPException(
            502, f"station answered CALLERROR {exc.code}: {exc.description}"
        ) from None
    except ValueError as exc:
        raise HTTPException(400, f"cannot build a valid OCPP message: {exc}") from None


async def run_command(station_id: str, command: str, request: Request, rt: Services):
    """Check the body against the command's model, send it, answer with the station's reply."""
    model = commands.COMMAND_BODIES.get(command)
    if model is None:
        raise HTTPException(
            404, f"unknown command '{command}'; known: " + ", ".join(commands.COMMAND_BODIES)
        )
    conn = rt.ocpp.connections.get(station_id)
    # a command the connected station's version lacks is refused as such, whatever its body
    if conn is not None and not rt.ocpp.has_command(conn.version, command):
        raise HTTPException(400, f"'{command}' does not exist in OCPP {conn.version}")
    raw = await request.body()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, nested too deep
        raise HTTPException(400, f"body is not valid JSON: {shown(str(exc))}") from None
    try:
        body = model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, errors_out(exc.errors(include_url=False))) from None
    if conn is None:
        async with rt.sessionmaker() as s:
            known = await repo.get_station(s, station_id) is not None
        if not known:
            raise HTTPException(404, f"station '{station_id}' is not registered")
        raise HTTPException(409, f"station '{station_id}' is not connected")
    if command in PROFILE_COMMANDS:  # certificates: profile 2 or 3 only, nothing sent else
        refusal = await rt.certificates.refusal(station_id)
        if refusal is not None:
            raise HTTPException(409, refusal)
    if command == "remote-start":
        return await _remote_start(rt, station_id, body, conn.version)
    response = await station_command(rt, station_id, command, body)
    await rt.certificates.after_command(station_id, command, body, response)
    return sc.CommandResult(
        station_id=station_id, command=command, ocpp_version=conn.version, response=response
    )


async def _remote_start(rt: Services, station_id: str, body, version: str):
    """A card the CSMS would refuse is not sent (409); an accepted start is followed up."""
    refusal = await rt.service.remote_start_refusal(station_id, body.id_token, body.evse)
    if refusal is not None:
        raise HTTPException(409, refusal)
    answered = await rt.service.watch_remote_start(station_id, body.evse, body.id_token)
    try:
        response = await station_command(rt, station_id, "remote-start", body)
    except BaseException:
        answered(False)
        raise
    answered(response.get("status") == "Accepted")
    return sc.CommandResult(
        station_id=station_id, command="remote-start", ocpp_version=version, response=response
    )


# One route per command, so that the OpenAPI shows each command's body. The body
# is read by run_command (an empty body is {}; bad JSON is 400, a bad body 422),
# and its schema is published through the components below.
_SCHEMA_REF = "#/components/schemas/{model}"
_, _defs = models_json_schema(
    [(m, "validation") for m in dict.fromkeys(commands.COMMAND_BODIES.values())],
    ref_template=_SCHEMA_REF,
)
COMMAND_SCHEMAS: dict[str, dict] = _defs.get("$defs", {})  # merged into the OpenAPI components


def _add_command_route(command: str, model: type[BaseModel]) -> None:
    async def endpoint(station_id: str, request: Request, rt: Rt):
        return await run_command(station_id, command, request, rt)

    role = "operator" if command in OPERATOR_COMMANDS else "admin"
    required = bool(model.model_json_schema().get("required"))
    router.add_api_route(
        f"/stations/{{station_id}}/commands/{command}",
        endpoint,
        methods=["POST"],
        name=f"command_{command.replace('-', '_')}",
        summary=f"Command {command}",
        description=f"Send {command} to a connected station (role {role}). The body is "
        f"{model.__name__}"
        + ("" if required else "; an empty body takes the defaults")
        + ". Answers 422 with the reasons when the body does not fit.",
        response_model=sc.CommandResult,
        tags=["commands"],
        openapi_extra={
            "requestBody": {
                "required": required,
                "content": {
                    "application/json": {
                        "schema": {"$ref": _SCHEMA_REF.format(model=model.__name__)}
                    }
                },
            }
        },
    )


for _command, _model in commands.COMMAND_BODIES.items():
    _add_command_route(_command, _model)


@router.post(
    "/stations/{station_id}/commands/{command}", response_model=sc.CommandResult,
    include_in_schema=False,
)  # fmt: skip
async def unknown_command(station_id: str, command: str, request: Request, rt: Rt):
    """The 404 of an unknown command (each known one has its own route above)."""
    return await run_command(station_id, command, request, rt)
