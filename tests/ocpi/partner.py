"""A minimal OCPI 2.2.1 platform for tests: serves versions and version details for
the modules it is given, answers every other request with OCPI 1000 (or a chosen
failure), and records what it received. Runs on 127.0.0.1 in the test's loop.

It is test plumbing to look at exactly what evflex sends; the independent
implementation the interop tests use is ``extrawest-ocpi`` (tests/ocpi/peer).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from evflex.bench.local_http import LocalHttp
from evflex.ocpi.partners import add_registered


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def ok(data: Any = None, status_code: int = 1000, http: int = 200) -> JSONResponse:
    body = {"status_code": status_code, "timestamp": datetime.now(UTC).isoformat()}
    if data is not None:
        body["data"] = data
    return JSONResponse(body, status_code=http)


class RecordingPartner:
    """``modules``: [(identifier, role)] it offers, e.g. [("sessions", "RECEIVER")]."""

    def __init__(
        self,
        modules: list[tuple[str, str]],
        role: str = "EMSP",
        country_code: str = "DE",
        party_id: str = "ABC",
    ) -> None:
        self.modules = modules
        self.role = role
        self.country_code = country_code
        self.party_id = party_id
        #: The token evflex must call us with, and the one we call evflex with.
        self.token_for_us = secrets.token_urlsafe(16)
        self.token_for_them = secrets.token_urlsafe(16)
        self.received: list[Received] = []
        #: While set: every non-version request answers this HTTP status (e.g. 503).
        self.fail_http: int | None = None
        #: While set: every non-version request answers HTTP 200 with this OCPI code.
        self.fail_ocpi: int | None = None
        #: Requests whose path ends with a key answer HTTP 200 with its OCPI code.
        self.fail_ocpi_for: dict[str, int] = {}
        self.down = False  # the server is stopped (see stop/start)
        self.app = self._make_app()
        self._http: LocalHttp | None = None
        self.port = 0

    # ------------------------------------------------------------ life

    async def start(self, port: int = 0) -> RecordingPartner:
        self._http = LocalHttp(self.app)
        self.port = await self._http.start(port)
        self.down = False
        return self

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.stop()
        self.down = True

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/ocpi"

    @property
    def versions_url(self) -> str:
        return f"{self.base}/versions"

    def endpoints(self) -> list[dict[str, str]]:
        return [
            {"identifier": ident, "role": role, "url": f"{self.base}/2.2.1/{ident}"}
            for ident, role in self.modules
        ]

    def roles(self) -> list[dict[str, Any]]:
        return [{"role": self.role, "country_code": self.country_code,
                 "party_id": self.party_id, "business_details": {"name": "Test partner"}}]  # fmt: skip

    async def link(self, node) -> int:
        """Register this partner directly in ``node``'s store (no handshake); its id."""
        ocpi = node.rt.ocpi

        async def job(s):
            p = await add_registered(
                s, ocpi.box, roles=self.roles(), endpoints=self.endpoints(),
                token_in=self.token_for_them, token_out=self.token_for_us,
                now=node.rt.clock.now(), versions_url=self.versions_url,
            )  # fmt: skip
            return p.id

        partner_id = await node.rt.writer.submit(job)
        ocpi.adopt_partner(partner_id)  # the node reads its partners again
        return partner_id

    def auth_header(self) -> dict[str, str]:
        """Headers with which this partner calls evflex."""
        token = base64.b64encode(self.token_for_them.encode()).decode()
        return {"Authorization": f"Token {token}"}

    def of(self, module: str, method: str | None = None) -> list[Received]:
        """What was received for ``module`` (and ``method``), in order."""
        prefix = f"/ocpi/2.2.1/{module}"
        return [r for r in self.received
                if r.path.startswith(prefix) and (method is None or r.method == method)]  # fmt: skip

    # ------------------------------------------------------------ the app

    def _make_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/ocpi/versions")
        async def versions() -> JSONResponse:
            return ok([{"version": "2.2.1", "url": f"{self.base}/2.2.1"}])

        @app.get("/ocpi/2.2.1")
        async def details() -> JSONResponse:
            return ok({"version": "2.2.1", "endpoints": self.endpoints()})

        @app.api_route("/ocpi/2.2.1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def anything(request: Request, rest: str) -> Response:
            raw = await request.body()
            body = orjson.loads(raw) if raw else None
            expected = base64.b64encode(self.token_for_us.encode()).decode()
            if request.headers.get("Authorization") != f"Token {expected}":
                return ok(None, 2000, 401)
            self.received.append(
                Received(request.method, request.url.path, dict(request.headers), body)
            )
            if self.fail_http is not None:
                return ok(None, 3000, self.fail_http)
            if self.fail_ocpi is not None:
                return ok(None, self.fail_ocpi)
            for suffix, code in self.fail_ocpi_for.items():
                if request.url.path.endswith(suffix):
                    return ok(None, code)
            return ok()

        return app
