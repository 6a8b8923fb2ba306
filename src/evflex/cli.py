"""The ``evflex`` command."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evflex.config import Settings, load_settings

app = typer.Typer(
    help="evflex: smart and bidirectional EV charging platform.",
    no_args_is_help=True,
    add_completion=False,
)
station_app = typer.Typer(help="Manage registered charging stations.", no_args_is_help=True)
token_app = typer.Typer(help="Manage id tokens (RFID cards, app ids).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print a table, write JSON.", no_args_is_help=True)
app.add_typer(station_app, name="station")
app.add_typer(token_app, name="id-token")
app.add_typer(bench_app, name="bench")

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML settings file")]
DbOpt = Annotated[str | None, typer.Option("--database-url", help="SQLAlchemy URL")]


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
) -> None:
    """Run the CSMS: OCPP endpoint, REST API and store in one process."""
    settings = load_settings(
        config,
        host=host,
        ocpp_port=ocpp_port,
        http_port=http_port,
        database_url=database_url,
        allow_unknown_stations=allow_unknown_stations,
        heartbeat_interval=heartbeat_interval,
        log_level=log_level,
    )
    _logging(settings.log_level)
    from evflex.app import Runtime

    async def main() -> None:
        rt = Runtime(settings)
        await rt.start()
        console.print(
            f"[bold green]evflex[/] OCPP  ws://{settings.host}:{rt.ocpp_port}/ocpp/{{station_id}}\n"
            f"       API   http://{settings.host}:{rt.http_port}/api/v1  "
            f"(docs: http://{settings.host}:{rt.http_port}/docs)\n"
            f"       store {settings.database_url}"
        )
        try:
            await asyncio.Event().wait()
        finally:
            await rt.stop()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


async def _with_store(settings: Settings, fn):
    from evflex.store.db import make_engine, make_sessionmaker, migrate

    engine = make_engine(settings.database_url)
    try:
        await migrate(engine)
        sm = make_sessionmaker(engine)
        async with sm() as session, session.begin():
            return await fn(session)
    finally:
        await engine.dispose()


@station_app.command("add")
def station_add(
    station_id: Annotated[str, typer.Argument(help="Station identity as in the OCPP URL")],
    password: Annotated[str | None, typer.Option(help="Basic-auth password (16..40)")] = None,
    site_id: Annotated[str | None, typer.Option(help="Site the station belongs to")] = None,
    config: ConfigOpt = None,
    database_url: DbOpt = None,
) -> None:
    """Register a station (optionally with a security-profile-1 password)."""
    from evflex.api.schemas import StationCreate
    from evflex.clock import utcnow
    from evflex.security import hash_password
    from evflex.store import repo

    try:
        body = StationCreate(id=station_id, password=password, site_id=site_id)
    except ValueError as exc:
        console.print(f"[red]invalid station: {exc}[/]")
        raise typer.Exit(2) from None
    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        if await repo.get_station(s, body.id) is not None:
            return False
        await repo.create_station(
            s,
            body.id,
            utcnow(),
            hash_password(body.password) if body.password else None,
            body.site_id,
        )
        return True

    if not asyncio.run(_with_store(settings, fn)):
        console.print(f"[red]station '{station_id}' already exists[/]")
        raise typer.Exit(1)
    console.print(f"station '{station_id}' registered" + (" with password" if password else ""))


@station_app.command("list")
def station_list(config: ConfigOpt = None, database_url: DbOpt = None) -> None:
    """List registered stations."""
    from rich.table import Table
    from sqlalchemy import select

    from evflex.store.tables import Station

    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        return list((await s.execute(select(Station).order_by(Station.id))).scalars())

    table = Table("id", "ocpp", "vendor", "model", "firmware", "connected", "last heartbeat")
    for st in asyncio.run(_with_store(settings, fn)):
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
    from evflex.api.schemas import IdTokenIn
    from evflex.clock import utcnow
    from evflex.store import repo
    from evflex.store.tables import IdToken

    try:
        body = IdTokenIn(id_token=id_token, status=status)
    except ValueError as exc:
        console.print(f"[red]invalid id token: {exc}[/]")
        raise typer.Exit(2) from None
    settings = load_settings(config, database_url=database_url)

    async def fn(s):
        row = await repo.get_id_token(s, body.id_token)
        if row is None:
            s.add(
                IdToken(
                    id_token=body.id_token, status=body.status, type=body.type, created_at=utcnow()
                )
            )
        else:
            row.status = body.status

    asyncio.run(_with_store(settings, fn))
    console.print(f"id token '{id_token}' is {status}")


def main() -> None:  # pragma: no cover
    app()
