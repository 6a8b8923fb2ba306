"""Sending alerts out: a JSON POST to the webhook, an e-mail over SMTP.

One queue per channel, delivered in order, ``Notifier.ATTEMPTS`` tries with
back-off; nothing waits for them. Each outcome is handed back to be stored
on the alert (see :mod:`evflex.alerts`).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import httpx

from evflex import __version__
from evflex.clock import Clock
from evflex.config import Settings

log = logging.getLogger(__name__)


class Notifier:
    """Sends alerts to the webhook (JSON POST) and by e-mail (SMTP), one queue per channel:
    in order, ``ATTEMPTS`` tries with back-off, never on the caller's path. Each outcome is
    handed to ``record(alert_id, outcome)``."""

    ATTEMPTS = 3
    BACKOFF_S = 1.0  # doubled after each failed try
    TIMEOUT_S = 5.0
    QUEUE = 1000

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        record: Callable[[int, dict[str, Any]], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.record = record
        self.channels: dict[str, Callable[[str, dict[str, Any]], Awaitable[str | None]]] = {}
        if settings.alert_webhook_url:
            self.channels["webhook"] = self._webhook
        if settings.alert_smtp_host:
            self.channels["email"] = self._email
        self._queues: dict[str, asyncio.Queue[tuple[str, dict[str, Any]]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._http: httpx.AsyncClient | None = None

    def start(self) -> None:
        if "webhook" in self.channels:
            self._http = httpx.AsyncClient(
                timeout=self.TIMEOUT_S, headers={"User-Agent": f"evflex/{__version__}"}
            )
        for name in self.channels:
            self._queues[name] = asyncio.Queue(self.QUEUE)
            self._tasks.append(asyncio.create_task(self._worker(name), name=f"alerts-{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        left = sum(q.qsize() for q in self._queues.values())
        if left:
            log.warning("alerts: %d notifications not sent at shutdown", left)
        if self._http is not None:
            await self._http.aclose()

    def send(self, event: str, alert: dict[str, Any]) -> None:
        """Queue ``event`` for every channel (e-mail: raised alerts only)."""
        for name, q in self._queues.items():
            if name == "email" and event != "alert.raised":
                continue
            if q.full():
                dropped = q.get_nowait()
                log.warning("alerts: %s queue full, dropped %s", name, dropped[0])
            q.put_nowait((event, alert))

    async def _worker(self, name: str) -> None:
        q = self._queues[name]
        while True:
            event, alert = await q.get()
            error: str | None = "not tried"
            attempt = 0
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    error = await self.channels[name](event, alert)
                except Exception as exc:  # connection refused, timeout, SMTP error ...
                    error = f"{type(exc).__name__}: {exc}"[:300]
                if error is None:
                    break
                if attempt < self.ATTEMPTS:
                    await asyncio.sleep(self.BACKOFF_S * 2 ** (attempt - 1))
            outcome = {"channel": name, "event": event, "ok": error is None,
                       "attempts": attempt, "at": self.clock.now().isoformat()}  # fmt: skip
            if error is not None:
                outcome["error"] = error
                log.warning("alert %s: %s of %s failed: %s", alert["id"], name, event, error)
            try:
                await self.record(alert["id"], outcome)
            except Exception:
                log.exception("alerts: storing the %s outcome failed", name)

    async def _webhook(self, event: str, alert: dict[str, Any]) -> str | None:
        assert self._http is not None and self.settings.alert_webhook_url
        body = {"event": event, "sent_at": self.clock.now().isoformat(), "alert": alert}
        r = await self._http.post(self.settings.alert_webhook_url, json=body)
        return None if r.is_success else f"HTTP {r.status_code}"

    async def _email(self, event: str, alert: dict[str, Any]) -> str | None:
        await asyncio.to_thread(self._smtp, mail(self.settings, alert, self.clock.now()))
        return None

    def _smtp(self, msg: EmailMessage) -> None:
        s = self.settings
        assert s.alert_smtp_host
        with smtplib.SMTP(s.alert_smtp_host, s.alert_smtp_port, timeout=self.TIMEOUT_S) as smtp:
            if s.alert_smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.alert_smtp_user:
                password = s.alert_smtp_password
                smtp.login(s.alert_smtp_user, password.get_secret_value() if password else "")
            smtp.send_message(msg)


def mail(settings: Settings, alert: dict[str, Any], now: datetime) -> EmailMessage:
    """The e-mail of a raised alert."""
    msg = EmailMessage()
    msg["Subject"] = f"[evflex] {alert['severity']}: {alert['message']}"[:200]
    msg["From"] = settings.alert_smtp_from or ""
    msg["To"] = ", ".join(settings.alert_smtp_to)
    msg["Date"] = format_datetime(now)
    lines = [alert["message"], ""]
    for name in (
        "rule",
        "severity",
        "station_id",
        "evse_id",
        "site_id",
        "transaction",
        "raised_at",
    ):
        if alert.get(name) is not None:
            lines.append(f"{name}: {alert[name]}")
    lines += [f"{k}: {v}" for k, v in (alert.get("detail") or {}).items() if v is not None]
    lines += ["", f"Alert {alert['id']}: acknowledge it in the dashboard (Alerts)."]
    msg.set_content("\n".join(lines))
    return msg
