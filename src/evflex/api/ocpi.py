"""OCPI partners in the REST API: /api/v1/ocpi/... (see :mod:`evflex.ocpi`).

Viewers read the partners (parties, roles, status, modules, delivery: last success,
last error, queue depth, requests answered) and our own OCPI settings; operators
read a partner's outbox rows (a token push's path holds a card's uid) and make its
outbox try again now; admins invite a partner (the answer holds its token A, once)
and unregister one. Writes are audited like every /api/v1 write.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.api.deps import Rt
from evflex.ocpi import credentials, partners
from evflex.store.ocpi_tables import OcpiObject, OcpiOutbox, OcpiPartner

router = APIRouter(prefix="/api/v1/ocpi", tags=["ocpi"])

PartnerId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The partner's id")]
Delivery = Literal["ok", "retrying", "none"]


class PartyRole(BaseModel):
    role: str = Field(description="CPO, EMSP, HUB, NAP, NSP, OTHER or SCSP")
    country_code: str
    party_id: str
    name: str | None = Field(None, description="The role's business name")


class Module(BaseModel):
    identifier: str = Field(description="locations, sessions, cdrs, tariffs, tokens, commands...")
    role: str | None = Field(description="The partner's interface role: SENDER or RECEIVER")
    url: str


class PartnerOut(BaseModel):
    id: int
    country_code: str = Field(description="The party the partner presented first")
    party_id: str
    business_name: str | None
    roles: list[PartyRole]
    status: str = Field(description="invited (token A issued, unused), registered or unregistered")
    versions_url: str | None
    version: str | None
    modules: list[Module] = Field(description="From the partner's version details")
    created_at: datetime
    updated_at: datetime
    last_success_at: datetime | None = Field(description="When a push was last answered")
    last_error_at: datetime | None
    last_error: str | None
    queue_depth: int = Field(description="Pushes waiting in the outbox")
    sent: int = Field(description="Pushes the partner answered")
    failed: int = Field(description="Pushes given up (refused for good, or unregistered)")
    delivery: Delivery = Field(
        description="ok (the last push was answered), retrying (pushes wait and the last "
        "attempt failed) or none (nothing pushed yet)"
    )


class InvitationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(max_length=8, description="The partner's role: EMSP, CPO, HUB...")
    country_code: str = Field(max_length=8, description="ISO 3166-1 alpha-2")
    party_id: str = Field(max_length=8, description="Three letters or digits")
    name: str | None = Field(None, max_length=100, description="The partner's name, for us")


class InvitationOut(BaseModel):
    id: int = Field(description="The partner's id")
    role: str
    country_code: str
    party_id: str
    versions_url: str = Field(description="Our versions URL, to give the partner")
    token: str = Field(description="Token A, shown once: the partner registers with it")


class OutboxRow(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    module: str
    object_key: str
    method: str
    path: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None
    outcome: str | None = Field(description="sent or failed once done; null while pending")
    done_at: datetime | None
    last_error: str | None


class RetryOut(BaseModel):
    id: int
    queue_depth: int


class OcpiSettingsOut(BaseModel):
    country_code: str
    party_id: str
    business_name: str
    roles: list[str]
    base_url: str
    versions_url: str


# ------------------------------------------------------------------ reading


def _delivery(p: OcpiPartner, depth: int) -> Delivery:
    ok, err = p.last_success_at, p.last_error_at
    if depth and err is not None and (ok is None or err >= ok):
        return "retrying"
    return "ok" if ok is not None else "none"


#: The fields of PartnerOut that are the partner row's columns as they are.
_AS_STORED = (
    "id", "country_code", "party_id", "business_name", "status", "versions_url", "version",
    "created_at", "updated_at", "last_success_at", "last_error_at", "last_error",
)  # fmt: skip


def partner_out(p: OcpiPartner, depth: int) -> PartnerOut:
    roles = [
        PartyRole(
            role=str(r.get("role", "")),
            country_code=str(r.get("country_code", "")),
            party_id=str(r.get("party_id", "")),
            name=(r.get("business_details") or {}).get("name"),
        )
        for r in p.roles or ()
    ]
    modules = [
        Module(identifier=str(e.get("identifier")), role=e.get("role"), url=str(e.get("url")))
        for e in p.endpoints or ()
    ]
    return PartnerOut(
        **{name: getattr(p, name) for name in _AS_STORED},
        roles=roles,
        modules=modules,
        queue_depth=depth,
        sent=p.sent_count or 0,
        failed=p.failed_count or 0,
        delivery=_delivery(p, depth),
    )


async def _one(s: AsyncSession, partner_id: int) -> OcpiPartner:
    p = await partners.get(s, partner_id)
    if p is None:
        raise HTTPException(404, f"no OCPI partner {partner_id}")
    return p


@router.get("/partners", response_model=list[PartnerOut])
async def list_partners(rt: Rt) -> list[PartnerOut]:
    """Every partner, invited, registered or unregistered, oldest first."""
    depth = await rt.ocpi.outbox.depth()  # first: a row is at least as new as its queue
    async with rt.sessionmaker() as s:
        rows = (await s.scalars(select(OcpiPartner).order_by(OcpiPartner.id))).all()
    return [partner_out(p, depth.get(p.id, 0)) for p in rows]


@router.get("/partners/{partner_id}", response_model=PartnerOut)
async def get_partner(partner_id: PartnerId, rt: Rt) -> PartnerOut:
    depth = await rt.ocpi.outbox.depth(partner_id)
    async with rt.sessionmaker() as s:
        p = await _one(s, partner_id)
    return partner_out(p, depth.get(p.id, 0))


@router.get("/partners/{partner_id}/outbox", response_model=list[OutboxRow])
async def partner_outbox(
    partner_id: PartnerId,
    rt: Rt,
    state: Literal["pending", "failed", "sent"] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[OutboxRow]:
    """The partner's pushes: pending ones in the order they go out; failed or sent ones,
    the latest first."""
    where: list[Any] = [OcpiOutbox.partner_id == partner_id]
    if state == "pending":
        where.append(~OcpiOutbox.done)
        order = OcpiOutbox.id.asc()
    else:
        where += [OcpiOutbox.done, OcpiOutbox.outcome == state]
        order = OcpiOutbox.id.desc()
    async with rt.sessionmaker() as s:
        await _one(s, partner_id)
        rows = (
            await s.scalars(select(OcpiOutbox).where(*where).order_by(order).limit(limit))
        ).all()
    return [OutboxRow.model_validate(r) for r in rows]


@router.get("/settings", response_model=OcpiSettingsOut)
async def ocpi_settings(rt: Rt) -> OcpiSettingsOut:
    """Our party, roles and the versions URL partners register with."""
    node = rt.ocpi
    return OcpiSettingsOut(
        country_code=node.country_code,
        party_id=node.party_id,
        business_name=rt.settings.ocpi_business_name,
        roles=list(node.roles),
        base_url=node.base_url,
        versions_url=node.versions_url,
    )


class ReceivedOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    partner_id: int
    country_code: str
    party_id: str
    object_id: str
    last_updated: datetime
    data: dict[str, Any] = Field(description="The object as the CPO sent it (merged)")


@router.get("/received/{module}", response_model=list[ReceivedOut])
async def received_objects(
    module: Literal["locations", "sessions", "cdrs", "tariffs"],
    rt: Rt,
    response: Response,
    partner_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ReceivedOut]:
    """What CPO partners sent our eMSP role: their Locations, Sessions, CDRs or Tariffs,
    the latest updated first (``X-Total-Count``)."""
    where: list[Any] = [OcpiObject.module == module]
    if partner_id is not None:
        where.append(OcpiObject.partner_id == partner_id)
    async with rt.sessionmaker() as s:
        total = (await s.scalar(select(func.count()).select_from(OcpiObject).where(*where))) or 0
        rows = (
            await s.scalars(
                select(OcpiObject)
                .where(*where)
                .order_by(OcpiObject.last_updated.desc(), OcpiObject.id.desc())
                .offset(offset)
                .limit(limit)
            )
        ).all()
    response.headers["X-Total-Count"] = str(total)
    return [ReceivedOut.model_validate(r) for r in rows]


# ------------------------------------------------------------------ writing


@router.post("/invitations", response_model=InvitationOut, status_code=201)
async def create_invitation(body: InvitationIn, rt: Rt) -> InvitationOut:
    """A partner invited with a fresh token A; give it the versions URL and the token (shown
    once: only its hash is kept)."""
    now = rt.clock.now()

    async def job(s: AsyncSession) -> tuple[OcpiPartner, str]:
        try:
            return await partners.invite(
                s, body.role, body.country_code, body.party_id, now, body.name
            )
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    partner, token = await rt.writer.submit(job)
    return InvitationOut(
        id=partner.id,
        role=partner.roles[0]["role"],
        country_code=partner.country_code,
        party_id=partner.party_id,
        versions_url=rt.ocpi.versions_url,
        token=token,
    )


class UnregisteredOut(PartnerOut):
    problem: str | None = Field(
        description="Why the partner could not be told (it is unregistered here all the same)"
    )


@router.delete("/partners/{partner_id}", response_model=UnregisteredOut)
async def unregister_partner(partner_id: PartnerId, rt: Rt) -> UnregisteredOut:
    """Unregister a partner (a registered one is told with a DELETE of its credentials) or
    withdraw an invitation: its token stops opening our OCPI endpoints, its waiting pushes are
    given up; the row stays, as unregistered (409 if it is already)."""
    async with rt.sessionmaker() as s:
        partner = await _one(s, partner_id)
    try:
        problem = await credentials.unregister(rt.ocpi, partner)
    except credentials.RegistrationError as exc:
        raise HTTPException(409, exc.message) from None
    rt.ocpi.outbox.retry_now(partner_id)  # its waiting rows are given up now
    out = await get_partner(partner_id, rt)
    return UnregisteredOut(**out.model_dump(), problem=problem)


@router.post("/partners/{partner_id}/retry", response_model=RetryOut)
async def retry_partner(partner_id: PartnerId, rt: Rt) -> RetryOut:
    """Send the partner's waiting pushes now, not at the end of its backoff."""
    async with rt.sessionmaker() as s:
        await _one(s, partner_id)
    rt.ocpi.outbox.retry_now(partner_id)
    depth = await rt.ocpi.outbox.depth(partner_id)
    return RetryOut(id=partner_id, queue_depth=depth.get(partner_id, 0))
