"""The solver set-up of the site LP: pinned options, the same optimum as a plain solve, the size.

A HiGHS update or a change of the formulation must not change these unnoticed:
the options the solver is created with, the objective scaling, and the shape
of the 1,000 EV x 96 slot benchmark instance (no timing is asserted here).
"""

from __future__ import annotations

import highspy
import numpy as np
import pytest

from evflex.bench.scheduling import synthetic_problem
from evflex.scheduling import Problem, Storage, Vehicle, solve
from evflex.scheduling.lp import (
    AUTO_METHOD,
    OBJECTIVE_SCALE,
    SOLVER_OPTIONS,
    SchedulingError,
    build,
    new_highs,
    resolve_method,
)


def _option(h, name):
    status, value = h.getOptionValue(name)
    assert status == highspy.HighsStatus.kOk
    return value


def test_default_is_dual_simplex_without_presolve():
    assert resolve_method("auto") == AUTO_METHOD == "simplex"
    h = new_highs("auto")
    assert _option(h, "solver") == "simplex"
    assert _option(h, "simplex_strategy") == 1  # dual simplex, serial
    assert _option(h, "presolve") == "off"
    assert _option(h, "output_flag") is False


def test_interior_point_runs_without_crossover():
    h = new_highs("ipm")
    assert _option(h, "solver") == "ipm"
    assert _option(h, "run_crossover") == "off"
    assert _option(h, "presolve") == "on"


def test_options_table_is_pinned():
    assert SOLVER_OPTIONS == {
        "simplex": {"solver": "simplex", "simplex_strategy": 1, "presolve": "off"},
        "ipm": {"solver": "ipm", "run_crossover": "off", "presolve": "on"},
    }
    assert OBJECTIVE_SCALE == {"simplex": 1e5, "ipm": 1.0}
    with pytest.raises(SchedulingError, match="unknown method"):
        new_highs("pdlp")


def test_highs_gets_the_scaled_costs_and_the_schedule_the_real_objective():
    p = synthetic_problem(10, 24)
    model = build(p)
    h = new_highs("simplex")
    model.lp.pass_to(h, OBJECTIVE_SCALE["simplex"])
    peak = h.getLp().col_cost_[-1]  # the peak column comes last, weighted by the tariff
    assert peak == pytest.approx(p.capacity_tariff_per_kw * 1e5)
    s = solve(p)
    assert s.method == "simplex"
    assert s.objective_value == pytest.approx(_reference(p)[0], rel=1e-6)


def _reference(problem: Problem) -> tuple[float, np.ndarray]:
    """The objective and the columns' values from HiGHS with its defaults, unscaled costs."""
    model = build(problem)
    h = highspy._Highs()
    h.setOptionValue("output_flag", False)
    model.lp.pass_to(h)
    h.run()
    assert h.modelStatusToString(h.getModelStatus()) == "Optimal"
    return h.getInfo().objective_function_value, np.asarray(h.getSolution().col_value)


@pytest.mark.parametrize("method", ["auto", "ipm"])
def test_same_optimum_as_a_plain_dual_simplex_on_100_evs_x_96_slots(method):
    p = synthetic_problem(100, 96)
    obj, x = _reference(p)
    model = build(p)
    energy_ref = float(x[model.c_cols].sum()) * p.slot_h
    s = solve(p, method=method)
    assert s.status == "Optimal"
    assert s.objective_value == pytest.approx(obj, rel=1e-6)
    assert s.kpis.ev_energy_kwh == pytest.approx(energy_ref, rel=1e-6)
    assert s.kpis.unmet_kwh == pytest.approx(float(x[model.u_col].sum()), abs=1e-3)


def test_the_1000_ev_x_96_slot_instance_keeps_its_shape():
    model = build(synthetic_problem(1000, 96))
    # one charging column per EV and present slot, one unmet column per EV, an
    # import column per slot and the peak; no export, curtailment or breach
    # columns (no PV, nothing to export, the load alone never passes the limit)
    assert len(model.c_cols) == 82_606
    assert model.size == {"rows": 1192, "cols": 82_606 + 1000 + 96 + 1, "nonzeros": 166_500}
    assert (model.exp < 0).all() and (model.curt < 0).all() and (model.breach < 0).all()


def _one_ev(**problem_kw) -> Problem:
    p = synthetic_problem(1, 8)
    v = p.vehicles[0]
    ev = Vehicle(v.id, v.arrival, v.departure, v.max_charge_w, energy_wh=v.energy_wh)
    return Problem(start=p.start, slots=8, slot_s=p.slot_s, vehicles=[ev], **problem_kw)


def test_site_columns_appear_only_where_they_can_be_non_zero():
    plain = build(_one_ev())
    assert (plain.exp < 0).all() and (plain.curt < 0).all() and (plain.breach < 0).all()
    pv = [0, 0, 5000, 5000, 0, 0, 0, 0]
    sunny = build(_one_ev(pv_w=pv))
    assert list(sunny.exp >= 0) == [w > 0 for w in pv]
    assert list(sunny.curt >= 0) == [w > 0 for w in pv]
    base = [0, 9000, 0, 0, 0, 0, 0, 12_000]
    tight = build(_one_ev(base_load_w=base, import_limit_w=10_000))
    assert list(tight.breach >= 0) == [w > 10_000 for w in base]
    battery = Storage("s", capacity_wh=10_000, soc=0.5, max_charge_w=3000, max_discharge_w=3000)
    assert (build(_one_ev(storages=[battery])).exp >= 0).all()


def test_peak_rows_only_where_the_import_can_pass_the_peak_so_far():
    limits = [5000.0] * 4 + [20_000.0] * 4
    p = _one_ev(import_limit_w=limits, capacity_tariff_per_kw=10.0, peak_so_far_w=8000.0)
    without = _one_ev(import_limit_w=limits)
    assert build(p).size["rows"] - build(without).size["rows"] == 4


def test_same_plan_as_the_former_formulation_on_100_evs_x_96_slots():
    # figures of the former LP (every site column in every slot, costs unscaled,
    # HiGHS defaults) on this instance
    s = solve(synthetic_problem(100, 96))
    assert s.objective_value == pytest.approx(1985.9876955972563, rel=1e-6)
    assert s.kpis.ev_energy_kwh == pytest.approx(3433.0840412231346, rel=1e-6)
    assert s.kpis.unmet_kwh == pytest.approx(0.0, abs=1e-3)
    assert s.kpis.peak_import_w == pytest.approx(146290.03668838274, rel=1e-6)
    assert s.kpis.energy_cost == pytest.approx(522.9069245283875, rel=1e-6)
