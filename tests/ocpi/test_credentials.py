"""OCPI credentials: registration both ways, token rotation, unregistration, the CLI."""

from __future__ import annotations

import asyncio
import base64
import contextlib

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from conftest import running_node
from evflex.cli import app as cli_app
from evflex.ocpi import credentials, partners
from evflex.ocpi.client import PartnerError, endpoint
from evflex.store.ocpi_tables import OcpiPartner
from ocpi.partner import RecordingPartner, ok

CRED = "/ocpi/2.2.1/credentials"
MODULE = "/ocpi/cpo/2.2.1/sessions"  # any module: only a registered partner's token opens it


def auth(token: str) -> dict[str, str]:
    return {"Authorization": "Token " + base64.b64encode(token.encode()).decode()}


async def invite(node, role="EMSP", cc="DE", pid="ABC") -> str:
    async def job(s):
        return (await partners.invite(s, role, cc, pid, node.rt.clock.now()))[1]

    return await node.rt.writer.submit(job)


async def rows(node) -> list[OcpiPartner]:
    async with node.rt.sessionmaker() as s:
        return list((await s.scalars(select(OcpiPartner).order_by(OcpiPartner.id))).all())


def body_of(partner: RecordingPartner, token: str, **changes) -> dict:
    roles = [{**r, "country_code": r["country_code"].lower(), "party_id": r["party_id"].lower()}
             for r in partner.roles()]  # fmt: skip  # lower case, as some peers send
    return {"token": token, "url": partner.versions_url, "roles": roles, **changes}


@contextlib.asynccontextmanager
async def recording_partner():
    partner = await RecordingPartner([("sessions", "RECEIVER"), ("credentials", "SENDER")]).start()
    try:
        yield partner
    finally:
        await partner.stop()


async def test_a_partner_registers_updates_and_unregisters(tmp_path):
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}") as node, \
            recording_partner() as partner:  # fmt: skip
        token_a = await invite(node)
        events = []
        async with (
            node.rt.bus.subscribe() as q,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.rt.http_port}") as c,
        ):
            # a registered-only module refuses token A
            assert (await c.get(MODULE, headers=auth(token_a))).status_code == 401
            r = await c.post(CRED, headers=auth(token_a), json=body_of(partner, "token-b"))
            assert r.status_code == 200 and r.json()["status_code"] == 1000, r.text
            ours = r.json()["data"]
            token_c = ours["token"]
            assert token_c != token_a and len(token_c) <= 64
            assert ours["url"] == node.rt.ocpi.versions_url
            assert {(x["role"], x["country_code"], x["party_id"]) for x in ours["roles"]} == {
                ("CPO", "NL", "EVF"), ("EMSP", "NL", "EVF")}  # fmt: skip
            # we fetched its versions and details with its token B (not recorded: they are
            # open at the partner), token A died, token C opens the modules
            assert (await c.get("/ocpi/versions", headers=auth(token_a))).status_code == 401
            r = await c.get(MODULE, headers=auth(token_c))
            assert r.status_code == 200 and r.json()["status_code"] == 1000, r.text
            [row] = await rows(node)
            assert (row.status, row.country_code, row.party_id) == ("registered", "DE", "ABC")
            assert row.roles[0]["party_id"] == "ABC" and row.versions_url == partner.versions_url
            assert endpoint(row, "sessions", "RECEIVER") == partner.endpoints()[0]["url"]
            assert node.rt.ocpi.token_of(row) == "token-b"
            # GET answers the credentials the caller uses: the token it called with
            r = await c.get(CRED, headers=auth(token_c))
            assert r.json()["data"]["token"] == token_c
            # registered already: POST is 405
            r = await c.post(CRED, headers=auth(token_c), json=body_of(partner, "token-b2"))
            assert r.status_code == 405 and r.json()["status_code"] == 2000
            assert node.rt.ocpi.token_of((await rows(node))[0]) == "token-b"

            # PUT: new token B, new token C, the old C dies
            r = await c.put(CRED, headers=auth(token_c), json=body_of(partner, "token-b2"))
            assert r.status_code == 200 and r.json()["status_code"] == 1000, r.text
            token_c2 = r.json()["data"]["token"]
            assert token_c2 != token_c
            assert (await c.get(MODULE, headers=auth(token_c))).status_code == 401
            assert (await c.get(MODULE, headers=auth(token_c2))).status_code == 200
            assert node.rt.ocpi.token_of((await rows(node))[0]) == "token-b2"

            # an invitation's token A cannot PUT or DELETE: 405
            other_a = await invite(node, cc="FR", pid="XYZ")
            for method in ("PUT", "DELETE"):
                r = await c.request(method, CRED, headers=auth(other_a),
                                    json=body_of(partner, "t") if method == "PUT" else None)  # fmt: skip
                assert r.status_code == 405, (method, r.text)

            # DELETE: unregistered, token C dead, the row stays
            r = await c.delete(CRED, headers=auth(token_c2))
            assert r.status_code == 200 and r.json()["status_code"] == 1000, r.text
            assert (await c.get(MODULE, headers=auth(token_c2))).status_code == 401
            assert (await c.delete(CRED, headers=auth(token_c2))).status_code == 401
            row = (await rows(node))[0]
            assert (row.status, row.token_in_hash, row.token_out) == ("unregistered", None, None)
            while not q.empty():
                e = q.get_nowait()
                if e.topic.startswith("ocpi.partner."):
                    events.append((e.topic, e.data["partner_id"]))
        assert events == [("ocpi.partner.registered", row.id)] * 2 + [
            ("ocpi.partner.unregistered", row.id)
        ]


