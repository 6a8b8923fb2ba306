"""OCPI transport: versions, tokens (Base64 and plain), the envelope, the outbox."""

from __future__ import annotations

import base64

import httpx
import pytest

from conftest import running_node
from evflex.ocpi import partners
from evflex.store.ocpi_tables import OcpiOutbox
from ocpi.partner import RecordingPartner


async def _invite(node, role="EMSP", cc="DE", pid="ABC") -> str:
    async def job(s):
        return (await partners.invite(s, role, cc, pid, node.rt.clock.now()))[1]

    return await node.rt.writer.submit(job)


async def test_versions_need_a_known_token_in_either_encoding(tmp_path):
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'e.db'}") as node:
        base = f"http://127.0.0.1:{node.rt.http_port}"
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/ocpi/versions")
            assert r.status_code == 401
            assert r.json()["status_code"] == 2000 and "missing" in r.json()["status_message"]
            r = await c.get("/ocpi/versions", headers={"Authorization": "Token nope"})
            assert r.status_code == 401 and "unknown" in r.json()["status_message"]

            token_a = await _invite(node)
            b64 = base64.b64encode(token_a.encode()).decode()
            for header in (f"Token {b64}", f"Token {token_a}"):  # 2.2.1 and 2.1.1 style
                r = await c.get(
                    "/ocpi/versions", headers={"Authorization": header, "X-Request-ID": "r-1"}
                )
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["status_code"] == 1000 and body["timestamp"].endswith("Z")
                assert body["data"] == [{"version": "2.2.1", "url": f"{base}/ocpi/2.2.1"}]
                assert r.headers["X-Request-ID"] == "r-1"
            r = await c.get("/ocpi/2.2.1", headers={"Authorization": f"Token {b64}"})
            ids = {(e["identifier"], e["role"]) for e in r.json()["data"]["endpoints"]}
            assert {("credentials", "SENDER"), ("locations", "SENDER"), ("tokens", "RECEIVER"),
                    ("locations", "RECEIVER"), ("commands", "SENDER")} <= ids  # fmt: skip


async def test_outbox_keeps_order_retries_a_down_partner_and_survives_restart(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'o.db'}"
    key = tmp_path / "ocpi.key"
    partner = await RecordingPartner([("sessions", "RECEIVER")]).start()
    try:
        async with running_node(url, ocpi_key_file=key, ocpi_retry_max_s=0.2) as node:
            pid = await partner.link(node)
            partner.fail_http = 503  # down: every try fails, nothing is skipped
            for i in range(3):
                await node.rt.ocpi.outbox.push([pid], "sessions", "sessions/DE/ABC/1", "PATCH",
                                               "/NL/EVF/1", {"n": i})  # fmt: skip
            await node.wait_for(lambda: len(partner.received) >= 2)
            assert all(r.body == {"n": 0} for r in partner.received)  # the head, again
            partner.fail_http = None
            await node.wait_for(lambda: [r.body for r in partner.of("sessions")][-3:]
                                == [{"n": 0}, {"n": 1}, {"n": 2}], timeout=5)  # fmt: skip
            assert partner.received[-1].path == "/ocpi/2.2.1/sessions/NL/EVF/1"
            assert partner.received[-1].headers["ocpi-from-party-id"] == "EVF"
            # a refusal for good (OCPI 2001) is not retried: the next row goes
            partner.fail_ocpi = 2001
            await node.rt.ocpi.outbox.push([pid], "sessions", "k2", "PUT", "/x", {"bad": 1})
            await node.wait_for(lambda: node.rt.ocpi.outbox.sent.get(pid, 0) >= 3)

            async def failed():
                async with node.rt.sessionmaker() as s:
                    row = (await s.scalars(OcpiOutbox.__table__.select().where(
                        OcpiOutbox.object_key == "k2"))).first()  # fmt: skip
                    return row is not None

            await node.wait_for(failed)
            partner.fail_ocpi = None
            await partner.stop()  # gone while the node stops: the row stays
            await node.rt.ocpi.outbox.push([pid], "sessions", "k3", "PUT", "/y", {"late": 1})
        port = partner.port
        await partner.start(port)
        async with running_node(url, ocpi_key_file=key, ocpi_retry_max_s=0.2) as node:
            await node.wait_for(lambda: any(r.body == {"late": 1} for r in partner.received),
                                timeout=5)  # fmt: skip
            # the row is done once its answer is back (just after the partner got it)
            await node.wait_for(lambda: node.rt.ocpi.outbox.sent.get(pid))
            assert await node.rt.ocpi.outbox.depth() == {}
    finally:
        if not partner.down:
            await partner.stop()


@pytest.mark.parametrize("header", ["Basic abc", "Token", ""])
async def test_malformed_authorization_is_401(tmp_path, header):
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}") as node:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.rt.http_port}") as c:
            r = await c.get("/ocpi/versions", headers={"Authorization": header} if header else {})
            assert r.status_code == 401 and r.json()["status_code"] == 2000
