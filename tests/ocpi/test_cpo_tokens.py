"""OCPI Tokens, our CPO role: the Receiver interface, and partners' cards at real
stations (the ``ocpp`` library's 1.6 and 2.0.1 ChargePoints), whitelisted or by
real-time authorization at a real eMSP endpoint."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time

import httpx
import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from sqlalchemy import func, select

from conftest import running_node
from evflex.ocpi.cpo import tokens
from evflex.store.ocpi_tables import OcpiToken
from ocpi.partner import Received, RecordingPartner, ok
from ocpp_clients import Lib16, Lib201, connected

BASE = "/ocpi/cpo/2.2.1/tokens"


def token(uid: str, whitelist: str = "ALWAYS", valid: bool = True, **extra) -> dict:
    return {"country_code": "DE", "party_id": "ABC", "uid": uid, "type": "RFID",
            "contract_id": f"DE-ABC-C{uid[:8]}", "issuer": "ABC Mobility", "valid": valid,
            "whitelist": whitelist, "last_updated": "2026-03-01T08:00:00Z", **extra}  # fmt: skip


class Emsp(RecordingPartner):
    """A RecordingPartner that is also an eMSP's tokens SENDER: it answers real-time
    authorization from ``answers`` (uid -> AllowedType; none: 404 + 2004) after
    ``delay`` seconds, and serves ``tokens`` as a paginated list."""

    def __init__(self) -> None:
        super().__init__([("tokens", "SENDER")])
        self.answers: dict[str, str] = {}
        self.delay = 0.0
        self.release = asyncio.Event()  # ends a delay at once (teardown)
        self.tokens: list[dict] = []
        app = self.app
        before = len(app.router.routes)

        @app.post("/ocpi/2.2.1/tokens/{uid}/authorize")
        async def authorize(request: Request, uid: str) -> JSONResponse:
            if not self._authorized(request):
                return ok(None, 2000, 401)
            body = orjson.loads(await request.body() or b"null")
            self.received.append(Received("POST", str(request.url), dict(request.headers), body))
            if self.fail_http is not None:
                return ok(None, 3000, self.fail_http)
            if self.delay:
                try:
                    await asyncio.wait_for(self.release.wait(), self.delay)
                except TimeoutError:
                    pass
            if uid not in self.answers:
                return ok(None, 2004, 404)
            return ok({"allowed": self.answers[uid], "token": token(uid, "NEVER"),
                       "authorization_reference": f"REF-{uid}"})  # fmt: skip

        @app.get("/ocpi/2.2.1/tokens")
        async def token_list(request: Request) -> JSONResponse:
            if not self._authorized(request):
                return ok(None, 2000, 401)
            self.received.append(Received("GET", str(request.url), dict(request.headers), None))
            offset = int(request.query_params.get("offset", 0))
            page = self.tokens[offset : offset + 100]
            reply = ok(page)
            if offset + 100 < len(self.tokens):
                reply.headers["Link"] = (
                    f'<{self.base}/2.2.1/tokens?offset={offset + 100}&limit=100>; rel="next"'
                )
            reply.headers["X-Total-Count"] = str(len(self.tokens))
            return reply

        routes = app.router.routes  # ours before the catch-all of RecordingPartner
        routes[0:0] = [routes.pop() for _ in range(len(routes) - before)]

    def _authorized(self, request: Request) -> bool:
        expected = base64.b64encode(self.token_for_us.encode()).decode()
        return request.headers.get("Authorization") == f"Token {expected}"

    def asked(self) -> list[Received]:
        return [r for r in self.received if r.path.split("?")[0].endswith("/authorize")]


async def boot16(cp: Lib16) -> None:
    await cp.call(call16.BootNotification(charge_point_vendor="Acme", charge_point_model="AC"))


async def boot201(cp: Lib201) -> None:
    await cp.call(call201.BootNotification(
        charging_station={"vendor_name": "Acme", "model": "AC"}, reason="PowerUp"))  # fmt: skip


@contextlib.asynccontextmanager
async def cpo_with(partner: RecordingPartner, database_url: str, prefix: str, **settings):
    """A node with ``partner`` linked, an HTTP client calling it as the partner, and two
    booted stations: ``{prefix}16`` (1.6) and ``{prefix}201`` (2.0.1)."""
    async with running_node(database_url, allow_unknown_stations=True, **settings) as node:
        pid = await partner.link(node)
        base = f"http://127.0.0.1:{node.rt.http_port}{BASE}"
        async with (
            httpx.AsyncClient(base_url=base, headers=partner.auth_header()) as c,
            connected(Lib16, node.ocpp_url, f"{prefix}16", "ocpp1.6") as cp16,
            connected(Lib201, node.ocpp_url, f"{prefix}201", "ocpp2.0.1") as cp201,
        ):
            await boot16(cp16)
            await boot201(cp201)
            yield node, pid, c, cp16, cp201


async def auth16(cp: Lib16, uid: str) -> str:
    return (await cp.call(call16.Authorize(id_tag=uid))).id_tag_info["status"]


async def auth201(cp: Lib201, uid: str) -> str:
    r = await cp.call(call201.Authorize(id_token={"id_token": uid, "type": "ISO14443"}))
    return r.id_token_info["status"]


async def count_tokens(node) -> int:
    async with node.rt.sessionmaker() as s:
        return await s.scalar(select(func.count()).select_from(OcpiToken))


async def test_receiver_put_get_patch_and_bad_input(tmp_path):
    partner = await RecordingPartner([("tokens", "SENDER")]).start()
    try:
        async with running_node(f"sqlite+aiosqlite:///{tmp_path / 't.db'}") as node:
            await partner.link(node)
            h = partner.auth_header()
            base = f"http://127.0.0.1:{node.rt.http_port}{BASE}"
            async with httpx.AsyncClient(base_url=base, headers=h) as c:
                # a peer's lower-case party: stored upper case; extension fields kept
                body = token("012345678", evflex_note="kept")
                body.update(country_code="de", party_id="abc")
                r = await c.put("/de/abc/012345678", json=body)
                assert (r.status_code, r.json()["status_code"]) == (201, 1000), r.text
                r = await c.put("/DE/ABC/012345678", json=body)  # again: replaced, no new row
                assert (r.status_code, r.json()["status_code"]) == (200, 1000)
                assert await count_tokens(node) == 1
                got = (await c.get("/DE/ABC/012345678")).json()
                assert got["status_code"] == 1000
                data = got["data"]
                assert (data["country_code"], data["party_id"]) == ("DE", "ABC")
                assert data["evflex_note"] == "kept" and data["valid"] is True
                assert data["last_updated"] == "2026-03-01T08:00:00.000Z"
                # unknown token, or known under another type: 404 + 2004
                for path in ("/DE/ABC/999", "/DE/ABC/012345678?type=APP_USER"):
                    r = await c.get(path)
                    assert (r.status_code, r.json()["status_code"]) == (404, 2004), path
                # PATCH: only what changes, twice the same
                patch = {"valid": False, "last_updated": "2026-03-01T09:00:00Z"}
                for _ in range(2):
                    r = await c.patch("/DE/ABC/012345678", json=patch)
                    assert r.json()["status_code"] == 1000, r.text
                data = (await c.get("/de/abc/012345678")).json()["data"]
                assert data["valid"] is False and data["issuer"] == "ABC Mobility"
                assert data["last_updated"] == "2026-03-01T09:00:00.000Z"
                assert await count_tokens(node) == 1
                r = await c.patch("/DE/ABC/012345678", json={"valid": True})
                assert r.json()["status_code"] == 2001 and "last_updated" in r.text
                r = await c.patch("/DE/ABC/012345678", json={"valid": "perhaps",
                                                             "last_updated": "2026-03-02T00:00:00Z"})  # fmt: skip
                assert r.json()["status_code"] == 2001 and "valid" in r.text
                r = await c.patch("/DE/ABC/nope", json=patch)
                assert (r.status_code, r.json()["status_code"]) == (404, 2004)
                # malformed PUTs: 2001 naming the field, nothing stored
                bad = token("BAD1", whitelist="SOMETIMES")
                del bad["issuer"]
                r = await c.put("/DE/ABC/BAD1", json=bad)
                assert (r.status_code, r.json()["status_code"]) == (200, 2001)
                assert "whitelist" in r.json()["status_message"]
                assert "issuer" in r.json()["status_message"]
                r = await c.put("/DE/ABC/BAD2", json=token("X" * 37))
                assert r.json()["status_code"] == 2001 and "uid" in r.text
                r = await c.put("/DE/ABC/OTHER", json=token("BAD3"))  # not the URL's uid
                assert r.json()["status_code"] == 2001 and "uid" in r.text
                r = await c.put("/DE/ABC/BAD4?type=APP_USER", json=token("BAD4"))
                assert r.json()["status_code"] == 2001 and "type" in r.text
                r = await c.put("/DE/ABC/BAD5", content=b"{not json",
                                headers={"Content-Type": "application/json"})  # fmt: skip
                assert r.status_code == 400 and r.json()["status_code"] == 2001
                # another party's tokens: refused, nothing stored
                other = token("T2")
                other.update(country_code="NL", party_id="XYZ")
                r = await c.put("/NL/XYZ/T2", json=other)
                assert r.json()["status_code"] == 2001 and "NL/XYZ" in r.text
                assert (await c.get("/NL/XYZ/T2")).json()["status_code"] == 2001
                assert await count_tokens(node) == 1
                r = await c.get("/DE/ABC/012345678", headers={"Authorization": "Token nope"})
                assert r.status_code == 401
    finally:
        await partner.stop()


async def test_whitelisted_tokens_at_16_and_201_stations(database_url):
    partner = await RecordingPartner([("tokens", "SENDER")]).start()
    try:
        async with cpo_with(partner, database_url, "T") as (node, pid, c, cp16, cp201):
            r = await c.put("/DE/ABC/04A1B2C3", json=token("04A1B2C3", group_id="G-1"))
            assert r.json()["status_code"] == 1000
            # the reader's hex in lower case is the same card
            assert await auth16(cp16, "04a1b2c3") == "Accepted"
            assert await auth201(cp201, "04A1B2C3") == "Accepted"
            start = await cp16.call(call16.StartTransaction(
                connector_id=1, id_tag="04A1B2C3", meter_start=0,
                timestamp="2026-03-01T08:00:00Z"))  # fmt: skip
            assert start.id_tag_info == {"status": "Accepted", "parent_id_tag": "G-1"}
            how = await tokens.authorization_for(node.rt.ocpi, "T16", "04A1B2C3")
            assert how["auth_method"] == "WHITELIST" and how["partner_id"] == pid
            assert (how["country_code"], how["party_id"], how["uid"]) == ("DE", "ABC",
                                                                          "04A1B2C3")  # fmt: skip
            assert how["contract_id"] == "DE-ABC-C04A1B2C3"
            # the eMSP invalidates it
            r = await c.patch("/DE/ABC/04A1B2C3",
                              json={"valid": False, "last_updated": "2026-03-01T10:00:00Z"})  # fmt: skip
            assert r.json()["status_code"] == 1000
            assert await auth16(cp16, "04A1B2C3") == "Blocked"
            assert await auth201(cp201, "04A1B2C3") == "Blocked"
            # admission (the load manager's rule) applies to partners' cards too
            await c.patch("/DE/ABC/04A1B2C3",
                          json={"valid": True, "last_updated": "2026-03-01T11:00:00Z"})  # fmt: skip

            async def full(station_id, evse_id):
                return "site full"

            saved, node.rt.service.admission = node.rt.service.admission, full
            try:
                assert await auth201(cp201, "04A1B2C3") == "NotAtThisTime"
                assert await auth16(cp16, "04A1B2C3") == "Blocked"
            finally:
                node.rt.service.admission = saved
            assert await auth201(cp201, "04A1B2C3") == "Accepted"
            # a card nobody knows: as before
            assert await auth16(cp16, "NOPE") == "Invalid"
            assert await auth201(cp201, "NOPE") == "Unknown"
            assert partner.received == []  # ALWAYS: never asked

            # a token the eMSP sent with START_SESSION (never pushed): the eMSP
            # authorized it, at that station only
            await cp16.call(call16.StatusNotification(
                connector_id=2, error_code="NoError", status="Available"))  # fmt: skip
            command = {"response_url": f"{partner.base}/2.2.1/commands/START_SESSION/9",
                       "token": token("App-9", type="APP_USER"), "location_id": "T16",
                       "evse_uid": "T16-2", "authorization_reference": "AUTH-9"}  # fmt: skip
            r = await c.post(f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1/"
                             "commands/START_SESSION", json=command)  # fmt: skip
            assert r.json()["data"]["result"] == "ACCEPTED", r.text
            await node.wait_for(lambda: ("RemoteStartTransaction", {"connector_id": 2,
                                "id_tag": "App-9"}) in cp16.received)  # fmt: skip
            start = await cp16.call(call16.StartTransaction(
                connector_id=2, id_tag="App-9", meter_start=0,
                timestamp="2026-03-01T09:00:00Z"))  # fmt: skip
            assert start.id_tag_info["status"] == "Accepted"
            how = await tokens.authorization_for(node.rt.ocpi, "T16", "App-9")
            assert (how["auth_method"], how["authorization_reference"]) == ("COMMAND",
                                                                            "AUTH-9")  # fmt: skip
            assert (how["type"], how["partner_id"]) == ("APP_USER", pid)
            assert await auth201(cp201, "App-9") == "Unknown"
    finally:
        await partner.stop()


async def test_real_time_authorization_answers_are_used(tmp_path):
    emsp = await Emsp().start()
    try:
        url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
        async with cpo_with(emsp, url, "R") as (node, _, c, cp16, cp201):
            answers = {"RT-OK": "ALLOWED", "RT-BLK": "BLOCKED", "RT-EXP": "EXPIRED",
                       "RT-CASH": "NO_CREDIT", "RT-NOT": "NOT_ALLOWED"}  # fmt: skip
            for uid in [*answers, "RT-GONE"]:
                r = await c.put(f"/DE/ABC/{uid}", json=token(uid, "NEVER"))
                assert r.json()["status_code"] == 1000
            emsp.answers = answers  # RT-GONE: the eMSP no longer knows it

            assert await auth16(cp16, "RT-OK") == "Accepted"
            (asked,) = emsp.asked()
            assert asked.path.endswith("/ocpi/2.2.1/tokens/RT-OK/authorize?type=RFID")
            assert asked.body == {"location_id": "R16"}
            assert asked.headers["ocpi-to-party-id"] == "ABC"
            # StartTransaction right after: the same use, not asked again
            start = await cp16.call(call16.StartTransaction(
                connector_id=1, id_tag="RT-OK", meter_start=0,
                timestamp="2026-03-01T08:00:00Z"))  # fmt: skip
            assert start.id_tag_info["status"] == "Accepted"
            assert len(emsp.asked()) == 1
            how = node.rt.ocpi.state["token_auth"][("R16", "RT-OK")]
            assert how["auth_method"] == "AUTH_REQUEST"
            assert how["authorization_reference"] == "REF-RT-OK"

            # 2.0.1: a TransactionEvent that starts a session names the EVSE
            r = await cp201.call(call201.TransactionEvent(
                event_type="Started", timestamp="2026-03-01T08:00:00Z",
                trigger_reason="Authorized", seq_no=0,
                transaction_info={"transaction_id": "tx-rt-1"},
                id_token={"id_token": "RT-NOT", "type": "ISO14443"},
                evse={"id": 2, "connector_id": 1}))  # fmt: skip
            assert r.id_token_info["status"] == "NotAtThisLocation"
            assert emsp.asked()[-1].body == {"location_id": "R201", "evse_uids": ["R201-2"]}

            expect16 = {"RT-BLK": "Blocked", "RT-EXP": "Expired", "RT-CASH": "Invalid",
                        "RT-NOT": "Invalid", "RT-GONE": "Invalid"}  # fmt: skip
            expect201 = {"RT-BLK": "Blocked", "RT-EXP": "Expired", "RT-CASH": "NoCredit",
                         "RT-NOT": "NotAtThisLocation", "RT-GONE": "Invalid"}  # fmt: skip
            for uid in expect16:
                assert await auth16(cp16, uid) == expect16[uid], uid
                assert await auth201(cp201, uid) == expect201[uid], uid
            # refusals are asked again each time (the eMSP may have changed its mind)
            before = len(emsp.asked())
            assert await auth201(cp201, "RT-BLK") == "Blocked"
            assert len(emsp.asked()) == before + 1
    finally:
        await emsp.stop()


async def test_slow_or_down_emsp_decided_by_whitelist_within_the_timeout(tmp_path):
    emsp = await Emsp().start()
    timeout = 0.3
    try:
        url = f"sqlite+aiosqlite:///{tmp_path / 's.db'}"
        settings = {"ocpi_authorize_timeout_s": timeout}
        async with cpo_with(emsp, url, "S", **settings) as (node, _, c, cp16, cp201):
            cards = {("NEVER", True): "Invalid", ("ALLOWED", True): "Accepted",
                     ("ALLOWED_OFFLINE", True): "Accepted",
                     ("ALLOWED_OFFLINE", False): "Blocked"}  # fmt: skip
            for (whitelist, valid), _ in cards.items():
                uid = f"{whitelist[:9]}-{valid:d}"  # 1.6: idTag of 20 characters at most
                r = await c.put(f"/DE/ABC/{uid}", json=token(uid, whitelist, valid))
                assert r.json()["status_code"] == 1000
                emsp.answers[uid] = "ALLOWED"  # would allow, if it answered in time
            emsp.delay = 5.0
            for (whitelist, valid), expected in cards.items():
                uid = f"{whitelist[:9]}-{valid:d}"
                for auth in (auth16, auth201):
                    t0 = time.monotonic()
                    assert await auth(cp16 if auth is auth16 else cp201, uid) == expected
                    took = time.monotonic() - t0
                    assert timeout * 0.9 <= took < timeout + 1, (uid, took)
            assert len(emsp.asked()) == 2 * len(cards)
            how = node.rt.ocpi.state["token_auth"][("S16", "ALLOWED-1")]
            assert how["auth_method"] == "WHITELIST"
            assert how["authorization_reference"] is None
            # broken (HTTP 503), then down altogether: the same decisions, at once
            emsp.delay, emsp.fail_http = 0.0, 503
            emsp.release.set()
            for broken in (True, False):
                if not broken:
                    await emsp.stop()
                for (whitelist, valid), expected in cards.items():
                    t0 = time.monotonic()
                    assert await auth201(cp201, f"{whitelist[:9]}-{valid:d}") == expected
                    assert time.monotonic() - t0 < timeout
            assert len(emsp.asked()) == 3 * len(cards)  # the 503s were asked
    finally:
        emsp.release.set()
        if not emsp.down:
            await emsp.stop()


async def test_a_partners_token_list_is_fetched_when_it_registers(tmp_path):
    emsp = await Emsp().start()
    emsp.tokens = [token(f"L{i:04d}") for i in range(230)]
    stranger = token("ELSE")
    stranger.update(country_code="NL", party_id="XYZ")  # not the partner's party: skipped
    broken = token("BROKEN")
    del broken["whitelist"]  # malformed: skipped, the rest still stored
    emsp.tokens += [stranger, broken]
    try:
        async with running_node(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}") as node:
            pid = await emsp.link(node)
            node.rt.bus.publish("ocpi.partner.registered", None, partner_id=pid)

            async def stored():
                return await count_tokens(node) == 230

            await node.wait_for(stored, timeout=10)
            pages = [r.path.split("?")[-1] for r in emsp.received if r.method == "GET"]
            assert pages[0].endswith("/tokens") and pages[1:] == [
                "offset=100&limit=100", "offset=200&limit=100"]  # fmt: skip
            async with node.rt.sessionmaker() as s:
                row = await tokens.find_token(s, "de", "abc", "l0229")
            assert row is not None and row.partner_id == pid and row.whitelist == "ALWAYS"
    finally:
        await emsp.stop()
