"""OCPI 2.2.1 Sessions, our CPO role (Sender interface): transactions as Session objects.

A transaction becomes a Session (id = the transaction's row id, see
:mod:`evflex.ocpi.cpo.ids`) when its id token is one an eMSP partner pushed to us
(table ``ocpi_tokens``). Sessions of local cards are neither listed nor pushed.

- ``GET /ocpi/cpo/2.2.1/sessions``: the calling partner's sessions (the token's
  party is one of the partner's), paginated, ``date_from``/``date_to`` on
  ``last_updated`` (the transaction's last change).
- Pushes to the token's eMSP (its ``sessions`` RECEIVER), through the durable
  outbox, in order per session: a PUT of the whole Session when it starts; a
  PATCH per update, at most one per ``ocpi_session_update_s`` per session (an
  update inside the window is sent when the window ends, with the latest
  figures: the last update is never dropped); a PUT of the whole Session with
  status ``COMPLETED``, its charging periods and total cost when it ends.
- A PATCH carries ``kwh``, ``status``, ``last_updated`` and one new charging
  period (the time since the previous push: ENERGY imported in kWh,
  ENERGY_EXPORT if any, average POWER in kW, negative when the EV fed the grid,
  STATE_OF_CHARGE): the receiver appends it, as the spec's PATCH says.
- A whole Session's charging periods come from the stored meter values, at most
  :data:`MAX_PERIODS` of them (periods of equal length, at least a minute).

V2X: ``kwh`` is the energy imported (charged). What the EV fed back goes in the
standard Session-only dimension ``ENERGY_EXPORT`` of each period and, for the
whole session, in the extension field ``evflex_kwh_exported`` (OCPI has no
field for it).

``auth_method``: the token authorization's last decision for the card at the station
(``node.state["token_auth"]``, see :mod:`evflex.ocpi.cpo.tokens`: ``AUTH_REQUEST``
after a real-time authorization, ``COMMAND`` after an eMSP's START_SESSION, with the
``authorization_reference``); after a restart, ``COMMAND`` if an eMSP's accepted
START_SESSION sent the card to the station (table ``ocpi_commands``); else
``WHITELIST``. The decision is the card's last one at the station (the table keeps no
history per session).
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, func, or_, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.billing import EnergyPoint
from evflex.domain.model import SOC
from evflex.ocpi import transport
from evflex.ocpi.client import endpoint
from evflex.ocpi.cpo import ids
from evflex.ocpi.cpo.tokens import _started_by_command, token_by_uid
from evflex.ocpi.outbox import Outbox
from evflex.ocpi.transport import Page, now_iso, registered_partner
from evflex.store import records
from evflex.store.ocpi_tables import OcpiPartner, OcpiToken
from evflex.store.record_tables import ChargeRecord
from evflex.store.tables import MeterValue, Station, Transaction

log = logging.getLogger(__name__)

router = APIRouter()

MODULE = "sessions"
#: Most charging periods a whole Session (or CDR) carries.
MAX_PERIODS = 48
#: Shortest charging period of a whole Session (s).
MIN_PERIOD_S = 60.0
KWH = 1000.0


# ---------------------------------------------------------------- shared mapping


def kwh(wh: float | None) -> float:
    return round((wh or 0.0) / KWH, 4)


def hours(seconds: float) -> float:
    return round(max(0.0, seconds) / 3600.0, 4)


def forms(uid: str) -> set[str]:
    """The spellings of a card's uid a stored token may have (as :func:`token_by_uid`)."""
    return {uid, uid.upper(), uid.lower()}


def uid_matches(column: Any) -> Any:
    """SQL: a stored token's uid is one of the spellings of ``column`` (a card's id)."""
    return or_(OcpiToken.uid == column, OcpiToken.uid == func.upper(column),
               OcpiToken.uid == func.lower(column))  # fmt: skip


def best_token(rows: list[OcpiToken]) -> OcpiToken | None:
    """Of several tokens with the card's uid, the one :func:`token_by_uid` takes."""
    return max(rows, key=lambda r: (r.type == "RFID", r.last_updated, r.id)) if rows else None


def cdr_token(tok: OcpiToken) -> dict[str, Any]:
    return {
        "country_code": tok.country_code.upper(),
        "party_id": tok.party_id.upper(),
        "uid": tok.uid,
        "type": tok.type,
        "contract_id": tok.contract_id,
    }


