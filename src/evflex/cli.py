"""The ``evflex`` command."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select, update

from evflex.api.schemas import IdTokenIn, StationCreate
from evflex.app import Runtime
from evflex.bench.fuzz import bench_fuzz_command
from evflex.bench.ocpi import bench_ocpi_command
from evflex.bench.ocpp import bench_ocpp_command
from evflex.bench.scheduling import bench_scheduling_command
from evflex.bench.smartcharging import bench_smartcharging_command
from evflex.bench.v2x import bench_v2x_command
from evflex.clock import SystemClock, utcnow
from evflex.config import ConfigError, Settings
from evflex.config import load_settings as _load_settings
from evflex.demo import create_demo_admin, demo_clock, demo_settings, run_demo, v2x_summary
from evflex.ocpi import credentials as ocpi_credentials
from evflex.ocpi import partners as ocpi_partners
from evflex.ocpi.node import OcpiParty
from evflex.security import hash_password, trail
from evflex.security.cli import ca_app
from evflex.security.tls import TlsError
from evflex.sim.cli import sim_command
from evflex.store import records, repo
from evflex.store.db import make_engine, make_sessionmaker, migrate
from evflex.store.ocpi_tables import OcpiObject
from evflex.store.tables import ApiToken, Station, User
from evflex.tuning import tune_gc
from evflex.web.auth import (
    add_token,
    add_user,
    end_sessions,
    reset_totp,
    set_password,
    sha256,
    totp_uri,
)

app = typer.Typer(
    help="evflex: smart and bidirectional EV charging platform.",
    no_args_is_help=True,
    add_completion=False,
)
station_app = typer.Typer(help="Manage registered charging stations.", no_args_is_help=True)
token_app = typer.Typer(help="Manage id tokens (RFID cards, app ids).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print a table, write JSON.", no_args_is_help=True)
user_app = typer.Typer(help="Dashboard accounts (password + TOTP).", no_args_is_help=True)
api_token_app = typer.Typer(help="API tokens for machines (Bearer).", no_args_is_help=True)
app.add_typer(station_app, name="station")
app.add_typer(token_app, name="id-token")
app.add_typer(user_app, name="user")
app.add_typer(api_token_app, name="token")
app.add_typer(bench_app, name="bench")
app.add_typer(ca_app, name="ca")
audit_app = typer.Typer(
    help="The audit trail: check its hash chain, export it.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
records_app = typer.Typer(help="Charge records of ended sessions.", no_args_is_help=True)
app.add_typer(records_app, name="records")
ocpi_app = typer.Typer(
    help="OCPI 2.2.1 roaming: invite and register partners, list them.", no_args_is_help=True
)
app.add_typer(ocpi_app, name="ocpi")

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DbOpt = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL")]


def load_settings(config: Path | None = None, **overrides) -> Settings:
    """The settings, or exit 2 with one line per problem of the configuration."""
    try:
        return _load_settings(config, **overrides)
    except (ConfigError, FileNotFoundError) as exc:
        for line in str(exc).splitlines():
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    ocpp_port: Annotated[int | None, typer.Option(help="OCPP WebSocket port")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP API port")] = None,
    database_url: DbOpt = None,
    allow_unknown_stations: Annotated[
        bool | None,
        typer.Option(
            "--allow-unknown-stations/--no-allow-unknown-stations",
            help="Register unknown stations on first connect",
        ),
    ] = None,
    heartbeat_interval: Annotated[int | None, typer.Option(help="Heartbeat interval (s)")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning")] = None,
    tls_cert: Annotated[
        list[Path] | None,
        typer.Option(help="Server certificate (PEM); repeatable, e.g. one ECDSA and one RSA"),
    ] = None,
    tls_key: Annotated[
        list[Path] | None, typer.Option(help="Its key (PEM); paired in order with --tls-cert")
    ] = None,
    tls_client_ca: Annotated[
        list[Path] | None,
        typer.Option(help="CA (file or bundle) of station certificates, profile 3; repeatable"),
    ] = None,
    cpo_name: Annotated[
        str | None, typer.Option(help="The O of station certificates (profile 3)")
    ] = None,
    trusted_proxy: Annotated[
        list[str] | None,
        typer.Option(help="Address of a TLS-terminating proxy; repeatable"),
    ] = None,
    client_cert_header: Annotated[
        str | None, typer.Option(help="Header in which a trusted proxy forwards the certificate")
    ] = None,
    ocpi_country_code: Annotated[
        str | None, typer.Option(help="Our OCPI country code (ISO 3166-1 alpha-2)")
    ] = None,
    ocpi_party_id: Annotated[str | None, typer.Option(help="Our OCPI party id")] = None,
    ocpi_business_name: Annotated[str | None, typer.Option(help="Our name in OCPI")] = None,
    ocpi_base_url: Annotated[
        str | None, typer.Option(help="Public URL partners reach the HTTP port at")
    ] = None,
    ocpi_role: Annotated[
        list[str] | None, typer.Option(help="An OCPI role we play (CPO, EMSP); repeatable")
    ] = None,
) -> None:
    """Run the CSMS: OCPP endpoint, REST API and store in one process."""
    settings = load_settings(
        config,
        tls_cert=tls_cert or None,
        tls_key=tls_key or None,
        tls_client_ca=tls_client_ca or None,
        cpo_name=cpo_name,
        trusted_proxy=trusted_proxy or None,
        client_cert_header=client_cert_header,
        host=host,
        ocpp_port=ocpp_port,
        http_port=http_port,
        database_url=database_url,
        allow_unknown_stations=allow_unknown_stations,
        heartbeat_interval=heartbeat_interval,
        log_level=log_level,
        ocpi_country_code=ocpi_country_code.upper() if ocpi_country_code else None,
        ocpi_party_id=ocpi_party_id.upper() if ocpi_party_id else None,
        ocpi_business_name=ocpi_business_name,
        ocpi_base_url=ocpi_base_url,
        ocpi_roles=[r.upper() for r in ocpi_role] if ocpi_role else None,
    )
    _logging(settings.log_level)

    async def main() -> None:
        try:
            rt = Runtime(settings)
        except TlsError as exc:
            raise ConfigError([str(exc)]) from None
        await rt.start()
        tune_gc()  # a long-running server: see its doc
        web = "https" if settings.tls_cert else "http"
        console.print(
            f"[bold green]evflex[/] OCPP  {'ws:// and wss' if settings.tls_cert else 'ws'}://"
            f"{settings.host}:{rt.ocpp_port}/ocpp/{{station_id}}\n"
            f"       dashboard {web}://{settings.host}:{rt.http_port}/  "
            "(accounts: evflex user add; API tokens: evflex token create)\n"
            f"       API   {web}://{settings.host}:{rt.http_port}/api/v1  "
            f"(docs: {web}://{settings.host}:{rt.http_port}/docs)\n"
            f"       OCPI  {rt.ocpi.versions_url}  ({rt.ocpi.country_code}/{rt.ocpi.party_id} "
            f"{', '.join(rt.ocpi.roles)}; partners: evflex ocpi invite, evflex ocpi register)\n"
            f"       store {settings.database_url}"
        )
        try:
            await _until_signalled()
        finally:
            await rt.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # what only the database can tell (a circuit's unknown site)
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


async def _until_signalled() -> None:
    """Wait for SIGTERM or SIGINT: either one leads to the orderly stop (stations are told
    1001 going away, their disconnects are recorded, the writer is flushed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _with_store(settings: Settings, fn, audit: dict | None = None):
    engine = make_engine(settings.database_url)
    try:
        await migrate(engine)
        sm = make_sessionmaker(engine)
        if audit is not None:  # the change and its audit row in one transaction
            return await trail.recorded(sm, fn, **audit)
        async with sm() as session, session.begin():
            return await fn(session)
    finally:
        await engine.dispose()


def _in_store(settings: Settings, fn, missing: str | None = None, **audit):
    """``fn(session)`` in one transaction of the store. A ValueError it raises exits 2
    with its message; with ``missing``, a falsy answer exits 1 with that message.
    With ``action`` (and ``target``, ``data``): an audit row by ``cli:<os user>``."""
    audit = {**audit, "missing": missing} if audit else None
    try:
        result = asyncio.run(_with_store(settings, fn, audit))
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    if missing is not None and not result:
        console.print(f"[red]{missing}[/]")
        raise typer.Exit(1)
    return result


@station_app.command("add")
def station_add(
    station_id: Annotated[str, typer.Argument(help="Station identity as in the OCPP URL")],
    password: Annotated[str | None, typer.Option(help="Basic-auth password (16..40)")] = None,
    site_id: Annotated[str | None, typer.Option(help="Site the station belongs to")] = None,
    security_profile: Annotated[
        int | None,
        typer.Option(help="1 password, 2 TLS + password, 3 TLS client certificate (default 1)"),
    ] = None,
    serial: Annotated[
        str | None, typer.Option(help="Serial number a profile-3 certificate may name as CN")
    ] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Register a station, with its security profile and password."""

    try:
        body = StationCreate(
            id=station_id, password=password, site_id=site_id,
            security_profile=security_profile, serial_number=serial,
        )  # fmt: skip
    except ValueError as exc:
        console.print(f"[red]invalid station: {exc}[/]")
        raise typer.Exit(2) from None
    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        pw_hash = hash_password(body.password) if body.password else None
        return await repo.register_station(
            s, body.id, utcnow(), pw_hash, body.model_dump(include=set(repo.STATION_TOPOLOGY)),
            body.model_dump(include={"security_profile", "serial_number"}),
        )  # fmt: skip

    data = body.model_dump(exclude_none=True)
    _in_store(settings, fn, f"station '{station_id}' already exists",
              action="station create", target=f"station {station_id}", data=data)  # fmt: skip
    console.print(
        f"station '{station_id}' registered, security profile {body.security_profile or 1}"
        + (" with password" if password else "")
    )


@station_app.command("list")
def station_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """List registered stations."""

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        return list((await s.execute(select(Station).order_by(Station.id))).scalars())

    table = Table("id", "ocpp", "vendor", "model", "firmware", "connected", "last heartbeat")
    for st in _in_store(settings, fn):
        table.add_row(
            st.id,
            st.ocpp_version or "",
            st.vendor or "",
            st.model or "",
            st.firmware_version or "",
            "yes" if st.connected else "no",
            str(st.last_heartbeat_at or ""),
        )
    console.print(table)


@token_app.command("add")
def id_token_add(
    id_token: Annotated[str, typer.Argument(help="The token (e.g. RFID UID)")],
    status: Annotated[str, typer.Option(help="Accepted, Blocked, Expired, Invalid")] = "Accepted",
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Add or replace an id token in the authorization table."""

    try:
        body = IdTokenIn(id_token=id_token, status=status)
    except ValueError as exc:
        console.print(f"[red]invalid id token: {exc}[/]")
        raise typer.Exit(2) from None
    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        await repo.put_id_token(s, body.id_token, utcnow(), body.status, body.type)

    target = f"id-token {trail.mask(body.id_token)}"
    _in_store(settings, fn, action="id-token set", target=target, data={"status": status})
    console.print(f"id token '{id_token}' is {status}")


RoleOpt = Annotated[str, typer.Option(help="viewer, operator or admin")]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        envvar="EVFLEX_USER_PASSWORD",
        help="At least 10 characters; asked for (hidden, twice) when not given",
        show_default=False,
    ),
]


