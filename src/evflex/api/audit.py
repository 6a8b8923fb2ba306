"""The audit trail: /api/v1/audit (read and export only; any role may read it).

No route writes, edits or deletes a row: PUT, PATCH and DELETE answer 405.
Rows come from the API's middleware (:mod:`evflex.web.trail`) and the command
line; :mod:`evflex.security.trail` keeps them in a hash chain that
``/audit/verify`` walks.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime, BaseModel

from evflex.api.deps import Rt
from evflex.security import trail

router = APIRouter(prefix="/api/v1", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    actor_kind: str
    role: str | None
    source: str | None
    method: str | None
    route: str | None
    path: str | None
    target: str | None
    action: str
    summary: Any
    status: int | None
    outcome: trail.Outcome
    answer: str | None
    reason: str | None
    duration_ms: float | None
    prev_hash: str
    hash: str


class VerifyOut(BaseModel):
    ok: bool
    rows: int
    first_bad_id: int | None
    reason: str | None


def _where(
    actor: Annotated[str | None, Query(max_length=128, description="Actor contains")] = None,
    action: Annotated[str | None, Query(max_length=64, description="Action contains")] = None,
    target: Annotated[str | None, Query(max_length=200, description="Target contains")] = None,
    outcome: trail.Outcome | None = None,
    start: Annotated[AwareDatetime | None, Query(alias="from", description="At or after")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to", description="Before")] = None,
) -> list[Any]:
    return trail.filters(actor, action, target, outcome, start, end)


Where = Annotated[list[Any], Depends(_where)]


@router.get("/audit", response_model=list[AuditOut])
async def audit(
    rt: Rt,
    response: Response,
    where: Where,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(100, ge=1, le=1000),
):
    """Audit rows, newest first; the number of rows the filters match in ``X-Total-Count``."""
    async with rt.sessionmaker() as s:
        response.headers["X-Total-Count"] = str(await trail.count(s, where))
        return await trail.page(s, where, offset, limit)


@router.get("/audit.csv", response_class=StreamingResponse)
async def audit_csv(rt: Rt, where: Where):
    """The matching rows as CSV (oldest first). The export itself is audited."""
    return StreamingResponse(
        trail.csv_lines(rt.sessionmaker, where),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="evflex-audit.csv"'},
    )


@router.get("/audit/verify", response_model=VerifyOut)
async def audit_verify(rt: Rt):
    """Walk the hash chain: ``ok`` false with the first row that was changed, or after a
    deleted one."""
    async with rt.sessionmaker() as s:
        return await trail.verify(s)
