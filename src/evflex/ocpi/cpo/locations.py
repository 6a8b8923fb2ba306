"""OCPI 2.2.1 Locations, our CPO role's Sender interface, and live pushes to every
Locations Receiver.

Mapping (names from :mod:`evflex.ocpi.cpo.ids`):

- a site is a Location; a station without a site is a Location of its own. A site's
  meter (``meter_station_id``) is no charger and is left out; a site without chargers
  is no Location;
- where the Location is comes from the site's ``address``, ``city``, ``postal_code``,
  ``country`` (ISO 3166-1 alpha-3), ``latitude``/``longitude`` and ``time_zone``. OCPI
  requires them all; what a site lacks is sent as a default: address and city empty,
  the country of our ``ocpi_country_code``, time zone that of the site's tariff (else
  UTC), coordinates 0/0. A Location without coordinates has ``publish`` false, so apps
  do not pin it at 0/0 (partners may still use it for roaming sessions and commands);
- one EVSE per OCPP EVSE (a 1.6 connector is an EVSE of its own, as the OCA note on
  multiple connectors says); EVSE 0, the station itself, is none. Its connectors are
  the OCPP connectors, all ``IEC_62196_T2`` ``SOCKET`` (evflex does not know the plug),
  ``AC_1_PHASE`` or ``AC_3_PHASE`` from the station's (else the site's) phases, the
  site's voltage, the station's ``evse_max_current_a`` (32 A if unset, as for the load
  manager) capped by its ``max_current_a``, and ``tariff_ids`` = the site's tariff when it has one;
- EVSE status from OCPP: Available -> AVAILABLE; Preparing, Charging, SuspendedEV,
  SuspendedEVSE, Finishing, Occupied -> CHARGING; Reserved -> RESERVED; Unavailable ->
  INOPERATIVE; Faulted -> OUTOFORDER; a station offline -> UNKNOWN. A station's own
  Unavailable/Faulted (EVSE 0) holds for all its EVSEs; an EVSE with several connectors
  takes the busiest state among them (CHARGING before RESERVED before AVAILABLE ...).

Pushes (object key per Location, so a Location's updates arrive in order):

- a status change -> PATCH of the EVSE ``{"status", "last_updated"}`` (only when the
  status changed; the first time since our start an EVSE is pushed whole, PUT);
- a station that connects -> PUT of its Location (the first time since our start) or
  of its EVSEs; one that goes away -> PATCH UNKNOWN of each EVSE;
- a site changed or deleted (``site.changed``, ``site.deleted``), its tariff
  (``tariff.changed``, ``tariff.in_force``), a station added, changed or deleted through the API
  (``station.changed``) -> PUT of the Location(s); an EVSE that left a Location (its
  station deleted, moved to another site or made the site's meter) -> PATCH REMOVED
  there, as OCPI deletes nothing (known for EVSEs pushed since our start);
- a partner that registers (``ocpi.partner.registered``) -> PUT of every Location to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.events import Event
from evflex.ocpi.cpo import ids
from evflex.ocpi.cpo.tariffs import paged, site_tariffs
from evflex.ocpi.transport import UNKNOWN_LOCATION, OcpiError, now_iso, reply, runtime
from evflex.store.tables import Connector, Site, Station

router = APIRouter()

MODULE = "locations"
STATUS = {
    "Available": "AVAILABLE", "Preparing": "CHARGING", "Charging": "CHARGING",
    "SuspendedEV": "CHARGING", "SuspendedEVSE": "CHARGING", "Finishing": "CHARGING",
    "Occupied": "CHARGING", "Reserved": "RESERVED", "Unavailable": "INOPERATIVE",
    "Faulted": "OUTOFORDER",
}  # fmt: skip
#: An EVSE with several connectors: the first of these one of them is in.
BUSIEST = ("CHARGING", "RESERVED", "BLOCKED", "AVAILABLE", "INOPERATIVE", "OUTOFORDER", "UNKNOWN")
CAPABILITIES = ["REMOTE_START_STOP_CAPABLE", "RESERVABLE", "UNLOCK_CAPABLE", "RFID_READER"]
DEFAULT_AMPERAGE = 32
#: ISO 3166-1 alpha-2 -> alpha-3, for a site without ``country`` (our own country code).
ALPHA3 = dict(x.split(":") for x in (
    "AT:AUT BE:BEL BG:BGR CH:CHE CY:CYP CZ:CZE DE:DEU DK:DNK EE:EST ES:ESP FI:FIN FR:FRA "
    "GB:GBR GR:GRC HR:HRV HU:HUN IE:IRL IS:ISL IT:ITA LI:LIE LT:LTU LU:LUX LV:LVA MT:MLT "
    "NL:NLD NO:NOR PL:POL PT:PRT RO:ROU SE:SWE SI:SVN SK:SVK US:USA CA:CAN AU:AUS NZ:NZL "
    "JP:JPN CN:CHN IN:IND KR:KOR"
).split())  # fmt: skip


@dataclass(slots=True)
class Place:
    """What one Location is made of."""

    id: str
    site: Site | None
    stations: list[Station] = field(default_factory=list)
    connectors: dict[str, list[Connector]] = field(default_factory=dict)  # by station
    tariff_ids: list[str] = field(default_factory=list)
    tariff_since: datetime | None = None  # when the site's tariff last changed
    time_zone: str | None = None


async def places(
    s: AsyncSession, now: datetime, location: str | None = None, station: str | None = None
) -> list[Place]:
    """Every Location (or the one with id ``location``), sorted by id; with ``station``,
    only that station's part of its Location (what its EVSEs need)."""
    q = select(Station)
    if location is not None:
        q = q.where(or_(Station.site_id == location,
                        and_(Station.id == location, Station.site_id.is_(None))))  # fmt: skip
    if station is not None:
        q = q.where(Station.id == station)
    stations = (await s.scalars(q.order_by(Station.id))).all()
    site_ids = sorted({st.site_id for st in stations if st.site_id})
    tariffs = await site_tariffs(s, now, site_ids)
    out: dict[str, Place] = {}
    for st in stations:
        entry = tariffs.get(st.site_id) if st.site_id else None
        site = entry.site if entry else None
        if site is not None and site.meter_station_id == st.id:
            continue
        loc = ids.location_id(st.site_id, st.id)
        place = out.get(loc)
        if place is None:
            place = out[loc] = Place(loc, site)
            if entry is not None and entry.priced:
                place.tariff_ids = [ids.tariff_id(site.id)]
                place.tariff_since = entry.since
            if entry is not None and entry.current is not None:
                place.time_zone = entry.current.timezone
        place.stations.append(st)
        place.connectors[st.id] = []
    if out:
        conns = (await s.scalars(select(Connector).where(Connector.station_id.in_(
            [st.id for p in out.values() for st in p.stations])))).all()  # fmt: skip
        for c in conns:
            for p in out.values():
                if c.station_id in p.connectors:
                    p.connectors[c.station_id].append(c)
                    break
    return [out[k] for k in sorted(out)]


