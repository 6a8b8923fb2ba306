"""Never crash, never lose (issue: CSMS foundation §6; requirements A1, A4, H1).

Raw WebSocket clients send what real stations get wrong; the CSMS must answer
with the spec's CALLERROR, keep the connection and keep serving others.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ocpp_clients import basic_auth

BOOT16 = '[2,"b","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'
BOOT201 = ('[2,"b","BootNotification",{"chargingStation":{"model":"M","vendorName":"V"},'
           '"reason":"PowerUp"}]')


async def rpc(ws, frame: str) -> list:
    await ws.send(frame)
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


CASES_16 = [
    ("not json", "-1", "FormationViolation"),
    ('{"a": 1}', "-1", "FormationViolation"),
    ('[2, 5, "Heartbeat", {}]', "-1", "FormationViolation"),
    ('[2,"m1","Heartbeat"]', "m1", "FormationViolation"),
    ('[2,"m2","Heartbeat",[]]', "m2", "FormationViolation"),
    ('[9,"m3","Heartbeat",{}]', "m3", "ProtocolError"),
    ('[2,"m4","NoSuchAction",{}]', "m4", "NotImplemented"),
    ('[2,"m5","Reset",{"type":"Hard"}]', "m5", "NotSupported"),
    ('[2,"m6","BootNotification",{"chargePointModel":"M"}]', "m6", "OccurenceConstraintViolation"),
    ('[2,"m7","StatusNotification",{"connectorId":"1","errorCode":"NoError","status":"Available"}]',
     "m7", "TypeConstraintViolation"),
    ('[2,"m8","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Sleeping"}]',
     "m8", "PropertyConstraintViolation"),
    ('[2,"m9","Heartbeat",{"extra":true}]', "m9", "FormationViolation"),
    ('[2,"m10","BootNotification",{"chargePointVendor":"' + "V" * 30 + '","chargePointModel":"M"}]',
     "m10", "PropertyConstraintViolation"),
]

CASES_201 = [
    ("not json", "-1", "RpcFrameworkError"),
    ('[2,"m1","Heartbeat"]', "m1", "RpcFrameworkError"),
    ('[6,"m2","NotifyPeriodicEventStream",{}]', "m2", "MessageTypeNotSupported"),
    ('[2,"m3","StartTransaction",{}]', "m3", "NotImplemented"),  # a 1.6-only action
    ('[2,"m4","GetVariables",{"getVariableData":[]}]', "m4", "NotSupported"),
    ('[2,"m5","BootNotification",{"reason":"PowerUp"}]', "m5", "OccurrenceConstraintViolation"),
    ('[2,"m6","Heartbeat",{"x":1}]', "m6", "FormatViolation"),
    ('[2,"m7","StatusNotification",{"timestamp":"2026-01-01T00:00:00Z","connectorStatus":"Nap",'
     '"evseId":1,"connectorId":1}]', "m7", "PropertyConstraintViolation"),
]


@pytest.mark.parametrize("proto,boot,cases", [("ocpp1.6", BOOT16, CASES_16),
                                              ("ocpp2.0.1", BOOT201, CASES_201)])
async def test_a1_bad_frames_get_the_right_callerror_and_the_connection_lives(
        node, proto, boot, cases):
    async with websockets.connect(node.url("BAD-" + proto), subprotocols=[proto]) as ws:
        assert (await rpc(ws, boot))[0] == 3
        for frame, message_id, code in cases:
            answer = await rpc(ws, frame)
            assert answer[0] == 4, (frame, answer)
            assert answer[1] == message_id, (frame, answer)
            assert answer[2] == code, (frame, answer)
            assert isinstance(answer[3], str) and isinstance(answer[4], dict)
        # still alive and serving
        ok = await rpc(ws, '[2,"hb","Heartbeat",{}]')
        assert ok[0] == 3 and ok[1] == "hb" and "currentTime" in ok[2]
    assert (await node.station("BAD-" + proto))["vendor"] == "V"


async def test_a1_an_answer_to_nothing_is_ignored_silently(node):
    async with websockets.connect(node.url("STRAY"), subprotocols=["ocpp1.6"]) as ws:
        await ws.send('[3,"never-asked",{}]')
        await ws.send('[4,"never-asked","InternalError","x",{}]')
        ok = await rpc(ws, '[2,"hb","Heartbeat",{}]')
        assert ok[:2] == [3, "hb"]  # nothing was sent in between


async def test_a1_oversized_frame_closes_1009_and_others_live_on(node):
    async with websockets.connect(node.url("CALM"), subprotocols=["ocpp1.6"]) as calm:
        assert (await rpc(calm, BOOT16))[0] == 3
        async with websockets.connect(node.url("BIG"), subprotocols=["ocpp1.6"],
                                      max_size=None) as big:
            huge = '[2,"x","DataTransfer",{"vendorId":"v","data":"' + "x" * 1_100_000 + '"}]'
            await big.send(huge)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(big.recv(), 5)
            assert info.value.rcvd.code == 1009
        assert (await rpc(calm, '[2,"hb","Heartbeat",{}]'))[0] == 3


async def test_a1_subprotocol_negotiation(node):
    async with websockets.connect(node.url("NEG1"), subprotocols=["ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp1.6"
    async with websockets.connect(node.url("NEG2"), subprotocols=["ocpp1.6", "ocpp2.0.1"]) as ws:
        assert ws.subprotocol == "ocpp2.0.1"  # the newest both speak
    async with websockets.connect(node.url("NEG3"), subprotocols=["ocpp2.1", "ocpp1.6"]) as ws:
        assert ws.subprotocol == "ocpp2.1"
    async with websockets.connect(node.url("NEG5"),
                                  subprotocols=["ocpp1.6", "ocpp2.0.1", "ocpp2.1"]) as ws:
        assert ws.subprotocol == "ocpp2.1"  # the newest both speak
    for offered in (["ocpp2.2"], ["mqtt"], None):
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(node.url("NEG4"), subprotocols=offered):
                pass
        assert info.value.response.status_code == 400
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(f"ws://127.0.0.1:{node.rt.ocpp_port}/elsewhere/X",
                                      subprotocols=["ocpp1.6"]):
            pass
    assert info.value.response.status_code == 404


async def test_h1_security_profile_1(strict_node):
    node = strict_node
    pw = "correct-horse-battery"
    r = await node.http.post("/api/v1/stations", json={"id": "SEC1", "password": pw})
    assert r.status_code == 201 and r.json()["has_password"] is True
    r = await node.http.post("/api/v1/stations", json={"id": "OPEN1"})
    assert r.status_code == 201

    async def status_of(station, headers=None):
        try:
            async with websockets.connect(node.url(station), subprotocols=["ocpp1.6"],
                                          additional_headers=headers) as ws:
                return ("open", ws.subprotocol)
        except InvalidStatus as exc:
            return exc.response.status_code

    assert await status_of("SEC1", basic_auth("SEC1", pw)) == ("open", "ocpp1.6")
    assert await status_of("SEC1", basic_auth("SEC1", pw)) == ("open", "ocpp1.6")  # cached path
    assert await status_of("SEC1", basic_auth("SEC1", "wrong-password-xx")) == 401
    assert await status_of("SEC1", basic_auth("OTHER", pw)) == 401
    assert await status_of("SEC1") == 401
    assert await status_of("SEC1", {"Authorization": "Basic !!notbase64"}) == 401
    assert await status_of("OPEN1") == ("open", "ocpp1.6")
    assert await status_of("UNKNOWN") == 404
    # the password is stored hashed, never in clear
    from evflex.store import repo

    async with node.rt.sessionmaker() as s:
        stored = (await repo.get_station(s, "SEC1")).password_hash
    assert pw not in stored and stored.startswith("scrypt$")
    # a new password takes effect at once; the old one stops working
    r = await node.http.patch("/api/v1/stations/SEC1", json={"password": "a-brand-new-secret"})
    assert r.status_code == 200
    assert await status_of("SEC1", basic_auth("SEC1", pw)) == 401
    assert await status_of("SEC1", basic_auth("SEC1", "a-brand-new-secret")) == ("open", "ocpp1.6")
    # a station deleted through the API is refused at once (credentials are held in memory)
    assert (await node.http.delete("/api/v1/stations/OPEN1")).status_code == 204
    assert await status_of("OPEN1") == 404
    # one added to the database by another process (the CLI) is found on its first connect
    async with node.rt.sessionmaker() as s, s.begin():
        await repo.create_station(s, "BY-CLI", node.rt.clock.now())
    assert await status_of("BY-CLI") == ("open", "ocpp1.6")


async def test_a1_unknown_station_registered_on_first_connect_when_allowed(node):
    r = await node.http.get("/api/v1/stations/NEWCOMER")
    assert r.status_code == 404
    async with websockets.connect(node.url("NEWCOMER"), subprotocols=["ocpp1.6"]):
        await node.wait_for(lambda: node.rt.ocpp.is_connected("NEWCOMER"))
        assert (await node.station("NEWCOMER"))["connected"] is True


async def test_a1_second_connection_replaces_the_first(node):
    first = await websockets.connect(node.url("TWICE"), subprotocols=["ocpp1.6"])
    assert (await rpc(first, BOOT16))[0] == 3
    second = await websockets.connect(node.url("TWICE"), subprotocols=["ocpp2.0.1"])
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(first.recv(), 5)
    assert first.close_code == 1000
    assert (await rpc(second, BOOT201))[0] == 3
    await asyncio.sleep(0.1)  # the old socket's clean-up must not mark the station offline
    st = await node.station("TWICE")
    assert st["connected"] is True and st["ocpp_version"] == "2.0.1"
    # commands go to the new connection
    task = asyncio.create_task(node.command("TWICE", "trigger-message", {"message": "Heartbeat"}))
    call = json.loads(await asyncio.wait_for(second.recv(), 5))
    assert call[2] == "TriggerMessage"
    await second.send(json.dumps([3, call[1], {"status": "Accepted"}]))
    r = await task
    assert r.status_code == 200 and r.json()["response"] == {"status": "Accepted"}
    await second.close()


async def test_a2_command_timeout_gives_504_and_callerror_gives_502(node):
    node.rt.ocpp.response_timeout = 0.5
    async with websockets.connect(node.url("MUTE"), subprotocols=["ocpp1.6"]) as ws:
        await node.wait_for(lambda: node.rt.ocpp.is_connected("MUTE"))
        node.rt.ocpp.connections["MUTE"].response_timeout = 0.5
        r = await node.command("MUTE", "reset", {"type": "soft"})
        assert r.status_code == 504 and "did not answer" in r.json()["detail"]
        await ws.recv()  # the Reset we did not answer
        task = asyncio.create_task(node.command("MUTE", "reset", {"type": "hard"}))
        call = json.loads(await asyncio.wait_for(ws.recv(), 5))
        await ws.send(json.dumps([4, call[1], "NotSupported", "no reset here", {}]))
        r = await task
        assert r.status_code == 502 and "NotSupported" in r.json()["detail"]


async def test_a2_command_errors_are_clear(node):
    r = await node.command("NOBODY", "reset", {"type": "soft"})
    assert r.status_code == 404
    await node.http.post("/api/v1/stations", json={"id": "OFFLINE"})
    r = await node.command("OFFLINE", "reset", {"type": "soft"})
    assert r.status_code == 409 and "not connected" in r.json()["detail"]
    async with websockets.connect(node.url("CMD"), subprotocols=["ocpp1.6"]):
        await node.wait_for(lambda: node.rt.ocpp.is_connected("CMD"))
        r = await node.command("CMD", "explode", {})
        assert r.status_code == 404 and "unknown command" in r.json()["detail"]
        r = await node.command("CMD", "reset", {"type": "medium"})
        assert r.status_code == 422
        r = await node.http.post("/api/v1/stations/CMD/commands/reset", content=b"{nope")
        assert r.status_code == 400
        r = await node.command("CMD", "remote-stop", {"transaction_id": "not-an-int"})
        assert r.status_code == 400 and "integer" in r.json()["detail"]


def test_a_schema_that_cannot_be_read_is_an_internal_error_not_an_unknown_action(monkeypatch):
    """Out of file handles, a message of a kind not seen yet must not be answered
    'not an OCPP action' (NotImplemented): that is our fault (InternalError)."""
    from pathlib import Path

    from evflex.csms import rpc as rpc_module

    def no_handles(self, *a, **kw):
        raise OSError(24, "Too many open files")

    rpc_module.validator.cache_clear()
    monkeypatch.setattr(Path, "read_text", no_handles)
    try:
        with pytest.raises(rpc_module.RpcError) as err:
            rpc_module.validate(rpc_module.CALL, "Heartbeat", {}, "1.6")
        assert err.value.code == "InternalError"
        with pytest.raises(rpc_module.RpcError) as err:
            rpc_module.validate(rpc_module.CALL, "NoSuchAction", {}, "1.6")
        assert err.value.code == "NotImplemented"
    finally:
        monkeypatch.undo()
        rpc_module.validator.cache_clear()
