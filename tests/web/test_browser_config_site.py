"""The site page in a real browser: a limit set in the configuration file is read-only."""

from __future__ import annotations

from conftest import start_node
from evflex.demo import create_demo_admin
from web.test_browser import browser, expect  # noqa: F401  (the fixture, Playwright's expect)


async def test_a_configured_limit_is_read_only_on_the_site_page(tmp_path, browser):  # noqa: F811
    rt, http = await start_node(
        f"sqlite+aiosqlite:///{tmp_path / 'cfg.db'}",
        sites=[{"id": "depot", "name": "Depot", "import_limit_kw": 40}],
        site_sample_s=0,
    )
    try:
        r = await http.post("/api/v1/sites", json={"id": "yard", "import_limit_kw": 20})
        assert r.status_code == 201
        login = await create_demo_admin(rt)
        base = f"http://127.0.0.1:{rt.http_port}"
        page = await browser.new_page()
        await page.goto(f"{base}/login")
        await page.fill("#username", login.username)
        await page.fill("#password", login.password)
        await page.fill("#totp", login.code_now())
        await page.click("#login-submit")
        await expect(page.locator("#whoami")).to_contain_text(login.username)

        await page.goto(f"{base}/#/sites/depot")
        await expect(page.locator("#limit-input")).to_have_value("40")
        await expect(page.locator("#limit-managed")).to_be_visible()
        await expect(page.locator("#limit-managed")).to_contain_text("configuration file")
        await expect(page.locator("#limit-input")).to_be_disabled()
        await expect(page.locator("#limit-apply")).to_be_disabled()

        await page.goto(f"{base}/#/sites/yard")  # created through the API: the operator's
        await expect(page.locator("#limit-input")).to_have_value("20")
        await expect(page.locator("#limit-managed")).to_be_hidden()
        await expect(page.locator("#limit-input")).to_be_enabled()
        await expect(page.locator("#limit-apply")).to_be_enabled()
    finally:
        await http.aclose()
        await rt.stop()
