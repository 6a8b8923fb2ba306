"""Alerts: /api/v1/alerts, the badge's counts, acknowledgement (see :mod:`evflex.alerts`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from evflex.alerts import AlreadyAcked, alert_json
from evflex.api.deps import Rt
from evflex.config import AlertRule
from evflex.store.alert_tables import Alert
from evflex.web.auth import Principal, authorize

router = APIRouter(prefix="/api/v1", tags=["alerts"])

State = Literal["open", "acked", "cleared", "all"]
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The alert's id")]


class AlertOut(BaseModel):
    id: int
    rule: str = Field(description="station_offline, connector_faulted, need_at_risk, ...")
    severity: str = Field(description="critical or warning")
    state: str = Field(
        description="open (condition present, not acknowledged), acked (acknowledged, "
        "condition present) or cleared (condition gone)"
    )
    station_id: str | None
    evse_id: int | None
    site_id: str | None
    transaction: str | None
    message: str
    detail: dict[str, Any]
    raised_at: str
    cleared_at: str | None = Field(description="When the condition was gone")
    acked_by: str | None = Field(description="The user or API token that acknowledged it")
    acked_at: str | None
    notified: list[dict[str, Any]] = Field(
        description="Each notification's outcome: channel (webhook, email), event, ok, "
        "attempts, at, error"
    )


class AlertSummary(BaseModel):
    open: int = Field(description="Not acknowledged and not cleared (the dashboard's badge)")
    acked: int = Field(description="Acknowledged, condition still present")
    cleared: int = Field(description="Condition gone")
    open_by_severity: dict[str, int]
    open_by_rule: dict[str, int]


def _where(state: State):
    cleared, acked = Alert.cleared_at.is_not(None), Alert.acked_at.is_not(None)
    return {
        "open": [~cleared, ~acked],
        "acked": [~cleared, acked],
        "cleared": [cleared],
        "all": [],
    }[state]


@router.get("/alerts", response_model=list[AlertOut])
async def list_alerts(
    rt: Rt,
    response: Response,
    state: State = "all",
    station_id: Annotated[str | None, Query(max_length=48)] = None,
    site_id: Annotated[str | None, Query(max_length=64)] = None,
    rule: AlertRule | None = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first; ``X-Total-Count`` has how many match."""
    where = _where(state)
    if station_id is not None:
        where.append(Alert.station_id == station_id)
    if site_id is not None:
        where.append(Alert.site_id == site_id)
    if rule is not None:
        where.append(Alert.rule == rule)
    async with rt.sessionmaker() as s:
        total = await s.scalar(select(func.count()).select_from(Alert).where(*where))
        q = select(Alert).where(*where).order_by(Alert.raised_at.desc(), Alert.id.desc())
        rows = (await s.execute(q.offset(offset).limit(limit))).scalars()
        out = [alert_json(a) for a in rows]
    response.headers["X-Total-Count"] = str(total or 0)
    return out


@router.get("/alerts/summary", response_model=AlertSummary)
async def alert_summary(rt: Rt) -> AlertSummary:
    """How many alerts are open, acknowledged and cleared; the open ones by severity and rule."""
    counts: dict[str, int] = {"open": 0, "acked": 0, "cleared": 0}
    by_severity: dict[str, int] = {}
    by_rule: dict[str, int] = {}
    async with rt.sessionmaker() as s:
        for state in counts:
            n = await s.scalar(select(func.count()).select_from(Alert).where(*_where(state)))
            counts[state] = n or 0
        q = (
            select(Alert.severity, Alert.rule, func.count())
            .where(*_where("open"))
            .group_by(Alert.severity, Alert.rule)
        )
        for severity, rule, n in (await s.execute(q)).all():
            by_severity[severity] = by_severity.get(severity, 0) + n
            by_rule[rule] = by_rule.get(rule, 0) + n
    return AlertSummary(**counts, open_by_severity=by_severity, open_by_rule=by_rule)


@router.get("/alerts/{alert_id}", response_model=AlertOut)
async def get_alert(alert_id: AlertId, rt: Rt) -> dict[str, Any]:
    async with rt.sessionmaker() as s:
        row = await s.get(Alert, alert_id)
        if row is None:
            raise HTTPException(404, f"no alert {alert_id}")
        return alert_json(row)


@router.post("/alerts/{alert_id}/ack", response_model=AlertOut)
async def ack_alert(
    alert_id: AlertId, rt: Rt, principal: Annotated[Principal, Depends(authorize)]
) -> dict[str, Any]:
    """Acknowledge an alert (operator): who and when are stored; 409 if it already was."""
    try:
        alert = await rt.alerts.ack(alert_id, principal.name)
    except AlreadyAcked as exc:
        a = exc.alert
        raise HTTPException(
            409, f"alert {alert_id} was acknowledged by {a['acked_by']} at {a['acked_at']}"
        ) from None
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert
