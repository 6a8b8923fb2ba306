"""The OCPI 2.2.1 node: this evflex's roaming face (CPO and/or eMSP).

It holds what every module needs: our party and roles, the public base URL,
the partner client, the durable outbox, and one subscriber to the node's event
bus that hands each event to the modules that asked for its topic. Each module
(:mod:`evflex.ocpi.cpo`, :mod:`evflex.ocpi.emsp`) has an ``attach(node)`` that
registers its handlers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from evflex.events import Event
from evflex.ocpi.client import OcpiClient, endpoint
from evflex.ocpi.cpo import cdrs as cpo_cdrs
from evflex.ocpi.cpo import commands as cpo_commands
from evflex.ocpi.cpo import locations as cpo_locations
from evflex.ocpi.cpo import sessions as cpo_sessions
from evflex.ocpi.cpo import tariffs as cpo_tariffs
from evflex.ocpi.cpo import tokens as cpo_tokens
from evflex.ocpi.emsp import commands as emsp_commands
from evflex.ocpi.emsp import receivers as emsp_receivers
from evflex.ocpi.emsp import tokens as emsp_tokens
from evflex.ocpi.outbox import Outbox
from evflex.ocpi.secrets import TokenBox
from evflex.store.ocpi_tables import OcpiPartner

log = logging.getLogger(__name__)

Handler = Callable[[Event], Awaitable[None]]

PARTNERS_TTL_S = 2.0

MODULES = (
    cpo_locations, cpo_tariffs, cpo_sessions, cpo_cdrs, cpo_tokens, cpo_commands,
    emsp_receivers, emsp_tokens, emsp_commands,
)  # fmt: skip


class OcpiParty:
    """Who this node is in OCPI (from the settings), its partner client and its store:
    what registering with a partner needs. The CLI uses one when no node runs."""

    def __init__(self, settings: Any, sessionmaker: Any, clock: Any, writer: Any = None) -> None:
        self.settings = settings
        self.clock = clock
        self.sessionmaker = sessionmaker
        #: The group-commit writer of a running node; None: each write its own transaction.
        self.writer = writer
        self.country_code = settings.ocpi_country_code.upper()
        self.party_id = settings.ocpi_party_id.upper()
        self.roles = list(settings.ocpi_roles)
        self.box = TokenBox(settings.ocpi_key_file)
        self.client = OcpiClient((self.country_code, self.party_id), settings.ocpi_push_timeout_s)
        #: The HTTP port once it is open (set by the app), for the default base URL.
        self.http_port: Callable[[], int] | None = None

    @property
    def base_url(self) -> str:
        """The URL partners reach this node's HTTP port at (no trailing slash)."""
        s = self.settings
        if s.ocpi_base_url:
            return s.ocpi_base_url.rstrip("/")
        if s.public_url:
            return s.public_url.rstrip("/")
        scheme = "https" if s.tls_cert else "http"
        host = s.host if s.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        port = self.http_port() if self.http_port is not None else s.http_port
        return f"{scheme}://{host}:{port}"

    @property
    def versions_url(self) -> str:
        return f"{self.base_url}/ocpi/versions"

    def our_roles(self) -> list[dict[str, Any]]:
        """Our CredentialsRole objects."""
        return [
            {
                "role": role,
                "country_code": self.country_code,
                "party_id": self.party_id,
                "business_details": {"name": self.settings.ocpi_business_name},
            }
            for role in self.roles
        ]

    def token_of(self, partner: OcpiPartner) -> str:
        """The token we call ``partner`` with."""
        if not partner.token_out:
            raise ValueError(f"partner {partner.id} has no token for us to use")
        return self.box.open(partner.token_out)

    async def write(self, job: Callable[[Any], Awaitable[Any]]) -> Any:
        """``job(session)`` in a committed transaction (the node's writer when there is one)."""
        if self.writer is not None:
            return await self.writer.submit(job)
        async with self.sessionmaker() as s, s.begin():
            return await job(s)

    def publish(self, topic: str, **data: Any) -> None:
        """An event on the node's bus (none without a node)."""


