"""OCPI 2.2.1 CDRs, our CPO role (Sender interface): charge records as CDRs.

A charge record (written when a transaction ends, priced with the site's tariff in
force at its start) is a CDR (id = the record's id) when the transaction's token is
an eMSP partner's (table ``ocpi_tokens``).

- ``GET /ocpi/cpo/2.2.1/cdrs``: the calling partner's CDRs, paginated,
  ``date_from``/``date_to`` on ``last_updated`` (the record's creation: CDRs do not
  change).
- ``record.created`` on the bus: a POST of the CDR to the token's eMSP (its ``cdrs``
  RECEIVER) through the durable outbox.
- At the node's start, a catch-up: for each partner with a ``cdrs`` RECEIVER, the
  records of its tokens created since its last queued CDR (since it registered, if it
  has none) that have no CDR in its outbox are queued. So a stop between the record's
  commit and the outbox row loses nothing.

Mapping:

- ``cdr_location``: the Location, EVSE and connector as the Locations module maps them
  (address, coordinates and connector as they are at the time the CDR is made; evflex
  keeps no history of them);
- ``tariffs``: the copy of the tariff that priced the record, mapped as the Tariffs
  module maps a tariff (its ``evflex_feed_in_price_per_kwh`` included);
- ``charging_periods`` from the stored meter values (at most 48): ``ENERGY`` is the
  energy imported (charged) in kWh, ``TIME`` the hours energy flowed, ``PARKING_TIME``
  the hours it did not; each period refers to the tariff. Energy the EV fed back (V2X)
  is in the period's extension field ``evflex_energy_export`` (kWh): the dimension
  ``ENERGY_EXPORT`` is for Sessions only in OCPI 2.2.1;
- ``total_energy`` is kWh imported; ``evflex_total_energy_export`` (kWh) and
  ``evflex_feed_in_reward`` (Price) carry the export and what it earned the driver;
  ``total_cost`` is energy cost + idle fee - feed-in reward (negative when the reward
  is larger), ``total_energy_cost`` the energy's, ``total_parking_cost`` the idle fee;
  evflex keeps no VAT split, so each Price has ``excl_vat`` only;
- a record that could not be priced has ``total_cost`` 0 and a ``remark`` saying why;
- ``auth_method`` as for Sessions (:func:`evflex.ocpi.cpo.sessions.authorization`).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.events import Event
from evflex.ocpi import transport
from evflex.ocpi.client import endpoint
from evflex.ocpi.cpo import ids
from evflex.ocpi.cpo.locations import Mapper, places
from evflex.ocpi.cpo.sessions import (
    Period,
    authorization,
    cdr_token,
    hours,
    kwh,
    of_parties,
    own_page,
    periods,
    readings,
)
from evflex.ocpi.cpo.tariffs import SiteTariffs, tariff_object
from evflex.ocpi.cpo.tokens import token_by_uid
from evflex.ocpi.outbox import Outbox
from evflex.ocpi.transport import now_iso, registered_partner
from evflex.store.ocpi_tables import OcpiOutbox, OcpiPartner, OcpiToken
from evflex.store.record_tables import ChargeRecord, SiteTariff
from evflex.store.tables import Site, Transaction

log = logging.getLogger(__name__)

router = APIRouter()

MODULE = "cdrs"
EXPORT_FIELD = "evflex_energy_export"


def price(value: float | None) -> dict[str, float]:
    return {"excl_vat": round(value or 0.0, 4)}


def cdr_period(p: Period, tariff_id: str | None) -> dict[str, Any]:
    flowed = p.import_wh > 0 or p.export_wh > 0
    out: dict[str, Any] = {
        "start_date_time": now_iso(p.start),
        "dimensions": [
            {"type": "ENERGY", "volume": kwh(p.import_wh)},
            {"type": "TIME" if flowed else "PARKING_TIME", "volume": hours(p.seconds)},
        ],
    }
    if tariff_id:
        out["tariff_id"] = tariff_id
    if p.export_wh > 0:
        out[EXPORT_FIELD] = kwh(p.export_wh)
    return out


def tariff_copy(node: Any, rec: ChargeRecord) -> dict[str, Any] | None:
    """The record's tariff copy as an OCPI Tariff (as the Tariffs module maps one)."""
    t = rec.tariff
    if not t or not rec.site_id:
        return None
    site = Site(id=rec.site_id, import_tariff_per_kwh=t["energy_price_per_kwh"],
                export_tariff_per_kwh=t.get("feed_in_reward_per_kwh"), updated_at=rec.created_at)  # fmt: skip
    version = None
    if t.get("source") == "tariff" and t.get("valid_from"):
        valid_from = transport.parse_datetime(t["valid_from"])
        version = SiteTariff(
            site_id=rec.site_id,
            energy_price_per_kwh=t["energy_price_per_kwh"],
            time_of_use=t.get("time_of_use") or [],
            feed_in_reward_per_kwh=t.get("feed_in_reward_per_kwh") or 0.0,
            idle_fee_per_minute=t.get("idle_fee_per_minute") or 0.0,
            idle_grace_minutes=t.get("idle_grace_minutes") or 0.0,
            timezone=t.get("timezone") or "UTC",
            valid_from=valid_from,
            created_at=valid_from,
        )
    entry = SiteTariffs(site, version, None)
    return tariff_object(node.country_code, node.party_id, rec.currency, entry)


