"""The configuration file: checked whole before anything starts; [[sites]] fields it owns."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evflex.cli import app
from evflex.config import ConfigError, Settings, load_settings


def _problems(tmp_path, text: str) -> list[str]:
    cfg = tmp_path / "evflex.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg)
    return exc.value.problems


def test_unknown_keys_are_refused_with_the_nearest_valid_key(tmp_path):
    assert _problems(tmp_path, "heartbeat_intervall = 30\n") == [
        "evflex.toml: unknown key 'heartbeat_intervall' (did you mean 'heartbeat_interval'?)"
    ]
    assert _problems(tmp_path, "site_limit_kw = 30\n") == [
        "evflex.toml: unknown key 'site_limit_kw' "
        "(did you mean 'import_limit_kw' in a [[sites]] table?)"
    ]
    # inside a [[sites]] table: one line, not a second one for the missing limit
    text = '[[sites]]\nid = "depot"\nimport_limit_kw = 50\n[[sites]]\nid = "b"\nsite_limit_kw = 5\n'
    assert _problems(tmp_path, text) == [
        "evflex.toml: [[sites]] entry 2 (id 'b'): unknown key 'site_limit_kw' "
        "(did you mean 'import_limit_kw'?)"
    ]
    assert _problems(tmp_path, "[[circuits]]\nid = 'c'\nsite_id = 'depot'\nmax_curent_a = 5\n") == [
        "evflex.toml: [[circuits]] entry 1 (id 'c'): unknown key 'max_curent_a' "
        "(did you mean 'max_current_a'?)"
    ]
    with pytest.raises(ValueError, match="heartbeat_intervall"):
        Settings(heartbeat_intervall=5)  # a typo in code is caught as well


def test_every_problem_gets_one_line(tmp_path, monkeypatch):
    text = (
        'ocpp_port = "abc"\n'
        '[[sites]]\nid = "a"\nimport_limit_kw = -1\npolicy = "fastest"\n'
        '[[sites]]\nid = "a"\nimport_limit_kw = 5\n'
    )
    assert _problems(tmp_path, text) == [
        "evflex.toml: ocpp_port: Input should be a valid integer, unable to parse string as an "
        "integer",
        "evflex.toml: [[sites]] entry 1 (id 'a'): import_limit_kw: Input should be greater than "
        "or equal to 0",
        "evflex.toml: [[sites]] entry 1 (id 'a'): policy: Input should be 'equal', 'priority', "
        "'deadline' or 'optimal'",
    ]
    assert _problems(tmp_path, '[[sites]]\nid = "a"\nimport_limit_kw = 5\n' * 2) == [
        "evflex.toml: [[sites]]: id 'a' is given more than once"
    ]
    assert _problems(tmp_path, "ocpp_port = \n")[0].startswith("evflex.toml: not valid TOML:")
    monkeypatch.setenv("EVFLEX_HTTP_PORT", "eighty")
    assert _problems(tmp_path, "")[0].startswith("EVFLEX_HTTP_PORT: http_port: Input should")


@pytest.mark.parametrize(
    "text, line",
    [
        (
            "heartbeat_intervall = 30\n",
            "bad.toml: unknown key 'heartbeat_intervall' (did you mean 'heartbeat_interval'?)",
        ),
        (
            '[[sites]]\nid = "depot"\nimport_limit_kw = -50\n',
            "bad.toml: [[sites]] entry 1 (id 'depot'): import_limit_kw: Input should be greater "
            "than or equal to 0",
        ),
    ],
)
def test_serve_refuses_a_bad_config_before_touching_the_database(tmp_path, text, line):
    cfg = tmp_path / "bad.toml"
    db = tmp_path / "never.db"
    cfg.write_text(f'database_url = "sqlite+aiosqlite:///{db}"\n' + text)
    r = CliRunner().invoke(app, ["serve", "--config", str(cfg)])
    assert r.exit_code == 2
    assert r.output.splitlines() == [line]  # one line, no traceback
    assert not db.exists()
    r = CliRunner().invoke(app, ["user", "list", "--config", str(cfg)])
    assert r.exit_code == 2 and r.output.splitlines() == [line]
    r = CliRunner().invoke(app, ["serve", "--config", str(tmp_path / "none.toml")])
    assert r.exit_code == 2 and "config file not found" in r.output


async def test_configured_site_fields_belong_to_the_file(database_url):
    """What [[sites]] writes is applied at start and read-only in the API; the rest is kept."""
    from conftest import start_node

    async def node(sites):
        return await start_node(database_url, sites=sites, site_sample_s=0)

    rt, http = await node([{"id": "depot", "import_limit_kw": 50}])
    try:
        site = (await http.get("/api/v1/sites/depot")).json()
        assert site["import_limit_kw"] == 50 and site["managed_by_config"] == ["import_limit_kw"]
        r = await http.patch("/api/v1/sites/depot", json={"import_limit_kw": 20})
        assert r.status_code == 409
        assert "import_limit_kw is managed by the configuration file" in r.json()["detail"]
        r = await http.patch("/api/v1/sites/depot", json={"policy": "deadline", "voltage": 240})
        assert r.status_code == 200 and r.json()["import_limit_kw"] == 50
        r = await http.delete("/api/v1/sites/depot")
        assert r.status_code == 409 and "configuration file" in r.json()["detail"]
        r = await http.post("/api/v1/sites", json={"id": "yard", "import_limit_kw": 30})
        assert r.status_code == 201 and r.json()["managed_by_config"] == []
    finally:
        await http.aclose()
        await rt.stop()

    # A restart applies the file again and keeps what the API set outside it.
    rt, http = await node([{"id": "depot", "import_limit_kw": 60, "phases": 1}])
    try:
        site = (await http.get("/api/v1/sites/depot")).json()
        assert (site["import_limit_kw"], site["phases"]) == (60, 1)
        assert (site["policy"], site["voltage"]) == ("deadline", 240)
        assert site["managed_by_config"] == ["import_limit_kw", "phases"]
        assert (await http.get("/api/v1/sites/yard")).json()["import_limit_kw"] == 30
    finally:
        await http.aclose()
        await rt.stop()

    # A site that left the file is the API's again.
    rt, http = await node([])
    try:
        r = await http.patch("/api/v1/sites/depot", json={"import_limit_kw": 20})
        assert r.status_code == 200
        assert r.json()["import_limit_kw"] == 20 and r.json()["managed_by_config"] == []
    finally:
        await http.aclose()
        await rt.stop()


async def test_a_circuit_of_an_unknown_site_is_a_config_error(database_url):
    from conftest import start_node

    with pytest.raises(ConfigError, match="site 'nowhere' does not exist"):
        rt, http = await start_node(
            database_url, circuits=[{"id": "c1", "site_id": "nowhere", "max_current_a": 10}]
        )
