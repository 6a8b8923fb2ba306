"""Persistence operations on one session. Version-neutral: they take domain objects.

Write functions are designed to be idempotent, so a station that resends a
message (its offline queue after a reconnect, a retry after a lost answer)
changes nothing the second time.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from types import SimpleNamespace
from typing import NamedTuple

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.csms.capabilities import ev_capabilities, station_capabilities
from evflex.domain.model import (
    ENERGY_EXPORT_REGISTER,
    ENERGY_IMPORT_REGISTER,
    ChargingNeeds,
    MeterSample,
    StationEvent,
    StationInfo,
    StatusReport,
    TransactionState,
    TransactionUpdate,
    phases_drawn,
    signed_power_w,
    soc_percent,
)
from evflex.store.tables import (
    Certificate,
    Circuit,
    Connector,
    EventLog,
    IdToken,
    MeterValue,
    Reservation,
    Site,
    Station,
    StationProfile,
    Transaction,
)
from evflex.store.writer import Bulk, add_rows


def _insert_for(session: AsyncSession):
    return _insert_of(session.bind.dialect.name)


def _insert_of(dialect: str):
    return pg_insert if dialect == "postgresql" else sqlite_insert


# ------------------------------------------------- rows written in bulk (see store.writer)


def _heartbeat_update(_dialect: str):
    t = Station.__table__
    return update(t).where(t.c.id == bindparam("b_id")).values(last_heartbeat_at=bindparam("b_at"))


#: Rows of :func:`heartbeat_row`: the station's last heartbeat.
HEARTBEATS = Bulk("heartbeats", _heartbeat_update, key=lambda r: r["b_id"])


def heartbeat_row(station_id: str, now: datetime) -> dict:
    return {"b_id": station_id, "b_at": now}


def new_station_row(station_id: str, now: datetime) -> dict:
    return {"id": station_id, "created_at": now}


def _station_insert(dialect: str):
    t = Station.__table__
    return _insert_of(dialect)(t).on_conflict_do_nothing(index_elements=[t.c.id])


#: Rows ``{"id": station id, "created_at": time}``: a station registered on first
#: connect (nothing happens if the id exists).
NEW_STATIONS = Bulk("new_stations", _station_insert, key=lambda r: r["id"])


def _connection_update(_dialect: str):
    t = Station.__table__
    return (
        update(t)
        .where(t.c.id == bindparam("b_id"))
        .values(
            connected=bindparam("b_connected"),
            ocpp_version=func.coalesce(
                bindparam("b_version", type_=t.c.ocpp_version.type), t.c.ocpp_version
            ),
            last_connected_at=func.coalesce(
                bindparam("b_connected_at", type_=t.c.last_connected_at.type), t.c.last_connected_at
            ),
            last_heartbeat_at=func.coalesce(
                bindparam("b_seen_at", type_=t.c.last_heartbeat_at.type), t.c.last_heartbeat_at
            ),
            last_disconnected_at=func.coalesce(
                bindparam("b_disconnected_at", type_=t.c.last_disconnected_at.type),
                t.c.last_disconnected_at,
            ),
        )
    )


#: Rows of :func:`connection_row`, applied in order (a station that left and came
#: back within one batch ends up connected, with both times recorded).
CONNECTIONS = Bulk("connections", _connection_update)


def connection_row(
    station_id: str,
    connected: bool,
    version: str | None,
    now: datetime,
    seen_at: datetime | None = None,
) -> dict:
    """A (dis)connection. The station's last sign of life (``last_heartbeat_at``) becomes
    the connect time, or at a disconnect ``seen_at``: when it last sent anything."""
    return {
        "b_id": station_id,
        "b_connected": connected,
        "b_version": version if connected else None,
        "b_connected_at": now if connected else None,
        "b_seen_at": now if connected else seen_at,
        "b_disconnected_at": None if connected else now,
    }


_STATUS_FIELDS = ("status", "error_code", "info", "vendor_error_code", "status_at", "updated_at")


def _status_upsert(dialect: str):
    t = Connector.__table__
    ins = _insert_of(dialect)(t)
    return ins.on_conflict_do_update(
        index_elements=[t.c.station_id, t.c.evse_id, t.c.connector_id],
        set_={name: ins.excluded[name] for name in _STATUS_FIELDS},
        # an older report delivered late must not overwrite a newer one
        where=or_(t.c.status_at.is_(None), t.c.status_at <= ins.excluded.status_at),
    )


#: Rows of :func:`status_row`: the latest status of each connector.
STATUSES = Bulk(
    "statuses",
    _status_upsert,
    key=lambda r: (r["station_id"], r["evse_id"], r["connector_id"]),
    newer=lambda old, new: new["status_at"] >= old["status_at"],
)


def status_row(station_id: str, report: StatusReport, now: datetime) -> dict:
    return {
        "station_id": station_id,
        "evse_id": report.evse_id,
        "connector_id": report.connector_id,
        "status": report.status.value,
        "error_code": report.error_code,
        "info": report.info,
        "vendor_error_code": report.vendor_error_code,
        "status_at": report.timestamp,
        "updated_at": now,
    }


_SAMPLE_KEY = ("station_id", "evse_id", "timestamp", "measurand", "phase", "location", "context")


def _samples_insert(dialect: str):
    return _insert_of(dialect)(MeterValue.__table__).on_conflict_do_nothing(
        index_elements=list(_SAMPLE_KEY)
    )


#: Rows of :func:`sample_rows`; a sample stored once per key (a replay adds nothing).
SAMPLES = Bulk("samples", _samples_insert, key=lambda r: tuple(r[k] for k in _SAMPLE_KEY))


def _events_insert(_dialect: str):
    return EventLog.__table__.insert()


#: Rows of :func:`event_row`: the event log.
EVENTS = Bulk("events", _events_insert)


def event_row(ev: StationEvent, text: str | None = None) -> dict:
    return {
        "station_id": ev.station_id,
        "timestamp": ev.timestamp,
        "kind": ev.kind,
        "type": ev.type,
        "detail": ev.detail,
        "text": text,
    }


# ---------------------------------------------------------------- stations


async def get_station(session: AsyncSession, station_id: str) -> Station | None:
    return await session.get(Station, station_id)


class StationAuth(NamedTuple):
    """What the OCPP endpoint checks at a station's connect."""

    password_hash: str | None = None
    security_profile: int | None = None  # None: profile 1
    security_profile_reached: int | None = None
    serial_number: str | None = None