async def authorization(
    s: AsyncSession, node: Any, station_id: str, card: str
) -> tuple[str, str | None]:
    """(auth_method, authorization_reference) of a session of ``card`` (its id as the
    station sent it) at ``station_id``: the token authorization's last decision, else an
    eMSP's accepted START_SESSION of that card there (COMMAND), else WHITELIST."""
    info = (node.state.get("token_auth") or {}).get((station_id, card))
    if not info or not info.get("auth_method"):
        info = await _started_by_command(node, s, station_id, card, False)
    if info and info.get("auth_method"):
        return info["auth_method"], info.get("authorization_reference")
    return "WHITELIST", None


@dataclass(slots=True)
class Readings:
    """A transaction's energy registers (Wh, cumulative) and state of charge over time."""

    points: list[EnergyPoint] = field(default_factory=list)
    soc: list[tuple[datetime, float]] = field(default_factory=list)


async def readings(s: AsyncSession, tx: Transaction) -> Readings:
    """The energy registers as the charge record reads them (so a CDR's periods add up to
    what was priced), and the EV's state of charge."""
    soc = await s.execute(
        select(MeterValue.timestamp, MeterValue.value)
        .where(MeterValue.transaction_pk == tx.id, MeterValue.measurand == SOC)
        .order_by(MeterValue.timestamp)
    )
    return Readings((await records._readings(s, tx)).points, [(t, v) for t, v in soc.all()])


@dataclass(slots=True)
class Period:
    start: datetime
    end: datetime
    import_wh: float
    export_wh: float
    soc: float | None

    @property
    def seconds(self) -> float:
        return max(0.0, (self.end - self.start).total_seconds())


