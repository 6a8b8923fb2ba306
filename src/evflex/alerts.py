"""Alerts: rules over the node's state, raised once per subject, cleared when the condition
is gone, acknowledged by an operator, sent to a webhook and by e-mail.

The :class:`AlertEngine` evaluates every rule that is on (``alert_rules``) every
``alert_tick_s``, sooner after an event that can change a rule's answer (a station
connects or leaves, a connector reports, a clock verdict, a profile's answer, a
session ends) and at the moment a waiting condition becomes due (a station offline
for ``alert_offline_min``). Each round compares what the rules find with the open
alerts: a condition without an alert raises one (``alert.raised`` on the bus), an
alert whose condition is gone is cleared (``alert.cleared``). A rule that fails in a
round is skipped there; its alerts stay as they are.

Rules (one alert per subject, the key is ``rule:subject``):

* ``station_offline`` (station): disconnected longer than ``alert_offline_min``;
* ``connector_faulted`` (station/EVSE/connector): status Faulted or an error code;
* ``need_at_risk`` (station/transaction): the verdict on the driver's need is
  NOT_POSSIBLE (:mod:`evflex.smartcharging.verdict`);
* ``profile_rejected`` (station): a charging profile refused (Rejected, or a
  CALLERROR NotImplemented / NotSupported), or one the connected station has not
  acknowledged for ``alert_profile_ack_s``;
* ``site_over_limit`` (site): the site's net import more than 2 % above its import
  limit in every site sample for ``alert_site_over_s``;
* ``clock_off`` (station): the station's clock is flagged off by more than
  ``clock_tolerance_s`` (:mod:`evflex.csms.clocksync`).

Notifications (raised, cleared and acknowledged to the webhook; raised by e-mail)
go out through :mod:`evflex.notify`; each outcome is stored on the alert
(``notified``). Nothing here waits for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.config import Settings
from evflex.csms.clocksync import ClockWatch
from evflex.events import EventBus
from evflex.notify import Notifier
from evflex.smartcharging.dispatcher import ProfileDispatcher, Wanted
from evflex.smartcharging.manager import LoadManager, refusal
from evflex.smartcharging.planner import evse_key
from evflex.store.alert_tables import Alert
from evflex.store.tables import Connector, Station, Transaction
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

TOPICS = ("alert.raised", "alert.cleared", "alert.acked")
#: A site is over its limit when its net import exceeds the limit by more than this share.
OVER_SHARE = 0.02
#: Rounds after events are at least this far apart (s): a burst of connections costs one.
MIN_ROUND_S = 1.0
#: Events after which the rules are evaluated at once (besides the periodic round).
_WAKE = frozenset({
    "station.connected", "station.disconnected", "connector.status", "station.clock",
    "transaction.started", "transaction.ended", "ev.charging_needs", "transaction.priority",
    "site.changed",
})  # fmt: skip


@dataclass(slots=True)
class Condition:
    """What a rule found for one subject; ``key`` names the one alert it may have open."""

    rule: str
    subject: str
    severity: str  # "critical" or "warning"
    message: str
    station_id: str | None = None
    evse_id: int | None = None
    site_id: str | None = None
    transaction: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.subject}"


def state_of(a: Alert) -> str:
    """``open`` (not acknowledged, condition present), ``acked`` or ``cleared``."""
    if a.cleared_at is not None:
        return "cleared"
    return "acked" if a.acked_at is not None else "open"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def alert_json(a: Alert) -> dict[str, Any]:
    """An alert as the API, the event stream and the webhook show it."""
    return {
        "id": a.id,
        "rule": a.rule,
        "severity": a.severity,
        "state": state_of(a),
        "station_id": a.station_id,
        "evse_id": a.evse_id,
        "site_id": a.site_id,
        "transaction": a.transaction,
        "message": a.message,
        "detail": a.detail or {},
        "raised_at": _iso(a.raised_at),
        "cleared_at": _iso(a.cleared_at),
        "acked_by": a.acked_by,
        "acked_at": _iso(a.acked_at),
        "notified": a.notified or [],
    }


class AlreadyAcked(Exception):
    def __init__(self, alert: dict[str, Any]) -> None:
        super().__init__(f"alert {alert['id']} was acknowledged by {alert['acked_by']}")
        self.alert = alert


@dataclass(slots=True)
class _Over:
    """A site's excursion over its import limit, from the site samples."""

    since: datetime
    last: datetime
    net_kw: float
    limit_kw: float
    peak_kw: float


