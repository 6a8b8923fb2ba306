"""Wiring: one process runs the OCPP endpoint, the HTTP API and the store."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import suppress

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from evflex import __version__
from evflex.api import schemas
from evflex.api.monitoring import router as monitoring_router
from evflex.api.routes import COMMAND_SCHEMAS, router
from evflex.api.schedule import router as schedule_router
from evflex.api.smart import router as smart_router
from evflex.api.v2x import router as v2x_router
from evflex.clock import Clock, SystemClock
from evflex.config import ConfigError, Settings
from evflex.csms import commands
from evflex.csms.server import OcppServer
from evflex.csms.service import CsmsService
from evflex.events import EventBus
from evflex.smartcharging.dispatcher import ProfileDispatcher
from evflex.smartcharging.frequency import FrequencyController
from evflex.smartcharging.manager import LoadManager
from evflex.smartcharging.sitelog import SiteSampler
from evflex.store import repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.writer import GroupCommitWriter
from evflex.web import driver
from evflex.web import routes as web
from evflex.web.auth import AuthService, authorize

log = logging.getLogger(__name__)

SWAGGER = "/static/vendor/swagger-ui"  # swagger-ui-dist, vendored (see its VERSION)


class Runtime:
    """Everything a running evflex node holds."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.engine = make_engine(settings.database_url)
        self.sessionmaker = make_sessionmaker(self.engine)
        self.writer = GroupCommitWriter(self.sessionmaker)
        self.bus = EventBus()
        self.service = CsmsService(
            self.sessionmaker,
            self.writer,
            self.clock,
            self.bus,
            settings.heartbeat_interval,
            clock_tolerance_s=settings.clock_tolerance_s,
            remote_start_timeout_s=settings.remote_start_timeout_s,
        )
        self.ocpp = OcppServer(
            self.service,
            allow_unknown_stations=settings.allow_unknown_stations,
            response_timeout=settings.response_timeout,
            max_frame_bytes=settings.max_frame_bytes,
            ping_interval=settings.ws_ping_interval,
            validate_responses=settings.validate_responses,
            open_timeout=settings.ws_open_timeout,
        )
        self.dispatcher = ProfileDispatcher(
            self.ocpp.send_command,
            self.ocpp.is_connected,
            self.writer,
            self.clock,
            retry_max_s=settings.profile_retry_max_s,
        )
        self.frequency: FrequencyController | None = None  # central frequency control
        self.lm = LoadManager(
            self.sessionmaker,
            self.writer,
            self.bus,
            self.clock,
            self.dispatcher,
            self.ocpp.is_connected,
            initial_full_power_s=settings.initial_full_power_s,
            ramp_kw_per_s=settings.ramp_kw_per_s,
            random_delay_s=settings.random_delay_s,
            stack_level=settings.lm_stack_level,
            priority_stack_level=settings.priority_stack_level,
            rebalance_interval_s=settings.rebalance_interval_s,
            settle_timeout_s=settings.response_timeout + 1,
            stop_session=self._remote_stop,
        )
        # New sessions at stations that refuse charging profiles pass the load
        # manager's admission rule (the service only knows the callable).
        self.service.admission = self.lm.admission
        self.sampler = SiteSampler(
            self.sessionmaker, self.writer, self.bus, self.clock, settings.site_sample_s
        )
        self.auth = AuthService(
            self.sessionmaker,
            session_hours=settings.session_hours,
            secure_cookies=settings.secure_cookies,
        )
        self.stopping = asyncio.Event()  # ends the dashboards' event streams
        self.api = create_api(self)
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task | None = None

    async def _remote_stop(self, station_id: str, transaction_id: str) -> dict:
        body = commands.RemoteStopBody(transaction_id=transaction_id)
        return await self.ocpp.send_command(station_id, "remote-stop", body)

    async def start(self) -> None:
        """Migrate the schema, then open the OCPP and HTTP ports."""
        await migrate(self.engine)
        self.writer.start()
        try:
            await self._configured_sites()
        except ConfigError:
            await self.writer.stop()
            await self.engine.dispose()
            raise
        await self.dispatcher.load(self.sessionmaker)
        await self.lm.start()
        self.sampler.start()
        await self.ocpp.start(self.settings.host, self.settings.ocpp_port)
        config = uvicorn.Config(
            self.api,
            host=self.settings.host,
            port=self.settings.http_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        self._http = uvicorn.Server(config)
        self._http_task = asyncio.create_task(self._http.serve(), name="evflex-http")
        while not self._http.started:
            if self._http_task.done():
                await self._http_task  # raises the bind error
                raise RuntimeError("HTTP server stopped during start")
            await asyncio.sleep(0.02)

    @property
    def ocpp_port(self) -> int:
        return self.ocpp.port

    @property
    def http_port(self) -> int:
        assert self._http is not None
        return self._http.servers[0].sockets[0].getsockname()[1]

    async def _configured_sites(self) -> None:
        """Apply the sites and circuits of the configuration file.

        The fields a ``[[sites]]`` table writes are managed by the file: they
        are applied at every start and the API refuses to change them (409).
        Fields it does not write belong to the API and are never overwritten;
        a site that left the file gives all its fields back to the API.
        """
        now = self.clock.now()
        sites, circuits = self.settings.sites, self.settings.circuits  # checked by Settings

        async def job(s) -> None:
            configured = {x.id for x in sites}
            for row in await repo.list_sites(s):
                if row.config_fields and row.id not in configured:
                    row.config_fields = None
            for site in sites:
                fields = site.model_fields_set - {"id"}
                await repo.upsert_site(s, site.id, schemas.body_values(site, fields), now)
                await s.flush()
                (await repo.get_site(s, site.id)).config_fields = sorted(fields)
            await s.flush()
            for circuit in circuits:
                if await repo.get_site(s, circuit.site_id) is None:
                    raise ConfigError([
                        f"[[circuits]] '{circuit.id}': site '{circuit.site_id}' does not exist "
                        "(neither in [[sites]] nor created through the API)"
                    ])  # fmt: skip
                fields = circuit.model_fields_set - {"id"}
                await repo.upsert_circuit(s, circuit.id, schemas.body_values(circuit, fields), now)

        await self.writer.submit(job)

    async def stop(self) -> None:
        self.stopping.set()
        await self.sampler.stop()
        if self.frequency is not None:
            await self.frequency.stop()
        await self.lm.stop()
        await self.dispatcher.close()
        await self.ocpp.stop()
        await self.service.close()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            with suppress(asyncio.CancelledError):
                await self._http_task
        await self.writer.stop()
        await self.engine.dispose()

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
    guarded = [Depends(authorize)]  # every /api/v1 route but login, health and the driver's
    for r in (router, smart_router, schedule_router, v2x_router, monitoring_router):
        app.include_router(r, dependencies=guarded)
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


def tune_gc() -> None:
    """Garbage collection for a long-running server holding many connections.

    What the process holds after start is kept out of every later collection,
    and young objects are collected less often: with 20,000 connections, the
    default thresholds make the collector walk the whole heap many times a
    second and stall every handshake and answer behind it.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
