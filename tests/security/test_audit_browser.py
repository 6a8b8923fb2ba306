"""The dashboard's event log in a real browser (Debian's Chromium): a refused login
shows as a Security event with its source address, and the operator can filter
the log to refused attempts."""

from __future__ import annotations

import re

from conftest import running_node
from evflex.demo import create_demo_admin
from web.test_browser import _login, browser, expect  # noqa: F401 (the browser fixture)

PROXY_CLIENT = "203.0.113.50"


async def test_refused_login_shows_in_the_event_log_with_its_source(browser, tmp_path):  # noqa: F811
    db = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    # the browser comes through a proxy we trust on 127.0.0.1, for this client
    async with running_node(db, trusted_proxy=["127.0.0.1"]) as node:
        login = await create_demo_admin(node.rt)
        base = f"http://127.0.0.1:{node.rt.http_port}"
        context = await browser.new_context(extra_http_headers={"X-Forwarded-For": PROXY_CLIENT})
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await _login(page, base, login)  # a wrong one-time code first, then the right one

        await page.click('a[href="#/events"]')
        await page.select_option("#events-kind", "Security")
        row = page.locator("#events-body tbody tr").filter(has_text="LoginFailed")
        await expect(row).to_have_count(1)
        await expect(row.locator("td.source")).to_have_text(PROXY_CLIENT)
        await expect(row).to_contain_text("wrong or already used one-time code")
        await expect(row).to_contain_text(f"user={login.username}")
        await expect(row).not_to_contain_text(login.password)
        # filtered to refused attempts: nothing else is listed
        kinds = await page.locator("#events-body tbody tr td:nth-child(3)").all_inner_texts()
        assert kinds and set(kinds) == {"Security"}
        await expect(page.locator("#events-kind option[value='Security']")).to_have_text(
            re.compile("refused attempts")
        )
        assert not errors
        await context.close()
