"""TLS on both ports: versions and suites, ECDSA and RSA certificates at once,
reload on a file change and on the admin call, HTTPS, certificates forwarded by a
trusted proxy only."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from urllib.parse import quote

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.exceptions import InvalidStatus

from conftest import running_node
from evflex.security import pki
from ocpp_clients import basic_auth
from security import tls_lab as tl

lab = pytest.fixture(tl.new_lab)


async def served_certificate(port: int, ctx: ssl.SSLContext) -> tuple[x509.Certificate, tuple]:
    """The certificate a new TLS handshake on ``port`` gets, and the suite negotiated."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        sslobj = writer.get_extra_info("ssl_object")
        return x509.load_der_x509_certificate(sslobj.getpeercert(binary_form=True)), sslobj.cipher()
    finally:
        writer.close()


def tls12_client(lab, suites: str) -> ssl.SSLContext:
    ctx = lab.client()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(suites)
    return ctx


@pytest.mark.parametrize("port", ["ocpp", "http"])
async def test_ecdsa_and_rsa_certificates_are_both_served(database_url, lab, port):
    async with tl.tls_node(database_url, lab) as node:
        p = node.rt.ocpp_port if port == "ocpp" else node.rt.http_port
        cert, suite = await served_certificate(
            p, tls12_client(lab, "ECDHE-ECDSA-AES128-GCM-SHA256")
        )
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert suite[:2] == ("ECDHE-ECDSA-AES128-GCM-SHA256", "TLSv1.2")
        cert, suite = await served_certificate(p, tls12_client(lab, "ECDHE-RSA-AES256-GCM-SHA384"))
        assert isinstance(cert.public_key(), rsa.RSAPublicKey)
        assert suite[:2] == ("ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2")
        _, suite = await served_certificate(p, lab.client())
        assert suite[1] == "TLSv1.3"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_old_versions_and_weak_suites_are_refused(database_url, lab, caplog):
    async with tl.tls_node(database_url, lab) as node:
        old = lab.client()
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with pytest.raises(OSError):  # the server ends the handshake
            await served_certificate(node.rt.ocpp_port, old)
        await node.wait_for(lambda: "TLS handshake failed: UNSUPPORTED_PROTOCOL" in caplog.text)
        cbc = tls12_client(lab, "ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256")
        with pytest.raises(OSError):
            await served_certificate(node.rt.ocpp_port, cbc)
        await node.wait_for(lambda: "TLS handshake failed: NO_SHARED_CIPHER" in caplog.text)
        with pytest.raises(OSError):
            await served_certificate(node.rt.http_port, cbc)
        # the port lives on
        await tl.register(node, "CS-2", 2)
        assert (
            await tl.boot(
                tl.wss(node, "CS-2"),
                "CS-2",
                ssl_ctx=lab.client(),
                headers=basic_auth("CS-2", tl.PASSWORD),
            )
            == "Accepted"
        )


async def test_the_http_port_serves_https_only(database_url, lab):
    async with tl.tls_node(database_url, lab) as node:
        r = await node.http.get("/api/v1/health")
        assert r.status_code == 200 and str(r.url).startswith("https://")
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{node.rt.http_port}/api/v1/health")


def replace_server_certificates(lab, node) -> None:
    """New certificates (new serial numbers) into the files the node was started with."""
    s = node.rt.settings
    for cert_file, key_file in zip(s.tls_cert, s.tls_key, strict=True):
        kind = "rsa" if "rsa" in cert_file.name else "ec"
        new_cert, new_key = lab.server_pair(kind, name="renewed")
        shutil.copy(new_key, key_file)
        shutil.copy(new_cert, cert_file)


async def test_certificates_are_reloaded_when_their_files_change(database_url, lab):
    async with tl.tls_node(database_url, lab, tls_reload_s=0.05) as node:
        before, _ = await served_certificate(node.rt.ocpp_port, lab.client())
        replace_server_certificates(lab, node)

        async def renewed():
            cert, _ = await served_certificate(node.rt.ocpp_port, lab.client())
            return cert.serial_number != before.serial_number and cert

        after = await node.wait_for(renewed)
        assert after.serial_number == pki.load_cert(node.rt.settings.tls_cert[0]).serial_number
        http_cert, _ = await served_certificate(node.rt.http_port, lab.client())
        assert http_cert.serial_number == after.serial_number


