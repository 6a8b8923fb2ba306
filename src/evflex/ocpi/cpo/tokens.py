"""OCPI 2.2.1 Tokens, our CPO role: the Receiver interface, and partners' tokens at
our stations.

**Receiver** (``/ocpi/cpo/2.2.1/tokens/{country_code}/{party_id}/{uid}[?type=]``): an
eMSP pushes its tokens (PUT: 201 new, 200 replaced; PATCH: the fields given, with
``last_updated``) and may read them back (GET; an unknown token is HTTP 404 with
2004). Only the calling partner's own parties (2001 otherwise); country code and
party id are stored upper case. A token is one row of ``ocpi_tokens`` per (country
code, party id, uid): a PUT of the same uid with another type replaces it. ``uid``
is a CiString: the URL's uid matches the stored one whatever its case.

**At stations**: :meth:`CsmsService.authorize` asks :func:`authorize_roaming` about
a card that is not one of the node's own id tokens. The card is looked up in
``ocpi_tokens`` by uid (as sent, upper or lower case: hex RFID uids come both ways)
and decided by the token's ``whitelist``:

- ALWAYS: Accepted if ``valid`` (Blocked otherwise), from the stored token;
- ALLOWED, ALLOWED_OFFLINE, NEVER: real-time authorization, ``POST {eMSP tokens
  SENDER}/{uid}/authorize?type=`` with the LocationReferences (location id, EVSE
  uid), within ``ocpi_authorize_timeout_s``; its AuthorizationInfo.allowed decides
  (ALLOWED Accepted, BLOCKED Blocked, EXPIRED Expired, NO_CREDIT NoCredit,
  NOT_ALLOWED NotAtThisLocation, or not one of the EVSEs it returned; OCPP 1.6
  reads the last two as Invalid). No answer in time, or an error: ALLOWED and
  ALLOWED_OFFLINE fall back to the stored token (Accepted if valid), NEVER is
  refused (Invalid). An eMSP that does not know the token (404 / 2004): Invalid.

The node's admission rule (the load manager) then applies as for any card. A
real-time Accepted is reused, without asking again, by the same card at the same
station for :data:`REUSE_S` (1.6 Authorize, then StartTransaction) unless the token
changed since; a card that only continues a session (1.6 StopTransaction, 2.x
updates) is answered from the last decision without a request.

**How a session was authorized** (for Sessions and CDRs): ``node.state["token_auth"]``
maps (station id, id token as the station sent it) to the last decision: a dict
with ``partner_id``, ``country_code``, ``party_id``, ``uid``, ``type``,
``contract_id``, ``auth_method`` (WHITELIST, AUTH_REQUEST or COMMAND),
``authorization_reference`` (from the eMSP's answer or a command; else None),
``status`` and ``at``. It is kept in memory (the last :data:`REMEMBERED`);
:func:`authorization_for` answers from it, or after a restart from the stored token
(auth_method WHITELIST). A token an eMSP's START_SESSION sent to a station (an
accepted command in ``ocpi_commands`` of the last :data:`REUSE_S`) is Accepted there
without a request: the eMSP authorized it (auth_method COMMAND, the command's
``authorization_reference``).

**On registration** (bus ``ocpi.partner.registered``) and at start for a partner with a
tokens SENDER whose tokens we have none of, the partner's token list is fetched
(paginated, following ``Link``) in the background to fill the cache.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.csms.service import AuthResult
from evflex.domain.model import AuthorizationStatus
from evflex.events import Event
from evflex.ocpi.client import PartnerError, endpoint
from evflex.ocpi.cpo import ids
from evflex.ocpi.transport import (
    INVALID_PARAMETERS,
    UNKNOWN_TOKEN,
    OcpiError,
    field_errors,
    now_iso,
    partner_parties,
    registered_partner,
    reply,
    require_own_party,
    same_party,
)
from evflex.store.ocpi_tables import OcpiCommand, OcpiPartner, OcpiToken
from evflex.store.tables import Station

log = logging.getLogger(__name__)

router = APIRouter()

#: A real-time Accepted (or a command's token) is reused by the same card at the same
#: station this long (s): 1.6 asks at Authorize and again at StartTransaction.
REUSE_S = 300.0
REUSE_DELTA = timedelta(seconds=REUSE_S)
#: Decisions remembered for Sessions and CDRs (the oldest go first).
REMEMBERED = 50_000
#: Most pages of a partner's token list fetched at once (100 tokens each at most).
MAX_PAGES = 10_000

TokenType = Literal["AD_HOC_USER", "APP_USER", "OTHER", "RFID"]
WhitelistType = Literal["ALWAYS", "ALLOWED", "ALLOWED_OFFLINE", "NEVER"]
ProfileType = Literal["CHEAP", "FAST", "GREEN", "REGULAR"]
AllowedType = Literal["ALLOWED", "BLOCKED", "EXPIRED", "NO_CREDIT", "NOT_ALLOWED"]


class EnergyContract(BaseModel):
    model_config = ConfigDict(extra="allow")

    supplier_name: str = Field(max_length=64)
    contract_id: str | None = Field(None, max_length=64)


class Token(BaseModel):
    """The Token object (extension fields are kept)."""

    model_config = ConfigDict(extra="allow")

    country_code: str = Field(min_length=2, max_length=2)
    party_id: str = Field(min_length=3, max_length=3)
    uid: str = Field(min_length=1, max_length=36)
    type: TokenType
    contract_id: str = Field(min_length=1, max_length=36)
    visual_number: str | None = Field(None, max_length=64)
    issuer: str = Field(max_length=64)
    group_id: str | None = Field(None, max_length=36)
    valid: StrictBool
    whitelist: WhitelistType
    language: str | None = Field(None, max_length=2)
    default_profile_type: ProfileType | None = None
    energy_contract: EnergyContract | None = None
    last_updated: datetime


class TokenPatch(BaseModel):
    """A PATCH: any Token fields, ``last_updated`` required."""

    model_config = ConfigDict(extra="allow")

    last_updated: datetime


class AuthorizationInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    allowed: AllowedType
    token: dict[str, Any] | None = None  # 1 in the spec; not needed to decide
    location: dict[str, Any] | None = None
    authorization_reference: str | None = Field(None, max_length=36)


def _stored(token: Token) -> dict[str, Any]:
    """The Token as we keep and serve it: party upper case, DateTime as OCPI writes it."""
    data = token.model_dump(mode="json", exclude_none=True)
    data["country_code"] = token.country_code.upper()
    data["party_id"] = token.party_id.upper()
    data["last_updated"] = now_iso(_utc(token.last_updated))
    return data


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


# ---------------------------------------------------------------- the store


async def find_token(
    s: AsyncSession, country_code: str, party_id: str, uid: str
) -> OcpiToken | None:
    """The token of this party with this uid (uid compared case-insensitively)."""
    rows = await s.scalars(
        select(OcpiToken).where(
            OcpiToken.country_code == country_code.upper(),
            OcpiToken.party_id == party_id.upper(),
            func.upper(OcpiToken.uid) == uid.upper(),
        )
    )
    return rows.first()


async def token_by_uid(s: AsyncSession, id_token: str) -> OcpiToken | None:
    """The partner token a station's card is (by uid as sent, upper or lower case; an
    RFID token first, then the latest updated)."""
    forms = {id_token, id_token.upper(), id_token.lower()}
    rows = (await s.scalars(select(OcpiToken).where(OcpiToken.uid.in_(forms)))).all()
    if not rows:
        return None
    return max(rows, key=lambda r: (r.type == "RFID", r.last_updated, r.id))


async def upsert_token(s: AsyncSession, partner_id: int, token: Token) -> bool:
    """Store ``token`` (a replacement if its party has the uid already); True if new."""
    data = _stored(token)
    row = await find_token(s, token.country_code, token.party_id, token.uid)
    created = row is None
    if row is None:
        row = OcpiToken(country_code=data["country_code"], party_id=data["party_id"])
        s.add(row)
    row.partner_id = partner_id
    row.uid = token.uid
    row.type = token.type
    row.contract_id = token.contract_id
    row.valid = token.valid
    row.whitelist = token.whitelist
    row.group_id = token.group_id
    row.data = data
    row.last_updated = _utc(token.last_updated)
    await s.flush()
    return created


# ---------------------------------------------------------------- the Receiver


def _check_type(type_: TokenType | None, row_type: str) -> bool:
    return type_ is None or type_ == row_type


@dataclass(slots=True)
class TokenAt:
    """The token a Receiver URL names, and the partner calling (its own party only)."""

    country_code: str
    party_id: str
    uid: str
    type: TokenType | None
    partner: OcpiPartner

    def unknown(self) -> OcpiError:
        return OcpiError(
            UNKNOWN_TOKEN, f"Unknown Token {self.country_code}/{self.party_id}/{self.uid}", 404
        )

    async def find(self, s: AsyncSession) -> OcpiToken | None:
        row = await find_token(s, self.country_code, self.party_id, self.uid)
        return row if row is not None and _check_type(self.type, row.type) else None


def token_at(
    country_code: str,
    party_id: str,
    uid: str,
    type: TokenType | None = None,
    partner: OcpiPartner = Depends(registered_partner),
) -> TokenAt:
    require_own_party(partner, country_code, party_id)
    return TokenAt(country_code, party_id, uid, type, partner)


PATH = "/{country_code}/{party_id}/{uid}"


@router.get(PATH)
async def get_token(request: Request, at: TokenAt = Depends(token_at)):
    async with request.app.state.runtime.sessionmaker() as s:
        row = await at.find(s)
    if row is None:
        raise at.unknown()
    return reply(request, row.data)


@router.put(PATH)
async def put_token(request: Request, token: Token, at: TokenAt = Depends(token_at)):
    _same_object(token, at)

    async def job(s: AsyncSession) -> bool:
        return await upsert_token(s, at.partner.id, token)

    created = await request.app.state.runtime.writer.submit(job)
    return reply(request, http_status=201 if created else 200)


@router.patch(PATH)
async def patch_token(request: Request, patch: TokenPatch, at: TokenAt = Depends(token_at)):
    changes = patch.model_dump(mode="json", exclude_unset=True)

    async def job(s: AsyncSession) -> OcpiError | None:
        row = await at.find(s)
        if row is None:
            return at.unknown()
        try:
            token = Token.model_validate({**row.data, **changes})
            _same_object(token, at, any_type=True)
        except ValidationError as exc:
            return OcpiError(INVALID_PARAMETERS, "Invalid or missing parameters: "
                             + field_errors(exc.errors()))  # fmt: skip
        except OcpiError as exc:
            return exc
        await upsert_token(s, at.partner.id, token)
        return None

    refusal = await request.app.state.runtime.writer.submit(job)  # a refusal writes nothing
    if refusal is not None:
        raise refusal
    return reply(request)


def _same_object(token: Token, at: TokenAt, any_type: bool = False) -> None:
    """The object must be the one the URL names (2001 otherwise)."""
    if not (same_party(token.country_code, at.country_code)
            and same_party(token.party_id, at.party_id)):  # fmt: skip
        raise OcpiError(INVALID_PARAMETERS, "country_code/party_id: the Token's party "
                        f"{token.country_code}/{token.party_id} is not the URL's "
                        f"{at.country_code}/{at.party_id}")  # fmt: skip
    if token.uid.upper() != at.uid.upper():
        raise OcpiError(INVALID_PARAMETERS, f"uid: {token.uid!r} is not the URL's {at.uid!r}")
    if not any_type and at.type is not None and token.type != at.type:
        raise OcpiError(INVALID_PARAMETERS, f"type: {token.type} is not the URL's {at.type}")


# ---------------------------------------------------------------- at stations

_ALLOWED = {
    "ALLOWED": AuthorizationStatus.ACCEPTED,
    "BLOCKED": AuthorizationStatus.BLOCKED,
    "EXPIRED": AuthorizationStatus.EXPIRED,
    "NO_CREDIT": AuthorizationStatus.NO_CREDIT,
    "NOT_ALLOWED": AuthorizationStatus.NOT_AT_THIS_LOCATION,
}


class _NoAnswer(Exception):
    """The eMSP gave no usable real-time answer (down, slow, broken)."""


def decisions(node: Any) -> OrderedDict[tuple[str, str], dict[str, Any]]:
    return node.state.setdefault("token_auth", OrderedDict())


def _remember(node: Any, station_id: str, id_token: str, entry: dict[str, Any]) -> None:
    book = decisions(node)
    book.pop((station_id, id_token), None)
    book[(station_id, id_token)] = entry
    while len(book) > REMEMBERED:
        book.popitem(last=False)


def _entry(node: Any, row: OcpiToken, method: str, status: AuthorizationStatus,
           reference: str | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "partner_id": row.partner_id,
        "country_code": row.country_code,
        "party_id": row.party_id,
        "uid": row.uid,
        "type": row.type,
        "contract_id": row.contract_id,
        "auth_method": method,
        "authorization_reference": reference,
        "status": status.value,
        "at": node.clock.now(),
        "token_updated": row.last_updated,
    }


async def _started_by_command(
    node: Any, s: AsyncSession, station_id: str, id_token: str, new_session: bool
) -> dict[str, Any] | None:
    """The decision for a token an eMSP's START_SESSION sent to this station (the eMSP
    authorized it): Accepted, auth_method COMMAND; None if there was no such command
    (in the last :data:`REUSE_S` for a new session)."""
    query = select(OcpiCommand).where(
        OcpiCommand.direction == "in",
        OcpiCommand.command == "START_SESSION",
        OcpiCommand.station_id == station_id,
        OcpiCommand.object_id == id_token.lower(),
        OcpiCommand.response == "ACCEPTED",
    )
    if new_session:
        query = query.where(OcpiCommand.created_at >= node.clock.now() - REUSE_DELTA)
    cmd = (await s.scalars(query.order_by(OcpiCommand.id.desc()).limit(1))).first()
    partner = await s.get(OcpiPartner, cmd.partner_id) if cmd is not None else None
    if cmd is None or partner is None or partner.status != "registered":
        return None
    token = (cmd.request or {}).get("token") or {}
    return {
        "partner_id": cmd.partner_id,
        "country_code": str(token.get("country_code", "")).upper(),
        "party_id": str(token.get("party_id", "")).upper(),
        "uid": token.get("uid", id_token),
        "type": token.get("type", "RFID"),
        "contract_id": token.get("contract_id"),
        "auth_method": "COMMAND",
        "authorization_reference": (cmd.request or {}).get("authorization_reference"),
        "status": AuthorizationStatus.ACCEPTED.value,
        "at": node.clock.now(),
        "token_updated": None,
    }


async def authorization_for(node: Any, station_id: str, id_token: str) -> dict[str, Any] | None:
    """How a card at a station was authorized (see the module doc), or None if it is no
    partner's token."""
    entry = decisions(node).get((station_id, id_token))
    if entry is not None:
        return entry
    async with node.sessionmaker() as s:
        row = await token_by_uid(s, id_token)
    if row is None:
        return None
    return _entry(node, row, "WHITELIST", _whitelisted(row))


