"""Diagnostics and log files stations upload, and the endpoint they upload them to.

* ``POST|PUT /api/v1/uploads/{station_id}/{token}[/{name}]``: a station uploads one
  file with the one-time token of the location a get-diagnostics or get-log command
  built (no other credentials: stations have none on the HTTP port). The body is the
  file itself, or ``multipart/form-data`` whose first file part is taken. Its name:
  the path's ``{name}``, else the part's or ``Content-Disposition`` file name, else
  the one the station gave in its answer, else one made up. At most
  ``upload_max_bytes`` (413 beyond); the token is spent once a file is stored.
* ``GET /api/v1/stations/{id}/uploads``: the files kept for a station (admin), newest
  first; ``GET /api/v1/stations/{id}/uploads/{name}`` downloads one (admin).

Files are kept under ``upload_dir``, one folder per station.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel

from evflex.api.deps import Rt
from evflex.csms import firmware
from evflex.services import Services
from evflex.store import repo

#: The routes for the dashboard and API clients (behind the node's authorization).
router = APIRouter(prefix="/api/v1")
#: The route stations upload to (authenticated by the token in its path).
station_router = APIRouter(prefix=firmware.UPLOAD_PATH)

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,119}$")


class UploadedFile(BaseModel):
    name: str
    size: int
    modified_at: datetime


def public_url(rt: Services, port: int) -> str:
    """The base URL stations reach the HTTP port at: ``public_url``, else scheme, host, port."""
    settings = rt.settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    scheme = "https" if settings.tls_cert else "http"
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def attach(rt: Services, port: Callable[[], int]) -> None:
    """Let upload commands build locations on this node (``port()``: the bound HTTP port)."""
    firmware.state_for(rt.service).base_url = lambda: public_url(rt, port())


def station_dir(rt: Services, station_id: str) -> Path:
    name = quote(station_id, safe="")
    if set(name) <= {"."}:
        name = name.replace(".", "%2E")
    return Path(rt.settings.upload_dir) / name


def safe_name(name: str | None) -> str | None:
    """A file name to keep: the last path part, other characters than A-Z a-z 0-9 . _ -
    as '_', no leading dot, at most 120 characters."""
    if not name:
        return None
    base = _SAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).lstrip(".")[:120]
    return base or None


async def _station_known(rt: Services, station_id: str) -> None:
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, station_id)
    if st is None:
        raise HTTPException(404, f"station '{station_id}' is not registered")


def _free(folder: Path, name: str) -> Path:
    """``name`` in ``folder``, or with a time stamp before it if that is taken."""
    path = folder / name
    if path.exists():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"{stamp}-{name}"[:120]
    return path


async def _read(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise HTTPException(413, f"file over {limit} bytes (upload_max_bytes)")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, f"file over {limit} bytes (upload_max_bytes)")
    return bytes(data)


def _content(content_type: str, body: bytes) -> tuple[bytes, str | None]:
    """The file in a body and the name it comes with (multipart: its first file part)."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body, None
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise HTTPException(400, "multipart/form-data body without parts")
    parts = [p for p in message.iter_parts() if p.get_filename() is not None]
    parts = parts or list(message.iter_parts())
    if not parts:
        raise HTTPException(400, "multipart/form-data body without a file part")
    data = parts[0].get_payload(decode=True) or b""
    return data, parts[0].get_filename()


async def _upload(rt: Services, request: Request, station_id: str, token: str, name: str | None):
    state = firmware.state_for(rt.service)
    grant = state.find(station_id, token)
    if grant is None:
        raise HTTPException(403, "unknown, used or expired upload token for this station")
    body = await _read(request, rt.settings.upload_max_bytes)
    data, part_name = _content(request.headers.get("content-type", ""), body)
    disposition = request.headers.get("content-disposition", "")
    header_name = re.search(r'filename="?([^";]+)"?', disposition)
    async with rt.sessionmaker() as s:
        st = await repo.get_station(s, station_id)
    reported = st.upload_file if st is not None else None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    chosen = (
        safe_name(name)
        or safe_name(part_name)
        or safe_name(header_name.group(1) if header_name else None)
        or safe_name(reported)
        or f"{grant.kind}-{stamp}.log"
    )
    folder = station_dir(rt, station_id)
    folder.mkdir(parents=True, exist_ok=True)
    path = _free(folder, chosen)
    await asyncio.to_thread(path.write_bytes, data)
    state.spend(token)
    await firmware.file_arrived(rt.service, station_id, grant, path.name)
    return {"stored": path.name, "size": len(data)}


@station_router.post("/{station_id}/{token}", status_code=201, tags=["firmware"])
@station_router.put("/{station_id}/{token}", status_code=201, tags=["firmware"])
async def upload(station_id: str, token: str, request: Request, rt: Rt):
    """A station uploads its diagnostics or log file (see the module doc)."""
    return await _upload(rt, request, station_id, token, None)


@station_router.post("/{station_id}/{token}/{name}", status_code=201, tags=["firmware"])
@station_router.put("/{station_id}/{token}/{name}", status_code=201, tags=["firmware"])
async def upload_named(station_id: str, token: str, name: str, request: Request, rt: Rt):
    """The same, with the file name after the location (a station that treats it as a folder)."""
    return await _upload(rt, request, station_id, token, name)


@router.get("/stations/{station_id}/uploads", response_model=list[UploadedFile], tags=["firmware"])
async def list_uploads(station_id: str, rt: Rt):
    """The diagnostics and log files a station uploaded, newest first (admin)."""
    await _station_known(rt, station_id)
    folder = station_dir(rt, station_id)
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    out = []
    for p in files:
        info = p.stat()
        modified = datetime.fromtimestamp(info.st_mtime, UTC)
        out.append(UploadedFile(name=p.name, size=info.st_size, modified_at=modified))
    return sorted(out, key=lambda f: (f.modified_at, f.name), reverse=True)


@router.get("/stations/{station_id}/uploads/{name}", tags=["firmware"])
async def download_upload(station_id: str, name: str, rt: Rt):
    """One uploaded file, as it came (admin)."""
    await _station_known(rt, station_id)
    path = station_dir(rt, station_id) / name
    if not _NAME.match(name) or not path.is_file():
        raise HTTPException(404, f"station '{station_id}' has no uploaded file '{name}'")
    return FileResponse(path, media_type="application/octet-stream", filename=name)