async def test_the_admin_reloads_certificates_through_the_api(database_url, lab):
    async with tl.tls_node(database_url, lab, tls_reload_s=3600) as node:
        before, _ = await served_certificate(node.rt.http_port, lab.client())
        replace_server_certificates(lab, node)
        still, _ = await served_certificate(node.rt.http_port, lab.client())
        assert still.serial_number == before.serial_number  # not polled for an hour
        operator = {"Authorization": f"Bearer {node.rt.auth.ephemeral_token('operator')}"}
        r = await node.http.post("/api/v1/admin/tls/reload", headers=operator)
        assert r.status_code == 403
        r = await node.http.post("/api/v1/admin/tls/reload")
        assert r.status_code == 200, r.text
        assert str(node.rt.settings.tls_cert[0]) in r.json()["files"]
        after, _ = await served_certificate(node.rt.http_port, lab.client())
        assert after.serial_number != before.serial_number
        assert after.serial_number == pki.load_cert(node.rt.settings.tls_cert[0]).serial_number
        # a broken file is refused with its reason; the certificates in use stay
        node.rt.settings.tls_key[0].write_text("not a key")
        r = await node.http.post("/api/v1/admin/tls/reload")
        assert r.status_code == 422 and "stay in use" in r.json()["detail"]
        kept, _ = await served_certificate(node.rt.ocpp_port, lab.client())
        assert kept.serial_number == after.serial_number


def forwarded(pair) -> dict[str, str]:
    """The header nginx sends with ``$ssl_client_escaped_cert``."""
    return {"X-Client-Cert": quote(pair[0].read_text(), safe="")}


async def test_a_certificate_header_is_believed_from_a_trusted_proxy_only(
    database_url, lab, caplog
):
    settings = dict(tls_client_ca=[lab.ca_file], cpo_name=tl.CPO)
    plain = "ws://127.0.0.1:{}/ocpp/{}"
    good, rogue = lab.station_pair("CS-3"), lab.station_pair("CS-3", ca=tl.other_ca())
    async with running_node(database_url, trusted_proxy=["127.0.0.1"], **settings) as node:
        await tl.register(node, "CS-3", 3, password=None)
        url = plain.format(node.rt.ocpp_port, "CS-3")
        assert await tl.boot(url, "CS-3", headers=forwarded(good)) == "Accepted"
        assert (await node.station("CS-3"))["security_profile_reached"] == 3
        with pytest.raises(InvalidStatus) as err:
            headers = {**forwarded(rogue), "X-Forwarded-For": "198.51.100.7"}
            await tl.boot(url, "CS-3", headers=headers)
        assert err.value.response.status_code == 401
        r = await node.http.get("/api/v1/events", params={"station_id": "CS-3"})
        event = r.json()[0]  # the station the proxy forwarded for is the source
        assert (event["type"], event["detail"]["source"]) == ("InvalidCertificate", "198.51.100.7")
    async with running_node(database_url, trusted_proxy=["192.0.2.1"], **settings) as node:
        await tl.register(node, "CS-4", 3, password=None)
        url = plain.format(node.rt.ocpp_port, "CS-4")
        with pytest.raises(InvalidStatus) as err:
            await tl.boot(url, "CS-4", headers=forwarded(lab.station_pair("CS-4")))
        assert err.value.response.status_code == 403  # plain, the header ignored
        assert "ignored the X-Client-Cert header from 127.0.0.1" in caplog.text
        r = await node.http.get("/api/v1/events", params={"station_id": "CS-4"})
        assert [e["type"] for e in r.json()] == ["PlainConnectionRefused"]


async def test_connections_cut_short_leave_the_port_serving(database_url, lab, caplog):
    async with tl.tls_node(database_url, lab, ws_open_timeout=0.5) as node:
        port = node.rt.ocpp_port
        for first in (b"", b"\x16\x03", b"GET / HT"):  # nothing, half a hello, half a request
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(first)
            await w.drain()
            w.close()
        r, w = await asyncio.open_connection("127.0.0.1", port)  # silent: dropped in time
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
        await tl.register(node, "CS-1", 1, password=None)
        plain = f"ws://127.0.0.1:{port}/ocpp/CS-1"
        assert await tl.boot(plain, "CS-1", "1.6") == "Accepted"
        assert "Fatal error" not in caplog.text and "Traceback" not in caplog.text
