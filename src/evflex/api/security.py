"""TLS administration: ``POST /api/v1/admin/tls/reload`` reads the certificate and
key files again (admins only); new handshakes on both ports use them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from evflex.api.deps import Rt
from evflex.security.tls import TlsError

router = APIRouter(prefix="/api/v1/admin/tls", tags=["security"])


class TlsReloadOut(BaseModel):
    reloaded: bool = True
    files: list[str] = Field(description="The certificate, key and client CA files read")
    reloads: int = Field(description="How often the files were read since the start")


@router.post("/reload", response_model=TlsReloadOut)
async def reload_tls(rt: Rt) -> TlsReloadOut:
    """Read the TLS files now (they are also read when their modification time changes)."""
    if rt.tls is None:
        raise HTTPException(409, "TLS is not configured (tls_cert / tls_key / tls_client_ca)")
    try:
        rt.tls.reload()
    except TlsError as exc:
        raise HTTPException(422, f"{exc}; the previous certificates stay in use") from None
    return TlsReloadOut(files=[str(p) for p in rt.tls.files], reloads=rt.tls.reloads)
