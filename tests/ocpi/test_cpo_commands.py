"""OCPI Commands, our CPO side: an eMSP's commands reach simulated stations (OCPP 1.6 and
2.0.1) and the stations' results come back to the eMSP's response_url."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import httpx
from ocpp.routing import on
from ocpp.v16 import call
from ocpp.v16 import call_result as r16
from sqlalchemy import func, select

from conftest import running_node
from evflex.sim import SimStation, StationSpec
from evflex.store.ocpi_tables import OcpiCommand
from evflex.store.tables import Reservation, Transaction
from ocpi.partner import RecordingPartner
from ocpp_clients import Lib16, connected

_n = itertools.count(1)


def token(uid: str, cc: str = "DE", pid: str = "ABC") -> dict:
    return {"country_code": cc, "party_id": pid, "uid": uid, "type": "APP_USER",
            "contract_id": f"{cc}-{pid}-{uid}", "issuer": "Test eMSP", "valid": True,
            "whitelist": "ALLOWED", "last_updated": "2026-01-01T00:00:00Z"}  # fmt: skip


class Emsp:
    """A partner that sends commands to the node and receives their results."""

    def __init__(self, node, partner: RecordingPartner) -> None:
        self.node = node
        self.partner = partner
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{node.rt.http_port}/ocpi/cpo/2.2.1/commands",
            headers=partner.auth_header(),
            timeout=10,
        )

    async def send(self, command: str, **body) -> tuple[dict, str]:
        """POST the command; (the OCPI response, the response_url's path)."""
        path = f"/ocpi/2.2.1/commands/{command}/{next(_n)}"
        body.setdefault("response_url", f"http://127.0.0.1:{self.partner.port}{path}")
        r = await self.http.post(f"/{command}", json=body)
        assert r.status_code == 200, r.text
        return r.json(), path

    async def result(self, path: str, timeout: float = 10.0) -> dict:
        """The CommandResult POSTed to ``path``."""

        def got():
            return next((x.body for x in self.partner.received if x.path == path), None)

        return await self.node.wait_for(got, timeout=timeout)

    async def accepted(self, command: str, **body) -> dict:
        """Send a command that must be ACCEPTED; its CommandResult."""
        answer, path = await self.send(command, **body)
        assert answer["status_code"] == 1000, answer
        assert answer["data"]["result"] == "ACCEPTED", answer
        assert answer["data"]["timeout"] >= 1
        return await self.result(path)


async def _commands_stored(node) -> int:
    async with node.rt.sessionmaker() as s:
        return await s.scalar(select(func.count()).select_from(OcpiCommand))


async def _tx(node, **where) -> Transaction | None:
    async with node.rt.sessionmaker() as s:
        q = select(Transaction).filter_by(**where).order_by(Transaction.id.desc())
        return (await s.scalars(q)).first()


async def _with_emsps(node):
    a = await RecordingPartner([("commands", "SENDER")]).start()
    b = await RecordingPartner([("commands", "SENDER")], country_code="FR", party_id="XYZ").start()
    await a.link(node)
    await b.link(node)
    return a, b


async def test_commands_reach_stations_and_results_come_back(database_url):
    async with running_node(database_url, allow_unknown_stations=True) as node:
        pa, pb = await _with_emsps(node)
        a, b = Emsp(node, pa), Emsp(node, pb)
        stations = [
            SimStation(StationSpec(id=f"CMD-{v}", ocpp_version=v), node.ocpp_url, node.rt.clock)
            for v in ("1.6", "2.0.1")
        ]
        try:
            for st in stations:
                await st.start(timeout=10)  # booted: the node knows it
            for st in stations:
                await node.wait_for(lambda st=st: _has_evses(node, st.id), timeout=5)
            for st in stations:
                # no card of the CSMS: the eMSP authorized it, its START_SESSION vouches for it
                uid = f"APP-{st.spec.ocpp_version}"
                res = await a.accepted("START_SESSION", token=token(uid), location_id=st.id,
                                       evse_uid=f"{st.id}-1", authorization_reference="AUTH-1")  # fmt: skip
                assert res["result"] == "ACCEPTED", res
                assert st.id in res["message"][0]["text"]
                tx = await node.wait_for(lambda st=st, uid=uid: _tx(node, station_id=st.id,
                                                                    id_token=uid, state="active"))  # fmt: skip
                assert tx.evse_id == 1
                # another eMSP may not stop it; an unknown session is UNKNOWN_SESSION
                answer, _ = await b.send("STOP_SESSION", session_id=str(tx.id))
                assert answer["data"]["result"] == "REJECTED", answer
                assert "not started with your token" in answer["data"]["message"][0]["text"]
                answer, _ = await a.send("STOP_SESSION", session_id="999999")
                assert answer["data"]["result"] == "UNKNOWN_SESSION"
                res = await a.accepted("STOP_SESSION", session_id=str(tx.id))
                assert res["result"] == "ACCEPTED", res
                await node.wait_for(lambda tx=tx: _tx(node, id=tx.id, state="ended"), timeout=10)
                answer, _ = await a.send("STOP_SESSION", session_id=str(tx.id))
                assert answer["data"]["result"] == "REJECTED"
                assert "already ended" in answer["data"]["message"][0]["text"]

            st16, st201 = stations
            res = await a.accepted("UNLOCK_CONNECTOR", location_id=st16.id,
                                   evse_uid=f"{st16.id}-2", connector_id="1")  # fmt: skip
            assert res["result"] == "ACCEPTED", res

            # a reservation: ours to the station, the eMSP's id to the eMSP
            expiry = (node.rt.clock.now() + timedelta(minutes=15)).isoformat()
            reserve = dict(token=token("APP-R"), expiry_date=expiry, location_id=st201.id)
            answer, res1 = await a.send("RESERVE_NOW", reservation_id="Res-1",
                                        evse_uid=f"{st201.id}-2", **reserve)  # fmt: skip
            assert answer["data"]["result"] == "ACCEPTED", answer
            assert (await a.result(res1))["result"] == "ACCEPTED"
            rows = await _reservations(node)
            assert [(r.station_id, r.evse_id, r.id_token, r.status) for r in rows] == [
                (st201.id, 2, "APP-R", "Accepted")
            ]
            answer, _ = await b.send("CANCEL_RESERVATION", reservation_id="Res-1")
            assert answer["data"]["result"] == "REJECTED"  # not B's reservation
            res = await a.accepted("CANCEL_RESERVATION", reservation_id="RES-1")  # CiString
            assert res["result"] == "ACCEPTED", res
            assert [r.status for r in await _reservations(node)] == ["Cancelled"]
            res = await a.accepted("CANCEL_RESERVATION", reservation_id="res-1")
            assert res["result"] == "UNKNOWN_RESERVATION", res  # the station has none left
            # the 1.6 station cannot reserve "any EVSE" (connector 0): the station refuses
            res = await a.accepted("RESERVE_NOW", token=token("APP-R"), expiry_date=expiry,
                                   reservation_id="Res-2", location_id=st16.id)  # fmt: skip
            assert res["result"] == "REJECTED", res
            # the operator cancels an eMSP's reservation: the eMSP hears CANCELED_RESERVATION
            answer, first = await a.send("RESERVE_NOW", reservation_id="Res-3",
                                         evse_uid=f"{st201.id}-1", **reserve)  # fmt: skip
            assert (await a.result(first))["result"] == "ACCEPTED"
            rid = max(r.id for r in await _reservations(node))
            # the same reservation_id again replaces it: the station's reservation id stays
            reserve["expiry_date"] = (node.rt.clock.now() + timedelta(minutes=30)).isoformat()
            answer, res3 = await a.send("RESERVE_NOW", reservation_id="res-3",
                                        evse_uid=f"{st201.id}-1", **reserve)  # fmt: skip
            assert (await a.result(res3))["result"] == "ACCEPTED"
            assert max(r.id for r in await _reservations(node)) == rid
            r = await node.command(st201.id, "cancel-reservation", {"reservation_id": rid})
            assert r.status_code == 200, r.text
            await node.wait_for(lambda: [x.path for x in pa.received].count(res3) == 2)
            told = [x.body for x in pa.received if x.path == res3][1]
            assert told["result"] == "CANCELED_RESERVATION", told
            assert "'res-3' was cancelled by the CPO" in told["message"][0]["text"]
            # Res-1, which the eMSP cancelled itself, got no such message
            assert [x.path for x in pa.received].count(res1) == 1
            assert [x.path for x in pa.received].count(first) == 1  # the replaced one

            async with node.rt.sessionmaker() as s:
                rows = (await s.scalars(select(OcpiCommand).order_by(OcpiCommand.id))).all()
            assert all(r.direction == "in" and r.response == "ACCEPTED" for r in rows)
            assert [r.result for r in rows if r.command == "START_SESSION"] == ["ACCEPTED"] * 2
            start = next(r for r in rows if r.command == "START_SESSION")
            assert start.request["authorization_reference"] == "AUTH-1"
            assert start.request["token"]["contract_id"] == "DE-ABC-APP-1.6"
        finally:
            for st in stations:
                await st.stop()
            await pa.stop()
            await pb.stop()


async def _has_evses(node, station_id: str) -> bool:
    st = await node.station(station_id)
    return {c["evse_id"] for c in st.get("connectors", [])} >= {1, 2}


async def _reservations(node) -> list[Reservation]:
    async with node.rt.sessionmaker() as s:
        return list((await s.scalars(select(Reservation).order_by(Reservation.id))).all())


class Stubborn16(Lib16):
    """Refuses remote starts; takes its time to unlock."""

    @on("RemoteStartTransaction")
    def on_remote_start(self, **kw):
        return r16.RemoteStartTransaction(status="Rejected")

    @on("UnlockConnector")
    async def on_unlock(self, **kw):
        await asyncio.sleep(3)
        return r16.UnlockConnector(status="Unlocked")


async def test_refusals_are_immediate_and_a_silent_station_times_out(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
    async with running_node(url, allow_unknown_stations=True, ocpi_command_timeout_s=1.0) as node:
        pa, pb = await _with_emsps(node)
        a = Emsp(node, pa)
        try:
            # a site whose first station is offline
            r = await node.http.post("/api/v1/sites", json={"id": "Depot", "import_limit_kw": 40})
            assert r.status_code == 201, r.text
            r = await node.http.post("/api/v1/stations", json={"id": "OFF-1", "site_id": "Depot"})
            assert r.status_code == 201, r.text
            async with connected(Stubborn16, node.ocpp_url, "STUB-16", "ocpp1.6") as cp:
                await cp.call(call.BootNotification(charge_point_vendor="Acme",
                                                    charge_point_model="AC22"))  # fmt: skip
                for conn, status in ((1, "Available"), (2, "Charging")):
                    await cp.call(call.StatusNotification(connector_id=conn, error_code="NoError",
                                                          status=status))  # fmt: skip
                start = dict(token=token("APP-9"), location_id="STUB-16")
                res = await a.accepted("START_SESSION", evse_uid="STUB-16-1", **start)
                assert res["result"] == "REJECTED", res
                assert res["message"][0]["text"] == "station 'STUB-16' answered Rejected"
                res = await a.accepted("START_SESSION", evse_uid="STUB-16-2", **start)
                assert res["result"] == "EVSE_OCCUPIED", res  # its status says why

                # at the site: ids are CiStrings (some eMSPs lower-case them); without an
                # EVSE, the command goes to a connected station of the site
                r = await node.http.patch("/api/v1/stations/STUB-16", json={"site_id": "Depot"})
                assert r.status_code == 200, r.text
                expiry = (node.rt.clock.now() + timedelta(minutes=5)).isoformat()
                res = await a.accepted("RESERVE_NOW", token=token("APP-9"), location_id="depot",
                                       reservation_id="D1", expiry_date=expiry)  # fmt: skip
                assert res["result"] == "ACCEPTED", res
                reserved = [kw for name, kw in cp.received if name == "ReserveNow"]
                assert reserved[-1]["connector_id"] == 0 and reserved[-1]["id_tag"] == "APP-9"
                res = await a.accepted("START_SESSION", token=token("APP-9"), location_id="DEPOT",
                                       evse_uid="stub-16-1")  # fmt: skip
                assert res["message"][0]["text"].startswith("station 'STUB-16' answered")
                start["location_id"] = "Depot"

                pa.fail_http = 503  # the eMSP is down a moment: the result is tried again
                answer, path = await a.send("UNLOCK_CONNECTOR", location_id="Depot",
                                            evse_uid="STUB-16-1", connector_id="1")  # fmt: skip
                assert answer["data"] == {"result": "ACCEPTED", "timeout": 1, "message": [
                    {"language": "en", "text": "sent to station 'STUB-16'"}]}  # fmt: skip
                await node.wait_for(lambda: any(x.path == path for x in pa.received), timeout=3)
                pa.fail_http = None
                await node.wait_for(lambda: [x.path for x in pa.received].count(path) == 2)
                tries = [x.body for x in pa.received if x.path == path]
                assert tries[0] == tries[1] and tries[1]["result"] == "TIMEOUT", tries
                assert "did not answer within 1 s" in tries[1]["message"][0]["text"]

                before = await _commands_stored(node)
                # refused at once, nothing written, nothing sent
                cases = [
                    ("START_SESSION", dict(start, location_id="NOPE"), 2003, "Location 'NOPE'"),
                    ("START_SESSION", dict(start, evse_uid="STUB-16-7"), 2003, "EVSE 'STUB-16-7'"),
                    ("START_SESSION", dict(start, evse_uid="STUB-16-1", connector_id="3"), 2003,
                     "connector '3'"),
                    ("UNLOCK_CONNECTOR", dict(location_id="STUB-16", evse_uid="OTHER-1",
                                              connector_id="1"), 2003, "EVSE 'OTHER-1'"),
                    ("START_SESSION", dict(start, token=token("APP-9", "FR", "XYZ")), 1000,
                     "only use its own tokens"),
                    ("CANCEL_RESERVATION", dict(reservation_id="never"), 1000,
                     "unknown reservation"),
                    ("RESERVE_NOW", dict(start, reservation_id="R", expiry_date=
                     "2020-01-01T00:00:00Z"), 1000, "has passed"),
                    ("RESERVE_NOW", dict(start, reservation_id="R", expiry_date=
                     "9999-12-31T23:59:59-05:00"), 1000, "cannot be sent to a station"),
                    ("STOP_SESSION", dict(session_id="9" * 30), 1000, "unknown session"),
                ]  # fmt: skip
                for command, body, code, why in cases:
                    answer, _ = await a.send(command, **body)
                    assert answer["status_code"] == code, (command, answer)
                    result = "UNKNOWN_SESSION" if command == "STOP_SESSION" else "REJECTED"
                    assert answer["data"]["result"] == result, (command, answer)
                    assert why in answer["data"]["message"][0]["text"], (command, answer)
                assert await _commands_stored(node) == before

            # the station is gone: REJECTED with the reason, at once
            await node.wait_for(lambda: not node.rt.ocpp.is_connected("STUB-16"))
            answer, path = await a.send("UNLOCK_CONNECTOR", location_id="Depot",
                                        evse_uid="STUB-16-1", connector_id="1")  # fmt: skip
            assert answer["status_code"] == 1000
            assert answer["data"]["result"] == "REJECTED"
            assert answer["data"]["message"][0]["text"] == "station 'STUB-16' is offline"
            assert await _commands_stored(node) == before

            # malformed bodies: 2001 naming the field; an unknown command: 404
            r = await a.http.post("/START_SESSION", json={"response_url": "http://x/y",
                                                          "location_id": "STUB-16"})  # fmt: skip
            assert r.status_code == 200 and r.json()["status_code"] == 2001
            assert "token" in r.json()["status_message"]
            r = await a.http.post("/RESERVE_NOW", json={
                "response_url": "ftp://x", "token": token("T"), "expiry_date": "soon",
                "reservation_id": "R", "location_id": "L"})  # fmt: skip
            msg = r.json()["status_message"]
            assert r.json()["status_code"] == 2001 and "response_url" in msg, msg
            assert "expiry_date" in msg
            r = await a.http.post("/START_SESSION", json={
                "response_url": "http://x/y", "token": token("T"), "location_id": "STUB-16",
                "connector_id": "1"})  # fmt: skip
            assert r.json()["status_code"] == 2001
            assert "evse_uid is required" in r.json()["status_message"]
            r = await a.http.post("/STOP_SESSION", content=b"{nope",
                                  headers={"Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 400 and r.json()["status_code"] == 2001
            r = await a.http.post("/SELF_DESTRUCT", json={})
            assert r.status_code == 404 and "START_SESSION" in r.json()["status_message"]
            r = await a.http.post("/STOP_SESSION", json={"session_id": "1"},
                                  headers={"Authorization": "Token bm9wZQ=="})  # fmt: skip
            assert r.status_code == 401
            assert await _commands_stored(node) == before
        finally:
            await pa.stop()
            await pb.stop()
