"""Group commit: one writer task runs queued write jobs in shared transactions.

Every OCPP message that changes state becomes a *job* (an async function of a
session). Jobs queue up while a commit is running and are then executed
together in one transaction, so thousands of stations cost a few commits per
second instead of one each. A caller awaits its job's result, which arrives
only after the commit: a station gets its answer only once its data is on
disk. If a batch fails, its jobs are run again one by one, each in its own
transaction, so one bad message never takes the others with it.

The most frequent writes (heartbeats, status reports, meter samples, event
log lines) are not jobs but *rows* of a :class:`Bulk` statement: all rows a
batch holds for one statement go to the database in one executemany, after
the batch's jobs (so a row may refer to what a job of the same batch
created). Rows with the same key are merged first (the newest wins).

A job that refuses (:func:`refusal`: an HTTP 4xx, or a rule of evflex's own)
is answered with its refusal and logged as such, not as a failed write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[AsyncSession], Awaitable[Any]]
#: Loads, in one query, what a batch's jobs will look up by these keys (into the session).
Prefetch = Callable[[AsyncSession, list[Hashable]], Awaitable[None]]


def refusal(exc: BaseException) -> bool:
    """Whether a job's exception is an expected refusal rather than a failure: one with
    an HTTP status 4xx (``HTTPException``), or a ``ValueError`` evflex defines (a rule
    of its own, such as :class:`~evflex.store.repo.TopologyError`)."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return 400 <= status < 500
    return isinstance(exc, ValueError) and type(exc).__module__.startswith("evflex.")


@dataclass(frozen=True, eq=False)
class Bulk:
    """One statement that many callers' rows share, executed once per batch.

    ``statement(dialect_name)`` builds it (once per dialect). Rows with equal
    ``key`` are merged before the write: ``newer(old, new)`` says whether the
    new row replaces the old one (default: the later one does).
    """

    name: str
    statement: Callable[[str], Any]
    key: Callable[[dict], Hashable] | None = None
    newer: Callable[[dict, dict], bool] | None = None
    _built: dict[str, Any] = field(default_factory=dict, repr=False)

    def statement_for(self, dialect: str) -> Any:
        stmt = self._built.get(dialect)
        if stmt is None:
            stmt = self._built[dialect] = self.statement(dialect)
        return stmt

    async def execute(self, session: AsyncSession, rows: list[dict]) -> None:
        await session.execute(self.statement_for(session.bind.dialect.name), self.merge(rows))

    def merge(self, rows: list[dict]) -> list[dict]:
        if self.key is None:
            return rows
        kept: dict[Hashable, dict] = {}
        for row in rows:
            k = self.key(row)
            old = kept.get(k)
            if old is None or self.newer is None or self.newer(old, row):
                kept[k] = row
        return list(kept.values())


_BATCH_ROWS = "evflex.bulk_rows"


async def add_rows(session: AsyncSession, bulk: Bulk, rows: list[dict]) -> None:
    """Rows of ``bulk`` from inside a job: written with the batch's other rows of that
    statement (in one executemany, after the jobs); at once outside the writer."""
    if not rows:
        return
    queued = session.info.get(_BATCH_ROWS)
    if queued is not None:
        queued.setdefault(bulk, []).extend(rows)
    else:
        await bulk.execute(session, rows)


def queued_rows(session: AsyncSession, bulk: Bulk) -> list[dict]:
    """Rows of ``bulk`` that jobs of the running batch queued (not yet in the database)."""
    queued = session.info.get(_BATCH_ROWS)
    return list(queued.get(bulk, ())) if queued is not None else []


class _Rows:
    """Rows of one or more bulk statements that one caller waits for together."""

    __slots__ = ("parts",)

    def __init__(self, parts: dict[Bulk, list[dict]]) -> None:
        self.parts = parts


class GroupCommitWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], max_batch: int = 500):
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[tuple[Job | _Rows, asyncio.Future]] = asyncio.Queue()
        self._max_batch = max_batch
        self._task: asyncio.Task | None = None
        self._prefetch: dict[asyncio.Future, tuple[Prefetch, Hashable]] = {}
        self.batches = 0
        self.jobs = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="evflex-group-commit")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def submit(
        self,
        job: Callable[[AsyncSession], Awaitable[T]],
        prefetch: tuple[Prefetch, Hashable] | None = None,
    ) -> T:
        """Run ``job`` in the next batch; its result once committed. ``prefetch``:
        (loader, key) - the batch loads all its jobs' keys with one call per loader
        before the jobs run, so that they need not query one by one."""
        if self._task is None:
            raise RuntimeError("writer not started")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        if prefetch is not None:
            self._prefetch[fut] = prefetch
        self._queue.put_nowait((job, fut))
        return await fut

    async def write(self, bulk: Bulk, rows: list[dict]) -> None:
        """Queue ``rows`` of ``bulk``; returns once they are committed."""
        await self.write_all({bulk: rows})

    async def write_all(self, parts: dict[Bulk, list[dict]]) -> None:
        """Queue rows of several statements, committed together; returns once they are."""
        if self._task is None:
            raise RuntimeError("writer not started")
        parts = {b: rows for b, rows in parts.items() if rows}
        if not parts:
            return
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((_Rows(parts), fut))
        await fut

    def submit_nowait(self, job: Job) -> asyncio.Future:
        """Queue a write without waiting for it (bookkeeping whose failure is only logged)."""
        if self._task is None:
            raise RuntimeError("writer not started")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.put_nowait((job, fut))
        return fut

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                await self._execute(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _execute(self, batch: list[tuple[Job | _Rows, asyncio.Future]]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        results: list[Any] = []
        bulk: dict[Bulk, list[dict]] = {}
        prefetch: dict[Prefetch, list[Hashable]] = {}
        for _, fut in batch:
            wanted = self._prefetch.pop(fut, None)
            if wanted is not None:
                prefetch.setdefault(wanted[0], []).append(wanted[1])
        try:
            async with self._sessionmaker() as session, session.begin():
                session.info[_BATCH_ROWS] = bulk
                for load, keys in prefetch.items():
                    await load(session, keys)
                for job, _ in batch:
                    if isinstance(job, _Rows):
                        for b, rows in job.parts.items():
                            bulk.setdefault(b, []).extend(rows)
                        results.append(None)
                    else:
                        results.append(await job(session))
                await self._write_all(session, bulk)
        except Exception as exc:
            if len(batch) == 1:
                job, fut = batch[0]
                await self._run_alone(job, fut)
                return
            log.log(
                logging.INFO if refusal(exc) else logging.WARNING,
                "batch of %d writes failed (%r); retrying one by one",
                len(batch),
                exc,
            )
            for job, fut in batch:
                await self._run_alone(job, fut)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    @staticmethod
    async def _write_all(session: AsyncSession, bulk: dict[Bulk, list[dict]]) -> None:
        for b, rows in bulk.items():
            await b.execute(session, rows)

    async def _run_alone(self, job: Job | _Rows, fut: asyncio.Future) -> None:
        bulk: dict[Bulk, list[dict]] = {}
        try:
            async with self._sessionmaker() as session, session.begin():
                session.info[_BATCH_ROWS] = bulk
                if isinstance(job, _Rows):
                    bulk.update(job.parts)
                    result = None
                else:
                    result = await job(session)
                await self._write_all(session, bulk)
        except Exception as exc:  # reported to the caller, who answers with an error
            if refusal(exc):
                log.info("write refused: %r", exc)
            else:
                log.exception("write failed")
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)
