"""The site page's screenshot near the end of ``evflex demo --v2x`` (a simulated V2G day),
when its chart holds the day's import, export and prices.

    python scripts/screenshots.py [OUT_DIR]      # default docs/screenshots

Needs Debian's Chromium at /usr/bin/chromium and the ``playwright`` package
(``pip install -e ".[test]"``). The other screenshots come from the browser
tests: ``EVFLEX_SCREENSHOTS=docs/screenshots pytest tests/web/test_browser.py``
(run them first: they write a site.png of their own).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright

from evflex.app import Runtime
from evflex.demo import create_demo_admin, demo_clock, demo_settings, run_demo

HOURS = 24.0
REAL_SECONDS = 90.0  # the simulated day in this long: time enough for the browser


async def main(out: Path) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="evflex-shots-")
    rt = Runtime(
        demo_settings(Path(tmp.name) / "demo.db", "127.0.0.1", 0, 0),
        demo_clock(HOURS, HOURS * 3600 / REAL_SECONDS),
    )
    await rt.start()
    login = await create_demo_admin(rt)
    late = asyncio.Event()  # the day is nearly over

    def progress(f: float) -> None:
        if f >= 0.93:
            late.set()

    demo = asyncio.create_task(
        run_demo(rt, stations=6, hours=HOURS, seed=11, site_limit_kw=60, v2x=True,
                 progress=progress)
    )  # fmt: skip
    base = f"http://127.0.0.1:{rt.http_port}"
    try:
        async with async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            await page.goto(f"{base}/login")
            await page.fill("#username", login.username)
            await page.fill("#password", login.password)
            await page.fill("#totp", login.code_now())
            await page.click("#login-submit")
            await page.wait_for_selector("#whoami")

            await late.wait()
            await page.goto(f"{base}/#/sites/demo-site")
            await page.wait_for_timeout(2500)  # data and a few live updates
            await page.screenshot(path=str(out / "site.png"), full_page=True)
            print(f"wrote {out / 'site.png'}")
            await browser.close()
        await demo
    finally:
        demo.cancel()
        await rt.stop()
        tmp.cleanup()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
