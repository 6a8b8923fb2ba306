"""The station's connection to the CSMS: connect, boot, heartbeat, send, offline queue.

Heartbeats, boot retries and reconnect delays run in real time (they keep the
link alive); the transaction queue retries on the station's clock.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError, OCPPError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from evflex.sim.link import LinkDown, wire_log

log = logging.getLogger("evflex.sim.station")

#: Wait before retrying a BootNotification answered with interval 0.
DEFAULT_BOOT_RETRY_S = 10.0
#: Upper bound of the reconnect back-off in real seconds.
MAX_RECONNECT_DELAY_S = 30.0


@dataclass
class _TxItem:
    payload: Any
    future: asyncio.Future[Any]
    on_result: Callable[[Any], None] | None = None
    attempts: int = 0


class Connection:
    """The link side of :class:`~evflex.sim.station.SimStation` (mixed into it).

    The codec supplies the payloads (``_boot_payload``, ``_heartbeat_payload``,
    ``_status_payload``) and the settings (heartbeat interval, message attempts).
    """

    _txq: deque[_TxItem]
    #: Why each failed connect attempt failed (a refused handshake, a TLS alert...).
    connect_failures: list[BaseException]
    _reconnect_now: bool

    # ------------------------------------------------------------------ sending

    async def send_optional(self, payload: Any) -> Any | None:
        """Like :meth:`send`, for a message the CSMS need not implement.

        A CSMS answering NotImplemented / NotSupported is not counted as an
        error, and the message is not sent to it again (until the next boot).
        """
        action = type(payload).__name__
        link = self._ready_link
        if link is None or link.is_closed or action in self._unsupported:
            return None
        try:
            return await link.request(payload, optional=True)
        except (OcppNotImplemented, NotSupportedError):
            self._unsupported.add(action)
            return None
        except (LinkDown, OCPPError, TimeoutError):
            return None

    async def send(self, payload: Any) -> Any | None:
        """Send a message that is not transaction-related; None if offline or failed."""
        link = self._ready_link
        if link is None or link.is_closed:
            return None
        try:
            return await link.request(payload)
        except (LinkDown, OCPPError, TimeoutError):
            return None

    def enqueue_tx(
        self, payload: Any, on_result: Callable[[Any], None] | None = None
    ) -> asyncio.Future[Any]:
        """Queue a transaction-related message (delivered in order, also after offline periods)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if len(self._txq) >= self.max_queue:
            self._drop_oldest_sample()
        self._txq.append(_TxItem(payload, future, on_result))
        self._tx_empty.clear()
        self._tx_wake.set()
        return future

    async def send_tx(
        self, payload: Any, on_result: Callable[[Any], None] | None = None, *, wait: bool = True
    ) -> Any | None:
        """Queue a transaction message; when online and ``wait``, wait for its answer."""
        future = self.enqueue_tx(payload, on_result)
        link = self._ready_link
        if not wait or link is None or link.is_closed:
            return None
        await asyncio.wait({future, link.closed_future}, return_when=asyncio.FIRST_COMPLETED)
        return future.result() if future.done() else None

    def _is_sample(self, payload: Any) -> bool:
        """True for periodic/clock meter values (dropped first when the queue is full)."""
        return False

    def _drop_oldest_sample(self) -> None:
        # Keep the head (it may be in flight); transaction starts and ends are never dropped.
        for index in range(1, len(self._txq)):
            item = self._txq[index]
            if self._is_sample(item.payload):
                del self._txq[index]
                if not item.future.done():
                    item.future.set_result(None)
                self.error(
                    f"queue full ({self.max_queue}): dropped a {type(item.payload).__name__}"
                )
                return

    async def _tx_pump(self) -> None:
        while True:
            link = self._ready_link
            if not self._txq or link is None or link.is_closed or not self._tx_open:
                if not self._txq:
                    self._tx_empty.set()
                self._tx_wake.clear()
                await self._tx_wake.wait()
                continue
            item = self._txq[0]
            payload = self._prepare_tx(item.payload)
            if payload is None:
                self._txq.popleft()
                if not item.future.done():
                    item.future.set_result(None)
                continue
            try:
                result = await link.request(payload)
            except LinkDown:
                continue
            except (OCPPError, TimeoutError):
                item.attempts += 1
                if item.attempts >= max(1, self._tx_attempts()):
                    self._txq.popleft()
                    self.error(f"{type(payload).__name__} dropped after {item.attempts} attempts")
                    if not item.future.done():
                        item.future.set_result(None)
                else:
                    await self.clock.sleep(self._tx_retry_interval() * item.attempts)
                continue
            if self._txq and self._txq[0] is item:
                self._txq.popleft()
            if item.on_result is not None:
                try:
                    item.on_result(result)
                except Exception as exc:  # a bug in a result handler must not stop the queue
                    log.exception("%s: result handler failed", self.id)
                    self.error(f"internal error: {exc!r}")
            if not item.future.done():
                item.future.set_result(result)

    async def _wait_drained(self, link: Any) -> None:
        if link is None:
            return
        waiter = asyncio.ensure_future(self._tx_empty.wait())
        try:
            await asyncio.wait({waiter, link.closed_future}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    # ------------------------------------------------------------------ connection

    def _headers(self) -> dict[str, str] | None:
        password = self.basic_auth_password()
        if not password:
            return None
        token = base64.b64encode(f"{self.id}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {token}"}

    async def reconnect(self) -> None:
        """Close the link and connect again at once with the current settings (no new boot)."""
        link = self._link_obj
        if link is not None:
            self._reconnect_now = True
            await link.close_socket()

    async def _connect(self) -> ClientConnection:
        self.apply_network_profile()
        profile = self.link_profile()
        ws = await connect(
            self.connect_url(),
            ssl=self.ssl_context(),
            subprotocols=[self.subprotocol],  # type: ignore[list-item]
            additional_headers=self._headers(),
            open_timeout=self.connect_timeout_s,
            ping_interval=self._ping_interval() or None,
            proxy=None,
            max_size=4 * 1024 * 1024,
        )
        if ws.subprotocol != self.subprotocol:
            await ws.close()
            raise ConnectionError(f"CSMS did not accept subprotocol {self.subprotocol}")
        self.connected_with(profile)
        return ws

    async def _connection_loop(self) -> None:
        failures = 0
        while True:
            await self._want_online.wait()
            try:
                if self.connect_limiter is not None:
                    async with self.connect_limiter:
                        ws = await self._connect()
                else:
                    ws = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self.connect_failures.append(exc)
                self.connect_failed()
                self.error(f"connect failed: {exc!r}")
                delay = self.reconnect_delay_s * 2 ** min(failures - 1, 6)
                await asyncio.sleep(min(delay, MAX_RECONNECT_DELAY_S))
                continue
            failures = 0
            link = self.link_class(
                self.id, ws, response_timeout=self.response_timeout_s, logger=wire_log
            )
            link.setup_link(self)
            self._link_obj = link
            reader = asyncio.create_task(self._reader(link), name=f"{self.id}-recv")
            sync = asyncio.create_task(self._on_connected(link), name=f"{self.id}-sync")
            try:
                await reader
            finally:
                self._link_down(link)
                sync.cancel()
                await link.close_socket()
            expected = self._rebooting or self._stopping or not self._want_online.is_set()
            if self._rebooting or self._reconnect_now:
                self._rebooting = self._reconnect_now = False
                continue
            if not expected:
                self.stats.connection_losses += 1
                await asyncio.sleep(self.reconnect_delay_s)

    async def _reader(self, link: Any) -> None:
        try:
            await link.start()
        except ConnectionClosed:
            pass
        except Exception as exc:
            log.exception("%s: receive loop failed", self.id)
            self.error(f"internal error: {exc!r}")
        finally:
            self._link_down(link)

    def _link_down(self, link: Any) -> None:
        link.mark_closed()
        if self._ready_link is link:
            self._ready_link = None
        if self._link_obj is link:
            self._link_obj = None
        self._tx_open = False
        self._can_report = False
        self._synced.clear()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _on_connected(self, link: Any) -> None:
        try:
            if self._needs_boot:
                await self._boot(link)
                self._needs_boot = False
                self._boot_reason = "PowerUp"
                self._unsupported.clear()
                self.boot_count += 1
                self.stats.boots += 1
                self._ready_link = link
                self._station_reported = None
                for evse in self.evses.values():
                    evse.reported_status = None
                self._can_report = True
                await self.refresh_all(force=True)
                self._start_heartbeat(link, immediate=True)
                self._tx_open = True
                self._tx_wake.set()
                self._booted.set()
            else:
                self._ready_link = link
                self._tx_open = True
                self._tx_wake.set()
                await self._wait_drained(link)
                self._can_report = not link.is_closed
                await self.refresh_all()
                self._start_heartbeat(link, immediate=False)
            if not link.is_closed:
                self._synced.set()
        except LinkDown:
            pass
        except Exception as exc:
            log.exception("%s: connection setup failed", self.id)
            self.error(f"internal error: {exc!r}")
            await link.close_socket()

    async def _boot(self, link: Any) -> None:
        while True:
            try:
                result = await link.request(self._boot_payload())
            except (OCPPError, TimeoutError):
                await asyncio.sleep(DEFAULT_BOOT_RETRY_S)
                continue
            if result.status == "Accepted":
                self.csms_time(result.current_time, "BootNotification")
                if result.interval and result.interval > 0:
                    self._set_heartbeat_interval(int(result.interval))
                return
            await asyncio.sleep(
                result.interval if result.interval and result.interval > 0 else DEFAULT_BOOT_RETRY_S
            )

    async def send_boot_notification(self) -> None:
        """Send a BootNotification on the registered link (triggered by the CSMS)."""
        result = await self.send(self._boot_payload())
        if result is not None and result.status == "Accepted":
            self.csms_time(result.current_time, "BootNotification")
        if result is not None and result.status == "Accepted" and result.interval > 0:
            self._set_heartbeat_interval(int(result.interval))
            self._restart_heartbeat()

    def _start_heartbeat(self, link: Any, *, immediate: bool) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
        self._heartbeat_task = asyncio.create_task(self._heartbeat_loop(link, immediate))

    def _restart_heartbeat(self) -> None:
        link = self._ready_link
        if link is not None and not link.is_closed:
            self._start_heartbeat(link, immediate=False)

    async def _heartbeat_loop(self, link: Any, immediate: bool) -> None:
        first = immediate
        while not link.is_closed:
            if not first:
                interval = self._heartbeat_interval()
                if interval <= 0:
                    return
                await asyncio.sleep(interval)
            first = False
            with contextlib.suppress(OCPPError, TimeoutError):
                result = await link.request(self._heartbeat_payload())
                self.csms_time(getattr(result, "current_time", None), "Heartbeat")

    async def send_heartbeat(self) -> None:
        result = await self.send(self._heartbeat_payload())
        if result is not None:
            self.csms_time(getattr(result, "current_time", None), "Heartbeat")

    async def _back_online_after(self, duration_s: float) -> None:
        await self.clock.sleep(duration_s)
        self._want_online.set()
