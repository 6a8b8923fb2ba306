"""Why the load manager gave each EVSE what it gave: every reason the circuit view shows,
from real plans of small sites."""

from __future__ import annotations

from datetime import UTC, datetime

from evflex.smartcharging.allocation import Node as TreeNode
from evflex.smartcharging.explain import explain
from evflex.smartcharging.planner import SITE_NODE, EvseModel, SessionModel, SiteModel, plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _model(*evses: EvseModel, c1_a: float = 16.0) -> SiteModel:
    """Site (200 A) with circuit C1 (``c1_a``): station S1 on C1, S2 on the site."""
    site = SiteModel(
        id="m",
        nodes=[
            TreeNode(SITE_NODE, None, max_current_a=200.0),
            TreeNode("c:C1", SITE_NODE, max_current_a=c1_a),
            TreeNode("s:S1", "c:C1"),
            TreeNode("s:S2", SITE_NODE),
        ],
    )
    for ev in evses:
        site.evses[ev.key] = ev
        site.node_of[ev.key] = f"s:{ev.station_id}"
    return site


def _ev(station: str, evse_id: int, **session) -> EvseModel:
    ev_fields = {
        k: session.pop(k)
        for k in ("online", "steerable", "refuses_profiles", "external_limit_a")
        if k in session
    }
    return EvseModel(
        station, evse_id, session=SessionModel(f"{station}-{evse_id}", **session), **ev_fields
    )


def _why(site: SiteModel, caps=None, setpoints=()) -> dict[str, tuple[str, bool, str]]:
    current = plan(site, T0, initial_full_power_s=0.0, caps=caps)
    return {
        k: (w.code, w.held_back, w.text) for k, w in explain(site, current, caps, setpoints).items()
    }


def test_explain_names_every_reason():
    # three sessions under C1's 16 A: two fit their 6 A minimum, the third is paused by C1
    why = _why(_model(_ev("S1", 1), _ev("S1", 2), _ev("S1", 3)))
    paused = [v for v in why.values() if v[2].startswith("paused")]
    assert len(paused) == 1 and paused[0][:2] == ("circuit_limit", True)
    assert "minimum 6 A does not fit under the circuit C1 limit" in paused[0][2]
    # a session in priority charging is served first: the other one says so
    why = _why(_model(_ev("S1", 1, priority=True), _ev("S1", 2)))
    assert why["S1/1"][0] == "circuit_limit"
    assert why["S1/2"][:2] == ("priority_of_others", True)
    # what the CSMS cannot steer is not held back; an EV that is done is kept at its minimum
    why = _why(
        _model(
            _ev("S1", 1, online=False),
            _ev("S1", 2, refuses_profiles=True, steerable=False),
            _ev("S2", 1, external_limit_a=10.0),
            _ev("S2", 2, authorized=False),
            _ev("S2", 3, finished=True),
            c1_a=80.0,
        )
    )
    assert why["S1/1"][:2] == ("offline", False)
    assert why["S1/2"][:2] == ("not_steerable", False)
    assert why["S2/1"][:2] == ("external_limit", True) and "10 A" in why["S2/1"][2]
    assert why["S2/2"][:2] == ("waiting_authorization", False)
    assert why["S2/3"][:2] == ("ev_finished", False)
    # the site's plan ahead caps a session; one that follows its setpoints is V2X
    why = _why(
        _model(_ev("S2", 1), _ev("S2", 2)), caps={"S2/1": 7.0, "S2/2": 20.0}, setpoints={"S2/2"}
    )
    assert why["S2/1"][:2] == ("schedule", True)
    assert why["S2/2"][:2] == ("v2x", True)
    # no session: idle
    idle = _model(EvseModel("S2", 1))
    assert _why(idle)["S2/1"][:2] == ("idle", False)
