"""Our versions and version details (``version_information_endpoint``), and the
router that puts every OCPI module under ``/ocpi``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Depends, Request

from evflex.ocpi import credentials
from evflex.ocpi.cpo import cdrs as cpo_cdrs
from evflex.ocpi.cpo import commands as cpo_commands
from evflex.ocpi.cpo import locations as cpo_locations
from evflex.ocpi.cpo import sessions as cpo_sessions
from evflex.ocpi.cpo import tariffs as cpo_tariffs
from evflex.ocpi.cpo import tokens as cpo_tokens
from evflex.ocpi.emsp import commands as emsp_commands
from evflex.ocpi.emsp import receivers as emsp_receivers
from evflex.ocpi.emsp import tokens as emsp_tokens
from evflex.ocpi.transport import (
    PREFIX,
    VERSION,
    any_partner,
    registered_partner,
    reply,
    runtime,
)


@dataclass(frozen=True, slots=True)
class Module:
    identifier: str
    role: str  # the interface role: SENDER or RECEIVER
    our_role: str | None  # CPO or EMSP; None: every node (credentials)
    path: str  # after /ocpi


MODULES = (
    Module("credentials", "SENDER", None, f"/{VERSION}/credentials"),
    Module("credentials", "RECEIVER", None, f"/{VERSION}/credentials"),
    Module("locations", "SENDER", "CPO", f"/cpo/{VERSION}/locations"),
    Module("sessions", "SENDER", "CPO", f"/cpo/{VERSION}/sessions"),
    Module("cdrs", "SENDER", "CPO", f"/cpo/{VERSION}/cdrs"),
    Module("tariffs", "SENDER", "CPO", f"/cpo/{VERSION}/tariffs"),
    Module("tokens", "RECEIVER", "CPO", f"/cpo/{VERSION}/tokens"),
    Module("commands", "RECEIVER", "CPO", f"/cpo/{VERSION}/commands"),
    Module("locations", "RECEIVER", "EMSP", f"/emsp/{VERSION}/locations"),
    Module("sessions", "RECEIVER", "EMSP", f"/emsp/{VERSION}/sessions"),
    Module("cdrs", "RECEIVER", "EMSP", f"/emsp/{VERSION}/cdrs"),
    Module("tariffs", "RECEIVER", "EMSP", f"/emsp/{VERSION}/tariffs"),
    Module("tokens", "SENDER", "EMSP", f"/emsp/{VERSION}/tokens"),
    Module("commands", "SENDER", "EMSP", f"/emsp/{VERSION}/commands"),
)

versions_router = APIRouter()


def base_url(request: Request) -> str:
    return runtime(request).ocpi.base_url


@versions_router.get("/versions", dependencies=[Depends(any_partner)])
@versions_router.get("/versions/", dependencies=[Depends(any_partner)], include_in_schema=False)
async def versions(request: Request):
    """The versions this node speaks (2.2.1)."""
    data = [{"version": VERSION, "url": f"{base_url(request)}{PREFIX}/{VERSION}"}]
    return reply(request, data)


@versions_router.get(f"/{VERSION}", dependencies=[Depends(any_partner)])
@versions_router.get(f"/{VERSION}/details", dependencies=[Depends(any_partner)],
                     include_in_schema=False)  # fmt: skip
async def version_details(request: Request):
    """Our modules in 2.2.1, each with its interface role, for the roles we play."""
    roles = set(runtime(request).ocpi.roles)
    base = base_url(request) + PREFIX
    endpoints = [
        # with a trailing slash, as the spec's examples: some clients append "CC/PID/id"
        {"identifier": m.identifier, "role": m.role, "url": base + m.path + "/"}
        for m in MODULES
        if m.our_role is None or m.our_role in roles
    ]
    return reply(request, {"version": VERSION, "endpoints": endpoints})


router = APIRouter(prefix=PREFIX, tags=["OCPI 2.2.1"])
router.include_router(versions_router)
router.include_router(credentials.router, prefix=f"/{VERSION}/credentials")
# every module but credentials: a registered partner's token (B or C), else 401
modules = APIRouter(dependencies=[Depends(registered_partner)])
for _m, _r in (
    ("locations", cpo_locations), ("sessions", cpo_sessions), ("cdrs", cpo_cdrs),
    ("tariffs", cpo_tariffs), ("tokens", cpo_tokens), ("commands", cpo_commands),
):  # fmt: skip
    modules.include_router(_r.router, prefix=f"/cpo/{VERSION}/{_m}")
for _m, _r in (("tokens", emsp_tokens), ("commands", emsp_commands)):
    modules.include_router(_r.router, prefix=f"/emsp/{VERSION}/{_m}")
# one router serves the four receivers: /locations/..., /sessions/..., /cdrs/..., /tariffs/...
modules.include_router(emsp_receivers.router, prefix=f"/emsp/{VERSION}")
router.include_router(modules)
