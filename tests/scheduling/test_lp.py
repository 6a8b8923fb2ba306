"""Each constraint family of the site LP on problems small enough to check by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evflex.scheduling import (
    Circuit,
    FlexRequest,
    Objective,
    Problem,
    SchedulingError,
    Storage,
    Vehicle,
    Weights,
    solve,
)

T0 = datetime(2026, 3, 2, tzinfo=UTC)
H = timedelta(hours=1)


def ev(id="a", start=0.0, end=4.0, kw=11.0, kwh=None, **kw_args) -> Vehicle:
    return Vehicle(
        id=id,
        arrival=T0 + start * H,
        departure=T0 + end * H,
        max_charge_w=kw * 1000,
        energy_wh=None if kwh is None else kwh * 1000,
        **kw_args,
    )


def hourly(n=4, **kw) -> Problem:
    return Problem(start=T0, slots=n, slot_s=3600, **kw)


def kw(values) -> list[float]:
    return [round(v / 1000, 3) for v in values]


def test_cost_moves_charging_to_the_cheapest_hours():
    s = solve(hourly(vehicles=[ev(kwh=20)], import_price=[0.3, 0.4, 0.1, 0.2]))
    assert kw(s.vehicles["a"].power_w) == [0, 0, 11, 9]
    assert s.kpis.energy_cost == pytest.approx(11 * 0.1 + 9 * 0.2)
    assert s.vehicles["a"].feasible and s.vehicles["a"].unmet_wh == 0


def test_never_more_than_the_need_even_when_power_is_free():
    s = solve(hourly(vehicles=[ev(kwh=5)], import_price=[-0.1, 0.0, 0.0, 0.0]))
    assert sum(s.vehicles["a"].power_w) == pytest.approx(5000)


def test_site_limit_shared_and_unmet_reported_with_the_most_deliverable():
    # 2 h, 10 kW site: a needs 15 kWh (feasible alone), b needs 15 kWh -> 10 kWh short in all
    p = hourly(
        n=2,
        vehicles=[ev("a", 0, 2, kwh=15), ev("b", 0, 2, kwh=15)],
        import_limit_w=10_000,
    )
    s = solve(p)
    assert all(v <= 10_000 + 1e-6 for v in s.import_w)
    assert s.kpis.ev_energy_kwh == pytest.approx(20)
    assert s.kpis.unmet_kwh == pytest.approx(10)
    short = [v for v in s.vehicles.values() if not v.feasible]
    assert short and all(v.max_deliverable_wh == pytest.approx(15_000) for v in short)


def test_priority_decides_who_is_short():
    p = hourly(
        n=1,
        vehicles=[ev("a", 0, 1, kwh=10), ev("b", 0, 1, kwh=10, priority=2.0)],
        import_limit_w=12_000,
    )
    s = solve(p)
    assert s.vehicles["b"].energy_wh == pytest.approx(10_000)
    assert s.vehicles["a"].energy_wh == pytest.approx(2_000)


def test_partial_slots_give_a_share_of_the_power():
    # arrives at 0:30, leaves at 2:15: at most 5.5 + 11 + 2.75 kWh
    s = solve(hourly(n=3, vehicles=[ev(start=0.5, end=2.25, kwh=30)]))
    a = s.vehicles["a"]
    assert kw(a.power_w) == [5.5, 11, 2.75]
    assert a.unmet_wh == pytest.approx(30_000 - 19_250)
    assert a.max_deliverable_wh == pytest.approx(19_250)


def test_circuit_phase_limit_counts_single_phase_evs_on_their_phase():
    # two single-phase EVs on L1 and one on L2 behind a 20 A circuit at 230 V
    vs = [
        ev("l1a", kwh=50, kw=7.36, node="c1", phases=(1,)),
        ev("l1b", kwh=50, kw=7.36, node="c1", phases=(1,)),
        ev("l2", kwh=50, kw=7.36, node="c1", phases=(2,)),
    ]
    p = hourly(n=1, vehicles=vs, circuits=[Circuit("c1", max_current_a=20)])
    s = solve(p)
    amps = {k: v.power_w[0] / 230 for k, v in s.vehicles.items()}
    assert amps["l1a"] + amps["l1b"] == pytest.approx(20)
    assert amps["l2"] == pytest.approx(20)


def test_nested_circuits_and_site_fuse():
    vs = [ev("x", kwh=100, node="inner"), ev("y", kwh=100, node="outer")]
    p = hourly(
        n=1,
        vehicles=vs,
        circuits=[Circuit("outer", 25), Circuit("inner", 10, parent="outer")],
        phase_limit_a=30,
    )
    s = solve(p)
    ax = s.vehicles["x"].power_w[0] / (3 * 230)
    ay = s.vehicles["y"].power_w[0] / (3 * 230)
    assert ax <= 10 + 1e-6 and ax + ay == pytest.approx(25)


def _half_full(**kw_args) -> Vehicle:
    """A 60 kWh battery at half, 10 kW each way."""
    return ev(kw=10, battery_wh=60_000, soc=0.5, max_discharge_w=10_000, **kw_args)


def test_v2g_with_efficiency_and_soc_bounds():
    v = _half_full(target_soc=0.5, min_soc=0.2, v2x_allowed=True, eta_charge=0.9, eta_discharge=0.9)
    prices = [0.1, 0.5, 0.1, 0.5]
    s = solve(hourly(vehicles=[v], import_price=prices, export_price=prices))
    a = s.vehicles["a"]
    # 2 x 10 kWh in at 0.1 puts 18 kWh into the battery; at 0.9 that is 16.2 kWh
    # back out at 0.5, split between the two dear hours (either split is optimal)
    p = kw(a.power_w)
    assert p[0] == p[2] == 10
    assert p[1] <= 0 and p[3] <= 0 and p[1] + p[3] == pytest.approx(-16.2)
    assert a.soc[0] == pytest.approx(0.65) and a.soc[-1] == pytest.approx(0.5)
    assert all(0.2 - 1e-9 <= x <= 1 + 1e-9 for x in a.soc)
    assert a.discharged_wh == pytest.approx(16_200)
    assert s.kpis.energy_cost == pytest.approx(10 * 0.1 - 6.2 * 0.5 + 10 * 0.1 - 10 * 0.5)


def test_no_discharge_without_consent():
    v = _half_full(target_soc=0.5)
    prices = [0.1, 0.9, 0.1, 0.9]
    s = solve(hourly(vehicles=[v], import_price=prices, export_price=prices))
    assert min(s.vehicles["a"].power_w) >= 0


def _v2g_driver(**tariffs) -> Vehicle:
    """30 kWh in a 60 kWh battery (floor 12 kWh), 10 kWh more by the end, 10 kW each way."""
    return _half_full(kwh=10, min_soc=0.2, v2x_allowed=True, **tariffs)


# Dear in hour 1 (the site sells at 0.36), cheap after: a kWh out in hour 1 and
# back in hour 2 or 3 gains the site 0.36 - 0.12 = 0.24.
PEAK = {"import_price": [0.24, 0.42, 0.12, 0.12], "export_price": [0.05, 0.36, 0.05, 0.05]}


@pytest.mark.parametrize(
    ("export_tariff", "why"),
    [(0.25, "the driver would get 0.25 for a kWh that costs 0.30 to buy back"),
     (0.60, "the driver's 0.30 per kWh is more than the site's 0.24 gain")],
)  # fmt: skip
def test_no_discharge_when_the_site_gain_does_not_pay_the_driver(export_tariff, why):
    # without tariffs the site sells 10 kWh in the peak and buys them back
    free = solve(hourly(vehicles=[_v2g_driver()], **PEAK)).vehicles["a"]
    assert kw(free.power_w)[1] == -10 and free.driver_v2x_net is None
    v = _v2g_driver(driver_import_price=0.30, driver_export_price=export_tariff)
    a = solve(hourly(vehicles=[v], **PEAK)).vehicles["a"]
    assert a.discharged_wh == 0, why
    assert min(a.power_w) >= 0 and a.feasible
    assert a.driver_v2x_net == 0


def test_discharge_in_the_peak_when_it_pays_the_driver():
    v = _v2g_driver(driver_import_price=0.30, driver_export_price=0.40)
    s = solve(hourly(vehicles=[v], **PEAK))
    a = s.vehicles["a"]
    # 10 kWh out in the peak, 20 kWh in at 0.12 (the 10 sold plus the 10 needed)
    assert kw(a.power_w) == [0, -10, 10, 10]
    assert a.feasible and a.energy_wh == pytest.approx(10_000)
    # the driver's bill by hand: 20 kWh x 0.30 - 10 kWh x 0.40 = 2.00, against
    # 10 kWh x 0.30 = 3.00 without discharging: 1.00 better off
    assert a.driver_v2x_net == pytest.approx(1.00)
    assert 20 * 0.30 - 10 * 0.40 == pytest.approx(10 * 0.30 - a.driver_v2x_net)
    # the site: sells 10 kWh at 0.36, buys 20 at 0.12, pays the driver's 1.00
    assert s.kpis.energy_cost == pytest.approx(20 * 0.12 - 10 * 0.36)


def test_driver_net_never_negative_with_a_peak_only_reward():
    # The site would like to sell in hours 0 and 1, but only hour 1 pays the driver
    # (0.45 - 0.30 = +0.15 per kWh; hour 0: 0.25 - 0.30 = -0.05): at most 3 kWh
    # in hour 0 per kWh in hour 1. 10 kWh can go out in all (two cheap hours refill
    # 20 kWh, 10 of them needed): 7.5 kWh in hour 0, 2.5 kWh in hour 1.
    v = _v2g_driver(driver_import_price=0.30, driver_export_price=[0.25, 0.45, 0.25, 0.25])
    prices = {"import_price": [0.42, 0.42, 0.12, 0.12], "export_price": [0.36, 0.36, 0.05, 0.05]}
    a = solve(hourly(vehicles=[v], **prices)).vehicles["a"]
    assert kw(a.power_w) == [-7.5, -2.5, 10, 10]
    assert a.driver_v2x_net == pytest.approx(-0.05 * 7.5 + 0.15 * 2.5, abs=1e-6)
    assert a.driver_v2x_net >= -1e-9


def test_driver_margin_counts_the_round_trip_losses():
    # 0.9 x 0.9: a kWh out costs 1 / 0.81 kWh bought back at 0.30 = 0.370
    v = _v2g_driver(
        driver_import_price=0.30, driver_export_price=0.36, eta_charge=0.9, eta_discharge=0.9
    )
    assert solve(hourly(vehicles=[v], **PEAK)).vehicles["a"].discharged_wh == 0
    v = _v2g_driver(
        driver_import_price=0.30, driver_export_price=0.38, eta_charge=0.9, eta_discharge=0.9
    )
    a = solve(hourly(vehicles=[v], **PEAK)).vehicles["a"]
    assert a.discharged_wh > 0
    assert a.driver_v2x_net == pytest.approx(a.discharged_wh / 1000 * (0.38 - 0.30 / 0.81))


def test_daily_discharge_cap():
    v = _half_full(end=24, target_soc=0.5, v2x_allowed=True, v2x_daily_cap_wh=5_000)
    prices = [0.1 if t % 2 == 0 else 0.6 for t in range(24)]
    s = solve(hourly(n=24, vehicles=[v], import_price=prices, export_price=prices))
    assert s.vehicles["a"].discharged_wh == pytest.approx(5_000)


def test_dso_cap_limits_import_in_its_window():
    req = FlexRequest(start=T0 + 1 * H, end=T0 + 3 * H, max_import_w=4_000)
    p = hourly(vehicles=[ev(kwh=30)], import_price=[0.3, 0.1, 0.1, 0.3], flex_requests=[req])
    s = solve(p)
    assert kw(s.import_limit_w)[1:3] == [4, 4]
    assert kw(s.import_w) == [11, 4, 4, 11]  # the cap wins over the cheap price
    assert s.vehicles["a"].feasible


def test_dso_export_cap_curtails_pv():
    p = hourly(
        n=2, pv_w=[20_000, 0], export_limit_w=0.0, flex_requests=[], vehicles=[ev(end=2, kwh=5)]
    )
    s = solve(p)
    assert max(s.export_w) == 0
    assert s.kpis.curtailed_kwh == pytest.approx(15)  # 20 kWh of PV, 5 kWh into the car
    assert kw(s.vehicles["a"].power_w) == [5, 0]


def test_res_preset_follows_the_sun():
    pv = [0, 8_000, 8_000, 0]
    p = hourly(vehicles=[ev(kwh=16)], pv_w=pv, objective=Objective.RES)
    s = solve(p)
    assert kw(s.vehicles["a"].power_w) == [0, 8, 8, 0]
    assert s.kpis.pv_self_consumption_pct == pytest.approx(100)
    assert s.kpis.import_kwh == pytest.approx(0)


def test_capacity_tariff_flattens_and_uses_peak_already_paid():
    vs = [ev("a", kwh=20), ev("b", 0, 2, kwh=10)]
    s = solve(hourly(vehicles=vs, capacity_tariff_per_kw=10.0))
    assert s.kpis.peak_import_w == pytest.approx(7_500)  # 30 kWh over 4 h, b can fit
    paid = solve(hourly(vehicles=vs, capacity_tariff_per_kw=10.0, peak_so_far_w=15_000))
    assert paid.kpis.capacity_cost == pytest.approx(150)
    assert paid.kpis.peak_import_w <= 15_000 + 1e-6


def test_storage_shaves_the_peak_and_ends_where_it_started():
    st = Storage(
        "bess", 20_000, soc=0.5, max_charge_w=5_000, max_discharge_w=5_000, eta_charge=1.0,
        eta_discharge=1.0, min_soc=0.0, max_soc=1.0,
    )  # fmt: skip
    base = [2_000, 2_000, 12_000, 2_000]
    s = solve(hourly(base_load_w=base, storages=[st], capacity_tariff_per_kw=10.0))
    assert s.kpis.peak_import_w == pytest.approx(7_000)  # 12 kW - 5 kW from storage
    assert s.storages["bess"].soc[-1] == pytest.approx(0.5)


def test_uncontrolled_load_above_the_limit_is_reported_not_infeasible():
    s = solve(
        hourly(n=2, base_load_w=[15_000, 5_000], import_limit_w=10_000, vehicles=[ev(end=2, kwh=8)])
    )
    assert s.kpis.limit_breach_kwh == pytest.approx(5)
    assert kw(s.vehicles["a"].power_w) == [0, 5]
    assert not s.vehicles["a"].feasible


def test_energy_from_target_soc():
    v = ev(kwh=None, battery_wh=50_000, soc=0.2, target_soc=0.8)
    s = solve(hourly(vehicles=[v]))
    assert s.vehicles["a"].energy_wh == pytest.approx(30_000)
    assert s.vehicles["a"].soc[-1] == pytest.approx(0.8)


def test_every_preset_solves():
    vs = [ev("a", kwh=20), ev("b", 1, 4, kwh=10)]
    for obj in Objective:
        s = solve(hourly(vehicles=vs, import_price=[0.2, 0.1, 0.3, 0.2], objective=obj))
        assert s.status == "Optimal" and s.kpis.unmet_kwh == pytest.approx(0, abs=1e-6), obj


def test_weights_override_the_preset():
    w = Weights(energy_cost=0.0, early_per_kwh=1.0)
    s = solve(hourly(vehicles=[ev(kwh=11)], import_price=[0.9, 0, 0, 0], weights=w))
    assert kw(s.vehicles["a"].power_w) == [11, 0, 0, 0]


@pytest.mark.parametrize(
    "problem, message",
    [
        (hourly(vehicles=[ev(), ev()]), "appears twice"),
        (hourly(vehicles=[ev(node="nowhere")]), "unknown circuit"),
        (hourly(import_price=[0.1, 0.2]), "import_price: expected 4"),
        (hourly(vehicles=[ev(start=2, end=1)]), "departure must be after arrival"),
        (hourly(circuits=[Circuit("a", 10, parent="b"), Circuit("b", 10, parent="a")]), "loop"),
        (hourly(import_limit_w=-1), ">= 0"),
    ],
)
def test_malformed_problems_are_refused_with_a_reason(problem, message):
    with pytest.raises(SchedulingError, match=message):
        solve(problem)


def test_interior_point_and_simplex_agree():
    vs = [ev(f"v{i}", i % 3, 4, kwh=5 + i) for i in range(12)]
    p = hourly(vehicles=vs, import_limit_w=40_000, import_price=[0.3, 0.1, 0.2, 0.15])
    a, b = solve(p, method="simplex"), solve(p, method="ipm")
    assert a.objective_value == pytest.approx(b.objective_value, rel=1e-6)
    assert a.kpis.energy_cost == pytest.approx(b.kpis.energy_cost, rel=1e-5)


_SILENT_SOLVE = """
from datetime import UTC, datetime, timedelta
from evflex.scheduling import Problem, Vehicle, solve
from evflex.scheduling.flex import flexibility
t0 = datetime(2026, 3, 2, tzinfo=UTC)
v = Vehicle("a", t0, t0 + timedelta(hours=4), 11_000, energy_wh=20_000)
p = Problem(start=t0, slots=4, slot_s=3600, vehicles=[v], import_price=[0.3, 0.4, 0.1, 0.2])
for method in ("simplex", "ipm"):
    s = solve(p, method=method)
flexibility(p, s)
"""


def test_the_solver_prints_nothing():
    # HiGHS writes from C (its banner, its log), past sys.stdout: a fresh process
    # (the banner comes once per process) and its file descriptors tell.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _SILENT_SOLVE], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_a_solve_in_process_writes_nothing_to_the_file_descriptors(capfd):
    solve(hourly(vehicles=[ev(kwh=20)], import_price=[0.3, 0.4, 0.1, 0.2]), method="ipm")
    assert capfd.readouterr() == ("", "")
