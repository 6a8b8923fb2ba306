"""OCPI 2.2.1 Tariffs, our CPO role's Sender interface: each site's tariff as an OCPI
Tariff (id = the site's id), and a PUT to every Tariffs Receiver when it changes.

The Tariff of a site is the version in force now (:class:`SiteTariff`, the latest
``valid_from`` not after now), or, without one, the site's own import/export prices
(``import_tariff_per_kwh``). It maps to OCPI as follows:

- each time-of-use window: an ``ENERGY`` element restricted to the window's
  ``start_time``/``end_time`` (``24:00`` is written ``00:00``, "end of the day") and
  ``day_of_week`` (the days the window starts on); then one ``ENERGY`` element without
  restrictions at the base price (the fallback OCPI advises);
- the idle fee: a ``PARKING_TIME`` element at the fee per hour, restricted by
  ``min_duration`` = the grace time. OCPI counts ``min_duration`` from the session's
  start while evflex counts the grace from the moment energy stopped flowing, so the
  restriction is the closest OCPI can say, not the same rule;
- the feed-in reward (V2X: energy the car gives back): OCPI 2.2.1 has no dimension for
  exported energy, so it is the extension field ``evflex_feed_in_price_per_kwh`` of the
  Tariff object (per kWh exported, paid to the driver; a receiver that does not know it
  ignores it);
- prices are sent as evflex has them: evflex keeps no VAT split, so ``price`` is the
  tariff's price and no ``vat`` is given; ``step_size`` is 1 (1 Wh, 1 s);
- ``start_date_time`` is the version's ``valid_from`` and ``end_date_time`` the next
  version's, when one is planned;
- ``currency`` is the node's ``currency`` setting.

A new version (``tariff.changed`` on the bus, published by the tariff API) is pushed
when it comes into force: at once if it already is, else when its ``valid_from`` has
come (one watcher task does both; one that came while the node was down is pushed
when it starts). The watcher publishes ``tariff.in_force`` for a planned version that
came into force, so that the site's Location is pushed again too. A partner that registers gets every Tariff
(``ocpi.partner.registered``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.events import Event
from evflex.ocpi.cpo import ids
from evflex.ocpi.transport import Page, now_iso, runtime
from evflex.store.ocpi_tables import OcpiOutbox
from evflex.store.record_tables import SiteTariff
from evflex.store.tables import Site

log = logging.getLogger(__name__)

router = APIRouter()

MODULE = "tariffs"
DAYS = {"Mon": "MONDAY", "Tue": "TUESDAY", "Wed": "WEDNESDAY", "Thu": "THURSDAY",
        "Fri": "FRIDAY", "Sat": "SATURDAY", "Sun": "SUNDAY"}  # fmt: skip
#: The extension field that carries the feed-in reward (OCPI has no export dimension).
FEED_IN_FIELD = "evflex_feed_in_price_per_kwh"
#: Longest wait of the watcher between two looks for versions coming into force.
WATCH_S = 60.0


@dataclass(slots=True)
class SiteTariffs:
    """What makes a site's Tariff: the version in force (or None), the next planned
    version's start, and the site (for its fallback prices)."""

    site: Site
    current: SiteTariff | None
    next_from: datetime | None

    @property
    def priced(self) -> bool:
        return self.current is not None or self.site.import_tariff_per_kwh is not None

    @property
    def since(self) -> datetime:
        """When the Tariff last changed (its ``last_updated``)."""
        v = self.current
        return max(v.created_at, v.valid_from) if v is not None else self.site.updated_at


async def site_tariffs(
    s: AsyncSession, now: datetime, site_ids: list[str] | None = None
) -> dict[str, SiteTariffs]:
    """Per site (all, or those of ``site_ids``): its version in force and next version."""
    q_sites = select(Site)
    q_versions = select(SiteTariff).order_by(SiteTariff.valid_from, SiteTariff.id)
    if site_ids is not None:
        q_sites = q_sites.where(Site.id.in_(site_ids))
        q_versions = q_versions.where(SiteTariff.site_id.in_(site_ids))
    out = {site.id: SiteTariffs(site, None, None) for site in (await s.scalars(q_sites)).all()}
    for v in (await s.scalars(q_versions)).all():
        entry = out.get(v.site_id)
        if entry is None:
            continue
        if v.valid_from <= now:
            entry.current = v
        elif entry.next_from is None:
            entry.next_from = v.valid_from
    return out


