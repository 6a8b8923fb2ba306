"""How much a site could shift its import without failing any driver.

For each slot of a window, two more LPs on the same constraints: the least
and the most net import (import minus export) the site could have in that slot while every EV still gets at
least what the reference schedule gives it (no driver's unmet energy grows),
every limit holds, and storage ends where it must. The gap to the reference
schedule's import is the downward and upward flexibility an aggregator or DSO
can call on (CEN CWA 17851 use case "flexibility management").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evflex.scheduling.lp import SchedulingError, build, new_highs, run
from evflex.scheduling.problem import Problem, Schedule

_SLACK_KWH = 1e-5  # tolerance on each driver's unmet energy (10 mWh)


@dataclass(slots=True)
class SlotFlex:
    slot: int
    planned_w: float  # the reference schedule's net import (import - export) in this slot
    min_w: float
    max_w: float

    @property
    def down_w(self) -> float:
        return max(0.0, self.planned_w - self.min_w)

    @property
    def up_w(self) -> float:
        return max(0.0, self.max_w - self.planned_w)


def flexibility(
    problem: Problem, reference: Schedule, first: int = 0, last: int | None = None
) -> list[SlotFlex]:
    """Up/down flexibility for slots ``first..last`` (inclusive) of ``problem``."""
    last = problem.slots - 1 if last is None else last
    if not 0 <= first <= last < problem.slots:
        raise SchedulingError(f"window {first}..{last} outside 0..{problem.slots - 1}")
    model = build(problem)
    lp = model.lp
    upper = lp.upper.copy()
    for i, v in enumerate(problem.vehicles):
        col = model.u_col[i]
        if col >= 0:
            upper[col] = reference.vehicles[v.id].unmet_wh / 1000.0 + _SLACK_KWH
    for b in np.nonzero(model.breach >= 0)[0]:  # import above the limit where the reference had it
        upper[model.breach[b]] = (
            max(0.0, reference.import_w[b] - reference.import_limit_w[b]) / 1000
        )
    lp.upper = upper
    lp.cost = np.zeros(lp.num_col)
    h = new_highs("simplex")
    lp.pass_to(h)
    out = []
    for t in range(first, last + 1):
        cols = np.array([model.imp[t], model.breach[t], model.exp[t]], dtype=np.int32)
        net = np.array([1.0, 1.0, -1.0])
        cols, net = cols[cols >= 0], net[cols >= 0]
        found = []
        for sign in (1.0, -1.0):  # minimise, then maximise, the net import in slot t
            h.changeColsCost(len(cols), cols, sign * net)
            x, _, _ = run(h, model)
            found.append(float(x[cols] @ net) * 1000.0)
        h.changeColsCost(len(cols), cols, np.zeros(len(cols)))
        out.append(SlotFlex(t, reference.import_w[t] - reference.export_w[t], found[0], found[1]))
    return out
