"""Interop with an independent OCPI 2.2.1 implementation: ``extrawest-ocpi`` as the eMSP.

The peer is the library's own application (``py_ocpi.get_application``) in a process
and a virtual environment of its own (tests/ocpi/peer/emsp_peer.py, conftest.py); evflex
is the CPO, on SQLite and on PostgreSQL; stations are the ``ocpp`` library's 1.6
ChargePoint. Each database kind has one node for the module, registered with the peer the
way ``evflex ocpi register`` does it; the other direction (the peer registers with our
invitation) has a node of its own.

In case, the library lower-cases every CiString its pydantic models validate
(``CI_STRING_LOWERCASE_PREFERENCE``, on by default): the country_code and party_id of
its credentials ("de", "xwe"), a Token's country_code, party_id, uid and contract_id, a
StartSession's location_id, evse_uid and connector_id, and what it keeps of our
Locations, Sessions and CDRs. Its token push puts its settings in the path as they are
("/DE/XWE/<uid as given>"). A CiString is case-insensitive in OCPI, so evflex must treat
those as the same party, token and location.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from ocpp.v16 import call
from typer.testing import CliRunner

from conftest import (
    Node,
    _create_pg_database,
    _drop_pg_database,
    _pg_reachable,
    running_node,
)
from evflex.cli import app as cli
from evflex.store.ocpi_tables import OcpiPartner, OcpiToken
from ocpp_clients import Lib16, connected

pytestmark = pytest.mark.asyncio(loop_scope="module")

MV = "Energy.Active.Import.Register"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db_kind(request) -> str:
    return request.param


@contextlib.asynccontextmanager
async def fresh_database(kind: str, folder) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder / 'evflex.db'}"
        return
    if not await _pg_reachable():
        pytest.skip("no PostgreSQL server reachable")
    name, url = await _create_pg_database()
    try:
        yield url
    finally:
        await _drop_pg_database(name)


@contextlib.asynccontextmanager
async def cpo_node(kind: str, folder) -> AsyncIterator[Node]:
    """A node on a fresh database: it registers unknown stations, sends every Session
    update at once and retries a failed push soon."""
    async with fresh_database(kind, folder) as url:
        async with running_node(
            url,
            allow_unknown_stations=True,
            ocpi_key_file=folder / "ocpi.key",
            ocpi_session_update_s=0.0,
            ocpi_retry_max_s=0.5,
        ) as node:
            yield node


async def evflex(node: Node, folder, *args: str, exit_code: int = 0) -> list[str]:
    """Run ``evflex ARGS`` (the CLI, as an operator would, beside the running node: same
    database, key file and public URL); its output lines (standard error too). In a
    thread: the node answers meanwhile in this loop."""
    config = folder / "evflex-cli.toml"
    config.write_text(
        f'database_url = "{node.rt.settings.database_url}"\n'
        f'ocpi_key_file = "{node.rt.settings.ocpi_key_file}"\n'
        f'ocpi_base_url = "{node.rt.ocpi.base_url}"\n'
    )
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--config", str(config)], catch_exceptions=False
    )
    assert result.exit_code == exit_code, result.output
    return result.output.strip().splitlines()


async def invite(node: Node, folder, role: str, cc: str, pid: str) -> str:
    """``evflex ocpi invite``: its last line is the token A."""
    out = await evflex(node, folder, "ocpi", "invite", "--role", role,
                       "--country-code", cc, "--party-id", pid)  # fmt: skip
    assert out[-2] == node.rt.ocpi.versions_url, out
    return out[-1]


async def register(node: Node, folder, versions_url: str, token: str) -> list[str]:
    """``evflex ocpi register``: we register with a partner that gave us ``token``."""
    return await evflex(node, folder, "ocpi", "register", "--versions-url", versions_url,
                        "--token", token)  # fmt: skip


async def partners_of(node: Node) -> list[dict]:
    async with node.rt.sessionmaker() as s:
        rows = (await s.execute(OcpiPartner.__table__.select())).mappings().all()
    return [dict(r) for r in rows]


async def our_partner(node: Node, versions_url: str) -> Any:
    """Our record of the partner at ``versions_url`` (its row), if any."""
    async with node.rt.sessionmaker() as s:
        rows = (await s.execute(OcpiPartner.__table__.select())).mappings().all()
    found = [r for r in rows if r["versions_url"] == versions_url]
    return found[-1] if found else None


async def tokens_of(node: Node, uid: str) -> list[dict]:
    """Our rows of partners' tokens with this uid (whatever its case)."""
    async with node.rt.sessionmaker() as s:
        rows = (await s.execute(OcpiToken.__table__.select())).mappings().all()
    return [dict(r) for r in rows if r["uid"].lower() == uid.lower()]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": "Token " + base64.b64encode(token.encode()).decode()}