class Mapper:
    """Builds the OCPI objects of a :class:`Place` for our party."""

    def __init__(self, country_code: str, party_id: str) -> None:
        self.cc = country_code
        self.pid = party_id

    def location(self, p: Place) -> dict[str, Any]:
        site = p.site
        evses = [self.evse(p, st, evse) for st in p.stations for evse in _evse_ids(p, st)]
        stamps = [site.updated_at] if site is not None else []
        stamps += [st.created_at for st in p.stations]
        latitude = site.latitude if site is not None else None
        longitude = site.longitude if site is not None else None
        located = latitude is not None and longitude is not None
        out: dict[str, Any] = {
            "country_code": self.cc,
            "party_id": self.pid,
            "id": p.id,
            "publish": located,
            "name": (site.name or site.id) if site is not None else p.id,
            "address": (site.address if site is not None else None) or "",
            "city": (site.city if site is not None else None) or "",
            "country": (site.country if site is not None else None) or ALPHA3.get(self.cc, ""),
            "coordinates": {
                "latitude": f"{latitude or 0.0:.6f}",
                "longitude": f"{longitude or 0.0:.6f}",
            },  # fmt: skip
            "evses": evses,
            "time_zone": (site.time_zone if site is not None else None) or p.time_zone or "UTC",
        }
        if site is not None and site.postal_code:
            out["postal_code"] = site.postal_code
        last = max([*stamps, *(_parse(e["last_updated"]) for e in evses)])
        out["last_updated"] = now_iso(last)
        return out

    def evse(self, p: Place, st: Station, evse_id: int) -> dict[str, Any]:
        rows = [c for c in p.connectors.get(st.id, ()) if c.evse_id == evse_id]
        plugs = sorted({c.connector_id for c in rows if c.connector_id > 0}) or [1]
        stamps = [st.created_at, *(c.updated_at for c in rows)]
        stamps += [t for t in (st.last_connected_at, st.last_disconnected_at, p.tariff_since)
                   if t is not None]  # fmt: skip
        last = now_iso(max(stamps))
        return {
            "uid": ids.evse_uid(st.id, evse_id),
            "evse_id": ids.emi3_evse_id(self.cc, self.pid, st.id, evse_id),
            "status": self.status(p, st, evse_id),
            "capabilities": list(CAPABILITIES),
            "connectors": [self.connector(p, st, n, last) for n in plugs],
            "last_updated": last,
        }

    def connector(self, p: Place, st: Station, n: int, last_updated: str) -> dict[str, Any]:
        phases = st.phases or (p.site.phases if p.site is not None else None) or 3
        voltage = round((p.site.voltage if p.site is not None else None) or 230.0)
        amps = round(min(st.evse_max_current_a or DEFAULT_AMPERAGE, st.max_current_a or 1e9))
        return {
            "id": str(n),
            "standard": "IEC_62196_T2",
            "format": "SOCKET",
            "power_type": "AC_1_PHASE" if phases == 1 else "AC_3_PHASE",
            "max_voltage": voltage,
            "max_amperage": amps,
            "max_electric_power": voltage * amps * (1 if phases == 1 else 3),
            "tariff_ids": list(p.tariff_ids),
            "last_updated": last_updated,
        }

    @staticmethod
    def status(p: Place, st: Station, evse_id: int) -> str:
        if not st.connected:
            return "UNKNOWN"
        rows = p.connectors.get(st.id, ())
        whole = next((c.status for c in rows if c.evse_id == 0), None)
        if whole in ("Unavailable", "Faulted"):
            return STATUS[whole]
        states = {STATUS.get(c.status, "UNKNOWN") for c in rows if c.evse_id == evse_id}
        return next((x for x in BUSIEST if x in states), "UNKNOWN")