def _whitelisted(row: OcpiToken) -> AuthorizationStatus:
    return AuthorizationStatus.ACCEPTED if row.valid else AuthorizationStatus.BLOCKED


def _fresh(node: Any, entry: dict[str, Any]) -> bool:
    return (node.clock.now() - entry["at"]).total_seconds() < REUSE_S


async def authorize_roaming(
    node: Any, station_id: str, id_token: str, evse_id: int | None, new_session: bool
) -> AuthResult | None:
    """The answer to a partner's card at a station (None: no partner knows it)."""
    prior = decisions(node).get((station_id, id_token))
    row = partner = None
    async with node.sessionmaker() as s:
        command = await _started_by_command(node, s, station_id, id_token, new_session)
        if command is None:
            row = await token_by_uid(s, id_token)
            partner = await s.get(OcpiPartner, row.partner_id) if row is not None else None
    if command is not None:
        if new_session:
            _remember(node, station_id, id_token, command)
        return AuthResult(AuthorizationStatus.ACCEPTED)
    if row is None or partner is None or partner.status != "registered":
        return None
    parent = row.group_id if row.group_id and len(row.group_id) <= 20 else None  # 1.6: 20
    if prior is not None and prior["token_updated"] == row.last_updated:
        if not new_session or (
            prior["auth_method"] == "AUTH_REQUEST"
            and prior["status"] == AuthorizationStatus.ACCEPTED.value
            and _fresh(node, prior)
        ):
            return AuthResult(AuthorizationStatus(prior["status"]), parent_id_token=parent)
    if row.whitelist == "ALWAYS" or not new_session:
        status = _whitelisted(row)
        if new_session:
            _remember(node, station_id, id_token, _entry(node, row, "WHITELIST", status))
        return AuthResult(status, parent_id_token=parent)
    try:
        status, reference = await _ask(node, partner, row, station_id, evse_id)
        method = "AUTH_REQUEST"
    except _NoAnswer as exc:
        log.warning("token %s at %s: no real-time answer (%s); whitelist %s", id_token,
                    station_id, exc, row.whitelist)  # fmt: skip
        status = AuthorizationStatus.INVALID if row.whitelist == "NEVER" else _whitelisted(row)
        method, reference = "WHITELIST", None
    _remember(node, station_id, id_token, _entry(node, row, method, status, reference))
    return AuthResult(status, parent_id_token=parent)


