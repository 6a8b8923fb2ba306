"""How CSMS objects are named in OCPI (our CPO role). Every CPO module uses these.

- A site is a Location with the site's id; a station without a site is a Location
  of its own, with the station's id.
- An EVSE's ``uid`` is ``{station id}-{evse id}``; its ``evse_id`` (eMI3) is
  ``{CC}*{PID}*E{station id, letters and digits}*{evse id}``.
- A connector's id is its OCPP connector id as text ("1").
- A Session's id is the transaction's row id in the store; a CDR's id is the
  charge record's id; a Tariff's id is its site's id.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.store.tables import Station


def location_id(site_id: str | None, station_id: str) -> str:
    return site_id or station_id


def evse_uid(station_id: str, evse_id: int) -> str:
    return f"{station_id}-{evse_id}"


def parse_evse_uid(uid: str) -> tuple[str, int] | None:
    """(station id, evse id) of an ``evse_uid``; None if it is not one of ours."""
    station, sep, evse = uid.rpartition("-")
    if not sep or not station or not evse.isdigit():
        return None
    return station, int(evse)


def emi3_evse_id(country_code: str, party_id: str, station_id: str, evse_id: int) -> str:
    name = re.sub(r"[^A-Za-z0-9]", "", station_id).upper()[:24] or "X"
    return f"{country_code}*{party_id}*E{name}*{evse_id}"


def session_id(transaction_pk: int) -> str:
    return str(transaction_pk)


def cdr_id(record_id: int) -> str:
    return str(record_id)


def tariff_id(site_id: str) -> str:
    return site_id


async def station_named(s: AsyncSession, station_id: str) -> Station | None:
    """The station an OCPI id names. Ids are CiStrings (some peers lower-case them): the
    station with exactly that id, else one whose id differs only in case."""
    station = await s.get(Station, station_id)
    if station is None:
        q = select(Station).where(func.lower(Station.id) == station_id.lower()).limit(1)
        station = (await s.scalars(q)).first()
    return station


async def resolve_evse(
    s: AsyncSession, location: str, uid: str | None
) -> tuple[str, int | None] | None:
    """The (station id, evse id or None) a Location id and EVSE uid name, if the station
    is ours and stands at that Location; None otherwise (unknown location). Both are
    CiStrings: they match whatever their case."""
    if uid is not None:
        parsed = parse_evse_uid(uid)
        if parsed is None:
            return None
        station = await station_named(s, parsed[0])
        if station is None or location_id(station.site_id, station.id).lower() != location.lower():
            return None
        return station.id, parsed[1]
    station = await station_named(s, location)
    if station is not None and not station.site_id:
        return station.id, None
    q = select(Station.id).where(func.lower(Station.site_id) == location.lower()).limit(1)
    first = (await s.scalars(q)).first()
    return (first, None) if first else None