async def station_credentials(
    session: AsyncSession, station_ids: list[str] | None = None
) -> dict[str, StationAuth]:
    """Station id -> its password hash, security profile(s) and serial number, of
    ``station_ids`` or of all."""
    query = select(
        Station.id,
        Station.password_hash,
        Station.security_profile,
        Station.security_profile_reached,
        Station.serial_number,
    )
    if station_ids is None:
        return {r[0]: StationAuth(*r[1:]) for r in await session.execute(query)}
    found: dict[str, StationAuth] = {}
    for i in range(0, len(station_ids), 500):
        part = query.where(Station.id.in_(station_ids[i : i + 500]))
        found.update((r[0], StationAuth(*r[1:])) for r in await session.execute(part))
    return found


async def stations_named(session: AsyncSession, name: str) -> list[str]:
    """Ids of the stations whose id or serial number is ``name``."""
    query = select(Station.id).where(or_(Station.id == name, Station.serial_number == name))
    return list((await session.execute(query)).scalars())


async def certificate_stations(session: AsyncSession, sha256: str) -> set[str]:
    """The stations a certificate (by its SHA-256) was issued to or installed at."""
    query = select(Certificate.station_id).where(Certificate.sha256 == sha256)
    return {sid for sid in (await session.execute(query)).scalars() if sid is not None}


async def raise_profile_reached(session: AsyncSession, station_id: str, profile: int) -> None:
    """A station connected with ``profile``: its highest reached profile becomes at least that."""
    await session.execute(
        update(Station)
        .where(Station.id == station_id)
        .where(func.coalesce(Station.security_profile_reached, 0) < profile)
        .values(security_profile_reached=profile)
    )


async def create_station(
    session: AsyncSession,
    station_id: str,
    now: datetime,
    password_hash: str | None = None,
    site_id: str | None = None,
) -> Station:
    st = Station(id=station_id, password_hash=password_hash, site_id=site_id, created_at=now)
    session.add(st)
    await session.flush()
    return st


