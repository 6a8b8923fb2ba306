"""Alerts in the dashboard (Chromium): a station goes offline, the nav badge and the list show
it live, the webhook got it, an operator acknowledges it and the list shows who and when."""

from __future__ import annotations

import re

from conftest import Node, running_node
from console.test_alerts import webhook  # noqa: F401 (a fixture)
from evflex.demo import DemoLogin
from evflex.sim import SimStation, StationSpec
from evflex.web.auth import add_user
from web.test_browser import _login, _shot, browser, expect  # noqa: F401 (browser: a fixture)

PASSWORD = "an operator's passphrase"


async def test_offline_station_alert_in_badge_list_webhook_and_acknowledged(
    tmp_path,
    browser,  # noqa: F811
    webhook,  # noqa: F811
):
    async with running_node(
        f"sqlite+aiosqlite:///{tmp_path / 'alerts.db'}", allow_unknown_stations=True,
        alert_offline_min=0.02, alert_tick_s=0.5, alert_webhook_url=webhook.url,
    ) as node:  # fmt: skip
        st = SimStation(StationSpec(id="AB-1", ocpp_version="2.0.1", evses=1),
                        node.ocpp_url, node.rt.clock, seed=5)  # fmt: skip
        await st.start(timeout=10)
        try:
            await _run(node, st, browser, webhook)
        finally:
            await st.stop()


async def _run(node: Node, st: SimStation, browser, webhook) -> None:  # noqa: F811
    async with node.rt.sessionmaker() as s, s.begin():
        user = await add_user(s, "olga", PASSWORD, "operator")
    login = DemoLogin("olga", PASSWORD, user.totp_secret)
    page = await (await browser.new_context()).new_page()
    base = f"http://127.0.0.1:{node.rt.http_port}"
    await _login(page, base, login)
    await page.goto(f"{base}/#/alerts")
    badge = page.locator("#alert-badge")
    await expect(page.locator("#alerts-table")).to_contain_text("No open alerts")
    await expect(badge).to_be_hidden()

    # the station leaves: badge 1, the list and a toast show it, the webhook got it
    await st.go_offline()
    await expect(badge).to_be_visible()
    await expect(badge).to_have_text(re.compile(r"^1\b"))
    row = page.locator("#alerts-table tbody tr[data-alert]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("AB-1")
    await expect(row).to_contain_text("offline")
    await expect(row.locator(".alert-state")).to_have_text("open")
    await _shot(page, "alerts")
    await expect(page.locator("#toast")).to_contain_text("Alert: station AB-1 offline")
    [sent] = await node.wait_for(lambda: webhook.got("alert.raised", "station_offline"))
    assert sent["station_id"] == "AB-1"
    assert await row.get_attribute("data-alert") == str(sent["id"])

    # an operator acknowledges it (with a confirmation); who and when are shown
    await row.locator("button[data-action='ack-alert']").click()
    await expect(page.locator("#confirm-text")).to_contain_text("AB-1")
    await page.click("#confirm-ok")
    await expect(page.locator("#alerts-table")).to_contain_text("No open alerts")
    await expect(badge).to_be_hidden()
    await page.select_option("#alerts-state", "all")
    await expect(row.locator(".alert-ack")).to_contain_text("olga")
    await expect(row.locator(".alert-ack .alert-when")).not_to_be_empty()
    await expect(row.locator(".alert-state")).to_have_text("acked")
    await _shot(page, "alerts-acked")
    [acked] = await node.wait_for(lambda: webhook.got("alert.acked", "station_offline"))
    assert acked["acked_by"] == "olga"

    # the station is back: the list turns it to cleared, live
    await st.go_online()
    await expect(row.locator(".alert-state")).to_contain_text("cleared")