def _evse_ids(p: Place, st: Station) -> list[int]:
    return sorted({c.evse_id for c in p.connectors.get(st.id, ()) if c.evse_id > 0})


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def mapper_of(request: Request) -> Mapper:
    node = runtime(request).ocpi
    return Mapper(node.country_code, node.party_id)


# ---------------------------------------------------------------- Sender interface


@router.get("")
@router.get("/", include_in_schema=False)
async def list_locations(request: Request):
    """Every Location, paginated, by ``last_updated`` between date_from and date_to."""
    m = mapper_of(request)

    async def load(s: AsyncSession, now: datetime) -> list[dict[str, Any]]:
        return [m.location(p) for p in await places(s, now)]

    return await paged(request, load)


async def _one(request: Request, location_id: str) -> Place:
    rt = runtime(request)
    async with rt.sessionmaker() as s:
        found = await places(s, rt.clock.now(), location_id)
    if not found:
        raise OcpiError(UNKNOWN_LOCATION, f"unknown location '{location_id}'", http_status=404)
    return found[0]


def _find_evse(m: Mapper, p: Place, evse_uid: str) -> dict[str, Any]:
    parsed = ids.parse_evse_uid(evse_uid)
    for st in p.stations:
        if parsed is not None and st.id == parsed[0] and parsed[1] in _evse_ids(p, st):
            return m.evse(p, st, parsed[1])
    raise OcpiError(UNKNOWN_LOCATION, f"location '{p.id}' has no EVSE '{evse_uid}'",
                    http_status=404)  # fmt: skip


