"""SQLAlchemy 2 tables. Portable between SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for series.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "evflex_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class Station(Base):
    __tablename__ = "stations"

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    password_hash: Mapped[str | None] = mapped_column(String(256))
    site_id: Mapped[str | None] = mapped_column(String(64), index=True)
    ocpp_version: Mapped[str | None] = mapped_column(String(8))
    vendor: Mapped[str | None] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64))
    serial_number: Mapped[str | None] = mapped_column(String(64))
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    iccid: Mapped[str | None] = mapped_column(String(32))
    imsi: Mapped[str | None] = mapped_column(String(32))
    meter_type: Mapped[str | None] = mapped_column(String(64))
    meter_serial_number: Mapped[str | None] = mapped_column(String(64))
    registration_status: Mapped[str | None] = mapped_column(String(16))
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    last_connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_boot_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    boot_reason: Mapped[str | None] = mapped_column(String(32))
    local_list_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Smart charging (schema 2): where the station hangs in its site's tree and
    # what it can take. ``phases`` is 1 or 3; ``phase_rotation`` says which
    # grid phase a single-phase station uses (1..3).
    circuit_id: Mapped[str | None] = mapped_column(String(64))
    max_current_a: Mapped[float | None] = mapped_column(Float)
    evse_max_current_a: Mapped[float | None] = mapped_column(Float)
    phases: Mapped[int | None] = mapped_column(Integer)
    phase_rotation: Mapped[int | None] = mapped_column(Integer)
    # Security (schema 7): the OCPP security profile the station must connect
    # with (None = 1), and the highest it has connected with (never lowered
    # silently: a reconnect below it is refused).
    security_profile: Mapped[int | None] = mapped_column(Integer)
    security_profile_reached: Mapped[int | None] = mapped_column(Integer)
    # Firmware update and diagnostics/log upload (schema 8): the last request's state
    # as the station reports it ("Requested" once the station accepted the command).
    firmware_status: Mapped[str | None] = mapped_column(String(32))
    firmware_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    firmware_request_id: Mapped[int | None] = mapped_column(Integer)
    firmware_location: Mapped[str | None] = mapped_column(String(512))
    upload_kind: Mapped[str | None] = mapped_column(String(16))  # diagnostics or log
    upload_status: Mapped[str | None] = mapped_column(String(32))
    upload_status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    upload_request_id: Mapped[int | None] = mapped_column(Integer)
    upload_location: Mapped[str | None] = mapped_column(String(512))
    upload_file: Mapped[str | None] = mapped_column(String(255))


class Connector(Base):
    """Latest status per EVSE/connector (EVSE 0 = the station itself)."""

    __tablename__ = "connectors"

    station_id: Mapped[str] = mapped_column(
        ForeignKey("stations.id", ondelete="CASCADE"), primary_key=True
    )
    evse_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    connector_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(50))
    info: Mapped[str | None] = mapped_column(String(512))
    vendor_error_code: Mapped[str | None] = mapped_column(String(255))
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdToken(Base):
    __tablename__ = "id_tokens"

    id_token: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(20), default="ISO14443")
    status: Mapped[str] = mapped_column(String(20), default="Accepted")
    expiry: Mapped[datetime | None] = mapped_column(UTCDateTime)
    parent_id_token: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Schema 9: when it was last added or changed (OCPI Token.last_updated); None: created_at
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Transaction(Base):
    __tablename__ = "transactions"
    __table_args__ = (
        UniqueConstraint("station_id", "transaction_id", name="uq_tx_station_txid"),
        Index("ix_tx_active", "state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    # The id the station uses: 1.6 = the integer we assigned, 2.x = the station's string.
    transaction_id: Mapped[str] = mapped_column(String(64))
    evse_id: Mapped[int | None] = mapped_column(Integer)
    connector_id: Mapped[int | None] = mapped_column(Integer)
    id_token: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(8))
    charging_state: Mapped[str | None] = mapped_column(String(16))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    meter_start_wh: Mapped[float | None] = mapped_column(Float)
    meter_stop_wh: Mapped[float | None] = mapped_column(Float)
    import_register_first_wh: Mapped[float | None] = mapped_column(Float)
    import_register_last_wh: Mapped[float | None] = mapped_column(Float)
    export_register_first_wh: Mapped[float | None] = mapped_column(Float)
    export_register_last_wh: Mapped[float | None] = mapped_column(Float)
    energy_imported_wh: Mapped[float] = mapped_column(Float, default=0.0)
    energy_exported_wh: Mapped[float] = mapped_column(Float, default=0.0)
    power_w: Mapped[float | None] = mapped_column(Float)
    soc_percent: Mapped[float | None] = mapped_column(Float)
    last_meter_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seq_no: Mapped[int | None] = mapped_column(Integer)
    remote_start_id: Mapped[int | None] = mapped_column(Integer)
    reservation_id: Mapped[int | None] = mapped_column(Integer)
    offline_messages: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Driver needs (schema 2), from NotifyEVChargingNeeds or the API.
    departure_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    energy_target_wh: Mapped[float | None] = mapped_column(Float)
    needs_source: Mapped[str | None] = mapped_column(String(16))
    ev_max_current_a: Mapped[float | None] = mapped_column(Float)
    ev_min_current_a: Mapped[float | None] = mapped_column(Float)
    priority: Mapped[bool | None] = mapped_column(Boolean)
    # V2X (schema 4): the driver's consent to discharge (default off), the EV's
    # bidirectional limits from NotifyEVChargingNeeds, what the station reports.
    v2x_allowed: Mapped[bool | None] = mapped_column(Boolean)
    energy_transfer: Mapped[str | None] = mapped_column(String(16))
    allowed_energy_transfer: Mapped[str | None] = mapped_column(String(128))
    ev_max_charge_w: Mapped[float | None] = mapped_column(Float)
    ev_min_charge_w: Mapped[float | None] = mapped_column(Float)
    ev_max_discharge_w: Mapped[float | None] = mapped_column(Float)
    ev_min_discharge_w: Mapped[float | None] = mapped_column(Float)
    v2x_min_energy_wh: Mapped[float | None] = mapped_column(Float)
    v2x_max_energy_wh: Mapped[float | None] = mapped_column(Float)
    target_soc: Mapped[float | None] = mapped_column(Float)
    control_mode: Mapped[str | None] = mapped_column(String(24))
    mobility_needs_mode: Mapped[str | None] = mapped_column(String(16))
    operation_mode: Mapped[str | None] = mapped_column(String(24))
    # Schema 6: how many phases the EV draws on (1..3), from its charging needs
    # (2.x requestedEnergyTransfer) or learned from per-phase meter values.
    # Unknown (None): the station's phases are assumed.
    ev_phases: Mapped[int | None] = mapped_column(Integer)
    # Schema 6: when the transaction started on the CSMS's clock (started_at is
    # the station's stamp, kept as reported); control and KPIs use this one.
    csms_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MeterValue(Base):
    """The meter time series: one row per sampled value.

    The unique key makes a repeated message (a station resending its offline
    queue) insert nothing new.
    """

    __tablename__ = "meter_values"
    __table_args__ = (
        UniqueConstraint(
            "station_id",
            "evse_id",
            "timestamp",
            "measurand",
            "phase",
            "location",
            "context",
            name="uq_meter_sample",
        ),
        Index("ix_meter_station_time", "station_id", "timestamp"),
        Index("ix_meter_tx", "transaction_pk"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(String(48))
    evse_id: Mapped[int] = mapped_column(Integer)
    transaction_pk: Mapped[int | None] = mapped_column(BigInteger)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    measurand: Mapped[str] = mapped_column(String(48))
    # Empty string instead of NULL so the unique key works on every backend.
    phase: Mapped[str] = mapped_column(String(8), default="")
    location: Mapped[str] = mapped_column(String(8), default="")
    context: Mapped[str] = mapped_column(String(24), default="")
    unit: Mapped[str] = mapped_column(String(12))
    value: Mapped[float] = mapped_column(Float)
    signed: Mapped[bool] = mapped_column(Boolean, default=False)


class Reservation(Base):
    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    evse_id: Mapped[int | None] = mapped_column(Integer)
    id_token: Mapped[str] = mapped_column(String(255))
    expiry: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class EventLog(Base):
    """Security events, firmware status, data transfers, connects, boots, errors."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_station_time", "station_id", "timestamp"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str | None] = mapped_column(String(48))
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    type: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict | None] = mapped_column(JSON)
    text: Mapped[str | None] = mapped_column(Text)