STATION_TOPOLOGY = (
    "site_id",
    "circuit_id",
    "max_current_a",
    "evse_max_current_a",
    "phases",
    "phase_rotation",
)


class TopologyError(ValueError):
    """A station placed on a site or circuit that does not exist (or not together)."""


async def set_topology(session: AsyncSession, st: Station, values: dict) -> None:
    """Place a station in its site's tree; ``values`` holds STATION_TOPOLOGY fields to set."""
    for name in STATION_TOPOLOGY:
        if name in values:
            setattr(st, name, values[name])
    if st.site_id is not None and await get_site(session, st.site_id) is None:
        raise TopologyError(f"site '{st.site_id}' does not exist")
    if st.circuit_id is not None:
        circuit = await session.get(Circuit, st.circuit_id)
        if circuit is None:
            raise TopologyError(f"circuit '{st.circuit_id}' does not exist")
        if circuit.site_id != st.site_id:
            raise TopologyError(
                f"circuit '{st.circuit_id}' belongs to site '{circuit.site_id}', "
                f"not to '{st.site_id}'"
            )


async def register_station(
    session: AsyncSession,
    station_id: str,
    now: datetime,
    password_hash: str | None = None,
    topology: dict | None = None,
    security: dict | None = None,
) -> bool:
    """Create a station; False if the id is taken. Raises TopologyError.
    ``security``: its ``security_profile`` and ``serial_number``, if given."""
    if await get_station(session, station_id) is not None:
        return False
    st = await create_station(session, station_id, now, password_hash)
    for name, value in (security or {}).items():
        setattr(st, name, value)
    if topology:
        await set_topology(session, st, topology)
    return True


_BOOT_FIELDS = (
    "vendor",
    "model",
    "serial_number",
    "firmware_version",
    "iccid",
    "imsi",
    "meter_type",
    "meter_serial_number",
    "boot_reason",
    "ocpp_version",
    "registration_status",
    "last_boot_at",
    "last_heartbeat_at",
)


def _boot_upsert(dialect: str):
    t = Station.__table__
    ins = _insert_of(dialect)(t)
    return ins.on_conflict_do_update(
        index_elements=[t.c.id], set_={name: ins.excluded[name] for name in _BOOT_FIELDS}
    )


#: Rows of :func:`boot_row`: what a station said of itself when it booted (a
#: station deleted while connected is registered again by its boot).
BOOTS = Bulk("boots", _boot_upsert, key=lambda r: r["id"])


def boot_row(station_id: str, info: StationInfo, version: str, now: datetime) -> dict:
    return {
        "id": station_id,
        "created_at": now,
        "vendor": info.vendor,
        "model": info.model,
        "serial_number": info.serial_number,
        "firmware_version": info.firmware_version,
        "iccid": info.iccid,
        "imsi": info.imsi,
        "meter_type": info.meter_type,
        "meter_serial_number": info.meter_serial_number,
        "boot_reason": info.boot_reason,
        "ocpp_version": version,
        "registration_status": "Accepted",
        "last_boot_at": now,
        "last_heartbeat_at": now,
    }


# ---------------------------------------------------------------- id tokens


async def get_id_token(session: AsyncSession, token: str) -> IdToken | None:
    return await session.get(IdToken, token)


async def put_id_token(
    session: AsyncSession,
    token: str,
    now: datetime,
    status: str = "Accepted",
    type: str = "ISO14443",
    expiry: datetime | None = None,
    parent_id_token: str | None = None,
    create_only: bool = False,
) -> bool:
    """Add or replace an id token; with ``create_only`` False if it exists."""
    row = await get_id_token(session, token)
    if row is not None and create_only:
        return False
    if row is None:
        row = IdToken(id_token=token, created_at=now)
        session.add(row)
    row.status = status
    row.type = type
    row.expiry = expiry
    row.parent_id_token = parent_id_token
    row.updated_at = now
    return True


async def list_id_tokens(session: AsyncSession) -> list[IdToken]:
    return list((await session.execute(select(IdToken).order_by(IdToken.id_token))).scalars())