@router.get("/{location_id}")
async def get_location(request: Request, location_id: str):
    place = await _one(request, location_id)
    return reply(request, mapper_of(request).location(place))


@router.get("/{location_id}/{evse_uid}")
async def get_evse(request: Request, location_id: str, evse_uid: str):
    place = await _one(request, location_id)
    return reply(request, _find_evse(mapper_of(request), place, evse_uid))


@router.get("/{location_id}/{evse_uid}/{connector_id}")
async def get_connector(request: Request, location_id: str, evse_uid: str, connector_id: str):
    place = await _one(request, location_id)
    evse = _find_evse(mapper_of(request), place, evse_uid)
    for c in evse["connectors"]:
        if c["id"] == connector_id:
            return reply(request, c)
    raise OcpiError(UNKNOWN_LOCATION, f"EVSE '{evse_uid}' has no connector '{connector_id}'",
                    http_status=404)  # fmt: skip


# ---------------------------------------------------------------- pushes


class LocationPush:
    """Pushes Locations and EVSE status to every Locations Receiver (through the outbox)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        #: Locations pushed whole since our start, and the last status pushed per EVSE.
        self.located: set[str] = set()
        self.pushed: dict[tuple[str, int], tuple[str, str]] = {}  # -> (location, status)

    @property
    def mapper(self) -> Mapper:
        return Mapper(self.node.country_code, self.node.party_id)

    async def _load(self, location: str | None = None) -> list[Place]:
        async with self.node.sessionmaker() as s:
            return await places(s, self.node.clock.now(), location)

    async def _station_place(self, station_id: str) -> tuple[Place, Station] | None:
        """A station's part of its Location (the Place has that station only)."""
        async with self.node.sessionmaker() as s:
            found = await places(s, self.node.clock.now(), station=station_id)
        return (found[0], found[0].stations[0]) if found else None

    async def _receivers(self, only: int | None = None) -> list[int]:
        partners = await self.node.partners_with(MODULE, "RECEIVER")
        return [p.id for p in partners if only is None or p.id == only]

    async def _send(self, partner_ids: list[int], requests: list[tuple[str, str, str, Any]]):
        """Queue (object key, method, path, body) to these partners, in one commit."""
        node = self.node
        if not partner_ids or not requests:
            return
        now = node.clock.now()

        async def job(s: AsyncSession) -> None:
            for key, method, path, body in requests:
                for pid in partner_ids:
                    node.outbox.add(s, pid, MODULE, key, method, path, body, now)

        await node.writer.submit(job)
        for pid in partner_ids:
            node.outbox.wake(pid)

    def _path(self, *parts: str) -> str:
        return "/" + "/".join((self.node.country_code, self.node.party_id, *parts))

    def _put_location(self, p: Place) -> tuple[str, str, str, Any]:
        body = self.mapper.location(p)
        self.located.add(p.id)
        for e in body["evses"]:
            station, evse = ids.parse_evse_uid(e["uid"]) or ("", 0)
            self.pushed[(station, evse)] = (p.id, e["status"])
        return f"locations/{p.id}", "PUT", self._path(p.id), body

    def _evse_update(self, p: Place, st: Station, evse_id: int) -> tuple[str, str, str, Any] | None:
        """PUT of the EVSE the first time, then PATCH of its status when it changed."""
        key = (st.id, evse_id)
        uid = ids.evse_uid(st.id, evse_id)
        previous = self.pushed.get(key)
        body = self.mapper.evse(p, st, evse_id)
        if previous == (p.id, body["status"]):
            return None
        self.pushed[key] = (p.id, body["status"])
        if previous is None:
            return f"locations/{p.id}", "PUT", self._path(p.id, uid), body
        patch = {"status": body["status"], "last_updated": body["last_updated"]}
        return f"locations/{p.id}", "PATCH", self._path(p.id, uid), patch

    # ------------------------------------------------------------ bus events

    # Each handler first asks who receives Locations: with nobody, nothing is built (a
    # partner that registers later gets every Location whole).

    async def _station_event(self, event: Event) -> tuple[list[int], Place, Station] | None:
        """(receivers, the station's part of its Location, the station), if any."""
        partner_ids = await self._receivers()
        found = await self._station_place(event.station_id or "") if partner_ids else None
        return (partner_ids, *found) if found else None

    async def on_status(self, event: Event) -> None:
        if (found := await self._station_event(event)) is None:
            return
        partner_ids, p, st = found
        evse = int(event.data.get("evse_id") or 0)
        targets = _evse_ids(p, st) if evse == 0 else [evse]
        requests = [r for e in targets if (r := self._evse_update(p, st, e)) is not None]
        await self._send(partner_ids, requests)

    async def on_connected(self, event: Event) -> None:
        if (found := await self._station_event(event)) is None:
            return
        partner_ids, p, st = found
        if p.id not in self.located:
            whole = await self._load(p.id)
            await self._send(partner_ids, [self._put_location(x) for x in whole])
            return
        requests = [r for e in _evse_ids(p, st) if (r := self._evse_update(p, st, e))]
        await self._send(partner_ids, requests)

    on_disconnected = on_status  # every EVSE of the station: now UNKNOWN

    async def _relocate(self, stations: set[str], locations: set[str]) -> None:
        """PUT these Locations, and those of these stations, whole; PATCH REMOVED every
        EVSE pushed before that is no longer where it was (its station deleted, moved to
        another site, made a site's meter): OCPI deletes nothing."""
        partner_ids = await self._receivers()
        if not partner_ids:
            return
        found = await self._load()
        where = {(st.id, e): p.id for p in found for st in p.stations for e in _evse_ids(p, st)}
        stations = stations | {k[0] for k, (loc, _) in self.pushed.items() if loc in locations}
        requests = []
        stamp = now_iso(self.node.clock.now())
        for key, (loc, _) in list(self.pushed.items()):
            if key[0] in stations and where.get(key) != loc:
                del self.pushed[key]
                path = self._path(loc, ids.evse_uid(*key))
                body = {"status": "REMOVED", "last_updated": stamp}
                requests.append((f"locations/{loc}", "PATCH", path, body))
        requests += [self._put_location(p) for p in found
                     if p.id in locations or any(st.id in stations for st in p.stations)]  # fmt: skip
        await self._send(partner_ids, requests)

    async def on_site(self, event: Event) -> None:
        await self._relocate(set(), {str(event.data["site_id"])})

    async def on_station(self, event: Event) -> None:
        await self._relocate({event.station_id or ""}, set())

    async def on_partner(self, event: Event) -> None:
        partner_ids = await self._receivers(int(event.data["partner_id"]))
        if partner_ids:
            await self._send(partner_ids, [self._put_location(p) for p in await self._load()])


def attach(node: Any) -> None:
    """Push Locations and EVSE status on the CSMS's events."""
    push = LocationPush(node)
    node.state[MODULE] = push
    node.on("connector.status", push.on_status)
    node.on("station.connected", push.on_connected)
    node.on("station.disconnected", push.on_disconnected)
    node.on("site.changed", push.on_site)
    node.on("site.deleted", push.on_site)
    node.on("station.changed", push.on_station)
    node.on("tariff.changed", push.on_site)
    node.on("tariff.in_force", push.on_site)
    node.on("ocpi.partner.registered", push.on_partner)
