"""The dashboard and the driver page in a real browser (Debian's Chromium, driven by Playwright)
against a running node with simulated stations.

Set ``EVFLEX_SCREENSHOTS=docs/screenshots`` to save the README's screenshots.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import Node, start_node
from evflex.demo import create_demo_admin
from evflex.sim import EvSpec, SimStation, StationSpec
from sim.test_sim_v21 import bidi, profile

CHROMIUM = os.environ.get("EVFLEX_CHROMIUM", "/usr/bin/chromium")
SHOTS = os.environ.get("EVFLEX_SCREENSHOTS")
TIMEOUT_MS = 15_000

if not shutil.which(CHROMIUM):
    if os.environ.get("CI"):
        raise RuntimeError(f"no browser at {CHROMIUM}: apt-get install chromium")
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import async_playwright, expect  # noqa: E402

expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture
async def browser():
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
async def site(tmp_path):
    """A node, a 40 kW site with a 2.0.1 station and a 2.1 station with a bidirectional car."""
    rt, http = await start_node(
        f"sqlite+aiosqlite:///{tmp_path / 'web.db'}",
        allow_unknown_stations=True,
        initial_full_power_s=0.0,
        site_sample_s=1.0,
    )
    node = Node(rt, http)
    stations: list[SimStation] = []
    try:
        start = rt.clock.now() - timedelta(minutes=5)
        await http.post("/api/v1/sites", json={
            "id": "depot", "name": "Depot", "import_limit_kw": 40, "policy": "equal",
            "import_tariff_per_kwh": 0.25, "export_tariff_per_kwh": 0.15})  # fmt: skip
        r = await http.put("/api/v1/sites/depot/forecast", json={
            "start": start.isoformat(), "slot_minutes": 15,
            "import_price": [round(0.25 + 0.08 * math.sin(i / 96 * 2 * math.pi), 3)
                             for i in range(96)],
            "pv_kw": [6.0] * 96, "base_load_kw": [4.0] * 96})  # fmt: skip
        assert r.status_code == 200, r.text
        await http.post("/api/v1/id-tokens", json={"id_token": "CARD1", "status": "Accepted"})
        for sid, version in (("WEB-201", "2.0.1"), ("WEB-21", "2.1")):
            st = SimStation(
                StationSpec(id=sid, ocpp_version=version, evses=2),
                node.ocpp_url, rt.clock, meter_interval_s=2.0, seed=4,
            )  # fmt: skip
            stations.append(st)
            await st.start(timeout=10)
        r = await http.patch("/api/v1/stations/WEB-201", json={"site_id": "depot"})
        assert r.status_code == 200
        yield node, stations
    finally:
        for st in stations:
            await st.stop()
        await http.aclose()
        await rt.stop()


if SHOTS:
    Path(SHOTS).mkdir(parents=True, exist_ok=True)


async def _shot(page, name: str) -> None:
    if SHOTS:
        await page.evaluate("window.scrollTo(0, 0)")  # a sticky header stays on top
        await page.screenshot(path=f"{SHOTS}/{name}.png", full_page=True)


async def _login(page, base: str, login) -> None:
    await page.goto(f"{base}/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.fill("#username", login.username)
    await page.fill("#password", login.password)
    await page.fill("#totp", "000000" if login.code_now() != "000000" else "111111")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_contain_text("wrong")
    await page.fill("#password", login.password)  # the page clears it after a failure
    await page.fill("#totp", login.code_now())
    await page.click("#login-submit")
    await expect(page.locator("#whoami")).to_contain_text(login.username)


async def _tx(node: Node, station_id: str) -> dict:
    return (await node.wait_for(lambda: node.transactions(active="true", station_id=station_id)))[0]


async def test_operator_dashboard_live(site, browser):
    node, stations = site
    st201, st21 = stations
    base = f"http://127.0.0.1:{node.rt.http_port}"
    login = await create_demo_admin(node.rt)
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    await _login(page, base, login)
    await expect(page.locator("#live-status")).to_have_text("live")
    # fleet: both stations, online, with their OCPP versions
    await page.click('a[href="#/fleet"]')
    row201 = page.locator('tr[data-station="WEB-201"]')
    await expect(row201.locator(".conn-state")).to_have_text("online")
    await expect(row201.locator(".ocpp-version")).to_contain_text("2.0.1")
    await expect(page.locator('tr[data-station="WEB-21"] .ocpp-version')).to_contain_text("2.1")
    # a station that connects while we watch appears without a reload; going away, it
    # is marked offline
    late = SimStation(StationSpec(id="WEB-16", ocpp_version="1.6"), node.ocpp_url, node.rt.clock)
    stations.append(late)
    await late.start(timeout=10)
    row16 = page.locator('tr[data-station="WEB-16"]')
    await expect(row16.locator(".conn-state")).to_have_text("online")
    await late.stop()
    await expect(row16.locator(".conn-state")).to_have_text("offline")

    # a car arrives while we watch: it appears live, charging at its full 11 kW
    await page.click('a[href="#/sessions"]')
    assert await st201.plug_in(1, EvSpec(battery_kwh=60, soc=0.3), "CARD1")
    tx = await _tx(node, "WEB-201")
    row = page.locator(f'tr[data-tx="{tx["id"]}"]')
    await expect(row.locator(".power")).to_contain_text("11.0 kW")
    await expect(row.locator(".v2x-state")).to_have_text("charging")

    # a bidirectional car on the 2.1 station, told to give 3 kW back
    assert await st21.plug_in(1, bidi(battery_kwh=40.0, soc=0.7), "CARD1")
    tx21 = await _tx(node, "WEB-21")
    body = profile([{"operationMode": "CentralSetpoint", "setpoint": -3000.0,
                     "limit": 11000.0, "dischargeLimit": -11000.0}], pid=61)  # fmt: skip
    r = await node.http.put(
        "/api/v1/stations/WEB-21/charging-profiles", json={"evse_id": 1, "profile": body}
    )
    assert r.status_code == 200, r.text
    row21 = page.locator(f'tr[data-tx="{tx21["id"]}"]')
    await expect(row21.locator(".v2x-state")).to_have_text("discharging")
    await expect(row21.locator(".v2x-state")).to_have_class(re.compile("v2x-discharging"))
    await expect(row21.locator(".power")).to_contain_text("3.0 kW")
    await _shot(page, "sessions")

    # the site page: lower the limit with confirmation; the session's power follows
    await page.goto(f"{base}/#/sites/depot")
    await expect(page.locator("#site-chart canvas").first).to_be_visible()
    await expect(page.locator('[data-kpi="sessions"]')).not_to_have_text("–")
    await page.fill("#limit-input", "8")
    await page.click("#limit-apply")
    await expect(page.locator("#confirm")).to_be_visible()
    await expect(page.locator("#confirm-text")).to_contain_text("8")
    await page.click("#confirm-ok")
    await node.wait_for(lambda: _limit_is(node, 8.0))
    await _shot(page, "site")
    await page.click('a[href="#/sessions"]')
    # 8 kW - 4 kW load + 6 kW PV = 10 kW for the car would be too much: the site limit
    # is the grid connection, the load manager gives the EVSE what is left of 8 kW
    await expect(row.locator(".power")).not_to_contain_text("11.0 kW", timeout=20_000)
    site = (await node.http.get("/api/v1/sites/depot")).json()
    assert site["import_limit_kw"] == 8.0

    # priority charging, with confirmation
    await row.locator(".btn-priority").click()
    await page.click("#confirm-ok")
    await expect(row.locator(".btn-priority")).to_have_text("End priority")
    assert (await _tx(node, "WEB-201"))["priority"] is True

    # fleet and event log
    await page.click('a[href="#/fleet"]')
    await expect(row201.locator(".connector").first).to_be_visible()
    await _shot(page, "fleet")
    await page.click('a[href="#/events"]')
    await expect(page.locator("#events-table tbody tr").first).to_be_visible()
    await _shot(page, "events")
    assert not errors, errors


async def _limit_is(node: Node, kw: float) -> bool:
    return (await node.http.get("/api/v1/sites/depot")).json()["import_limit_kw"] == kw


async def test_viewer_sees_but_cannot_act(site, browser):
    node, (st201, _) = site
    from evflex.web.auth import add_user

    async with node.rt.sessionmaker() as s, s.begin():
        user = await add_user(s, "vera", "viewer-password", "viewer")
    import pyotp

    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{node.rt.http_port}/login")
    await page.fill("#username", "vera")
    await page.fill("#password", "viewer-password")
    await page.fill("#totp", pyotp.TOTP(user.totp_secret).now())
    await page.click("#login-submit")
    await expect(page.locator("#whoami")).to_contain_text("viewer")
    await page.click('a[href="#/fleet"]')
    await expect(page.locator('tr[data-station="WEB-201"] .btn-reset')).to_be_disabled()


async def test_driver_page_on_a_phone(site, browser):
    node, (st201, _) = site
    base = f"http://127.0.0.1:{node.rt.http_port}"
    ctx = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = await ctx.new_page()
    await page.goto(f"{base}/charge/WEB-201/1")
    await expect(page.locator("#session-state")).to_contain_text("No charging session")
    assert await st201.plug_in(1, EvSpec(battery_kwh=60, soc=0.3), "CARD1")
    await _tx(node, "WEB-201")
    await page.reload()
    await expect(page.locator("#session-state")).to_contain_text("Charging")

    leave = (datetime.now().astimezone() + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M")
    await page.fill("#departure", leave)
    await page.fill("#energy-kwh", "20")
    await page.click("#save-prefs")
    await expect(page.locator("#prefs-result")).to_have_class(re.compile("accepted"))
    await expect(page.locator("#prefs-result")).to_contain_text("You will have")
    await expect(page.locator("#expected-soc")).not_to_be_empty()
    tx = await _tx(node, "WEB-201")
    assert tx["energy_target_wh"] is not None
    dep = datetime.fromisoformat(tx["departure_at"])
    assert abs(dep - (datetime.now(UTC) + timedelta(hours=6))) < timedelta(minutes=2)
    await _shot(page, "driver")

    # charge as fast as possible, and back
    await page.click("#fast-charge")
    await expect(page.locator("#fast-charge")).to_contain_text("Stop fast charging")
    assert (await _tx(node, "WEB-201"))["priority"] is True
    await page.click("#fast-charge")
    await expect(page.locator("#fast-charge")).to_contain_text("Charge as fast as possible")
    assert (await _tx(node, "WEB-201"))["priority"] is False

    # a need that cannot be met is said plainly
    await page.fill("#energy-kwh", "400")
    await page.click("#save-prefs")
    await expect(page.locator("#prefs-result")).to_have_class(re.compile("not-possible"))
    await expect(page.locator("#prefs-result")).to_contain_text("cannot be met")

    # a second phone at the same charger is not let in
    other = await browser.new_page()
    await other.goto(f"{base}/charge/WEB-201/1")
    await expect(other.locator("body")).to_contain_text("another device")
    await ctx.close()


def _overlap(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return False
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


async def test_operator_actions_answers_and_toasts(site, browser):
    """Availability for the whole station with its answer and a way back; the Now tile
    follows an applied limit; toasts never cover the controls; a favicon; needs at risk."""
    node, (st201, _) = site
    base = f"http://127.0.0.1:{node.rt.http_port}"
    login = await create_demo_admin(node.rt)
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    missing: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    await _login(page, base, login)
    await expect(page.locator("#live-status")).to_have_text("live")
    assert await st201.plug_in(1, EvSpec(battery_kwh=60, soc=0.3), "CARD1")
    tx = await _tx(node, "WEB-201")

    # a station with a charging and an idle EVSE: inoperative as a whole, scheduled
    await page.click('a[href="#/fleet"]')
    row = page.locator('tr[data-station="WEB-201"]')
    await expect(row.locator(".connector").first).to_contain_text("1: Occupied")
    await row.locator(".btn-inoperative").click()
    await page.click("#confirm-ok")
    toast = page.locator("#toast .toast-item").first
    await expect(toast).to_contain_text("Scheduled")
    await expect(toast).to_contain_text("takes effect when the session ends")
    assert st201.station_operative is False  # EVSE 0: the station, not one connector
    await expect(row.locator(".btn-operative")).to_have_text("Set operative")
    await expect(row.locator(".avail-pending")).to_be_visible()
    await toast.locator(".toast-close").click()  # dismissable
    await expect(page.locator("#toast .toast-item")).to_have_count(0)
    await row.locator(".btn-operative").click()
    await page.click("#confirm-ok")
    await expect(page.locator("#toast .toast-item").first).to_contain_text("Accepted")
    assert st201.station_operative is True
    await expect(row.locator(".btn-inoperative")).to_be_visible()
    await expect(row.locator(".btn-operative")).to_have_count(0)

    # the site page without the live stream: the Now tile takes the limit from the answer
    await page.route("**/api/v1/stream", lambda route: route.abort())
    await page.goto(f"{base}/#/sites/depot")
    now_limit = page.locator('[data-now="import_limit_kw"]')
    await expect(now_limit).to_have_text("40.0 kW")
    for limit, block in (("30", "end"), ("20", "start")):
        await page.fill("#limit-input", limit)
        # the Apply button at the bottom, then at the top of the window
        await page.evaluate(
            f"document.querySelector('#limit-apply').scrollIntoView({{block: '{block}'}})"
        )
        await page.click("#limit-apply")
        await page.click("#confirm-ok")
        await expect(now_limit).to_have_text(f"{limit}.0 kW")
        item = page.locator("#toast .toast-item").first
        await expect(item).to_contain_text(f"{limit}.0 kW")
        box = await item.bounding_box()
        for control in ("#limit-apply", "#limit-input", "#kpi-period"):
            assert not _overlap(box, await page.locator(control).bounding_box()), (block, control)
        await item.locator(".toast-close").click()
    await page.unroute("**/api/v1/stream")

    # a need the site cannot meet: at risk in the sessions view, as for the driver
    departure = datetime.now(UTC) + timedelta(hours=3)
    r = await node.http.put(
        f"/api/v1/transactions/{tx['id']}/preferences",
        json={"departure_time": departure.isoformat(), "energy_kwh": 501.9},
    )
    assert r.status_code == 200 and r.json()["status"] == "NOT_POSSIBLE", r.text
    await page.goto(f"{base}/#/sessions")
    txrow = page.locator(f'tr[data-tx="{tx["id"]}"]')
    await expect(txrow.locator(".need-flag")).to_have_text("at risk")
    await expect(page.locator("#sessions-summary li.bad .summary-value")).to_have_text("1")

    # the favicon is served and linked from every page
    r = await page.request.get(f"{base}/favicon.ico")
    assert r.status == 200 and r.headers["content-type"] == "image/x-icon"
    for path in ("/", "/login", "/charge/WEB-201/1"):
        await page.goto(base + path)
        href = await page.locator('link[rel="icon"]').first.get_attribute("href")
        assert (await page.request.get(base + href)).status == 200
    assert not [u for u in missing if "favicon" in u], missing
    assert not errors, errors


async def test_driver_page_one_verdict_in_local_time(site, browser):
    node, (st201, _) = site
    base = f"http://127.0.0.1:{node.rt.http_port}"
    ctx = await browser.new_context(
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        locale="en-US",
        timezone_id="America/New_York",
    )
    page = await ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(f"{base}/charge/NOPE/9")
    await expect(page.locator("#session-state")).to_have_text("No such charger")
    await page.goto(f"{base}/charge/WEB-201/9")
    await expect(page.locator("#session-state")).to_have_text("No such charger")

    assert await st201.plug_in(1, EvSpec(battery_kwh=60, soc=0.3), "CARD1")
    await _tx(node, "WEB-201")
    await page.goto(f"{base}/charge/WEB-201/1")
    await expect(page.locator("#session-state")).to_contain_text("Charging")
    ny = ZoneInfo("America/New_York")
    leave = datetime.now(ny).replace(second=0, microsecond=0) + timedelta(hours=4)
    await page.fill("#departure", leave.strftime("%Y-%m-%dT%H:%M"))
    await page.fill("#energy-kwh", "300")
    await page.click("#save-prefs")
    result = page.locator("#prefs-result")
    await expect(result).to_have_class(re.compile("not-possible"))
    text = await result.text_content()
    # times in the browser's zone, never UTC
    assert "UTC" not in text and leave.strftime("%I:%M") in text, text
    expected = await page.locator("#expected-soc").text_content()
    assert leave.strftime("%I:%M") in expected, expected
    # one computation: the most reachable is what the plan brings when it cannot be met
    most = float(re.search(r"at most about ([\d.]+) kWh", text).group(1))
    charged = float(re.search(r"([\d.]+) kWh charged", expected).group(1))
    assert most == pytest.approx(charged, abs=0.15), (text, expected)
    assert most < 300

    # the plan the page draws is the EVSE's total power, as the car draws it now
    token = await page.evaluate("localStorage.getItem('evflex-driver:WEB-201:1')")
    s = (
        await node.http.get("/api/v1/driver/session", headers={"Authorization": f"Bearer {token}"})
    ).json()
    assert s["plan"] and s["plan_end"]
    await node.wait_for(lambda: _drawing(node, "WEB-201"), timeout=10)
    drawn = (await _tx(node, "WEB-201"))["power_w"] / 1000
    assert s["plan"][0]["power_kw"] == pytest.approx(drawn, rel=0.05), (s["plan"], drawn)
    await expect(page.locator("#plan-chart .u-legend")).to_contain_text("Planned power")
    assert not errors, errors
    await ctx.close()


async def _drawing(node: Node, station_id: str) -> bool:
    return ((await _tx(node, station_id))["power_w"] or 0) > 1000
