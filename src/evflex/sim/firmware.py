"""Firmware updates, diagnostics and log uploads of a simulated station, for every version.

UpdateFirmware: the station really downloads the image from its ``location``
(http or https, with ``retries``), reporting Downloading, Downloaded (or
DownloadFailed), SignatureVerified when a signature came, InstallScheduled when
``installDateTime`` is ahead, then Installing once no transaction runs,
InstallRebooting (2.x and 1.6 signed) and, after it rebooted and booted again
with the new firmware version, Installed. The new version is the image's first
line if it reads like one (at most 50 printable characters), else the location's
file name without its extension.

GetDiagnostics (1.6) and GetLog (2.x, 1.6 security extension): the station
answers with a file name, writes a small text log and really uploads it to the
location: an HTTP(S) ``POST`` of ``multipart/form-data`` with the file in the part
``file``. It reports Uploading, then Uploaded or UploadFailed (1.6 diagnostics) /
UploadFailure (logs). Other schemes (ftp...) fail the upload.

TriggerMessage asks for the current status of a running update or upload (Idle
when none runs, as OCPP has it). Steps are ``firmware_step_s`` real seconds apart;
scheduled times and retry intervals are clock-seconds.

:class:`FirmwareUpdates` is mixed into the station; :class:`FirmwareLink16` and
:class:`FirmwareLink201` map the requests of each version to it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
from ocpp.routing import on
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import call as call201

from evflex.clock import parse_datetime

#: The statuses a plain 1.6 UpdateFirmware can report (the others are skipped).
PLAIN_16 = frozenset(
    {"Downloaded", "DownloadFailed", "Downloading", "Idle", "InstallationFailed", "Installing",
     "Installed"}
)  # fmt: skip
#: Statuses after which no update or upload runs any more.
DONE = frozenset({"Installed", "DownloadFailed", "InstallationFailed", "Uploaded", "UploadFailed",
                  "UploadFailure", "InvalidSignature"})  # fmt: skip
#: Longest wait for the station to be back after the reboot of an install (s).
REBOOT_WAIT_S = 60.0
HTTP_TIMEOUT_S = 10.0


@dataclass
class Job:
    """A running update or upload: what it reports with, and how far it is."""

    kind: str  # firmware, diagnostics or log
    message: Callable[[str], Any]  # status -> the notification to send
    location: str
    retries: int = 0
    retry_interval_s: float = 0.0
    retrieve_at: datetime | None = None
    install_at: datetime | None = None
    plain_16: bool = False  # a 1.6 UpdateFirmware: its few statuses only
    signature: bool = False
    file: str = ""
    status: str = "Idle"
    task: asyncio.Task[Any] | None = field(default=None, repr=False)

    @property
    def busy(self) -> bool:
        return self.status not in DONE and self.status != "Idle"


def new_version(image: bytes, location: str) -> str:
    """The version an image brings: its first line if it reads like one, else its file
    name without the extension."""
    first = image.split(b"\n", 1)[0].strip()
    try:
        text = first.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if text and len(text) <= 50 and text.isprintable():
        return text
    return PurePosixPath(urlsplit(location).path).stem[:50] or "unknown"


class FirmwareUpdates:
    """The station's side: runs one update and one upload at a time (mixed into it)."""

    #: Real seconds between the steps of an update or an upload.
    firmware_step_s: float = 1.0

    id: str
    spec: Any
    clock: Any
    evses: dict[int, Any]
    boot_count: int
    received: list[str]
    stats: Any
    _boot_reason: str
    send: Callable[[Any], Any]
    spawn: Callable[[Any], asyncio.Task[Any]]
    error: Callable[[str], None]
    reboot: Callable[[], Any]
    now: Callable[[], datetime]

    def _jobs(self) -> dict[str, Job]:
        """The last update (``firmware``) and the last upload (``upload``)."""
        return self.__dict__.setdefault("_transfer_jobs", {})

    def transfer_job(self, kind: str) -> Job | None:
        """The last update (``firmware``) or upload (``diagnostics``, ``log``) of that kind."""
        job = self._jobs().get(_slot(kind))
        return job if job is not None and job.kind == kind else None

    def start_transfer(self, job: Job) -> bool:
        """Take ``job`` (run it with :meth:`run_transfer` after the answer); True if it
        replaces one still running (2.x answers AcceptedCanceled)."""
        jobs = self._jobs()
        old = jobs.get(_slot(job.kind))
        replaced = old is not None and old.busy
        if old is not None and old.task is not None:
            old.task.cancel()
        jobs[_slot(job.kind)] = job
        return replaced

    async def run_transfer(self, job: Job) -> None:
        job.task = asyncio.current_task()
        if job.kind == "firmware":
            await self._run_update(job)
        else:
            await self._run_upload(job)

    async def report_transfer(self, kind: str, idle: Any) -> None:
        """TriggerMessage: the running job's status, else ``idle``."""
        job = self.transfer_job(kind)
        await self.send(job.message(job.status) if job is not None and job.busy else idle)

    async def _transfer_status(self, job: Job, status: str) -> None:
        if job.plain_16 and status not in PLAIN_16:
            return
        job.status = status
        await self.send(job.message(status))

    async def _transfer_step(self) -> None:
        await asyncio.sleep(self.firmware_step_s)

    async def _transfer_wait(self, job: Job, when: datetime | None, status: str) -> None:
        if when is not None and when > self.now():
            await self._transfer_status(job, status)
            await self.clock.sleep((when - self.now()).total_seconds())

    async def _transfer_attempts(self, job: Job, status: str, attempt: Callable[[], Any]) -> Any:
        """``attempt()`` up to 1 + retries times, reporting ``status`` before each."""
        for n in range(job.retries + 1):
            if n:
                await self.clock.sleep(job.retry_interval_s)
            await self._transfer_status(job, status)
            await self._transfer_step()
            try:
                return await attempt()
            except (httpx.HTTPError, ValueError) as exc:
                self.error(f"{job.kind} {status.lower()} from/to {job.location}: {exc!r}")
        return None

    async def _run_update(self, job: Job) -> None:
        await self._transfer_wait(job, job.retrieve_at, "DownloadScheduled")
        image = await self._transfer_attempts(job, "Downloading", lambda: _fetch(job.location))
        if image is None:
            await self._transfer_status(job, "DownloadFailed")
            return
        await self._transfer_status(job, "Downloaded")
        await self._transfer_step()
        if job.signature:
            await self._transfer_status(job, "SignatureVerified")
        await self._transfer_wait(job, job.install_at, "InstallScheduled")
        while any(e.tx is not None for e in self.evses.values()):
            await self._transfer_step()  # installs once no transaction runs
        await self._transfer_status(job, "Installing")
        await self._transfer_step()
        self.spec.firmware = new_version(image, job.location)
        await self._transfer_status(job, "InstallRebooting")
        boots = self.boot_count
        await self.reboot()
        self._boot_reason = "FirmwareUpdate"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REBOOT_WAIT_S):
                while self.boot_count == boots:  # noqa: ASYNC110 (no event for a new boot)
                    await asyncio.sleep(0.05)
        await self._transfer_status(job, "Installed")

    def log_text(self, kind: str) -> bytes:
        """The diagnostics or log file: who the station is and what it went through."""
        spec, stats = self.spec, self.stats
        lines = [
            f"station {self.id} ({spec.vendor} {spec.model}, firmware {spec.firmware})",
            f"{kind} written {self.now().isoformat()}",
            f"boots {stats.boots}, messages sent {stats.messages_sent}, received "
            f"{stats.messages_received}, errors {stats.errors}",
            "requests received: " + ", ".join(self.received[-50:]),
            *(f"error: {e}" for e in stats.error_samples),
        ]
        return ("\n".join(lines) + "\n").encode()

    def upload_name(self, kind: str) -> str:
        return f"{self.id}-{kind}-{self.now().strftime('%Y%m%dT%H%M%SZ')}.log"

    async def _run_upload(self, job: Job) -> None:
        content = self.log_text(job.kind)

        async def put() -> bool:
            await _send_file(job.location, job.file, content)
            return True

        if await self._transfer_attempts(job, "Uploading", put):
            await self._transfer_status(job, "Uploaded")
        else:
            await self._transfer_status(
                job, "UploadFailed" if job.kind == "diagnostics" else "UploadFailure"
            )


