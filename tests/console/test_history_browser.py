"""The history view in a real browser: a simulated 1.6 station's session ends and its charge
record appears live with the energy the CSMS measured and the cost at the site's tariff;
filters narrow the list; the CSV link downloads the same records; an admin sets a
site's tariff in the form."""

from __future__ import annotations

import csv
import io
import os
import shutil

import pytest

from conftest import Node, start_node
from evflex.clock import AcceleratedClock
from evflex.demo import create_demo_admin
from evflex.sim import EvSpec, SimStation, StationSpec

CHROMIUM = os.environ.get("EVFLEX_CHROMIUM", "/usr/bin/chromium")

if not shutil.which(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"no browser at {CHROMIUM}: apt-get install chromium")
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import async_playwright, expect  # noqa: E402

expect.set_options(timeout=15_000)
PRICE = 0.30


async def test_an_ended_session_appears_in_history(tmp_path):
    clock = AcceleratedClock(60.0)
    rt, http = await start_node(
        f"sqlite+aiosqlite:///{tmp_path / 'web.db'}", clock=clock, allow_unknown_stations=True
    )
    node = Node(rt, http)
    st = None
    try:
        await http.post("/api/v1/sites", json={"id": "depot", "import_limit_kw": 50})
        r = await http.put("/api/v1/sites/depot/tariff", json={"energy_price_per_kwh": PRICE})
        assert r.status_code == 200, r.text
        await http.post("/api/v1/id-tokens", json={"id_token": "HIST-CARD", "status": "Accepted"})
        st = SimStation(StationSpec(id="HB-16", ocpp_version="1.6", evses=1), node.ocpp_url, clock,
                        meter_interval_s=30.0, seed=5)  # fmt: skip
        await st.start(timeout=10)
        assert (await http.patch("/api/v1/stations/HB-16", json={"site_id": "depot"})).is_success
        login = await create_demo_admin(rt)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            base = f"http://127.0.0.1:{rt.http_port}"
            await page.goto(f"{base}/login")
            await page.fill("#username", login.username)
            await page.fill("#password", login.password)
            await page.fill("#totp", login.code_now())
            await page.click("#login-submit")
            await expect(page.locator("#whoami")).to_contain_text(login.username)
            await page.goto(f"{base}/#/history")
            await expect(page.locator("#history-table")).to_contain_text("No charge records")

            # a session charges about 3 clock-minutes and ends while the page is open
            assert await st.plug_in(1, EvSpec(battery_kwh=60, soc=0.3), "HIST-CARD")
            await clock.sleep(180)
            await st.plug_out(1)
            row = page.locator("#history-table tbody tr[data-record]")
            await expect(row).to_have_count(1)  # live, without reloading
            tx = (await node.transactions(station_id="HB-16"))[0]
            kwh_in = tx["energy_imported_wh"] / 1000
            assert kwh_in > 0.3
            cells = row.locator("td")
            await expect(cells.nth(1)).to_have_text("HB-16 / 1")
            await expect(cells.nth(2)).to_have_text("HIST-CARD")
            shown = f"{kwh_in:.2f}" if kwh_in < 1 else f"{kwh_in:.1f}"  # as the page rounds
            await expect(cells.nth(4)).to_have_text(f"{shown} kWh")
            await expect(cells.nth(7)).to_have_text("unknown")
            await expect(cells.nth(8)).to_have_text(f"{kwh_in * PRICE:.2f} EUR")

            # its detail: the tariff and the cost breakdown
            await row.get_by_role("button", name="Details").click()
            detail = page.locator("#history-detail")
            await expect(detail).to_contain_text("version")
            await expect(page.locator("#history-detail-total")).to_have_text(
                f"{kwh_in * PRICE:.2f} EUR"
            )
            await expect(page.locator("#history-periods")).to_contain_text("base")

            # filters: another station has none; this station's card has its one
            await page.fill("#history-filters input[name=station]", "NOPE")
            await page.click("#history-filters button[type=submit]")
            await expect(page.locator("#history-table")).to_contain_text("No charge records")
            await expect(page.locator("#history-count")).to_contain_text("of 0")
            await page.fill("#history-filters input[name=station]", "HB-16")
            await page.select_option("#history-filters select[name=site]", "depot")
            await page.fill("#history-filters input[name=card]", "HIST-CARD")
            await page.click("#history-filters button[type=submit]")
            await expect(row).to_have_count(1)

            # the CSV link carries the same filters and downloads the record
            href = await page.locator("#history-csv").get_attribute("href")
            assert "station_id=HB-16" in href and "id_token=HIST-CARD" in href
            res = await page.request.get(base + href)
            assert res.ok, await res.text()
            rows = list(csv.DictReader(io.StringIO(await res.text())))
            assert [r["station_id"] for r in rows] == ["HB-16"]
            assert float(rows[0]["total_cost"]) == pytest.approx(kwh_in * PRICE, abs=1e-3)
            assert rows[0]["currency"] == "EUR"

            # the site's tariff: the version in force, and a new one from the form
            await page.click("#tariff-card summary")
            current = page.locator("#tariff-current")
            await expect(current).to_contain_text("0.300 EUR/kWh")
            await page.fill("#tariff-form textarea[name=windows]", "22:00-06:00 0.12\nbad line")
            await page.click("#tariff-form button[type=submit]")
            await expect(page.locator("#toast")).to_contain_text("line 2")
            await page.fill("#tariff-form input[name=energy]", "0.35")
            await page.fill("#tariff-form textarea[name=windows]", "22:00-06:00 0.12 Sat,Sun")
            await page.click("#tariff-form button[type=submit]")
            await expect(current).to_contain_text("0.350 EUR/kWh")
            await expect(current).to_contain_text("2 version(s)")
            tariff = (await http.get("/api/v1/sites/depot/tariff")).json()["current"]
            assert tariff["time_of_use"] == [
                {"start": "22:00", "end": "06:00", "days": ["Sat", "Sun"], "price_per_kwh": 0.12}
            ]
            assert errors == []
            await browser.close()
    finally:
        if st is not None:
            await st.stop(timeout=2.0)
        await http.aclose()
        await rt.stop()