# ---------------------------------------------------------------- transactions


_TX_INDEX = "evflex.transactions"


async def prefetch_transactions(session: AsyncSession, keys: list) -> None:
    """Load the transactions ``keys`` name ((station id, transaction id) pairs) in one
    query per 300 keys, so that :func:`find_transaction` finds them without one."""
    index: dict = session.info.setdefault(_TX_INDEX, {})
    wanted = list({k for k in keys if k not in index})
    for i in range(0, len(wanted), 300):
        part = wanted[i : i + 300]
        res = await session.execute(
            select(Transaction).where(
                Transaction.station_id.in_({k[0] for k in part}),
                Transaction.transaction_id.in_({k[1] for k in part}),
            )
        )
        for tx in res.scalars():
            index[(tx.station_id, tx.transaction_id)] = tx
        for k in part:
            index.setdefault(k, None)  # known not to exist


def _indexed(session: AsyncSession, tx: Transaction) -> None:
    index = session.info.get(_TX_INDEX)
    if index is not None:
        index[(tx.station_id, tx.transaction_id)] = tx


async def find_transaction(
    session: AsyncSession, station_id: str, transaction_id: str
) -> Transaction | None:
    index = session.info.get(_TX_INDEX)
    if index is not None and (station_id, transaction_id) in index:
        return index[(station_id, transaction_id)]
    res = await session.execute(
        select(Transaction).where(
            Transaction.station_id == station_id, Transaction.transaction_id == transaction_id
        )
    )
    return res.scalar_one_or_none()


async def _new_transaction(
    session: AsyncSession, station_id: str, transaction_id: str, now: datetime
) -> Transaction:
    tx = Transaction(
        station_id=station_id,
        transaction_id=transaction_id,
        state=TransactionState.ACTIVE.value,
        updated_at=now,
        energy_imported_wh=0.0,
        energy_exported_wh=0.0,
        offline_messages=0,
    )
    session.add(tx)
    await session.flush()
    _indexed(session, tx)
    return tx


async def start_transaction_assigning_id(
    session: AsyncSession, upd: TransactionUpdate, now: datetime
) -> Transaction:
    """OCPP 1.6 StartTransaction: the CSMS assigns the id (our primary key).

    A repeated StartTransaction (same station, connector, token, timestamp and
    meterStart) returns the transaction created the first time.
    """
    res = await session.execute(
        select(Transaction).where(
            Transaction.station_id == upd.station_id,
            Transaction.evse_id == upd.evse_id,
            Transaction.started_at == upd.timestamp,
            Transaction.id_token == upd.id_token,
            Transaction.meter_start_wh == upd.meter_start_wh,
        )
    )
    existing = res.scalars().first()
    if existing is not None:
        return existing
    tx = await _new_transaction(session, upd.station_id, "pending-" + uuid.uuid4().hex, now)
    tx.transaction_id = str(tx.id)
    _indexed(session, tx)
    await _apply(session, tx, upd, now)
    return tx


async def apply_transaction_update(
    session: AsyncSession, upd: TransactionUpdate, now: datetime, create: bool = True
) -> Transaction | None:
    """Apply a started/updated/ended account to the transaction it names.

    2.x transactions are created on first sight (whatever the event, since a
    station may have lost its Started event). With ``create=False`` (1.6, where
    only StartTransaction creates) an unknown id returns ``None``.
    """
    tx = await find_transaction(session, upd.station_id, upd.transaction_id)
    if tx is None:
        if not create:
            return None
        tx = await _new_transaction(session, upd.station_id, upd.transaction_id, now)
    await _apply(session, tx, upd, now)
    return tx