async def _location_references(node: Any, station_id: str, evse_id: int | None) -> dict:
    async with node.sessionmaker() as s:
        station = await s.get(Station, station_id)
    site = station.site_id if station is not None else None
    refs: dict[str, Any] = {"location_id": ids.location_id(site, station_id)}
    if evse_id:
        refs["evse_uids"] = [ids.evse_uid(station_id, evse_id)]
    return refs


async def _ask(
    node: Any, partner: OcpiPartner, row: OcpiToken, station_id: str, evse_id: int | None
) -> tuple[AuthorizationStatus, str | None]:
    """Real-time authorization by the token's eMSP: (status, authorization_reference);
    raises :class:`_NoAnswer` if it gave none in time."""
    url = endpoint(partner, "tokens", "SENDER")
    if url is None:
        raise _NoAnswer("the partner has no tokens SENDER endpoint")
    refs = await _location_references(node, station_id, evse_id)
    try:
        async with asyncio.timeout(node.settings.ocpi_authorize_timeout_s):
            answer = await node.client.call(
                "POST", f"{url}/{row.uid}/authorize", node.token_of(partner), refs,
                to_party=(row.country_code, row.party_id), params={"type": row.type},
            )  # fmt: skip
    except TimeoutError:
        raise _NoAnswer(f"none within {node.settings.ocpi_authorize_timeout_s} s") from None
    except PartnerError as exc:
        if exc.http_status == 404 or exc.status_code == UNKNOWN_TOKEN:
            return AuthorizationStatus.INVALID, None  # the eMSP does not know it
        raise _NoAnswer(str(exc)) from None
    except ValueError as exc:  # no token to call it with
        raise _NoAnswer(str(exc)) from None
    try:
        info = AuthorizationInfo.model_validate(answer.data)
    except ValidationError as exc:
        raise _NoAnswer("AuthorizationInfo: " + field_errors(exc.errors())) from None
    status = _ALLOWED[info.allowed]
    allowed_evses = (info.location or {}).get("evse_uids")
    if status is AuthorizationStatus.ACCEPTED and evse_id and allowed_evses:
        if ids.evse_uid(station_id, evse_id) not in allowed_evses:
            status = AuthorizationStatus.NOT_AT_THIS_LOCATION
    if info.token is not None:
        _refresh(node, partner, info.token)
    return status, info.authorization_reference


