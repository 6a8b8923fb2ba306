"""The durable outbox: every push to a partner is a row before it is a request.

A row stays until the partner answered it (``sent``) or refused it for good
(``failed``: HTTP 4xx but 408/429, or an OCPI 2xxx, which the same request would
meet again). A partner that is down or broken (no answer, HTTP 5xx, OCPI 3xxx)
is retried with exponential backoff up to ``ocpi_retry_max_s``, from the same
row on: rows of one partner go out in ``id`` order per object (several objects
at once, each object's rows one after the other), and nothing is skipped. Rows
are in the database, so a restart resumes where the node stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from evflex.clock import Clock
from evflex.ocpi.client import OcpiClient, PartnerError, endpoint, party_of
from evflex.ocpi.secrets import TokenBox
from evflex.store.ocpi_tables import OcpiOutbox, OcpiPartner
from evflex.store.writer import GroupCommitWriter

log = logging.getLogger(__name__)

BATCH = 200  # rows read per round
PARALLEL = 16  # objects pushed at once to one partner


class Outbox:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: GroupCommitWriter,
        clock: Clock,
        client: OcpiClient,
        box: TokenBox,
        retry_max_s: float,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.clock = clock
        self.client = client
        self.box = box
        self.retry_max_s = retry_max_s
        self._wake: dict[int, asyncio.Event] = {}
        self._kick: dict[int, asyncio.Event] = {}  # cuts a backoff short (retry_now)
        #: Per partner, the objects whose oldest row failed in the last round (see _due).
        self._held: dict[int, set[str]] = {}
        self._tasks: dict[int, asyncio.Task] = {}
        self._closing = False
        #: Requests answered, per partner (for figures and the partner API).
        self.sent: dict[int, int] = {}
        #: Called with (partner id, outcome, row) after each row is done (tests, commands).
        self.listeners: list[Callable[[int, str, OcpiOutbox], None]] = []

    # ------------------------------------------------------------ enqueue

    @staticmethod
    def add(
        s: AsyncSession,
        partner_id: int,
        module: str,
        object_key: str,
        method: str,
        path: str,
        body: Any,
        now: datetime,
    ) -> None:
        """Queue one request in the caller's database transaction (then :meth:`wake`)."""
        s.add(
            OcpiOutbox(
                partner_id=partner_id,
                module=module,
                object_key=object_key,
                method=method,
                path=path,
                body=body,
                created_at=now,
                attempts=0,
                done=False,
            )
        )

    async def push(
        self, partner_ids: list[int], module: str, object_key: str, method: str, path: str,
        body: Any,
    ) -> None:  # fmt: skip
        """Queue one request to each partner (committed when this returns) and send."""
        if not partner_ids:
            return
        now = self.clock.now()

        async def job(s: AsyncSession) -> None:
            for pid in partner_ids:
                self.add(s, pid, module, object_key, method, path, body, now)

        await self.writer.submit(job)
        for pid in partner_ids:
            self.wake(pid)

    def wake(self, partner_id: int) -> None:
        if self._closing:
            return
        ev = self._wake.setdefault(partner_id, asyncio.Event())
        ev.set()
        task = self._tasks.get(partner_id)
        if task is None or task.done():
            self._tasks[partner_id] = asyncio.create_task(
                self._run(partner_id), name=f"ocpi-outbox-{partner_id}"
            )

    def retry_now(self, partner_id: int) -> None:
        """Try the partner's waiting rows now, not at the end of its backoff (an operator
        knows it is back)."""
        self._kick.setdefault(partner_id, asyncio.Event()).set()
        self.wake(partner_id)

    async def start(self) -> None:
        """Resume every partner that has rows left."""
        async with self.sessionmaker() as s:
            ids = (await s.scalars(select(OcpiOutbox.partner_id).where(~OcpiOutbox.done)
                                   .distinct())).all()  # fmt: skip
        for pid in ids:
            self.wake(pid)

    async def close(self) -> None:
        self._closing = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def depth(self, partner_id: int | None = None) -> dict[int, int]:
        """Rows waiting, per partner."""
        q = select(OcpiOutbox.partner_id, func.count()).where(~OcpiOutbox.done)
        if partner_id is not None:
            q = q.where(OcpiOutbox.partner_id == partner_id)
        async with self.sessionmaker() as s:
            rows = (await s.execute(q.group_by(OcpiOutbox.partner_id))).all()
        return {pid: n for pid, n in rows}

    # ------------------------------------------------------------ sending

    async def _run(self, partner_id: int) -> None:
        backoff = 0.0
        ev = self._wake[partner_id]
        kick = self._kick.setdefault(partner_id, asyncio.Event())
        while not self._closing:
            ev.clear()
            kick.clear()
            try:
                result = await self._round(partner_id, probe=backoff > 0)
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again shortly
                log.exception("OCPI outbox of partner %s", partner_id)
                result = "retry"
            if result == "idle":
                backoff = 0.0
                await ev.wait()
            elif result == "retry":
                # the partner is down or broken: new rows do not cut the wait short
                backoff = min(self.retry_max_s, max(1.0, backoff * 2))
                try:
                    await asyncio.wait_for(kick.wait(), backoff)
                    backoff = 0.0
                except TimeoutError:
                    pass
            else:
                backoff = 0.0

    async def _round(self, partner_id: int, probe: bool = False) -> str:
        """One batch of the partner's rows. ``probe`` (the last round failed): the oldest
        row goes alone first, and if the partner still does not answer (no answer, HTTP
        5xx) the round ends there: a partner that is down gets one request per retry, not
        one per object."""
        async with self.sessionmaker() as s:
            partner = await s.get(OcpiPartner, partner_id)
            rows = await self._due(s, partner_id, self._held.pop(partner_id, set()))
        if not rows:
            return "idle"
        if partner is None or partner.status != "registered" or not partner.token_out:
            await self._finish([(r, "failed", "partner not registered") for r in rows])
            return "more"  # until none is left
        token = self.box.open(partner.token_out)
        done: list[tuple[OcpiOutbox, str, str | None]] = []
        failures: list[tuple[OcpiOutbox, str]] = []
        if probe:
            head, rows = rows[0], rows[1:]
            outcome, error, down = await self._send(partner, token, head)
            if outcome != "retry":
                done.append((head, outcome, error))
            else:
                failures.append((head, error or ""))
                if down:
                    self._held[partner_id] = {head.object_key}
                    await self._finish(done, failures, partner_id)
                    return "retry"
                rows = [r for r in rows if r.object_key != head.object_key]
        by_key: dict[str, list[OcpiOutbox]] = {}
        for r in rows:
            by_key.setdefault(r.object_key, []).append(r)
        gate = asyncio.Semaphore(PARALLEL)

        async def object_rows(items: list[OcpiOutbox]) -> None:
            async with gate:
                for r in items:
                    outcome, error, _ = await self._send(partner, token, r)
                    if outcome == "retry":
                        failures.append((r, error or ""))
                        return  # this object's later rows wait for it
                    done.append((r, outcome, error))

        await asyncio.gather(*(object_rows(v) for v in by_key.values()))
        self._held[partner_id] = {r.object_key for r, _ in failures}
        await self._finish(done, failures, partner_id)
        return "retry" if failures else "more"

    @staticmethod
    async def _due(s: AsyncSession, partner_id: int, held: set[str]) -> list[OcpiOutbox]:
        """The partner's next rows, oldest first: up to ``BATCH``, but of an object in
        ``held`` (its oldest row failed last round) only that row, since its later rows wait
        for it anyway: an object the partner keeps refusing does not fill every batch and
        hold back the objects queued after it."""
        pending = (OcpiOutbox.partner_id == partner_id, ~OcpiOutbox.done)
        q = select(OcpiOutbox).where(*pending)
        if held:
            q = q.where(OcpiOutbox.object_key.not_in(held))
        rows = list((await s.scalars(q.order_by(OcpiOutbox.id).limit(BATCH))).all())
        if held:
            heads = (
                select(func.min(OcpiOutbox.id))
                .where(*pending, OcpiOutbox.object_key.in_(held))
                .group_by(OcpiOutbox.object_key)
            )
            rows += (await s.scalars(select(OcpiOutbox).where(OcpiOutbox.id.in_(heads)))).all()
            rows.sort(key=lambda r: r.id)
        return rows

    async def _send(
        self, partner: OcpiPartner, token: str, row: OcpiOutbox
    ) -> tuple[str, str | None, bool]:
        """(sent, failed or retry; the error; whether the partner seems down: no answer,
        or an HTTP error rather than an OCPI refusal)."""
        base = endpoint(partner, row.module, "RECEIVER")
        if base is None:
            return "failed", f"partner has no {row.module} RECEIVER endpoint", False
        url = base + row.path if row.path.startswith("/") or not row.path else f"{base}/{row.path}"
        try:
            await self.client.call(row.method, url, token, row.body, party_of(partner))
        except PartnerError as exc:
            log.info("OCPI push to partner %s: %s", partner.id, exc)
            answered = exc.http_status is not None and exc.http_status < 300
            return ("retry" if exc.retry else "failed"), str(exc)[:500], not answered
        return "sent", None, False

    async def _finish(
        self,
        done: list[tuple[OcpiOutbox, str, str | None]],
        failures: list[tuple[OcpiOutbox, str]] | None = None,
        partner_id: int | None = None,
    ) -> None:
        now = self.clock.now()
        failures = failures or []

        async def job(s: AsyncSession) -> None:
            for outcome in ("sent", "failed"):
                ids = [r.id for r, o, _ in done if o == outcome]
                for i in range(0, len(ids), 500):
                    await s.execute(
                        update(OcpiOutbox)
                        .where(OcpiOutbox.id.in_(ids[i : i + 500]))
                        .values(done=True, outcome=outcome, done_at=now)
                    )
            for r, o, error in done:
                if o == "failed":
                    await s.execute(
                        update(OcpiOutbox).where(OcpiOutbox.id == r.id).values(last_error=error)
                    )
            outcomes = Counter((r.partner_id, o) for r, o, _ in done)
            for (pid, o), n in outcomes.items():
                column = OcpiPartner.sent_count if o == "sent" else OcpiPartner.failed_count
                await s.execute(
                    update(OcpiPartner)
                    .where(OcpiPartner.id == pid)
                    .values({column: func.coalesce(column, 0) + n})
                )
            for r, error in failures:
                await s.execute(
                    update(OcpiOutbox)
                    .where(OcpiOutbox.id == r.id)
                    .values(
                        attempts=OcpiOutbox.attempts + 1,
                        last_error=error,
                        next_attempt_at=now + timedelta(seconds=1),
                    )
                )
            if partner_id is not None:
                values: dict[str, Any] = {}
                if any(o == "sent" for _, o, _ in done):
                    values["last_success_at"] = now
                if failures or any(o == "failed" for _, o, _ in done):
                    values["last_error_at"] = now
                    values["last_error"] = (failures[0][1] if failures else next(
                        e for _, o, e in done if o == "failed"))  # fmt: skip
                if values:
                    await s.execute(
                        update(OcpiPartner).where(OcpiPartner.id == partner_id).values(**values)
                    )

        if done or failures:
            await self.writer.submit(job)
        for r, outcome, _ in done:
            if partner_id is not None and outcome == "sent":
                self.sent[partner_id] = self.sent.get(partner_id, 0) + 1
            for listener in self.listeners:
                listener(r.partner_id, outcome, r)