async def cdr_location(s: AsyncSession, node: Any, rec: ChargeRecord) -> dict[str, Any]:
    location = ids.location_id(rec.site_id, rec.station_id)
    uid = ids.evse_uid(rec.station_id, rec.evse_id or 1)
    connector = str(rec.connector_id or 1)
    found = await places(s, node.clock.now(), location)
    loc = Mapper(node.country_code, node.party_id).location(found[0]) if found else {}
    evse = next((e for e in loc.get("evses", ()) if e["uid"] == uid), {})
    conns = evse.get("connectors") or [{}]
    conn = next((c for c in conns if c.get("id") == connector), conns[0])
    out = {
        "id": location,
        "name": loc.get("name", location),
        "address": loc.get("address", ""),
        "city": loc.get("city", ""),
        "country": loc.get("country", ""),
        "coordinates": loc.get("coordinates", {"latitude": "0.000000", "longitude": "0.000000"}),
        "evse_uid": uid,
        "evse_id": evse.get("evse_id")
        or ids.emi3_evse_id(node.country_code, node.party_id, rec.station_id, rec.evse_id or 1),
        "connector_id": connector,
        "connector_standard": conn.get("standard", "IEC_62196_T2"),
        "connector_format": conn.get("format", "SOCKET"),
        "connector_power_type": conn.get("power_type", "AC_3_PHASE"),
    }
    if loc.get("postal_code"):
        out["postal_code"] = loc["postal_code"]
    return out


async def cdr_object(s: AsyncSession, node: Any, rec: ChargeRecord, tok: OcpiToken) -> dict:
    """The CDR of charge record ``rec`` (its token ``tok``)."""
    tx = await s.get(Transaction, rec.transaction_pk)
    tariff = tariff_copy(node, rec)
    tariff_id = tariff["id"] if tariff else None
    made = periods(await readings(s, tx), rec.started_at, rec.stopped_at) if tx else []
    if not made:
        made = [Period(rec.started_at, rec.stopped_at, rec.energy_imported_wh,
                       rec.energy_exported_wh, None)]  # fmt: skip
    auth_method, reference = await authorization(s, node, rec.station_id, rec.id_token or tok.uid)
    out: dict[str, Any] = {
        "country_code": node.country_code,
        "party_id": node.party_id,
        "id": ids.cdr_id(rec.id),
        "start_date_time": now_iso(rec.started_at),
        "end_date_time": now_iso(rec.stopped_at),
        "session_id": ids.session_id(rec.transaction_pk),
        "cdr_token": cdr_token(tok),
        "auth_method": auth_method,
        "cdr_location": await cdr_location(s, node, rec),
        "currency": rec.currency,
        "tariffs": [tariff] if tariff else [],
        "charging_periods": [cdr_period(p, tariff_id) for p in made],
        "total_cost": price(rec.total_cost),
        "total_energy": kwh(rec.energy_imported_wh),
        "total_time": hours((rec.stopped_at - rec.started_at).total_seconds()),
        "total_parking_time": hours(rec.idle_s),
        "evflex_total_energy_export": kwh(rec.energy_exported_wh),
        "last_updated": now_iso(rec.created_at),
    }
    if reference:
        out["authorization_reference"] = reference
    if rec.energy_cost is not None:
        out["total_energy_cost"] = price(rec.energy_cost)
    if rec.idle_fee:
        out["total_parking_cost"] = price(rec.idle_fee)
    if rec.feed_in_reward is not None:
        out["evflex_feed_in_reward"] = price(rec.feed_in_reward)
    if rec.total_cost is None:
        out["remark"] = f"not priced: {rec.cost_error or 'no tariff'}"[:255]
    elif rec.stop_reason:
        out["remark"] = f"stop reason: {rec.stop_reason}"[:255]
    return out


