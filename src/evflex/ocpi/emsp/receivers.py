"""OCPI 2.2.1 eMSP receivers: the Locations, Sessions, CDRs and Tariffs CPO partners
push to us, stored one row per object (:class:`~evflex.store.ocpi_tables.OcpiObject`).

- ``/locations/{cc}/{pid}/{location_id}[/{evse_uid}[/{connector_id}]]`` GET, PUT,
  PATCH: an EVSE or Connector is merged into its Location's JSON, and its
  ``last_updated`` becomes its parents' too. An unknown Location (or EVSE, Connector)
  is 2003.
- ``/sessions/{cc}/{pid}/{session_id}`` GET, PUT, PATCH: a PATCH's ``charging_periods``
  are added to the stored ones (a period with the same ``start_date_time`` is
  replaced, so a repeated PATCH adds nothing).
- ``/cdrs`` POST, answered with a ``Location`` header; GET of that URL. A CDR cannot
  be replaced: the same CDR again is answered as the first time, a different one
  under the same id is 2001.
- ``/tariffs/{cc}/{pid}/{tariff_id}`` GET, PUT, DELETE.

A partner writes only objects of its own parties (country code and party id compare
case-insensitively and are stored upper case). Bodies are checked against the main
fields the spec requires (2001 naming the field); fields we do not model, extensions
included, are kept as sent. Every PUT and PATCH is idempotent; a PUT replaces the
stored object as the spec says, whatever its ``last_updated`` (a partner's pushes
arrive in order). Unknown Sessions, CDRs and Tariffs are HTTP 404.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, create_model
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.ocpi.transport import (
    CLIENT_ERROR,
    INVALID_PARAMETERS,
    PREFIX,
    UNKNOWN_LOCATION,
    VERSION,
    OcpiError,
    parse_datetime,
    registered_partner,
    reply,
    require_own_party,
    runtime,
)
from evflex.store.ocpi_tables import OcpiObject, OcpiPartner

router = APIRouter()

Partner = Depends(registered_partner)

# ---------------------------------------------------------------- the objects' main fields


class Obj(BaseModel):
    """Fields we do not name (optional ones, extensions) pass through."""

    model_config = ConfigDict(extra="allow")


CiId = Field(min_length=1, max_length=36)
CountryCode = Field(min_length=2, max_length=2)
PartyId = Field(min_length=3, max_length=3)


class GeoLocation(Obj):
    latitude: str = Field(max_length=10)
    longitude: str = Field(max_length=11)


class Connector(Obj):
    id: str = CiId
    standard: str
    format: str
    power_type: str
    max_voltage: int
    max_amperage: int
    last_updated: datetime


EvseStatus = Literal[
    "AVAILABLE", "BLOCKED", "CHARGING", "INOPERATIVE", "OUTOFORDER", "PLANNED", "REMOVED",
    "RESERVED", "UNKNOWN",
]  # fmt: skip


class ConnectorRef(Obj):
    """A Connector inside an EVSE: its id is enough (the spec's own "add an EVSE"
    example sends connectors without their power fields)."""

    id: str = CiId


class Evse(Obj):
    uid: str = CiId
    status: EvseStatus
    connectors: list[ConnectorRef] = Field(min_length=1)
    last_updated: datetime


class Location(Obj):
    country_code: str = CountryCode
    party_id: str = PartyId
    id: str = CiId
    publish: bool
    address: str
    city: str
    country: str
    coordinates: GeoLocation
    time_zone: str
    evses: list[Evse] | None = None
    last_updated: datetime


class CdrToken(Obj):
    # required in 2.2.1's table, yet missing in the spec's own examples: not insisted on
    country_code: str | None = Field(None, min_length=2, max_length=2)
    party_id: str | None = Field(None, min_length=3, max_length=3)
    uid: str = CiId
    type: str
    contract_id: str = CiId


class CdrDimension(Obj):
    type: str
    volume: float


class ChargingPeriod(Obj):
    start_date_time: datetime
    dimensions: list[CdrDimension]


class Session(Obj):
    country_code: str = CountryCode
    party_id: str = PartyId
    id: str = CiId
    start_date_time: datetime
    end_date_time: datetime | None = None
    kwh: float
    cdr_token: CdrToken
    auth_method: str
    location_id: str = CiId
    evse_uid: str = CiId
    connector_id: str = CiId
    currency: str = Field(min_length=3, max_length=3)
    charging_periods: list[ChargingPeriod] | None = None
    status: Literal["ACTIVE", "COMPLETED", "INVALID", "PENDING", "RESERVATION"]
    last_updated: datetime


class Price(Obj):
    excl_vat: float


class Cdr(Obj):
    country_code: str = CountryCode
    party_id: str = PartyId
    id: str = Field(min_length=1, max_length=39)
    start_date_time: datetime
    end_date_time: datetime
    cdr_token: CdrToken
    auth_method: str
    cdr_location: dict[str, Any]
    currency: str = Field(min_length=3, max_length=3)
    charging_periods: list[ChargingPeriod] = Field(min_length=1)
    total_cost: Price
    total_energy: float
    total_time: float
    last_updated: datetime


class PriceComponent(Obj):
    type: str
    price: float
    step_size: int


class TariffElement(Obj):
    price_components: list[PriceComponent] = Field(min_length=1)


class Tariff(Obj):
    country_code: str = CountryCode
    party_id: str = PartyId
    id: str = CiId
    currency: str = Field(min_length=3, max_length=3)
    elements: list[TariffElement] = Field(min_length=1)
    last_updated: datetime


def _patch_of(model: type[Obj]) -> type[Obj]:
    """The PATCH form of ``model``: every field optional but ``last_updated``."""
    fields: dict[str, Any] = {
        name: (info.annotation | None, None)
        for name, info in model.model_fields.items()
        if name != "last_updated"
    }
    fields["last_updated"] = (datetime, ...)
    return create_model(f"{model.__name__}Patch", __base__=Obj, **fields)


LocationPatch = _patch_of(Location)
EvsePatch = _patch_of(Evse)
ConnectorPatch = _patch_of(Connector)
SessionPatch = _patch_of(Session)

# ---------------------------------------------------------------- store


def _key(cc: str, pid: str) -> tuple[str, str]:
    return cc.upper(), pid.upper()


async def _find(s: AsyncSession, module: str, cc: str, pid: str, oid: str) -> OcpiObject | None:
    cc, pid = _key(cc, pid)
    q = select(OcpiObject).where(
        OcpiObject.module == module,
        OcpiObject.country_code == cc,
        OcpiObject.party_id == pid,
        OcpiObject.object_id == oid,
    )
    return (await s.scalars(q)).first()


async def stored(node: Any, module: str, cc: str, pid: str, oid: str) -> dict[str, Any] | None:
    """The object a partner sent us (a copy of its JSON), or None."""
    async with node.sessionmaker() as s:
        row = await _find(s, module, cc, pid, oid)
        return dict(row.data) if row is not None else None


def _raw(body: Obj) -> dict[str, Any]:
    """The object as sent (the model checked it); party fields upper case."""
    data = body.model_dump(mode="json", exclude_unset=True)
    for name in ("country_code", "party_id"):
        if isinstance(data.get(name), str):
            data[name] = data[name].upper()
    return data


def _when(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    try:
        return parse_datetime(str(value)) if value else None
    except ValueError:
        return None


def _later(a: Any, b: Any) -> Any:
    ta, tb = _when(a), _when(b)
    if ta is None:
        return b
    if tb is None:
        return a
    return b if tb >= ta else a


def _check_ids(body: dict[str, Any], cc: str, pid: str, oid: str | None, id_field: str = "id"):
    """The object's own party and id must be the URL's (2001)."""
    for name, value in (("country_code", cc), ("party_id", pid)):
        if name in body and str(body[name]).upper() != value.upper():
            raise OcpiError(INVALID_PARAMETERS, f"{name} {body[name]!r} differs from the URL's")
    if oid is not None and id_field in body and str(body[id_field]) != oid:
        raise OcpiError(INVALID_PARAMETERS, f"{id_field} {body[id_field]!r} differs from the URL's")


async def _save(request: Request, partner: OcpiPartner, module: str, cc: str, pid: str,
                oid: str, change) -> Any:  # fmt: skip
    """Run ``change(old data or None) -> new data`` on the stored object in one write.

    ``change`` raises :class:`OcpiError` to refuse; returning None leaves it as it is."""
    rt = runtime(request)
    cc, pid = _key(cc, pid)
    now = rt.clock.now()

    async def job(s: AsyncSession) -> bool | OcpiError:
        row = await _find(s, module, cc, pid, oid)
        try:
            new = change(dict(row.data) if row is not None else None)
        except OcpiError as exc:  # a refusal, not a failed write
            return exc
        if new is None:
            return False
        last = _when(new.get("last_updated")) or now
        if row is None:
            s.add(OcpiObject(partner_id=partner.id, module=module, country_code=cc,
                             party_id=pid, object_id=oid, data=new, last_updated=last))  # fmt: skip
        else:
            row.partner_id, row.data, row.last_updated = partner.id, new, last
        return True

    changed = await rt.writer.submit(job)
    if isinstance(changed, OcpiError):
        raise changed
    if changed:
        rt.bus.publish("ocpi.object.received", None, module=module, country_code=cc,
                       party_id=pid, object_id=oid, partner_id=partner.id)  # fmt: skip
    return changed


def _own(partner: OcpiPartner, cc: str, pid: str) -> None:
    require_own_party(partner, cc, pid)


def _unknown(what: str) -> OcpiError:
    return OcpiError(CLIENT_ERROR, f"unknown {what}", http_status=404)


async def _get_one(request: Request, partner: OcpiPartner, module: str, cc: str, pid: str,
                   oid: str):  # fmt: skip
    """GET of a Session or Tariff: the stored object, or HTTP 404."""
    _own(partner, cc, pid)
    data = await stored(runtime(request).ocpi, module, cc, pid, oid)
    if data is None:
        raise _unknown(f"{module[:-1]} {oid}")
    return reply(request, data)


async def _put_one(request: Request, partner: OcpiPartner, module: str, cc: str, pid: str,
                   oid: str, body: Obj, **defaults: Any):  # fmt: skip
    """PUT of a Session or Tariff: the object replaces the stored one unless older."""
    _own(partner, cc, pid)
    data = _raw(body)
    _check_ids(data, cc, pid, oid)
    for name, value in defaults.items():
        data.setdefault(name, value)

    def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
        return data

    await _save(request, partner, module, cc, pid, oid, change)
    return reply(request)


# ---------------------------------------------------------------- locations


def _find_in(items: list[dict[str, Any]] | None, field: str, value: str) -> int | None:
    for i, item in enumerate(items or ()):
        if str(item.get(field)) == value:
            return i
    return None


def _replace_in(parent: dict[str, Any], list_field: str, id_field: str, item: dict[str, Any]):
    items = list(parent.get(list_field) or [])
    i = _find_in(items, id_field, str(item[id_field]))
    if i is None:
        items.append(item)
    else:
        items[i] = item
    parent[list_field] = items
    parent["last_updated"] = _later(parent.get("last_updated"), item.get("last_updated"))


def _no_location(what: str) -> OcpiError:
    return OcpiError(UNKNOWN_LOCATION, f"unknown {what}")


def _location_change(lid: str, evse_uid: str | None, connector_id: str | None,
                     body: dict[str, Any], patch: bool):  # fmt: skip
    """The change of a stored Location a PUT or PATCH on this URL makes."""

    def change(loc: dict[str, Any] | None) -> dict[str, Any] | None:
        if evse_uid is None:  # the Location itself
            if loc is None and patch:
                raise _no_location(f"location {lid}")
            return {**loc, **body} if patch and loc is not None else body
        if loc is None:
            raise _no_location(f"location {lid}")
        i = _find_in(loc.get("evses"), "uid", evse_uid)
        if connector_id is None:  # an EVSE
            old = loc["evses"][i] if i is not None else None
            if old is None and patch:
                raise _no_location(f"EVSE {evse_uid} of location {lid}")
            _replace_in(loc, "evses", "uid", {**old, **body} if patch and old else body)
            return loc
        if i is None:
            raise _no_location(f"EVSE {evse_uid} of location {lid}")
        evse = dict(loc["evses"][i])
        j = _find_in(evse.get("connectors"), "id", connector_id)
        old = evse["connectors"][j] if j is not None else None
        if old is None and patch:
            raise _no_location(f"connector {connector_id} of EVSE {evse_uid}")
        _replace_in(evse, "connectors", "id", {**old, **body} if patch and old else body)
        _replace_in(loc, "evses", "uid", evse)
        return loc

    return change


def _location_part(loc: dict[str, Any] | None, lid: str, evse_uid: str | None,
                   connector_id: str | None) -> dict[str, Any]:  # fmt: skip
    if loc is None:
        raise _no_location(f"location {lid}")
    if evse_uid is None:
        return loc
    i = _find_in(loc.get("evses"), "uid", evse_uid)
    if i is None:
        raise _no_location(f"EVSE {evse_uid} of location {lid}")
    evse = loc["evses"][i]
    if connector_id is None:
        return evse
    j = _find_in(evse.get("connectors"), "id", connector_id)
    if j is None:
        raise _no_location(f"connector {connector_id} of EVSE {evse_uid}")
    return evse["connectors"][j]


async def _location_get(request, partner, cc, pid, lid, evse_uid=None, connector_id=None):
    _own(partner, cc, pid)
    loc = await stored(runtime(request).ocpi, "locations", cc, pid, lid)
    return reply(request, _location_part(loc, lid, evse_uid, connector_id))


async def _location_write(request, partner, cc, pid, lid, evse_uid, connector_id, body, patch):
    _own(partner, cc, pid)
    data = _raw(body)
    if evse_uid is None:
        _check_ids(data, cc, pid, lid)
    elif connector_id is None:
        _check_ids(data, cc, pid, evse_uid, "uid")
    else:
        _check_ids(data, cc, pid, connector_id)
    change = _location_change(lid, evse_uid, connector_id, data, patch)
    await _save(request, partner, "locations", cc, pid, lid, change)
    return reply(request)


L = "/locations/{country_code}/{party_id}/{location_id}"


@router.get(L)
async def get_location(request: Request, country_code: str, party_id: str, location_id: str,
                       partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_get(request, partner, country_code, party_id, location_id)


@router.get(L + "/{evse_uid}")
async def get_evse(request: Request, country_code: str, party_id: str, location_id: str,
                   evse_uid: str, partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_get(request, partner, country_code, party_id, location_id, evse_uid)


@router.get(L + "/{evse_uid}/{connector_id}")
async def get_connector(request: Request, country_code: str, party_id: str, location_id: str,
                        evse_uid: str, connector_id: str,
                        partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_get(request, partner, country_code, party_id, location_id,
                               evse_uid, connector_id)  # fmt: skip


@router.put(L)
async def put_location(request: Request, country_code: str, party_id: str, location_id: str,
                       body: Location, partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 None, None, body, patch=False)  # fmt: skip


@router.patch(L)
async def patch_location(request: Request, country_code: str, party_id: str, location_id: str,
                         body: LocationPatch, partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 None, None, body, patch=True)  # fmt: skip


@router.put(L + "/{evse_uid}")
async def put_evse(request: Request, country_code: str, party_id: str, location_id: str,
                   evse_uid: str, body: Evse, partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 evse_uid, None, body, patch=False)  # fmt: skip


@router.patch(L + "/{evse_uid}")
async def patch_evse(request: Request, country_code: str, party_id: str, location_id: str,
                     evse_uid: str, body: EvsePatch, partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 evse_uid, None, body, patch=True)  # fmt: skip


@router.put(L + "/{evse_uid}/{connector_id}")
async def put_connector(request: Request, country_code: str, party_id: str, location_id: str,
                        evse_uid: str, connector_id: str, body: Connector,
                        partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 evse_uid, connector_id, body, patch=False)  # fmt: skip


@router.patch(L + "/{evse_uid}/{connector_id}")
async def patch_connector(request: Request, country_code: str, party_id: str, location_id: str,
                          evse_uid: str, connector_id: str, body: ConnectorPatch,
                          partner: OcpiPartner = Partner):  # fmt: skip
    return await _location_write(request, partner, country_code, party_id, location_id,
                                 evse_uid, connector_id, body, patch=True)  # fmt: skip


# ---------------------------------------------------------------- sessions

S = "/sessions/{country_code}/{party_id}/{session_id}"


def _merge_periods(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` plus ``new``; a new period with an old one's start replaces it."""
    out = list(old)
    starts = {_when(p.get("start_date_time")): i for i, p in enumerate(out)}
    for p in new:
        i = starts.get(_when(p.get("start_date_time")))
        if i is None:
            starts[_when(p.get("start_date_time"))] = len(out)
            out.append(p)
        else:
            out[i] = p
    return out


