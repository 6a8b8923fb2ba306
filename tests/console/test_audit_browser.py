"""The audit trail in the dashboard (Chromium): an operator resets a station, the audit view
(a tab of the Events page) shows who did it, the action and the station's answer; rows arrive
live, filters and the CSV link follow; a viewer reads it and has nothing to edit."""

from __future__ import annotations

import re

from conftest import running_node
from evflex.demo import DemoLogin
from evflex.sim import SimStation, StationSpec
from evflex.web.auth import add_user
from web.test_browser import _login, browser, expect  # noqa: F401 (browser: a fixture)

PASSWORD = "an operator's passphrase"


async def test_the_audit_trail_shows_who_did_it(tmp_path, browser):  # noqa: F811
    async with running_node(
        f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}", allow_unknown_stations=True
    ) as node:
        st = SimStation(StationSpec(id="AUD-B", ocpp_version="2.0.1", evses=1),
                        node.ocpp_url, node.rt.clock, seed=3)  # fmt: skip
        await st.start(timeout=10)
        try:
            async with node.rt.sessionmaker() as s, s.begin():
                olga = await add_user(s, "olga", PASSWORD, "operator")
                vic = await add_user(s, "vic", PASSWORD, "viewer")
            base = f"http://127.0.0.1:{node.rt.http_port}"

            # the operator resets the station from the fleet
            page = await (await browser.new_context()).new_page()
            await _login(page, base, DemoLogin("olga", PASSWORD, olga.totp_secret))
            await page.goto(f"{base}/#/fleet")
            await page.locator("tr[data-station='AUD-B'] button[data-action='reset']").click()
            await page.click("#confirm-ok")
            await expect(page.locator("#toast")).to_contain_text("Accepted")

            # the Events page's tab leads to the audit trail: who, what, the station's answer
            await page.goto(f"{base}/#/events")
            await page.click(".event-tabs a[href='#/audit']")
            await expect(page).to_have_url(re.compile(r"#/audit$"))
            await expect(page.locator(".topbar nav a[href='#/events']")).to_have_attribute(
                "aria-current", "page"
            )
            reset = page.locator("#audit-table tbody tr", has_text="command reset")
            await expect(reset).to_have_count(1)
            for text in ("olga", "operator", "127.0.0.1", "station AUD-B", "ok 200",
                         "station: Accepted", '"type":"soft"'):  # fmt: skip
                await expect(reset).to_contain_text(text)
            failed = page.locator("#audit-table tbody tr", has_text="user olga")
            await expect(failed.filter(has_text="refused 401")).to_have_count(1)
            await expect(page.locator("#audit-chain")).to_contain_text("Hash chain intact")

            # a row arrives live: an admin registers a card through the API
            r = await node.http.post("/api/v1/id-tokens", json={"id_token": "04AABBCCDD"})
            assert r.status_code == 201, r.text
            card = page.locator("#audit-table tbody tr", has_text="id-token create")
            await expect(card).to_contain_text("token:in-process")
            await expect(card).to_contain_text("*" * 6 + "CCDD")
            await expect(page.locator("#audit-table")).not_to_contain_text("04AABBCCDD")

            # filters: only the operator's actions; the CSV link carries the filter
            await page.fill("#audit-filters [name=actor]", "olga")
            await page.click("#audit-filters button[type=submit]")
            await expect(card).to_have_count(0)
            rows = page.locator("#audit-table tbody tr")
            await expect(rows).to_have_count(2)  # the login and the reset
            await expect(page.locator("#audit-csv")).to_have_attribute(
                "href", "/api/v1/audit.csv?actor=olga"
            )
            csv = await page.evaluate(
                "fetch(document.querySelector('#audit-csv').href).then((r) => r.text())"
            )
            assert "olga" in csv and "command reset" in csv and "id-token" not in csv

            # a viewer reads the trail and has nothing to edit; the API refuses edits
            viewer = await (await browser.new_context()).new_page()
            await _login(viewer, base, DemoLogin("vic", PASSWORD, vic.totp_secret))
            await viewer.goto(f"{base}/#/audit")
            await expect(
                viewer.locator("#audit-table tbody tr", has_text="command reset")
            ).to_contain_text("olga")
            await expect(viewer.locator("#view button[data-action]")).to_have_count(0)
            await expect(viewer.locator("#audit-table input, #audit-table select")).to_have_count(0)
            status = await viewer.evaluate(
                "fetch('/api/v1/audit', {method: 'DELETE'}).then((r) => r.status)"
            )
            assert status == 405
        finally:
            await st.stop()