# ---------------------------------------------------------------- Sender GET


@router.get("")
@router.get("/")
async def list_cdrs(request: Request, partner: OcpiPartner = Depends(registered_partner)) -> Any:
    return await own_page(request, partner, ChargeRecord, ChargeRecord.created_at, cdr_object)


# ---------------------------------------------------------------- pushes


def _key(node: Any, record_id: int) -> str:
    return f"{MODULE}/{node.country_code}/{node.party_id}/{ids.cdr_id(record_id)}"


async def _queue(node: Any, s: AsyncSession, recs: list[ChargeRecord], partner_id: int | None):
    """Outbox rows (to add in a writer job) of the CDRs of ``recs`` to their token's
    partner (only to ``partner_id`` if given): [(partner id, key, body)]."""
    out = []
    for rec in recs:
        tok = await token_by_uid(s, rec.id_token)
        if tok is None or (partner_id is not None and tok.partner_id != partner_id):
            continue
        partner = await s.get(OcpiPartner, tok.partner_id)
        if partner is None or partner.status != "registered":
            continue
        if endpoint(partner, MODULE, "RECEIVER") is None:
            continue
        out.append((partner.id, _key(node, rec.id), await cdr_object(s, node, rec, tok)))
    return out


async def _submit(node: Any, rows: list[tuple[int, str, dict]]) -> None:
    if not rows:
        return
    now = node.clock.now()

    async def job(s: AsyncSession) -> None:
        for pid, key, body in rows:
            Outbox.add(s, pid, MODULE, key, "POST", "", body, now)

    await node.writer.submit(job)
    for pid in {r[0] for r in rows}:
        node.outbox.wake(pid)


async def catch_up(node: Any) -> int:
    """Queue the CDRs a stop may have kept from the outbox (see the module text); how many."""
    queued = 0
    for partner in await node.partners_with(MODULE, "RECEIVER"):
        async with node.sessionmaker() as s:
            last = await s.scalar(
                select(func.max(OcpiOutbox.created_at)).where(
                    OcpiOutbox.partner_id == partner.id, OcpiOutbox.module == MODULE
                )
            )
            since = (last or partner.created_at) - timedelta(minutes=1)
            have = set(
                (
                    await s.scalars(
                        select(OcpiOutbox.object_key).where(
                            OcpiOutbox.partner_id == partner.id,
                            OcpiOutbox.module == MODULE,
                            OcpiOutbox.created_at >= since,
                        )
                    )
                ).all()
            )
            recs = (
                await s.scalars(
                    select(ChargeRecord)
                    .where(ChargeRecord.created_at >= since)
                    .where(of_parties(ChargeRecord.id_token, transport.partner_parties(partner)))
                    .order_by(ChargeRecord.id)
                )
            ).all()
            missing = [r for r in recs if _key(node, r.id) not in have]
            rows = await _queue(node, s, missing, partner.id)
        await _submit(node, rows)
        queued += len(rows)
    if queued:
        log.info("OCPI: %d CDRs queued that had not been", queued)
    return queued


def attach(node: Any) -> None:
    """Register this module's event handlers on the OCPI node."""

    async def on_record(event: Event) -> None:
        record_id = event.data.get("record_id")
        if record_id is None:
            return
        async with node.sessionmaker() as s:
            rec = await s.get(ChargeRecord, record_id)
            rows = await _queue(node, s, [rec] if rec is not None else [], None)
        await _submit(node, rows)

    async def start() -> None:
        try:
            await catch_up(node)
        except Exception:  # the node starts anyway; GET still has every CDR
            log.exception("OCPI CDRs: catch-up at start")

    node.on("record.created", on_record)
    node.on_start(start)
