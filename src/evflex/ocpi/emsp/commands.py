"""OCPI 2.2.1 Commands, Sender interface (our eMSP role).

:func:`send_command` asks a CPO partner to carry a command (START_SESSION,
STOP_SESSION, RESERVE_NOW, CANCEL_RESERVATION, UNLOCK_CONNECTOR) to its station. It
keeps the command (:class:`~evflex.store.ocpi_tables.OcpiCommand`, direction ``out``)
with the CPO's CommandResponse, and gives the CPO a ``response_url`` of its own:
``{base}/ocpi/emsp/2.2.1/commands/{COMMAND}/{uid}``. The CPO POSTs the station's
CommandResult there later: it is stored (``result``, ``message``, ``result_at``) and
published on the bus as ``ocpi.command.result``. A repeated result is answered as the
first; a result for a uid we never gave this partner is HTTP 404.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.ocpi.client import PartnerError, endpoint, party_of
from evflex.ocpi.transport import (
    CLIENT_ERROR,
    PREFIX,
    VERSION,
    OcpiError,
    registered_partner,
    reply,
    runtime,
)
from evflex.store.ocpi_tables import OcpiCommand, OcpiPartner

router = APIRouter()

COMMANDS = ("CANCEL_RESERVATION", "RESERVE_NOW", "START_SESSION", "STOP_SESSION",
            "UNLOCK_CONNECTOR")  # fmt: skip


def _text(message: Any) -> str | None:
    """The first DisplayText's text (or a plain string), cut to the column."""
    if isinstance(message, list) and message:
        message = message[0]
    if isinstance(message, dict):
        message = message.get("text")
    return str(message)[:255] if message else None


def response_url(node: Any, command: str, uid: str) -> str:
    return f"{node.base_url}{PREFIX}/emsp/{VERSION}/commands/{command}/{uid}"


async def send_command(node: Any, partner: OcpiPartner, command: str,
                       body: dict[str, Any]) -> OcpiCommand:  # fmt: skip
    """Send ``command`` with ``body`` (its object without ``response_url``) to the CPO
    ``partner``; the stored command with the CPO's answer (``response``: ACCEPTED,
    REJECTED, ...; ``message``). Raises :class:`PartnerError` if the CPO could not be
    asked (the command is kept, with the error as its ``message``) and ValueError for
    a command OCPI does not have or a partner without a commands RECEIVER."""
    command = command.upper()
    if command not in COMMANDS:
        raise ValueError(f"command {command!r}: one of {', '.join(COMMANDS)}")
    url = endpoint(partner, "commands", "RECEIVER")
    if url is None:
        raise ValueError(f"partner {partner.id} has no commands RECEIVER endpoint")
    uid = uuid.uuid4().hex
    request = {**body, "response_url": response_url(node, command, uid)}
    now = node.clock.now()

    async def create(s: AsyncSession) -> OcpiCommand:
        row = OcpiCommand(direction="out", partner_id=partner.id, command=command, uid=uid,
                          request=request, response_url=request["response_url"],
                          created_at=now)  # fmt: skip
        s.add(row)
        await s.flush()
        return row

    row = await node.writer.submit(create)
    error: PartnerError | None = None
    try:
        answer = await node.client.call("POST", f"{url}/{command}", node.token_of(partner),
                                        request, party_of(partner, "CPO"))  # fmt: skip
        data = answer.data if isinstance(answer.data, dict) else {}
        response = str(data.get("result") or "")[:24] or None
        message = _text(data.get("message"))
    except PartnerError as exc:
        error, response, message = exc, None, str(exc)[:255]

    async def answered(s: AsyncSession) -> OcpiCommand:
        r = await s.get(OcpiCommand, row.id)
        r.response, r.message = response, message
        return r

    row = await node.writer.submit(answered)
    if error is not None:
        raise error
    return row


async def command_of(node: Any, uid: str) -> OcpiCommand | None:
    async with node.sessionmaker() as s:
        return (await s.scalars(select(OcpiCommand).where(OcpiCommand.uid == uid))).first()


class CommandResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    result: Literal[
        "ACCEPTED", "CANCELED_RESERVATION", "EVSE_OCCUPIED", "EVSE_INOPERATIVE", "FAILED",
        "NOT_SUPPORTED", "REJECTED", "TIMEOUT", "UNKNOWN_RESERVATION",
    ]  # fmt: skip
    message: list[dict[str, Any]] | None = None


@router.post("/{command}/{uid}")
async def command_result(request: Request, command: str, uid: str, body: CommandResult,
                         partner: OcpiPartner = Depends(registered_partner)):  # fmt: skip
    """The station's result of a command we sent this partner."""
    rt = runtime(request)
    now = rt.clock.now()
    message = _text(body.message)

    async def job(s: AsyncSession) -> bool | None:
        row = (await s.scalars(select(OcpiCommand).where(OcpiCommand.uid == uid))).first()
        if (row is None or row.direction != "out" or row.partner_id != partner.id
                or row.command != command.upper()):  # fmt: skip
            return None
        if row.result == body.result and row.message == message:
            return False  # the same result again
        row.result, row.message, row.result_at = body.result, message, now
        return True

    changed = await rt.writer.submit(job)
    if changed is None:
        raise OcpiError(CLIENT_ERROR, f"unknown command {command}/{uid}", http_status=404)
    if changed:
        rt.bus.publish("ocpi.command.result", None, uid=uid, command=command.upper(),
                       result=body.result, partner_id=partner.id)  # fmt: skip
    return reply(request)


def attach(node: Any) -> None:
    """Nothing to listen to: results arrive over HTTP."""