def _slot(kind: str) -> str:
    return "firmware" if kind == "firmware" else "upload"


def _http(location: str) -> str:
    if urlsplit(location).scheme.lower() not in ("http", "https"):
        raise ValueError(f"the simulator transfers files over http(s) only, not {location!r}")
    return location


async def _fetch(location: str) -> bytes:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=False) as client:
        r = await client.get(_http(location))
        r.raise_for_status()
        return r.content


async def _send_file(location: str, name: str, content: bytes) -> None:
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, verify=False) as client:
        files = {"file": (name, content, "text/plain")}
        r = await client.post(_http(location), files=files)
        r.raise_for_status()


def _when(text: str | None) -> datetime | None:
    return parse_datetime(text) if text else None


# ---------------------------------------------------------------- the versions' requests


class _Requests:
    """What the links of all versions share (mixed into each link)."""

    station: Any
    later: Callable[[Callable[[], Any]], None]

    def _start(self, job: Job) -> bool:
        replaced = self.station.start_transfer(job)
        self.later(lambda: self.station.run_transfer(job))
        return replaced

    def _upload_job(self, kind: str, message: Callable[[str], Any], location: str, **kw) -> Job:
        st = self.station
        return Job(kind, message, location, file=st.upload_name(kind), **_retries(kw))

    def _signed_update(self, notification: Any, request_id: int, firmware: dict, kw: dict) -> str:
        """UpdateFirmware (2.x) or SignedUpdateFirmware (1.6): the status to answer."""

        def message(s: str) -> Any:
            return notification(status=s, request_id=request_id)

        job = Job(
            "firmware",
            message,
            firmware["location"],
            retrieve_at=_when(firmware.get("retrieve_date_time")),
            install_at=_when(firmware.get("install_date_time")),
            signature=firmware.get("signature") is not None,
            **_retries(kw),
        )
        return "AcceptedCanceled" if self._start(job) else "Accepted"

    def _get_log(self, notification: Any, request_id: int, log: dict, kw: dict) -> tuple[str, str]:
        """GetLog (2.x, 1.6 security extension): the status and the file name to answer."""

        def message(s: str) -> Any:
            return notification(status=s, request_id=request_id)

        job = self._upload_job("log", message, log["remote_location"], **kw)
        return ("AcceptedCanceled" if self._start(job) else "Accepted"), job.file