def _ask_password() -> str:
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


def _print_totp(username: str, secret: str) -> None:
    console.print(f"  TOTP secret: [bold]{secret}[/]")
    console.print(f"  or the URI:  {totp_uri(secret, username)}", soft_wrap=True)


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="Login name")],
    role: RoleOpt = "operator",
    password: PasswordOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create a dashboard account; prints the TOTP secret for the authenticator app."""

    settings = load_settings(config, database_url=database_url)
    password = password or _ask_password()

    async def fn(s):
        return (await add_user(s, username, password, role)).totp_secret

    data = {"username": username, "role": role}
    secret = _in_store(settings, fn, action="user create", target=f"user {username}", data=data)
    console.print(f"user '{username}' ({role}) created. Add this key to an authenticator app:")
    _print_totp(username, secret)


@user_app.command("list")
def user_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """List dashboard accounts."""

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        return list((await s.execute(select(User).order_by(User.username))).scalars())

    table = Table("user", "role", "disabled", "last login")
    for u in _in_store(settings, fn):
        table.add_row(u.username, u.role, "yes" if u.disabled else "", str(u.last_login_at or ""))
    console.print(table)


@user_app.command("disable")
def user_disable(
    username: Annotated[str, typer.Argument(help="Login name")],
    enable: Annotated[bool, typer.Option("--enable", help="Enable the account again")] = False,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Lock an account out (its browser sessions end at once), or let it in again."""

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        user = await s.get(User, username)
        if user is not None:
            user.disabled = not enable
            if not enable:  # enabling again does not bring the old sessions back
                await end_sessions(s, username)
        return user is not None

    verb = "enable" if enable else "disable"
    _in_store(
        settings, fn, f"no user '{username}'", action=f"user {verb}", target=f"user {username}"
    )
    console.print(f"user '{username}' " + ("enabled" if enable else "disabled"))


