"""``evflex sim``: run a fleet of simulated charging stations against a CSMS."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from evflex.sim.model import ATTACKS, SecuritySettings
from evflex.sim.runner import SimConfig, SimSummary, Simulation, ocpp_versions, station_ids
from evflex.sim.station import TIME_SOURCES

DEFAULT_TOKENS = ",".join(f"TOKEN{i}" for i in range(1, 11))


def sim_command(
    url: Annotated[
        str,
        typer.Option("--url", help="CSMS websocket base URL; the station id is appended."),
    ] = "ws://127.0.0.1:9000/ocpp",
    stations: Annotated[int, typer.Option("--stations", min=1, help="Number of stations.")] = 10,
    v201_share: Annotated[
        float,
        typer.Option("--v201-share", min=0.0, max=1.0, help="Share of OCPP 2.0.1 stations."),
    ] = 0.5,
    v21_share: Annotated[
        float,
        typer.Option(
            "--v21-share",
            min=0.0,
            max=1.0,
            help="Share of OCPP 2.1 (V2X) stations; --v201-share + --v21-share <= 1.",
        ),
    ] = 0.0,
    bidirectional_share: Annotated[
        float,
        typer.Option(
            "--bidirectional-share",
            min=0.0,
            max=1.0,
            help="Share of bidirectional (V2X) cars among the arrivals.",
        ),
    ] = 0.0,
    grid: Annotated[
        bool,
        typer.Option(
            "--grid/--no-grid",
            help="Measure a synthetic grid frequency / voltage and building load.",
        ),
    ] = False,
    evses: Annotated[int, typer.Option("--evses", min=1, help="EVSEs per station.")] = 2,
    speed: Annotated[
        float, typer.Option("--speed", min=0.001, help="Simulated seconds per real second.")
    ] = 60.0,
    clock_skew: Annotated[
        float,
        typer.Option(
            "--clock-skew",
            help="Start every station's clock this many seconds off (negative: behind). "
            "In real time (--speed 1) the stations take the CSMS's time like real chargers; "
            "accelerated, they keep the simulation's timeline.",
        ),
    ] = 0.0,
    time_source: Annotated[
        str | None,
        typer.Option(
            "--time-source",
            help="csms: take the CSMS's time (currentTime, ClockCtrlr.DateTime); rtc: keep "
            "the own clock until the CSMS sets ClockCtrlr.DateTime; timeline: nothing sets it. "
            "Default: csms at --speed 1, timeline otherwise.",
        ),
    ] = None,
    hours: Annotated[
        float, typer.Option("--hours", min=0.0, help="Simulated hours to run.")
    ] = 24.0,
    meter_interval: Annotated[
        float, typer.Option("--meter-interval", min=0.0, help="Meter value interval in seconds.")
    ] = 60.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same run).")] = 1,
    password: Annotated[
        str | None, typer.Option("--password", help="HTTP Basic password of every station.")
    ] = None,
    disconnects_per_hour: Annotated[
        float,
        typer.Option(
            "--disconnects-per-hour",
            min=0.0,
            help="Probability per simulated hour that a station loses its connection.",
        ),
    ] = 0.0,
    offline_minutes: Annotated[
        float, typer.Option("--offline-minutes", min=0.0, help="Simulated minutes offline.")
    ] = 10.0,
    sessions_per_day: Annotated[
        float, typer.Option("--sessions-per-day", min=0.0, help="Arrivals per EVSE and day.")
    ] = 3.0,
    tokens: Annotated[
        str, typer.Option("--tokens", help="Comma-separated id tokens the drivers present.")
    ] = DEFAULT_TOKENS,
    unknown_token_share: Annotated[
        float,
        typer.Option("--unknown-token-share", min=0.0, max=1.0, help="Share of unknown tokens."),
    ] = 0.0,
    prefix: Annotated[str, typer.Option("--prefix", help="Station id prefix.")] = "SIM",
    security_profile: Annotated[
        int | None,
        typer.Option(
            "--security-profile",
            min=0,
            max=3,
            help="OCPP security profile: 0 plain ws, 1 ws + HTTP Basic, 2 wss + HTTP Basic, "
            "3 wss + client certificate. Default: 3 with --client-cert, 2 for a wss:// --url, "
            "1 with --password, else 0. On 2 and 3 a "
            "ws:// --url is used as wss:// (evflex serves both on one port).",
        ),
    ] = None,
    ca: Annotated[
        str | None,
        typer.Option("--ca", help="CA certificate (PEM) the stations trust for the CSMS's TLS."),
    ] = None,
    client_cert: Annotated[
        str | None,
        typer.Option(
            "--client-cert",
            help="Station certificate (PEM) for profile 3; {id} in the name stands for the "
            "station id (certs/{id}.pem). A station on profile 2 gets one by SignCertificate.",
        ),
    ] = None,
    client_key: Annotated[
        str | None, typer.Option("--client-key", help="Its private key (PEM; {id} as above).")
    ] = None,
    cpo_name: Annotated[
        str | None, typer.Option("--cpo-name", help="The CPO's name: the O of the stations' CSRs.")
    ] = None,
    csr_cn: Annotated[
        str,
        typer.Option(
            "--csr-cn", help="CN of the stations' CSRs: 'id' (the station id) or 'serial'."
        ),
    ] = "id",
    attack: Annotated[
        str | None,
        typer.Option(
            "--attack",
            help="Play an attacker the CSMS must refuse: wrong-ca (a client certificate from "
            "a CA of its own), expired (an expired certificate), other-station (another "
            "station's certificate), downgrade (one profile below --security-profile: wss "
            "without certificate, or plain ws). expired and other-station sign with "
            "--attack-ca/--attack-ca-key, or present --client-cert as it is. Exits 1 if the "
            "CSMS lets any station in.",
        ),
    ] = None,
    attack_ca: Annotated[
        str | None,
        typer.Option("--attack-ca", help="CA certificate that signs the attackers' certificates."),
    ] = None,
    attack_ca_key: Annotated[
        str | None, typer.Option("--attack-ca-key", help="Its private key (a lab's CA key).")
    ] = None,
    other_station: Annotated[
        str | None,
        typer.Option("--other-station", help="Whose certificate other-station presents."),
    ] = None,
) -> None:
    """Simulate charging stations and EV sessions against a CSMS (OCPP 1.6-J, 2.0.1, 2.1)."""
    if time_source not in (None, *TIME_SOURCES):
        raise typer.BadParameter(f"--time-source must be one of {', '.join(TIME_SOURCES)}")
    if v201_share + v21_share > 1.0 + 1e-9:
        raise typer.BadParameter("--v201-share + --v21-share must not exceed 1")
    if attack not in (None, *ATTACKS):
        raise typer.BadParameter(f"--attack must be one of {', '.join(ATTACKS)}")
    try:
        security = SecuritySettings(
            profile=security_profile, ca_file=ca, client_cert=client_cert, client_key=client_key,
            cpo_name=cpo_name, csr_common_name=csr_cn, attack=attack,  # type: ignore[arg-type]
            signer_cert=attack_ca, signer_key=attack_ca_key, other_station=other_station,
        )  # fmt: skip
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if (missing := security.missing_file(station_ids(prefix, stations))) is not None:
        raise typer.BadParameter(f"no such file: {missing}")
    config = SimConfig(
        url=url,
        stations=stations,
        v201_share=v201_share,
        v21_share=v21_share,
        bidirectional_share=bidirectional_share,
        synthetic_grid=grid,
        evses_per_station=evses,
        speed=speed,
        clock_skew_s=clock_skew,
        time_source=time_source,
        duration_s=hours * 3600.0,
        meter_interval_s=meter_interval,
        sessions_per_evse_per_day=sessions_per_day,
        id_tokens=[t.strip() for t in tokens.split(",") if t.strip()],
        unknown_token_share=unknown_token_share,
        password=password,
        security=security,
        seed=seed,
        disconnect_per_hour=disconnects_per_hour,
        offline_duration_s=offline_minutes * 60.0,
        station_prefix=prefix,
    )
    console = Console()
    summary = asyncio.run(_run(config, console))
    console.print(summary_table(summary, config))
    if attack is not None:
        if summary.stations_booted > 0:  # the CSMS let an attacker in
            raise typer.Exit(code=1)
    elif summary.stations_booted == 0 and summary.stations > 0:
        raise typer.Exit(code=1)


async def _run(config: SimConfig, console: Console) -> SimSummary:
    simulation = Simulation(config)
    columns = (
        TextColumn("[bold]simulating[/bold] {task.fields[hours]:.1f} h"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("sim", total=1.0, hours=config.duration_s / 3600.0)
        return await simulation.run(progress=lambda done: progress.update(task, completed=done))


def summary_table(summary: SimSummary, config: SimConfig | None = None) -> Table:
    table = Table(title="Simulation summary", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value", justify="right")
    versions = ""
    if config is not None:  # how many stations speak each version, as they were made
        counts = Counter(ocpp_versions(config.stations, config.v201_share, config.v21_share))
        versions = " (" + ", ".join(f"{counts[v]} on OCPP {v}" for v in sorted(counts)) + ")"
    rows = [
        ("stations", f"{summary.stations}{versions}"),
        ("stations booted", str(summary.stations_booted)),
        ("stations refused", str(summary.stations_refused)),
        ("sessions started", str(summary.sessions_started)),
        ("sessions completed", str(summary.sessions_completed)),
        ("sessions rejected", str(summary.sessions_rejected)),
        ("energy", f"{summary.energy_wh / 1000.0:,.1f} kWh"),
        ("messages sent", f"{summary.messages_sent:,}"),
        ("undelivered transaction messages", f"{summary.tx_backlog:,}"),
        ("simulated time", f"{summary.sim_seconds / 3600.0:,.2f} h"),
        ("real time", f"{summary.real_seconds:,.1f} s"),
        ("errors", str(summary.errors)),
    ]
    for item, value in rows:
        table.add_row(item, value)
    for sample in summary.error_samples[:5]:
        table.add_row("[red]error[/red]", sample)
    return table