def lower(value: Any) -> str:
    return json.dumps(value).lower()


@dataclass
class Link:
    """A node registered with the peer; ``url`` is how the peer knows it (its versions URL)."""

    node: Node
    peer: Any  # conftest.PeerEmsp
    url: str
    registration: Any

    async def received(self, module: str) -> list[dict]:
        """The objects of ``module`` this node pushed to the peer, as the peer keeps them."""
        return (await self.peer.state(self.url))["objects"][module]

    async def wait_received(self, module: str, predicate, timeout: float = 10.0) -> dict:
        """The first object of ``module`` at the peer that ``predicate`` accepts."""

        async def found():
            return next((o for o in await self.received(module) if predicate(o)), None)

        try:
            return await self.node.wait_for(found, timeout=timeout)
        except AssertionError:
            calls = await self.peer.requests(self.url)
            raise AssertionError(
                f"no such {module} object at the peer; it received:\n"
                + "\n".join(json.dumps(c)[:1500] for c in calls[-12:])
            ) from None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def link(db_kind, tmp_path_factory, peer_emsp) -> AsyncIterator[Link]:
    """A node registered with the peer with a token A the peer gave (we are the sender)."""
    async with cpo_node(db_kind, tmp_path_factory.mktemp(f"link-{db_kind}")) as node:
        invitation = await peer_emsp.invite()
        folder = tmp_path_factory.mktemp(f"cli-{db_kind}")
        result = await register(node, folder, invitation["versions_url"], invitation["token"])
        yield Link(node, peer_emsp, node.rt.ocpi.versions_url, result)


async def boot(cp: Lib16, connectors: int = 1) -> None:
    await cp.call(call.BootNotification(charge_point_vendor="Acme", charge_point_model="AC22"))
    for c in range(connectors + 1):
        await cp.call(call.StatusNotification(
            connector_id=c, error_code="NoError", status="Available"))  # fmt: skip


def of_station(station_id: str, evses: int = 1):
    """A Location that has (at least ``evses``) EVSEs of this station (ids are lower case
    at the peer)."""
    return lambda loc: len(evses_of(loc, station_id)) >= evses


def evses_of(location: dict, station_id: str) -> list[dict]:
    return [e for e in location.get("evses") or () if station_id.lower() in lower(e)]


# ---------------------------------------------------------------- registration