@router.get(S)
async def get_session(request: Request, country_code: str, party_id: str, session_id: str,
                      partner: OcpiPartner = Partner):  # fmt: skip
    return await _get_one(request, partner, "sessions", country_code, party_id, session_id)


@router.put(S)
async def put_session(request: Request, country_code: str, party_id: str, session_id: str,
                      body: Session, partner: OcpiPartner = Partner):  # fmt: skip
    return await _put_one(request, partner, "sessions", country_code, party_id, session_id,
                          body, charging_periods=[])  # fmt: skip


@router.patch(S)
async def patch_session(request: Request, country_code: str, party_id: str, session_id: str,
                        body: SessionPatch, partner: OcpiPartner = Partner):  # fmt: skip
    _own(partner, country_code, party_id)
    data = _raw(body)
    _check_ids(data, country_code, party_id, session_id)

    def change(old: dict[str, Any] | None) -> dict[str, Any] | None:
        if old is None:
            raise _unknown(f"session {session_id}: PUT it first")
        periods = _merge_periods(old.get("charging_periods") or [],
                                 data.get("charging_periods") or [])  # fmt: skip
        return {**old, **data, "charging_periods": periods}

    await _save(request, partner, "sessions", country_code, party_id, session_id, change)
    return reply(request)


# ---------------------------------------------------------------- CDRs