def _refresh(node: Any, partner: OcpiPartner, data: dict[str, Any]) -> None:
    """Keep the eMSP's latest copy of a token it sent with an answer (not waited for)."""
    try:
        token = Token.model_validate(data)
    except ValidationError:
        return
    if (token.country_code.upper(), token.party_id.upper()) not in partner_parties(partner):
        return

    async def job(s: AsyncSession) -> None:
        await upsert_token(s, partner.id, token)

    node.writer.submit_nowait(job)


# ---------------------------------------------------------------- pulling the list

_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


async def pull_tokens(node: Any, partner_id: int) -> int:
    """Fetch the partner's token list (its tokens SENDER, every page) into the cache;
    the number of tokens stored. Tokens of parties not the partner's are skipped."""
    async with node.sessionmaker() as s:
        partner = await s.get(OcpiPartner, partner_id)
    url = endpoint(partner, "tokens", "SENDER") if partner is not None else None
    if partner is None or url is None or partner.status != "registered":
        return 0
    token, parties, stored = node.token_of(partner), partner_parties(partner), 0
    next_url: str | None = url
    for _ in range(MAX_PAGES):
        if next_url is None:
            break
        answer = await node.client.call("GET", next_url, token)
        tokens = []
        for item in answer.data if isinstance(answer.data, list) else ():
            try:
                t = Token.model_validate(item)
            except ValidationError as exc:
                log.warning("partner %s: a token skipped: %s", partner_id,
                            field_errors(exc.errors()))  # fmt: skip
                continue
            if (t.country_code.upper(), t.party_id.upper()) in parties:
                tokens.append(t)

        async def job(s: AsyncSession, tokens=tokens) -> None:
            for t in tokens:
                await upsert_token(s, partner_id, t)

        await node.writer.submit(job)
        stored += len(tokens)
        found = _NEXT.search(answer.headers.get("Link", ""))
        next_url = found.group(1) if found and answer.data else None
    log.info("partner %s: %d tokens fetched", partner_id, stored)
    return stored


