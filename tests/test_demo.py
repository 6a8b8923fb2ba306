"""``evflex demo``: the one-command experience works and the CSMS stores what the site did."""

from __future__ import annotations

import pytest

from evflex.app import Runtime
from evflex.demo import demo_settings, run_demo


async def test_demo_runs_a_mixed_site_and_the_store_agrees(tmp_path):
    rt = Runtime(demo_settings(tmp_path / "demo.db", "127.0.0.1", 0, 0))
    await rt.start()
    fractions: list[float] = []
    try:
        res = await run_demo(rt, stations=4, hours=8, speed=8 * 3600 / 8, seed=3,
                             progress=fractions.append)
    finally:
        await rt.stop()
    assert res.errors == 0, res.error_samples
    assert res.stations_booted == res.stations == 4
    assert res.csms_stations == 4
    assert res.sessions_started > 0
    assert res.csms_transactions >= res.sessions_started
    assert res.sim_energy_kwh > 0
    # the energy the CSMS derived from meter registers matches what the EVs took
    assert res.csms_energy_kwh == pytest.approx(res.sim_energy_kwh, rel=0.02)
    assert res.csms_meter_samples > 0
    assert fractions and fractions[-1] == pytest.approx(1.0, abs=0.05)