def _kwh(wh: float | None) -> str:
    return "?" if wh is None else f"{wh / 1000:.1f} kWh"


class AlertEngine:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: GroupCommitWriter,
        bus: EventBus,
        clock: Clock,
        settings: Settings,
        *,
        is_connected: Callable[[str], bool],
        clocks: ClockWatch,
        dispatcher: ProfileDispatcher,
        lm: LoadManager,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.bus = bus
        self.clock = clock
        self.settings = settings
        self.is_connected = is_connected
        self.clocks = clocks
        self.dispatcher = dispatcher
        self.lm = lm
        self.rules: dict[str, Callable[[datetime, list[Station]], Awaitable[list[Condition]]]] = {
            "station_offline": self._station_offline,
            "connector_faulted": self._connector_faulted,
            "need_at_risk": self._need_at_risk,
            "profile_rejected": self._profile_rejected,
            "site_over_limit": self._site_over_limit,
            "clock_off": self._clock_off,
        }
        self.enabled = [r for r in self.rules if r in settings.alert_rules]
        self.notifier = Notifier(settings, clock, self._record_outcome)
        self._open: dict[str, int] = {}  # key -> id of the alert not cleared
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at: datetime | None = None
        self._round_at = 0.0  # when the last round began (event loop time)
        self._soon: list[datetime] = []  # when a waiting condition becomes due
        self._over: dict[str, _Over] = {}
        # (station, profile id) -> since when not acknowledged; the last refusal's reason
        self._unacked: dict[tuple[str, int], datetime] = {}
        self._refused: dict[tuple[str, int], tuple[int, str]] = {}
        dispatcher.on_result(self._profile_answer)

    # ------------------------------------------------------------- running

    async def start(self) -> None:
        self._started_at = self.clock.now()
        await self._load_open()
        ready = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._events(ready), name="evflex-alert-events"),
            asyncio.create_task(self._loop(), name="evflex-alerts"),
        ]
        await ready.wait()
        self.notifier.start()

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.notifier.stop()

    def poke(self) -> None:
        """Evaluate the rules soon (something they look at changed)."""
        self._wake.set()

    async def _load_open(self) -> None:
        async with self.sessionmaker() as s:
            q = select(Alert.open_key, Alert.id).where(Alert.open_key.is_not(None))
            self._open = {k: i for k, i in (await s.execute(q)).all()}

    async def _loop(self) -> None:
        speed = getattr(self.clock, "speed", 1.0) or 1.0
        while True:
            self._round_at = asyncio.get_running_loop().time()
            try:
                await self.evaluate()
            except Exception:  # a failed round must not end the alerts
                log.exception("alert rules failed")
                await self._load_open()
            # at most one round per MIN_ROUND_S however fast a simulation clock runs
            timeout = max(
                min(MIN_ROUND_S, self.settings.alert_tick_s), self.settings.alert_tick_s / speed
            )
            if self._soon:
                due = (min(self._soon) - self.clock.now()).total_seconds() / speed
                timeout = min(timeout, max(0.05, due + 0.05))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
                # a burst of events makes one round; rounds at most every MIN_ROUND_S
                loop = asyncio.get_running_loop()
                await asyncio.sleep(max(0.05, self._round_at + MIN_ROUND_S - loop.time()))
            except TimeoutError:
                pass
            self._wake.clear()

    async def _events(self, ready: asyncio.Event) -> None:
        async with self.bus.subscribe(queue_size=10_000) as q:
            ready.set()
            while True:
                ev = await q.get()
                try:
                    if ev.topic == "site.sample":
                        self._sample(ev.data)
                    elif ev.topic in _WAKE:
                        self.poke()
                except Exception:  # one odd event must not stop the alerts
                    log.exception("alerts: event %s", ev.topic)

    # ------------------------------------------------------------- one round

    async def evaluate(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Run the rules once; the alerts raised and cleared."""
        async with self._lock:
            now = self.clock.now()
            self._soon = []
            async with self.sessionmaker() as s:
                stations = list((await s.execute(select(Station))).scalars())
            found: dict[str, Condition] = {}
            evaluated = set(self.rules) - set(self.enabled)  # a rule turned off: none of its alerts
            for name in self.enabled:
                try:
                    conditions = await self.rules[name](now, stations)
                except Exception:
                    log.exception("alert rule %s failed", name)
                    continue
                evaluated.add(name)
                found.update((c.key, c) for c in conditions)
            new = [c for k, c in found.items() if k not in self._open]
            gone = [k for k in self._open if k.partition(":")[0] in evaluated and k not in found]
            if not new and not gone:
                return [], []
            raised, cleared = await self.writer.submit(self._apply_job(now, new, gone))
        for a in cleared:
            self._open.pop(a.pop("_key"), None)
        for a in raised:
            self._open[a.pop("_key")] = a["id"]
        for a in raised:
            log.warning("alert %s raised: %s", a["id"], a["message"])
            self._publish("alert.raised", a)
        for a in cleared:
            log.info("alert %s cleared: %s", a["id"], a["message"])
            self._publish("alert.cleared", a)
        return raised, cleared

    def _apply_job(self, now: datetime, new: list[Condition], gone: list[str]):
        async def job(s: AsyncSession) -> tuple[list[dict], list[dict]]:
            cleared: list[Alert] = []
            if gone:
                q = select(Alert).where(Alert.open_key.in_(gone))
                cleared = list((await s.execute(q)).scalars())
                for row in cleared:
                    row.cleared_at, row.open_key = now, None
                await s.flush()
            raised = [
                Alert(
                    rule=c.rule,
                    severity=c.severity,
                    station_id=c.station_id,
                    evse_id=c.evse_id,
                    site_id=c.site_id,
                    transaction=c.transaction,
                    key=c.key,
                    open_key=c.key,
                    message=c.message,
                    detail=c.detail,
                    raised_at=now,
                    notified=[],
                )  # fmt: skip
                for c in new
            ]
            s.add_all(raised)
            await s.flush()

            def out(a: Alert) -> dict[str, Any]:
                return {**alert_json(a), "_key": a.key}

            return [out(a) for a in raised], [out(a) for a in cleared]

        return job

    def _publish(self, topic: str, alert: dict[str, Any]) -> None:
        self.bus.publish(topic, alert["station_id"], alert=alert)
        self.notifier.send(topic, alert)

    # ------------------------------------------------------------- acknowledgement

    async def ack(self, alert_id: int, who: str) -> dict[str, Any] | None:
        """Acknowledge an alert (None: no such alert); :class:`AlreadyAcked` if it was."""
        now = self.clock.now()

        async def job(s: AsyncSession) -> tuple[bool, dict[str, Any]] | None:
            done = await s.execute(
                update(Alert)
                .where(Alert.id == alert_id, Alert.acked_at.is_(None))
                .values(acked_by=who, acked_at=now)
            )
            q = select(Alert).where(Alert.id == alert_id)
            row = (await s.execute(q.execution_options(populate_existing=True))).scalar()
            return None if row is None else (done.rowcount == 1, alert_json(row))

        result = await self.writer.submit(job)
        if result is None:
            return None
        ok, alert = result
        if not ok:
            raise AlreadyAcked(alert)
        log.info("alert %s acknowledged by %s", alert_id, who)
        self._publish("alert.acked", alert)
        return alert

    async def _record_outcome(self, alert_id: int, outcome: dict[str, Any]) -> None:
        async def job(s: AsyncSession) -> None:
            row = await s.get(Alert, alert_id)
            if row is not None:
                row.notified = [*(row.notified or []), outcome]

        await self.writer.submit(job)

    # ------------------------------------------------------------- rules

    async def _station_offline(self, now: datetime, stations: list[Station]) -> list[Condition]:
        limit = timedelta(minutes=self.settings.alert_offline_min)
        started = self._started_at or now
        out = []
        for st in stations:
            if st.last_connected_at is None or self.is_connected(st.id):
                continue  # never seen (not commissioned), or online
            if not st.connected:
                since = st.last_disconnected_at or st.last_connected_at
            elif st.last_connected_at < started:
                since = started  # connected when the node stopped: not back since
            else:
                continue  # leaving right now: its disconnection is being written
            # after a restart every station gets the full time to come back (an alert
            # raised before stays open meanwhile)
            due = max(since, started) + limit
            if now < due and f"station_offline:{st.id}" not in self._open:
                self._soon.append(due)
                continue
            gone = (now - since).total_seconds()
            span = f"{gone / 60:.0f} min" if gone > 120 else f"{gone:.0f} s"
            out.append(
                Condition(
                    "station_offline",
                    st.id,
                    "critical",
                    f"station {st.id} offline for {span} (since {since:%Y-%m-%d %H:%M:%S} UTC)",
                    station_id=st.id,
                    site_id=st.site_id,
                    detail={
                        "since": since.isoformat(),
                        "limit_min": self.settings.alert_offline_min,
                    },
                )
            )
        return out

    async def _connector_faulted(self, now: datetime, stations: list[Station]) -> list[Condition]:
        sites = {st.id: st.site_id for st in stations}
        async with self.sessionmaker() as s:
            q = select(Connector).where(
                or_(
                    Connector.status == "Faulted",
                    Connector.error_code.is_not(None) & (Connector.error_code != "NoError"),
                )
            )
            rows = list((await s.execute(q)).scalars())
        out = []
        for c in rows:
            error = c.error_code if c.error_code not in (None, "NoError") else None
            where = f"EVSE {c.evse_id} connector {c.connector_id}" if c.evse_id else "station"
            text = c.status + (f" ({error})" if error else "") + (f": {c.info}" if c.info else "")
            out.append(
                Condition(
                    "connector_faulted",
                    f"{c.station_id}/{c.evse_id}/{c.connector_id}",
                    "critical" if c.status == "Faulted" else "warning",
                    f"station {c.station_id} {where}: {text}",
                    station_id=c.station_id,
                    evse_id=c.evse_id,
                    site_id=sites.get(c.station_id),
                    detail={
                        "connector_id": c.connector_id,
                        "status": c.status,
                        "error_code": error,
                        "info": c.info,
                        "vendor_error_code": c.vendor_error_code,
                        "since": _iso(c.status_at),
                    },
                )
            )
        return out

    async def _need_at_risk(self, now: datetime, stations: list[Station]) -> list[Condition]:
        sites = {st.id: st.site_id for st in stations}
        async with self.sessionmaker() as s:
            q = select(Transaction).where(Transaction.state == "active")
            txs = [t for t in (await s.execute(q)).scalars() if sites.get(t.station_id)]
        verdicts: dict[str, dict] = {}
        out = []
        for tx in txs:
            site = sites[tx.station_id]
            if site not in verdicts:
                verdicts[site] = await self.lm.verdicts(site)
            v = verdicts[site].get(evse_key(tx.station_id, tx.evse_id or 0))
            if v is None or not v.at_risk:
                continue
            by = f" by {v.departure:%H:%M} UTC" if v.departure else ""
            out.append(
                Condition(
                    "need_at_risk",
                    f"{tx.station_id}/{tx.transaction_id}",
                    "warning",
                    f"session {tx.transaction_id} at {tx.station_id} EVSE {tx.evse_id}: "
                    f"{_kwh(v.expected_wh)} of the {_kwh(v.need_wh)} wanted{by}",
                    station_id=tx.station_id,
                    evse_id=tx.evse_id,
                    site_id=site,
                    transaction=tx.transaction_id,
                    detail={
                        "transaction_pk": tx.id,
                        "need_wh": v.need_wh,
                        "expected_wh": v.expected_wh,
                        "best_wh": v.best_wh,
                        "departure": _iso(v.departure),
                        "priority": v.priority,
                    },
                )
            )
        return out

    def _profile_answer(self, station_id: str, profile_id: int, w: Wanted) -> None:
        key = (station_id, profile_id)
        reason = refusal(w)
        if reason is not None:
            self._refused[key] = (w.version, reason)
        elif w.status == "accepted":
            self._refused.pop(key, None)
            self._unacked.pop(key, None)
        self.poke()

    async def _profile_rejected(self, now: datetime, stations: list[Station]) -> list[Condition]:
        limit = timedelta(seconds=self.settings.alert_profile_ack_s)
        wanted = self.dispatcher.all_wanted()
        for mem in (self._refused, self._unacked):
            for key in [k for k in mem if k not in wanted]:
                del mem[key]  # no longer wanted (forgotten, session ended)
        by_station: dict[str, list[dict[str, Any]]] = {}
        for (sid, pid), w in sorted(wanted.items()):
            key = (sid, pid)
            if w.status == "accepted":
                self._unacked.pop(key, None)
                continue
            refused = self._refused.get(key)
            item = {"profile_id": pid, "evse_id": w.evse_id, "source": w.source}
            if refused is not None and refused[0] == w.version:
                by_station.setdefault(sid, []).append({**item, "refused": refused[1]})
                continue
            if not self.is_connected(sid):
                self._unacked.pop(key, None)  # offline: station_offline speaks
                continue
            since = self._unacked.setdefault(key, now)
            if now - since < limit:
                self._soon.append(since + limit)
                continue
            waited = round((now - since).total_seconds())
            by_station.setdefault(sid, []).append({**item, "unacknowledged_s": waited})
        sites = {st.id: st.site_id for st in stations}
        out = []
        for sid, items in by_station.items():
            refused = [x for x in items if "refused" in x]
            text = (
                f"refused: {refused[0]['refused']}"
                if refused
                else f"not acknowledged for {self.settings.alert_profile_ack_s:g} s"
            )
            n = len(items)
            out.append(
                Condition(
                    "profile_rejected",
                    sid,
                    "warning",
                    f"station {sid}: {n} charging profile{'s' if n > 1 else ''} {text}",
                    station_id=sid,
                    site_id=sites.get(sid),
                    detail={"profiles": items},
                )
            )
        return out

    def _sample(self, data: dict[str, Any]) -> None:
        site, net, limit = data.get("site_id"), data.get("net_kw"), data.get("import_limit_kw")
        if site is None or data.get("at") is None:
            return
        at = datetime.fromisoformat(data["at"])
        if net is None or limit is None or net <= limit * (1 + OVER_SHARE):
            if self._over.pop(site, None) is not None:
                self.poke()
            return
        o = self._over.get(site)
        if o is None:
            self._over[site] = _Over(at, at, net, limit, net)
            self.poke()
        else:
            o.last, o.net_kw, o.limit_kw, o.peak_kw = at, net, limit, max(o.peak_kw, net)

    async def _site_over_limit(self, now: datetime, stations: list[Station]) -> list[Condition]:
        hold = timedelta(seconds=self.settings.alert_site_over_s)
        # no sample for this long: the excursion is not known to go on (sampling off, site gone)
        stale = timedelta(seconds=3 * max(self.settings.site_sample_s, self.settings.alert_tick_s))
        out = []
        for site, o in list(self._over.items()):
            if now - o.last > stale:
                del self._over[site]
                continue
            if now - o.since < hold:
                self._soon.append(o.since + hold)
                continue
            out.append(
                Condition(
                    "site_over_limit",
                    site,
                    "critical",
                    f"site {site} imports {o.net_kw:.1f} kW over its {o.limit_kw:g} kW limit "
                    f"since {o.since:%H:%M:%S} UTC",
                    site_id=site,
                    detail={
                        "net_kw": o.net_kw,
                        "import_limit_kw": o.limit_kw,
                        "peak_kw": o.peak_kw,
                        "since": o.since.isoformat(),
                    },
                )
            )
        return out

    async def _clock_off(self, now: datetime, stations: list[Station]) -> list[Condition]:
        out = []
        for st in stations:
            c = self.clocks.state(st.id)
            if c is None or not c.skewed:
                continue
            offset = c.offset_s or 0.0
            tol = self.clocks.tolerance_s
            out.append(
                Condition(
                    "clock_off",
                    st.id,
                    "warning",
                    f"station {st.id}: clock {offset:+.0f} s off the CSMS's (tolerance {tol:g} s)",
                    station_id=st.id,
                    site_id=st.site_id,
                    detail={"offset_s": round(offset, 3), "tolerance_s": tol},
                )
            )
        return out
