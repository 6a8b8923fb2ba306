"""Charge records and tariffs.

A charge record is written once, when a transaction ends: what the session was
(times, energy in and out, peaks, the driver's need), and what it cost with the
site's tariff in force at its start. Tariffs are versioned: a new one adds a
row; the record keeps a copy of the version that priced it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from evflex.store.tables import Base, BigId, UTCDateTime


class ChargeRecord(Base):
    """One ended transaction: the base of a CDR."""

    __tablename__ = "charge_records"
    __table_args__ = (
        Index("ix_records_start", "started_at"),
        Index("ix_records_station_start", "station_id", "started_at"),
        Index("ix_records_site_start", "site_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    transaction_pk: Mapped[int] = mapped_column(BigInteger, unique=True)
    transaction_id: Mapped[str] = mapped_column(String(64))
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int | None] = mapped_column(Integer)
    connector_id: Mapped[int | None] = mapped_column(Integer)
    site_id: Mapped[str | None] = mapped_column(String(64))  # the station's site at the end
    id_token: Mapped[str | None] = mapped_column(String(255))
    # On the CSMS's clock (the station's own stamps are kept beside them).
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime] = mapped_column(UTCDateTime)
    station_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    station_stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    energy_imported_wh: Mapped[float] = mapped_column(Float)
    energy_exported_wh: Mapped[float] = mapped_column(Float)
    peak_import_w: Mapped[float | None] = mapped_column(Float)
    peak_export_w: Mapped[float | None] = mapped_column(Float)
    departure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    energy_need_wh: Mapped[float | None] = mapped_column(Float)
    need_met: Mapped[str] = mapped_column(String(8))  # "yes", "no", "unknown"
    charging_s: Mapped[float] = mapped_column(Float)
    discharging_s: Mapped[float] = mapped_column(Float)
    idle_s: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    energy_cost: Mapped[float | None] = mapped_column(Float)
    feed_in_reward: Mapped[float | None] = mapped_column(Float)
    idle_fee: Mapped[float | None] = mapped_column(Float)
    total_cost: Mapped[float | None] = mapped_column(Float)
    cost_detail: Mapped[list | None] = mapped_column(JSON)  # energy per price period
    tariff: Mapped[dict | None] = mapped_column(JSON)  # the tariff that priced it
    cost_error: Mapped[str | None] = mapped_column(Text)  # why there is no cost
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SiteTariff(Base):
    """One version of a site's tariff; the one in force has the latest ``valid_from``
    not after the moment asked about."""

    __tablename__ = "site_tariffs"
    __table_args__ = (Index("ix_site_tariffs_site_from", "site_id", "valid_from"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(String(64))
    energy_price_per_kwh: Mapped[float] = mapped_column(Float)
    time_of_use: Mapped[list | None] = mapped_column(JSON)
    feed_in_reward_per_kwh: Mapped[float] = mapped_column(Float)
    idle_fee_per_minute: Mapped[float] = mapped_column(Float)
    idle_grace_minutes: Mapped[float] = mapped_column(Float)
    timezone: Mapped[str] = mapped_column(String(64))
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
