"""OCPI 2.2.1 roaming: partners, the push outbox, tokens and objects partners send us,
commands in flight.

A *partner* is one platform we exchanged credentials with; it may play several
roles (its ``roles``). We keep only a hash of the token it calls us with, and the
token we call it with encrypted (:mod:`evflex.ocpi.secrets`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from evflex.store.tables import Base, BigId, UTCDateTime


class OcpiPartner(Base):
    __tablename__ = "ocpi_partners"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The party the partner presented first (its credentials' first role); for an
    # invitation not yet used, the party it was made for.
    country_code: Mapped[str] = mapped_column(String(2))
    party_id: Mapped[str] = mapped_column(String(3))
    business_name: Mapped[str | None] = mapped_column(String(100))
    # [{"role", "country_code", "party_id", "business_details"}], as in CredentialsRole
    roles: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # invited (token A issued, unused), pending (our registration with it under way:
    # token_in_hash is the token B we offered), registered, unregistered
    status: Mapped[str] = mapped_column(String(16))
    versions_url: Mapped[str | None] = mapped_column(String(255))
    version: Mapped[str | None] = mapped_column(String(8))
    # [{"identifier", "role", "url"}] from its version details
    endpoints: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # sha256 hex of the token the partner calls us with (token A while invited)
    token_in_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # the token we call the partner with, encrypted
    token_out: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(512))
    # pushes the partner answered, and pushes given up (its outbox rows' outcomes)
    sent_count: Mapped[int | None] = mapped_column(BigInteger)
    failed_count: Mapped[int | None] = mapped_column(BigInteger)


class OcpiOutbox(Base):
    """One request to a partner, kept until it was answered: pushes survive a
    partner's downtime and our restart. A partner's requests go out in ``id`` order
    per ``object_key``."""

    __tablename__ = "ocpi_outbox"
    __table_args__ = (Index("ix_ocpi_outbox_due", "partner_id", "done", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    partner_id: Mapped[int] = mapped_column(Integer)
    module: Mapped[str] = mapped_column(String(32))  # the partner's module identifier
    object_key: Mapped[str] = mapped_column(String(160))  # e.g. "sessions/NL/EVF/123"
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))  # after the module's URL: "/NL/EVF/123"
    body: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # False while to be sent; True once answered (sent) or given up (failed)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(String(16))  # sent, failed
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(512))


class OcpiToken(Base):
    """A token an eMSP partner pushed to us (our CPO role, Tokens Receiver)."""

    __tablename__ = "ocpi_tokens"
    __table_args__ = (
        UniqueConstraint("country_code", "party_id", "uid", name="uq_ocpi_token"),
        Index("ix_ocpi_token_uid", "uid"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    partner_id: Mapped[int] = mapped_column(Integer)
    country_code: Mapped[str] = mapped_column(String(2))
    party_id: Mapped[str] = mapped_column(String(3))
    uid: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(16))
    contract_id: Mapped[str] = mapped_column(String(36))
    valid: Mapped[bool] = mapped_column(Boolean)
    whitelist: Mapped[str] = mapped_column(String(16))
    group_id: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)  # the whole Token object
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)


class OcpiObject(Base):
    """A Location, Session, CDR or Tariff a CPO partner sent us (our eMSP role)."""

    __tablename__ = "ocpi_objects"
    __table_args__ = (
        UniqueConstraint("module", "country_code", "party_id", "object_id", name="uq_ocpi_obj"),
        Index("ix_ocpi_obj_updated", "module", "last_updated"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    partner_id: Mapped[int] = mapped_column(Integer)
    module: Mapped[str] = mapped_column(String(16))  # locations, sessions, cdrs, tariffs
    country_code: Mapped[str] = mapped_column(String(2))
    party_id: Mapped[str] = mapped_column(String(3))
    object_id: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    last_updated: Mapped[datetime] = mapped_column(UTCDateTime)


class OcpiCommand(Base):
    """A command in flight: received from an eMSP (``direction`` in) and carried to a
    station, or sent by us as eMSP (out) and waiting for the CPO's result."""

    __tablename__ = "ocpi_commands"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(3))  # in, out
    partner_id: Mapped[int] = mapped_column(Integer)
    command: Mapped[str] = mapped_column(String(24))  # START_SESSION, ...
    uid: Mapped[str] = mapped_column(String(36), unique=True)  # ours, in the result's URL
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    response_url: Mapped[str | None] = mapped_column(String(255))
    station_id: Mapped[str | None] = mapped_column(String(48))
    # the OCPI object the command names, lower case (CiString): the token uid
    # (START_SESSION), session id, reservation id, evse_uid (UNLOCK_CONNECTOR)
    object_id: Mapped[str | None] = mapped_column(String(36))
    # what the station knows it by: the OCPP reservation id we gave (RESERVE_NOW,
    # CANCEL_RESERVATION), the OCPP transaction id (STOP_SESSION)
    station_ref: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[str | None] = mapped_column(String(24))  # the CommandResponse result
    result: Mapped[str | None] = mapped_column(String(24))  # the CommandResult result
    message: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    result_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
