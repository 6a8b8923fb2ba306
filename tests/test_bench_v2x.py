"""``evflex bench v2x``: a small run end to end, its option checks, and its tracking analysis.

No speed is asserted here: the figures are measured by the benchmark itself.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from evflex.bench.v2x import (
    DROOP_CURVE,
    V2xBenchConfig,
    bench_grid,
    car_share,
    fleet_plan,
    tracking_error,
)
from evflex.cli import app
from evflex.smartcharging.v2x import freq_watt

KEYS = ("evses", "update_rate_hz", "latency_p50_s", "latency_p99_s", "tracking_error_pct")


def _text(output: str) -> str:
    """The output without rich's box drawing and line wrapping."""
    return re.sub(r"[\s\u2500-\u257f]+", " ", output)


@pytest.mark.slow  # a whole benchmark run (tens of seconds)
def test_bench_v2x_quick(tmp_path):
    out = tmp_path / "v2x.json"
    result = CliRunner().invoke(app, ["bench", "v2x", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for key in KEYS:
        assert data[key] is not None, key
    assert data["evses"] == 4 and data["stations"] == 2
    assert data["ac_evses"] + data["dc_evses"] == 4 and data["dc_evses"] == 1
    # Rates: samples were sent, every EVSE acknowledged some, nothing failed.
    assert data["update_rate_hz"] > 0 and data["evse_update_rate_hz_p50"] > 0
    assert data["rounds"] > 0 and data["updates"] > 0 and data["failed"] == 0
    assert 0 < data["latency_p50_s"] <= data["latency_p99_s"] <= data["latency_max_s"]
    for key in ("tracking_error_pct", "tracking_error_delayed_pct", "fleet_tracking_error_pct"):
        assert math.isfinite(data[key]) and data[key] >= 0, key
    assert 0 <= data["tracking_best_delay_s"] <= 5
    assert data["power_samples"] > 0 and data["mean_abs_ideal_kw"] > 0
    assert data["evs_at_soc_limit"] == 0
    targets = data["targets"]
    assert (targets["ac_s"], targets["dc_s"], targets["fcr_s"]) == (1.0, 5.0, 4.0)
    assert all(isinstance(targets[k], bool) for k in ("ac_met", "dc_met", "fcr_met"))
    assert data["station_errors"] == 0, data["station_error_samples"]
    assert data["station_traffic"]["in:UpdateDynamicSchedule"] >= data["updates"]
    text = _text(result.output)
    assert "V2X central frequency control: 4 EVSEs" in text
    assert "target FCR" in text


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--rate-hz", "0"], "--rate-hz must be above 0"),
        (["--dc-share", "1.5"], "--dc-share must be within 0..1"),
        (["--evses", "0"], "--evses must be at least 1"),
        (["--duration", "-1"], "--duration must be above 0"),
        (["--feed", "pigeon"], "--feed must be one of api, direct"),
    ],
)
def test_bench_v2x_bad_options(tmp_path, args, reason):
    out = tmp_path / "o.json"
    result = CliRunner().invoke(app, ["bench", "v2x", "--quick", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert reason in _text(result.output)
    assert not out.exists()


def test_fleet_plan_spreads_dc_evses_and_scales_the_curve():
    plan = fleet_plan(V2xBenchConfig(evses=10, evses_per_station=3, dc_share=0.3))
    assert [len(cars) for _, cars in plan] == [3, 3, 3, 1]
    cars = [c for _, cs in plan for c in cs]
    assert sum(c["dc"] for c in cars) == 3
    assert all(c["bidirectional"] and 0.45 <= c["soc"] <= 0.7 for c in cars)
    # Every car is fully activated at ±200 mHz: share * curve = its own power.
    for c in cars:
        full = car_share(c) * freq_watt(DROOP_CURVE, 49.8)
        assert full == pytest.approx(-min(c["max_ac_power_w"], c["max_discharge_power_w"]))


def _series(grid, start: datetime, seconds: float, lag_s: float, share: float, caps):
    """Sampled power of one EVSE that follows the droop ``lag_s`` late."""
    times = array("d")
    power = array("d")
    for k in range(int(seconds * 10)):
        t = start + timedelta(seconds=k / 10)
        times.append(t.timestamp())
        want = share * freq_watt(DROOP_CURVE, grid.frequency_hz(t - timedelta(seconds=lag_s)))
        power.append(max(-caps[1], min(caps[0], want)))
    n = len(times)
    return {
        "evses": [("S", 1)],
        "times": times,
        "power": [power],
        "charge_cap": [array("d", [caps[0]] * n)],
        "discharge_cap": [array("d", [caps[1]] * n)],
        "at_limit": [0],
        "soc_first": [0.5],
        "soc_last": [0.5],
    }


def test_tracking_error_is_zero_on_time_and_finds_the_delay():
    start = datetime(2025, 1, 1, tzinfo=UTC)
    grid = bench_grid(3, start, 150.0)
    grid.frequency.event_at = start + timedelta(seconds=20)
    window = (start.timestamp() + 10, start.timestamp() + 60)
    on_time = _series(grid, start, 60, 0.0, 1.1, (11_000.0, 11_000.0))
    res = tracking_error(on_time, grid, {("S", 1): 1.1}, *window, delay_s=None)
    assert res["tracking_error_pct"] == pytest.approx(0.0, abs=1e-6)
    assert res["tracking_best_delay_s"] == 0.0 and res["tracking_error_delayed_pct"] is None
    late = _series(grid, start, 60, 1.5, 1.1, (11_000.0, 11_000.0))
    res = tracking_error(late, grid, {("S", 1): 1.1}, *window, delay_s=1.5)
    assert res["tracking_error_pct"] > 1.0
    assert res["tracking_error_delayed_pct"] == pytest.approx(0.0, abs=1e-6)
    assert res["tracking_best_delay_s"] == pytest.approx(1.5)
    assert res["fleet_tracking_error_pct"] == pytest.approx(res["tracking_error_pct"])


def test_tracking_error_clamps_the_ideal_to_what_the_car_can_do():
    """A car that cannot discharge (at its V2X floor) is not blamed for not discharging."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    grid = bench_grid(4, start, 0.0)  # seed 4: the frequency crosses 50 Hz both ways
    series = _series(grid, start, 120, 0.0, 1.1, (11_000.0, 0.0))
    assert min(series["power"][0]) == 0.0 < max(series["power"][0])
    window = (start.timestamp(), start.timestamp() + 120)
    res = tracking_error(series, grid, {("S", 1): 1.1}, *window, delay_s=None)
    assert res["mean_abs_ideal_kw"] > 0
    assert res["tracking_error_pct"] == pytest.approx(0.0, abs=1e-6)
