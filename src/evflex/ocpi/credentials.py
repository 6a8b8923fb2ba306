"""OCPI 2.2.1 credentials: registration with partners, both directions.

**A partner registers with us** (we are the credentials Receiver): ``evflex ocpi invite``
makes a token A. The partner fetches our versions with it and POSTs its Credentials
(its token B, its versions URL, its roles). We fetch its versions and 2.2.1 details
with token B, keep its endpoints and roles, keep token B encrypted (we call it with
that), and answer our Credentials with a fresh token C, whose hash replaces token A's:
token A dies, token C is what the partner calls us with from then on.

**We register with a partner** (:func:`register`, ``evflex ocpi register``): with the
partner's token A we fetch its versions and details, make a token B and POST our
Credentials to its credentials endpoint; it fetches our versions with token B (so this
node must be serving at ``ocpi_base_url`` on the same database, which a row with
status ``pending`` makes work) and answers its token C, which we keep encrypted.

PUT rotates the tokens (either direction: :func:`update` is ours), DELETE ends the
registration (:func:`unregister` is ours): both tokens die, the row stays as
``unregistered``.

GET answers the Credentials the caller uses with us. We keep only a hash of the token
a partner calls us with, so we cannot read it back; the caller just presented it, so
the answer carries the token of the request itself: the token that is valid for it,
which is what the Credentials object's ``token`` is, and nothing it did not know.

A registration made by the CLI while the node is stopped takes effect when it starts:
the modules treat a registered partner they never pushed to like a new one.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy import update as sql_update

from evflex.ocpi.client import PartnerError
from evflex.ocpi.node import OcpiParty
from evflex.ocpi.partners import ROLES, check_party
from evflex.ocpi.secrets import header_candidates, new_token, token_hash
from evflex.ocpi.transport import (
    CLIENT_ERROR,
    INVALID_PARAMETERS,
    NO_MATCHING_ENDPOINTS,
    UNABLE_TO_USE_CLIENT_API,
    UNSUPPORTED_VERSION,
    VERSION,
    OcpiError,
    any_partner,
    field_errors,
    reply,
    runtime,
)
from evflex.store.ocpi_tables import OcpiOutbox, OcpiPartner

log = logging.getLogger(__name__)

router = APIRouter()


def attach(node: Any) -> None:
    """Register this module's event handlers on the OCPI node (it has none)."""


class RegistrationError(OcpiError):
    """A registration, update or unregistration that did not happen (nothing was kept)."""


# ---------------------------------------------------------------- the Credentials object


class BusinessDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=100)
    website: str | None = Field(None, max_length=255)


