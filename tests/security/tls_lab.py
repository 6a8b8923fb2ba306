"""A TLS lab for the tests: a CPO CA, server certificates (ECDSA and RSA) for
127.0.0.1, station certificates (good, of another CA, expired), client contexts,
and a boot of the ``ocpp`` library's own ChargePoint over ws:// or wss://."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import websockets
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call as c16
from ocpp.v21 import ChargePoint as CP21
from ocpp.v21 import call as c21
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call as c201

from conftest import Node, running_node
from evflex.clock import utcnow
from evflex.security import hash_password, pki
from evflex.store import repo

CPO = "Evflex Lab"
PASSWORD = "station-password-0001"


@dataclass
class Lab:
    dir: Path
    ca: pki.CertificateAuthority
    ca_file: Path

    def server_pair(self, kind: pki.KeyKind, name: str = "server") -> tuple[Path, Path]:
        key = pki.new_key(kind)
        cert = pki.issue(
            self.ca.cert, self.ca.key, pki.subject_name("127.0.0.1", CPO), key.public_key(),
            server_names=["127.0.0.1"],
        )  # fmt: skip
        return self._write(f"{name}-{kind}", cert, key)

    def station_pair(
        self,
        cn: str,
        org: str | None = CPO,
        ca: pki.CertificateAuthority | None = None,
        expired: bool = False,
    ) -> tuple[Path, Path]:
        ca = ca or self.ca
        key = pki.new_key()
        start = utcnow() - timedelta(days=10) if expired else None
        cert = pki.issue(
            ca.cert, ca.key, pki.subject_name(cn, org), key.public_key(), days=1 if expired else 30,
            not_before=start,
        )  # fmt: skip
        return self._write(f"station-{cn}-{pki.info(cert).serial_hex[:8]}", cert, key)

    def _write(self, name: str, cert, key) -> tuple[Path, Path]:
        return (
            pki.write_pem(self.dir / f"{name}.pem", pki.cert_pem(cert)),
            pki.write_pem(self.dir / f"{name}.key", pki.key_pem(key), private=True),
        )

    def client(self, pair: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """A station's TLS context: trusts the CPO CA, presents ``pair`` if given."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if pair is not None:
            ctx.load_cert_chain(*pair)
        return ctx


def new_lab(tmp_path) -> Lab:
    """A CPO CA in a fresh directory (the tests' ``lab`` fixture)."""
    cert_file, key_file = pki.init_ca(tmp_path, CPO)
    return Lab(tmp_path, pki.CertificateAuthority.load(cert_file, key_file), cert_file)


def other_ca() -> pki.CertificateAuthority:
    """A CA with the CPO's name that the node does not trust."""
    cert, key = pki.make_ca("Rogue CA", CPO)
    return pki.CertificateAuthority(cert, key)


def tls_settings(lab: Lab, **kw) -> dict:
    """A node serving TLS with an ECDSA and an RSA certificate, trusting the lab's CA."""
    ec, rsa = lab.server_pair("ec"), lab.server_pair("rsa")
    return dict(
        tls_cert=[ec[0], rsa[0]], tls_key=[ec[1], rsa[1]], tls_client_ca=[lab.ca_file],
        cpo_name=CPO, **kw,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def tls_node(database_url: str, lab: Lab, **kw) -> AsyncIterator[Node]:
    async with running_node(database_url, verify=lab.client(), **tls_settings(lab, **kw)) as n:
        yield n


async def register(node: Node, station_id: str, profile: int, password: str | None = PASSWORD,
                   serial: str | None = None) -> None:  # fmt: skip
    """Register a station in the store (its API is tested on its own)."""

    async def job(s):
        return await repo.register_station(
            s, station_id, utcnow(), hash_password(password) if password else None,
            security={"security_profile": profile, "serial_number": serial},
        )  # fmt: skip

    assert await node.rt.writer.submit(job)


VERSIONS = {
    "1.6": (CP16, lambda: c16.BootNotification(charge_point_vendor="Lab", charge_point_model="T")),
    "2.0.1": (
        CP201,
        lambda: c201.BootNotification(
            charging_station={"model": "T", "vendor_name": "Lab"}, reason="PowerUp"
        ),
    ),
    "2.1": (
        CP21,
        lambda: c21.BootNotification(
            charging_station={"model": "T", "vendor_name": "Lab"}, reason="PowerUp"
        ),
    ),
}


def wss(node: Node, station_id: str) -> str:
    return f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp/{station_id}"


async def boot(
    url: str, station_id: str, version: str = "2.0.1", ssl_ctx=None, headers=None
) -> str:
    """Connect the ``ocpp`` library's ChargePoint and send BootNotification: its status."""
    cls, request = VERSIONS[version]
    async with websockets.connect(
        url, ssl=ssl_ctx, subprotocols=[f"ocpp{version}"], additional_headers=headers
    ) as ws:
        cp = cls(station_id, ws, response_timeout=5)
        task = asyncio.create_task(cp.start())
        try:
            result = await cp.call(request())
        finally:
            task.cancel()
    return result.status