def _restriction_time(text: str) -> str:
    return "00:00" if text == "24:00" else text


def tariff_object(
    country_code: str, party_id: str, currency: str, entry: SiteTariffs
) -> dict[str, Any] | None:
    """The OCPI Tariff of a site; None if the site has no price at all."""
    site, v = entry.site, entry.current
    if v is not None:
        base, windows = v.energy_price_per_kwh, v.time_of_use or []
        feed_in, idle_fee, grace = (
            v.feed_in_reward_per_kwh,
            v.idle_fee_per_minute,
            v.idle_grace_minutes,
        )
    elif site.import_tariff_per_kwh is not None:
        base, windows = site.import_tariff_per_kwh, []
        feed_in, idle_fee, grace = site.export_tariff_per_kwh or 0.0, 0.0, 0.0
    else:
        return None
    elements: list[dict[str, Any]] = []
    for w in windows:
        restrictions: dict[str, Any] = {
            "start_time": _restriction_time(w["start"]),
            "end_time": _restriction_time(w["end"]),
        }
        if w.get("days"):
            restrictions["day_of_week"] = [DAYS[d] for d in w["days"]]
        elements.append({"price_components": [_component("ENERGY", w["price_per_kwh"])],
                         "restrictions": restrictions})  # fmt: skip
    elements.append({"price_components": [_component("ENERGY", base)]})
    if idle_fee > 0:
        parking: dict[str, Any] = {"price_components": [_component("PARKING_TIME", idle_fee * 60)]}
        if grace > 0:
            parking["restrictions"] = {"min_duration": round(grace * 60)}
        elements.append(parking)
    out: dict[str, Any] = {
        "country_code": country_code,
        "party_id": party_id,
        "id": ids.tariff_id(site.id),
        "currency": currency,
        "elements": elements,
        FEED_IN_FIELD: float(feed_in),
        "last_updated": now_iso(entry.since),
    }
    if v is not None:
        out["start_date_time"] = now_iso(v.valid_from)
    if entry.next_from is not None:
        out["end_date_time"] = now_iso(entry.next_from)
    return out


def _component(dimension: str, price: float) -> dict[str, Any]:
    return {"type": dimension, "price": round(float(price), 6), "step_size": 1}


# ---------------------------------------------------------------- Sender interface


@router.get("")
@router.get("/", include_in_schema=False)
async def list_tariffs(request: Request):
    """Every site's Tariff, paginated, by ``last_updated`` between date_from and date_to."""
    rt = runtime(request)

    async def load(s: AsyncSession, now: datetime) -> list[dict[str, Any]]:
        entries = await site_tariffs(s, now)
        node, currency = rt.ocpi, rt.settings.currency
        return [t for e in sorted(entries.values(), key=lambda e: e.site.id)
                if (t := tariff_object(node.country_code, node.party_id, currency, e))]  # fmt: skip

    return await paged(request, load)


async def paged(
    request: Request, load: Callable[[AsyncSession, datetime], Awaitable[list[dict[str, Any]]]]
):
    """A paginated GET: the page of the objects ``load`` gives (sorted) whose
    ``last_updated`` is in [date_from, date_to)."""
    page = Page(request)
    rt = runtime(request)
    async with rt.sessionmaker() as s:
        items = await load(s, rt.clock.now())
    lo = now_iso(page.date_from) if page.date_from else None
    hi = now_iso(page.date_to) if page.date_to else None
    # now_iso strings of UTC times compare as the times do
    items = [x for x in items
             if (lo is None or x["last_updated"] >= lo) and (hi is None or x["last_updated"] < hi)]  # fmt: skip
    return page.reply(items[page.offset : page.offset + page.limit], len(items))


# ---------------------------------------------------------------- pushes