async def test_the_peer_registers_with_an_invitation_of_ours(db_kind, tmp_path_factory, peer_emsp):
    folder = tmp_path_factory.mktemp(f"invited-{db_kind}")
    await peer_emsp.issue_token("XWPULL01")  # ours to fetch once it is registered
    async with cpo_node(db_kind, folder) as node:
        # a token the peer never gave: it refuses (HTTP 401 {"detail": "Unauthorized"},
        # no OCPI envelope); we say so and keep nothing
        out = await evflex(node, folder, "ocpi", "register", "--versions-url",
                           peer_emsp.versions_url, "--token", "not-a-token-of-the-peer",
                           exit_code=1)  # fmt: skip
        assert "401" in out[-1] and peer_emsp.versions_url in out[-1], out
        assert await partners_of(node) == []
        token_a = await invite(node, folder, "EMSP", "DE", "XWE")
        ours = node.rt.ocpi.versions_url
        result = await peer_emsp.register_with(ours, token_a)
        assert result["ok"], json.dumps(result, indent=1)[:4000]
        # what the library sends: its own party in lower case
        role = result["posted"]["roles"][0]
        assert (role["role"], role["country_code"], role["party_id"]) == ("EMSP", "de", "xwe")
        # our answer: token C, our versions URL, our roles (the library's model read it)
        answer = result["answer"]["body"]["data"]
        assert answer["url"] == ours and answer["token"] != token_a
        assert ("CPO", "NL", "EVF") in {
            (r["role"], r["country_code"], r["party_id"]) for r in answer["roles"]
        }
        assert result["with_token_c"]["details"]["status_code"] == 200  # token C works
        partner = await our_partner(node, peer_emsp.versions_url)
        assert partner is not None and partner["status"] == "registered"
        assert (partner["country_code"], partner["party_id"]) == ("DE", "XWE")
        ids = {(e["identifier"], e["role"]) for e in partner["endpoints"]}
        assert {("locations", "RECEIVER"), ("sessions", "RECEIVER"), ("cdrs", "RECEIVER"),
                ("tokens", "SENDER"), ("commands", "SENDER")} <= ids  # fmt: skip
        # once registered, we fetch its tokens (GET its tokens list, the library's answer)
        await node.wait_for(lambda: tokens_of(node, "xwpull01"))
        listed = await peer_emsp.requests(ours, "GET", "tokens")
        assert listed and listed[-1]["status"] == 200, listed
        # token A was for one registration only
        base = f"http://127.0.0.1:{node.rt.http_port}"
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/ocpi/versions", headers=auth(token_a))
            assert r.status_code == 401, r.text
        # the peer ends the registration (DELETE credentials): token C no longer works
        ended = await peer_emsp.unregister(ours)
        assert ended["status_code"] == 200 and ended["body"]["status_code"] == 1000, ended
        partner = await our_partner(node, peer_emsp.versions_url)
        assert partner is None or partner["status"] != "registered"
        token_c = answer["token"]
        async with httpx.AsyncClient(base_url=base) as c:
            r = await c.get("/ocpi/2.2.1/credentials", headers=auth(token_c))
            assert r.status_code == 401, r.text


async def test_we_register_with_the_peer(link):
    state = await link.peer.state(link.url)
    mine = state["partners"].get(link.url)
    assert mine is not None, state["partners"]
    # the peer's model kept our roles (in lower case)
    assert {(r["role"], r["country_code"], r["party_id"]) for r in mine["roles"]} >= {
        ("CPO", "nl", "evf")
    }
    # we asked for its versions and details with token A, then posted our credentials
    first = [(r["method"], r["path"], r["status"]) for r in (await link.peer.state())["requests"]
             if r["path"] in ("/ocpi/versions", "/ocpi/2.2.1/details",
                              "/ocpi/emsp/2.2.1/credentials/")]  # fmt: skip
    assert ("POST", "/ocpi/emsp/2.2.1/credentials/", 200) in first
    partner = await our_partner(link.node, link.peer.versions_url)
    assert partner is not None and partner["status"] == "registered"
    assert (partner["country_code"], partner["party_id"]) == ("DE", "XWE")  # upper, as ours
    ids = {(e["identifier"], e["role"]) for e in partner["endpoints"]}
    assert {("locations", "RECEIVER"), ("tokens", "SENDER"), ("commands", "SENDER")} <= ids


async def test_registering_again_with_the_peer_is_refused_and_changes_nothing(link, tmp_path):
    before = await partners_of(link.node)
    invitation = await link.peer.invite()
    out = await evflex(link.node, tmp_path, "ocpi", "register", "--versions-url",
                       invitation["versions_url"], "--token", invitation["token"],
                       exit_code=1)  # fmt: skip
    assert "registered already" in out[-1], out
    assert await partners_of(link.node) == before


# ---------------------------------------------------------------- CPO -> eMSP pushes


