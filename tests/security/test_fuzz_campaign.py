"""A fuzz campaign in small: hostile OCPP frames and API requests find nothing.

One run of ``evflex bench fuzz``'s campaign (a few thousand OCPP inputs over
1.6, 2.0.1 and 2.1, a few hundred API requests, a fixed seed) against
``evflex serve`` in a child process, on SQLite and on PostgreSQL; each test
reads one verdict of that run. The full 100,000 inputs are the slow variant.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from evflex.bench.fuzz import FuzzConfig, run_fuzz
from evflex.bench.fuzzgen import CATEGORIES, ocpp_schemas
from evflex.bench.fuzzhttp import BODY_KINDS, PUBLIC_OPERATIONS
from evflex.bench.ocpp import PostgresUnavailable, fresh_postgres_database
from evflex.cli import app

SEED = 20261207
PG_URL = os.environ.get(
    "EVFLEX_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


# The PostgreSQL campaign is benchmark-sized (a node in a child process, 3,000 inputs): -m slow.
@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]
)
def campaign(request, tmp_path_factory) -> Iterator[dict]:
    """One run per database kind (PostgreSQL: a fresh database, skipped if none answers)."""
    out = tmp_path_factory.mktemp("fuzz") / "fuzz.json"
    config = FuzzConfig(
        inputs=3000, good_stations=3, seed=SEED, http_cases=600, baseline=1.0, out=out
    )
    if request.param == "sqlite":
        yield run_fuzz(config)
        return
    try:
        with fresh_postgres_database(PG_URL) as url:
            yield run_fuzz(replace(config, database_url=url))
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server reachable: {exc}")


def _wrong(result: dict, category: str) -> dict:
    return {k: n for k, n in result["outcomes"][category].items() if k != "right"}


def test_the_campaign_sends_every_category_on_every_version(campaign):
    assert campaign["inputs"] >= 3000
    assert set(campaign["inputs_per_category"]) == set(CATEGORIES)
    assert set(campaign["inputs_per_version"]) == {"1.6", "2.0.1", "2.1"}
    assert campaign["good_stations"]["during"]["requests"] > 0  # others were served meanwhile


def test_every_action_of_every_version_has_a_valid_template(campaign):
    for version, actions in campaign["actions"].items():
        assert actions["without_template"] == []
        assert actions["with_template"] == len(ocpp_schemas(version)) > 20


def test_the_server_never_died(campaign):
    process = campaign["process"]
    assert process["pid_unchanged"] and process["alive_at_end"]
    assert process["health_status"] == 200 and process["new_station_served"]
    assert campaign["good_stations"]["errors"] == {}


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_input_of_a_category_gets_the_right_answer(campaign, category):
    wrong = _wrong(campaign, category)
    samples = [s for s in campaign["samples"] if f" {category} " in s][:5]
    assert not wrong, (wrong, samples)


def test_no_internal_error(campaign):
    assert campaign["internal_errors"] == 0, campaign["samples"][:5]


def test_no_stray_answer(campaign):
    assert campaign["unexpected_answers"] == 0, campaign["samples"][:5]


def test_refused_input_leaves_the_database_unchanged(campaign):
    db = campaign["database"]
    assert db["refused_input_changed_nothing"], db["violations"]


def test_no_non_finite_number_is_stored(campaign):
    assert campaign["database"]["non_finite"] == {}


def test_the_event_log_still_reads(campaign):
    assert campaign["events_status"] == 200


@pytest.mark.parametrize("kind", BODY_KINDS)
def test_no_api_request_meets_a_server_error(campaign, kind):
    counts = campaign["http"]["per_kind"].get(kind, {})
    assert sum(counts.values()) > 0, f"no {kind} request was sent"
    bad = {k: n for k, n in counts.items() if k in ("5xx", "dropped")}
    samples = [s for s in campaign["http"]["samples"] if "5" in s[:80]][:5]
    assert not bad, (bad, samples)


def test_without_credentials_only_public_operations_succeed(campaign):
    assert campaign["http"]["statuses"].get("401", 0) > 0
    assert set(campaign["http"]["unauthenticated_2xx"]) <= PUBLIC_OPERATIONS
    assert campaign["checks"]["api_refuses_without_credentials"]


def test_every_refusal_of_the_api_says_why(campaign):
    http = campaign["http"]
    assert http["without_reason"] == 0, http["samples"][:5]


@pytest.mark.slow
def test_full_campaign_of_100000_inputs(tmp_path):
    result = run_fuzz(FuzzConfig(inputs=100_000, seed=SEED, out=tmp_path / "fuzz.json"))
    assert result["checks"]["process_alive"]
    assert result["inputs"] >= 100_000
    assert result["internal_errors"] == 0
    assert result["wrong_answers"] == 0, result["samples"][:10]
    assert result["database"]["ok"], result["database"]["violations"]
    assert result["http"]["server_errors"] == 0, result["http"]["samples"][:10]


def test_the_command_says_what_is_wrong_with_its_options():
    result = CliRunner().invoke(app, ["bench", "fuzz", "--inputs", "5"])
    assert result.exit_code == 2
    assert "inputs must be at least" in result.output
