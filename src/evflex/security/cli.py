"""``evflex ca``: a CPO certificate authority for a lab or a small operator, its
server certificate and station certificates (a real operator uses its own CA)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evflex.security import pki

ca_app = typer.Typer(help="A CPO CA: server and station certificates.", no_args_is_help=True)
console = Console()

CaDir = Annotated[Path, typer.Option("--ca", help="Directory with ca.pem and ca.key")]
OutDir = Annotated[Path, typer.Option("--out", help="Directory to write into")]
Kind = Annotated[str, typer.Option(help="Key type: ec (P-256) or rsa (2048 bits)")]
Days = Annotated[int, typer.Option(help="Validity (days)")]


def _kind(kind: str) -> pki.KeyKind:
    if kind not in ("ec", "rsa"):
        console.print(f"[red]--kind must be ec or rsa, not {kind!r}[/]")
        raise typer.Exit(2)
    return "rsa" if kind == "rsa" else "ec"


def _load(ca_dir: Path) -> pki.CertificateAuthority:
    try:
        return pki.CertificateAuthority.load(ca_dir / "ca.pem", ca_dir / "ca.key")
    except (OSError, pki.CertificateError) as exc:
        console.print(f"[red]cannot load the CA in {ca_dir}: {exc}[/]")
        raise typer.Exit(2) from None


def _write(out: Path, name: str, cert, key: pki.PrivateKey) -> tuple[Path, Path]:
    return (
        pki.write_pem(out / f"{name}.pem", pki.cert_pem(cert)),
        pki.write_pem(out / f"{name}.key", pki.key_pem(key), private=True),
    )


@ca_app.command("init")
def ca_init(
    out: OutDir,
    org: Annotated[str, typer.Option(help="The CPO's name: O of every certificate")] = "evflex CPO",
    kind: Kind = "ec",
    days: Days = 3650,
) -> None:
    """Create a CA: ca.pem and ca.key (readable by its owner only)."""
    if (out / "ca.key").exists():
        console.print(f"[red]{out / 'ca.key'} exists; not overwritten[/]")
        raise typer.Exit(1)
    cert_file, key_file = pki.init_ca(out, org, days=days, kind=_kind(kind))
    console.print(f"CA '{org}': {cert_file} and {key_file}")


@ca_app.command("issue-server")
def ca_issue_server(
    ca: CaDir,
    out: OutDir,
    name: Annotated[
        list[str], typer.Option(help="DNS name or IP address of the server (repeatable)")
    ],
    kind: Kind = "ec",
    days: Days = 365,
) -> None:
    """Issue a TLS server certificate: server-KIND.pem and server-KIND.key."""
    authority = _load(ca)
    key = pki.new_key(_kind(kind))
    subject = pki.subject_name(name[0], authority.organization)
    cert = pki.issue(
        authority.cert, authority.key, subject, key.public_key(), days=days, server_names=name
    )
    files = _write(out, f"server-{kind}", cert, key)
    console.print(f"server certificate for {', '.join(name)}: {files[0]} and {files[1]}")


@ca_app.command("issue-station")
def ca_issue_station(
    station_id: Annotated[str, typer.Argument(help="Station id or serial number (the CN)")],
    ca: CaDir,
    out: OutDir,
    kind: Kind = "ec",
    days: Days = 365,
) -> None:
    """Issue a station (client) certificate, O = the CA's O: ID.pem and ID.key."""
    authority = _load(ca)
    key = pki.new_key(_kind(kind))
    subject = pki.subject_name(station_id, authority.organization)
    cert = pki.issue(authority.cert, authority.key, subject, key.public_key(), days=days)
    files = _write(out, station_id, cert, key)
    console.print(f"station certificate CN={station_id}: {files[0]} and {files[1]}")