async def _apply(session: AsyncSession, tx: Transaction, upd: TransactionUpdate, now: datetime):
    if upd.evse_id is not None and tx.evse_id is None:
        tx.evse_id = upd.evse_id
    if upd.connector_id is not None and tx.connector_id is None:
        tx.connector_id = upd.connector_id
    if upd.id_token and not tx.id_token:
        tx.id_token = upd.id_token
    if upd.remote_start_id is not None:
        tx.remote_start_id = upd.remote_start_id
    if upd.operation_mode is not None:
        tx.operation_mode = upd.operation_mode
    if upd.reservation_id is not None:
        tx.reservation_id = upd.reservation_id
    if upd.event == "started" or tx.started_at is None:
        if tx.started_at is None or upd.timestamp < tx.started_at:
            tx.started_at = upd.timestamp
    if upd.meter_start_wh is not None:
        tx.meter_start_wh = upd.meter_start_wh
        _widen(tx, "import", upd.meter_start_wh)
    if upd.meter_stop_wh is not None:
        tx.meter_stop_wh = upd.meter_stop_wh
        _widen(tx, "import", upd.meter_stop_wh)
    if upd.offline:
        tx.offline_messages = (tx.offline_messages or 0) + 1
    if upd.seq_no is not None:
        tx.last_seq_no = max(tx.last_seq_no or 0, upd.seq_no)

    newest = tx.last_meter_at is None or upd.timestamp >= tx.last_meter_at
    if upd.samples:
        # Energy registers are cumulative: first = min, last = max, whatever the order.
        for s in upd.samples:
            if s.phase is None and s.location in (None, "Outlet"):
                if s.measurand == ENERGY_IMPORT_REGISTER:
                    _widen(tx, "import", s.value)
                elif s.measurand == ENERGY_EXPORT_REGISTER:
                    _widen(tx, "export", s.value)
        if newest:
            latest = max(s.timestamp for s in upd.samples)
            current = [s for s in upd.samples if s.timestamp == latest]
            power = signed_power_w(current)
            if power is not None:
                tx.power_w = power
            soc = soc_percent(current)
            if soc is not None:
                tx.soc_percent = soc
            phases = phases_drawn(current)
            if phases is not None:
                tx.ev_phases = phases
            tx.last_meter_at = latest
        await insert_samples(session, upd.station_id, tx.evse_id or 0, tx.id, upd.samples)
    if upd.charging_state and newest:
        tx.charging_state = upd.charging_state
    if upd.event == "ended":
        tx.state = TransactionState.ENDED.value
        tx.stopped_at = upd.timestamp
        tx.stop_reason = upd.stop_reason or tx.stop_reason
        tx.power_w = 0.0
    tx.energy_imported_wh = _delta(tx.import_register_first_wh, tx.import_register_last_wh)
    tx.energy_exported_wh = _delta(tx.export_register_first_wh, tx.export_register_last_wh)
    tx.updated_at = now


def _widen(tx: Transaction, which: str, value: float) -> None:
    first, last = f"{which}_register_first_wh", f"{which}_register_last_wh"
    lo, hi = getattr(tx, first), getattr(tx, last)
    setattr(tx, first, value if lo is None else min(lo, value))
    setattr(tx, last, value if hi is None else max(hi, value))


def _delta(first: float | None, last: float | None) -> float:
    if first is None or last is None:
        return 0.0
    return max(0.0, last - first)


def sample_rows(
    station_id: str, evse_id: int, transaction_pk: int | None, samples: list[MeterSample]
) -> list[dict]:
    return [
        {
            "station_id": station_id,
            "evse_id": evse_id,
            "transaction_pk": transaction_pk,
            "timestamp": s.timestamp,
            "measurand": s.measurand,
            "phase": s.phase or "",
            "location": s.location or "",
            "context": s.context or "",
            "unit": s.unit,
            "value": s.value,
            "signed": s.signed,
        }
        for s in samples
    ]


async def insert_samples(
    session: AsyncSession,
    station_id: str,
    evse_id: int,
    transaction_pk: int | None,
    samples: list[MeterSample],
) -> None:
    # a sample set may list the same key twice (badly behaved stations): the last is kept
    await add_rows(session, SAMPLES, sample_rows(station_id, evse_id, transaction_pk, samples))


async def active_transaction_for_evse(
    session: AsyncSession, station_id: str, evse_id: int
) -> Transaction | None:
    res = await session.execute(
        select(Transaction)
        .where(
            Transaction.station_id == station_id,
            Transaction.evse_id == evse_id,
            Transaction.state == TransactionState.ACTIVE.value,
        )
        .order_by(Transaction.started_at.desc())
    )
    return res.scalars().first()


# ---------------------------------------------------------------- events, reservations


