"""Firmware updates and diagnostics/log uploads: what the CSMS keeps of them.

* :func:`prepare` completes a command's body before it is built: the requestId the
  CSMS assigns and, for an upload without a ``location``, this node's upload
  endpoint with a one-time token (:class:`UploadState`).
* :func:`after_command` keeps the "Requested" state once the station accepted
  (so the station page shows it before the first notification) and completes
  the answer: 1.6 UpdateFirmware and GetDiagnostics have no status (reported as
  ``Accepted``), and the assigned ``requestId`` is added.
* :func:`record_status` files a Firmware/Diagnostics/LogStatusNotification: the
  station's columns, the event log and the live topics ``station.firmware`` and
  ``station.upload``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel
from sqlalchemy import or_, update

from evflex.csms import commands as c
from evflex.csms.attached import attached
from evflex.domain.model import StationEvent
from evflex.store import repo
from evflex.store.tables import Station

#: The state a request is in once the station accepted it, before it reports.
REQUESTED = "Requested"
#: Upload commands and the kind of file they bring.
UPLOAD_KINDS = {"get-diagnostics": "diagnostics", "get-log": "log"}
FIRMWARE_COMMAND = "update-firmware"
#: Where stations upload files on the HTTP port (+ /{station_id}/{token}).
UPLOAD_PATH = "/api/v1/uploads"
#: How long an upload token is good for (s).
TOKEN_TTL_S = 24 * 3600.0
#: What an upload location shows in place of its token.
TOKEN_SHOWN = "{token}"


@dataclass
class Grant:
    """A one-time permission to upload one file for a station's request."""

    station_id: str
    kind: str
    request_id: int | None
    expires: float


