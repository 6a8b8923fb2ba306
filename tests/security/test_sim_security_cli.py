"""``evflex sim`` with security flags, run as a command against a TLS node on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from evflex.security import pki
from security.tls_lab import CPO, new_lab, register, tls_node

lab = pytest.fixture(new_lab)
EVFLEX = str(Path(sys.executable).parent / "evflex")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite+aiosqlite:///{tmp_path / 'evflex.db'}"


async def evflex_sim(node, *flags: str) -> tuple[int, str]:
    """Run ``evflex sim`` for 6 real seconds with two stations: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        EVFLEX, "sim", "--url", f"ws://127.0.0.1:{node.rt.ocpp_port}/ocpp",
        "--stations", "2", "--evses", "1", "--speed", "60", "--hours", "0.1",
        "--v201-share", "0.5", *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={"COLUMNS": "200", "PATH": str(Path(sys.executable).parent)},
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


def row(output: str, item: str) -> str:
    line = next(x for x in output.splitlines() if f" {item} " in x)
    return line.split("│")[-2].strip()


async def test_a_profile_3_fleet_with_a_certificate_per_station(sqlite_url, lab, tmp_path):
    certs = tmp_path / "certs"
    for sid in ("SIM0001", "SIM0002"):
        key = pki.new_key()
        cert = lab.ca.sign_csr(pki.make_csr(key, sid, CPO))
        pki.write_pem(certs / f"{sid}.pem", pki.cert_pem(cert))
        pki.write_pem(certs / f"{sid}.key", pki.key_pem(key), private=True)
    async with tls_node(sqlite_url, lab) as node:
        for sid in ("SIM0001", "SIM0002"):
            await register(node, sid, 3, password=None)
        code, out = await evflex_sim(
            node, "--security-profile", "3", "--ca", str(lab.ca_file),
            "--client-cert", f"{certs}/{{id}}.pem", "--client-key", f"{certs}/{{id}}.key",
        )  # fmt: skip
        assert code == 0, out
        assert row(out, "stations booted") == "2" and row(out, "stations refused") == "0"
        for sid in ("SIM0001", "SIM0002"):
            assert (await node.station(sid))["security_profile_reached"] == 3


async def test_an_attacking_fleet_is_refused_and_the_command_says_so(sqlite_url, lab):
    async with tls_node(sqlite_url, lab) as node:
        for sid in ("SIM0001", "SIM0002"):
            await register(node, sid, 3, password=None)
        code, out = await evflex_sim(
            node, "--security-profile", "3", "--ca", str(lab.ca_file), "--cpo-name", CPO,
            "--attack", "wrong-ca",
        )  # fmt: skip
        assert code == 0, out  # every attacker was refused
        assert row(out, "stations booted") == "0" and row(out, "stations refused") == "2"
        r = await node.http.get("/api/v1/events", params={"kind": "Security", "limit": 100})
        assert any(e["type"] == "InvalidCertificate" for e in r.json())


async def test_attack_names_are_checked(sqlite_url, lab):
    async with tls_node(sqlite_url, lab) as node:
        code, out = await evflex_sim(node, "--attack", "sneaky")
        assert code == 2 and "wrong-ca, expired, other-station, downgrade" in out
        # a certificate file that is not there is named, not a traceback
        code, out = await evflex_sim(
            node, "--security-profile", "3", "--client-cert", "nowhere/{id}.pem",
            "--client-key", "nowhere/{id}.key",
        )  # fmt: skip
        assert code == 2 and "no such file: nowhere/" in out and "Traceback" not in out