def attach(node: Any) -> None:
    """Answer partners' cards at stations; fetch a partner's tokens when it registers."""
    tasks: set[asyncio.Task] = set()

    def pull(partner_id: int) -> None:
        async def run() -> None:
            try:
                await pull_tokens(node, partner_id)
            except PartnerError as exc:
                log.warning("partner %s: cannot fetch its tokens: %s", partner_id, exc)
            except Exception:
                log.exception("partner %s: fetching its tokens", partner_id)

        task = asyncio.create_task(run(), name=f"ocpi-tokens-pull-{partner_id}")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def registered(event: Event) -> None:
        if "CPO" in node.roles and event.data.get("partner_id") is not None:
            pull(int(event.data["partner_id"]))

    async def start() -> None:
        if "CPO" not in node.roles:
            return
        async with node.sessionmaker() as s:
            have = set((await s.scalars(select(OcpiToken.partner_id).distinct())).all())
        for p in await node.partners_with("tokens", "SENDER"):
            if p.id not in have:
                pull(p.id)

    async def stop() -> None:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def roaming(station_id: str, id_token: str, evse_id: int | None,
                      new_session: bool) -> AuthResult | None:  # fmt: skip
        return await authorize_roaming(node, station_id, id_token, evse_id, new_session)

    if "CPO" in node.roles:
        node.services.service.roaming = roaming
    node.on("ocpi.partner.registered", registered)
    node.on_start(start)
    node.on_stop(stop)
