"""Partners in the store: invitations, registered partners, lookups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.ocpi.secrets import TokenBox, new_token, token_hash
from evflex.store.ocpi_tables import OcpiPartner

ROLES = ("CPO", "EMSP", "HUB", "NAP", "NSP", "OTHER", "SCSP")


def check_party(country_code: str, party_id: str) -> tuple[str, str]:
    """(country code, party id) in upper case; ValueError naming what is wrong."""
    cc, pid = country_code.strip().upper(), party_id.strip().upper()
    if len(cc) != 2 or not cc.isalpha():
        raise ValueError(f"country code {country_code!r}: two letters (ISO 3166-1 alpha-2)")
    if len(pid) != 3 or not pid.isalnum():
        raise ValueError(f"party id {party_id!r}: three letters or digits")
    return cc, pid


async def invite(
    s: AsyncSession, role: str, country_code: str, party_id: str, now, name: str | None = None
) -> tuple[OcpiPartner, str]:
    """A partner invited with a fresh token A (returned once; only its hash is kept)."""
    if role.upper() not in ROLES:
        raise ValueError(f"role {role!r}: one of {', '.join(ROLES)}")
    cc, pid = check_party(country_code, party_id)
    token = new_token()
    partner = OcpiPartner(
        country_code=cc,
        party_id=pid,
        business_name=name,
        roles=[{"role": role.upper(), "country_code": cc, "party_id": pid}],
        status="invited",
        endpoints=[],
        token_in_hash=token_hash(token),
        created_at=now,
        updated_at=now,
    )
    s.add(partner)
    await s.flush()
    return partner, token


async def add_registered(
    s: AsyncSession,
    box: TokenBox,
    *,
    roles: list[dict[str, Any]],
    endpoints: list[dict[str, Any]],
    token_in: str,
    token_out: str,
    now,
    versions_url: str | None = None,
    version: str = "2.2.1",
) -> OcpiPartner:
    """A registered partner: it calls us with ``token_in``, we call it with ``token_out``."""
    first = roles[0]
    cc, pid = check_party(first["country_code"], first["party_id"])
    partner = OcpiPartner(
        country_code=cc,
        party_id=pid,
        business_name=(first.get("business_details") or {}).get("name"),
        roles=roles,
        status="registered",
        versions_url=versions_url,
        version=version,
        endpoints=endpoints,
        token_in_hash=token_hash(token_in),
        token_out=box.seal(token_out),
        created_at=now,
        updated_at=now,
    )
    s.add(partner)
    await s.flush()
    return partner


async def get(s: AsyncSession, partner_id: int) -> OcpiPartner | None:
    return await s.get(OcpiPartner, partner_id)


async def by_party(
    s: AsyncSession, country_code: str, party_id: str, role: str | None = None
) -> OcpiPartner | None:
    """The registered partner that has party (country code, party id), in ``role`` if given;
    case-insensitive."""
    cc, pid = country_code.upper(), party_id.upper()
    rows = (await s.scalars(select(OcpiPartner).where(OcpiPartner.status == "registered"))).all()
    for p in rows:
        for r in p.roles or ():
            if (
                str(r.get("country_code", "")).upper() == cc
                and str(r.get("party_id", "")).upper() == pid
                and (role is None or r.get("role") == role)
            ):
                return p
    return None