async def log_event(session: AsyncSession, ev: StationEvent, text: str | None = None) -> None:
    session.add(EventLog(**event_row(ev, text)))


async def upsert_reservation(
    session: AsyncSession,
    reservation_id: int,
    station_id: str,
    evse_id: int | None,
    id_token: str,
    expiry: datetime,
    status: str,
    now: datetime,
) -> None:
    row = await session.get(Reservation, reservation_id)
    if row is None:
        row = Reservation(id=reservation_id, created_at=now)
        session.add(row)
    row.station_id = station_id
    row.evse_id = evse_id
    row.id_token = id_token
    row.expiry = expiry
    row.status = status


async def set_reservation_status(session: AsyncSession, reservation_id: int, status: str):
    await session.execute(
        update(Reservation).where(Reservation.id == reservation_id).values(status=status)
    )


async def next_reservation_id(session: AsyncSession) -> int:
    res = await session.execute(select(func.max(Reservation.id)))
    return (res.scalar() or 0) + 1


async def meter_values_between(
    session: AsyncSession,
    station_id: str,
    start: datetime | None,
    end: datetime | None,
    evse_id: int | None = None,
    measurand: str | None = None,
    limit: int = 10_000,
) -> list[MeterValue]:
    conds = [MeterValue.station_id == station_id]
    if start is not None:
        conds.append(MeterValue.timestamp >= start)
    if end is not None:
        conds.append(MeterValue.timestamp < end)
    if evse_id is not None:
        conds.append(MeterValue.evse_id == evse_id)
    if measurand is not None:
        conds.append(MeterValue.measurand == measurand)
    res = await session.execute(
        select(MeterValue)
        .where(and_(*conds))
        .order_by(MeterValue.timestamp, MeterValue.id)
        .limit(limit)
    )
    return list(res.scalars())


# ---------------------------------------------------------------- smart charging


def net_energy_wh(tx: Transaction | SimpleNamespace) -> float:
    """Energy into the EV so far: imported minus exported (of a row or its plain copy)."""
    return (tx.energy_imported_wh or 0.0) - (getattr(tx, "energy_exported_wh", None) or 0.0)


#: ChargingNeeds fields copied onto the transaction (schema 4).
V2X_NEEDS = (
    "v2x_allowed",
    "energy_transfer",
    "allowed_energy_transfer",
    "ev_max_charge_w",
    "ev_min_charge_w",
    "ev_max_discharge_w",
    "ev_min_discharge_w",
    "v2x_min_energy_wh",
    "v2x_max_energy_wh",
    "target_soc",
    "control_mode",
    "mobility_needs_mode",
)


def set_transaction_needs(tx: Transaction, needs: ChargingNeeds) -> Transaction:
    """Store a driver's or EV's needs on a transaction; energy is counted from now."""
    if needs.departure is not None:
        tx.departure_at = needs.departure
    net = net_energy_wh(tx)
    if needs.energy_wh is not None:
        tx.energy_target_wh = net + needs.energy_wh
    if needs.ev_min_current_a is not None:
        tx.ev_min_current_a = needs.ev_min_current_a
    if needs.ev_max_current_a is not None:
        tx.ev_max_current_a = needs.ev_max_current_a
    if needs.phases is not None:
        tx.ev_phases = needs.phases
    for name in V2X_NEEDS:
        value = getattr(needs, name)
        if value is not None:
            # the V2X energy window is kept as levels of the session's net energy
            setattr(tx, name, net + value if name.endswith("_energy_wh") else value)
    tx.needs_source = needs.source
    return tx


async def get_site(session: AsyncSession, site_id: str) -> Site | None:
    return await session.get(Site, site_id)


async def list_sites(session: AsyncSession) -> list[Site]:
    return list((await session.execute(select(Site).order_by(Site.id))).scalars())


async def list_circuits(session: AsyncSession, site_id: str | None = None) -> list[Circuit]:
    q = select(Circuit).order_by(Circuit.id)
    if site_id is not None:
        q = q.where(Circuit.site_id == site_id)
    return list((await session.execute(q)).scalars())


