"""OCPI 2.2.1 Tokens, Sender interface (our eMSP role).

Our eMSP's tokens are this node's cards (the ``id_tokens`` table, the API's
``/id-tokens`` and ``evflex token add``): every card, each with ``valid`` true only
while it is Accepted and not expired, so a CPO learns of a blocked card too. A card
whose id is longer than 36 characters (OCPI's limit) is not shared.

- ``uid`` = the card's id token; ``type`` RFID for ISO 14443/15693 cards, APP_USER for
  the rest (app and central ids); ``contract_id`` = ``{CC}-{PID}-C{uid}`` (eMAID-like,
  letters and digits; a long uid is replaced by part of its hash);
  ``issuer`` = our business name; ``whitelist`` ALLOWED for RFID (the CPO may accept
  the card from its copy), NEVER for APP_USER (the spec's advice); ``group_id`` = the
  card's parent id token.
- ``GET /tokens`` lists them (paginated, by ``last_updated``).
- ``POST /tokens/{uid}/authorize[?type=]`` answers an AuthorizationInfo; an unknown
  card is HTTP 404 with 2004.
- A card added, changed or removed through the API is pushed (PUT) to every partner
  with a tokens RECEIVER at once (a removed card as ``valid`` false); a partner that
  registers gets them all; at start and every :data:`SWEEP_S` seconds, each such
  partner gets the cards changed since its last tokens push (cards the CLI changed,
  while the node ran or was stopped).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Body, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.events import Event
from evflex.ocpi.client import endpoint
from evflex.ocpi.outbox import Outbox
from evflex.ocpi.transport import UNKNOWN_TOKEN, OcpiError, Page, now_iso, reply, runtime
from evflex.store.ocpi_tables import OcpiOutbox, OcpiPartner
from evflex.store.tables import IdToken

log = logging.getLogger(__name__)

router = APIRouter()

#: How often cards changed outside the API (``evflex token add``) are looked for (s).
SWEEP_S = 30.0
RFID_TYPES = {"ISO14443", "ISO15693"}
MAX_UID = 36


def ocpi_type(card_type: str | None) -> str:
    return "RFID" if (card_type or "ISO14443") in RFID_TYPES else "APP_USER"


def contract_id(country_code: str, party_id: str, uid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9]", "", uid).upper()
    prefix = f"{country_code}-{party_id}-C"
    if not name or len(prefix) + len(name) > MAX_UID or name != uid.upper():
        name = hashlib.sha256(uid.encode()).hexdigest()[:16].upper()
    return prefix + name


def _aware(ts: datetime | None) -> datetime | None:
    if ts is not None and ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts


def is_valid(card: IdToken, now: datetime) -> bool:
    expiry = _aware(card.expiry)
    return card.status == "Accepted" and (expiry is None or expiry > now)


def token_object(node: Any, card: IdToken, now: datetime, valid: bool | None = None) -> dict:
    """The OCPI Token of one of our cards."""
    kind = ocpi_type(card.type)
    token: dict[str, Any] = {
        "country_code": node.country_code,
        "party_id": node.party_id,
        "uid": card.id_token,
        "type": kind,
        "contract_id": contract_id(node.country_code, node.party_id, card.id_token),
        "issuer": node.settings.ocpi_business_name[:64],
        "valid": is_valid(card, now) if valid is None else valid,
        "whitelist": "ALLOWED" if kind == "RFID" else "NEVER",
        "last_updated": now_iso(_aware(card.updated_at or card.created_at) or now),
    }
    if card.parent_id_token and len(card.parent_id_token) <= MAX_UID:
        token["group_id"] = card.parent_id_token
    return token


def _changed() -> Any:
    return func.coalesce(IdToken.updated_at, IdToken.created_at)


def _shared() -> Any:
    return func.length(IdToken.id_token) <= MAX_UID


# ---------------------------------------------------------------- Sender interface


@router.get("")
@router.get("/", include_in_schema=False)
async def list_tokens(request: Request):
    """Our cards as Tokens, oldest change first."""
    page = Page(request)
    rt = runtime(request)
    where = [_shared()]
    if page.date_from is not None:
        where.append(_changed() >= page.date_from)
    if page.date_to is not None:
        where.append(_changed() < page.date_to)
    async with rt.sessionmaker() as s:
        total = await s.scalar(select(func.count()).select_from(IdToken).where(*where))
        cards = (
            await s.scalars(
                select(IdToken).where(*where).order_by(_changed(), IdToken.id_token)
                .offset(page.offset).limit(page.limit)
            )
        ).all()  # fmt: skip
    now = rt.clock.now()
    return page.reply([token_object(rt.ocpi, c, now) for c in cards], total or 0)


class LocationReferences(BaseModel):
    model_config = ConfigDict(extra="allow")

    location_id: str = Field(min_length=1, max_length=36)
    evse_uids: list[str] = []


ALLOWED_OF = {
    "Accepted": "ALLOWED",
    "Blocked": "BLOCKED",
    "Invalid": "BLOCKED",
    "Expired": "EXPIRED",
    "NoCredit": "NO_CREDIT",
}


def allowed_of(card: IdToken, now: datetime) -> str:
    """The AllowedType of a card now (an Accepted card past its expiry is EXPIRED)."""
    expiry = _aware(card.expiry)
    if card.status == "Accepted" and expiry is not None and expiry <= now:
        return "EXPIRED"
    return ALLOWED_OF.get(card.status, "NOT_ALLOWED")


@router.post("/{uid}/authorize")
async def authorize(
    request: Request,
    uid: str,
    type: Literal["AD_HOC_USER", "APP_USER", "OTHER", "RFID"] = "RFID",
    location: LocationReferences | None = Body(None),
):
    """Real-time authorization of one of our cards (at the Location given, if any)."""
    rt = runtime(request)
    async with rt.sessionmaker() as s:
        card = await s.get(IdToken, uid)
        if card is None:  # Token uids are case-insensitive
            rows = await s.scalars(
                select(IdToken).where(func.upper(IdToken.id_token) == uid.upper()).limit(2)
            )
            found = rows.all()
            card = found[0] if len(found) == 1 else None
    if card is None or len(card.id_token) > MAX_UID or ocpi_type(card.type) != type:
        raise OcpiError(UNKNOWN_TOKEN, f"unknown token {uid} ({type})", http_status=404)
    now = rt.clock.now()
    allowed = allowed_of(card, now)
    info: dict[str, Any] = {
        "allowed": allowed,
        "token": token_object(rt.ocpi, card, now),
        "authorization_reference": uuid.uuid4().hex,
    }
    if location is not None and allowed == "ALLOWED":
        info["location"] = location.model_dump(mode="json", exclude_unset=True)
    return reply(request, info)


# ---------------------------------------------------------------- pushes


def _path(node: Any, token: dict[str, Any]) -> str:
    return f"/{node.country_code}/{node.party_id}/{token['uid']}?type={token['type']}"


def _queue(s: AsyncSession, node: Any, partner_ids: list[int], token: dict, now) -> None:
    for pid in partner_ids:
        Outbox.add(s, pid, "tokens", f"tokens/{token['uid']}/{token['type']}", "PUT",
                   _path(node, token), token, now)  # fmt: skip


async def push_cards(node: Any, partner_ids: list[int], since: dict[int, datetime | None]):
    """Queue PUTs of our cards to each partner: all, or those changed since ``since[id]``."""
    if not partner_ids:
        return
    now = node.clock.now()

    async def job(s: AsyncSession) -> None:
        cards = (await s.scalars(select(IdToken).where(_shared()))).all()
        for card in cards:
            changed = _aware(card.updated_at or card.created_at)
            to = [p for p in partner_ids
                  if since.get(p) is None or changed is None or changed >= since[p]]  # fmt: skip
            _queue(s, node, to, token_object(node, card, now), now)

    await node.writer.submit(job)
    for pid in partner_ids:
        node.outbox.wake(pid)


def attach(node: Any) -> None:
    """Push our cards to CPO partners when they change or a partner registers."""
    if "EMSP" not in node.roles:
        return

    async def receivers() -> list[int]:
        return [p.id for p in await node.partners_with("tokens", "RECEIVER")]

    async def on_card(event: Event) -> None:
        uid = str(event.data.get("id_token") or "")
        ids = await receivers()
        if not ids or not uid or len(uid) > MAX_UID:
            return
        now = node.clock.now()

        async def job(s: AsyncSession) -> None:
            card = await s.get(IdToken, uid)
            if card is None:  # removed: the CPO's copy must stop working
                card = IdToken(id_token=uid, type=event.data.get("type") or "ISO14443",
                               status="Invalid", created_at=now, updated_at=now)  # fmt: skip
                _queue(s, node, ids, token_object(node, card, now, valid=False), now)
            else:
                _queue(s, node, ids, token_object(node, card, now), now)

        await node.writer.submit(job)
        for pid in ids:
            node.outbox.wake(pid)

    async def on_registered(event: Event) -> None:
        pid = event.data.get("partner_id")
        async with node.sessionmaker() as s:
            partner = await s.get(OcpiPartner, pid) if pid is not None else None
        if partner is not None and endpoint(partner, "tokens", "RECEIVER") is not None:
            await push_cards(node, [partner.id], {})

    async def catch_up() -> None:
        ids = await receivers()
        if not ids:
            return
        async with node.sessionmaker() as s:
            rows = await s.execute(
                select(OcpiOutbox.partner_id, func.max(OcpiOutbox.created_at))
                .where(OcpiOutbox.module == "tokens", OcpiOutbox.partner_id.in_(ids))
                .group_by(OcpiOutbox.partner_id)
            )
            since = {p: _aware(t) for p, t in rows}
            oldest = min((t for t in since.values() if t is not None), default=None)
            if len(since) == len(ids) and oldest is not None:
                n = await s.scalar(
                    select(func.count()).select_from(IdToken).where(
                        _shared(), or_(_changed() >= oldest, _changed().is_(None)))
                )  # fmt: skip
                if not n:
                    return
        await push_cards(node, ids, since)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: the next round tries again
                log.exception("OCPI tokens: catching up on changed cards")

    tasks: list[asyncio.Task] = []

    async def start() -> None:
        await catch_up()
        tasks.append(asyncio.create_task(sweep(), name="ocpi-tokens-sweep"))

    async def stop() -> None:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    node.on("id_token.changed", on_card)
    node.on("ocpi.partner.registered", on_registered)
    node.on_start(start)
    node.on_stop(stop)
