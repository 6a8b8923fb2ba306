"""Roaming partners in the dashboard (Chromium): an admin invites a partner and sees its token
once (the token opens our versions), a registered partner that is down shows as retrying with
its queue and error, live; retry now delivers; unregister asks first; a viewer changes nothing."""

from __future__ import annotations

import base64

import httpx

from conftest import running_node
from evflex.demo import DemoLogin
from evflex.web.auth import add_user
from ocpi.partner import RecordingPartner
from web.test_browser import _login, _shot, browser, expect  # noqa: F401 (browser: a fixture)

PASSWORD = "an admin's passphrase"


async def test_partners_view_invite_live_delivery_retry_and_unregister(tmp_path, browser):  # noqa: F811
    partner = await RecordingPartner([("sessions", "RECEIVER")], country_code="BE",
                                     party_id="RMP").start()  # fmt: skip
    try:
        async with running_node(
            f"sqlite+aiosqlite:///{tmp_path / 'partners.db'}", ocpi_retry_max_s=60
        ) as node:
            await _run(node, partner, browser)
    finally:
        await partner.stop()


async def _run(node, partner, browser) -> None:  # noqa: F811
    async with node.rt.sessionmaker() as s, s.begin():
        ada = await add_user(s, "ada", PASSWORD, "admin")
        vic = await add_user(s, "vic", PASSWORD, "viewer")
    base = f"http://127.0.0.1:{node.rt.http_port}"
    page = await (await browser.new_context()).new_page()
    await _login(page, base, DemoLogin("ada", PASSWORD, ada.totp_secret))
    await page.click(".topbar nav a[href='#/partners']")
    await expect(page.locator("#partners-table")).to_contain_text("No partners yet")
    await expect(page.locator("#partners-versions-url")).to_have_text(f"{base}/ocpi/versions")

    # a bad party id is refused with the reason, nothing is made
    await page.select_option("#invite-role", "EMSP")
    await page.fill("#invite-cc", "NL")
    await page.fill("#invite-pid", "A!")
    await page.click("#invite-submit")
    await expect(page.locator("#partners-invite-result")).to_contain_text("party id 'A!'")
    assert (await node.http.get("/api/v1/ocpi/partners")).json() == []

    # an invitation: the versions URL and token A, shown once, and the token works
    await page.fill("#invite-pid", "APP")
    await page.fill("#invite-name", "Driver app")
    await page.click("#invite-submit")
    secret = page.locator("#partners-secret")
    await expect(secret).to_contain_text("Invitation for NL/APP (EMSP)")
    assert await page.input_value("#invite-0") == f"{base}/ocpi/versions"
    token = await page.input_value("#invite-1")
    header = {"Authorization": "Token " + base64.b64encode(token.encode()).decode()}
    async with httpx.AsyncClient(base_url=base) as ocpi:
        assert (await ocpi.get("/ocpi/versions", headers=header)).status_code == 200
    invited = page.locator("#partners-table tr.partner-row", has_text="NL/APP")
    await expect(invited.locator(".partner-status")).to_have_text("invited")
    await expect(invited).to_contain_text("Driver app")
    await page.click("#partners-secret [data-dismiss]")
    await expect(secret).to_be_hidden()

    # a registered partner that is down: shown live as retrying, with its queue and error
    pid = await partner.link(node)
    partner.fail_http = 503
    for i in range(2):
        await node.rt.ocpi.outbox.push([pid], "sessions", "S1", "PUT", "/NL/EVF/S1", {"n": i})
    row = page.locator(f"#partners-table tr[data-partner='{pid}']")
    await expect(row.locator(".partner-delivery")).to_have_text("retrying")
    await expect(row.locator(".partner-queue")).to_have_text("2")
    await expect(row.locator(".partner-last-error")).to_contain_text("HTTP 503")
    await expect(row.locator(".partner-roles")).to_contain_text("EMSP BE/RMP")
    await expect(page.locator("#partners-summary")).to_contain_text("1retrying")
    await _shot(page, "partners")
    await row.locator("button[data-action='partner-outbox']").click()
    waiting = page.locator("#partners-outbox-table tbody tr[data-row]")
    await expect(waiting).to_have_count(2)
    await expect(waiting.first).to_contain_text("PUT /NL/EVF/S1")

    # it is back: retry now delivers at once (its backoff would wait seconds more)
    partner.fail_http = None
    await row.locator("button[data-action='partner-retry']").click()
    await expect(row.locator(".partner-queue")).to_have_text("0")
    await expect(row.locator(".partner-delivery")).to_have_text("delivering")
    await expect(row.locator(".partner-sent")).to_have_text("2")
    await expect(page.locator("#partners-outbox-table")).to_contain_text("Nothing waiting")
    await page.select_option("#partners-outbox-state", "sent")
    await expect(waiting).to_have_count(2)
    assert [r.body for r in partner.of("sessions")][-2:] == [{"n": 0}, {"n": 1}]

    # unregister asks first; its token stops working
    await row.locator("button[data-action='partner-unregister']").click()
    await expect(page.locator("#confirm-text")).to_contain_text("Unregister BE/RMP")
    await page.click("#confirm-ok")
    await expect(row.locator(".partner-status")).to_have_text("unregistered")
    await expect(page.locator("#toast")).to_contain_text("not told: it has no credentials endpoint")
    async with httpx.AsyncClient(base_url=base) as ocpi:
        r = await ocpi.get("/ocpi/versions", headers=partner.auth_header())
        assert r.status_code == 401

    # a viewer sees the partners and can change nothing
    viewer = await (await browser.new_context()).new_page()
    await _login(viewer, base, DemoLogin("vic", PASSWORD, vic.totp_secret))
    await viewer.goto(f"{base}/#/partners")
    await expect(viewer.locator("#partners-table tr.partner-row")).to_have_count(2)
    await expect(viewer.locator("#invite-submit")).to_be_disabled()
    for action in ("partner-unregister", "partner-retry", "partner-outbox"):
        buttons = viewer.locator(f"#partners-table button[data-action='{action}']")
        await expect(buttons.first).to_be_disabled()
