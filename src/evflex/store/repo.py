"""Persistence operations on one session. Version-neutral: they take domain objects.

Write functions are designed to be idempotent, so a station that resends a
message (its offline queue after a reconnect, a retry after a lost answer)
changes nothing the second time.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import and_, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from evflex.domain.model import (
    ENERGY_EXPORT_REGISTER,
    ENERGY_IMPORT_REGISTER,
    MeterSample,
    StationEvent,
    StationInfo,
    StatusReport,
    TransactionState,
    TransactionUpdate,
    signed_power_w,
    soc_percent,
)
from evflex.store.tables import (
    Connector,
    EventLog,
    IdToken,
    MeterValue,
    Reservation,
    Station,
    Transaction,
)


def _insert_for(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# ---------------------------------------------------------------- stations


async def get_station(session: AsyncSession, station_id: str) -> Station | None:
    return await session.get(Station, station_id)


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


async def register_station(
    session: AsyncSession,
    station_id: str,
    now: datetime,
    password_hash: str | None = None,
    site_id: str | None = None,
) -> bool:
    """Create a station; False if the id is taken."""
    if await get_station(session, station_id) is not None:
        return False
    await create_station(session, station_id, now, password_hash, site_id)
    return True


async def record_boot(
    session: AsyncSession, station_id: str, info: StationInfo, version: str, now: datetime
) -> None:
    st = await session.get(Station, station_id)
    if st is None:
        st = await create_station(session, station_id, now)
    st.vendor = info.vendor
    st.model = info.model
    st.serial_number = info.serial_number
    st.firmware_version = info.firmware_version
    st.iccid = info.iccid
    st.imsi = info.imsi
    st.meter_type = info.meter_type
    st.meter_serial_number = info.meter_serial_number
    st.boot_reason = info.boot_reason
    st.ocpp_version = version
    st.registration_status = "Accepted"
    st.last_boot_at = now
    st.last_heartbeat_at = now


async def set_connected(
    session: AsyncSession, station_id: str, connected: bool, version: str | None, now: datetime
) -> None:
    values: dict = {"connected": connected}
    if connected:
        values["last_connected_at"] = now
        values["ocpp_version"] = version
        values["last_heartbeat_at"] = now
    else:
        values["last_disconnected_at"] = now
    await session.execute(update(Station).where(Station.id == station_id).values(**values))


async def touch_heartbeat(session: AsyncSession, station_id: str, now: datetime) -> None:
    await session.execute(
        update(Station).where(Station.id == station_id).values(last_heartbeat_at=now)
    )


async def record_status(
    session: AsyncSession, station_id: str, report: StatusReport, now: datetime
) -> None:
    row = await session.get(Connector, (station_id, report.evse_id, report.connector_id))
    if row is None:
        row = Connector(
            station_id=station_id, evse_id=report.evse_id, connector_id=report.connector_id
        )
        session.add(row)
    elif row.status_at is not None and report.timestamp < row.status_at:
        return  # an older report delivered late must not overwrite a newer one
    row.status = report.status.value
    row.error_code = report.error_code
    row.info = report.info
    row.vendor_error_code = report.vendor_error_code
    row.status_at = report.timestamp
    row.updated_at = now


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
    return True


async def list_id_tokens(session: AsyncSession) -> list[IdToken]:
    return list((await session.execute(select(IdToken).order_by(IdToken.id_token))).scalars())


# ---------------------------------------------------------------- transactions


async def find_transaction(
    session: AsyncSession, station_id: str, transaction_id: str
) -> Transaction | None:
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


async def insert_samples(
    session: AsyncSession,
    station_id: str,
    evse_id: int,
    transaction_pk: int | None,
    samples: list[MeterSample],
) -> None:
    if not samples:
        return
    rows = [
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
    # A sample set may list the same key twice (badly behaved stations); keep the last.
    unique = list({_key(r): r for r in rows}.values())
    stmt = _insert_for(session)(MeterValue).on_conflict_do_nothing(
        index_elements=[
            "station_id",
            "evse_id",
            "timestamp",
            "measurand",
            "phase",
            "location",
            "context",
        ]
    )
    await session.execute(stmt, unique)


def _key(r: dict) -> tuple:
    return (r["evse_id"], r["timestamp"], r["measurand"], r["phase"], r["location"], r["context"])


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
    session.add(
        EventLog(
            station_id=ev.station_id,
            timestamp=ev.timestamp,
            kind=ev.kind,
            type=ev.type,
            detail=ev.detail,
            text=text,
        )
    )


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