class TariffPush:
    """PUTs a site's Tariff to every Tariffs Receiver when it changes."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._watcher: asyncio.Task | None = None
        self._added = asyncio.Event()  # a version was added: the watcher looks again

    async def receivers(self, only: int | None = None) -> list[int]:
        partners = await self.node.partners_with(MODULE, "RECEIVER")
        return [p.id for p in partners if only is None or p.id == only]

    async def push(self, site_ids: list[str] | None, only_partner: int | None = None) -> int:
        """PUT the Tariffs of these sites (None: all) to the receivers; how many objects."""
        partner_ids = await self.receivers(only_partner)
        if not partner_ids:
            return 0
        node = self.node
        async with node.sessionmaker() as s:
            entries = await site_tariffs(s, node.clock.now(), site_ids)
        currency = node.settings.currency
        objects = [t for e in entries.values()
                   if (t := tariff_object(node.country_code, node.party_id, currency, e))]  # fmt: skip
        if not objects:
            return 0
        now = node.clock.now()

        async def job(s: AsyncSession) -> None:
            for t in objects:
                for pid in partner_ids:
                    node.outbox.add(s, pid, MODULE, f"tariffs/{t['id']}", "PUT",
                                    f"/{node.country_code}/{node.party_id}/{t['id']}", t, now)  # fmt: skip

        await node.writer.submit(job)
        for pid in partner_ids:
            node.outbox.wake(pid)
        return len(objects)

    async def on_tariff(self, event: Event) -> None:
        self._added.set()  # the watcher pushes it: now, or when it comes into force

    async def on_site(self, event: Event) -> None:
        if {"import_tariff_per_kwh", "export_tariff_per_kwh"} & set(event.data.get("fields", ())):
            await self.push([event.data["site_id"]])

    async def on_partner(self, event: Event) -> None:
        await self.push(None, only_partner=int(event.data["partner_id"]))

    async def start(self) -> None:
        await self._catch_up()
        self._watcher = asyncio.create_task(self._watch(), name="ocpi-tariffs-watch")

    async def _catch_up(self) -> None:
        """Versions planned ahead that came into force while the node was down (no push
        of their site's Tariff since they began): pushed now."""
        if not await self.receivers():
            return
        node = self.node
        async with node.sessionmaker() as s:
            entries = await site_tariffs(s, node.clock.now())
            q = select(OcpiOutbox.object_key, func.max(OcpiOutbox.created_at))
            q = q.where(OcpiOutbox.module == MODULE).group_by(OcpiOutbox.object_key)
            sent: dict[str, datetime] = {k: t for k, t in (await s.execute(q)).all()}
        due = []
        for e in entries.values():
            v = e.current
            if v is not None and v.valid_from > v.created_at:
                last = sent.get(f"tariffs/{ids.tariff_id(e.site.id)}")
                if last is None or last < v.valid_from:
                    due.append(e.site.id)
        if due:
            await self.push(due)
            for site in due:
                node.publish("tariff.in_force", site_id=site)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds`` of the node's clock, or until a version is added."""
        waits = [asyncio.ensure_future(self.node.clock.sleep(seconds)),
                 asyncio.ensure_future(self._added.wait())]  # fmt: skip
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def _watch(self) -> None:
        """Push a site's Tariff when a version in force is added, and when a planned
        version comes into force: each version once."""
        clock = self.node.clock
        last = clock.now()
        async with self.node.sessionmaker() as s:
            last_id = await s.scalar(select(func.max(SiteTariff.id))) or 0
        while True:
            try:
                self._added.clear()
                now = clock.now()
                async with self.node.sessionmaker() as s:
                    q = select(SiteTariff.id, SiteTariff.site_id, SiteTariff.valid_from)
                    added = (await s.execute(q.where(SiteTariff.id > last_id))).all()
                    begun = (await s.scalars(select(SiteTariff.site_id).distinct().where(
                        SiteTariff.valid_from > last, SiteTariff.valid_from <= now))).all()  # fmt: skip
                    nxt = await s.scalar(
                        select(func.min(SiteTariff.valid_from)).where(SiteTariff.valid_from > now)
                    )
                fresh = {site for _, site, valid_from in added if valid_from <= now}
                last_id = max([last_id, *(i for i, _, _ in added)])
                last = now
                if begun or fresh:
                    await self.push(sorted({*begun, *fresh}))
                for site in sorted(set(begun) - fresh):  # Locations name the tariff in force
                    self.node.publish("tariff.in_force", site_id=site)
                wait = WATCH_S if nxt is None else (nxt - clock.now()).total_seconds()
                await self._nap(min(WATCH_S, max(0.01, wait)))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("OCPI tariffs: pushing versions that came into force")
                await asyncio.sleep(WATCH_S)


def attach(node: Any) -> None:
    """Push Tariffs on tariff and site changes and to partners that register."""
    push = TariffPush(node)
    node.state[MODULE] = push
    node.on("tariff.changed", push.on_tariff)
    node.on("site.changed", push.on_site)
    node.on("ocpi.partner.registered", push.on_partner)
    node.on_start(push.start)
    node.on_stop(push.stop)
