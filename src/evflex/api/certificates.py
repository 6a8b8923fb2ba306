"""REST API ``/api/v1``: a station's certificates and its security profile.

* ``GET /stations/{id}/certificates``: what evflex signed for the station
  (Issued, Accepted, Rejected after its retries) and the CA certificates it
  installed there (Installed, Deleted), with expiry, attempts and reason;
* ``POST /stations/{id}/security-profile``: move a connected station to
  security profile 2 or 3 over OCPP. 1.6 (security extension):
  ChangeConfiguration ``SecurityProfile``. 2.0.1/2.1 (use case A05): a new
  connection profile with the ``wss://`` URL in a free configuration slot
  (SetNetworkProfile), that slot first in
  ``OCPPCommCtrlr.NetworkConfigurationPriority`` (SetVariables), then a Reset
  OnIdle so that the station reconnects with it. The stored profile is raised
  only when the station accepts; lowering it needs ``force`` and is recorded as
  a ``ProfileDowngrade`` security event. Profile 3 needs a station certificate
  that the station accepted and that is still valid.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update

from evflex.api.deps import Rt
from evflex.api.routes import station_command
from evflex.csms import commands
from evflex.csms.certificates import STATION_CERTIFICATE, profile_of
from evflex.services import Services
from evflex.store.tables import Station

router = APIRouter(prefix="/api/v1", tags=["security"])

ACCEPTED = ("Accepted", "RebootRequired")


class CertificateOut(BaseModel):
    id: int
    kind: str
    status: str
    common_name: str | None
    organization: str | None
    issuer: str | None
    serial_hex: str | None
    sha256: str | None
    not_before: datetime | None
    not_after: datetime | None
    attempts: int
    reason: str | None
    created_at: datetime
    updated_at: datetime | None


class SecurityProfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: int = Field(ge=1, le=3, description="the security profile to move the station to")
    force: bool = Field(False, description="allow a lower profile than the stored one")
    csms_url: str | None = Field(
        None, max_length=512, description="2.x: the URL of the new connection profile (wss://...)"
    )
    slot: int | None = Field(
        None, ge=0, description="2.x: its configuration slot; omitted: one above those in use"
    )
    reset: bool = Field(True, description="2.x: send Reset OnIdle so that the station reconnects")


class Step(BaseModel):
    action: str
    response: dict


class SecurityProfileOut(BaseModel):
    station_id: str
    ocpp_version: str
    accepted: bool
    previous_profile: int
    security_profile: int = Field(description="the stored profile after the change")
    steps: list[Step]


async def _station(rt: Services, station_id: str) -> Any:
    row = await rt.certificates.station(station_id)
    if row is None:
        raise HTTPException(404, f"station '{station_id}' is not registered")
    return row


@router.get("/stations/{station_id}/certificates", response_model=list[CertificateOut])
async def list_certificates(station_id: str, rt: Rt):
    """The certificates evflex issued for the station or installed at it, oldest first."""
    await _station(rt, station_id)
    rows = await rt.certificates.certificates(station_id)
    return [CertificateOut.model_validate(r, from_attributes=True) for r in rows]


@router.post("/stations/{station_id}/security-profile", response_model=SecurityProfileOut)
async def change_security_profile(
    station_id: str, body: SecurityProfileBody, request: Request, rt: Rt
):
    """Move a connected station to another security profile over OCPP (see the module)."""
    row = await _station(rt, station_id)
    current = profile_of(row)
    conn = rt.ocpp.connections.get(station_id)
    if conn is None:
        raise HTTPException(409, f"station '{station_id}' is not connected")
    if body.profile < current and not body.force:
        raise HTTPException(
            409,
            f"station '{station_id}' is on security profile {current}; lowering it to "
            f"{body.profile} needs force: true",
        )
    if body.profile == 3 and not await _has_valid_certificate(rt, station_id):
        raise HTTPException(
            409,
            f"station '{station_id}' has no valid certificate it accepted from us: profile 3 "
            "needs one (it sends SignCertificate on profile 2)",
        )
    if conn.version == commands.V16:
        steps = await _migrate_16(rt, station_id, body.profile)
    else:
        if not body.csms_url:
            raise HTTPException(400, "csms_url is needed to move an OCPP 2.x station")
        if body.profile >= 2 and not body.csms_url.startswith("wss://"):
            raise HTTPException(400, f"profile {body.profile} runs over TLS: csms_url is wss://")
        steps = await _migrate_2x(rt, station_id, body, conn.version)
    accepted = _accepted(steps)
    stored = current
    if accepted:
        stored = body.profile
        await _store_profile(rt, station_id, body.profile, row.security_profile_reached)
        if body.profile < current:
            await rt.certificates.security_event(
                station_id,
                "ProfileDowngrade",
                f"security profile lowered from {current} to {body.profile} through the API "
                "(force)",
                source=request.client.host if request.client else "",
            )
    return SecurityProfileOut(
        station_id=station_id,
        ocpp_version=conn.version,
        accepted=accepted,
        previous_profile=current,
        security_profile=stored,
        steps=steps,
    )


def _accepted(steps: list[Step]) -> bool:
    """Every step that changes the configuration was accepted (a Reset's answer is not
    decisive: the station applies the change at its next restart anyway)."""
    decisive = [s for s in steps if s.action not in ("Reset", "GetVariables")]
    return bool(decisive) and all(_status(s) in ACCEPTED for s in decisive)


def _status(step: Step) -> str | None:
    r = step.response
    if "setVariableResult" in r:
        return (r["setVariableResult"] or [{}])[0].get("attributeStatus")
    return r.get("status")


async def _migrate_16(rt: Services, station_id: str, profile: int) -> list[Step]:
    body = commands.ChangeConfigurationBody(key="SecurityProfile", value=str(profile))
    response = await station_command(rt, station_id, "change-configuration", body)
    return [Step(action="ChangeConfiguration", response=response)]


PRIORITY = ("OCPPCommCtrlr", "NetworkConfigurationPriority")


async def _migrate_2x(
    rt: Services, station_id: str, body: SecurityProfileBody, version: str
) -> list[Step]:
    component, variable = PRIORITY
    ref = commands.VariableRef(component=component, variable=variable)
    got = await station_command(
        rt, station_id, "get-variables", commands.GetVariablesBody(variables=[ref])
    )
    steps = [Step(action="GetVariables", response=got)]
    result = (got.get("getVariableResult") or [{}])[0]
    value = result.get("attributeValue") if result.get("attributeStatus") == "Accepted" else None
    in_use = [int(x) for x in (value or "").split(",") if x.strip().isdigit()]
    slot = body.slot if body.slot is not None else max(in_use, default=0) + 1
    network = commands.SetNetworkProfileBody(
        slot=slot, csms_url=body.csms_url or "", security_profile=body.profile
    )
    answer = await station_command(rt, station_id, "set-network-profile", network)
    steps.append(Step(action="SetNetworkProfile", response=answer))
    if answer.get("status") != "Accepted":
        return steps
    priority = ",".join(str(s) for s in [slot, *(s for s in in_use if s != slot)])
    new = commands.VariableValue(component=component, variable=variable, value=priority)
    answer = await station_command(
        rt, station_id, "set-variables", commands.SetVariablesBody(variables=[new])
    )
    steps.append(Step(action="SetVariables", response=answer))
    if body.reset and _status(steps[-1]) in ACCEPTED:
        answer = await station_command(rt, station_id, "reset", commands.ResetBody(type="soft"))
        steps.append(Step(action="Reset", response=answer))
    return steps


async def _has_valid_certificate(rt: Services, station_id: str) -> bool:
    now = rt.clock.now()
    return any(
        c.kind == STATION_CERTIFICATE
        and c.status == "Accepted"
        and c.not_after is not None
        and c.not_after > now
        for c in await rt.certificates.certificates(station_id)
    )


async def _store_profile(rt: Services, station_id: str, profile: int, reached: int | None) -> None:
    """Store the new profile; a forced lowering also lowers the highest profile reached,
    or the station's next connect with it would be refused as a downgrade."""
    values: dict[str, Any] = {"security_profile": profile}
    if reached is not None and reached > profile:
        values["security_profile_reached"] = profile

    async def job(s: Any) -> None:
        await s.execute(update(Station).where(Station.id == station_id).values(**values))

    await rt.writer.submit(job)
    rt.ocpp.forget_credentials(station_id)
