"""Alerts: raised, cleared and acknowledged."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from evflex.store.tables import Base, BigId, UTCDateTime


class Alert(Base):
    """One occurrence of a rule's condition for one subject (a station, an EVSE, a site, a
    session), from when it was raised until its condition is gone (``cleared_at``).

    ``open_key`` is ``key`` while the alert is not cleared and NULL after: its unique
    index keeps one uncleared alert per subject.
    """

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_open_key", "open_key", unique=True),
        Index("ix_alerts_raised_at", "raised_at"),
        Index("ix_alerts_station", "station_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))  # "critical", "warning"
    station_id: Mapped[str | None] = mapped_column(String(48))
    evse_id: Mapped[int | None] = mapped_column(Integer)
    site_id: Mapped[str | None] = mapped_column(String(64))
    transaction: Mapped[str | None] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))  # rule + subject
    open_key: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    acked_by: Mapped[str | None] = mapped_column(String(128))
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Each notification's outcome: [{"channel", "event", "ok", "attempts", "at", "error"?}]
    notified: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
