"""Alerts against a real node: every rule raised by real stations over real WebSockets and
cleared when its condition is gone, the webhook (a real HTTP server here) and the e-mail
(a real SMTP server here), acknowledgement with who and when, roles and bad input.
"""

from __future__ import annotations

import json
import socket
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from ocpp.v16 import call
from pydantic import ValidationError

from conftest import Node, running_node
from evflex.clock import isoformat
from evflex.config import Settings
from evflex.sim import EvSpec, SimStation, StationSpec
from ocpp_clients import Lib16, connected


class Webhook:
    """A real HTTP server on 127.0.0.1 keeping every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", 0))
                hook.bodies.append(json.loads(self.rfile.read(size)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def got(self, event: str, rule: str) -> list[dict]:
        return [
            b["alert"] for b in self.bodies if b["event"] == event and b["alert"]["rule"] == rule
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def alerts(node: Node, **params) -> list[dict]:
    r = await node.http.get("/api/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def client(node: Node, role: str, name: str) -> httpx.AsyncClient:
    token = node.rt.auth.ephemeral_token(role, name)
    return httpx.AsyncClient(
        base_url=str(node.http.base_url), headers={"Authorization": f"Bearer {token}"}
    )


async def test_an_offline_station_is_alerted_to_the_webhook_acked_and_cleared(
    database_url, webhook
):
    async with running_node(
        database_url, allow_unknown_stations=True, alert_offline_min=0.01, alert_tick_s=0.5,
        alert_webhook_url=webhook.url,
    ) as node:  # fmt: skip
        st = SimStation(StationSpec(id="AL-OFF", ocpp_version="2.0.1", evses=1),
                        node.ocpp_url, node.rt.clock, seed=1)  # fmt: skip
        await st.start(timeout=10)
        viewer, operator = client(node, "viewer", "vera"), client(node, "operator", "otto")
        try:
            assert await alerts(node, state="open") == []  # online: nothing
            await st.go_offline()
            [alert] = await node.wait_for(
                lambda: alerts(node, state="open", rule="station_offline"), timeout=10
            )
            assert alert["station_id"] == "AL-OFF" and alert["severity"] == "critical"
            assert "offline" in alert["message"] and alert["acked_by"] is None
            [sent] = await node.wait_for(lambda: webhook.got("alert.raised", "station_offline"))
            assert sent["id"] == alert["id"] and sent["station_id"] == "AL-OFF"
            stored = await node.wait_for(lambda: _notified(node, alert["id"]))
            assert stored[0]["channel"] == "webhook" and stored[0]["ok"] is True
            r = await node.http.get("/api/v1/alerts/summary")
            assert r.json()["open"] == 1 and r.json()["open_by_rule"] == {"station_offline": 1}

            # acknowledgement: operators may, viewers may not; who and when are kept
            r = await viewer.get("/api/v1/alerts", params={"state": "open"})
            assert r.status_code == 200 and len(r.json()) == 1
            r = await viewer.post(f"/api/v1/alerts/{alert['id']}/ack")
            assert r.status_code == 403, r.text
            r = await operator.post(f"/api/v1/alerts/{alert['id']}/ack")
            assert r.status_code == 200, r.text
            acked = r.json()
            assert acked["acked_by"] == "otto" and acked["acked_at"] and acked["state"] == "acked"
            r = await operator.post(f"/api/v1/alerts/{alert['id']}/ack")
            assert r.status_code == 409 and "otto" in r.json()["detail"]
            assert await alerts(node, state="open") == []
            assert [a["id"] for a in await alerts(node, state="acked")] == [alert["id"]]
            assert (await node.http.get("/api/v1/alerts/summary")).json()["open"] == 0
            await node.wait_for(lambda: webhook.got("alert.acked", "station_offline"))

            # the station is back: cleared, and the webhook is told
            await st.go_online()
            [cleared] = await node.wait_for(lambda: alerts(node, state="cleared"), timeout=10)
            assert cleared["id"] == alert["id"] and cleared["cleared_at"]
            assert cleared["acked_by"] == "otto"  # who acknowledged it stays
            await node.wait_for(lambda: webhook.got("alert.cleared", "station_offline"))
            assert await alerts(node, rule="station_offline", station_id="nobody") == []
            r = await node.http.get("/api/v1/alerts", params={"station_id": "AL-OFF", "limit": 1})
            assert r.headers["X-Total-Count"] == "1" and len(r.json()) == 1

            # bad input: 4xx with a reason
            for path, code in (
                ("/api/v1/alerts?state=closed", 422),
                ("/api/v1/alerts?limit=0", 422),
                ("/api/v1/alerts?rule=unknown", 422),
                ("/api/v1/alerts/0", 422),
                ("/api/v1/alerts/abc", 422),
                ("/api/v1/alerts/999999", 404),
            ):
                r = await node.http.get(path)
                assert r.status_code == code, (path, r.text)
            r = await operator.post("/api/v1/alerts/999999/ack")
            assert r.status_code == 404 and "999999" in r.json()["detail"]
        finally:
            await viewer.aclose()
            await operator.aclose()
            await st.stop()


async def _notified(node: Node, alert_id: int) -> list[dict]:
    r = await node.http.get(f"/api/v1/alerts/{alert_id}")
    assert r.status_code == 200, r.text
    return r.json()["notified"]


class Inbox:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 keeping what it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []
        inbox = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                text = envelope.content.decode("utf-8", "replace")
                inbox.messages.append((envelope.mail_from, list(envelope.rcpt_tos), text))
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):
            inbox.logins.append((auth_data.login.decode(), auth_data.password.decode()))
            return AuthResult(success=inbox.logins[-1] == ("alerts", "mail secret"))

        self.logins: list[tuple[str, str]] = []
        self.port = free_port()
        self.controller = Controller(
            Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
            auth_required=True, auth_require_tls=False,
        )  # fmt: skip
        self.controller.start()


async def _site(node: Node, site: str, limit_kw: float) -> None:
    r = await node.http.post(
        "/api/v1/sites", json={"id": site, "import_limit_kw": limit_kw, "policy": "equal"}
    )
    assert r.status_code == 201, r.text


async def _one(node: Node, rule: str, state: str = "open", **params) -> dict:
    [a] = await node.wait_for(lambda: alerts(node, state=state, rule=rule, **params), timeout=15)
    return a


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # a test server
async def test_each_rule_raises_and_clears_mail_goes_out_and_a_dead_webhook_is_recorded(tmp_path):
    """One node on SQLite: a faulted connector (a 1.6 station of the ``ocpp`` library), a
    station that rejects charging profiles, a site over its limit, a station clock off and a
    driver's need at risk; e-mail to a real SMTP server, a webhook nobody answers."""
    inbox = Inbox()
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    try:
        async with running_node(
            f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}", allow_unknown_stations=True,
            alert_tick_s=0.5, alert_site_over_s=1.0, site_sample_s=1.0, initial_full_power_s=0.0,
            alert_webhook_url=dead, alert_smtp_host="127.0.0.1", alert_smtp_port=inbox.port,
            alert_smtp_from="evflex@example.org", alert_smtp_to=["ops@example.org"],
            alert_smtp_user="alerts", alert_smtp_password="mail secret",
        ) as node:  # fmt: skip
            await _faulted(node, inbox)
            await _profiles_rejected(node)
            await _site_over_limit(node)
            await _clock_and_need(node)
            # the webhook was down all along: tried, recorded, and the node lives on
            first = (await alerts(node, rule="connector_faulted"))[-1]
            outcome = await node.wait_for(lambda: _outcome(node, first["id"], "webhook"), 15)
            assert outcome["ok"] is False and outcome["attempts"] == 3 and outcome["error"]
            assert (await node.http.get("/api/v1/alerts/summary")).status_code == 200
    finally:
        inbox.controller.stop()


