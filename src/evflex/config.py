"""Settings: defaults < TOML file (``--config``) < environment (``EVFLEX_*``) < CLI flags.

The whole configuration is checked before anything else happens: an unknown
key (a typo such as ``heartbeat_intervall``), a bad value or a bad
``[[sites]]`` / ``[[circuits]]`` entry is refused with one line per problem
(:class:`ConfigError`), naming the nearest valid key where there is one.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from evflex.api.schemas import CircuitIn, SiteIn
from evflex.security.audit import networks

AlertRule = Literal[
    "station_offline",
    "connector_faulted",
    "need_at_risk",
    "profile_rejected",
    "site_over_limit",
    "clock_off",
]
ALERT_RULES: tuple[str, ...] = get_args(AlertRule)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVFLEX_", extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all)")
    ocpp_port: int = Field(9000, description="OCPP WebSocket port: ws://HOST:PORT/ocpp/{id}")
    http_port: int = Field(8000, description="HTTP port of the REST API and docs")
    database_url: str = Field("sqlite+aiosqlite:///evflex.db", description="SQLAlchemy URL")
    allow_unknown_stations: bool = Field(
        False, description="Register unknown station ids on first connect instead of 404"
    )
    heartbeat_interval: int = Field(300, description="Heartbeat interval given at boot (s)")
    clock_tolerance_s: float = Field(
        60.0, gt=0, description="Flag and correct a station clock further off ours than this (s)"
    )
    response_timeout: float = Field(30.0, description="Wait for a station's answer (s)")
    remote_start_timeout_s: float = Field(
        120.0, gt=0, description="A remote start with no transaction by then is reported failed (s)"
    )
    max_frame_bytes: int = Field(1_048_576, description="Larger frames close with 1009")
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Larger HTTP request bodies are refused with 413, unread"
    )
    ws_ping_interval: float | None = Field(120.0, description="WebSocket ping interval (s)")
    ws_open_timeout: float = Field(
        10.0, gt=0, description="A station's opening handshake must finish within this (s)"
    )
    validate_responses: bool = Field(
        False,
        description="Check every answer we send against its schema before sending (the "
        "test suite does; costs CPU on every message)",
    )
    log_level: str = Field("info")

    # Smart charging / load management
    initial_full_power_s: float = Field(
        30.0, description="A new session charges at the most its site allows for this long (s)"
    )
    ramp_kw_per_s: float | None = Field(
        None, description="Maximum rise of an EVSE's limit (kW/s); decreases are immediate"
    )
    random_delay_s: float = Field(
        0.0, description="Rises of a limit wait a random 0..N s so sites do not move in lock-step"
    )
    lm_stack_level: int = Field(1, description="Stack level of the load manager's profiles")
    priority_stack_level: int = Field(
        5, description="Stack level of a priority-charging session's TxProfile"
    )
    rebalance_interval_s: float = Field(
        30.0, description="Re-plan every site at least this often (deadlines, boosts)"
    )
    profile_retry_max_s: float = Field(60.0, description="Longest backoff between profile retries")
    currency: str = Field(
        "EUR",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code (three capital letters) of tariffs and charge records",
    )
    sites: list[SiteIn] = Field(
        default_factory=list,
        description="Sites to create at start ([[sites]] tables in the TOML config), "
        "same fields as POST /api/v1/sites; the fields written there are managed by the file",
    )
    circuits: list[CircuitIn] = Field(
        default_factory=list, description="Circuits to create at start ([[circuits]] tables)"
    )

    # Dashboard and API access
    site_sample_s: float = Field(
        60.0, description="Store each site's import/export/PV/load every N s (0: off)"
    )
    session_hours: float = Field(12.0, description="A dashboard login lasts this long (h)")
    secure_cookies: bool | None = Field(
        None, description="Mark the login cookie Secure; unset: when the request is HTTPS"
    )
    login_max_failures: int = Field(
        5,
        ge=1,
        description="Failed logins (or API / driver tokens) per address or user name "
        "within failure_window_s before 429",
    )
    station_login_max_failures: int = Field(
        10,
        ge=1,
        description="Failed station logins (password, unknown id, certificate) per "
        "address within failure_window_s before the opening handshake gets 429",
    )
    failure_window_s: float = Field(
        300.0, gt=0, description="The sliding window those failures are counted in (s)"
    )

    # Certificates (OCPP security profiles 2 and 3)
    cpo_name: str | None = Field(
        None, description="The CPO's name: the O of every station certificate"
    )
    ca_cert_file: Path | None = Field(
        None, description="PEM certificate of the CA that signs station certificates"
    )
    ca_key_file: Path | None = Field(None, description="PEM private key of that CA")
    cert_validity_days: int = Field(
        365, gt=0, description="A signed station certificate lasts this long (days)"
    )
    cert_renew_days: int = Field(
        30,
        ge=0,
        description="Ask a station for a new certificate this long before its own expires (days)",
    )
    cert_signing_hook: str | None = Field(
        None,
        description="Command that signs a station's CSR instead of the CA files: the CSR on "
        "stdin, the PEM chain on stdout",
    )
    ev_certificate_hook: str | None = Field(
        None,
        description="Command answering Get15118EVCertificate and GetCertificateStatus: the "
        "request as JSON on stdin, the answer as JSON on stdout",
    )

    # Firmware updates and diagnostics/log uploads (docs/console.md)
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+",
        description="Base URL stations reach this node's HTTP port at (e.g. "
        "https://csms.example.com), for the upload locations it builds; default: "
        "http(s)://host:http_port (this host's name when host is a wildcard)",
    )
    upload_dir: Path = Field(
        Path("evflex-uploads"), description="Where uploaded diagnostics and logs are kept"
    )
    upload_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1, description="Largest diagnostics or log file a station may upload"
    )

    # TLS and security profiles 2 and 3 (docs/security.md)
    tls_cert: list[Path] = Field(
        default_factory=list,
        description="Server certificate files (PEM, chain after the leaf); one per key type, "
        "paired in order with tls_key; with them both ports serve TLS",
    )
    tls_key: list[Path] = Field(default_factory=list, description="Their private keys (PEM)")
    tls_client_ca: list[Path] = Field(
        default_factory=list,
        description="CA certificates (files or bundles) station certificates must chain to "
        "(profile 3)",
    )
    trusted_proxy: list[str] = Field(
        default_factory=list,
        description="Addresses of TLS-terminating proxies whose client_cert_header is believed; "
        "behind them the source of a request is the client in X-Forwarded-For",
    )
    client_cert_header: str = Field(
        "X-Client-Cert",
        description="Header in which a trusted proxy forwards the client certificate "
        "(URL-encoded PEM, as nginx's $ssl_client_escaped_cert)",
    )
    tls_reload_s: float = Field(
        5.0, gt=0, description="Look for changed certificate files this often (s)"
    )

    # Alerts (see docs/console.md#alerts)
    alert_rules: list[AlertRule] = Field(
        default_factory=lambda: list(ALERT_RULES), description="The alert rules that are on"
    )
    alert_tick_s: float = Field(10.0, gt=0, description="Evaluate the alert rules this often (s)")
    alert_offline_min: float = Field(
        5.0, gt=0, description="Alert when a station is disconnected longer than this (min)"
    )
    alert_profile_ack_s: float = Field(
        60.0, gt=0, description="Alert when a charging profile is unacknowledged this long (s)"
    )
    alert_site_over_s: float = Field(
        60.0, ge=0, description="Alert when a site imports 2 % over its limit this long (s)"
    )
    alert_webhook_url: str | None = Field(
        None, pattern=r"^https?://", description="POST each alert (JSON) to this URL"
    )
    alert_smtp_host: str | None = Field(None, description="Send alerts by e-mail via this server")
    alert_smtp_port: int = Field(25, ge=1, le=65535, description="Its port (587: submission)")
    alert_smtp_starttls: bool = Field(False, description="Upgrade the SMTP connection to TLS")
    alert_smtp_user: str | None = Field(None, description="SMTP login, if the server wants one")
    alert_smtp_password: SecretStr | None = Field(None, description="Its password")
    alert_smtp_from: str | None = Field(None, description="Sender address of alert e-mails")
    alert_smtp_to: list[str] = Field(
        default_factory=list, description="Recipients of alert e-mails"
    )

    toml_file: ClassVar[Path | None] = None

    # OCPI 2.2.1 roaming (docs/ocpi.md)
    ocpi_country_code: str = Field(
        "NL", pattern=r"^[A-Z]{2}$", description="Our OCPI country code (ISO 3166-1 alpha-2)"
    )
    ocpi_party_id: str = Field(
        "EVF", pattern=r"^[A-Z0-9]{3}$", description="Our OCPI party id (3 characters, ISO 15118)"
    )
    ocpi_business_name: str = Field("evflex", description="Our name in OCPI credentials")
    ocpi_roles: list[Literal["CPO", "EMSP"]] = Field(
        default_factory=lambda: ["CPO", "EMSP"],
        description="The OCPI roles this node plays (one deployment can be CPO and eMSP)",
    )
    ocpi_base_url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+",
        description="Public URL partners reach this node's HTTP port at; /ocpi/versions is "
        "under it (default: public_url, else http(s)://host:http_port)",
    )
    ocpi_key_file: Path = Field(
        Path("evflex-ocpi.key"),
        description="Key that encrypts the tokens we send to partners (made on first use, 0600)",
    )
    ocpi_session_update_s: float = Field(
        60.0, ge=0, description="At most one Session update per session to a partner this often"
    )
    ocpi_push_timeout_s: float = Field(10.0, gt=0, description="Wait for a partner's answer (s)")
    ocpi_retry_max_s: float = Field(
        300.0, gt=0, description="Longest wait between two tries of a failed push (s)"
    )
    ocpi_authorize_timeout_s: float = Field(
        3.0, gt=0, description="Wait for a partner's real-time token authorization (s)"
    )
    ocpi_command_timeout_s: float = Field(
        60.0, gt=0, description="A command's result is TIMEOUT after this long (s)"
    )

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if len(self.tls_cert) != len(self.tls_key):
            raise ValueError(
                f"tls_cert and tls_key are paired in order: {len(self.tls_cert)} "
                f"certificate(s) but {len(self.tls_key)} key(s)"
            )
        if self.tls_client_ca and not (self.tls_cert or self.trusted_proxy):
            raise ValueError(
                "tls_client_ca needs tls_cert and tls_key, or a trusted_proxy that "
                "terminates TLS (profile 3 is over TLS)"
            )
        if self.tls_client_ca and not self.cpo_name:
            raise ValueError("tls_client_ca needs cpo_name (the O station certificates carry)")
        try:
            networks(self.trusted_proxy)
        except ValueError as exc:
            raise ValueError(f"trusted_proxy: {exc}") from None
        return self

    @model_validator(mode="after")
    def _alert_mail(self) -> Settings:
        if self.alert_smtp_host and not (self.alert_smtp_from and self.alert_smtp_to):
            raise ValueError("alert_smtp_host needs alert_smtp_from and alert_smtp_to")
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> Settings:
        for name in ("sites", "circuits"):
            ids = [x.id for x in getattr(self, name)]
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                raise ValueError(f"[[{name}]]: id '{twice[0]}' is given more than once")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = cls.toml_file
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


class ConfigError(ValueError):
    """The configuration is wrong; ``problems`` has one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


