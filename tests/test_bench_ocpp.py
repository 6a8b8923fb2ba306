"""``evflex bench ocpp``: payloads pass the CSMS's schemas; a small run works end to end."""

from __future__ import annotations

import json
import random

import pytest

from conftest import PG_URL
from evflex.bench.baselines import echo_answer
from evflex.bench.frames import V16, V201, StationModel
from evflex.bench.loadgen import split_stations
from evflex.bench.ocpp import (
    REQUIRED_KEYS,
    OcppBenchConfig,
    PostgresUnavailable,
    _postgres_execute,
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


# ---------------------------------------------------------------- --compare, modes


def test_light_meter_values_pass_the_schema():
    m = StationModel("bench-test-00002", V16, random.Random(3))
    first = m.light_meter_values()
    second = m.light_meter_values()
    for action, payload in (first, second):
        validate(CALL, action, json.loads(json.dumps(payload)), V16)
        readings = payload["meterValue"][0]["sampledValue"]
        assert [r["measurand"] for r in readings] == [
            "Energy.Active.Import.Register",
            "Power.Active.Import",
        ]
    energy = [float(p["meterValue"][0]["sampledValue"][0]["value"]) for _, p in (first, second)]
    assert energy[0] < energy[1]


def test_echo_answers_with_the_message_id():
    answer = echo_answer('[2,"m-17","Heartbeat",{}]')
    assert answer is not None
    frame = json.loads(answer)
    assert frame[:2] == [3, "m-17"] and frame[2]["status"] == "Accepted"
    assert echo_answer('[3,"m-17",{}]') is None


def test_modes_and_mixes_are_checked():
    assert OcppBenchConfig(mix="light16", v201_share=0.0).load_mode() == "closed"
    assert OcppBenchConfig().load_mode() == "paced"
    assert OcppBenchConfig(stations=20_000).generator_processes() == 4
    with pytest.raises(ValueError, match="1.6"):
        OcppBenchConfig(mix="light16", v201_share=0.5).validate()
    with pytest.raises(ValueError, match="paced"):
        OcppBenchConfig(mix="light16", v201_share=0.0, mode="paced").validate()
    with pytest.raises(ValueError, match="servers"):
        OcppBenchConfig(compare=True, servers=("nginx",)).validate()


def _light16(out, **kw) -> OcppBenchConfig:
    """20 stations of the light 1.6 mix, a 3 s window."""
    return OcppBenchConfig(
        stations=20, duration=3.0, mix="light16", v201_share=0.0, out=out, seed=5, **kw
    )


def _compare(tmp_path, servers: tuple[str, ...], **kw) -> dict:
    out = tmp_path / "compare.json"
    result = run_ocpp_bench(_light16(out, compare=True, servers=servers, **kw))
    data = json.loads(out.read_text())
    assert result["out"] == str(out)
    assert data["benchmark"] == "ocpp-compare"
    assert [row["server"] for row in data["rows"]] == list(servers)
    return data


def _check_rows(data: dict) -> None:
    for row in data["rows"]:
        detail = row.get("error_detail") or row.get("failure")
        assert row["msgs_per_s"] > 0, (row["server"], detail)
        assert row["errors"] == 0, (row["server"], detail)
        assert row["connected"] == 20 and row["handshakes_failed"] == 0
        assert row["latency_p99_ms"] > 0 and row["server_peak_rss_mb"] > 0
        assert isinstance(row["ratio_vs_bare_lib"], float) and row["ratio_vs_bare_lib"] > 0


def test_compare_end_to_end_sqlite(tmp_path):
    data = _compare(tmp_path, ("echo", "ocpp-lib", "evflex-sqlite"))
    _check_rows(data)
    assert data["ok"] is True
    assert data["ratios"]["evflex-sqlite"]["ratio_vs_bare_lib"] > 0
    assert data["ratios"]["evflex-sqlite"]["ratio_vs_echo"] > 0


@pytest.mark.postgres
@pytest.mark.slow  # the SQLite comparison runs by default; this one repeats it on PostgreSQL
def test_compare_end_to_end_postgresql(tmp_path):
    try:
        _postgres_execute(PG_URL, "SELECT 1")
    except PostgresUnavailable:
        pytest.skip("no PostgreSQL server reachable at " + PG_URL)
    data = _compare(tmp_path, ("ocpp-lib", "evflex-postgresql"), postgres_url=PG_URL)
    _check_rows(data)
    assert data["rows"][1]["database"] == "postgresql"
    assert data["ratios"]["evflex-postgresql"]["ratio_vs_bare_lib"] > 0


@pytest.mark.slow  # the closed-loop runs above cover the benchmark's path by default
def test_open_mode_small(tmp_path):
    out = tmp_path / "open.json"
    run_ocpp_bench(_light16(out, mode="open", rate_per_station=2.0))
    data = json.loads(out.read_text())
    assert not [k for k in REQUIRED_KEYS if k not in data]
    assert data["mode"] == "open" and data["rate_per_station"] == 2.0
    assert data["handshakes_failed"] == 0 and data["connected"] == 20, data["error_detail"]
    assert data["errors"] == 0, data["error_detail"]
    assert data["latency_samples"] > 0
    assert 0 < data["latency_p50_ms"] <= data["latency_p99_ms"]
    assert data["rss_per_station_kb"] is not None
