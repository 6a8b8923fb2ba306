"""Fleet management in the dashboard (Chromium): an admin onboards a station and a card
without the CLI, manages accounts and API tokens; a viewer sees what they may not do."""

from __future__ import annotations

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from conftest import Node, start_node
from evflex.demo import DemoLogin, create_demo_admin
from evflex.sim import EvSpec, SimStation, StationSpec
from ocpp_clients import basic_auth
from web.test_browser import _login, _shot, browser, expect  # noqa: F401 (browser: a fixture)

VIEWER_PASSWORD = "a viewer's passphrase"


async def _dismiss_toasts(page) -> None:
    await page.evaluate(
        "document.querySelectorAll('#toast .toast-close').forEach((b) => b.click())"
    )


async def test_admin_onboards_station_and_card_and_manages_accounts(tmp_path, browser):  # noqa: F811
    rt, http = await start_node(f"sqlite+aiosqlite:///{tmp_path / 'admin.db'}")
    node = Node(rt, http)
    base = f"http://127.0.0.1:{rt.http_port}"
    station = None
    try:
        await http.post(
            "/api/v1/sites", json={"id": "depot", "name": "Depot", "import_limit_kw": 40}
        )
        r = await http.post(
            "/api/v1/circuits", json={"id": "feeder-1", "site_id": "depot", "max_current_a": 63}
        )
        assert r.status_code == 201, r.text
        admin = await create_demo_admin(rt)
        page = await (await browser.new_context()).new_page()
        await _login(page, base, admin)
        await page.goto(f"{base}/#/admin")

        # onboard a station: site, circuit, phases, a generated password
        await page.click("button[data-add='station']")
        await page.fill("#sf-id", "ONB-1")
        await page.select_option("#sf-site", "depot")
        await page.select_option("#sf-circuit", "feeder-1")
        await page.select_option("#sf-phases", "1")
        await page.select_option("#sf-rotation", "2")
        await page.click("[data-generate='sf-password']")
        password = await page.input_value("#sf-password")
        assert 16 <= len(password) <= 40
        await page.click("#confirm-ok")
        await expect(page.locator("#toast")).to_contain_text("Add station ONB-1: added")
        row = page.locator("#admin-stations tr[data-station='ONB-1']")
        await expect(row.locator("td.site")).to_have_text("depot")
        await expect(row.locator("td.circuit")).to_have_text("feeder-1")
        await expect(row.locator(".conn-state")).to_contain_text("offline")
        st = await node.station("ONB-1")
        assert st["has_password"] and (st["phases"], st["phase_rotation"]) == (1, 2)

        # only that password lets the station in; with it, it shows online (live)
        with pytest.raises(InvalidStatus) as refused:
            async with websockets.connect(
                node.url("ONB-1"),
                subprotocols=["ocpp1.6"],
                additional_headers=basic_auth("ONB-1", "not the password!"),
            ):
                pass
        assert refused.value.response.status_code == 401
        spec = StationSpec(id="ONB-1", ocpp_version="1.6", evses=1, password=password)
        station = SimStation(spec, node.ocpp_url, rt.clock)
        await station.start(timeout=10)
        await expect(row.locator(".conn-state")).to_contain_text("online")

        # edit: the form says how a security profile change goes for an online station
        await row.locator("[data-action='station-edit']").click()
        await expect(page.locator("#confirm-fields")).to_contain_text("The station is online")
        await page.fill("#sf-max", "16")
        await page.click("#confirm-ok")
        await expect(row.locator("td.num")).to_have_text("16 A")
        assert (await node.station("ONB-1"))["site_id"] == "depot"
        await _dismiss_toasts(page)
        await _shot(page, "admin")

        # a card: unknown, the plug-in is refused; added in the dashboard, accepted
        assert not await station.plug_in(1, EvSpec(), "CARD-77")
        await page.click(".admin-tabs a[data-tab='cards']")
        await page.click("button[data-add='card']")
        await page.fill("#card-id", "CARD-77")
        await page.fill("#card-parent", "FLEET-A")
        await page.click("#confirm-ok")
        card = page.locator("#admin-cards tr[data-card='CARD-77']")
        await expect(card.locator(".card-status")).to_have_text("Accepted")
        assert await station.plug_in(1, EvSpec(), "CARD-77")
        tx = await node.wait_for(lambda: node.transactions(active="true", station_id="ONB-1"))
        assert tx[0]["id_token"] == "CARD-77"
        await card.locator("[data-action='card-block']").click()
        await page.click("#confirm-ok")
        await expect(card.locator(".card-status")).to_have_text("Blocked")
        answer = await rt.service.authorize("ONB-1", "CARD-77")
        assert answer.status == "Blocked" and answer.parent_id_token == "FLEET-A"

        # a user: the TOTP key is shown once; an admin cannot lock themself out
        await page.click(".admin-tabs a[data-tab='users']")
        await page.click("button[data-add='user']")
        await page.fill("#user-name", "vera")
        await page.select_option("#user-role", "viewer")
        await page.fill("#user-password", VIEWER_PASSWORD)
        await page.click("#confirm-ok")
        secret = await page.input_value("#secret-0")
        assert f"secret={secret}" in await page.input_value("#secret-1")
        await expect(page.locator("#admin-users tr[data-user='vera'] .role")).to_have_text("viewer")
        mine = page.locator(f"#admin-users tr[data-user='{admin.username}']")
        for action in ("user-disable", "user-role"):
            await expect(mine.locator(f"[data-action='{action}']")).to_be_disabled()
            await expect(mine.locator(f"[data-action='{action}']")).to_have_attribute(
                "title", "your own account"
            )
        await page.click("#admin-secret [data-dismiss]")
        await expect(page.locator("#admin-secret")).to_be_hidden()

        # an API token: shown once, works, revoked: refused at once
        await page.click(".admin-tabs a[data-tab='tokens']")
        await page.click("button[data-add='token']")
        await page.fill("#token-name", "meter reader")
        await page.click("#confirm-ok")
        token = await page.input_value("#secret-0")
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}
        ) as machine:
            assert (await machine.get("/api/v1/stations")).status_code == 200
            entry = page.locator("#admin-tokens tbody tr").filter(has_text="meter reader")
            await expect(entry.locator(".token-state")).to_have_text("active")
            await _dismiss_toasts(page)  # they sit over the table's right-hand column
            await entry.locator("[data-action='token-revoke']").click()
            await page.click("#confirm-ok")
            await expect(entry.locator(".token-state")).to_have_text("revoked")
            assert (await machine.get("/api/v1/stations")).status_code == 401

        # remove a station
        await http.post("/api/v1/stations", json={"id": "ONB-2"})
        await page.click(".admin-tabs a[data-tab='stations']")
        await page.locator("tr[data-station='ONB-2'] [data-action='station-remove']").click()
        await page.click("#confirm-ok")
        await expect(page.locator("tr[data-station='ONB-2']")).to_have_count(0)
        assert (await http.get("/api/v1/stations/ONB-2")).status_code == 404

        # the viewer: read-only stations, disabled controls with the reason, no accounts
        viewer = await (await browser.new_context()).new_page()
        await _login(viewer, base, DemoLogin("vera", VIEWER_PASSWORD, secret))
        await viewer.goto(f"{base}/#/admin/stations")
        await expect(viewer.locator("#admin-readonly")).to_contain_text("Read only")
        edit = viewer.locator("tr[data-station='ONB-1'] [data-action='station-edit']")
        await expect(edit).to_be_disabled()
        add = viewer.locator("button[data-add='station']")
        await expect(add).to_be_disabled()
        await expect(add).to_have_attribute("title", "admins only")
        for tab, text in (
            ("cards", "operators and admins only"),
            ("users", "admins only"),
            ("tokens", "admins only"),
        ):
            await viewer.click(f".admin-tabs a[data-tab='{tab}']")
            await expect(viewer.locator(".admins-only")).to_contain_text(text)
            await expect(viewer.locator("#admin-body table")).to_have_count(0)
    finally:
        if station is not None:
            await station.stop()
        await http.aclose()
        await rt.stop()