class Certificate(Base):
    """A certificate evflex signed for a station, or one a station reports installed.

    ``status``: Issued (signed, CertificateSigned not yet accepted), Accepted,
    Rejected (the station refused it; retried and flagged), Superseded (a newer
    one was issued before a retry), Installed (a CA certificate installed at the
    station), Deleted, Revoked.
    """

    __tablename__ = "certificates"
    __table_args__ = (Index("ix_certificates_station", "station_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str | None] = mapped_column(String(48))
    kind: Mapped[str] = mapped_column(String(48))  # ChargingStationCertificate, V2GRootCertificate, ...
    status: Mapped[str] = mapped_column(String(16))
    serial_hex: Mapped[str | None] = mapped_column(String(64))
    common_name: Mapped[str | None] = mapped_column(String(128))
    organization: Mapped[str | None] = mapped_column(String(128))
    issuer: Mapped[str | None] = mapped_column(String(256))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    pem: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Site(Base):
    """A grid connection: the root of a tree of circuits, stations and EVSEs."""

    __tablename__ = "sites"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(128))
    import_limit_w: Mapped[float] = mapped_column(Float)
    export_limit_w: Mapped[float | None] = mapped_column(Float)
    max_current_a: Mapped[float | None] = mapped_column(Float)
    phases: Mapped[int] = mapped_column(Integer, default=3)
    voltage: Mapped[float] = mapped_column(Float, default=230.0)
    policy: Mapped[str] = mapped_column(String(16), default="equal")
    # Uncontrolled load (building, heat pumps...), per phase in A, and when it
    # was measured; a site meter feeds it through the API or its meter values.
    base_load_a: Mapped[list | None] = mapped_column(JSON)
    base_load_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    meter_station_id: Mapped[str | None] = mapped_column(String(48))
    # Scheduling (policy "optimal"): the use case, the capacity tariff and the
    # forecast the plan ahead uses (prices, PV, uncontrolled load per slot).
    objective: Mapped[str | None] = mapped_column(String(32))
    capacity_tariff_per_kw: Mapped[float | None] = mapped_column(Float)
    forecast: Mapped[dict | None] = mapped_column(JSON)
    # Billing (schema 4): price per kWh imported and reward per kWh fed back.
    import_tariff_per_kwh: Mapped[float | None] = mapped_column(Float)
    export_tariff_per_kwh: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Schema 6: the fields (API names, e.g. "import_limit_kw") a [[sites]] table
    # of the configuration file sets; the API refuses to change them.
    config_fields: Mapped[list | None] = mapped_column(JSON)
    # Schema 9: where the site is, as roaming partners show it (OCPI Location):
    # street and number, city, postal code, ISO 3166-1 alpha-3 country, WGS 84
    # coordinates in decimal degrees, IANA time zone.
    address: Mapped[str | None] = mapped_column(String(45))
    city: Mapped[str | None] = mapped_column(String(45))
    postal_code: Mapped[str | None] = mapped_column(String(10))
    country: Mapped[str | None] = mapped_column(String(3))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    time_zone: Mapped[str | None] = mapped_column(String(64))


class Circuit(Base):
    """A feeder or sub-distribution inside a site, with its own limit."""

    __tablename__ = "circuits"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    parent_id: Mapped[str | None] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(128))
    max_current_a: Mapped[float | None] = mapped_column(Float)
    max_power_w: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class StationProfile(Base):
    """A charging profile the CSMS has set (or is setting) on a station.

    ``status`` follows the station's answers: pending, accepted, rejected or
    failed (no answer / not connected, retried with backoff).
    """

    __tablename__ = "charging_profiles"
    __table_args__ = (UniqueConstraint("station_id", "profile_id", name="uq_profile_station_id"),)

    pk: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    evse_id: Mapped[int] = mapped_column(Integer)
    profile_id: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(String(40))
    stack_level: Mapped[int] = mapped_column(Integer)
    transaction_id: Mapped[str | None] = mapped_column(String(64))
    body: Mapped[dict] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


