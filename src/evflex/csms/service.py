"""Version-neutral CSMS behaviour: what happens when a station says something.

Protocol adapters (``v16``, ``v201``) translate wire messages into calls on
:class:`CsmsService` with domain objects; the service persists through the
group-commit writer and publishes domain events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.csms.clocksync import ClockWatch
from evflex.csms.commands import LocalListEntry
from evflex.domain.model import (
    AuthorizationStatus,
    ChargingNeeds,
    MeterSample,
    StationEvent,
    StationInfo,
    StatusReport,
    TransactionUpdate,
)
from evflex.events import EventBus
from evflex.store import records, repo
from evflex.store.tables import IdToken
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)


class AuthResult:
    __slots__ = ("status", "expiry", "parent_id_token")

    def __init__(self, status: AuthorizationStatus, expiry=None, parent_id_token=None):
        self.status = status
        self.expiry = expiry
        self.parent_id_token = parent_id_token


#: Why a new session at (station, evse or None) must be refused now; None: admit it.
Admission = Callable[[str, int | None], Awaitable[str | None]]
#: The answer for a card that is not one of ours: (station, id token, evse or None,
#: new session) -> the roaming partner's answer, or None if no partner knows the card.
RoamingAuth = Callable[[str, str, int | None, bool], Awaitable["AuthResult | None"]]


class CsmsService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: GroupCommitWriter,
        clock: Clock,
        bus: EventBus,
        heartbeat_interval: int = 300,
        clock_tolerance_s: float = 60.0,
        remote_start_timeout_s: float = 120.0,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.clock = clock
        self.bus = bus
        self.heartbeat_interval = heartbeat_interval
        #: Each station's clock offset; skew is flagged and corrected on our clock.
        self.clocks = ClockWatch(clock, clock_tolerance_s)
        self._clock_tasks: set[asyncio.Task] = set()
        self.remote_start_timeout_s = remote_start_timeout_s
        self._remote_starts: set[asyncio.Task] = set()
        self._report_queues: dict[tuple[str, int], asyncio.Queue] = {}
        # (station, profile id) -> the last UpdateDynamicSchedule values sent (2.1).
        self._dynamic: dict[tuple[str, int], dict] = {}
        #: Admission of new sessions (the load manager's rule, wired by the app):
        #: a refusal answers the authorization NotAtThisTime (1.6: Blocked).
        self.admission: Admission | None = None
        #: Cards of roaming partners (OCPI tokens, wired by the OCPI node): asked about a
        #: card that is not in id_tokens; admission applies to its Accepted too.
        self.roaming: RoamingAuth | None = None
        #: Station certificates (a :class:`evflex.csms.certificates.CertificateManager`,
        #: wired by the node): the adapters hand it SignCertificate and the ISO 15118 calls.
        self.certificates: Any = None
        #: The currency of charge records (the node's setting).
        self.currency = "EUR"

    async def close(self) -> None:
        """End the background work (clock corrections, remote starts being followed)."""
        tasks = [*self._clock_tasks, *self._remote_starts]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------ connection

    async def connected(self, station_id: str, version: str) -> None:
        now = self.clock.now()
        event = StationEvent(station_id, "connection", now, "Connected", {"ocpp": version})
        await self._connection(repo.connection_row(station_id, True, version, now), event)
        self.bus.publish("station.connected", station_id, ocpp_version=version)

    async def disconnected(self, station_id: str, last_message_at: datetime | None = None) -> None:
        """The station left; ``last_message_at`` (when it last sent anything) is kept as its
        last sign of life."""
        now = self.clock.now()
        event = StationEvent(station_id, "connection", now, "Disconnected")
        row = repo.connection_row(station_id, False, None, now, seen_at=last_message_at)
        await self._connection(row, event)
        self.bus.publish("station.disconnected", station_id)

    async def _connection(self, row: dict, event: StationEvent) -> None:
        await self.writer.write_all({repo.CONNECTIONS: [row], repo.EVENTS: [repo.event_row(event)]})

    # ------------------------------------------------------------ core messages

    async def boot(self, station_id: str, version: str, info: StationInfo) -> datetime:
        now = self.clock.now()

        event = StationEvent(
            station_id,
            "boot",
            now,
            info.boot_reason,
            {"vendor": info.vendor, "model": info.model, "firmware": info.firmware_version},
        )
        await self.writer.write_all(
            {
                repo.BOOTS: [repo.boot_row(station_id, info, version, now)],
                repo.EVENTS: [repo.event_row(event)],
            }
        )
        self.bus.publish("station.booted", station_id, vendor=info.vendor, model=info.model)
        self.clocks.time_offered(station_id)  # the answer carries our currentTime
        return now

    async def heartbeat(self, station_id: str) -> datetime:
        now = self.clock.now()
        await self.writer.write(repo.HEARTBEATS, [repo.heartbeat_row(station_id, now)])
        self.clocks.time_offered(station_id)  # the answer carries our currentTime
        return now

    async def status(self, station_id: str, report: StatusReport, live: bool | None = None) -> None:
        """``live``: see :meth:`station_time` (False: the timestamp is ours, not the station's)."""
        now = self.clock.now()
        await self.station_time(station_id, report.timestamp, live)

        rows = {repo.STATUSES: [repo.status_row(station_id, report, now)]}
        if report.error_code and report.error_code != "NoError":
            error = StationEvent(
                station_id,
                "error",
                report.timestamp,
                report.error_code,
                {
                    "evse": report.evse_id,
                    "connector": report.connector_id,
                    "info": report.info,
                    "vendor_error_code": report.vendor_error_code,
                },
            )
            rows[repo.EVENTS] = [repo.event_row(error)]
        await self.writer.write_all(rows)
        self.bus.publish(
            "connector.status",
            station_id,
            evse_id=report.evse_id,
            connector_id=report.connector_id,
            status=report.status.value,
            error_code=report.error_code,
        )

    async def authorize(
        self,
        station_id: str,
        id_token: str,
        evse_id: int | None = None,
        *,
        new_session: bool = True,
    ) -> AuthResult:
        """The answer to a card at ``station_id``.

        ``new_session``: the card starts a session (Authorize, 1.6
        StartTransaction, a 2.x TransactionEvent that starts or authorizes
        one). Such a session must also pass :attr:`admission`; if refused, the
        answer is NotAtThisTime (no expiry: the card itself stays good) and an
        ``AdmissionRefused`` event is logged.
        """
        async with self.sessionmaker() as s:
            row = await repo.get_id_token(s, id_token)
        card: IdToken | AuthResult | None = row
        if row is None and self.roaming is not None:
            card = await self.roaming(station_id, id_token, evse_id, new_session)
        if card is None:
            return AuthResult(AuthorizationStatus.UNKNOWN)
        status = AuthorizationStatus(card.status)
        if (
            status is AuthorizationStatus.ACCEPTED
            and card.expiry
            and card.expiry <= self.clock.now()
        ):
            status = AuthorizationStatus.EXPIRED
        if status is AuthorizationStatus.ACCEPTED and new_session and self.admission is not None:
            reason = await self.admission(station_id, evse_id)
            if reason is not None:
                log.warning("station %s: session refused: %s", station_id, reason)
                detail = {"evse_id": evse_id, "id_token": id_token, "reason": reason}
                await self.record_event(  # stored and published on the bus
                    StationEvent(
                        station_id, "smart_charging", self.clock.now(), "AdmissionRefused", detail
                    )
                )
                return AuthResult(AuthorizationStatus.NOT_AT_THIS_TIME)
        return AuthResult(status, card.expiry, card.parent_id_token)

    # ------------------------------------------------------------ transactions

    async def start_transaction_assigning_id(self, upd: TransactionUpdate) -> int:
        """1.6 StartTransaction; returns the transactionId we assign (idempotent)."""
        now = self.clock.now()
        await self.station_time(upd.station_id, upd.timestamp, None)  # may be a replay

        async def job(s: AsyncSession) -> int:
            tx = await repo.start_transaction_assigning_id(s, upd, now)
            self._note_start(tx, upd, now, None)
            return tx.id

        tx_id = await self.writer.submit(job)
        self.bus.publish(
            "transaction.started",
            upd.station_id,
            transaction_id=str(tx_id),
            evse_id=upd.evse_id,
            id_token=upd.id_token,
        )
        return tx_id

    async def transaction_update(
        self, upd: TransactionUpdate, create: bool = True, live: bool | None = None
    ) -> bool:
        """Apply a transaction account; False if it names an unknown transaction.

        ``live``: True if sent as it happened, False if it waited in the station's
        offline queue, None if nobody knows (see :meth:`station_time`)."""
        now = self.clock.now()
        await self.station_time(upd.station_id, upd.timestamp, live)

        async def job(s: AsyncSession):
            tx = await repo.apply_transaction_update(s, upd, now, create=create)
            if tx is None:
                return None
            self._note_start(tx, upd, now, live)
            record = None
            if upd.event == "ended":  # in the same commit: never lost, never twice
                stop = now if live else self.clocks.to_csms(upd.station_id, upd.timestamp, now)
                record = await records.create_record(s, tx, stop, self.currency, now)
            return record, (
                tx.state,
                tx.charging_state,
                tx.power_w,
                tx.energy_imported_wh,
                tx.energy_exported_wh,
                tx.soc_percent,
                tx.evse_id,
                tx.ev_phases,
            )

        key = (upd.station_id, upd.transaction_id)
        result = await self.writer.submit(job, prefetch=(repo.prefetch_transactions, key))
        if result is None:
            return False
        record, (state, charging_state, power, e_in, e_out, soc, evse_id, ev_phases) = result
        self.bus.publish(
            f"transaction.{upd.event}",
            upd.station_id,
            transaction_id=upd.transaction_id,
            evse_id=evse_id,
            state=state,
            charging_state=charging_state,
            power_w=power,
            energy_imported_wh=e_in,
            energy_exported_wh=e_out,
            soc_percent=soc,
            ev_phases=ev_phases,
        )
        if record is not None:
            self.bus.publish(
                "record.created",
                upd.station_id,
                record_id=record.id,
                transaction_id=upd.transaction_id,
                total_cost=record.total_cost,
                currency=record.currency,
            )
        return True

    async def meter_values(self, station_id: str, evse_id: int, samples: list[MeterSample]):
        """Samples outside a transaction (station meter, connector 0, idle EVSE)."""
        if samples:
            await self.station_time(station_id, max(x.timestamp for x in samples), None)

        await self.writer.write(repo.SAMPLES, repo.sample_rows(station_id, evse_id, None, samples))
        self.bus.publish("meter.values", station_id, evse_id=evse_id, count=len(samples))

    def _note_start(
        self, tx, upd: TransactionUpdate, received: datetime, live: bool | None
    ) -> None:
        """Record when the transaction started on our clock (``started_at`` stays the
        station's stamp). A live Started event: when we received it; otherwise the
        station's stamp less its clock offset (never later than the receipt)."""
        if tx.started_at is None:
            return
        arrived = upd.event == "started" and upd.timestamp == tx.started_at
        if tx.csms_started_at is not None and not arrived:
            return
        if live and arrived:
            seen = received
        else:
            seen = self.clocks.to_csms(upd.station_id, tx.started_at, received)
        if tx.csms_started_at is None or seen < tx.csms_started_at:
            tx.csms_started_at = seen

    async def evse_of_transaction(self, station_id: str, transaction_id: str) -> int | None:
        async with self.sessionmaker() as s:
            tx = await repo.find_transaction(s, station_id, transaction_id)
        return tx.evse_id if tx else None

    async def transaction_id_for_evse(self, station_id: str, evse_id: int) -> str | None:
        async with self.sessionmaker() as s:
            tx = await repo.active_transaction_for_evse(s, station_id, evse_id)
        return tx.transaction_id if tx else None

    # ------------------------------------------------------------ station clocks

    async def station_time(self, station_id: str, ts: datetime, live: bool | None) -> None:
        """A timestamp of the station, received now: checks the station's clock.

        ``live`` True: sent as it happened (2.x live events); None: may have waited
        in a queue (1.6 transaction messages); False: queued or not the station's
        stamp, ignored. Leaving the tolerance and coming back are logged once each;
        while out, the station is offered our time (see :mod:`evflex.csms.clocksync`).
        """
        if live is False:
            return
        verdict = self.clocks.observe(station_id, ts, live)
        if verdict.changed is not None:
            skewed = verdict.changed == "skewed"
            detail = {
                "offset_s": round(verdict.offset_s or 0.0, 3),
                "tolerance_s": self.clocks.tolerance_s,
                "station_time": ts.isoformat(),
            }
            await self.record_event(
                StationEvent(
                    station_id,
                    "clock",
                    self.clock.now(),
                    "ClockSkew" if skewed else "ClockInTolerance",
                    detail,
                ),
                f"station clock {verdict.offset_s:+.1f} s off the CSMS's"
                + (
                    f" (tolerance {self.clocks.tolerance_s:g} s)"
                    if skewed
                    else ", back in tolerance"
                ),
            )
        if verdict.fix and self.clocks.fixer is not None:
            task = asyncio.create_task(self._fix_clock(station_id))
            self._clock_tasks.add(task)
            task.add_done_callback(self._clock_tasks.discard)

    async def _fix_clock(self, station_id: str) -> None:
        try:
            await self.clocks.fixer(station_id)
        except Exception as exc:  # the station may be gone or refuse; we try again later
            log.info("%s: offering the time failed: %r", station_id, exc)

    # ------------------------------------------------------------ other

    async def record_event(self, event: StationEvent, text: str | None = None) -> None:
        await self.writer.write(repo.EVENTS, [repo.event_row(event, text)])
        self.bus.publish(f"station.{event.kind}", event.station_id, type=event.type)

    async def record_reservation(
        self,
        reservation_id: int,
        station_id: str,
        evse_id: int | None,
        id_token: str,
        expiry: datetime,
        status: str,
    ) -> None:
        now = self.clock.now()

        async def job(s: AsyncSession) -> None:
            await repo.upsert_reservation(
                s, reservation_id, station_id, evse_id, id_token, expiry, status, now
            )

        await self.writer.submit(job)

    async def set_reservation_status(self, reservation_id: int, status: str) -> None:
        """A reservation ended or changed (Cancelled by a command; 2.x Expired, Removed);
        announced on the bus as ``reservation.status``."""

        async def job(s: AsyncSession) -> None:
            await repo.set_reservation_status(s, reservation_id, status)

        await self.writer.submit(job)
        self.bus.publish("reservation.status", reservation_id=reservation_id, status=status)

    async def remote_start_refusal(
        self, station_id: str, id_token: str, evse_id: int | None = None
    ) -> str | None:
        """Why a remote start with ``id_token`` must not be sent (None: send it).

        The CSMS answers the station's own authorization of that card: a card it
        would refuse gives, at best, a station that says Accepted and then starts
        nothing (its EVSE left occupied without a transaction).
        """
        auth = await self.authorize(station_id, id_token, evse_id)
        if auth.status is AuthorizationStatus.ACCEPTED:
            return None
        return (
            f"id token '{id_token}' is {auth.status.value} at this CSMS: "
            "the station would start no transaction"
        )

    async def watch_remote_start(
        self, station_id: str, evse_id: int | None, id_token: str
    ) -> Callable[[bool], None]:
        """Follow a remote start about to be sent; call the result with the station's yes/no.

        Accepted but no transaction on that EVSE within ``remote_start_timeout_s``
        (CSMS clock): a ``RemoteStartFailed`` event for the operator.
        """
        ready = asyncio.Event()
        sent: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._follow_remote_start(station_id, evse_id, id_token, ready, sent),
            name=f"remote-start-{station_id}",
        )
        self._remote_starts.add(task)
        task.add_done_callback(self._remote_starts.discard)
        await ready.wait()  # subscribed before the command leaves: no start is missed

        def answered(accepted: bool) -> None:
            if not sent.done():
                sent.set_result(accepted)

        return answered

    async def _follow_remote_start(
        self,
        station_id: str,
        evse_id: int | None,
        id_token: str,
        ready: asyncio.Event,
        sent: asyncio.Future[bool],
    ) -> None:
        loop = asyncio.get_running_loop()
        real_s = self.remote_start_timeout_s / getattr(self.clock, "speed", 1.0)
        async with self.bus.subscribe() as q:
            ready.set()
            if not await sent:
                return
            deadline = loop.time() + real_s
            while (left := deadline - loop.time()) > 0:
                try:
                    ev = await asyncio.wait_for(q.get(), left)
                except TimeoutError:
                    break
                if (
                    ev.topic == "transaction.started"
                    and ev.station_id == station_id
                    and (evse_id is None or ev.data.get("evse_id") in (None, evse_id))
                ):
                    return
        detail = {
            "evse_id": evse_id,
            "id_token": id_token,
            "reason": f"accepted, but no transaction within {self.remote_start_timeout_s:g} s",
        }
        log.warning("station %s: remote start failed: %s", station_id, detail["reason"])
        await self.record_event(
            StationEvent(station_id, "command", self.clock.now(), "RemoteStartFailed", detail)
        )

    async def id_token_table(self) -> list[LocalListEntry]:
        async with self.sessionmaker() as s:
            rows = await repo.list_id_tokens(s)
        return [LocalListEntry(id_token=r.id_token, status=r.status, type=r.type) for r in rows]

    # ------------------------------------------------------------ smart charging

    async def ev_charging_needs(self, needs: ChargingNeeds) -> str | None:
        """Store needs on the EVSE's running transaction; returns its id (None: no transaction).

        The EV's departure time is on the station's clock; it is kept on ours."""
        offset = self.clocks.offset(needs.station_id)
        if needs.source == "ev" and needs.departure is not None and offset:
            needs.departure -= timedelta(seconds=offset)

        async def job(s: AsyncSession) -> str | None:
            tx = await repo.active_transaction_for_evse(s, needs.station_id, needs.evse_id)
            if tx is None:
                return None
            repo.set_transaction_needs(tx, needs)
            return tx.transaction_id

        tx_id = await self.writer.submit(job)
        self.bus.publish(
            "ev.charging_needs",
            needs.station_id,
            evse_id=needs.evse_id,
            transaction_id=tx_id,
            needs=needs,
        )
        return tx_id

    async def priority_charging(
        self, station_id: str, transaction_id: str, active: bool, source: str
    ) -> bool:
        """Priority charging switched on or off (2.1 NotifyPriorityCharging or the API)."""

        async def job(s: AsyncSession) -> bool:
            tx = await repo.find_transaction(s, station_id, transaction_id)
            if tx is None:
                return False
            tx.priority = active
            tx.updated_at = self.clock.now()
            return True

        found = await self.writer.submit(job)
        await self.record_event(
            StationEvent(
                station_id,
                "smart_charging",
                self.clock.now(),
                "PriorityCharging",
                {"transactionId": transaction_id, "activated": active, "source": source},
            )
        )
        if found:
            self.bus.publish(
                "transaction.priority",
                station_id,
                transaction_id=transaction_id,
                active=active,
                reason=source,
            )
        return found

    def remember_dynamic_update(self, station_id: str, profile_id: int, update: dict) -> None:
        self._dynamic[(station_id, profile_id)] = dict(update)

    def dynamic_update(self, station_id: str, profile_id: int) -> dict | None:
        """The values a station pulling a dynamic profile's update gets (None: unknown)."""
        return self._dynamic.get((station_id, profile_id))

    async def charging_limit(
        self,
        station_id: str,
        evse_id: int,
        source: str,
        schedules: list | None,
        grid_critical: bool = False,
    ) -> None:
        """A limit set at the station by someone else (EMS, SO, ...); None = cleared."""
        kind = "ClearedChargingLimit" if schedules is None else "NotifyChargingLimit"
        detail = {"evseId": evse_id, "source": source, "isGridCritical": grid_critical}
        await self.record_event(
            StationEvent(station_id, "smart_charging", self.clock.now(), kind, detail)
        )
        self.bus.publish(
            "charging_limit",
            station_id,
            evse_id=evse_id,
            source=source,
            schedules=schedules,
            grid_critical=grid_critical,
        )

    def expect_profile_reports(self, station_id: str, request_id: int) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue()
        self._report_queues[(station_id, request_id)] = queue
        return queue

    def stop_expecting_reports(self, station_id: str, request_id: int) -> None:
        self._report_queues.pop((station_id, request_id), None)

    async def charging_profiles_report(
        self, station_id: str, request_id: int, evse_id: int, source: str, profiles, tbc: bool
    ) -> None:
        queue = self._report_queues.get((station_id, request_id))
        if queue is not None:
            queue.put_nowait(
                {"evse_id": evse_id, "source": source, "profiles": profiles, "tbc": tbc}
            )
        self.bus.publish(
            "charging_profiles.report", station_id, request_id=request_id, evse_id=evse_id
        )

    async def next_reservation_id(self) -> int:
        async with self.sessionmaker() as s:
            return await repo.next_reservation_id(s)
