"""The API docs: served from the package, with security schemes and a body per command."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from evflex.app import Runtime
from evflex.config import Settings
from evflex.csms import commands
from evflex.web.auth import OPERATOR_COMMANDS


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    """The HTTP app alone, in process (nothing of it here needs the store)."""
    rt = Runtime(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"))
    transport = httpx.ASGITransport(app=rt.api)
    async with httpx.AsyncClient(transport=transport, base_url="http://evflex") as http:
        yield rt, http
    await rt.engine.dispose()


async def test_docs_page_loads_only_local_assets(api):
    _, http = api
    r = await http.get("/docs")
    assert r.status_code == 200
    assert not re.search(r"https?://", r.text), "the docs page must work offline"
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", r.text)
    assert urls and all(u.startswith("/static/vendor/swagger-ui/") for u in urls), urls
    want = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
    for url in urls:
        asset = await http.get(url)
        assert asset.status_code == 200, url
        ext = url[url.rindex(".") :]
        assert want[ext] in asset.headers["content-type"], (url, asset.headers["content-type"])
    assert (await http.get("/redoc")).status_code == 404  # not offered (it needs a CDN)


async def test_openapi_declares_the_token_and_the_session_cookie(api):
    _, http = api
    spec = (await http.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["session"]["in"] == "cookie" and schemes["session"]["name"] == "evflex_session"
    guarded = spec["paths"]["/api/v1/stations"]["get"]
    assert {"bearer": []} in guarded["security"] and {"session": []} in guarded["security"]
    assert "security" in spec["paths"]["/api/v1/sites/{site_id}"]["patch"]
    assert "security" not in spec["paths"]["/api/v1/health"]["get"]  # open to all


async def test_each_command_publishes_its_body_and_bad_bodies_are_422(api):
    rt, http = api
    spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name, model in commands.COMMAND_BODIES.items():
        op = spec["paths"][f"/api/v1/stations/{{station_id}}/commands/{name}"]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        schema = schemas[ref.removeprefix("#/components/schemas/")]
        assert set(schema.get("properties", {})) == set(model.model_fields), name
        assert op["requestBody"]["required"] == bool(schema.get("required")), name
        for sub in re.findall(r'"#/components/schemas/(\w+)"', str(schema).replace("'", '"')):
            assert sub in schemas, (name, sub)
    # the REST API's commands are one path each (OCPI's /ocpi/... routes are OCPI's own)
    assert not any("{command}" in p for p in spec["paths"] if p.startswith("/api/"))

    admin = {"Authorization": f"Bearer {rt.auth.ephemeral_token('admin')}"}
    url = "/api/v1/stations/CP1/commands/"
    r = await http.post(url + "reset", json={"type": "medium"}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["type"]
    r = await http.post(url + "remote-start", json={}, headers=admin)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["id_token"]
    r = await http.post(url + "reset", content=b"{nope", headers=admin)
    assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
    r = await http.post(url + "explode", json={}, headers=admin)
    assert r.status_code == 404 and "unknown command" in r.json()["detail"]

    # The per-command routes keep the roles: day-to-day commands for operators only.
    operator = {"Authorization": f"Bearer {rt.auth.ephemeral_token('operator')}"}
    for name in commands.COMMAND_BODIES:
        r = await http.post(url + name, content=b"{nope", headers=operator)
        assert r.status_code == (400 if name in OPERATOR_COMMANDS else 403), name
