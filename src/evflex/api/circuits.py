"""A site's circuit tree with live load per phase: /api/v1/sites/{id}/circuit-tree."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select, tuple_

from evflex.api.deps import Rt
from evflex.services import Services
from evflex.smartcharging.explain import Phases, Why, allocated_a, explain, subtree_sums
from evflex.smartcharging.planner import SITE_NODE, Plan, SiteModel
from evflex.smartcharging.planner import plan as plan_site
from evflex.store import repo
from evflex.store.tables import Connector, MeterValue, Station, Transaction

router = APIRouter(prefix="/api/v1")

KW = 1000.0
_BUSY_FIRST = ("Faulted", "Charging", "SuspendedEV", "SuspendedEVSE", "Occupied", "Preparing")


class ReasonOut(BaseModel):
    code: str = Field(description="site_limit, circuit_limit, ev_max, offline, ... (docs)")
    text: str
    node_id: str | None = Field(None, description="The site or circuit whose limit binds")


class EvseNodeOut(BaseModel):
    station_id: str
    evse_id: int
    connected: bool
    status: str | None = Field(None, description="The connector status the station reported")
    transaction_id: str | None = None
    phases: list[int] = Field(description="Grid phases the EVSE loads (its car's, once known)")
    allocated_a: float = Field(description="What the load manager gives it, A per phase")
    drawn_a: list[float] = Field(description="Measured on grid phases L1, L2, L3 (A)")
    power_kw: float | None = None
    held_back: bool = Field(description="It gets less than the EVSE and its car could take")
    reason: ReasonOut


class CircuitNodeOut(BaseModel):
    id: str
    name: str | None = None
    kind: str = Field(description="site or circuit")
    phases: int
    limit_a: list[float] | None = Field(None, description="Per-phase limit L1, L2, L3 (A)")
    limit_kw: float | None = Field(None, description="Power limit (the site's: its import limit)")
    base_a: list[float] = Field(description="Uncontrolled load counted here (the site's base load)")
    load_a: list[float] = Field(description="Measured: base load plus what the EVSEs below draw")
    allocated_a: list[float] = Field(description="Base load plus the limits of EVSEs that may draw")
    headroom_a: list[float] | None = Field(None, description="limit_a - allocated_a per phase")
    headroom_kw: float | None = Field(None, description="limit_kw less the allocated power")
    children: list[CircuitNodeOut] = []
    evses: list[EvseNodeOut] = []


class CircuitTreeOut(BaseModel):
    site_id: str
    at: datetime | None = Field(None, description="When the allocation shown was computed")
    policy: str
    voltage: float
    root: CircuitNodeOut


def _r(values: Sequence[float]) -> list[float]:
    return [round(v, 2) for v in values]


async def _rows(rt: Services, site_id: str):
    """The site, its circuits, its stations' connectors, active sessions and their latest
    meter values (transaction pk -> rows)."""
    async with rt.sessionmaker() as s:
        site = await repo.get_site(s, site_id)
        if site is None:
            raise HTTPException(404, f"site '{site_id}' does not exist")
        circuits = await repo.list_circuits(s, site_id)
        stations = await repo.stations_of_site(s, site_id)
        ids = [x.id for x in stations]
        conns: list[Connector] = []
        txs: list[Transaction] = []
        latest: dict[int, list[MeterValue]] = {}
        if ids:
            q = select(Connector).where(Connector.station_id.in_(ids))
            conns = list((await s.execute(q)).scalars())
            txs = await repo.active_transactions(s, ids)
            keys = [(t.id, t.last_meter_at) for t in txs if t.last_meter_at is not None]
            if keys:
                q2 = select(MeterValue).where(
                    tuple_(MeterValue.transaction_pk, MeterValue.timestamp).in_(keys),
                    MeterValue.measurand == "Current.Import",
                )
                for m in (await s.execute(q2)).scalars():
                    latest.setdefault(m.transaction_pk, []).append(m)
    return site, circuits, stations, conns, txs, latest


def _drawn(
    stn: Station, tx: Transaction, rows: list[MeterValue], phases: tuple[int, ...], volt: float
) -> Phases:
    """What a session draws on grid phases L1..L3: its per-phase currents (the station's
    L1 is grid phase ``phase_rotation``), else its power spread over ``phases``."""
    out = [0.0, 0.0, 0.0]
    per_phase = [m for m in rows if m.phase[:2] in ("L1", "L2", "L3") and m.location != "EV"]
    if per_phase:
        first = (stn.phase_rotation or 1) - 1
        for m in per_phase:
            out[(first + int(m.phase[1]) - 1) % 3] += max(0.0, m.value)
    elif tx.power_w and tx.power_w > 0:
        for p in phases:
            out[p - 1] = tx.power_w / (volt * len(phases))
    return (out[0], out[1], out[2])


async def _allocation(rt: Services, site_id: str) -> tuple[SiteModel, Plan, dict[str, Why]]:
    """The last plan of the site, the model it was made from and why each EVSE got its value
    (a site not planned yet is planned here, nothing is sent)."""
    st = rt.lm.status.get(site_id)
    if st is not None and st.plan is not None and st.model is not None:
        model, current = st.model, st.plan
    else:
        found, _ = await rt.lm.load_model(site_id)
        if found is None:
            status = rt.lm.status.get(site_id)
            why = status.last_error if status is not None else None
            raise HTTPException(409, f"site '{site_id}' {why or 'cannot be planned'}")
        model, current = found, plan_site(found, rt.clock.now(), initial_full_power_s=0.0)
    setpoints = st.mpc.setpoints if st is not None and st.mpc is not None else {}
    caps = st.caps if st is not None and st.plan is current else None
    return model, current, explain(model, current, caps, setpoints)


@router.get("/sites/{site_id}/circuit-tree", response_model=CircuitTreeOut, tags=["smart charging"])
async def circuit_tree(site_id: str, rt: Rt) -> CircuitTreeOut:
    """The site's circuit tree: per node its limit, the measured and the allocated load per
    phase; per EVSE what it gets and draws, and whether (and why) it is held back."""
    site, circuits, stations, conns, txs, latest = await _rows(rt, site_id)
    model, current, whys = await _allocation(rt, site_id)
    volt = model.voltage
    stn_of = {x.id: x for x in stations}
    tx_of = {(t.station_id, t.evse_id): t for t in txs if t.evse_id}
    status: dict[tuple[str, int], str] = {}
    for c in sorted(conns, key=lambda c: c.status in _BUSY_FIRST):
        status[(c.station_id, c.evse_id)] = c.status

    drawn: dict[str, Phases] = {}
    evses_under: dict[str, list[EvseNodeOut]] = {}
    parent = {n.id: n.parent for n in model.nodes}
    for key, ev in sorted(model.evses.items()):
        stn = stn_of.get(ev.station_id)
        tx = tx_of.get((ev.station_id, ev.evse_id))
        if stn is not None and tx is not None:
            drawn[key] = _drawn(stn, tx, latest.get(tx.id, []), ev.phases, volt)
        why = whys[key]
        amps = current.pinned.get(key, current.targets.get(key, 0.0))
        node = parent.get(model.node_of[key]) or SITE_NODE  # the station's circuit or the site
        evses_under.setdefault(node, []).append(
            EvseNodeOut(
                station_id=ev.station_id,
                evse_id=ev.evse_id,
                connected=rt.ocpp.is_connected(ev.station_id),
                status=status.get((ev.station_id, ev.evse_id)),
                transaction_id=tx.transaction_id if tx is not None else None,
                phases=list(ev.phases),
                allocated_a=round(amps, 2),
                drawn_a=_r(drawn.get(key, (0.0, 0.0, 0.0))),
                power_kw=None if tx is None or tx.power_w is None else round(tx.power_w / KW, 3),
                held_back=why.held_back,
                reason=ReasonOut(
                    code=why.code, text=why.text, node_id=_public_id(why.node, site.id)
                ),
            )
        )
    loads = subtree_sums(model, drawn)
    allocs = subtree_sums(model, allocated_a(model, current))
    names = {f"c:{c.id}": c.name for c in circuits}
    children: dict[str, list[str]] = {}
    for n in model.nodes:
        if n.parent is not None and n.id.startswith("c:"):
            children.setdefault(n.parent, []).append(n.id)

    def build(nid: str) -> CircuitNodeOut:
        n = next(x for x in model.nodes if x.id == nid)
        alloc = allocs[nid]
        limit = None if n.max_current_a is None else [n.max_current_a] * 3
        limit_kw = None if n.max_power_w is None else n.max_power_w / KW
        return CircuitNodeOut(
            id=_public_id(nid, site.id) or site.id,
            name=site.name if nid == SITE_NODE else names.get(nid),
            kind="site" if nid == SITE_NODE else "circuit",
            phases=site.phases or 3,
            limit_a=limit,
            limit_kw=limit_kw,
            base_a=_r(n.base_current_a),
            load_a=_r(loads[nid]),
            allocated_a=_r(alloc),
            headroom_a=None
            if limit is None
            else _r([lim - a for lim, a in zip(limit, alloc, strict=True)]),
            headroom_kw=None if limit_kw is None else round(limit_kw - volt * sum(alloc) / KW, 3),
            children=[build(c) for c in sorted(children.get(nid, []))],
            evses=evses_under.get(nid, []),
        )

    return CircuitTreeOut(
        site_id=site.id,
        at=current.at,
        policy=model.policy.value,
        voltage=volt,
        root=build(SITE_NODE),
    )


def _public_id(node_id: str | None, site_id: str) -> str | None:
    """A planner node id as the API names it: the site's, a circuit's or a station's id."""
    if node_id is None:
        return None
    return site_id if node_id == SITE_NODE else node_id.partition(":")[2]
