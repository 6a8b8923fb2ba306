"""``evflex bench smartcharging`` end to end, small: the figures are measured, not made up."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evflex.cli import app


@pytest.mark.slow  # a whole benchmark run (tens of seconds)
def test_bench_smartcharging_small(tmp_path):
    out = tmp_path / "sc.json"
    result = CliRunner().invoke(
        app,
        ["bench", "smartcharging", "--evses", "20", "--rounds", "2", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["evses"] == 20
    for key in ("ack_p50_s", "ack_p99_s", "plan_compute_s"):
        assert data[key] is not None and data[key] > 0, key
    assert data["ack_p50_s"] <= data["ack_p99_s"]
    for r in data["rounds"]:
        # Every EVSE got a new profile for every limit change, and the plan was clean.
        assert r["profiles"] == 20 and r["problems"] == 0
    # The stations saw the initial plan plus one profile per EVSE per round.
    assert data["station_counters"]["SetChargingProfile"] >= 20 * 3
    assert "smart charging: 20 EVSEs" in result.output