@user_app.command("reset-password")
def user_reset_password(
    username: Annotated[str, typer.Argument(help="Login name")],
    password: PasswordOpt = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Give an account a new password; its browser sessions end at once."""

    settings = load_settings(config, database_url=database_url)
    password = password or _ask_password()
    _in_store(
        settings, lambda s: set_password(s, username, password), f"no user '{username}'",
        action="user reset-password", target=f"user {username}",
    )  # fmt: skip
    console.print(f"user '{username}': new password set, browser sessions ended")


@user_app.command("reset-totp")
def user_reset_totp(
    username: Annotated[str, typer.Argument(help="Login name")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Give an account a new TOTP secret (a lost phone); its browser sessions end at once."""

    settings = load_settings(config, database_url=database_url)
    secret = _in_store(
        settings, lambda s: reset_totp(s, username), f"no user '{username}'",
        action="user reset-totp", target=f"user {username}",
    )  # fmt: skip
    console.print(f"user '{username}': new TOTP key, browser sessions ended. Add it to the app:")
    _print_totp(username, secret)


@api_token_app.command("create")
def api_token_create(
    role: RoleOpt = "viewer",
    name: Annotated[str | None, typer.Option(help="What the token is for")] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Create an API token; it is printed once, on the last line (only its hash is kept)."""

    settings = load_settings(config, database_url=database_url)
    token = _in_store(
        settings, lambda s: add_token(s, role, name),
        action="api-token create", target=f"api-token {name or ''}".strip(),
        data={"role": role, "name": name},
    )  # fmt: skip
    console.print(f"API token with role {role} (send it as 'Authorization: Bearer <token>'):")
    print(token)


@api_token_app.command("list")
def api_token_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """List API tokens: id, name, role, created, last used, revoked (never the token)."""

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        return list((await s.execute(select(ApiToken).order_by(ApiToken.id))).scalars())

    table = Table("id", "name", "role", "created", "last used", "revoked")
    for t in _in_store(settings, fn):
        table.add_row(
            str(t.id),
            t.name or "",
            t.role,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "never",
            "yes" if t.revoked else "",
        )
    console.print(table)


@api_token_app.command("revoke")
def api_token_revoke(
    token: Annotated[str, typer.Argument(help="The token to revoke")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Revoke an API token."""

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        r = await s.execute(
            update(ApiToken).where(ApiToken.token_sha256 == sha256(token)).values(revoked=True)
        )
        return r.rowcount

    target = f"api-token {trail.mask(token)}"
    _in_store(settings, fn, "no such token", action="api-token revoke", target=target)
    console.print("token revoked")


@audit_app.command("verify")
def audit_verify(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Walk the audit trail's hash chain; exit 1 at the first changed or missing row."""

    settings = load_settings(config, database_url=database_url)
    result = _in_store(settings, trail.verify)
    if not result["ok"]:
        console.print(
            f"[red]audit trail broken at row {result['first_bad_id']}: {result['reason']}[/] "
            f"({result['rows']} rows checked)"
        )
        raise typer.Exit(1)
    console.print(f"audit trail intact: {result['rows']} rows")


@records_app.command("rebuild")
def records_rebuild(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """Write the charge records that ended transactions lack (e.g. ended before records
    existed), priced at the tariff in force at their start."""
    settings = load_settings(config, database_url=database_url)
    now = utcnow()
    made = _in_store(settings, lambda s: records.rebuild(s, settings.currency, now))
    console.print(f"{made} charge record(s) written")


@audit_app.command("export")
def audit_export(
    out: Annotated[Path, typer.Option("--out", help="CSV file to write")],
    actor: Annotated[str | None, typer.Option(help="Actor contains")] = None,
    action: Annotated[str | None, typer.Option(help="Action contains")] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Write the audit trail (oldest first) as CSV."""

    settings = load_settings(config, database_url=database_url)

    async def export() -> int:
        engine = make_engine(settings.database_url)
        rows = -1  # the header
        try:
            await migrate(engine)
            with out.open("w", encoding="utf-8", newline="") as f:
                async for line in trail.csv_lines(
                    make_sessionmaker(engine), trail.filters(actor, action)
                ):
                    f.write(line)
                    rows += 1
        finally:
            await engine.dispose()
        return rows

    console.print(f"{asyncio.run(export())} audit rows written to {out}")


# ---------------------------------------------------------------- OCPI partners


def _ocpi(settings: Settings, fn, audit: dict | None = None):
    """``fn(party)`` with this node's OCPI party on its store (no node need run); a
    refused registration exits 1 with its reason, a ValueError exits 2. With ``audit``
    (action, target, data): an audit row once ``fn`` succeeded."""

    async def run():
        engine = make_engine(settings.database_url)
        party = OcpiParty(settings, make_sessionmaker(engine), SystemClock())
        try:
            await migrate(engine)
            result = await fn(party)
            if audit is not None:
                await trail.recorded(party.sessionmaker, _nothing, **audit)
            return result
        finally:
            await party.client.close()
            await engine.dispose()

    try:
        return asyncio.run(run())
    except ocpi_credentials.RegistrationError as exc:
        typer.echo(f"OCPI {exc.status_code}: {exc.message}", err=True)
        if exc.status_code == 3001 and "POST" in exc.message:
            typer.echo("(the partner fetches our versions with our token B while it answers: "
                       "is this node serving at ocpi_base_url on this database?)", err=True)  # fmt: skip
        raise typer.Exit(1) from None
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


async def _nothing(s) -> bool:
    return True


def _ocpi_partner(party: OcpiParty, partner_id: int):
    async def load():
        async with party.sessionmaker() as s:
            found = await ocpi_partners.get(s, partner_id)
        if found is None:
            raise ValueError(f"no OCPI partner {partner_id}")
        return found

    return load()


def _roles_text(partner) -> str:
    return ", ".join(f"{r.get('role')} {r.get('country_code')}/{r.get('party_id')}"
                     for r in partner.roles or ())  # fmt: skip


@ocpi_app.command("invite")
def ocpi_invite(
    role: Annotated[str, typer.Option(help="The partner's role: CPO, EMSP, ...")],
    country_code: Annotated[str, typer.Option(help="The partner's country code (2 letters)")],
    party_id: Annotated[str, typer.Option(help="The partner's party id (3 characters)")],
    name: Annotated[str | None, typer.Option(help="The partner's name, for the list")] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Invite a partner: prints our versions URL, then its token A on the last line.

    The token A works for one registration and is shown once (only its hash is kept)."""
    settings = load_settings(config, database_url=database_url)

    async def fn(party: OcpiParty):
        async with party.sessionmaker() as s, s.begin():
            partner, token = await ocpi_partners.invite(s, role, country_code, party_id,
                                                        utcnow(), name)  # fmt: skip
        return partner, token, party.versions_url

    audit = dict(action="ocpi invite", target=f"ocpi partner {country_code}/{party_id}".upper(),
                 data={"role": role.upper(), "name": name})  # fmt: skip
    partner, token, versions_url = _ocpi(settings, fn, audit)
    typer.echo(f"Partner {partner.id} invited ({_roles_text(partner)}). Give it our versions URL "
               "and the token A, which works for one registration:")  # fmt: skip
    typer.echo(versions_url)
    typer.echo(token)


@ocpi_app.command("register")
def ocpi_register(
    versions_url: Annotated[str, typer.Option(help="The partner's versions URL")],
    token: Annotated[str, typer.Option(help="The token A the partner gave us")],
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Register this node with a partner, with the token A it gave us.

    We send our credentials, it answers its own. The partner calls our versions URL back
    meanwhile: the node must be serving. A node that was stopped starts pushing to the
    partner when it starts."""
    settings = load_settings(config, database_url=database_url)
    partner = _ocpi(
        settings, lambda party: ocpi_credentials.register(party, versions_url, token),
        dict(action="ocpi register", target=f"ocpi partner {versions_url}"),
    )  # fmt: skip
    typer.echo(f"Registered with partner {partner.id} ({partner.business_name or '-'}): "
               f"{_roles_text(partner)}")  # fmt: skip


PartnerIdArg = Annotated[int, typer.Argument(help="The partner's id (evflex ocpi partners)")]


def _on_partner(partner_id: int, call, action: str, config: Path | None, database_url: str | None):
    """``call(party, partner)`` on the partner with this id, audited as ``action``."""
    settings = load_settings(config, database_url=database_url)

    async def fn(party: OcpiParty):
        return await call(party, await _ocpi_partner(party, partner_id))

    return _ocpi(settings, fn, dict(action=action, target=f"ocpi partner {partner_id}"))


@ocpi_app.command("update")
def ocpi_update(
    partner_id: PartnerIdArg, config: ConfigOpt = None, database_url: DbOpt = None
) -> None:
    """New credentials tokens with a registered partner (PUT); its endpoints again."""
    partner = _on_partner(partner_id, ocpi_credentials.update, "ocpi update", config,
                          database_url)  # fmt: skip
    typer.echo(f"New tokens with partner {partner.id}: {_roles_text(partner)}")


@ocpi_app.command("unregister")
def ocpi_unregister(
    partner_id: PartnerIdArg, config: ConfigOpt = None, database_url: DbOpt = None
) -> None:
    """End the registration with a partner (it is told), or withdraw an invitation."""
    problem = _on_partner(partner_id, ocpi_credentials.unregister, "ocpi unregister", config,
                          database_url)  # fmt: skip
    typer.echo(f"Partner {partner_id} unregistered; its tokens no longer work.")
    if problem:
        typer.echo(f"The partner was not told: {problem}", err=True)


@ocpi_app.command("partners")
def ocpi_partners_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """List partners: id, status, parties and roles, last success, push queue depth."""
    settings = load_settings(config, database_url=database_url)
    table = Table("id", "status", "name", "roles", "last success", "queue", "last error")
    for p in _in_store(settings, ocpi_credentials.summaries):
        last = p["last_success_at"]
        table.add_row(
            str(p["id"]), p["status"], p["name"] or "", "\n".join(p["roles"]),
            f"{last:%Y-%m-%d %H:%M:%S}" if last else "never", str(p["queue"]),
            (p["last_error"] or "")[:60],
        )  # fmt: skip
    console.print(table)


@ocpi_app.command("received")
def ocpi_received(
    module: Annotated[str, typer.Argument(help="sessions, cdrs, locations or tariffs")] = "cdrs",
    limit: Annotated[int, typer.Option(help="The latest this many")] = 20,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """What CPO partners sent our eMSP role, the latest first: per Session or CDR its
    party, card, start, status, kWh charged and fed back (V2X) and cost."""
    if module not in ("sessions", "cdrs", "locations", "tariffs"):
        typer.echo(f"module {module!r}: sessions, cdrs, locations or tariffs", err=True)
        raise typer.Exit(2)
    settings = load_settings(config, database_url=database_url)

    async def fetch(s):
        q = (select(OcpiObject).where(OcpiObject.module == module)
             .order_by(OcpiObject.last_updated.desc(), OcpiObject.id.desc()).limit(limit))  # fmt: skip
        return [(o.country_code, o.party_id, o.object_id, o.data) for o in await s.scalars(q)]

    table = Table("party", "id", "card", "start", "status", "kWh in", "kWh out", "cost")
    for cc, pid, oid, d in _in_store(settings, fetch):
        token = (d.get("cdr_token") or {}).get("uid", "")
        kwh = d.get("kwh", d.get("total_energy"))
        out = d.get("evflex_kwh_exported", d.get("evflex_total_energy_export"))
        cost = d.get("total_cost") or {}
        cost_text = f"{cost.get('excl_vat')} {d.get('currency', '')}" if cost else ""
        table.add_row(
            f"{cc}/{pid}", oid, token, str(d.get("start_date_time", "")),
            str(d.get("status", "")), "" if kwh is None else f"{kwh:.3f}",
            "" if out is None else f"{out:.3f}", cost_text.strip(),
        )  # fmt: skip
    console.print(table)


def main() -> None:  # pragma: no cover
    app()


@app.command()
def demo(
    stations: Annotated[int, typer.Option(help="Simulated stations (half 1.6, half 2.0.1)")] = 10,
    hours: Annotated[float, typer.Option(help="Simulated hours")] = 24.0,
    speed: Annotated[
        float | None, typer.Option(help="Clock speed (default: the day in ~40 s)")
    ] = None,
    db: Annotated[Path, typer.Option(help="SQLite file, recreated")] = Path("evflex-demo.db"),
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    ocpp_port: Annotated[int, typer.Option()] = 9000,
    http_port: Annotated[int, typer.Option()] = 8000,
    keep_running: Annotated[bool, typer.Option(help="Keep the CSMS up afterwards")] = False,
    seed: Annotated[int, typer.Option()] = 7,
    site_limit_kw: Annotated[
        float, typer.Option(help="Grid connection limit of the simulated site (kW)")
    ] = 80.0,
    v2x: Annotated[
        bool,
        typer.Option(
            "--v2x",
            help="A V2G site: OCPP 2.1 stations, bidirectional cars, prices with an evening "
            "peak, planned by the optimiser; prints imported vs exported kWh",
        ),
    ] = False,
) -> None:
    """Start a CSMS on a fresh SQLite file, simulate a site for a day, print a summary."""

    logging.basicConfig(level="ERROR")

    async def main() -> int:
        rt = Runtime(demo_settings(db, host, ocpp_port, http_port), demo_clock(hours, speed))
        await rt.start()
        try:
            login = await create_demo_admin(rt)
            console.print(
                f"[bold green]evflex[/] CSMS up: dashboard http://{host}:{rt.http_port}/"
                f" · API docs http://{host}:{rt.http_port}/docs"
                f" · OCPP ws://{host}:{rt.ocpp_port}/ocpp/{{id}} · store {db}"
            )
            console.print(
                f"Dashboard login: user [bold]{login.username}[/], password "
                f"[bold]{login.password}[/], TOTP secret [bold]{login.totp_secret}[/] "
                f"(add it to an authenticator app; the code now is {login.code_now()})",
                soft_wrap=True,
            )
            with Progress(
                TextColumn("simulating {task.fields[hours]:g} h"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TimeElapsedColumn(),
                console=console,
            ) as bar:
                task = bar.add_task("sim", total=1.0, hours=hours)
                res = await run_demo(
                    rt,
                    stations=stations,
                    hours=hours,
                    seed=seed,
                    progress=lambda f: bar.update(task, completed=f),
                    site_limit_kw=site_limit_kw,
                    v2x=v2x,
                )
            table = Table(
                title=f"evflex demo: {res.sim_hours:g} simulated hours in {res.real_seconds:.0f} s"
            )
            table.add_column("what")
            table.add_column("simulator", justify="right")
            table.add_column("CSMS store", justify="right")
            table.add_row(
                "stations booted", f"{res.stations_booted}/{res.stations}", str(res.csms_stations)
            )
            table.add_row(
                "sessions started / transactions stored",
                str(res.sessions_started),
                str(res.csms_transactions)
                + (
                    f" ({res.csms_refused_transactions} refused card)"
                    if res.csms_refused_transactions
                    else ""
                ),
            )
            table.add_row("sessions completed", str(res.sessions_completed), "")
            table.add_row("sessions refused (unknown card)", str(res.sessions_rejected), "")
            table.add_row(
                "energy charged (kWh)", f"{res.sim_energy_kwh:.1f}", f"{res.csms_energy_kwh:.1f}"
            )
            if res.v2x:
                table.add_row("energy fed back (kWh)", "", f"{res.csms_exported_kwh:.1f}")
                table.add_row("sessions allowing discharge", "", str(res.v2x_sessions))
            table.add_row("meter samples stored", "", str(res.csms_meter_samples))
            table.add_row("errors", str(res.errors), "")
            console.print(table)
            share = (
                f"{res.sessions_served}/{res.sessions_with_needs} "
                f"({100 * res.sessions_served / res.sessions_with_needs:.0f} %)"
                if res.sessions_with_needs
                else "none with stated needs"
            )
            verdict = "[green]under[/]" if res.site_peak_kw <= res.site_limit_kw else "[red]OVER[/]"
            console.print(
                f"Site limit {res.site_limit_kw:g} kW · peak of the EVs' draw "
                f"{res.site_peak_kw:.1f} kW ({verdict} the limit) · drivers who stated energy "
                f"and departure and got it by departure, or all their car could take in its "
                f"stay (single-phase cars at 16 A): {share}"
            )
            if res.v2x:
                console.print(v2x_summary(res))
            for e in res.error_samples:
                console.print(f"  [yellow]error:[/] {e}")
            if keep_running:
                console.print(
                    f"Dashboard: {res.api_url}/  ·  API docs {res.api_url}/docs  ·  "
                    "the CSMS keeps running (Ctrl-C to stop)."
                )
                await asyncio.Event().wait()
            else:
                console.print(
                    f"The CSMS has stopped. Its database is {db}; to look at the day in the "
                    f"dashboard: evflex serve --database-url sqlite+aiosqlite:///{db.resolve()} "
                    f"(or run the demo with --keep-running)",
                    soft_wrap=True,
                )
            ok = res.errors == 0 and res.stations_booted == res.stations
            return 0 if ok and res.site_peak_kw <= res.site_limit_kw else 1
        finally:
            await rt.stop()

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 0
    raise typer.Exit(code)


def _register_plugins() -> None:
    app.command("sim", help="Run simulated stations and EVs against a CSMS.")(sim_command)
    bench_app.command(
        "ocpp",
        help="OCPP load benchmark: K stations, message mix, latency; "
        "--compare against an echo server and a bare ocpp-library server.",
    )(bench_ocpp_command)
    bench_app.command(
        "smartcharging", help="Site limit change -> every EVSE's new profile acknowledged."
    )(bench_smartcharging_command)
    bench_app.command(
        "scheduling", help="Replay EV sessions (ACN-Data) through charging algorithms, LP included."
    )(bench_scheduling_command)
    bench_app.command(
        "v2x", help="Central frequency control: N V2X EVSEs follow a frequency trace."
    )(bench_v2x_command)
    bench_app.command(
        "fuzz",
        help="Malformed and hostile OCPP frames and API requests: right answers, "
        "no crash, others' latency, database unchanged.",
    )(bench_fuzz_command)
    bench_app.command("ocpi", help="OCPI: Session updates pushed per second to a partner.")(
        bench_ocpi_command
    )


_register_plugins()
