"""The audit trail: every operator and API action, append-only.

``audit_log`` holds one row per action: who (``actor``), when (``at``), from
where (``source``), what (``action``, ``method``, ``path``, ``target``, the
request ``summary`` without secrets) and the ``outcome``. Each row carries the
SHA-256 of the previous row (``prev_hash``) and its own (``hash``, over
``prev_hash`` and its content), so an edited or deleted row breaks the chain.
``audit_chain`` is one row: the chain's head (rows, last id and hash), locked by
every append so that appends from several processes form one chain, and so
that a deleted last row is seen too.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from evflex.store.tables import Base, BigId, UTCDateTime


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: username, ``token:<name>``, ``cli:<os user>``, ``driver``, ``station:<id>`` (its
    #: upload) or ``anonymous``
    actor: Mapped[str] = mapped_column(String(128), index=True)
    actor_kind: Mapped[str] = mapped_column(
        String(16)
    )  # session token cli driver station anonymous
    role: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str | None] = mapped_column(String(8))
    route: Mapped[str | None] = mapped_column(String(200))  # the route's template
    path: Mapped[str | None] = mapped_column(String(300))  # the concrete path
    target: Mapped[str | None] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    summary: Mapped[str | None] = mapped_column(Text)  # the request as JSON, secrets removed
    status: Mapped[int | None] = mapped_column(Integer)  # HTTP status
    outcome: Mapped[str] = mapped_column(String(8), index=True)  # ok refused failed
    answer: Mapped[str | None] = mapped_column(String(32))  # a station command's answer
    reason: Mapped[str | None] = mapped_column(String(300))  # why it was refused or failed
    duration_ms: Mapped[float | None] = mapped_column(Float)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditChain(Base):
    """The head of the chain (one row, id 1)."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int | None] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
