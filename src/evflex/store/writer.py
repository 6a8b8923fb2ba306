"""Group commit: one writer task runs queued write jobs in shared transactions.

Every OCPP message that changes state becomes a *job* (an async function of a
session). Jobs queue up while a commit is running and are then executed
together in one transaction, so thousands of stations cost a few commits per
second instead of one each. A caller awaits its job's result, which arrives
only after the commit: a station gets its answer only once its data is on
disk. If a batch fails, its jobs are run again one by one, each in its own
transaction, so one bad message never takes the others with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")
Job = Callable[[AsyncSession], Awaitable[Any]]


class GroupCommitWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], max_batch: int = 500):
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future]] = asyncio.Queue()
        self._max_batch = max_batch
        self._task: asyncio.Task | None = None
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

    async def submit(self, job: Callable[[AsyncSession], Awaitable[T]]) -> T:
        if self._task is None:
            raise RuntimeError("writer not started")
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, fut))
        return await fut

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

    async def _execute(self, batch: list[tuple[Job, asyncio.Future]]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        results: list[Any] = []
        try:
            async with self._sessionmaker() as session, session.begin():
                for job, _ in batch:
                    results.append(await job(session))
        except Exception:
            if len(batch) == 1:
                job, fut = batch[0]
                await self._run_alone(job, fut)
                return
            log.warning("batch of %d writes failed; retrying one by one", len(batch))
            for job, fut in batch:
                await self._run_alone(job, fut)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    async def _run_alone(self, job: Job, fut: asyncio.Future) -> None:
        try:
            async with self._sessionmaker() as session, session.begin():
                result = await job(session)
        except Exception as exc:  # reported to the caller, who answers with an error
            log.exception("write failed")
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)
