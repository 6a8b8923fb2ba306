"""Ghost sessions take no capacity, and a remote start that fails says so (A2, B1).

The station is the ``ocpp`` library's own 2.0.1 ChargePoint. A remote start
with a card the CSMS would refuse is not sent; an accepted one that brings no
transaction is logged as failed; a station that answers ``TxNotFound`` for a
TxProfile gets its EVSE planned as idle (TxDefault) instead of retries that
hold capacity for a session that does not exist.
"""

from __future__ import annotations

import asyncio

from ocpp.v201 import call

from conftest import Node, node_with
from evflex.smartcharging.manager import default_profile_id, tx_profile_id
from ocpp_clients import GhostStation, connected


async def _boot(cp) -> None:
    await cp.call(
        call.BootNotification(
            charging_station={"model": "G", "vendor_name": "Lib"}, reason="PowerUp"
        )
    )


async def _started(cp, trigger: str, transaction_info: dict, evse: dict, **more) -> None:
    """A TransactionEvent Started (seqNo 0) with the station's fixed timestamp."""
    await cp.call(
        call.TransactionEvent(
            event_type="Started",
            timestamp="2026-03-01T08:00:00Z",
            trigger_reason=trigger,
            seq_no=0,
            transaction_info=transaction_info,
            evse=evse,
            **more,
        )
    )


async def _events(node: Node, station_id: str, type_: str) -> list[dict]:
    r = await node.http.get("/api/v1/events", params={"station_id": station_id})
    return [e for e in r.json() if e["type"] == type_]


quick_node = node_with(remote_start_timeout_s=1.0)


async def test_remote_start_with_a_card_the_csms_refuses_is_not_sent(quick_node: Node):
    node = quick_node
    async with connected(GhostStation, node.ocpp_url, "GH-A", "ocpp2.0.1") as cp:
        await _boot(cp)
        r = await node.command("GH-A", "remote-start", {"id_token": "NOPE", "evse": 1})
        assert r.status_code == 409, r.text
        assert "NOPE" in r.json()["detail"] and "no transaction" in r.json()["detail"]
        assert not [a for a, _ in cp.received if a == "RequestStartTransaction"]


async def test_accepted_remote_start_without_transaction_is_reported_failed(quick_node: Node):
    node = quick_node
    await node.http.post("/api/v1/id-tokens", json={"id_token": "GOOD", "status": "Accepted"})
    async with connected(GhostStation, node.ocpp_url, "GH-B", "ocpp2.0.1") as cp:
        await _boot(cp)
        r = await node.command("GH-B", "remote-start", {"id_token": "GOOD", "evse": 1})
        assert r.status_code == 200 and r.json()["response"]["status"] == "Accepted", r.text
        # the station said yes and then started nothing
        [failed] = await node.wait_for(lambda: _events(node, "GH-B", "RemoteStartFailed"))
        assert failed["kind"] == "command"
        assert failed["detail"]["id_token"] == "GOOD" and failed["detail"]["evse_id"] == 1

        # A start that does bring its transaction is not reported.
        r = await node.command("GH-B", "remote-start", {"id_token": "GOOD", "evse": 2})
        assert r.status_code == 200, r.text
        await _started(
            cp,
            "RemoteStart",
            {"transaction_id": "T-OK"},
            {"id": 2},
            id_token={"id_token": "GOOD", "type": "Central"},
        )
        await asyncio.sleep(1.5)
        assert len(await _events(node, "GH-B", "RemoteStartFailed")) == 1


async def test_tx_not_found_releases_the_capacity_and_falls_back_to_txdefault(node: Node):
    r = await node.http.post(
        "/api/v1/sites", json={"id": "g", "import_limit_kw": 22, "policy": "equal"}
    )
    assert r.status_code == 201, r.text
    GhostStation.known = {"T-REAL"}
    async with connected(GhostStation, node.ocpp_url, "GH-C", "ocpp2.0.1") as cp:
        await _boot(cp)
        r = await node.http.patch("/api/v1/stations/GH-C", json={"site_id": "g"})
        assert r.status_code == 200, r.text
        for evse in (1, 2):
            await cp.call(
                call.StatusNotification(
                    timestamp="2026-03-01T08:00:00Z",
                    connector_status="Occupied",
                    evse_id=evse,
                    connector_id=1,
                )
            )
        for evse, tx in ((1, "T-REAL"), (2, "T-GHOST")):
            await _started(
                cp,
                "CablePluggedIn",
                {"transaction_id": tx, "charging_state": "Charging"},
                {"id": evse, "connector_id": 1},
            )
        lm = node.rt.lm

        [ev] = await node.wait_for(lambda: _events(node, "GH-C", "TxNotFound"))
        assert ev["detail"]["transaction_id"] == "T-GHOST"

        def ghost_released():
            plan = lm.status["g"].plan
            if plan is None or "GH-C/2" in plan.active or "GH-C/1" not in plan.active:
                return None
            return plan

        # The real session gets the site (22 kW = 31.9 A), not half of it, and
        # nothing is held for the ghost.
        plan = await node.wait_for(
            lambda: (p := ghost_released()) is not None and p.targets["GH-C/1"] >= 31.0 and p,
            timeout=10,
        )
        assert plan.pinned == {}
        # EVSE 2 gets a TxDefault, and the ghost's TxProfile is not retried.
        await node.wait_for(
            lambda: node.rt.dispatcher.get("GH-C", default_profile_id(2)) is not None
        )
        assert node.rt.dispatcher.get("GH-C", tx_profile_id(2)) is None
        sent = [
            p
            for a, p in cp.received
            if a == "SetChargingProfile" and p.get("transaction_id") == "T-GHOST"
        ]
        await asyncio.sleep(3.0)  # the dispatcher's first retry would come after 2 s
        again = [
            p
            for a, p in cp.received
            if a == "SetChargingProfile" and p.get("transaction_id") == "T-GHOST"
        ]
        assert len(again) == len(sent) == 1