class OcpiNode(OcpiParty):
    def __init__(self, services: Any) -> None:
        super().__init__(services.settings, services.sessionmaker, services.clock,
                         services.writer)  # fmt: skip
        #: The node's services (:class:`evflex.services.Services`): store, OCPP, bus, ...
        self.services = services
        self.outbox = Outbox(
            self.sessionmaker, self.writer, self.clock, self.client, self.box,
            self.settings.ocpi_retry_max_s,
        )  # fmt: skip
        self._handlers: dict[str, list[Handler]] = {}
        self._starters: list[Callable[[], Awaitable[None]]] = []
        self._stoppers: list[Callable[[], Awaitable[None]]] = []
        self._listener: asyncio.Task | None = None
        #: Per-module state a module keeps on the node (``node.state["sessions"]``).
        self.state: dict[str, Any] = {}
        # The registered partners, read at most every PARTNERS_TTL_S (every station
        # status asks who receives Locations); a registration here is seen at once.
        self._partners: tuple[float, list[OcpiPartner]] | None = None
        #: Ids of the registered partners this node knows of (None: not read yet).
        self._known: set[int] | None = None
        self._watcher: asyncio.Task | None = None
        for topic in ("ocpi.partner.registered", "ocpi.partner.unregistered"):
            self.on(topic, self.forget_partners)  # before the modules' handlers
        for module in MODULES:
            module.attach(self)

    async def forget_partners(self, event: Any = None) -> None:
        """Read the registered partners again at the next use (a partner registered in
        the store directly, not by this node's credentials module)."""
        self._partners = None
        if event is not None and self._known is not None and event.data.get("partner_id"):
            if event.topic.endswith(".registered"):
                self._known.add(event.data["partner_id"])
            else:
                self._known.discard(event.data["partner_id"])

    def adopt_partner(self, partner_id: int) -> None:
        """A partner registered in the store directly (tests, benchmarks): known at once,
        and not announced as newly registered."""
        self._partners = None
        if self._known is not None:
            self._known.add(partner_id)

    async def _read_partners(self) -> list[OcpiPartner]:
        """The registered partners, read now. One this node did not know of (registered by
        ``evflex ocpi register``, another process) is announced on the bus as
        ``ocpi.partner.registered``, as if this node had registered it: the modules
        send it their full copies."""
        async with self.sessionmaker() as s:
            q = select(OcpiPartner).where(OcpiPartner.status == "registered")
            rows = list((await s.scalars(q)).all())
        now = asyncio.get_running_loop().time()
        self._partners = (now, rows)
        ids = {p.id for p in rows}
        if self._known is not None:
            for pid in sorted(ids - self._known):
                log.info("OCPI partner %s registered by another process", pid)
                self.publish("ocpi.partner.registered", partner_id=pid)
        self._known = ids
        return rows

    async def _watch_partners(self) -> None:
        while True:
            await asyncio.sleep(PARTNERS_TTL_S)
            try:
                await self._read_partners()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("OCPI: reading the partners")

    def publish(self, topic: str, **data: Any) -> None:
        self.services.bus.publish(topic, None, **data)

    # ------------------------------------------------------------ wiring for modules

    def on(self, topic: str, handler: Handler) -> None:
        """Call ``handler`` for each bus event whose topic is ``topic`` (or starts with
        ``topic`` if it ends with a dot: ``"transaction."``)."""
        self._handlers.setdefault(topic, []).append(handler)

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._starters.append(fn)

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._stoppers.append(fn)

    async def partners_with(self, identifier: str, role: str) -> list[OcpiPartner]:
        """Registered partners that have module ``identifier`` in interface role ``role``
        (as of at most :data:`PARTNERS_TTL_S` ago: a registration by the CLI, another
        process, is seen within that)."""
        now = asyncio.get_running_loop().time()
        if self._partners is None or now - self._partners[0] > PARTNERS_TTL_S:
            rows = await self._read_partners()
        else:
            rows = self._partners[1]
        return [p for p in rows if endpoint(p, identifier, role) is not None]

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        self._listener = asyncio.create_task(self._listen(), name="ocpi-events")
        await asyncio.sleep(0)  # subscribed before the first station connects
        await self._read_partners()  # those registered before the start are known
        for fn in self._starters:
            await fn()
        await self.outbox.start()
        self._watcher = asyncio.create_task(self._watch_partners(), name="ocpi-partners")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        for fn in self._stoppers:
            await fn()
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        await self.outbox.close()
        await self.client.close()

    async def _listen(self) -> None:
        if not self._handlers:
            return
        prefixes = [t for t in self._handlers if t.endswith(".")]
        async with self.services.bus.subscribe(100_000) as q:
            while True:
                event = await q.get()
                handlers = list(self._handlers.get(event.topic, ()))
                for p in prefixes:
                    if event.topic.startswith(p):
                        handlers += self._handlers[p]
                for h in handlers:
                    try:
                        await h(event)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("OCPI handler for %s", event.topic)
