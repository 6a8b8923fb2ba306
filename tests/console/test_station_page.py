"""The station page (#/stations/{id}) in a real browser against a node with a simulated
OCPP 1.6 and a 2.0.1 station: configuration edits reach the simulator, availability and
commands get the station's answers, the meter chart and profiles show, viewers cannot act."""

from __future__ import annotations

import re
from datetime import timedelta

import pyotp

from conftest import Node, start_node
from console.test_firmware import IMAGE, file_server
from evflex.demo import create_demo_admin
from evflex.sim import EvSpec, SimStation, StationSpec
from evflex.web.auth import add_user
from web.test_browser import _shot, browser, expect  # noqa: F401  (the browser fixture)

#: Keeps every firmware status the page shows, in order, in window.fwSeen.
FIRMWARE_WATCH = """() => {
  window.fwSeen = [];
  const box = document.querySelector("#st-firmware");
  const note = () => {
    const el = box.querySelector('[data-fw="status"]');
    const text = el && el.textContent.trim();
    if (text && window.fwSeen[window.fwSeen.length - 1] !== text) window.fwSeen.push(text);
  };
  new MutationObserver(note).observe(box, {childList: true, subtree: true, characterData: true});
}"""


async def _sign_in(page, base: str, username: str, password: str, code: str) -> None:
    await page.goto(f"{base}/login")
    await page.fill("#username", username)
    await page.fill("#password", password)
    await page.fill("#totp", code)
    await page.click("#login-submit")
    await expect(page.locator("#whoami")).to_contain_text(username)


async def _confirm(page) -> None:
    await expect(page.locator("#confirm")).to_be_visible()
    await page.click("#confirm-ok")


def _seen(log: list, direction: str, action: str) -> int:
    return sum(1 for d, a, _ in log if d == direction and a == action)