def periods(r: Readings, start: datetime, end: datetime) -> list[Period]:
    """At most :data:`MAX_PERIODS` periods of equal length from ``start`` to ``end``; the
    energy between two readings counts in the period of the later one. Periods without a
    reading are merged into the one before."""
    if not r.points:
        return []
    span = max(0.0, (end - start).total_seconds())
    step = max(MIN_PERIOD_S, span / MAX_PERIODS)

    def bucket(ts: datetime) -> int:
        return min(MAX_PERIODS - 1, max(0, int((ts - start).total_seconds() // step)))

    last: dict[int, EnergyPoint] = {}
    for p in r.points:
        last[bucket(p.at)] = p
    soc: dict[int, float] = {}
    for ts, value in r.soc:
        soc[bucket(ts)] = value
    keys = sorted(last)
    out: list[Period] = []
    prev = r.points[0]
    for i, k in enumerate(keys):
        p = last[k]
        begin = start if not out else start + timedelta(seconds=k * step)
        finish = start + timedelta(seconds=keys[i + 1] * step) if i + 1 < len(keys) else end
        out.append(
            Period(begin, max(begin, finish), p.import_wh - prev.import_wh,
                   p.export_wh - prev.export_wh, soc.get(k))
        )  # fmt: skip
        prev = p
    return out


def session_period(p: Period) -> dict[str, Any]:
    """A Session's ChargingPeriod (Session-only dimensions allowed)."""
    dims: list[dict[str, Any]] = [{"type": "ENERGY", "volume": kwh(p.import_wh)}]
    if p.export_wh > 0:
        dims.append({"type": "ENERGY_EXPORT", "volume": kwh(p.export_wh)})
    if p.seconds >= 1:
        avg_kw = (p.import_wh - p.export_wh) / KWH / (p.seconds / 3600.0)
        dims.append({"type": "POWER", "volume": round(avg_kw, 3)})
    if p.soc is not None:
        dims.append({"type": "STATE_OF_CHARGE", "volume": round(p.soc, 1)})
    return {"start_date_time": now_iso(p.start), "dimensions": dims}


def party_filter(parties: set[tuple[str, str]]) -> Any:
    return or_(
        *(
            and_(func.upper(OcpiToken.country_code) == cc, func.upper(OcpiToken.party_id) == pid)
            for cc, pid in parties
        )
    )


def evse_fields(station: Station | None, station_id: str, evse_id: int | None) -> dict[str, str]:
    site = station.site_id if station is not None else None
    return {
        "location_id": ids.location_id(site, station_id),
        "evse_uid": ids.evse_uid(station_id, evse_id or 1),
    }


# ---------------------------------------------------------------- the Session object


async def session_object(
    s: AsyncSession,
    node: Any,
    tx: Transaction,
    tok: OcpiToken,
    with_periods: bool = True,
) -> dict[str, Any]:
    """The whole Session of transaction ``tx`` (its token ``tok``)."""
    station = await s.get(Station, tx.station_id)
    record = (
        await s.scalars(select(ChargeRecord).where(ChargeRecord.transaction_pk == tx.id))
    ).first()
    start = tx.csms_started_at or tx.started_at or tx.updated_at
    ended = tx.state == "ended"
    end = record.stopped_at if record is not None else (tx.stopped_at or tx.updated_at)
    auth_method, reference = await authorization(s, node, tx.station_id, tx.id_token or tok.uid)
    out: dict[str, Any] = {
        "country_code": node.country_code,
        "party_id": node.party_id,
        "id": ids.session_id(tx.id),
        "start_date_time": now_iso(start),
        "kwh": kwh(tx.energy_imported_wh),
        "cdr_token": cdr_token(tok),
        "auth_method": auth_method,
        **evse_fields(station, tx.station_id, tx.evse_id),
        "connector_id": str(tx.connector_id or 1),
        "currency": node.settings.currency,
        "status": "COMPLETED" if ended else "ACTIVE",
        "last_updated": now_iso(tx.updated_at),
        "evflex_kwh_exported": kwh(tx.energy_exported_wh),
    }
    if ended:
        out["end_date_time"] = now_iso(max(end, start))
    if reference:
        out["authorization_reference"] = reference
    if station is not None and station.meter_serial_number:
        out["meter_id"] = station.meter_serial_number
    if with_periods:
        r = await readings(s, tx)
        until = end if ended else node.clock.now()
        out["charging_periods"] = [session_period(p) for p in periods(r, start, max(until, start))]
    if record is not None and record.total_cost is not None:
        out["total_cost"] = {"excl_vat": round(record.total_cost, 4)}
    return out


# ---------------------------------------------------------------- Sender GET


def of_parties(card: Any, parties: set[tuple[str, str]]) -> Any:
    """SQL: the card ``card`` (a column) is a token of one of ``parties``."""
    return select(OcpiToken.id).where(uid_matches(card)).where(party_filter(parties)).exists()


async def own_page(
    request: Request, partner: OcpiPartner, table: Any, stamp: Any, build: Any
) -> Any:
    """A paginated GET of the rows of ``table`` (transactions, charge records) whose card
    is a token of the calling partner, ``date_from``/``date_to`` on column ``stamp``;
    ``build(s, node, row, token)`` makes each OCPI object."""
    page = Page(request)
    node = transport.runtime(request).ocpi
    conds = [of_parties(table.id_token, transport.partner_parties(partner))]
    if page.date_from is not None:
        conds.append(stamp >= page.date_from)
    if page.date_to is not None:
        conds.append(stamp < page.date_to)
    async with node.sessionmaker() as s:
        total = await s.scalar(select(func.count()).select_from(table).where(*conds))
        rows = (
            await s.scalars(
                select(table).where(*conds).order_by(table.id)
                .offset(page.offset).limit(page.limit)
            )
        ).all()  # fmt: skip
        items = []
        for row in rows:
            tok = await token_by_uid(s, row.id_token)
            if tok is not None:
                items.append(await build(s, node, row, tok))
    return page.reply(items, total or 0)


@router.get("")
@router.get("/")
async def list_sessions(
    request: Request, partner: OcpiPartner = Depends(registered_partner)
) -> Any:
    return await own_page(request, partner, Transaction, Transaction.updated_at, session_object)


# ---------------------------------------------------------------- pushes


@dataclass(slots=True)
class _Live:
    """What the pusher knows of one transaction (by station id and OCPP transaction id)."""

    resolved: bool = False
    pk: int | None = None
    partner_id: int | None = None  # None: nobody to push to
    last_push: float = -math.inf  # loop time of the last push
    since: datetime | None = None  # start of the next PATCH's charging period
    e_in: float = 0.0  # energy (Wh) as of the last push
    e_out: float = 0.0
    put: bool = False  # a whole Session to send (started)
    final: bool = False  # ended: a last whole Session, then forget
    closed: bool = False  # the store has it ended (or not at all): nothing more will come
    dirty: bool = False  # an update to send
    data: dict[str, Any] = field(default_factory=dict)  # the latest event's figures


class SessionPusher:
    """Turns the bus's transaction events into Session pushes (see the module text).

    The bus handler only notes what changed; one task queues the pushes, all that
    are due in one database transaction."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.live: dict[tuple[str, str], _Live] = {}
        #: Running transactions that are no partner's (local cards): not followed, so a
        #: node without roaming pays one lookup per transaction, not one per update.
        self.ignored: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        #: Pushes queued, by method (figures for tests and the benchmark).
        self.queued: dict[str, int] = {"PUT": 0, "PATCH": 0}

    @property
    def interval(self) -> float:
        return float(self.node.settings.ocpi_session_update_s)

    async def on_event(self, event: Any) -> None:
        kind = event.topic.rpartition(".")[2]
        tid = event.data.get("transaction_id")
        if event.station_id is None or tid is None:
            return
        key = (event.station_id, str(tid))
        if key in self.ignored:
            if kind == "ended":
                self.ignored.discard(key)
            return
        live = self.live.get(key)
        if live is None:
            live = self.live[key] = _Live()
        live.data.update({k: v for k, v in event.data.items() if v is not None})
        if kind == "started":
            live.put = True
        elif kind == "ended":
            live.final = True
        else:
            live.dirty = True
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ocpi-sessions")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:  # what is waiting goes to the outbox now: the last update is not lost
            await self.flush(everything=True)
        except Exception:
            log.exception("OCPI sessions: last flush")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            wait = self._next_due(loop.time())
            self._wake.clear()
            if wait is None or wait > 0:
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    pass
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("OCPI sessions: pushes")
                await asyncio.sleep(1.0)

    def _next_due(self, now: float) -> float | None:
        """Seconds until the next throttled update is due (0: something is due now)."""
        due = None
        for live in self.live.values():
            if not live.resolved or live.put or live.final:
                return 0.0
            if live.dirty and live.partner_id is not None:
                at = live.last_push + self.interval - now
                due = at if due is None else min(due, at)
            elif live.dirty:
                live.dirty = False
        return None if due is None else max(0.0, due)

    async def flush(self, everything: bool = False) -> int:
        """Queue every push that is due (``everything``: every pending one); how many."""
        node = self.node
        await self._resolve([k for k, v in self.live.items() if not v.resolved])
        loop_now = asyncio.get_running_loop().time()
        # the flags this flush consumes are cleared now: events that arrive while it
        # waits on the database set them again (and are pushed next time)
        taken: list[tuple[tuple[str, str], _Live, bool, bool, bool]] = []
        for key, live in list(self.live.items()):
            if not live.resolved:
                continue
            if live.partner_id is None:
                del self.live[key]
                if not (live.final or live.closed):
                    self.ignored.add(key)
                continue
            due = everything or loop_now >= live.last_push + self.interval
            if live.put or live.final or (live.dirty and due):
                taken.append((key, live, live.put, live.final, live.dirty))
                live.put = live.final = live.dirty = False
        if not taken:
            return 0
        try:
            rows, after = await self._bodies(taken)
            if rows:

                async def job(s: AsyncSession) -> None:
                    for pid, method, path, okey, body, at in rows:
                        Outbox.add(s, pid, MODULE, okey, method, path, body, at)

                await node.writer.submit(job)
        except BaseException:
            for _, live, put, final, dirty in taken:
                live.put, live.final, live.dirty = (
                    live.put or put,
                    live.final or final,
                    live.dirty or dirty,
                )
            raise
        for pid in {r[0] for r in rows}:
            node.outbox.wake(pid)
        for (key, live, _, final, _), state in zip(taken, after, strict=True):
            live.last_push = loop_now
            if state is not None:
                live.since, live.e_in, live.e_out = state
            if final and self.live.get(key) is live:
                del self.live[key]
        for row in rows:
            self.queued[row[1]] += 1
        return len(rows)

    async def _bodies(self, taken: list) -> tuple[list[tuple], list[tuple | None]]:
        """The outbox rows of the pushes ``taken``, and each session's (since, e_in,
        e_out) after them."""
        node = self.node
        now = node.clock.now()
        rows: list[tuple] = []
        after: list[tuple | None] = []
        whole = [live.pk for _, live, put, final, _ in taken if put or final]
        async with node.sessionmaker() as s:
            txs = {}
            if whole:
                q = select(Transaction).where(Transaction.id.in_(whole))
                txs = {t.id: t for t in await s.scalars(q)}
            for _, live, put, final, _ in taken:
                path, okey = self._where(live)
                if put or final:
                    tx = txs.get(live.pk or -1)
                    tok = await token_by_uid(s, tx.id_token) if tx is not None else None
                    if tx is None or tok is None:
                        after.append(None)
                        continue
                    body = await session_object(s, node, tx, tok)
                    rows.append((live.partner_id, "PUT", path, okey, body, now))
                    after.append((now, tx.energy_imported_wh or 0.0, tx.energy_exported_wh or 0.0))
                else:
                    body, state = self._patch(live, now)
                    rows.append((live.partner_id, "PATCH", path, okey, body, now))
                    after.append(state)
        return rows, after

    def _where(self, live: _Live) -> tuple[str, str]:
        """(path, object key) of a session's pushes."""
        node = self.node
        sid = ids.session_id(live.pk or 0)
        return (f"/{node.country_code}/{node.party_id}/{sid}",
                f"{MODULE}/{node.country_code}/{node.party_id}/{sid}")  # fmt: skip

    def _patch(self, live: _Live, now: datetime) -> tuple[dict[str, Any], tuple]:
        d = live.data
        e_in = float(d.get("energy_imported_wh") or live.e_in)
        e_out = float(d.get("energy_exported_wh") or live.e_out)
        since = live.since or now
        p = Period(since, now, max(0.0, e_in - live.e_in), max(0.0, e_out - live.e_out),
                   d.get("soc_percent"))  # fmt: skip
        body = {
            "kwh": kwh(e_in),
            "evflex_kwh_exported": kwh(e_out),
            "status": "ACTIVE",
            "charging_periods": [session_period(p)],
            "last_updated": now_iso(now),
        }
        return body, (now, e_in, e_out)

    async def _resolve(self, keys: list[tuple[str, str]]) -> None:
        """Find the transaction and the partner to push to of newly seen sessions."""
        if not keys:
            return
        async with self.node.sessionmaker() as s:
            found: dict[tuple[str, str], Transaction] = {}
            for i in range(0, len(keys), 400):
                chunk = keys[i : i + 400]
                q = select(Transaction).where(
                    tuple_(Transaction.station_id, Transaction.transaction_id).in_(chunk)
                )
                for tx in await s.scalars(q):
                    found[(tx.station_id, tx.transaction_id)] = tx
            cards = {tx.id_token for tx in found.values() if tx.id_token}
            uids = sorted(set().union(*(forms(c) for c in cards)))
            stored: list[OcpiToken] = []
            for i in range(0, len(uids), 900):
                q = select(OcpiToken).where(OcpiToken.uid.in_(uids[i : i + 900]))
                stored += (await s.scalars(q)).all()
            tokens = {c: best_token([t for t in stored if t.uid in forms(c)]) for c in cards}
            partner_ids = {t.partner_id for t in tokens.values() if t is not None}
            receivers = {
                p.id
                for p in await s.scalars(select(OcpiPartner).where(OcpiPartner.id.in_(partner_ids)))
                if p.status == "registered" and endpoint(p, MODULE, "RECEIVER") is not None
            }
        for key in keys:
            live = self.live.get(key)
            if live is None:
                continue
            tx = found.get(key)
            live.resolved = True
            live.closed = tx is None or tx.state == "ended"
            if tx is None:  # not ours (deleted since): nothing to push
                continue
            live.pk = tx.id
            tok = tokens.get(tx.id_token or "")
            late = tx.state == "ended" and not live.final  # an update after the end
            if tok is not None and tok.partner_id in receivers and not late:
                live.partner_id = tok.partner_id
                if not live.put and live.since is None:  # seen first mid-session (a restart)
                    live.since = tx.updated_at
                    live.e_in, live.e_out = (
                        tx.energy_imported_wh or 0.0,
                        tx.energy_exported_wh or 0.0,
                    )


def attach(node: Any) -> None:
    """Register this module's event handlers on the OCPI node."""
    pusher = SessionPusher(node)
    node.state[MODULE] = pusher
    for topic in ("transaction.started", "transaction.updated", "transaction.ended"):
        node.on(topic, pusher.on_event)
    node.on_start(pusher.start)
    node.on_stop(pusher.stop)