def cdr_url(node: Any, row_id: int) -> str:
    return f"{node.base_url}{PREFIX}/emsp/{VERSION}/cdrs/{row_id}"


@router.post("/cdrs")
@router.post("/cdrs/", include_in_schema=False)
async def post_cdr(request: Request, body: Cdr, partner: OcpiPartner = Partner):
    data = _raw(body)
    cc, pid, oid = data["country_code"], data["party_id"], data["id"]
    _own(partner, cc, pid)
    rt = runtime(request)

    async def job(s: AsyncSession) -> tuple[int | None, bool]:
        row = await _find(s, "cdrs", cc, pid, oid)
        if row is not None:
            return (row.id if row.data == data else None), False
        row = OcpiObject(partner_id=partner.id, module="cdrs", country_code=cc, party_id=pid,
                         object_id=oid, data=data,
                         last_updated=_when(data["last_updated"]) or rt.clock.now())  # fmt: skip
        s.add(row)
        await s.flush()
        return row.id, True

    row_id, new = await rt.writer.submit(job)
    if row_id is None:
        raise OcpiError(INVALID_PARAMETERS, f"CDR {oid} exists and cannot be replaced "
                        "(send a credit CDR with an id of its own)")  # fmt: skip
    if new:
        rt.bus.publish("ocpi.object.received", None, module="cdrs", country_code=cc,
                       party_id=pid, object_id=oid, partner_id=partner.id)  # fmt: skip
    return reply(request, headers={"Location": cdr_url(rt.ocpi, row_id)})


