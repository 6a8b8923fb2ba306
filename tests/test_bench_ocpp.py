"""``evflex bench ocpp``: payloads pass the CSMS's schemas; a small run works end to end."""

from __future__ import annotations

import json
import random

import pytest

from evflex.bench.frames import V16, V201, StationModel
from evflex.bench.loadgen import split_stations
from evflex.bench.ocpp import (
    REQUIRED_KEYS,
    OcppBenchConfig,
    ocpp_base_url,
    percentile,
    run_ocpp_bench,
)
from evflex.csms.rpc import CALL, validate


def _session(version: str) -> list[tuple[str, dict]]:
    """Everything a simulated station says over boot and two charging sessions."""
    m = StationModel("bench-test-00001", version, random.Random(7))
    frames = [m.boot(), *m.initial_status(), m.heartbeat()]
    for token in (3, 4):
        m.begin_session(token)
        frames.append(m.authorize())
        frames.append(m.start_transaction())
        if version == V16:
            m.started(42 + token)
        frames.append(m.status(1, "Charging"))
        for _ in range(3):
            m.advance(10.0)
            frames.append(m.meter_values())
        frames.append(m.stop_transaction())
        frames.append(m.status(1, "Available"))
    return frames


@pytest.mark.parametrize("version", [V16, V201])
def test_generated_payloads_pass_the_ocpp_schemas(version):
    for action, payload in _session(version):
        validate(CALL, action, json.loads(json.dumps(payload)), version)


@pytest.mark.parametrize("version", [V16, V201])
def test_timestamps_strictly_increase_per_station(version):
    stamps = []
    for _, payload in _session(version):
        own = [mv["timestamp"] for mv in payload.get("meterValue", [])]
        if "timestamp" in payload:
            assert all(t == payload["timestamp"] for t in own)
            own = [payload["timestamp"]]
        stamps += own
    assert len(stamps) > 10
    assert all(a < b for a, b in zip(stamps, stamps[1:], strict=False))


def test_v201_seq_no_and_energy_increase():
    frames = [p for a, p in _session(V201) if a == "TransactionEvent"]
    first = frames[:5]  # Started, 3 x Updated, Ended
    assert [p["seqNo"] for p in first] == [0, 1, 2, 3, 4]
    assert [p["eventType"] for p in first] == ["Started", "Updated", "Updated", "Updated", "Ended"]
    assert first[-1]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    energy = [
        sv["value"]
        for p in first
        for mv in p["meterValue"]
        for sv in mv["sampledValue"]
        if sv.get("measurand") == "Energy.Active.Import.Register"
    ]
    assert energy == sorted(energy) and energy[0] < energy[-1]


def test_split_stations_share_and_round_robin():
    groups = split_stations("abc123", 10, 0.3, 3)
    assert [len(g) for g in groups] == [4, 3, 3]
    specs = [s for g in groups for s in g]
    assert len({s.station_id for s in specs}) == 10
    assert sum(s.version == V201 for s in specs) == 3
    assert all(len(s.station_id) <= 48 for s in specs)


def test_helpers():
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert ocpp_base_url("ws://127.0.0.1:9000") == "ws://127.0.0.1:9000/ocpp"
    assert ocpp_base_url("ws://127.0.0.1:9000/ocpp/") == "ws://127.0.0.1:9000/ocpp"
    with pytest.raises(ValueError, match="loopback"):
        OcppBenchConfig(server_url="ws://192.0.2.1:9000/ocpp").validate()
    with pytest.raises(ValueError):
        OcppBenchConfig(stations=2, clients=3).validate()


def test_small_run_end_to_end(tmp_path):
    out = tmp_path / "ocpp.json"
    config = OcppBenchConfig(
        stations=20,
        duration=4.0,
        meter_interval=1.0,
        heartbeat_interval=2.0,
        out=out,
        seed=11,
    )
    result = run_ocpp_bench(config)
    data = json.loads(out.read_text())
    missing = [k for k in REQUIRED_KEYS if k not in data]
    assert not missing
    assert data["stations"] == 20
    assert data["connected"] == 20, data["error_detail"]
    assert data["errors"] == 0, data["error_detail"]
    assert data["messages"] > 0
    for key in ("latency_p50_ms", "latency_p99_ms", "msgs_per_s", "connect_time_s"):
        assert isinstance(data[key], int | float) and data[key] > 0, key
    assert data["server_peak_rss_mb"] > 0
    assert data["server_cpu_percent"] is not None
    assert data["sessions_started"] > 0 and data["sessions_ended"] > 0
    assert set(data["per_action"]) >= {"Heartbeat", "StatusNotification", "TransactionEvent"}
    assert data["server_exit_code"] == 0
    assert result["out"] == str(out)
