"""OCPI partners in the REST API (/api/v1/ocpi/...): invitations, the partner list with its
delivery state, a partner's outbox, retry now, unregister; roles; the audit trail.
And the outbox's reliability: a partner down for long, a restart, PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter

import httpx

from conftest import Node, running_node
from evflex.ocpi.outbox import BATCH
from ocpi.partner import RecordingPartner

API = "/api/v1/ocpi"


def _client(node: Node, role: str) -> httpx.AsyncClient:
    token = node.rt.auth.ephemeral_token(role, name=f"a {role}")
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{node.rt.http_port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


async def _partner(node: Node, pid: int) -> dict:
    r = await node.http.get(f"{API}/partners/{pid}")
    assert r.status_code == 200, r.text
    return r.json()


async def _push(node: Node, pid: int, key: str, body: dict) -> None:
    await node.rt.ocpi.outbox.push([pid], "sessions", key, "PUT", f"/NL/EVF/{key}", body)


async def test_invitations_refuse_bad_input_and_only_admins_make_them(tmp_path):
    async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'i.db'}") as node:
        admin = node.http
        r = await admin.get(f"{API}/settings")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "country_code": "NL", "party_id": "EVF", "business_name": "evflex",
            "roles": ["CPO", "EMSP"], "base_url": f"http://127.0.0.1:{node.rt.http_port}",
            "versions_url": f"http://127.0.0.1:{node.rt.http_port}/ocpi/versions",
        }  # fmt: skip

        bad = [
            ({"role": "EMSP", "country_code": "N1", "party_id": "ABC"}, "country code 'N1'"),
            ({"role": "EMSP", "country_code": "NL", "party_id": "AB"}, "party id 'AB'"),
            ({"role": "DRIVER", "country_code": "NL", "party_id": "ABC"}, "role 'DRIVER'"),
        ]
        for body, reason in bad:
            r = await admin.post(f"{API}/invitations", json=body)
            assert r.status_code == 422 and reason in r.json()["detail"], r.text
        r = await admin.post(f"{API}/invitations", json={"role": "EMSP", "country_code": "NL",
                                                           "party_id": "ABC", "x": 1})  # fmt: skip
        assert r.status_code == 422 and "x" in r.text
        r = await admin.post(f"{API}/invitations", content=b"{not json",
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 422
        good = {"role": "emsp", "country_code": "de", "party_id": "xy1", "name": "Roam App"}
        for role in ("viewer", "operator"):
            async with _client(node, role) as c:
                r = await c.post(f"{API}/invitations", json=good)
                assert r.status_code == 403, r.text
                assert (await c.get(f"{API}/partners")).status_code == 200
        assert (await admin.get(f"{API}/partners")).json() == []  # nothing half-made

        r = await admin.post(f"{API}/invitations", json=good)
        assert r.status_code == 201, r.text
        inv = r.json()
        assert inv["role"] == "EMSP" and (inv["country_code"], inv["party_id"]) == ("DE", "XY1")
        assert inv["versions_url"] == f"http://127.0.0.1:{node.rt.http_port}/ocpi/versions"
        [p] = (await admin.get(f"{API}/partners")).json()
        assert p["id"] == inv["id"] and p["status"] == "invited" and "token" not in json.dumps(p)
        assert p["business_name"] == "Roam App" and p["delivery"] == "none"
        assert p["roles"] == [{"role": "EMSP", "country_code": "DE", "party_id": "XY1",
                               "name": None}]  # fmt: skip
        assert (p["queue_depth"], p["sent"], p["failed"], p["modules"]) == (0, 0, 0, [])
        # the token A opens our versions, until the invitation is withdrawn
        token = base64.b64encode(inv["token"].encode()).decode()
        async with httpx.AsyncClient(base_url=str(admin.base_url)) as ocpi:
            versions = {"Authorization": f"Token {token}"}
            assert (await ocpi.get("/ocpi/versions", headers=versions)).status_code == 200
            async with _client(node, "operator") as c:
                assert (await c.delete(f"{API}/partners/{inv['id']}")).status_code == 403
            r = await admin.delete(f"{API}/partners/{inv['id']}")
            assert r.status_code == 200 and r.json()["status"] == "unregistered", r.text
            assert r.json()["problem"] is None
            r = await admin.delete(f"{API}/partners/{inv['id']}")
            assert r.status_code == 409 and "unregistered already" in r.json()["detail"]
            assert (await ocpi.get("/ocpi/versions", headers=versions)).status_code == 401
        assert (await admin.delete(f"{API}/partners/999")).status_code == 404
        assert (await admin.get(f"{API}/partners/999")).status_code == 404
        assert (await admin.get(f"{API}/partners/0")).status_code == 422
        assert (await admin.post(f"{API}/partners/999/retry")).status_code == 404

        # the trail has the changes, who made them and on what; not the token
        async def audited():
            r = await admin.get("/api/v1/audit", params={"limit": 100})
            rows = [e for e in r.json() if (e["route"] or "").startswith(API)]
            return rows if any(e["action"] == "partner retry" for e in rows) else None

        rows = await node.wait_for(audited)
        made = [e for e in rows if e["action"] == "invitation create" and e["status"] == 201]
        assert len(made) == 1 and made[0]["actor"] == "token:in-process"
        assert made[0]["summary"]["party_id"] == "xy1"
        refused = [e for e in rows if e["action"] == "invitation create" and e["status"] == 403]
        assert sorted((e["actor"], e["role"]) for e in refused) == [
            ("token:a operator", "operator"), ("token:a viewer", "viewer")]  # fmt: skip
        assert len([e for e in rows if e["action"] == "invitation create"]) == len(bad) + 5
        gone = [e for e in rows if e["action"] == "partner delete" and e["status"] == 200]
        assert [e["target"] for e in gone] == [f"partner {inv['id']}"]
        assert inv["token"] not in json.dumps(rows)


async def test_a_partners_delivery_outbox_retry_now_and_unregister(tmp_path):
    partner = await RecordingPartner([("sessions", "RECEIVER"), ("credentials", "SENDER")]).start()
    url = f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"
    try:
        async with running_node(url, ocpi_retry_max_s=60) as node:
            admin = node.http
            pid = await partner.link(node)
            p = await _partner(node, pid)
            assert p["status"] == "registered" and p["versions_url"] == partner.versions_url
            assert p["modules"][0] == {"identifier": "sessions", "role": "RECEIVER",
                                       "url": f"{partner.base}/2.2.1/sessions"}  # fmt: skip
            assert p["roles"][0] == {"role": "EMSP", "country_code": "DE", "party_id": "ABC",
                                     "name": "Test partner"}  # fmt: skip

            partner.fail_http = 503  # down
            for i in range(3):
                await _push(node, pid, "S1", {"n": i})
            await node.wait_for(lambda: len(partner.received) >= 2, timeout=5)  # tried twice
            p = await _partner(node, pid)
            assert (p["queue_depth"], p["sent"], p["delivery"]) == (3, 0, "retrying")
            assert "HTTP 503" in p["last_error"] and p["last_success_at"] is None
            r = await admin.get(f"{API}/partners/{pid}/outbox")
            rows = r.json()
            assert [x["path"] for x in rows] == ["/NL/EVF/S1"] * 3
            assert rows[0]["attempts"] >= 1 and "503" in rows[0]["last_error"]
            assert [x["id"] for x in rows] == sorted(x["id"] for x in rows)  # as they go out
            async with _client(node, "viewer") as viewer:
                assert (await viewer.get(f"{API}/partners/{pid}/outbox")).status_code == 403
                assert (await viewer.post(f"{API}/partners/{pid}/retry")).status_code == 403
                assert (await viewer.get(f"{API}/partners/{pid}")).status_code == 200

            # back: the backoff would wait 2 s more; "retry now" sends at once
            partner.fail_http = None
            async with _client(node, "operator") as op:
                started = time.monotonic()
                r = await op.post(f"{API}/partners/{pid}/retry")
                assert r.status_code == 200 and r.json()["id"] == pid, r.text
            await node.wait_for(lambda: len(partner.of("sessions")) >= 5, timeout=5)
            assert time.monotonic() - started < 1.5
            assert [x.body for x in partner.received[-3:]] == [{"n": 0}, {"n": 1}, {"n": 2}]

            async def delivered():
                p = await _partner(node, pid)
                return p if p["queue_depth"] == 0 and p["sent"] == 3 else None

            p = await node.wait_for(delivered)
            assert p["delivery"] == "ok" and p["last_success_at"] >= p["last_error_at"], str(p)
            sent = (await admin.get(f"{API}/partners/{pid}/outbox?state=sent&limit=2")).json()
            assert [x["outcome"] for x in sent] == ["sent", "sent"]
            assert sent[0]["id"] > sent[1]["id"]  # the latest first

            # refused for good: shown as failed with the partner's reason
            partner.fail_ocpi = 2001
            await _push(node, pid, "S2", {"bad": True})

            async def failed():
                r = await admin.get(f"{API}/partners/{pid}/outbox?state=failed")
                return r.json() or None

            [f] = await node.wait_for(failed)
            assert f["object_key"] == "S2" and "OCPI 2001" in f["last_error"]
            r = await admin.get(f"{API}/partners/{pid}/outbox?state=done")
            assert r.status_code == 422

            # unregistered while a push waits: its token is refused, the push is given up
            partner.fail_ocpi = None
            partner.fail_http = 503
            await _push(node, pid, "S3", {"late": True})
            await node.wait_for(lambda: any(x.body == {"late": True} for x in partner.received))
            r = await admin.delete(f"{API}/partners/{pid}")
            assert r.status_code == 200 and r.json()["status"] == "unregistered"
            # it was told (a DELETE of its credentials), and it could not take it: said so
            assert partner.of("credentials", "DELETE") and "HTTP 503" in r.json()["problem"]

            async def given_up():
                p = await _partner(node, pid)
                return p if p["queue_depth"] == 0 else None

            p = await node.wait_for(given_up)
            assert p["failed"] == 2
            rows = (await admin.get(f"{API}/partners/{pid}/outbox?state=failed")).json()
            assert rows[0]["last_error"] == "partner not registered"
            async with httpx.AsyncClient(base_url=str(admin.base_url)) as c:
                r = await c.get("/ocpi/versions", headers=partner.auth_header())
                assert r.status_code == 401
    finally:
        await partner.stop()


OBJECTS, UPDATES = 5, 100  # 500 queued updates


async def _queue(node: Node, pid: int, first: int, count: int) -> None:
    """``count`` updates of each object, numbered from ``first``; objects side by side."""
    for n in range(first, first + count):
        await asyncio.gather(*(_push(node, pid, f"S{k}", {"n": n}) for k in range(OBJECTS)))


async def test_a_partner_down_for_long_gets_every_update_in_order_after_our_restart(
    database_url, tmp_path
):
    """Down, then gone, while 500 updates queue and the node restarts; once back it gets them
    all, each object's in order. While down it is tried with one request per retry."""
    key = tmp_path / "ocpi.key"
    settings = dict(ocpi_key_file=key, ocpi_retry_max_s=0.2)  # the backoff's cap
    partner = await RecordingPartner([("sessions", "RECEIVER")]).start()
    try:
        async with running_node(database_url, **settings) as node:
            pid = await partner.link(node)
            partner.fail_http = 503  # broken: answers, but only errors
            await _queue(node, pid, 0, UPDATES // 2)
            await node.wait_for(lambda: len(partner.received) >= 8, timeout=10)
            # the retries are capped (0.2 s); the first try went to each object's oldest
            # row, every retry since is one request: the oldest row of all
            tries = Counter((r.path.rsplit("/", 1)[1], r.body["n"]) for r in partner.received)
            assert tries[("S0", 0)] >= 4 and set(tries) <= {(f"S{k}", 0) for k in range(OBJECTS)}
            assert all(tries[(f"S{k}", 0)] <= 1 for k in range(1, OBJECTS)), tries
            await partner.stop()  # gone: no answer at all
            await _queue(node, pid, UPDATES // 2, UPDATES // 2)
            assert (await node.rt.ocpi.outbox.depth()) == {pid: OBJECTS * UPDATES}
        # we stopped with every row queued; the partner comes back while we are down
        await partner.start(partner.port)
        partner.fail_http = None
        tried = len(partner.received)
        async with running_node(database_url, **settings) as node:
            await node.wait_for(lambda: node.rt.ocpi.outbox.sent.get(pid, 0) >= OBJECTS * UPDATES,
                                timeout=60)  # fmt: skip
            assert (await node.rt.ocpi.outbox.depth()) == {}
            r = await node.http.get(f"{API}/partners/{pid}")
            assert r.json()["sent"] == OBJECTS * UPDATES and r.json()["delivery"] == "ok"
        got = partner.received[tried:]
        assert len(got) == OBJECTS * UPDATES  # each once
        for k in range(OBJECTS):
            path = f"/ocpi/2.2.1/sessions/NL/EVF/S{k}"
            assert [r.body["n"] for r in got if r.path == path] == list(range(UPDATES))
    finally:
        if not partner.down:
            await partner.stop()


async def test_an_object_the_partner_keeps_refusing_does_not_hold_back_the_others(tmp_path):
    """More rows of one object than a round reads, refused (OCPI 3000) again and again: the
    objects queued after it still go, and it goes, in order, once the partner takes it."""
    partner = await RecordingPartner([("sessions", "RECEIVER")]).start()
    try:
        async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'h.db'}",
                                ocpi_retry_max_s=0.2) as node:  # fmt: skip
            pid = await partner.link(node)
            partner.fail_ocpi_for["/STUCK"] = 3000
            for n in range(BATCH + 50):
                await _push(node, pid, "STUCK", {"n": n})
            for n in range(3):
                await _push(node, pid, "LATER", {"n": n})

            def later():
                return [r.body["n"] for r in partner.received if r.path.endswith("/LATER")]

            await node.wait_for(lambda: later() == [0, 1, 2], timeout=10)
            stuck = [r.body["n"] for r in partner.received if r.path.endswith("/STUCK")]
            assert set(stuck) == {0}  # only its oldest row was tried, again and again
            del partner.fail_ocpi_for["/STUCK"]
            await node.wait_for(lambda: node.rt.ocpi.outbox.sent.get(pid, 0) == BATCH + 53,
                                timeout=30)  # fmt: skip
            stuck = [r.body["n"] for r in partner.received if r.path.endswith("/STUCK")]
            assert stuck[len(stuck) - BATCH - 50 :] == list(range(BATCH + 50))
    finally:
        await partner.stop()
