"""The site schedule as one linear programme, solved with HiGHS.

Variables (kW, kWh; one column per EV and slot only where the EV is present):

- ``c[i,t] >= 0`` charging power of EV i, bounded by its max times the share
  of the slot it is plugged in; ``d[i,t] >= 0`` discharging power, only for
  EVs that may discharge; ``e[i,t]`` battery energy after slot t, only for
  those EVs (charge-only EVs need just one energy row);
- ``u[i] >= 0`` energy the EV's driver asked for and does not get;
- per storage: charge, discharge, energy;
- per slot: ``imp`` (site import); ``exp`` (export) only in slots where
  something behind the meter can feed in (PV, negative load, storage, an EV
  that may discharge); ``curt`` (PV curtailed) only where there is PV;
  ``breach`` (import above the limit that uncontrolled load alone forces)
  only where that load exceeds the limit: every device can stay idle, so no
  other slot needs it;
- ``peak``: the period's peak import, at least the peak so far.

Rows:

- balance per slot: ``imp + breach - exp - curt - sum c + sum d - sc + sd =
  base - pv``;
- energy per EV: charge-only ``sum eta_c c dt + u = need`` (so never more
  than asked); with discharge ``e[t] = e[t-1] + (eta_c c - d / eta_d) dt``,
  ``e[last] + u >= e0 + need``, SoC bounds on ``e``, and the daily V2X cap;
- the driver must not lose, per EV with driver tariffs: ``sum m[t] d[t] dt >=
  0`` where ``m`` is what a kWh out earns the driver net of buying it back
  (:func:`driver_margin`); the site pays that margin (a cost on ``d``), so it
  discharges only where its own gain covers the driver's;
- per circuit (and the site's phase fuse), phase and slot: the current of
  everything below it within +/- the limit (rows that can never bind are
  left out);
- ``peak >= imp + breach`` per slot, when the objective weighs the peak (not
  in slots whose import limit keeps them below the peak so far).

The constraint matrix is assembled column-wise with numpy (vectorised over
all EVs for the charging columns) and handed to HiGHS as CSC arrays, the
costs multiplied by the method's :data:`OBJECTIVE_SCALE` (see there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np
import scipy.sparse as sp

from evflex.scheduling.problem import (
    SITE,
    Kpis,
    Problem,
    Schedule,
    Series,
    StoragePlan,
    Vehicle,
    VehiclePlan,
)

INF = math.inf
_Highs = getattr(highspy, "_Highs", highspy.Highs)  # the C++ class, without the Python extras
_TINY_DISCHARGE = 1e-6  # per kWh: never charge and discharge at once for nothing


class SchedulingError(ValueError):
    """The problem is malformed (unknown circuit, negative size, ...)."""


def driver_margin(v: Vehicle, n: int) -> np.ndarray | None:
    """Per slot: what one kWh discharged earns the driver, net of buying it back.

    The driver receives ``driver_export_price`` for the kWh and pays
    ``driver_import_price`` for the ``1 / (eta_charge * eta_discharge)`` kWh
    that put it back into the battery. None when the EV has no tariffs.
    """
    if v.driver_import_price is None and v.driver_export_price is None:
        return None
    out = series(v.driver_export_price or 0.0, n, f"vehicle {v.id!r}: driver_export_price")
    back = (v.driver_import_price or 0.0) / (v.eta_charge * v.eta_discharge)
    return out - back


def series(value: Series, n: int, name: str) -> np.ndarray:
    if isinstance(value, int | float):
        return np.full(n, float(value))
    arr = np.asarray(value, dtype=float)
    if arr.shape != (n,):
        raise SchedulingError(f"{name}: expected {n} values, got {arr.shape[0] if arr.ndim else 0}")
    return arr


@dataclass
class _Builder:
    """Accumulates columns (bounds, cost) and matrix entries (COO)."""

    lo: list[np.ndarray] = field(default_factory=list)
    hi: list[np.ndarray] = field(default_factory=list)
    cost: list[np.ndarray] = field(default_factory=list)
    ncol: int = 0
    rows_lo: list[np.ndarray] = field(default_factory=list)
    rows_hi: list[np.ndarray] = field(default_factory=list)
    nrow: int = 0
    r: list[np.ndarray] = field(default_factory=list)
    c: list[np.ndarray] = field(default_factory=list)
    v: list[np.ndarray] = field(default_factory=list)

    def cols(self, lo: np.ndarray, hi: np.ndarray, cost: np.ndarray) -> np.ndarray:
        n = len(lo)
        idx = np.arange(self.ncol, self.ncol + n)
        self.lo.append(np.asarray(lo, float))
        self.hi.append(np.asarray(hi, float))
        self.cost.append(np.asarray(cost, float))
        self.ncol += n
        return idx

    def rows(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        n = len(lo)
        idx = np.arange(self.nrow, self.nrow + n)
        self.rows_lo.append(np.asarray(lo, float))
        self.rows_hi.append(np.asarray(hi, float))
        self.nrow += n
        return idx

    def entries(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray | float) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        vals = np.broadcast_to(np.asarray(vals, float), rows.shape)
        self.r.append(rows)
        self.c.append(cols)
        self.v.append(np.array(vals))

    def lp(self) -> LpArrays:
        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(0)

        if self.r:
            mat = sp.csc_matrix(
                (cat(self.v), (cat(self.r).astype(np.int64), cat(self.c).astype(np.int64))),
                shape=(self.nrow, self.ncol),
            )
        else:
            mat = sp.csc_matrix((self.nrow, self.ncol))
        mat.sum_duplicates()
        return LpArrays(
            cost=cat(self.cost),
            lower=cat(self.lo),
            upper=cat(self.hi),
            row_lower=cat(self.rows_lo),
            row_upper=cat(self.rows_hi),
            start=mat.indptr.astype(np.int32),
            index=mat.indices.astype(np.int32),
            value=mat.data.astype(float),
        )


@dataclass
class LpArrays:
    """The LP as HiGHS takes it: column data, row bounds, the matrix column-wise (CSC)."""

    cost: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    row_lower: np.ndarray
    row_upper: np.ndarray
    start: np.ndarray  # int32, num_col + 1
    index: np.ndarray  # int32
    value: np.ndarray

    @property
    def num_col(self) -> int:
        return len(self.cost)

    @property
    def num_row(self) -> int:
        return len(self.row_lower)

    def pass_to(self, h: highspy._core._Highs, cost_scale: float = 1.0) -> None:
        """Hand the LP to ``h`` as arrays (no per-element copy through HighsLp).

        The costs go multiplied by ``cost_scale`` (see :data:`OBJECTIVE_SCALE`).
        """
        status = h.passModel(
            self.num_col,
            self.num_row,
            len(self.value),
            int(highspy.MatrixFormat.kColwise),
            int(highspy.ObjSense.kMinimize),
            0.0,
            self.cost * cost_scale,
            self.lower,
            self.upper,
            self.row_lower,
            self.row_upper,
            self.start,
            self.index,
            self.value,
            np.zeros(self.num_col, dtype=np.int32),  # all continuous
        )
        if status != highspy.HighsStatus.kOk:
            raise SchedulingError(f"HiGHS refused the LP: {status}")


@dataclass
class _Presence:
    """Where each EV's charging columns sit: one column per present slot."""

    offset: np.ndarray  # first column of EV i (relative to the c block)
    count: np.ndarray  # number of present slots of EV i
    ev: np.ndarray  # per column: EV index
    t: np.ndarray  # per column: slot
    frac: np.ndarray  # per column: share of the slot the EV is plugged in