async def test_our_location_reaches_the_peer(link):
    async with connected(Lib16, link.node.ocpp_url, "XWLOC1", "ocpp1.6") as cp:
        await boot(cp, connectors=2)
        location = await link.wait_received("locations", of_station("XWLOC1", evses=2))
        # the library's Location model accepted it: ids come back in lower case
        assert location["country_code"] == "nl" and location["party_id"] == "evf"
        evses = evses_of(location, "XWLOC1")
        assert len(evses) == 2, location["evses"]
        assert all(e["status"] == "AVAILABLE" for e in evses)
        assert all(e["connectors"] for e in evses)
        # a status change reaches the peer too (PUT or PATCH of the EVSE or the Location)
        await cp.call(call.StatusNotification(
            connector_id=2, error_code="NoError", status="Unavailable"))  # fmt: skip
        await link.wait_received(
            "locations",
            lambda loc: (
                of_station("XWLOC1")(loc)
                and any(e["status"] != "AVAILABLE" for e in loc["evses"] if "xwloc1" in lower(e))
            ),
        )


async def test_the_peer_pushes_a_token_with_its_own_client(link):
    """The library's push: GET our version details, PUT {tokens URL}DE/XWE/{uid} (it
    needs the URL to end in "/", as in the spec's examples), the token's ids in lower
    case; a station's Authorize with the uid in upper case passes."""
    await link.peer.issue_token("XWPUSH01")
    pushed = await link.peer.push_token(link.url, "XWPUSH01")
    assert pushed["ok"], pushed
    assert pushed["responses"][0]["endpoints_url"] == link.url.replace("/versions", "/2.2.1")
    kept = await tokens_of(link.node, "xwpush01")
    assert len(kept) == 1 and (kept[0]["country_code"], kept[0]["party_id"]) in {
        ("DE", "XWE"), ("de", "xwe")
    }, kept  # fmt: skip
    async with connected(Lib16, link.node.ocpp_url, "XWTOK1", "ocpp1.6") as cp:
        await boot(cp)
        answer = await cp.call(call.Authorize(id_tag="XWPUSH01"))
        assert answer.id_tag_info["status"] == "Accepted"


def ts(seconds: float = 0.0) -> str:
    """Now (plus ``seconds``) as a station writes it: stations' clocks are right here."""
    at = datetime.now(UTC) + timedelta(seconds=seconds)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_token_of_the_peer_starts_a_session_that_reaches_it_with_its_cdr(link):
    token = await link.peer.issue_token("XWCARD01")
    assert token["uid"] == "xwcard01"  # the library keeps uids in lower case
    pushed = await link.peer.put_token(link.url, "XWCARD01")
    assert pushed["ok"], pushed
    assert pushed["url"].endswith("/ocpi/cpo/2.2.1/tokens/DE/XWE/XWCARD01")
    async with connected(Lib16, link.node.ocpp_url, "XWSES1", "ocpp1.6") as cp:
        await boot(cp)
        await link.wait_received("locations", of_station("XWSES1"))
        # the card's uid as a reader sends it (upper case) is the peer's token
        authorized = await cp.call(call.Authorize(id_tag="XWCARD01"))
        assert authorized.id_tag_info["status"] == "Accepted"
        start = await cp.call(call.StartTransaction(
            connector_id=1, id_tag="XWCARD01", meter_start=1000, timestamp=ts()))  # fmt: skip
        assert start.id_tag_info["status"] == "Accepted"
        session = await link.wait_received(
            "sessions", lambda s: s["cdr_token"]["uid"] == "xwcard01"
        )
        assert session["status"] in ("PENDING", "ACTIVE")
        assert (session["cdr_token"]["country_code"], session["cdr_token"]["party_id"]) == (
            "de", "xwe"
        )  # fmt: skip
        assert (session["location_id"], session["evse_uid"]) == ("xwses1", "xwses1-1")
        await cp.call(call.MeterValues(connector_id=1, transaction_id=start.transaction_id,
            meter_value=[{"timestamp": ts(1), "sampledValue": [
                {"value": "6000", "measurand": MV, "unit": "Wh"}]}]))  # fmt: skip
        await link.wait_received(
            "sessions", lambda s: s["id"] == session["id"] and s["kwh"] == pytest.approx(5.0)
        )
        await cp.call(call.StopTransaction(
            meter_stop=12_000, timestamp=ts(2), transaction_id=start.transaction_id,
            reason="EVDisconnected", id_tag="XWCARD01"))  # fmt: skip
        done = await link.wait_received(
            "sessions", lambda s: s["id"] == session["id"] and s["status"] == "COMPLETED"
        )
        assert done["kwh"] == pytest.approx(11.0)
        assert done["end_date_time"] >= done["start_date_time"]
        # the CDR (POSTed to the library's cdrs receiver, checked by its Cdr model)
        cdr = await link.wait_received("cdrs", lambda c: c["session_id"] == session["id"])
        assert cdr["cdr_token"]["uid"] == "xwcard01"
        assert cdr["total_energy"] == pytest.approx(11.0)
        assert cdr["cdr_location"]["id"] == "xwses1"
        assert cdr["cdr_location"]["evse_id"] == "nl*evf*exwses1*1"
        assert (cdr["start_date_time"], cdr["end_date_time"]) == (
            done["start_date_time"], done["end_date_time"]
        )  # fmt: skip
        posts = await link.peer.requests(link.url, "POST", "cdrs")
        assert posts[-1]["status"] == 200, posts[-1]
        # what we sent (the library's CdrLocation has no evse_uid, so it drops it)
        assert posts[-1]["body"]["cdr_location"]["evse_uid"] == "XWSES1-1"