class CredentialsRole(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal[ROLES]  # type: ignore[valid-type]
    business_details: BusinessDetails
    party_id: str = Field(pattern=r"^[A-Za-z0-9]{3}$")
    country_code: str = Field(pattern=r"^[A-Za-z]{2}$")


class Credentials(BaseModel):
    model_config = ConfigDict(extra="ignore")

    token: str = Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")  # ASCII, no spaces
    url: str = Field(max_length=255, pattern=r"^https?://[^/\s]+")
    roles: list[CredentialsRole] = Field(min_length=1)

    @field_validator("roles")
    @classmethod
    def _unique(cls, roles: list[CredentialsRole]) -> list[CredentialsRole]:
        seen = set()
        for r in roles:
            key = (r.role, r.country_code.upper(), r.party_id.upper())
            if key in seen:
                raise ValueError(f"role {'/'.join(key)} given twice")
            seen.add(key)
        return roles

    def stored_roles(self) -> list[dict[str, Any]]:
        """The roles as we keep them: country code and party id in upper case (peers may
        send lower case; CiString compares without case)."""
        out = []
        for r in self.roles:
            d = r.model_dump(exclude_none=True)
            d["country_code"], d["party_id"] = check_party(r.country_code, r.party_id)
            out.append(d)
        return out


def ours(party: OcpiParty, token: str) -> dict[str, Any]:
    """Our Credentials object with ``token`` (for the partner to call us with)."""
    return {"token": token, "url": party.versions_url, "roles": party.our_roles()}


def _partner_fields(creds: Credentials) -> dict[str, Any]:
    roles = creds.stored_roles()
    return {
        "roles": roles,
        "country_code": roles[0]["country_code"],
        "party_id": roles[0]["party_id"],
        "business_name": roles[0]["business_details"]["name"][:100],
        "versions_url": creds.url,
    }


# ---------------------------------------------------------------- the partner's versions


async def fetch_endpoints(party: OcpiParty, versions_url: str, token: str) -> list[dict[str, str]]:
    """The partner's 2.2.1 endpoints (its versions, then that version's details, fetched
    with ``token``). 3002 if it does not speak 2.2.1, 3001 if either cannot be had."""

    async def get(url: str, what: str) -> Any:
        try:
            return (await party.client.call("GET", url, token)).data
        except PartnerError as exc:
            raise RegistrationError(UNABLE_TO_USE_CLIENT_API, f"cannot get {what}: {exc}") from None

    versions = await get(versions_url, "the versions")
    if not isinstance(versions, list) or not all(isinstance(v, dict) for v in versions):
        raise RegistrationError(UNABLE_TO_USE_CLIENT_API, f"{versions_url}: no list of versions")
    details_url = next((v.get("url") for v in versions if v.get("version") == VERSION), None)
    if not isinstance(details_url, str):
        offered = ", ".join(str(v.get("version")) for v in versions) or "none"
        raise RegistrationError(
            UNSUPPORTED_VERSION, f"{versions_url} offers no OCPI {VERSION} (offers: {offered})"
        )
    details = await get(details_url, f"the {VERSION} details")
    raw = details.get("endpoints") if isinstance(details, dict) else None
    if not isinstance(raw, list):
        raise RegistrationError(UNABLE_TO_USE_CLIENT_API, f"{details_url}: no endpoints")
    endpoints = []
    for e in raw:
        if not (isinstance(e, dict) and isinstance(e.get("identifier"), str)
                and isinstance(e.get("url"), str)):  # fmt: skip
            raise RegistrationError(UNABLE_TO_USE_CLIENT_API, f"{details_url}: bad endpoint {e!r}")
        endpoints.append({"identifier": e["identifier"], "role": str(e.get("role") or ""),
                          "url": e["url"]})  # fmt: skip
    return endpoints


def credentials_url(endpoints: list[dict[str, str]]) -> str | None:
    """The partner's credentials endpoint, as it wrote it (a trailing slash may matter)."""
    found = [e for e in endpoints if e["identifier"] == "credentials"]
    found.sort(key=lambda e: e["role"] != "RECEIVER")
    return found[0]["url"] if found else None


# ---------------------------------------------------------------- the partner calls us


def _presented_token(request: Request, partner: OcpiPartner) -> str:
    for t in header_candidates(request.headers.get("Authorization")):
        if token_hash(t) == partner.token_in_hash:
            return t
    raise OcpiError(CLIENT_ERROR, "unknown or revoked token", http_status=401)


def _not_allowed(message: str) -> OcpiError:
    return OcpiError(CLIENT_ERROR, message, http_status=405)


async def _parsed(request: Request) -> Credentials:
    """The request's Credentials; 2001 naming the field that is missing or wrong."""
    try:
        body = await request.json()
    except ValueError:
        raise OcpiError(INVALID_PARAMETERS, "body is not valid JSON", http_status=400) from None
    try:
        return Credentials.model_validate(body)
    except ValidationError as exc:
        message = "Invalid or missing parameters: " + field_errors(exc.errors())
        raise OcpiError(INVALID_PARAMETERS, message[:500]) from None


async def _swap(party: OcpiParty, partner: OcpiPartner, status: str, values: dict) -> None:
    """Update the partner's row if it is still as we read it (status, token); 405 if a
    concurrent request changed it first."""

    async def job(s):
        r = await s.execute(
            sql_update(OcpiPartner)
            .where(
                OcpiPartner.id == partner.id,
                OcpiPartner.status == status,
                OcpiPartner.token_in_hash == partner.token_in_hash,
            )  # fmt: skip
            .values(**values, updated_at=party.clock.now())
        )
        return r.rowcount

    if await party.write(job) != 1:
        raise _not_allowed("the credentials changed meanwhile")


@router.get("")
@router.get("/", include_in_schema=False)
async def get_credentials(request: Request, partner: OcpiPartner = Depends(any_partner)):
    """Our Credentials for the caller: the token it called with, our versions URL, roles."""
    node = runtime(request).ocpi
    return reply(request, ours(node, _presented_token(request, partner)))


@router.post("")
@router.post("/", include_in_schema=False)
async def post_credentials(request: Request, partner: OcpiPartner = Depends(any_partner)):
    """Registration with the token A of an invitation."""
    if partner.status == "registered":
        raise _not_allowed("already registered: PUT updates the credentials, DELETE ends them")
    if partner.status != "invited":
        raise _not_allowed("this token is not an invitation's token A")
    creds = await _parsed(request)
    invited = (partner.country_code, partner.party_id)
    if not any((r.country_code.upper(), r.party_id.upper()) == invited for r in creds.roles):
        raise OcpiError(INVALID_PARAMETERS,
                        f"roles: this invitation is for party {'/'.join(invited)}")  # fmt: skip
    return await _accept(request, partner, creds, "invited")


async def _accept(request: Request, partner: OcpiPartner, creds: Credentials, status: str):
    """Take the partner's credentials (POST, PUT): its endpoints fetched with its token,
    a new token C for it; the row changes only if still in ``status``."""
    node = runtime(request).ocpi
    endpoints = await fetch_endpoints(node, creds.url, creds.token)
    token_c = new_token()
    values = {**_partner_fields(creds), "status": "registered", "version": VERSION,
              "endpoints": endpoints, "token_in_hash": token_hash(token_c),
              "token_out": node.box.seal(creds.token)}  # fmt: skip
    await _swap(node, partner, status, values)
    node.publish("ocpi.partner.registered", partner_id=partner.id)
    return reply(request, ours(node, token_c))


@router.put("")
@router.put("/", include_in_schema=False)
async def put_credentials(request: Request, partner: OcpiPartner = Depends(any_partner)):
    """New credentials of a registered partner: its new token B and endpoints; it gets
    a new token C, the one it called with dies."""
    if partner.status != "registered":
        raise _not_allowed("not registered: POST registers")
    return await _accept(request, partner, await _parsed(request), "registered")


@router.delete("")
@router.delete("/", include_in_schema=False)
async def delete_credentials(request: Request, partner: OcpiPartner = Depends(any_partner)):
    """Unregistration: both tokens die; the row stays, ``unregistered``."""
    if partner.status != "registered":
        raise _not_allowed("not registered")
    node = runtime(request).ocpi
    await _swap(node, partner, "registered", _dead())
    node.publish("ocpi.partner.unregistered", partner_id=partner.id)
    return reply(request)


def _dead() -> dict[str, Any]:
    return {"status": "unregistered", "token_in_hash": None, "token_out": None}


# ---------------------------------------------------------------- we call the partner


async def register(node: OcpiParty, versions_url: str, token_a: str) -> OcpiPartner:
    """Register this node with the partner at ``versions_url`` that gave us ``token_a``;
    the partner's row (registered). Raises :class:`RegistrationError`, keeping nothing."""
    versions_url = versions_url.strip()
    async with node.sessionmaker() as s:
        known = (await s.scalars(select(OcpiPartner).where(
            OcpiPartner.versions_url == versions_url,
            OcpiPartner.status.in_(("registered", "pending"))))).first()  # fmt: skip
    if known is not None:
        raise RegistrationError(CLIENT_ERROR, f"partner {known.id} at {versions_url} is "
                                f"{known.status} already: update or unregister it")  # fmt: skip
    endpoints = await fetch_endpoints(node, versions_url, token_a)
    url = credentials_url(endpoints)
    if url is None:
        raise RegistrationError(NO_MATCHING_ENDPOINTS, f"{versions_url}: no credentials endpoint")
    token_b = new_token()
    pending_id = await _pending(node, versions_url, endpoints, token_b)
    try:
        answer = await _exchange(node, "POST", url, token_a, token_b)
    except RegistrationError:
        await node.write(lambda s: s.execute(_drop(pending_id)))
        raise
    values = {**_partner_fields(answer), "versions_url": versions_url, "status": "registered",
              "token_out": node.box.seal(answer.token)}  # fmt: skip

    async def finish(s):
        await s.execute(sql_update(OcpiPartner).where(OcpiPartner.id == pending_id)
                        .values(**values, updated_at=node.clock.now()))  # fmt: skip
        return await s.get(OcpiPartner, pending_id, populate_existing=True)

    partner = await node.write(finish)
    node.publish("ocpi.partner.registered", partner_id=partner.id)
    return partner


async def _pending(node: OcpiParty, versions_url: str | None, endpoints: list, token: str) -> int:
    """A row whose ``token`` opens our versions and details for the partner during a
    handshake of ours (committed: the partner calls while we wait for its answer)."""
    now = node.clock.now()

    async def add(s):
        row = OcpiPartner(country_code="", party_id="", roles=[], status="pending",
                          versions_url=versions_url, version=VERSION, endpoints=endpoints,
                          token_in_hash=token_hash(token), created_at=now, updated_at=now)  # fmt: skip
        s.add(row)
        await s.flush()
        return row.id

    return await node.write(add)


def _drop(pending_id: int):
    return delete(OcpiPartner).where(OcpiPartner.id == pending_id)


async def _exchange(node: OcpiParty, method: str, url: str, token: str, offer: str) -> Credentials:
    """Send our Credentials with token ``offer`` (POST or PUT, authorised with ``token``);
    the partner's Credentials it answers."""
    try:
        answer = await node.client.call(method, url, token, ours(node, offer))
    except PartnerError as exc:
        raise RegistrationError(UNABLE_TO_USE_CLIENT_API, str(exc)) from None
    try:
        return Credentials.model_validate(answer.data)
    except ValidationError as exc:
        raise RegistrationError(UNABLE_TO_USE_CLIENT_API,
                                f"{method} {url}: its credentials: {field_errors(exc.errors())}"
                                ) from None  # fmt: skip


async def update(node: OcpiParty, partner: OcpiPartner) -> OcpiPartner:
    """New credentials with a registered partner: we PUT a new token B (the old one works
    until the partner answered), it answers a new token C; our copy of its endpoints is
    refreshed. Raises :class:`RegistrationError` with the old tokens still good."""
    if partner.status != "registered":
        raise RegistrationError(CLIENT_ERROR, f"partner {partner.id} is {partner.status}")
    url = credentials_url(partner.endpoints or [])
    if url is None:
        raise RegistrationError(NO_MATCHING_ENDPOINTS, f"partner {partner.id}: no credentials "
                                "endpoint")  # fmt: skip
    token_b = new_token()  # opens our versions while the partner fetches them; B still works
    pending_id = await _pending(node, partner.versions_url, [], token_b)
    drop = _drop(pending_id)
    try:
        answer = await _exchange(node, "PUT", url, node.token_of(partner), token_b)
    except RegistrationError:
        await node.write(lambda s: s.execute(drop))
        raise
    values = {**_partner_fields(answer), "token_in_hash": token_hash(token_b),
              "token_out": node.box.seal(answer.token)}  # fmt: skip
    try:  # the partner switched to the new tokens: keep them even if this fails
        values["endpoints"] = await fetch_endpoints(node, answer.url, answer.token)
    except RegistrationError as exc:
        log.warning("partner %s: new credentials kept, its endpoints not refreshed: %s",
                    partner.id, exc.message)  # fmt: skip

    async def finish(s):
        await s.execute(drop)
        await s.flush()
        await s.execute(sql_update(OcpiPartner).where(OcpiPartner.id == partner.id)
                        .values(**values, updated_at=node.clock.now()))  # fmt: skip
        return await s.get(OcpiPartner, partner.id, populate_existing=True)

    fresh = await node.write(finish)
    node.publish("ocpi.partner.registered", partner_id=fresh.id)
    return fresh


async def unregister(node: OcpiParty, partner: OcpiPartner) -> str | None:
    """End the registration with ``partner`` (or withdraw an unused invitation): our
    tokens with it die, the row stays ``unregistered``. A registered partner is told
    with a DELETE first; None if it acknowledged (or was only invited), else why not
    (we unregister anyway: the partner's token no longer opens anything here)."""
    problem = None
    if partner.status == "registered":
        url = credentials_url(partner.endpoints or [])
        if url is None:
            problem = "it has no credentials endpoint"
        else:
            try:
                await node.client.call("DELETE", url, node.token_of(partner))
            except (PartnerError, ValueError) as exc:
                problem = str(exc)
    elif partner.status == "unregistered":
        raise RegistrationError(CLIENT_ERROR, f"partner {partner.id} is unregistered already")

    async def job(s):
        await s.execute(sql_update(OcpiPartner).where(OcpiPartner.id == partner.id)
                        .values(**_dead(), updated_at=node.clock.now()))  # fmt: skip

    await node.write(job)
    node.publish("ocpi.partner.unregistered", partner_id=partner.id)
    return problem


# ---------------------------------------------------------------- listing


async def summaries(s) -> list[dict[str, Any]]:
    """Every partner: id, status, parties and roles, last success and error, queue depth."""
    depth = dict((await s.execute(
        select(OcpiOutbox.partner_id, func.count()).where(~OcpiOutbox.done)
        .group_by(OcpiOutbox.partner_id))).all())  # fmt: skip
    rows = (await s.scalars(select(OcpiPartner).order_by(OcpiPartner.id))).all()
    return [
        {
            "id": p.id,
            "status": p.status,
            "name": p.business_name,
            "roles": [
                f"{r.get('role')} {r.get('country_code')}/{r.get('party_id')}"
                for r in p.roles or ()
            ],  # fmt: skip
            "versions_url": p.versions_url,
            "last_success_at": p.last_success_at,
            "last_error": p.last_error,
            "queue": depth.get(p.id, 0),
        }
        for p in rows
    ]
