"""Settings: defaults < TOML file (``--config``) < environment (``EVFLEX_*``) < CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVFLEX_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all)")
    ocpp_port: int = Field(9000, description="OCPP WebSocket port: ws://HOST:PORT/ocpp/{id}")
    http_port: int = Field(8000, description="HTTP port of the REST API and docs")
    database_url: str = Field("sqlite+aiosqlite:///evflex.db", description="SQLAlchemy URL")
    allow_unknown_stations: bool = Field(
        False, description="Register unknown station ids on first connect instead of 404"
    )
    heartbeat_interval: int = Field(300, description="Heartbeat interval given at boot (s)")
    response_timeout: float = Field(30.0, description="Wait for a station's answer (s)")
    max_frame_bytes: int = Field(1_048_576, description="Larger frames close with 1009")
    ws_ping_interval: float | None = Field(120.0, description="WebSocket ping interval (s)")
    validate_responses: bool = Field(True, description="Check our own answers against schemas")
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
    sites: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Sites to create at start ([[sites]] tables in the TOML config), "
        "same fields as POST /api/v1/sites",
    )
    circuits: list[dict[str, Any]] = Field(
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

    toml_file: ClassVar[Path | None] = None

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


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build settings; ``overrides`` with value None are ignored (flag not given)."""
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file not found: {config}")

    class _Settings(Settings):
        toml_file = config

    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings.model_validate(_Settings(**given).model_dump())