_TABLES: dict[str, type[BaseModel]] = {"sites": SiteIn, "circuits": CircuitIn}


def _nearest(key: str, valid: Any) -> str | None:
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return near[0] if near else None


def _problems(exc: ValidationError, origin: Any, entries: dict[str, list]) -> list[str]:
    """One line per error: where it came from, which key, what is wrong."""
    errors = exc.errors(include_url=False)
    # A misspelt required key is one mistake: its "Field required" is not told again.
    meant = {
        (*e["loc"][:-1], _nearest(str(e["loc"][-1]), _TABLES[e["loc"][0]].model_fields))
        for e in errors
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 3 and e["loc"][0] in _TABLES
    }
    lines = []
    for err in errors:
        if err["type"] == "missing" and tuple(err["loc"]) in meant:
            continue
        msg = err["msg"].removeprefix("Value error, ")
        loc = [str(x) for x in err["loc"]]
        if not loc:  # a check across fields
            lines.append(f"{origin(None)}: {msg}")
            continue
        where, key, rest = origin(loc[0]), loc[0], loc[1:]
        unknown = err["type"] == "extra_forbidden"
        if key in _TABLES and rest and rest[0].isdigit():
            n = int(rest[0])
            entry = entries.get(key, [])
            ident = entry[n].get("id") if n < len(entry) and isinstance(entry[n], dict) else None
            where += f": [[{key}]] entry {n + 1}" + (f" (id '{ident}')" if ident else "")
            rest = rest[1:]
            if unknown and len(rest) == 1:
                near = _nearest(rest[0], _TABLES[key].model_fields)
                hint = f" (did you mean '{near}'?)" if near else ""
                lines.append(f"{where}: unknown key '{rest[0]}'{hint}")
                continue
            lines.append(f"{where}: {'.'.join(rest)}: {msg}" if rest else f"{where}: {msg}")
        elif unknown and not rest:
            near = _nearest(key, Settings.model_fields)
            in_site = _nearest(key, SiteIn.model_fields)
            hint = (
                f" (did you mean '{near}'?)"
                if near
                else f" (did you mean '{in_site}' in a [[sites]] table?)"
                if in_site
                else ""
            )
            lines.append(f"{where}: unknown key '{key}'{hint}")
        else:
            lines.append(f"{where}: {'.'.join(loc)}: {msg}")
    return lines


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings; ``overrides`` with value None are ignored (flag not given).

    Raises :class:`ConfigError` with one line per problem, before anything is
    opened or created.
    """
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")
    given = {k: v for k, v in overrides.items() if v is not None}
    data: dict[str, Any] = {}
    if config is not None:
        try:
            data = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{Path(config).name}: not valid TOML: {exc}"]) from None

    def origin(key: str | None) -> str:
        if key is None:
            return Path(config).name if config is not None else "settings"
        if key in given:
            return "--" + key.replace("_", "-")
        env = f"EVFLEX_{key}".upper()
        if any(k.upper() == env for k in os.environ):
            return env
        return Path(config).name if config is not None and key in data else "settings"

    class _Settings(Settings):
        toml_file = config

    entries = {k: v for k, v in data.items() if k in _TABLES and isinstance(v, list)}
    try:
        # exclude_unset keeps which fields each [[sites]] entry really wrote
        return Settings.model_validate(_Settings(**given).model_dump(exclude_unset=True))
    except ValidationError as exc:
        raise ConfigError(_problems(exc, origin, entries)) from None