def _retries(kw: dict[str, Any]) -> dict[str, Any]:
    return {"retries": kw.get("retries") or 0, "retry_interval_s": kw.get("retry_interval") or 0}


class FirmwareLink16(_Requests):
    """1.6 UpdateFirmware, GetDiagnostics and (security extension) SignedUpdateFirmware, GetLog."""

    @on("UpdateFirmware")
    def on_update_firmware(self, location: str, retrieve_date: str, **kw: Any) -> Any:
        message = lambda s: call16.FirmwareStatusNotification(status=s)  # noqa: E731
        when = _when(retrieve_date)
        self._start(
            Job("firmware", message, location, retrieve_at=when, plain_16=True, **_retries(kw))
        )
        return result16.UpdateFirmware()

    @on("SignedUpdateFirmware")
    def on_signed_update_firmware(self, request_id: int, firmware: dict, **kw: Any) -> Any:
        notification = call16.SignedFirmwareStatusNotification
        status = self._signed_update(notification, request_id, firmware, kw)
        return result16.SignedUpdateFirmware(status=status)

    @on("GetDiagnostics")
    def on_get_diagnostics(self, location: str, **kw: Any) -> Any:
        message = lambda s: call16.DiagnosticsStatusNotification(status=s)  # noqa: E731
        job = self._upload_job("diagnostics", message, location, **kw)
        self._start(job)
        return result16.GetDiagnostics(file_name=job.file)

    @on("GetLog")
    def on_get_log(self, log: dict, log_type: str, request_id: int, **kw: Any) -> Any:
        status, name = self._get_log(call16.LogStatusNotification, request_id, log, kw)
        return result16.GetLog(status=status, filename=name)


class FirmwareLink201(_Requests):
    """2.0.1 and 2.1 UpdateFirmware and GetLog."""

    results: Any

    @on("UpdateFirmware")
    def on_update_firmware(self, request_id: int, firmware: dict, **kw: Any) -> Any:
        notification = call201.FirmwareStatusNotification
        status = self._signed_update(notification, request_id, firmware, kw)
        return self.results.UpdateFirmware(status=status)

    @on("GetLog")
    def on_get_log(self, log: dict, log_type: str, request_id: int, **kw: Any) -> Any:
        status, name = self._get_log(call201.LogStatusNotification, request_id, log, kw)
        return self.results.GetLog(status=status, filename=name)