async def _outcome(node: Node, alert_id: int, channel: str) -> dict | None:
    found = [x for x in await _notified(node, alert_id) if x["channel"] == channel]
    return found[0] if found else None


async def _faulted(node: Node, inbox: Inbox) -> None:
    async with connected(Lib16, node.ocpp_url, "AL-16", "ocpp1.6") as cp:
        await cp.call(call.BootNotification(charge_point_vendor="Acme", charge_point_model="M"))
        at = node.rt.clock.now()
        await cp.call(call.StatusNotification(
            connector_id=1, error_code="GroundFailure", status="Faulted", info="RCD tripped",
            timestamp=isoformat(at)))  # fmt: skip
        fault = await _one(node, "connector_faulted")
        assert (fault["station_id"], fault["evse_id"]) == ("AL-16", 1)
        assert fault["severity"] == "critical" and "GroundFailure" in fault["message"]
        assert fault["detail"]["info"] == "RCD tripped"

        # e-mail for each raised alert
        mails = await node.wait_for(
            lambda: [m for m in inbox.messages if "GroundFailure" in m[2]], timeout=10
        )
        sender, to, text = mails[0]
        assert sender == "evflex@example.org" and to == ["ops@example.org"]
        assert inbox.logins[0] == ("alerts", "mail secret")  # logged in first
        assert "Subject: [evflex] critical: station AL-16 EVSE 1" in text
        assert f"Alert {fault['id']}" in text
        outcome = await node.wait_for(lambda: _outcome(node, fault["id"], "email"))
        assert outcome["ok"] is True and outcome["attempts"] == 1

        # the connector recovers: cleared
        await cp.call(call.StatusNotification(
            connector_id=1, error_code="NoError", status="Available",
            timestamp=isoformat(at + timedelta(seconds=1))))  # fmt: skip
        await _one(node, "connector_faulted", state="cleared")


async def _profiles_rejected(node: Node) -> None:
    await _site(node, "al-p", 22)
    spec = StationSpec(id="AL-REJ", ocpp_version="2.0.1", evses=1, profile_behaviour="reject")
    st = SimStation(spec, node.ocpp_url, node.rt.clock, seed=2)
    await st.start(timeout=10)
    try:
        r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "al-p"})
        assert r.status_code == 200, r.text
        alert = await _one(node, "profile_rejected", station_id="AL-REJ")
        assert "Rejected" in alert["message"] and alert["site_id"] == "al-p"
        assert alert["detail"]["profiles"][0]["refused"]
        # new firmware takes profiles; at its reconnection the profiles go again: cleared
        st.spec.profile_behaviour = "execute"
        await st.go_offline()
        await st.go_online()
        await _one(node, "profile_rejected", state="cleared", station_id="AL-REJ")
    finally:
        await st.stop()


