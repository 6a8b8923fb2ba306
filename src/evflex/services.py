"""The services of one evflex node: store, OCPP endpoint, load management and planning."""

from __future__ import annotations

import asyncio

from evflex.alerts import AlertEngine
from evflex.api import schemas
from evflex.clock import Clock, SystemClock
from evflex.config import ConfigError, Settings
from evflex.csms import commands
from evflex.csms.certificates import CertificateManager
from evflex.csms.server import OcppServer
from evflex.csms.service import CsmsService
from evflex.events import EventBus
from evflex.ocpi.node import OcpiNode
from evflex.security.audit import FailureLimiter
from evflex.security.tls import Tls
from evflex.smartcharging.dispatcher import ProfileDispatcher
from evflex.smartcharging.frequency import FrequencyController
from evflex.smartcharging.manager import LoadManager
from evflex.smartcharging.sitelog import SiteSampler
from evflex.store import repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.writer import GroupCommitWriter
from evflex.web.auth import AuthService


class Services:
    """What a running evflex node holds behind its HTTP face: store, OCPP, planning.

    The HTTP API and pages reach these through :mod:`evflex.api.deps`; the
    node that also serves them is :class:`evflex.app.Runtime`.
    """

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
        self.service.currency = settings.currency
        #: Both ports' TLS (None: plain); raises TlsError if its files cannot be used.
        self.tls = (
            Tls(
                list(zip(settings.tls_cert, settings.tls_key, strict=True)),
                settings.tls_client_ca,
                settings.tls_reload_s,
            )
            if settings.tls_cert or settings.tls_client_ca
            else None
        )
        self.ocpp = OcppServer(
            self.service,
            allow_unknown_stations=settings.allow_unknown_stations,
            response_timeout=settings.response_timeout,
            max_frame_bytes=settings.max_frame_bytes,
            ping_interval=settings.ws_ping_interval,
            validate_responses=settings.validate_responses,
            open_timeout=settings.ws_open_timeout,
            limiter=FailureLimiter(settings.station_login_max_failures, settings.failure_window_s),
            tls=self.tls,
            cpo_name=settings.cpo_name,
            trusted_proxies=settings.trusted_proxy,
            client_cert_header=settings.client_cert_header,
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
        self.alerts = AlertEngine(
            self.sessionmaker,
            self.writer,
            self.bus,
            self.clock,
            settings,
            is_connected=self.ocpp.is_connected,
            clocks=self.service.clocks,
            dispatcher=self.dispatcher,
            lm=self.lm,
        )
        self.auth = AuthService(
            self.sessionmaker,
            self.service,
            session_hours=settings.session_hours,
            secure_cookies=settings.secure_cookies,
            trusted_proxies=settings.trusted_proxy,
            limiter=FailureLimiter(settings.login_max_failures, settings.failure_window_s),
        )
        self.certificates = CertificateManager(
            self.service,
            cpo_name=settings.cpo_name,
            ca_cert_file=settings.ca_cert_file,
            ca_key_file=settings.ca_key_file,
            validity_days=settings.cert_validity_days,
            renew_days=settings.cert_renew_days,
            signing_hook=settings.cert_signing_hook,
            ev_hook=settings.ev_certificate_hook,
        )
        self.certificates.attach(self.ocpp)
        self.service.certificates = self.certificates
        #: The OCPI 2.2.1 roaming node (CPO and/or eMSP), on the event bus.
        self.ocpi = OcpiNode(self)
        self.stopping = asyncio.Event()  # ends the dashboards' event streams

    async def _remote_stop(self, station_id: str, transaction_id: str) -> dict:
        body = commands.RemoteStopBody(transaction_id=transaction_id)
        return await self.ocpp.send_command(station_id, "remote-stop", body)

    async def start(self) -> None:
        """Migrate the schema, then open the OCPP port."""
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
        self.certificates.start()
        await self.alerts.start()
        await self.ocpi.start()
        await self.ocpp.start(self.settings.host, self.settings.ocpp_port)
        if self.tls is not None:
            self.tls.start()

    @property
    def ocpp_port(self) -> int:
        return self.ocpp.port

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
        await self.ocpi.stop()
        await self.alerts.stop()
        await self.sampler.stop()
        if self.frequency is not None:
            await self.frequency.stop()
        await self.lm.stop()
        await self.dispatcher.close()
        await self.certificates.stop()
        await self.ocpp.stop()
        if self.tls is not None:
            await self.tls.stop()
        await self.service.close()
        await self.writer.stop()
        await self.engine.dispose()