async def test_bad_registrations_keep_the_invitation(tmp_path):
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}") as node, \
            recording_partner() as partner:  # fmt: skip
        token_a = await invite(node)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.rt.http_port}") as c:
            good = body_of(partner, "token-b")
            r = await c.post(CRED, headers=auth(token_a), json={**good, "token": None})
            assert r.status_code == 200 and r.json()["status_code"] == 2001
            del good["token"]
            r = await c.post(CRED, headers=auth(token_a), json=good)
            assert r.json()["status_code"] == 2001 and "token" in r.json()["status_message"]
            bad_role = body_of(partner, "token-b")
            bad_role["roles"][0]["party_id"] = "TOOLONG"
            r = await c.post(CRED, headers=auth(token_a), json=bad_role)
            assert r.json()["status_code"] == 2001
            assert "roles.0.party_id" in r.json()["status_message"]
            r = await c.post(CRED, content=b"{not json",
                             headers={**auth(token_a), "Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 400 and r.json()["status_code"] == 2001
            # an invitation is for one party
            other = body_of(partner, "token-b")
            other["roles"][0]["party_id"] = "QQQ"
            r = await c.post(CRED, headers=auth(token_a), json=other)
            assert r.json()["status_code"] == 2001 and "DE/ABC" in r.json()["status_message"]
            # it speaks no 2.2.1: 3002
            versions = [{"version": "2.1.1", "url": f"{partner.base}/2.1.1"}]
            partner.app.get("/old/versions")(lambda: ok(versions))
            old = body_of(partner, "token-b", url=f"http://127.0.0.1:{partner.port}/old/versions")
            r = await c.post(CRED, headers=auth(token_a), json=old)
            assert r.json()["status_code"] == 3002 and "2.1.1" in r.json()["status_message"]
            # its versions cannot be fetched: 3001, nothing kept
            await partner.stop()
            r = await c.post(CRED, headers=auth(token_a), json=body_of(partner, "token-b"))
            assert r.status_code == 200 and r.json()["status_code"] == 3001, r.text
            [row] = await rows(node)
            assert (row.status, row.token_out, row.endpoints) == ("invited", None, [])
            # the invitation still works
            assert (await c.get("/ocpi/versions", headers=auth(token_a))).status_code == 200
            await partner.start(partner.port)
            r = await c.post(CRED, headers=auth(token_a), json=body_of(partner, "token-b"))
            assert r.json()["status_code"] == 1000, r.text


async def test_two_nodes_register_rotate_and_unregister(database_url, tmp_path):
    """Node A invites, node B registers with A's versions URL and token A."""
    async with running_node(database_url, ocpi_country_code="NL", ocpi_party_id="EVA",
                            ocpi_business_name="A") as a, \
            running_node(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", ocpi_country_code="DE",
                         ocpi_party_id="EVB", ocpi_business_name="B") as b:  # fmt: skip
        token_a = await invite(a, "EMSP", "de", "evb")
        with pytest.raises(credentials.RegistrationError) as refused:
            await credentials.register(b.rt.ocpi, a.rt.ocpi.versions_url, "not-the-token")
        assert refused.value.status_code == 3001 and await rows(b) == []
        # A refuses our POST (an invitation for another party): our handshake row goes
        wrong_party = await invite(a, "EMSP", "DE", "XXX")
        with pytest.raises(credentials.RegistrationError) as refused:
            await credentials.register(b.rt.ocpi, a.rt.ocpi.versions_url, wrong_party)
        assert "2001" in refused.value.message and await rows(b) == []
        at_b = await credentials.register(b.rt.ocpi, a.rt.ocpi.versions_url, token_a)
        at_a = (await rows(a))[0]
        assert (at_b.status, at_b.country_code, at_b.party_id, at_b.business_name) == (
            "registered", "NL", "EVA", "A")  # fmt: skip
        assert (at_a.status, at_a.party_id, at_a.versions_url) == (
            "registered", "EVB", b.rt.ocpi.versions_url)  # fmt: skip
        assert {r["role"] for r in at_a.roles} == {r["role"] for r in at_b.roles} == {"CPO", "EMSP"}

        async def can_call(x, partner) -> bool:
            """x calls the partner's Sessions sender with the token it keeps for it."""
            url = endpoint(partner, "sessions", "SENDER")
            try:
                await x.rt.ocpi.client.call("GET", url, x.rt.ocpi.token_of(partner))
            except PartnerError as exc:
                assert exc.http_status == 401, exc
                return False
            return True

        assert await can_call(b, at_b) and await can_call(a, at_a)
        # registering again with the same partner is refused, nothing added
        with pytest.raises(credentials.RegistrationError):
            await credentials.register(b.rt.ocpi, a.rt.ocpi.versions_url, token_a)
        assert len(await rows(b)) == 1

        # B rotates: new tokens both ways, the old ones die
        old_b, old_a = at_b, at_a
        at_b = await credentials.update(b.rt.ocpi, at_b)
        at_a = (await rows(a))[0]
        assert await can_call(b, at_b) and await can_call(a, at_a)
        assert not await can_call(b, old_b) and not await can_call(a, old_a)
        assert len(await rows(b)) == 1  # the handshake's row is gone

        # B unregisters: A is told, neither token works
        assert await credentials.unregister(b.rt.ocpi, at_b) is None
        at_a_now, still_invited = await rows(a)
        assert still_invited.status == "invited"
        assert at_a_now.status == "unregistered" and (await rows(b))[0].status == "unregistered"
        assert not await can_call(a, at_a) and not await can_call(b, at_b)


def test_cli_invite_prints_url_then_token_and_lists(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    args = ["--database-url", db]
    done = runner.invoke(cli_app, ["ocpi", "invite", "--role", "EMSP", "--country-code", "nl",
                                   "--party-id", "abc", "--name", "Friends", *args],
                         env={"EVFLEX_OCPI_BASE_URL": "https://csms.example.com"})  # fmt: skip
    assert done.exit_code == 0, done.output
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "https://csms.example.com/ocpi/versions"
    token_a = lines[-1]
    assert len(token_a) >= 32 and " " not in token_a
    done = runner.invoke(cli_app, ["ocpi", "partners", *args])
    assert done.exit_code == 0 and "EMSP NL/ABC" in done.stdout and "invited" in done.stdout
    done = runner.invoke(cli_app, ["ocpi", "invite", "--role", "BOSS", "--country-code", "NL",
                                   "--party-id", "ABC", *args])  # fmt: skip
    assert done.exit_code == 2 and "BOSS" in done.output
    done = runner.invoke(cli_app, ["ocpi", "unregister", "1", *args])
    assert done.exit_code == 0, done.output
    done = runner.invoke(cli_app, ["ocpi", "unregister", "7", *args])
    assert done.exit_code == 2 and "no OCPI partner 7" in done.output
    done = runner.invoke(cli_app, ["ocpi", "register", "--versions-url",
                                   "http://127.0.0.1:9/ocpi/versions", "--token", "x", *args])  # fmt: skip
    assert done.exit_code == 1 and "3001" in done.output


async def test_cli_registers_a_serving_node_with_a_partner(tmp_path):
    """``evflex ocpi register`` on the store of a node that serves (no node of its own):
    the partner fetches that node's versions with the token B the command offered."""
    b_db, b_key = tmp_path / "b.db", tmp_path / "b.key"
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", ocpi_party_id="EVA") as a, \
            running_node(f"sqlite+aiosqlite:///{b_db}", ocpi_party_id="EVB",
                         ocpi_key_file=b_key) as b:  # fmt: skip
        token_a = await invite(a, "CPO", "NL", "EVB")
        env = {"EVFLEX_OCPI_BASE_URL": b.rt.ocpi.base_url, "EVFLEX_OCPI_PARTY_ID": "EVB",
               "EVFLEX_OCPI_KEY_FILE": str(b_key)}  # fmt: skip
        args = ["ocpi", "register", "--versions-url", a.rt.ocpi.versions_url, "--token", token_a,
                "--database-url", f"sqlite+aiosqlite:///{b_db}"]  # fmt: skip
        # its own thread and event loop, as in its own process: the nodes keep serving
        done = await asyncio.to_thread(CliRunner().invoke, cli_app, args, env=env)
        assert done.exit_code == 0, done.output
        assert "Registered with partner 1" in done.stdout and "CPO NL/EVA" in done.stdout
        [at_a], [at_b] = await rows(a), await rows(b)
        assert (at_a.status, at_a.party_id, at_b.status, at_b.party_id) == (
            "registered", "EVB", "registered", "EVA")  # fmt: skip
        # the serving node uses what the command stored
        url = endpoint(at_b, "sessions", "SENDER")
        answer = await b.rt.ocpi.client.call("GET", url, b.rt.ocpi.token_of(at_b))
        assert answer.status_code == 1000