async def stations_of_site(session: AsyncSession, site_id: str) -> list[Station]:
    """A site's stations, each with the ``capabilities`` its OCPP version gives it."""
    q = select(Station).where(Station.site_id == site_id).order_by(Station.id)
    stations = list((await session.execute(q)).scalars())
    for st in stations:
        st.capabilities = station_capabilities(st.ocpp_version)
    return stations


async def active_transactions(session: AsyncSession, station_ids: list[str]) -> list[Transaction]:
    if not station_ids:
        return []
    q = select(Transaction).where(
        Transaction.state == TransactionState.ACTIVE.value,
        Transaction.station_id.in_(station_ids),
    )
    txs = list((await session.execute(q)).scalars())
    for tx in txs:  # what the EV offers, from the energy transfer it asked for
        tx.ev_capabilities = ev_capabilities(tx.energy_transfer, tx.allowed_energy_transfer)
    return txs


async def list_profiles(
    session: AsyncSession, station_id: str | None = None, source: str | None = None
) -> list[StationProfile]:
    q = select(StationProfile).order_by(StationProfile.station_id, StationProfile.profile_id)
    if station_id is not None:
        q = q.where(StationProfile.station_id == station_id)
    if source is not None:
        q = q.where(StationProfile.source == source)
    return list((await session.execute(q)).scalars())


async def upsert_profile(
    session: AsyncSession,
    station_id: str,
    evse_id: int,
    profile_id: int,
    purpose: str,
    stack_level: int,
    transaction_id: str | None,
    body: dict,
    source: str,
    status: str,
    now: datetime,
    error: str | None = None,
) -> None:
    answered = 1 if status in ("accepted", "rejected", "failed") else 0
    values = dict(
        evse_id=evse_id,
        purpose=purpose,
        stack_level=stack_level,
        transaction_id=transaction_id,
        body=body,
        source=source,
        status=status,
        last_error=error,
        updated_at=now,
    )
    ins = _insert_for(session)(StationProfile).values(
        station_id=station_id, profile_id=profile_id, attempts=answered, **values
    )
    stmt = ins.on_conflict_do_update(
        index_elements=["station_id", "profile_id"],
        set_={**values, "attempts": StationProfile.attempts + answered},
    )
    await session.execute(stmt)


async def delete_profiles(session: AsyncSession, station_id: str, profile_ids: list[int]) -> None:
    if profile_ids:
        await session.execute(
            delete(StationProfile).where(
                StationProfile.station_id == station_id,
                StationProfile.profile_id.in_(profile_ids),
            )
        )


SITE_FIELDS = (
    "import_tariff_per_kwh",
    "export_tariff_per_kwh",
    "objective",
    "capacity_tariff_per_kw",
    "name",
    "import_limit_w",
    "export_limit_w",
    "max_current_a",
    "phases",
    "voltage",
    "policy",
    "forecast",
    # where the site is (OCPI Locations)
    "address",
    "city",
    "postal_code",
    "country",
    "latitude",
    "longitude",
    "time_zone",
)
CIRCUIT_FIELDS = ("site_id", "parent_id", "name", "max_current_a", "max_power_w")


async def upsert_site(session: AsyncSession, site_id: str, values: dict, now: datetime) -> bool:
    """Create or update a site from ``values`` (SITE_FIELDS); True if it was created."""
    unknown = set(values) - set(SITE_FIELDS)
    if unknown:  # a value that would be dropped silently is a bug of the caller
        raise ValueError(f"not site fields: {', '.join(sorted(unknown))}")
    site = await get_site(session, site_id)
    created = site is None
    if site is None:
        site = Site(id=site_id, created_at=now, phases=3, voltage=230.0, policy="equal")
        session.add(site)
    for name in SITE_FIELDS:
        if name in values:
            setattr(site, name, values[name])
    site.updated_at = now
    return created


async def upsert_circuit(
    session: AsyncSession, circuit_id: str, values: dict, now: datetime
) -> bool:
    circuit = await session.get(Circuit, circuit_id)
    created = circuit is None
    if circuit is None:
        circuit = Circuit(id=circuit_id, created_at=now)
        session.add(circuit)
    for name in CIRCUIT_FIELDS:
        if name in values:
            setattr(circuit, name, values[name])
    return created