# ------------------------------------------------------------------ web: people and machines


class User(Base):
    """An operator account: Argon2id password hash, TOTP secret, role."""

    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    totp_secret: Mapped[str] = mapped_column(String(64))
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)  # no code is used twice
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiToken(Base):
    """A machine's bearer token; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # schema 6, to a minute


class WebSession(Base):
    """A logged-in browser: the cookie's SHA-256, its CSRF token and expiry."""

    __tablename__ = "web_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(ForeignKey("users.username", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DriverToken(Base):
    """The driver page's token: valid for one transaction while it runs."""

    __tablename__ = "driver_tokens"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    transaction_pk: Mapped[int] = mapped_column(BigInteger, unique=True)
    battery_kwh: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SiteSample(Base):
    """A site's state at one moment: what the dashboard charts and the KPIs sum."""

    __tablename__ = "site_samples"
    __table_args__ = (Index("ix_site_samples_site_ts", "site_id", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(UTCDateTime)
    ev_import_w: Mapped[float] = mapped_column(Float)
    ev_export_w: Mapped[float] = mapped_column(Float)
    base_load_w: Mapped[float] = mapped_column(Float)
    pv_w: Mapped[float] = mapped_column(Float)
    import_limit_w: Mapped[float | None] = mapped_column(Float)
    export_limit_w: Mapped[float | None] = mapped_column(Float)
    price: Mapped[float | None] = mapped_column(Float)
