"""The command line of profile 3: ``evflex ca init / issue-server / issue-station``,
``evflex station add --security-profile --serial`` and ``evflex serve``'s TLS flags."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from typer.testing import CliRunner

from conftest import running_node
from evflex.cli import app
from evflex.config import ConfigError, load_settings
from evflex.security import pki
from security.tls_lab import boot


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


async def test_profile_3_from_the_command_line(tmp_path):
    db = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    pki_dir = str(tmp_path / "pki")
    steps = [
        ("ca", "init", "--out", pki_dir, "--org", "Lab CPO"),
        ("ca", "issue-server", "--ca", pki_dir, "--name", "127.0.0.1", "--out", pki_dir),
        ("ca", "issue-server", "--ca", pki_dir, "--name", "127.0.0.1", "--kind", "rsa",
         "--out", pki_dir),
        ("ca", "issue-station", "SN-77", "--ca", pki_dir, "--out", pki_dir),
        ("station", "add", "CS-CLI", "--security-profile", "3", "--serial", "SN-77",
         "--database-url", db),
    ]  # fmt: skip
    for step in steps:
        code, out = await asyncio.to_thread(cli, *step)
        assert code == 0, (step, out)
    code, out = await asyncio.to_thread(cli, "ca", "init", "--out", pki_dir)
    assert code == 1 and "not overwritten" in out
    code, out = await asyncio.to_thread(
        cli, "station", "add", "CS-P2", "--security-profile", "2", "--database-url", db
    )
    assert code == 2 and "needs a password" in out
    d = tmp_path / "pki"
    assert pki.names(pki.load_cert(d / "SN-77.pem")) == ("SN-77", "Lab CPO")
    async with running_node(
        db,
        verify=ssl.create_default_context(cafile=str(d / "ca.pem")),
        tls_cert=[d / "server-ec.pem", d / "server-rsa.pem"],
        tls_key=[d / "server-ec.key", d / "server-rsa.key"],
        tls_client_ca=[d / "ca.pem"],
        cpo_name="Lab CPO",
    ) as node:
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        ctx.load_cert_chain(d / "SN-77.pem", d / "SN-77.key")
        url = f"wss://127.0.0.1:{node.rt.ocpp_port}/ocpp/CS-CLI"
        assert await boot(url, "CS-CLI", "1.6", ctx) == "Accepted"
        st = await node.station("CS-CLI")
        assert (st["security_profile"], st["security_profile_reached"]) == (3, 3)


def test_serve_refuses_unusable_tls_files(tmp_path):
    code, out = cli(
        "serve", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}",
        "--ocpp-port", "0", "--http-port", "0",
        "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "missing.key"),
    )  # fmt: skip
    assert code == 2 and "cannot load certificate" in out
    code, out = cli("serve", "--tls-cert", "a.pem", "--ocpp-port", "0")
    assert code == 2 and "tls_cert and tls_key are paired in order" in out


def test_tls_settings_from_toml_and_environment(tmp_path, monkeypatch):
    toml = tmp_path / "evflex.toml"
    toml.write_text(
        'tls_cert = ["ec.pem", "rsa.pem"]\ntls_key = ["ec.key", "rsa.key"]\n'
        'tls_client_ca = ["ca.pem"]\ncpo_name = "Lab CPO"\n'
        'trusted_proxy = ["10.0.0.0/8"]\nclient_cert_header = "X-SSL-Cert"\n'
    )
    s = load_settings(toml)
    assert [p.name for p in s.tls_cert] == ["ec.pem", "rsa.pem"]
    assert (s.cpo_name, s.trusted_proxy, s.client_cert_header) == (
        "Lab CPO", ["10.0.0.0/8"], "X-SSL-Cert",
    )  # fmt: skip
    monkeypatch.setenv("EVFLEX_TRUSTED_PROXY", '["192.0.2.7"]')
    assert load_settings(toml).trusted_proxy == ["192.0.2.7"]
    monkeypatch.setenv("EVFLEX_TRUSTED_PROXY", '["not an address"]')
    with pytest.raises(ConfigError, match="trusted_proxy"):
        load_settings(toml)
    monkeypatch.delenv("EVFLEX_TRUSTED_PROXY")
    toml.write_text('tls_cert = ["ec.pem"]\ntls_key = ["ec.key"]\ntls_client_ca = ["ca.pem"]\n')
    with pytest.raises(ConfigError, match="tls_client_ca needs cpo_name"):
        load_settings(toml)
