"""Wiring: one process runs the node's services (:mod:`evflex.services`) and its HTTP face."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from evflex import __version__
from evflex.api.accounts import router as accounts_router
from evflex.api.alerts import router as alerts_router
from evflex.api.audit import router as audit_router
from evflex.api.certificates import router as certificates_router
from evflex.api.circuits import router as circuits_router
from evflex.api.guard import InputGuard, validation_failed
from evflex.api.monitoring import router as monitoring_router
from evflex.api.ocpi import router as ocpi_api_router
from evflex.api.records import router as records_router
from evflex.api.routes import COMMAND_SCHEMAS, router
from evflex.api.schedule import router as schedule_router
from evflex.api.security import router as security_router
from evflex.api.smart import router as smart_router
from evflex.api.uploads import attach as attach_uploads
from evflex.api.uploads import router as uploads_router
from evflex.api.uploads import station_router as upload_station_router
from evflex.api.v2x import router as v2x_router
from evflex.clock import Clock
from evflex.config import Settings
from evflex.csms.firmware import UPLOAD_PATH
from evflex.ocpi import transport as ocpi
from evflex.ocpi.versions import router as ocpi_router
from evflex.services import Services
from evflex.web import driver
from evflex.web import routes as web
from evflex.web.auth import authorize
from evflex.web.trail import AuditTrail

log = logging.getLogger(__name__)

SWAGGER = "/static/vendor/swagger-ui"  # swagger-ui-dist, vendored (see its VERSION)


class Runtime(Services):
    """A whole evflex node: its services and the HTTP API and pages that serve them."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        super().__init__(settings, clock)
        self.api = create_api(self)
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task | None = None

    async def start(self) -> None:
        """Migrate the schema, then open the OCPP and HTTP ports."""
        await super().start()
        config = uvicorn.Config(
            self.api,
            host=self.settings.host,
            port=self.settings.http_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        if self.tls is not None and self.tls.http_context is not None:
            # our context, held by the server, so that a reload reaches new handshakes
            config.load()
            config.ssl = self.tls.http_context
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(), name="evflex-http")
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises the bind error
                raise RuntimeError("HTTP server stopped during start")
            await asyncio.sleep(0.02)

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return self._http.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.stopping.set()  # the event streams end, so the HTTP server can close
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with suppress(asyncio.CancelledError):
                await self._http_task
        await super().stop()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()


def create_api(rt: Runtime) -> FastAPI:
    app = FastAPI(
        title="evflex",
        version=__version__,
        description="Smart and bidirectional EV charging: OCPP CSMS REST API",
        docs_url=None,  # served below from the package: /docs works without internet
        redoc_url=None,
    )
    app.state.runtime = rt
    app.add_middleware(
        InputGuard,
        max_body_bytes=rt.settings.max_body_bytes,
        exempt=(UPLOAD_PATH + "/",),  # a station's upload is limited by upload_max_bytes
        problem_replies={ocpi.PREFIX + "/": ocpi.problem_reply},  # OCPI's envelope
    )
    app.add_middleware(AuditTrail)  # outermost: it sees what the guard refuses too

    async def invalid(request, exc):
        if ocpi.is_ocpi(request):
            return ocpi.validation_reply(request, exc)
        return await validation_failed(request, exc)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(ocpi.OcpiError, ocpi.ocpi_error)
    guarded = [Depends(authorize)]  # every /api/v1 route but login, health and the driver's
    routers = (router, smart_router, schedule_router, v2x_router, monitoring_router)
    console = (records_router, alerts_router, audit_router, accounts_router, circuits_router,
               ocpi_api_router)  # fmt: skip
    for r in (*routers, certificates_router, security_router, uploads_router, *console):
        app.include_router(r, dependencies=guarded)
    app.include_router(ocpi_router)  # partners: OCPI credentials tokens
    rt.ocpi.http_port = lambda: rt.http_port
    app.include_router(upload_station_router)  # stations: a one-time token in the path
    attach_uploads(rt, lambda: rt.http_port)
    app.include_router(web.router)
    app.include_router(web.auth_router)
    app.include_router(driver.router)
    app.include_router(web.pages)
    app.mount("/static", StaticFiles(directory=str(web.STATIC_DIR)), name="static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="evflex API",
            swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER}/favicon-32x32.png",
        )

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in COMMAND_SCHEMAS.items():  # the command bodies
                schemas.setdefault(name, schema)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/api/v1/health", tags=["system"])
    async def health() -> dict:
        return {
            "status": "ok",
            "version": __version__,
            "stations_connected": len(rt.ocpp.connections),
            "writer_batches": rt.writer.batches,
            "writer_jobs": rt.writer.jobs,
        }

    return app