async def test_station_page(tmp_path, browser):  # noqa: F811
    rt, http = await start_node(
        f"sqlite+aiosqlite:///{tmp_path / 'station.db'}",
        allow_unknown_stations=True,
        initial_full_power_s=0.0,
    )
    node = Node(rt, http)
    log16: list = []
    st16 = SimStation(
        StationSpec(id="PAGE-16", ocpp_version="1.6", evses=2), node.ocpp_url, rt.clock,
        meter_interval_s=2.0, seed=3, on_message=lambda *m: log16.append(m),
    )  # fmt: skip
    st201 = SimStation(
        StationSpec(id="PAGE-201", ocpp_version="2.0.1", evses=2), node.ocpp_url, rt.clock,
        meter_interval_s=2.0, seed=3,
    )  # fmt: skip
    try:
        for st in (st16, st201):
            st.firmware_step_s = 0.8
            await st.start(timeout=10)
        await http.post("/api/v1/id-tokens", json={"id_token": "CARD1", "status": "Accepted"})
        assert await st201.plug_in(1, EvSpec(battery_kwh=60, soc=0.4), "CARD1")
        base = f"http://127.0.0.1:{rt.http_port}"
        login = await create_demo_admin(rt)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await _sign_in(page, base, login.username, login.password, login.code_now())
        await expect(page.locator("#live-status")).to_have_text("live")

        # from the fleet to the 1.6 station's page
        await page.click('a[href="#/fleet"]')
        await page.click('tr[data-station="PAGE-16"] a.station-link')
        await expect(page).to_have_url(f"{base}/#/stations/PAGE-16")
        await expect(page.locator('[data-id="ocpp_version"]')).to_have_text("1.6")
        await expect(page.locator("#st-conn")).to_have_text("online")

        # a configuration key edited in place: the station answers, the simulator holds it
        row = page.locator('#config-table tr[data-key="MeterValueSampleInterval"]')
        await expect(row.locator("input")).to_have_value("2")
        await row.locator("input").fill("7")
        await row.locator(".btn-save").click()
        await expect(page.locator("#confirm-text")).to_contain_text("MeterValueSampleInterval")
        await _confirm(page)
        await expect(row.locator(".cfg-answer")).to_have_text("Accepted")
        assert st16.config.text("MeterValueSampleInterval") == "7"
        await expect(row.locator("input")).to_have_value("7")  # read again from the station
        ro = page.locator('#config-table tr[data-key="NumberOfConnectors"]')
        await expect(ro.locator(".btn-save")).to_be_disabled()
        await row.locator("input").fill("soon")  # a value the station refuses: its answer shows
        await row.locator(".btn-save").click()
        await _confirm(page)
        await expect(row.locator(".cfg-answer")).to_have_text("Rejected")
        await expect(row.locator("input")).to_have_value("7")
        assert st16.config.text("MeterValueSampleInterval") == "7"

        # one connector inoperative and back: the simulator's connector follows
        conn = page.locator('#connectors-table tr[data-evse="2"]')
        await expect(conn.locator(".conn-status")).to_have_text("Available")
        await conn.locator(".btn-inoperative").click()
        await _confirm(page)
        await expect(conn.locator(".conn-status")).to_have_text("Unavailable")
        await expect(conn.locator(".avail-answer")).to_have_text("Accepted")
        assert st16.evse(2).operative is False and st16.station_operative is True
        await conn.locator(".btn-operative").click()
        await _confirm(page)
        await expect(conn.locator(".conn-status")).to_have_text("Available")
        assert st16.evse(2).operative is True

        # unlock and a triggered StatusNotification, each with the station's answer
        await page.locator('#connectors-table tr[data-evse="1"] .btn-unlock').click()
        await _confirm(page)
        await expect(page.locator("#toast")).to_contain_text("Unlock EVSE 1: station answered")
        assert _seen(log16, "in", "UnlockConnector") == 1
        before = _seen(log16, "out", "StatusNotification")
        await page.select_option("#trigger-msg", "StatusNotification")
        await page.select_option("#trigger-evse", "1")
        await page.click("#trigger-send")
        await _confirm(page)
        await expect(page.locator("#toast")).to_contain_text(
            "Trigger StatusNotification: station answered Accepted"
        )
        await node.wait_for(lambda: _seen(log16, "out", "StatusNotification") > before)

        # a reservation made and cancelled; a local list sent and its version read
        await page.click(".btn-reserve")
        await page.fill("#res-token", "CARD1")
        await page.select_option("#res-evse", "2")
        await _confirm(page)
        res = page.locator("#reservations-table tbody tr").first
        await expect(res.locator(".res-answer")).to_have_text("Accepted")
        await expect(conn.locator(".conn-status")).to_have_text("Reserved")
        assert st16.evse(2).reservation is not None
        await res.locator(".btn-cancel-res").click()
        await _confirm(page)
        await expect(res.locator(".res-answer")).to_have_text("cancel: Accepted")
        await expect(conn.locator(".conn-status")).to_have_text("Available")
        assert st16.evse(2).reservation is None
        await page.click(".btn-local-version")
        await expect(page.locator("#local-version")).to_have_text("0")
        await page.click(".btn-send-list")
        await page.fill("#list-tokens", "CARD1\nCARD2")
        await expect(page.locator("#list-version")).to_have_value("1")
        await _confirm(page)
        await expect(page.locator("#local-version")).to_have_text("1")
        assert st16.local_list_version_now == 1 and set(st16.local_list) == {"CARD1", "CARD2"}

        # a firmware update: its statuses appear live, then the new version; diagnostics
        await page.evaluate(FIRMWARE_WATCH)
        with file_server({"/fw/page-2.bin": IMAGE}) as web:
            await page.click(".btn-firmware")
            await page.fill("#fw-location", f"{web}/fw/page-2.bin")
            await _confirm(page)
            fw = page.locator('#fw-status [data-fw="status"]')
            await expect(fw).to_have_text("Installed", timeout=30_000)
        await expect(page.locator('[data-id="firmware_version"]')).to_have_text("2.0.0-sim")
        shown = await page.evaluate("window.fwSeen")
        # each status is shown as it comes (the view refreshes at most every 0.5 s)
        assert shown[-1] == "Installed", shown
        assert len({"Requested", "Downloading", "Downloaded", "Installing"} & set(shown)) >= 2
        await page.click(".btn-upload")
        await _confirm(page)
        await expect(page.locator('#upload-status [data-upload="status"]')).to_have_text("Uploaded")
        name = await page.locator('#upload-status [data-upload="file"]').text_content()
        await expect(page.locator("#uploads-table tbody")).to_contain_text(name)

        # the 2.0.1 station: a variable set through SetVariables
        await page.goto(f"{base}/#/stations/PAGE-201")
        await expect(page.locator('[data-id="ocpp_version"]')).to_have_text("2.0.1")
        var = page.locator('#config-table tr[data-key="OCPPCommCtrlr.HeartbeatInterval"]')
        await var.locator("input").fill("123")
        await var.locator(".btn-save").click()
        await _confirm(page)
        await expect(var.locator(".cfg-answer")).to_have_text("Accepted")
        assert st201.dm.text("OCPPCommCtrlr", "HeartbeatInterval") == "123"
        # its whole device model, from the report it sends: with each variable's mutability
        await page.click(".btn-base-report")
        await _confirm(page)
        await expect(page.locator(".cfg-source")).to_contain_text("Device model report")
        ident = page.locator('#config-table tr[data-key="SecurityCtrlr.Identity"]')
        await expect(ident).to_contain_text("ReadOnly")
        await expect(ident.locator(".btn-save")).to_be_disabled()
        await expect(var.locator("input")).to_have_value("123")
        st201.dm.put("OCPPCommCtrlr", "OfflineThreshold", "77")  # changed at the station
        await page.click("#cfg-read")
        offline = page.locator('#config-table tr[data-key="OCPPCommCtrlr.OfflineThreshold"]')
        await expect(offline.locator("input")).to_have_value("77")

        # the meter chart of the charging EVSE has points and grows live
        chart = page.locator('[data-meter-evse="1"]')
        await expect(chart.locator("canvas").first).to_be_visible()
        await expect(chart.locator(".u-legend")).to_contain_text("Current L1")
        count = chart.locator(".meter-count")
        await expect(count).to_have_text(re.compile(r"^\d+ samples?$"))
        idle = page.locator('[data-meter-evse="2"]')
        await expect(idle.locator(".meter-count")).to_have_text("no samples in this period")
        first = int((await count.text_content()).split()[0])
        await expect(count).not_to_have_text(f"{first} samples", timeout=10_000)

        # a profile set through the API is listed; the composite schedule shows its limit
        profile = {
            "id": 501, "stackLevel": 1, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": [{
                "id": 1, "chargingRateUnit": "A",
                "startSchedule": (rt.clock.now() - timedelta(minutes=1)).isoformat(),
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 10.0}]}],
        }  # fmt: skip
        r = await http.put(
            "/api/v1/stations/PAGE-201/charging-profiles", json={"evse_id": 1, "profile": profile}
        )
        assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
        await page.reload()
        prow = page.locator('#profiles-table tr[data-profile="501"]')
        await expect(prow).to_contain_text("TxDefaultProfile")
        await expect(prow).to_contain_text("10.0 A")
        await page.select_option("#comp-evse", "1")
        await page.click("#comp-get")
        await expect(page.locator("#composite-table tbody")).to_contain_text("10.0 A")
        await expect(page.locator(".comp-verdict")).to_contain_text("matches")
        await _shot(page, "station")
        await prow.locator(".btn-clear").click()
        await _confirm(page)
        await expect(page.locator("#toast")).to_contain_text("Clear profile 501: station answered")
        await expect(prow).to_have_count(0)
        assert not errors, errors

        # a viewer sees the page with every command disabled
        async with rt.sessionmaker() as s, s.begin():
            viewer = await add_user(s, "vic", "viewer-password", "viewer")
        other = await browser.new_page()
        other.on("pageerror", lambda e: errors.append(str(e)))
        code = pyotp.TOTP(viewer.totp_secret).now()
        await _sign_in(other, base, "vic", "viewer-password", code)
        await other.goto(f"{base}/#/stations/PAGE-16")
        await expect(other.locator('[data-id="ocpp_version"]')).to_have_text("1.6")
        for sel in (".btn-inoperative", ".btn-unlock", "#trigger-send", ".btn-reset",
                    ".btn-firmware", ".btn-send-list", "#cfg-read"):  # fmt: skip
            await expect(other.locator(sel).first).to_be_disabled()
        await expect(other.locator(".cfg-error")).to_contain_text("operator role")
        assert not errors, errors
    finally:
        for st in (st16, st201):
            await st.stop()
        await http.aclose()
        await rt.stop()