@router.get("/cdrs/{row_id}")
async def get_cdr(request: Request, row_id: str, partner: OcpiPartner = Partner):
    async with runtime(request).sessionmaker() as s:
        row = await s.get(OcpiObject, int(row_id)) if row_id.isdigit() else None
    if row is None or row.module != "cdrs":
        raise _unknown(f"CDR {row_id}")
    _own(partner, row.country_code, row.party_id)
    return reply(request, row.data)


# ---------------------------------------------------------------- tariffs

T = "/tariffs/{country_code}/{party_id}/{tariff_id}"


@router.get(T)
async def get_tariff(request: Request, country_code: str, party_id: str, tariff_id: str,
                     partner: OcpiPartner = Partner):  # fmt: skip
    return await _get_one(request, partner, "tariffs", country_code, party_id, tariff_id)


@router.put(T)
async def put_tariff(request: Request, country_code: str, party_id: str, tariff_id: str,
                     body: Tariff, partner: OcpiPartner = Partner):  # fmt: skip
    return await _put_one(request, partner, "tariffs", country_code, party_id, tariff_id, body)


@router.delete(T)
async def delete_tariff(request: Request, country_code: str, party_id: str, tariff_id: str,
                        partner: OcpiPartner = Partner):  # fmt: skip
    """Removes the Tariff; one already gone is success too (a repeated DELETE)."""
    _own(partner, country_code, party_id)
    rt = runtime(request)

    async def job(s: AsyncSession) -> None:
        row = await _find(s, "tariffs", country_code, party_id, tariff_id)
        if row is not None:
            await s.delete(row)

    await rt.writer.submit(job)
    return reply(request)


def attach(node: Any) -> None:
    """Nothing to listen to: these modules only receive."""