@dataclass
class UploadState:
    """The node's upload tokens (in memory: a restart voids those not yet used)."""

    #: The base URL stations reach this node's HTTP port at (set by the HTTP side).
    base_url: Callable[[], str] | None = None
    grants: dict[str, Grant] = field(default_factory=dict)
    #: When each (station, command) was last sent: a notification after it wins.
    sent_at: dict[tuple[str, str], datetime] = field(default_factory=dict)

    @staticmethod
    def _key(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def grant(self, station_id: str, kind: str, request_id: int | None) -> str:
        now = time.monotonic()
        self.grants = {k: g for k, g in self.grants.items() if g.expires > now}
        token = secrets.token_urlsafe(24)
        self.grants[self._key(token)] = Grant(station_id, kind, request_id, now + TOKEN_TTL_S)
        return token

    def find(self, station_id: str, token: str) -> Grant | None:
        """The grant of ``token`` if it is for ``station_id`` and not expired."""
        key = self._key(token)
        for k, g in self.grants.items():
            if hmac.compare_digest(k, key):
                ok = g.station_id == station_id and g.expires > time.monotonic()
                return g if ok else None
        return None

    def spend(self, token: str) -> None:
        self.grants.pop(self._key(token), None)

    def location(self, station_id: str, token: str) -> str:
        if self.base_url is None:
            raise c.CommandNotAvailable(
                "no location given, and this node serves no upload endpoint"
            )
        return f"{self.base_url().rstrip('/')}{UPLOAD_PATH}/{quote(station_id, safe='')}/{token}"


def state_for(service: Any) -> UploadState:
    """The upload state of a CSMS (a CsmsService, or anything with ``.service``)."""
    return attached(service, UploadState)


def prepare(service: Any, station_id: str, name: str, body: BaseModel) -> BaseModel:
    """The body to build ``name`` from: requestId and (uploads) location filled in."""
    if name != FIRMWARE_COMMAND and name not in UPLOAD_KINDS:
        return body
    state = state_for(service)
    state.sent_at[(station_id, name)] = service.clock.now()
    changes: dict[str, Any] = {}
    rid = body.request_id  # type: ignore[attr-defined]
    if rid is None:
        rid = changes["request_id"] = random.randint(1, 2**31 - 1)
    if name in UPLOAD_KINDS and body.location is None:  # type: ignore[attr-defined]
        token = state.grant(station_id, UPLOAD_KINDS[name], rid)
        try:
            changes["location"] = state.location(station_id, token)
        except c.CommandNotAvailable:
            state.spend(token)
            raise
    return body.model_copy(update=changes) if changes else body


def shown_location(location: str | None) -> str | None:
    """A location as stored and shown: the token of this node's upload URL masked."""
    if location is None or f"{UPLOAD_PATH}/" not in location:
        return location
    return location.rsplit("/", 1)[0] + "/" + TOKEN_SHOWN


async def after_command(
    service: Any, station_id: str, name: str, body: Any, payload: dict, result: dict
) -> None:
    """Complete the answer of a firmware/upload command; keep "Requested" if accepted."""
    if name != FIRMWARE_COMMAND and name not in UPLOAD_KINDS:
        return
    if "requestId" in payload:
        result["requestId"] = payload["requestId"]
    else:  # 1.6 UpdateFirmware and GetDiagnostics: no status, no requestId
        result.setdefault("status", "Accepted")
    accepted = result.get("status") in ("Accepted", "AcceptedCanceled")
    state = state_for(service)
    if not accepted:
        if name in UPLOAD_KINDS:  # a token of ours is not used now
            state.spend(body.location.rsplit("/", 1)[-1])
        return
    since = state.sent_at.pop((station_id, name), None)
    rid = payload.get("requestId")
    if name == FIRMWARE_COMMAND:
        values = {
            "firmware_status": REQUESTED,
            "firmware_status_at": service.clock.now(),
            "firmware_request_id": rid,
            "firmware_location": body.location,
        }
        column = Station.firmware_status_at
    else:
        values = {
            "upload_kind": UPLOAD_KINDS[name],
            "upload_status": REQUESTED,
            "upload_status_at": service.clock.now(),
            "upload_request_id": rid,
            "upload_location": shown_location(body.location),
            "upload_file": result.get("fileName") or result.get("filename"),
        }
        column = Station.upload_status_at

    async def job(s) -> None:
        q = update(Station).where(Station.id == station_id)
        if since is not None:  # a status the station reported since sending stays
            q = q.where(or_(column.is_(None), column < since))
        await s.execute(q.values(**values))

    await service.writer.submit(job)
    topic, kind = _topic(name)
    service.bus.publish(topic, station_id, status=REQUESTED, request_id=rid, **kind)


def _topic(name: str) -> tuple[str, dict]:
    if name == FIRMWARE_COMMAND:
        return "station.firmware", {}
    return "station.upload", {"kind": UPLOAD_KINDS[name]}


async def record_status(
    service: Any,
    station_id: str,
    event_kind: str,
    status: str,
    request_id: int | None = None,
) -> dict:
    """A status notification (``event_kind``: firmware, diagnostics or log): the station's
    columns, the event log and the live topic; the (empty) answer."""
    now = service.clock.now()
    if event_kind == "firmware":
        values: dict[str, Any] = {"firmware_status": status, "firmware_status_at": now}
        if request_id is not None:
            values["firmware_request_id"] = request_id
        topic, kind = _topic(FIRMWARE_COMMAND)
    else:
        values = {"upload_kind": event_kind, "upload_status": status, "upload_status_at": now}
        if request_id is not None:
            values["upload_request_id"] = request_id
        topic, kind = "station.upload", {"kind": event_kind}
    event = StationEvent(station_id, event_kind, now, status, {"requestId": request_id})

    async def job(s) -> None:
        await s.execute(update(Station).where(Station.id == station_id).values(**values))
        await repo.EVENTS.execute(s, [repo.event_row(event)])

    await service.writer.submit(job)
    service.bus.publish(topic, station_id, status=status, request_id=request_id, **kind)
    return {}


async def file_arrived(service: Any, station_id: str, grant: Grant, name: str) -> None:
    """An uploaded file was stored: the station's ``upload_file`` names it."""

    async def job(s) -> None:
        await s.execute(update(Station).where(Station.id == station_id).values(upload_file=name))

    await service.writer.submit(job)
    service.bus.publish(
        "station.upload", station_id, kind=grant.kind, request_id=grant.request_id, file=name
    )