async def _site_over_limit(node: Node) -> None:
    await _site(node, "al-s", 5)
    r = await node.http.put("/api/v1/sites/al-s/load", json={"current_a": [10, 10, 10]})
    assert r.status_code == 200, r.text  # 6.9 kW on a 5 kW limit
    alert = await _one(node, "site_over_limit", site_id="al-s")
    assert alert["detail"]["import_limit_kw"] == 5 and alert["detail"]["net_kw"] > 6
    r = await node.http.patch("/api/v1/sites/al-s", json={"import_limit_kw": 10})
    assert r.status_code == 200, r.text
    await _one(node, "site_over_limit", state="cleared", site_id="al-s")


async def _clock_and_need(node: Node) -> None:
    """A 2.0.1 station 5 min ahead: clock_off until the CSMS has set its clock; a car
    whose need the site cannot meet: need_at_risk until it leaves."""
    await _site(node, "al-n", 4)
    await node.http.post("/api/v1/id-tokens", json={"id_token": "ALCARD", "status": "Accepted"})
    st = SimStation(StationSpec(id="AL-NEED", ocpp_version="2.0.1", evses=1),
                    node.ocpp_url, node.rt.clock, meter_interval_s=2.0, seed=3,
                    clock_skew_s=300.0, time_source="rtc")  # fmt: skip
    await st.start(timeout=10)
    try:
        clock = await _one(node, "clock_off", station_id="AL-NEED")
        assert abs(clock["detail"]["offset_s"] - 300) < 5 and "+300 s" in clock["message"]
        r = await node.http.patch(f"/api/v1/stations/{st.id}", json={"site_id": "al-n"})
        assert r.status_code == 200, r.text
        assert await st.plug_in(1, EvSpec(battery_kwh=80, soc=0.1), "ALCARD")
        # set by SetVariables, its live stamps are right again
        await _one(node, "clock_off", state="cleared", station_id="AL-NEED")

        [tx] = await node.wait_for(lambda: node.transactions(active="true", station_id=st.id))
        departure = node.rt.clock.now() + timedelta(hours=1)
        r = await node.http.put(f"/api/v1/transactions/{tx['id']}/preferences", json={
            "departure_time": departure.isoformat(), "energy_kwh": 50})  # fmt: skip
        assert r.status_code == 200, r.text
        alert = await _one(node, "need_at_risk", station_id="AL-NEED")
        r = await node.http.get("/api/v1/needs", params={"site_id": "al-n"})
        assert [v["status"] for v in r.json()] == ["NOT_POSSIBLE"]  # what the dashboard says
        assert alert["transaction"] == tx["transaction_id"] and alert["site_id"] == "al-n"
        assert alert["detail"]["need_wh"] > alert["detail"]["expected_wh"]
        await st.plug_out(1)
        await _one(node, "need_at_risk", state="cleared", station_id="AL-NEED")
    finally:
        await st.stop()


def test_alert_settings_are_checked():
    assert Settings(alert_rules=["clock_off"]).alert_rules == ["clock_off"]
    for bad in (
        {"alert_rules": ["station_gone"]},
        {"alert_offline_min": 0},
        {"alert_webhook_url": "ftp://example.org/hook"},
        {"alert_smtp_host": "mail.example.org"},  # no sender, no recipients
    ):
        with pytest.raises(ValidationError):
            Settings(**bad)


async def test_open_alerts_outlive_a_restart_and_stations_get_the_time_to_come_back(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'restart.db'}"
    stations = []
    try:
        async with running_node(
            url, allow_unknown_stations=True, alert_tick_s=0.5, alert_offline_min=0.01
        ) as node:
            for sid in ("RS-A", "RS-B"):
                st = SimStation(StationSpec(id=sid, ocpp_version="2.0.1", evses=1),
                                node.ocpp_url, node.rt.clock, seed=6)  # fmt: skip
                stations.append(st)
                await st.start(timeout=10)
            await stations[0].go_offline()
            first = await _one(node, "station_offline", station_id="RS-A")
        # RS-B was connected until the node stopped: it is not alerted at once after the
        # restart, but once the full time has passed; RS-A's alert stays the one it was
        async with running_node(
            url, allow_unknown_stations=True, alert_tick_s=0.5, alert_offline_min=0.05
        ) as node:
            started = node.rt.clock.now()
            assert [a["id"] for a in await alerts(node, state="open")] == [first["id"]]
            later = await _one(node, "station_offline", station_id="RS-B")
            assert later["raised_at"] >= (started + timedelta(seconds=2)).isoformat()
            assert [a["id"] for a in await alerts(node, station_id="RS-A")] == [first["id"]]
    finally:
        for st in stations:
            await st.stop()