async def test_an_unknown_token_is_refused_at_the_station(link):
    async with connected(Lib16, link.node.ocpp_url, "XWSES2", "ocpp1.6") as cp:
        await boot(cp)
        answer = await cp.call(call.Authorize(id_tag="NOTACARD9"))
        assert answer.id_tag_info["status"] != "Accepted"


# The library answers POST {tokens}/{uid}/authorize with "data": [AuthorizationInfo] (a
# list of one; OCPI 2.2.1 has the object itself).
AUTHORIZATION_IN_A_LIST = (
    "extrawest-ocpi answers a real-time authorization with data = [AuthorizationInfo]; "
    "evflex reads that as no answer ('AuthorizationInfo: body: Input should be a valid "
    "dictionary'), so a NEVER-whitelisted token is Invalid"
)


@pytest.mark.xfail(strict=True, reason=AUTHORIZATION_IN_A_LIST)
async def test_the_peer_authorizes_its_never_whitelisted_token_in_real_time(link):
    """Whitelist NEVER: each Authorize asks the peer (POST {tokens}/{uid}/authorize with
    the Location and EVSE); the library's answer names the EVSE in lower case."""
    await link.peer.issue_token("XWRT01", whitelist="NEVER")
    await link.peer.issue_token("XWRT02", whitelist="NEVER", valid=False)
    for uid in ("XWRT01", "XWRT02"):
        pushed = await link.peer.put_token(link.url, uid)
        assert pushed["ok"], pushed
    async with connected(Lib16, link.node.ocpp_url, "XWRT1", "ocpp1.6") as cp:
        await boot(cp)
        await link.wait_received("locations", of_station("XWRT1"))
        allowed = await cp.call(call.Authorize(id_tag="XWRT01"))
        refused = await cp.call(call.Authorize(id_tag="XWRT02"))
    asked = await link.peer.requests(link.url, "POST", "tokens")
    assert [(r["path"].rsplit("/", 2)[-2].upper(), r["status"]) for r in asked[-2:]] == [
        ("XWRT01", 200), ("XWRT02", 200)
    ], asked[-2:]  # fmt: skip
    assert asked[-2]["answer"]["data"][0]["allowed"] == "ALLOWED"
    assert lower(asked[-2]["body"]).count("xwrt1") >= 1  # our LocationReferences
    assert allowed.id_tag_info["status"] == "Accepted"
    assert refused.id_tag_info["status"] != "Accepted"


# ---------------------------------------------------------------- commands


