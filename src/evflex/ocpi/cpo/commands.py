"""OCPI 2.2.1 Commands, Receiver interface (our CPO role): an eMSP's START_SESSION,
STOP_SESSION, RESERVE_NOW, CANCEL_RESERVATION and UNLOCK_CONNECTOR become OCPP
commands to the station.

``POST /ocpi/cpo/2.2.1/commands/{command}`` is answered at once with a
CommandResponse: ACCEPTED when the command is on its way to a connected station;
REJECTED with the reason when it cannot be (an unknown Location, EVSE or connector,
which also carries OCPI 2003; a station that is offline; a token or session of
another party; an unknown reservation); UNKNOWN_SESSION for a session we do not
know. A refused command writes nothing. An accepted one is stored
(:class:`OcpiCommand`, direction ``in``) and carried out in the background: the
station's answer becomes the CommandResult POSTed to the eMSP's ``response_url``
(ACCEPTED, REJECTED, EVSE_OCCUPIED, EVSE_INOPERATIVE, FAILED, NOT_SUPPORTED,
UNKNOWN_RESERVATION; TIMEOUT when the station has not answered within
``ocpi_command_timeout_s``, the ``timeout`` the CommandResponse announces).

As in the specification's flows, START_SESSION's result is the station's answer to
the remote start: the session itself reaches the eMSP through the Sessions module
once the car charges (the CSMS follows the start and logs a ``RemoteStartFailed``
event for the operator if none comes). The token is not checked before it is sent
(the eMSP authorized it); it must be one of the eMSP's own parties.

OCPI reservation ids are the eMSP's: each RESERVE_NOW gets an OCPP reservation id
of ours (kept in the command's ``station_ref``), reused when the same eMSP sends the
same ``reservation_id`` for the same station again (a replacement), so no eMSP can
touch another's reservation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.csms import commands as ocpp_commands
from evflex.domain.model import TransactionState
from evflex.events import Event
from evflex.ocpi.client import PartnerError, party_of
from evflex.ocpi.cpo import ids
from evflex.ocpi.transport import (
    CLIENT_ERROR,
    SUCCESS,
    UNKNOWN_LOCATION,
    OcpiError,
    partner_parties,
    registered_partner,
    reply,
    runtime,
)
from evflex.store import repo
from evflex.store.ocpi_tables import OcpiCommand, OcpiPartner, OcpiToken
from evflex.store.tables import Connector, Station, Transaction

log = logging.getLogger(__name__)

router = APIRouter()


#: Waits between tries of POSTing a CommandResult to an eMSP that is down (s).
RESULT_RETRIES_S = (0.5, 1.0, 2.0, 4.0)


# ---------------------------------------------------------------- request objects

CiString36 = Field(min_length=1, max_length=36)
Url = Field(max_length=255, pattern=r"^https?://\S+$")


class _Command(BaseModel):
    model_config = ConfigDict(extra="ignore")

    response_url: str = Url


class TokenRef(BaseModel):
    """The Token of a StartSession or ReserveNow: what a Session's ``cdr_token`` needs is
    required, the rest of the Token object is accepted as sent."""

    model_config = ConfigDict(extra="allow")

    country_code: str = Field(min_length=2, max_length=2)
    party_id: str = Field(min_length=3, max_length=3)
    uid: str = CiString36
    type: Literal["AD_HOC_USER", "APP_USER", "OTHER", "RFID"]
    contract_id: str = CiString36


class StartSession(_Command):
    token: TokenRef
    location_id: str = CiString36
    evse_uid: str | None = Field(None, min_length=1, max_length=36)
    connector_id: str | None = Field(None, min_length=1, max_length=36)
    authorization_reference: str | None = Field(None, min_length=1, max_length=36)

    @model_validator(mode="after")
    def _connector_needs_evse(self) -> StartSession:
        if self.connector_id is not None and self.evse_uid is None:
            raise ValueError("evse_uid is required when connector_id is set")
        return self


class StopSession(_Command):
    session_id: str = CiString36


class ReserveNow(_Command):
    token: TokenRef
    expiry_date: datetime
    reservation_id: str = CiString36
    location_id: str = CiString36
    evse_uid: str | None = Field(None, min_length=1, max_length=36)
    authorization_reference: str | None = Field(None, min_length=1, max_length=36)

    @field_validator("expiry_date")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)  # OCPI: UTC


class CancelReservation(_Command):
    reservation_id: str = CiString36


class UnlockConnector(_Command):
    location_id: str = CiString36
    evse_uid: str = CiString36
    connector_id: str = CiString36


# ---------------------------------------------------------------- the immediate answer


class Refused(Exception):
    """The CommandResponse for a command that is not carried out."""

    def __init__(self, result: str, message: str, status_code: int = SUCCESS) -> None:
        super().__init__(message)
        self.result = result
        self.message = message
        self.status_code = status_code


def display(text: str) -> list[dict[str, str]]:
    return [{"language": "en", "text": text[:512]}]


class Plan:
    """What an accepted command sends: the OCPP command and body, to which station."""

    def __init__(self, station_id: str, name: str, body: BaseModel, object_id: str | None = None,
                 station_ref: str | None = None, evse_id: int | None = None) -> None:  # fmt: skip
        self.station_id = station_id
        self.name = name
        self.body = body
        self.object_id = object_id
        self.station_ref = station_ref
        self.evse_id = evse_id


async def receive(request: Request, partner: OcpiPartner, command: str, body: _Command):
    node = runtime(request).ocpi
    timeout = max(1, math.ceil(node.settings.ocpi_command_timeout_s))
    try:
        async with node.sessionmaker() as s:
            try:
                plan = await PLANNERS[command](node, s, partner, body)
            except ValueError as exc:  # an OCPP message cannot carry it (pydantic's too)
                raise Refused("REJECTED", f"cannot be sent to a station: {exc}") from None
        if not node.services.ocpp.is_connected(plan.station_id):
            raise Refused("REJECTED", f"station '{plan.station_id}' is offline")
        row = await node.writer.submit(lambda s: _store(s, node, partner, command, body, plan))
    except Refused as refusal:
        data = {"result": refusal.result, "timeout": timeout, "message": display(refusal.message)}
        return reply(request, data, refusal.status_code, refusal.message)
    spawn(node, carry_out(node, row, plan), f"ocpi-command-{row.uid}")
    message = f"sent to station '{plan.station_id}'"
    return reply(request, {"result": "ACCEPTED", "timeout": timeout, "message": display(message)})


async def _store(s: AsyncSession, node: Any, partner: OcpiPartner, command: str,
                 body: _Command, plan: Plan) -> OcpiCommand:  # fmt: skip
    if command == "RESERVE_NOW" and plan.station_ref is None:  # a new OCPP reservation id
        latest = await s.scalar(
            select(OcpiCommand.station_ref)
            .where(OcpiCommand.direction == "in", OcpiCommand.command == "RESERVE_NOW")
            .order_by(OcpiCommand.id.desc())
            .limit(1)
        )
        rid = max(await repo.next_reservation_id(s), int(latest or 0) + 1)
        plan.station_ref = str(rid)
        plan.body = plan.body.model_copy(update={"reservation_id": rid})
    row = OcpiCommand(
        direction="in", partner_id=partner.id, command=command, uid=str(uuid.uuid4()),
        request=body.model_dump(mode="json", exclude_none=True),
        response_url=body.response_url, station_id=plan.station_id, response="ACCEPTED",
        object_id=plan.object_id, station_ref=plan.station_ref, created_at=node.clock.now(),
    )  # fmt: skip
    s.add(row)
    await s.flush()
    return row


async def _station_at(node: Any, s: AsyncSession, location: str, uid: str | None,
                      connector: str | None = None) -> tuple[str, int | None]:  # fmt: skip
    """(station id, evse id or None) of a Location and EVSE of ours; refused as unknown
    (OCPI 2003) otherwise. Without an EVSE, a connected station of the Location."""
    found = await ids.resolve_evse(s, location, uid)
    if found is None:
        what = f"EVSE '{uid}' at Location '{location}'" if uid else f"Location '{location}'"
        raise Refused("REJECTED", f"unknown {what}", UNKNOWN_LOCATION)
    station_id, evse_id = found
    if evse_id is None:  # the station itself, or one of the site's (a connected one)
        site = (await s.get(Station, station_id)).site_id
        if site is not None:
            others = (await s.scalars(select(Station.id).where(Station.site_id == site))).all()
            connected = (i for i in others if node.services.ocpp.is_connected(i))
            station_id = next(connected, station_id)
        return station_id, None
    q = select(Connector.connector_id).where(
        Connector.station_id == station_id, Connector.evse_id == evse_id
    )
    connectors = {str(c) for c in (await s.scalars(q)).all()}
    if not connectors or evse_id < 1:  # 1.6 connector 0 is the station, no EVSE
        raise Refused("REJECTED", f"unknown EVSE '{uid}' at Location '{location}'",
                      UNKNOWN_LOCATION)  # fmt: skip
    if connector is not None and connector not in connectors:
        raise Refused("REJECTED", f"unknown connector '{connector}' of EVSE '{uid}'",
                      UNKNOWN_LOCATION)  # fmt: skip
    return station_id, evse_id


def _own_token(partner: OcpiPartner, token: TokenRef) -> None:
    if (token.country_code.upper(), token.party_id.upper()) not in partner_parties(partner):
        raise Refused(
            "REJECTED",
            f"token of {token.country_code}/{token.party_id}: an eMSP may only use its own tokens",
        )


def _ocpp_token_type(token: TokenRef) -> str:
    return "ISO14443" if token.type == "RFID" else "Central"


async def _plan_start(node: Any, s: AsyncSession, partner: OcpiPartner, b: StartSession) -> Plan:
    _own_token(partner, b.token)
    station_id, evse_id = await _station_at(node, s, b.location_id, b.evse_uid, b.connector_id)
    body = ocpp_commands.RemoteStartBody(
        id_token=b.token.uid, id_token_type=_ocpp_token_type(b.token), evse=evse_id
    )
    return Plan(station_id, "remote-start", body, b.token.uid.lower(), evse_id=evse_id)


async def _plan_stop(node: Any, s: AsyncSession, partner: OcpiPartner, b: StopSession) -> Plan:
    known = b.session_id.isdigit() and len(b.session_id) < 19  # a row id (64 bits)
    tx = await s.get(Transaction, int(b.session_id)) if known else None
    if tx is None:
        raise Refused("UNKNOWN_SESSION", f"unknown session '{b.session_id}'")
    if not tx.id_token or not await owns_token(s, partner.id, tx.id_token):
        raise Refused("REJECTED", f"session '{b.session_id}' was not started with your token")
    if tx.stopped_at is not None or tx.state != TransactionState.ACTIVE:
        raise Refused("REJECTED", f"session '{b.session_id}' has already ended")
    body = ocpp_commands.RemoteStopBody(transaction_id=tx.transaction_id)
    return Plan(tx.station_id, "remote-stop", body, b.session_id, tx.transaction_id)


async def owns_token(s: AsyncSession, partner_id: int, uid: str) -> bool:
    """Whether ``uid`` is a token of this partner: pushed to us through Tokens, or given
    in one of its START_SESSION commands (token uids compare case-insensitively)."""
    low = uid.lower()
    pushed = await s.scalar(
        select(OcpiToken.id)
        .where(OcpiToken.partner_id == partner_id, func.lower(OcpiToken.uid) == low)
        .limit(1)
    )
    return (
        pushed is not None or await _last_command(s, partner_id, "START_SESSION", low) is not None
    )


async def _last_command(s: AsyncSession, partner_id: int, command: str,
                        object_id: str) -> OcpiCommand | None:  # fmt: skip
    return (
        await s.scalars(
            select(OcpiCommand)
            .where(
                OcpiCommand.direction == "in",
                OcpiCommand.partner_id == partner_id,
                OcpiCommand.command == command,
                OcpiCommand.object_id == object_id,
            )
            .order_by(OcpiCommand.id.desc())
            .limit(1)
        )
    ).first()


async def _plan_reserve(node: Any, s: AsyncSession, partner: OcpiPartner, b: ReserveNow) -> Plan:
    _own_token(partner, b.token)
    if b.expiry_date <= node.clock.now():
        raise Refused("REJECTED", f"expiry_date {b.expiry_date.isoformat()} has passed")
    station_id, evse_id = await _station_at(node, s, b.location_id, b.evse_uid)
    key = b.reservation_id.lower()
    previous = await _last_command(s, partner.id, "RESERVE_NOW", key)
    ref = previous.station_ref if previous and previous.station_ref else None
    if previous is None or previous.station_id != station_id:
        ref = None  # a new reservation (another Location is another reservation)
    body = ocpp_commands.ReserveNowBody(
        id_token=b.token.uid, id_token_type=_ocpp_token_type(b.token), expiry=b.expiry_date,
        evse=evse_id, reservation_id=int(ref) if ref else None,
    )  # fmt: skip
    return Plan(station_id, "reserve-now", body, key, ref, evse_id)


async def _plan_cancel(node: Any, s: AsyncSession, partner: OcpiPartner,
                       b: CancelReservation) -> Plan:  # fmt: skip
    key = b.reservation_id.lower()
    made = await _last_command(s, partner.id, "RESERVE_NOW", key)
    if made is None or not made.station_id or not made.station_ref:
        raise Refused("REJECTED", f"unknown reservation '{b.reservation_id}'")
    body = ocpp_commands.CancelReservationBody(reservation_id=int(made.station_ref))
    return Plan(made.station_id, "cancel-reservation", body, key, made.station_ref)


async def _plan_unlock(node: Any, s: AsyncSession, partner: OcpiPartner,
                       b: UnlockConnector) -> Plan:  # fmt: skip
    station_id, evse_id = await _station_at(node, s, b.location_id, b.evse_uid, b.connector_id)
    assert evse_id is not None  # an evse_uid was given
    body = ocpp_commands.UnlockConnectorBody(evse=evse_id, connector=int(b.connector_id))
    return Plan(station_id, "unlock-connector", body, b.evse_uid.lower(), evse_id=evse_id)


PLANNERS = {
    "START_SESSION": _plan_start,
    "STOP_SESSION": _plan_stop,
    "RESERVE_NOW": _plan_reserve,
    "CANCEL_RESERVATION": _plan_cancel,
    "UNLOCK_CONNECTOR": _plan_unlock,
}


# ---------------------------------------------------------------- carrying it out

#: OCPP answer status (1.6 and 2.x) → CommandResultType.
STATION_RESULTS = {
    "Accepted": "ACCEPTED",
    "Unlocked": "ACCEPTED",
    "Rejected": "REJECTED",
    "Occupied": "EVSE_OCCUPIED",
    "OngoingAuthorizedTransaction": "EVSE_OCCUPIED",
    "Faulted": "EVSE_INOPERATIVE",
    "Unavailable": "EVSE_INOPERATIVE",
    "UnlockFailed": "FAILED",
    "UnknownConnector": "REJECTED",
    "NotSupported": "NOT_SUPPORTED",
}

#: Connector statuses that explain a refused START_SESSION.
OCCUPIED = {"Occupied", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing", "Reserved"}
INOPERATIVE = {"Faulted", "Unavailable"}


async def carry_out(node: Any, row: OcpiCommand, plan: Plan) -> None:
    """Send the OCPP command, store the result and POST it to the eMSP."""
    try:
        result, message = await _run(node, row, plan)
        now = node.clock.now()

        async def job(s: AsyncSession) -> None:
            stored = await s.get(OcpiCommand, row.id)
            if stored is not None:
                stored.result, stored.message, stored.result_at = result, message[:255], now

        await node.writer.submit(job)
        await post_result(node, row.partner_id, row.response_url, result, message)
    except Exception:  # the store failing: the eMSP's timeout tells it
        log.exception("OCPI command %s (%s)", row.uid, row.command)


async def _run(node: Any, row: OcpiCommand, plan: Plan) -> tuple[str, str]:
    ocpp = node.services.ocpp
    answered = None
    if plan.name == "remote-start":
        answered = await node.services.service.watch_remote_start(
            plan.station_id, plan.evse_id, plan.body.id_token
        )
    limit = node.settings.ocpi_command_timeout_s
    answer: dict[str, Any] = {}
    try:
        async with asyncio.timeout(limit):
            answer = await ocpp.send_command(plan.station_id, plan.name, plan.body)
    except TimeoutError:
        return "TIMEOUT", f"station '{plan.station_id}' did not answer within {limit:g} s"
    except ocpp_commands.CommandNotAvailable as exc:
        return "NOT_SUPPORTED", str(exc)
    except ocpp_commands.StationNotConnected:
        return "FAILED", f"station '{plan.station_id}' went offline"
    except ConnectionError:
        return "FAILED", f"station '{plan.station_id}' disconnected before answering"
    except Exception as exc:  # CALLERROR, a message the station's version cannot carry
        code = getattr(exc, "code", None)
        result = "NOT_SUPPORTED" if code in ("NotImplemented", "NotSupported") else "FAILED"
        return result, f"station '{plan.station_id}' answered with an error: {exc}"[:255]
    finally:
        if answered is not None:
            answered(answer.get("status") == "Accepted")
    status = str(answer.get("status", "?"))
    result = STATION_RESULTS.get(status, "FAILED")
    if plan.name == "cancel-reservation" and status == "Rejected":
        result = "UNKNOWN_RESERVATION"
    elif plan.name == "remote-start" and status == "Rejected":
        result = await _why_not_started(node, plan)
    info = answer.get("statusInfo") or {}
    why = " ".join(str(info[k]) for k in ("reasonCode", "additionalInfo") if info.get(k))
    return result, f"station '{plan.station_id}' answered {status}" + (f": {why}" if why else "")


async def _why_not_started(node: Any, plan: Plan) -> str:
    """A refused remote start: EVSE_OCCUPIED or EVSE_INOPERATIVE where the EVSE's status
    says so, else REJECTED."""
    if plan.evse_id is None:
        return "REJECTED"
    async with node.sessionmaker() as s:
        q = select(Connector.status).where(
            Connector.station_id == plan.station_id, Connector.evse_id == plan.evse_id
        )
        statuses = set((await s.scalars(q)).all())
    if statuses & INOPERATIVE and not statuses - INOPERATIVE:
        return "EVSE_INOPERATIVE"
    return "EVSE_OCCUPIED" if statuses & OCCUPIED else "REJECTED"


async def post_result(node: Any, partner_id: int, url: str | None, result: str,
                      message: str) -> bool:  # fmt: skip
    """POST a CommandResult to ``url`` with the partner's token; a partner that is down
    is tried a few times (OCPI asks for no retries, the eMSP waits ``timeout``)."""
    async with node.sessionmaker() as s:
        partner = await s.get(OcpiPartner, partner_id)
    if partner is None or not partner.token_out or not url:
        return False
    body = {"result": result, "message": display(message)}
    token = node.token_of(partner)
    for wait in (0.0, *RESULT_RETRIES_S):
        await asyncio.sleep(wait)
        try:
            await node.client.call("POST", url, token, body, party_of(partner, "EMSP"))
            return True
        except PartnerError as exc:
            log.info("OCPI CommandResult to partner %s: %s", partner_id, exc)
            if not exc.retry:
                return False
    return False


# ---------------------------------------------------------------- routes

ROUTES: dict[str, tuple[type[_Command], str]] = {
    "START_SESSION": (StartSession, "a remote start on the Location's EVSE with the eMSP's token"),
    "STOP_SESSION": (StopSession, "a remote stop of one of the eMSP's sessions"),
    "RESERVE_NOW": (ReserveNow, "reserve an EVSE (or the station) for the token until expiry"),
    "CANCEL_RESERVATION": (CancelReservation, "cancel a reservation this eMSP made"),
    "UNLOCK_CONNECTOR": (UnlockConnector, "unlock a connector whose cable is stuck"),
}


def _add_route(command: str, model: type[_Command], what: str) -> None:
    async def endpoint(request, body, partner=Depends(registered_partner)):
        return await receive(request, partner, command, body)

    # the body's model is this command's (FastAPI validates it: 2001 naming the field)
    endpoint.__annotations__.update(request=Request, body=model, partner=OcpiPartner)
    router.add_api_route(f"/{command}", endpoint, methods=["POST"], name=command.lower(),
                         summary=f"{command}: {what}")  # fmt: skip


for _command, (_model, _what) in ROUTES.items():
    _add_route(_command, _model, _what)


@router.post("/{command}")
async def unknown_command(command: str):
    raise OcpiError(CLIENT_ERROR, f"unknown command '{command}'; known: {', '.join(ROUTES)}", 404)


def spawn(node: Any, job: Coroutine[Any, Any, Any], name: str) -> None:
    """Run ``job`` in the background, kept on the node until it ends."""
    task = asyncio.create_task(job, name=name)
    tasks: set[asyncio.Task] = node.state["commands"]
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def cancelled_by_us(node: Any, reservation_id: int) -> OcpiCommand | None:
    """The RESERVE_NOW an OCPP reservation cancelled on the CPO's side came from (an
    operator's command, a 2.x station's Removed): None if it is no eMSP's, or if the
    eMSP itself cancelled it."""
    async with node.sessionmaker() as s:
        made = (
            await s.scalars(
                select(OcpiCommand)
                .where(
                    OcpiCommand.direction == "in",
                    OcpiCommand.command == "RESERVE_NOW",
                    OcpiCommand.station_ref == str(reservation_id),
                )
                .order_by(OcpiCommand.id.desc())
                .limit(1)
            )
        ).first()
        if made is None or made.object_id is None:
            return None
        cancel = await _last_command(s, made.partner_id, "CANCEL_RESERVATION", made.object_id)
    return made if cancel is None or cancel.id < made.id else None


def attach(node: Any) -> None:
    """Keep the commands in flight on the node (a stopping node drops them); tell an
    eMSP whose reservation the CPO cancelled (CANCELED_RESERVATION to the RESERVE_NOW's
    response_url)."""
    tasks: set[asyncio.Task] = set()
    node.state["commands"] = tasks

    async def reservation_status(event: Event) -> None:
        if event.data.get("status") not in ("Cancelled", "Removed"):
            return
        made = await cancelled_by_us(node, int(event.data["reservation_id"]))
        if made is None:
            return
        message = f"reservation '{made.request.get('reservation_id')}' was cancelled by the CPO"
        post = post_result(node, made.partner_id, made.response_url, "CANCELED_RESERVATION",
                           message)  # fmt: skip
        spawn(node, post, f"ocpi-reservation-{made.uid}")

    node.on("reservation.status", reservation_status)

    async def stop() -> None:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    node.on_stop(stop)