def presence(problem: Problem) -> _Presence:
    n = len(problem.vehicles)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return _Presence(z, z, z, z, np.zeros(0))
    start = problem.start
    s = problem.slot_s
    a = np.array([(v.arrival - start).total_seconds() / s for v in problem.vehicles])
    d = np.array([(v.departure - start).total_seconds() / s for v in problem.vehicles])
    t0 = np.clip(np.floor(a), 0, problem.slots).astype(np.int64)
    t1 = np.clip(np.ceil(d), 0, problem.slots).astype(np.int64)
    count = np.maximum(0, t1 - t0)
    offset = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    total = int(count.sum())
    ev = np.repeat(np.arange(n), count)
    t = np.arange(total) - np.repeat(offset, count) + np.repeat(t0, count)
    frac = np.clip(np.minimum(t + 1, d[ev]) - np.maximum(t, a[ev]), 0.0, 1.0)
    return _Presence(offset, count, ev, t, frac)


def _limits(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    n = problem.slots
    imp = series(problem.import_limit_w, n, "import_limit_w").copy()
    exp = series(problem.export_limit_w, n, "export_limit_w").copy()
    s = problem.slot_s
    for req in problem.flex_requests:
        a = (req.start - problem.start).total_seconds() / s
        b = (req.end - problem.start).total_seconds() / s
        t0, t1 = max(0, math.floor(a)), min(n, math.ceil(b))
        if t1 <= t0:
            continue
        if req.max_import_w is not None:
            imp[t0:t1] = np.minimum(imp[t0:t1], req.max_import_w)
        if req.max_export_w is not None:
            exp[t0:t1] = np.minimum(exp[t0:t1], req.max_export_w)
    if (imp < 0).any() or (exp < 0).any():
        raise SchedulingError("import and export limits must be >= 0")
    return imp, exp


def node_chains(problem: Problem) -> dict[str, list[str]]:
    """Each node -> itself and its ancestors up to the site."""
    parent = {c.id: c.parent for c in problem.circuits}
    if SITE in parent:
        raise SchedulingError(f"a circuit may not be called {SITE!r}")
    chains: dict[str, list[str]] = {SITE: [SITE]}
    for cid in parent:
        chain, node, seen = [], cid, set()
        while node != SITE:
            if node in seen:
                raise SchedulingError(f"circuit {cid!r}: loop in parents")
            if node not in parent:
                raise SchedulingError(f"circuit {cid!r}: unknown parent {node!r}")
            seen.add(node)
            chain.append(node)
            node = parent[node]
        chains[cid] = [*chain, SITE]
    return chains


def _check(problem: Problem) -> None:
    if problem.slots <= 0 or problem.slot_s <= 0:
        raise SchedulingError("slots and slot_s must be > 0")
    if problem.voltage <= 0:
        raise SchedulingError("voltage must be > 0")
    seen: set[str] = set()
    for v in problem.vehicles:
        if v.id in seen:
            raise SchedulingError(f"vehicle {v.id!r} appears twice")
        seen.add(v.id)
        if v.departure <= v.arrival:
            raise SchedulingError(f"vehicle {v.id!r}: departure must be after arrival")
        if v.max_charge_w < 0 or v.max_discharge_w < 0:
            raise SchedulingError(f"vehicle {v.id!r}: powers must be >= 0")
        if not (0 < v.eta_charge <= 1 and 0 < v.eta_discharge <= 1):
            raise SchedulingError(f"vehicle {v.id!r}: efficiencies must be in (0, 1]")
        fractions = (v.soc, v.target_soc, v.min_soc)
        if any(f is not None and not 0 <= f <= 1 for f in fractions):
            raise SchedulingError(f"vehicle {v.id!r}: soc, target_soc, min_soc must be in 0..1")
        if not v.phases or any(p not in (1, 2, 3) for p in v.phases):
            raise SchedulingError(f"vehicle {v.id!r}: phases must be among 1, 2, 3")
    for s in problem.storages:
        if s.capacity_wh <= 0 or not (0 <= s.min_soc <= s.soc <= s.max_soc <= 1):
            raise SchedulingError(f"storage {s.id!r}: need 0 <= min_soc <= soc <= max_soc <= 1")


# Per method, the factor the objective is handed to HiGHS multiplied by (the
# reported value is divided back). The "early" tie-break costs are ~1e-7 per
# kW and slot, next to HiGHS's absolute dual feasibility tolerance (1e-7): at
# scale 1 the dual simplex reaches the plan's cost quickly and then spends
# ~90 % of its time (1,000 EVs x 96 slots: 55 s, 75k iterations) on dual
# infeasibilities of that size. Scaled by 1e4..1e6 the same LP takes ~4k
# iterations (1e5 chosen; the solution is the same to 1e-9 relative).
# Interior point is left unscaled: without crossover, HiGHS 1.8 stops short
# of "Optimal" on a scaled objective.
OBJECTIVE_SCALE: dict[str, float] = {"simplex": 1e5, "ipm": 1.0}

# HiGHS options per ``method``. Measured (``evflex bench scheduling``, 1,000 EVs x
# 96 slots, CPU s): dual simplex 0.8 without presolve, 1.1 with it (it removes
# nothing from this LP), interior point without crossover 3.2; at 1,000 x 192
# slots 4.3 against 10.3. ``auto`` = dual simplex without presolve.
SOLVER_OPTIONS: dict[str, dict[str, str | int]] = {
    "simplex": {"solver": "simplex", "simplex_strategy": 1, "presolve": "off"},
    "ipm": {"solver": "ipm", "run_crossover": "off", "presolve": "on"},
}
AUTO_METHOD = "simplex"


@dataclass
class Model:
    """A built LP and where each family of variables sits in it."""

    problem: Problem
    lp: LpArrays
    pres: _Presence
    c_cols: np.ndarray
    d_cols: dict[int, np.ndarray]
    u_col: np.ndarray  # per EV, -1 when it has no need
    st_cols: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    imp: np.ndarray  # per slot: column (export, curtailment, breach: -1 where absent)
    exp: np.ndarray
    curt: np.ndarray
    breach: np.ndarray
    imp_lim: np.ndarray
    exp_lim: np.ndarray
    base: np.ndarray  # kW
    pv: np.ndarray  # kW
    price_imp: np.ndarray
    price_exp: np.ndarray
    needs: list[float | None]
    build_s: float
    size: dict[str, int]


def resolve_method(method: str) -> str:
    """The method ``method`` stands for: ``auto`` is :data:`AUTO_METHOD`."""
    if method == "auto":
        return AUTO_METHOD
    if method not in SOLVER_OPTIONS:
        raise SchedulingError(f"unknown method {method!r}")
    return method


def new_highs(method: str, time_limit_s: float | None = None) -> highspy._core._Highs:
    """A silent HiGHS solver set up for ``method`` (see :data:`SOLVER_OPTIONS`)."""
    method = resolve_method(method)
    # highspy.Highs() enables its callbacks in its constructor, and HiGHS prints
    # its banner from C at the first such call, before any option can be set:
    # build the bare solver, silence it, then use it.
    h = _Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("log_to_console", False)
    if time_limit_s is not None:
        h.setOptionValue("time_limit", float(time_limit_s))
    for name, value in SOLVER_OPTIONS[method].items():
        if h.setOptionValue(name, value) != highspy.HighsStatus.kOk:
            raise SchedulingError(f"HiGHS rejected option {name}={value!r}")
    return h


def run(h: highspy._core._Highs, model: Model) -> tuple[np.ndarray, float, str]:
    """Solve what ``h`` holds; the point (clipped to the bounds), seconds, status."""
    t = time.perf_counter()
    h.run()
    solve_s = time.perf_counter() - t
    status = h.modelStatusToString(h.getModelStatus())
    x = np.asarray(h.getSolution().col_value) if status == "Optimal" else None
    if x is None or len(x) != model.lp.num_col:
        raise SchedulingError(f"HiGHS did not find a plan: {status}")
    return np.clip(x, model.lp.lower, model.lp.upper), solve_s, status


def solve(problem: Problem, *, method: str = "auto", time_limit_s: float | None = None) -> Schedule:
    """Plan ``problem``; raises :class:`SchedulingError` for a malformed one.

    The LP is always feasible: energy that cannot be delivered shows as
    ``unmet_wh`` (and ``feasible=False``), import that uncontrolled load
    forces above the limit as ``kpis.limit_breach_kwh``. ``method``:
    ``"simplex"``, ``"ipm"`` (no crossover) or ``"auto"``.
    """
    method = resolve_method(method)
    model = build(problem)
    h = new_highs(method, time_limit_s)
    model.lp.pass_to(h, OBJECTIVE_SCALE[method])
    x, solve_s, status = run(h, model)
    obj = h.getInfo().objective_function_value / OBJECTIVE_SCALE[method]
    return read(model, x, obj, status, solve_s, method)


def build(problem: Problem) -> Model:
    """The LP of ``problem``, not yet solved."""
    t_build = time.perf_counter()
    _check(problem)
    chains = node_chains(problem)
    T = problem.slots
    dt = problem.slot_h
    w = problem.effective_weights()
    imp_lim, exp_lim = _limits(problem)
    base = series(problem.base_load_w, T, "base_load_w") / 1000.0
    pv = np.maximum(series(problem.pv_w, T, "pv_w"), 0.0) / 1000.0
    price_imp = series(problem.import_price, T, "import_price")
    price_exp = series(problem.export_price, T, "export_price")
    vehicles = list(problem.vehicles)
    for v in vehicles:
        if v.node not in chains:
            raise SchedulingError(f"vehicle {v.id!r}: unknown circuit {v.node!r}")
    for s in problem.storages:
        if s.node not in chains:
            raise SchedulingError(f"storage {s.id!r}: unknown circuit {s.node!r}")

    b = _Builder()
    pres = presence(problem)
    nveh = len(vehicles)
    vmax = np.array([v.max_charge_w for v in vehicles]) / 1000.0
    eta_c = np.array([v.eta_charge for v in vehicles])
    # "charge early", more so the sooner the EV leaves: ties go the EDF way
    last = pres.offset + pres.count  # one past each EV's last column
    dep = np.maximum(pres.t[np.maximum(last - 1, 0)] + 1, 1) if len(pres.t) else np.ones(0)
    slot_pos = (pres.t + 0.5) / dep[pres.ev]
    c_cost = w.early_per_kwh * dt * slot_pos
    c_cols = b.cols(np.zeros(len(pres.t)), vmax[pres.ev] * pres.frac, c_cost)

    # balance rows first so their index is the slot
    bal = b.rows(base - pv, base - pv)
    b.entries(bal[pres.t], c_cols, -1.0)

    # per-EV energy
    needs = [v.need_wh() for v in vehicles]
    v2x = [i for i, v in enumerate(vehicles) if v.can_discharge]
    v2x_set = set(v2x)
    simple = [i for i in range(nveh) if i not in v2x_set]
    u_col = np.full(nveh, -1, dtype=np.int64)
    # charge-only EVs: sum eta c dt + u = need (or <= room without a need)
    with_need = [i for i in simple if needs[i] is not None]
    if with_need:
        need_kwh = np.array([needs[i] for i in with_need]) / 1000.0
        prio = np.array([vehicles[i].priority for i in with_need])
        u = b.cols(np.zeros(len(with_need)), need_kwh, w.unmet_per_kwh * prio)
        u_col[with_need] = u
        rows = b.rows(need_kwh, need_kwh)
        row_of = np.full(nveh, -1, dtype=np.int64)
        row_of[with_need] = rows
        mask = row_of[pres.ev] >= 0
        b.entries(row_of[pres.ev][mask], c_cols[mask], (eta_c[pres.ev] * dt)[mask])
        b.entries(rows, u, 1.0)
    room_wh: dict[int, float] = {}  # EV -> room in its battery, for those without a need
    for i in simple:
        battery_wh, soc = vehicles[i].battery_wh, vehicles[i].soc
        if needs[i] is None and battery_wh is not None and soc is not None:
            room_wh[i] = max(0.0, (1 - soc) * battery_wh)
    room_only = list(room_wh)
    if room_only:
        room = np.array(list(room_wh.values()))
        rows = b.rows(np.full(len(room_only), -INF), room / 1000.0)
        row_of = np.full(nveh, -1, dtype=np.int64)
        row_of[room_only] = rows
        mask = row_of[pres.ev] >= 0
        b.entries(row_of[pres.ev][mask], c_cols[mask], (eta_c[pres.ev] * dt)[mask])

    # EVs that may discharge: state of energy per present slot
    d_cols: dict[int, np.ndarray] = {}
    for i in v2x:
        v = vehicles[i]
        sl = slice(pres.offset[i], pres.offset[i] + pres.count[i])
        ts, fr, cc = pres.t[sl], pres.frac[sl], c_cols[sl]
        n = len(ts)
        if n == 0:
            continue
        dmax = v.max_discharge_w / 1000.0 * fr
        deg = (w.degradation * problem.degradation_per_kwh + _TINY_DISCHARGE) * dt
        margin = driver_margin(v, T)
        d_cost = np.full(n, deg)
        if margin is not None:
            # the site pays what the driver nets, so it discharges only where its gain
            # covers the driver's; and the driver never ends up paying for V2X
            m = margin[ts]
            d_cost = d_cost + w.energy_cost * m * dt
            if (m < 0).all():
                dmax = np.zeros(n)  # no slot pays the driver: no discharge at all
        dc = b.cols(np.zeros(n), dmax, d_cost)
        b.entries(bal[ts], dc, 1.0)
        if margin is not None and (margin[ts] < 0).any():
            r = b.rows(np.zeros(1), np.array([INF]))
            b.entries(np.full(n, r[0]), dc, margin[ts] * dt)
        need = needs[i]
        if v.battery_wh is not None and v.soc is not None:
            e0 = v.soc * v.battery_wh / 1000.0
            e_lo = v.min_soc * v.battery_wh / 1000.0
            e_hi = v.battery_wh / 1000.0
        else:
            e0 = 0.0
            cap = v.v2x_daily_cap_wh
            e_lo = -(cap / 1000.0) * math.ceil(T * dt / 24) if cap is not None else -INF
            if v.v2x_floor_wh is not None:
                e_lo = max(e_lo, v.v2x_floor_wh / 1000.0)
            e_hi = need / 1000.0 if need is not None else INF
        e_lo = min(e_lo, e0)
        ec = b.cols(np.full(n, e_lo), np.full(n, e_hi), np.zeros(n))
        rows = b.rows(np.zeros(n), np.zeros(n))
        rows = rows.copy()
        b.entries(rows, ec, 1.0)
        b.entries(rows[1:], ec[:-1], -1.0)
        b.rows_lo[-1][0] = b.rows_hi[-1][0] = e0  # e[first] = e0 + flows
        b.entries(rows, cc, -v.eta_charge * dt)
        b.entries(rows, dc, dt / v.eta_discharge)
        if need is not None:
            need_kwh_i = need / 1000.0
            if v.battery_wh is not None:
                need_kwh_i = min(need_kwh_i, v.battery_wh / 1000.0 - e0)
            uc = b.cols(
                np.zeros(1), np.array([need_kwh_i]), np.array([w.unmet_per_kwh * v.priority])
            )
            u_col[i] = uc[0]
            r = b.rows(np.array([e0 + need_kwh_i]), np.array([INF]))
            b.entries(r, ec[-1:], 1.0)
            b.entries(r, uc, 1.0)
        if v.v2x_daily_cap_wh is not None:
            day = np.floor(ts * dt / 24.0).astype(np.int64)
            for dday in np.unique(day):
                m = day == dday
                r = b.rows(np.array([-INF]), np.array([v.v2x_daily_cap_wh / 1000.0]))
                b.entries(np.full(int(m.sum()), r[0]), dc[m], dt)
        d_cols[i] = dc

    # stationary storage
    st_cols: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for s in problem.storages:
        cap = s.capacity_wh / 1000.0
        deg = (w.degradation * problem.degradation_per_kwh + _TINY_DISCHARGE) * dt
        sc = b.cols(np.zeros(T), np.full(T, s.max_charge_w / 1000.0), np.zeros(T))
        sd = b.cols(np.zeros(T), np.full(T, s.max_discharge_w / 1000.0), np.full(T, deg))
        lo = np.full(T, s.min_soc * cap)
        hi = np.full(T, s.max_soc * cap)
        end = s.end_soc if s.end_soc is not None else s.soc
        lo[-1] = max(lo[-1], min(end, s.max_soc) * cap)
        se = b.cols(lo, hi, np.zeros(T))
        rows = b.rows(np.zeros(T), np.zeros(T))
        b.rows_lo[-1][0] = b.rows_hi[-1][0] = s.soc * cap
        b.entries(rows, se, 1.0)
        b.entries(rows[1:], se[:-1], -1.0)
        b.entries(rows, sc, -s.eta_charge * dt)
        b.entries(rows, sd, dt / s.eta_discharge)
        b.entries(bal, sc, -1.0)
        b.entries(bal, sd, 1.0)
        st_cols.append((sc, sd, se))

    # site variables: import in every slot; export, curtailment and breach only in
    # the slots where they can be non-zero (-1 elsewhere)
    imp_cost = (w.energy_cost * price_imp + w.import_kwh) * dt
    exp_cost = (-w.energy_cost * price_exp + w.export_kwh) * dt
    # one meter cannot import and export at once: make doing both strictly worse
    # (when feed-in pays more than import costs, export is valued at the import price)
    exp_cost = np.maximum(exp_cost, -imp_cost + 1e-6 * dt)
    every = np.ones(T, dtype=bool)
    # export needs a source behind the meter: PV, negative load, storage or an EV discharging
    source = (pv > 0) | (base < 0) | bool(problem.storages)
    for dc_i in d_cols:
        source[pres.t[pres.offset[dc_i] : pres.offset[dc_i] + pres.count[dc_i]]] = True
    # import above the limit only where the uncontrolled load alone exceeds it: every
    # device can stay idle, so nowhere else is it needed for a plan to exist
    forced = base - pv > imp_lim / 1000.0
    imp = _slot_cols(b, bal, every, imp_lim / 1000.0, imp_cost, 1.0)
    exp = _slot_cols(b, bal, source, exp_lim / 1000.0, exp_cost, -1.0)
    curt = _slot_cols(b, bal, pv > 0, pv, np.full(T, w.curtail_per_kwh * dt), -1.0)
    breach = _slot_cols(
        b, bal, forced, np.full(T, INF), np.full(T, w.limit_breach_per_kwh * dt), 1.0
    )
    peak_weight = w.capacity * problem.capacity_tariff_per_kw + w.peak_per_kw
    if peak_weight > 0:
        pk = b.cols(
            np.array([problem.peak_so_far_w / 1000.0]), np.array([INF]), np.array([peak_weight])
        )
        # a slot whose import cannot pass the peak so far needs no peak row
        ts = np.nonzero(forced | (imp_lim / 1000.0 > problem.peak_so_far_w / 1000.0))[0]
        rows = b.rows(np.zeros(len(ts)), np.full(len(ts), INF))
        b.entries(rows, np.full(len(ts), pk[0]), 1.0)
        b.entries(rows, imp[ts], -1.0)
        tb = forced[ts]
        b.entries(rows[tb], breach[ts][tb], -1.0)

    _circuit_rows(problem, b, chains, pres, c_cols, d_cols, st_cols)
    lp = b.lp()
    return Model(
        problem=problem, lp=lp, pres=pres, c_cols=c_cols, d_cols=d_cols, u_col=u_col,
        st_cols=st_cols, imp=imp, exp=exp, curt=curt, breach=breach, imp_lim=imp_lim,
        exp_lim=exp_lim, base=base, pv=pv, price_imp=price_imp, price_exp=price_exp,
        needs=needs, build_s=time.perf_counter() - t_build,
        size={"rows": b.nrow, "cols": b.ncol, "nonzeros": int(lp.start[-1])},
    )  # fmt: skip


def _slot_cols(
    b: _Builder, bal: np.ndarray, where: np.ndarray, hi: np.ndarray, cost: np.ndarray, sign: float
) -> np.ndarray:
    """One column per slot in ``where`` (bounds 0..hi) in the balance rows; -1 elsewhere."""
    ts = np.nonzero(where)[0]
    out = np.full(len(where), -1, dtype=np.int64)
    out[ts] = b.cols(np.zeros(len(ts)), hi[ts], cost[ts])
    b.entries(bal[ts], out[ts], sign)
    return out


def at(x: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``x`` at ``cols``, 0 where a column is absent (-1)."""
    return np.where(cols >= 0, x[np.maximum(cols, 0)], 0.0)


def _circuit_rows(
    problem: Problem,
    b: _Builder,
    chains: dict[str, list[str]],
    pres: _Presence,
    c_cols: np.ndarray,
    d_cols: dict[int, np.ndarray],
    st_cols: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Per node, phase and slot: |current of everything below| <= limit."""
    limits = {c.id: c.max_current_a for c in problem.circuits}
    limits[SITE] = problem.phase_limit_a
    T = problem.slots
    volt = problem.voltage
    vehicles = problem.vehicles
    for node, limit in limits.items():
        if not math.isfinite(limit):
            continue
        for phase in (1, 2, 3):
            # (columns, slots, amps per kW) of every device under `node` on `phase`
            parts: list[tuple[np.ndarray, np.ndarray, float, np.ndarray]] = []
            worst = np.zeros(T)
            for i, v in enumerate(vehicles):
                if phase not in v.phases or node not in chains[v.node]:
                    continue
                sl = slice(pres.offset[i], pres.offset[i] + pres.count[i])
                k = 1000.0 / (volt * len(v.phases))
                ts = pres.t[sl]
                parts.append((c_cols[sl], ts, k, pres.frac[sl] * v.max_charge_w / 1000.0))
                np.add.at(
                    worst, ts, k * pres.frac[sl] * max(v.max_charge_w, v.max_discharge_w) / 1000.0
                )
                if i in d_cols:
                    parts.append((d_cols[i], ts, -k, np.zeros(len(ts))))
            for s, (sc, sd, _se) in zip(problem.storages, st_cols, strict=True):
                if phase not in s.phases or node not in chains[s.node]:
                    continue
                k = 1000.0 / (volt * len(s.phases))
                parts.append((sc, np.arange(T), k, np.zeros(T)))
                parts.append((sd, np.arange(T), -k, np.zeros(T)))
                worst += k * max(s.max_charge_w, s.max_discharge_w) / 1000.0
            binding = np.nonzero(worst > limit + 1e-9)[0]
            if not parts or len(binding) == 0:
                continue
            row_of = np.full(T, -1, dtype=np.int64)
            row_of[binding] = b.rows(np.full(len(binding), -limit), np.full(len(binding), limit))
            for cols, ts, k, _ in parts:
                r = row_of[ts]
                m = r >= 0
                b.entries(r[m], cols[m], k)


def read(
    model: Model, x: np.ndarray, obj: float, status: str, solve_s: float, method: str = ""
) -> Schedule:
    """The schedule that the LP point ``x`` stands for."""
    m = model
    problem, pres, c_cols, d_cols, u_col, st_cols = (
        m.problem,
        m.pres,
        m.c_cols,
        m.d_cols,
        m.u_col,
        m.st_cols,
    )
    imp, exp, curt, breach = m.imp, m.exp, m.curt, m.breach
    imp_lim, exp_lim, base, pv = m.imp_lim, m.exp_lim, m.base, m.pv
    price_imp, price_exp, needs = m.price_imp, m.price_exp, m.needs
    T = problem.slots
    dt = problem.slot_h
    x = np.where(np.abs(x) < 1e-7, 0.0, x)  # solver noise around 0
    headroom = np.maximum(0.0, imp_lim / 1000.0 + pv - base)
    headroom += sum(s.max_discharge_w / 1000.0 for s in problem.storages)
    chains = node_chains(problem)
    node_limit = {c.id: c.max_current_a for c in problem.circuits} | {SITE: problem.phase_limit_a}
    vplans: dict[str, VehiclePlan] = {}
    served = with_need = 0
    discharged_total = 0.0
    for i, v in enumerate(problem.vehicles):
        sl = slice(pres.offset[i], pres.offset[i] + pres.count[i])
        ts = pres.t[sl]
        charge = np.zeros(T)
        charge[ts] = x[c_cols[sl]]
        dis = np.zeros(T)
        if i in d_cols:
            dis[ts] = x[d_cols[i]]
        into = (v.eta_charge * charge - dis / v.eta_discharge) * dt
        energy = float(into.sum()) * 1000.0
        need = needs[i]
        unmet = float(x[u_col[i]]) * 1000.0 if u_col[i] >= 0 else 0.0
        feasible = True
        max_deliv = None
        if need is not None:
            with_need += 1
            feasible = unmet <= max(1.0, 1e-4 * need)
            served += feasible
            if not feasible:
                # alone, with priority: its own power, the site's room, every limit above it
                amps = min(node_limit.get(n, INF) for n in chains[v.node])
                own_kw = min(v.max_charge_w, amps * problem.voltage * len(v.phases)) / 1000.0
                cap = pres.frac[sl] * np.minimum(own_kw, headroom[ts])
                max_deliv = min(need, float((cap * v.eta_charge * dt).sum()) * 1000.0)
        soc = None
        if v.battery_wh is not None and v.soc is not None:
            soc = (v.soc + np.cumsum(into) * 1000.0 / v.battery_wh).tolist()
        disch = float(dis.sum() * dt) * 1000.0
        discharged_total += disch
        margin = driver_margin(v, T)
        net = None if margin is None else float((margin * dis).sum() * dt)
        vplans[v.id] = VehiclePlan(
            id=v.id,
            power_w=((charge - dis) * 1000.0).tolist(),
            energy_wh=energy,
            need_wh=need,
            unmet_wh=unmet,
            feasible=feasible,
            max_deliverable_wh=max_deliv,
            soc=soc,
            discharged_wh=disch,
            driver_v2x_net=net,
        )
    splans: dict[str, StoragePlan] = {}
    for s, (sc, sd, se) in zip(problem.storages, st_cols, strict=True):
        p = x[sc] - x[sd]
        discharged_total += float(x[sd].sum() * dt) * 1000.0
        splans[s.id] = StoragePlan(
            id=s.id, power_w=(p * 1000.0).tolist(), soc=(x[se] * 1000.0 / s.capacity_wh).tolist()
        )
    imp_kw = at(x, imp) + at(x, breach)
    exp_kw = at(x, exp)
    curt_kw = at(x, curt)
    pv_kwh = float(pv.sum() * dt)
    pv_used = np.maximum(0.0, pv - curt_kw - exp_kw)
    peak = float(imp_kw.max()) if T else 0.0
    kpis = Kpis(
        import_kwh=float(imp_kw.sum() * dt),
        export_kwh=float(exp_kw.sum() * dt),
        energy_cost=float((imp_kw * price_imp - exp_kw * price_exp).sum() * dt),
        capacity_cost=max(peak, problem.peak_so_far_w / 1000.0) * problem.capacity_tariff_per_kw,
        peak_import_w=peak * 1000.0,
        ev_energy_kwh=sum(p.energy_wh for p in vplans.values()) / 1000.0,
        unmet_kwh=sum(p.unmet_wh for p in vplans.values()) / 1000.0,
        drivers_served=served,
        drivers_with_need=with_need,
        pv_kwh=pv_kwh,
        pv_self_consumption_pct=(100.0 * float(pv_used.sum() * dt) / pv_kwh)
        if pv_kwh > 0
        else None,
        curtailed_kwh=float(curt_kw.sum() * dt),
        discharged_kwh=discharged_total / 1000.0,
        limit_breach_kwh=float(at(x, breach).sum() * dt),
    )
    return Schedule(
        problem=problem,
        status=status,
        vehicles=vplans,
        storages=splans,
        import_w=(imp_kw * 1000.0).tolist(),
        export_w=(exp_kw * 1000.0).tolist(),
        curtail_w=(curt_kw * 1000.0).tolist(),
        import_limit_w=(imp_lim).tolist(),
        export_limit_w=(exp_lim).tolist(),
        kpis=kpis,
        objective_value=float(obj),
        solve_s=solve_s,
        build_s=m.build_s,
        size=m.size,
        method=method,
    )