# The library's StartSession model lower-cases location_id and evse_uid: for a station
# whose id has capitals the command names "xwcmd2" / "xwcmd2-1", and must find "XWCMD2".
@pytest.mark.parametrize("station", ["xwcmd1", "XWCMD2"])
async def test_a_start_session_of_the_peer_reaches_the_station_and_the_result_comes_back(
    link, station
):
    uid = f"XWAPP{station[-1]}"
    await link.peer.issue_token(uid, kind="APP_USER")
    pushed = await link.peer.put_token(link.url, uid)
    assert pushed["ok"], pushed
    async with connected(Lib16, link.node.ocpp_url, station, "ocpp1.6") as cp:
        await boot(cp)
        location = await link.wait_received("locations", of_station(station))
        evse = evses_of(location, station)[0]
        sent = await link.peer.command(
            link.url, "START_SESSION", location_id=location["id"], evse_uid=evse["uid"],
            connector_id=evse["connectors"][0]["id"], token_uid=uid,
        )  # fmt: skip
        assert sent["ok"], json.dumps(sent)
        assert sent["response"]["result"] == "ACCEPTED"
        assert sent["response"]["timeout"] > 0
        remote = await link.node.wait_for(
            lambda: [kw for name, kw in cp.received if name == "RemoteStartTransaction"]
        )
        assert remote[0]["id_tag"].lower() == uid.lower()
        assert remote[0].get("connector_id") == 1
        # the station starts charging as asked; the result reaches the peer's response_url
        start = await cp.call(call.StartTransaction(
            connector_id=1, id_tag=remote[0]["id_tag"], meter_start=0, timestamp=ts()))  # fmt: skip
        assert start.id_tag_info["status"] == "Accepted"
        result = await link.node.wait_for(lambda: link.peer.command_result(sent["uid"]),
                                          timeout=10)  # fmt: skip
        assert result["result"] == "ACCEPTED", result
        posted = await link.peer.requests(link.url, "POST", "commands")
        assert posted[-1]["path"].endswith(sent["uid"]) and posted[-1]["status"] == 200
        # the Session it started (auth_method COMMAND); then the peer stops it
        session = await link.wait_received(
            "sessions", lambda s: s["cdr_token"]["uid"] == uid.lower() and s["status"] == "ACTIVE"
        )
        assert session["auth_method"] == "COMMAND"
        assert session["authorization_reference"] == sent["uid"]
        stop = await link.peer.command(link.url, "STOP_SESSION", session_id=session["id"])
        assert stop["ok"] and stop["response"]["result"] == "ACCEPTED", json.dumps(stop)
        remote = await link.node.wait_for(
            lambda: [kw for name, kw in cp.received if name == "RemoteStopTransaction"]
        )
        assert remote[0]["transaction_id"] == start.transaction_id
        await cp.call(call.StopTransaction(
            meter_stop=2000, timestamp=ts(1), transaction_id=start.transaction_id,
            reason="Remote"))  # fmt: skip
        result = await link.node.wait_for(lambda: link.peer.command_result(stop["uid"]))
        assert result["result"] == "ACCEPTED", result
        await link.wait_received(
            "sessions", lambda s: s["id"] == session["id"] and s["status"] == "COMPLETED"
        )


async def test_a_command_for_a_location_we_do_not_have_is_refused_and_reaches_no_station(link):
    await link.peer.issue_token("XWAPP9", kind="APP_USER")
    assert (await link.peer.put_token(link.url, "XWAPP9"))["ok"]
    async with connected(Lib16, link.node.ocpp_url, "XWCMD9", "ocpp1.6") as cp:
        await boot(cp)
        await link.wait_received("locations", of_station("XWCMD9"))
        sent = await link.peer.command(
            link.url, "START_SESSION", location_id="NOWHERE", evse_uid="XWCMD9-1",
            connector_id="1", token_uid="XWAPP9",
        )  # fmt: skip
        assert sent["status_code"] in (200, 404), sent  # HTTP: 404 allowed with 2003
        assert sent["body"]["status_code"] == 2003, sent["body"]
        assert sent["response"]["result"] == "REJECTED", sent
        assert "NOWHERE".lower() in lower(sent["response"]["message"])
        assert [n for n, _ in cp.received if n == "RemoteStartTransaction"] == []
