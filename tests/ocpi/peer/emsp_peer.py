"""An independent OCPI 2.2.1 eMSP for the interop tests: ``extrawest-ocpi``'s application.

Run by the python of a virtual environment that holds ``extrawest-ocpi`` (it pins
FastAPI 0.101 and pydantic 1, so it cannot share the tests' environment)::

    python emsp_peer.py --country-code DE --party-id XWE

It binds a free port on 127.0.0.1, prints ``PORT <n>`` as its first line and serves:

- the library's own OCPI endpoints (``py_ocpi.get_application``): versions, version
  details, credentials and the eMSP's locations, sessions, cdrs, tariffs, tokens and
  commands, backed by ``Store``, an in-memory implementation of the library's ``Crud``,
  and ``Keys``, its ``Authenticator``;
- ``/control/...``: plumbing for the tests only (what it received; register with a
  node; push one of its tokens; send a command). Everything OCPI they do goes through the
  library's models, and the token push through the library's own push client.

The library keeps every CiString (country_code, party_id, ids, token uids) in lower
case: a model lower-cases it when it validates (``CI_STRING_LOWERCASE_PREFERENCE``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
from datetime import UTC, datetime
from typing import Any


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--country-code", default="DE")
    parser.add_argument("--party-id", default="XWE")
    parser.add_argument("--name", default="Extrawest peer")
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()


ARGS = _args()
SOCK = _bind(ARGS.port)
PORT = SOCK.getsockname()[1]
BASE = f"http://127.0.0.1:{PORT}"

# The library reads its settings from the environment when it is imported, and builds
# the URLs it advertises from them: set them first. Its working folder has no .env.
os.environ.update(
    ENVIRONMENT="production",
    OCPI_HOST=f"127.0.0.1:{PORT}",
    PROTOCOL="http",
    COUNTRY_CODE=ARGS.country_code,
    PARTY_ID=ARGS.party_id,
    PROJECT_NAME="extrawest-ocpi peer",
)

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from fastapi import Body, FastAPI, HTTPException  # noqa: E402
from fastapi.encoders import jsonable_encoder  # noqa: E402
from py_ocpi import get_application  # noqa: E402
from py_ocpi.core.adapter import BaseAdapter  # noqa: E402
from py_ocpi.core.authentication.authenticator import Authenticator  # noqa: E402
from py_ocpi.core.config import settings  # noqa: E402
from py_ocpi.core.crud import Crud  # noqa: E402
from py_ocpi.core.enums import Action, ModuleID, RoleEnum  # noqa: E402
from py_ocpi.core.push import push_object  # noqa: E402
from py_ocpi.core.schemas import Push, Receiver  # noqa: E402
from py_ocpi.core.utils import decode_string_base64, encode_string_base64  # noqa: E402
from py_ocpi.modules.commands.v_2_2_1.schemas import (  # noqa: E402
    CommandResponse,
    StartSession,
    StopSession,
)
from py_ocpi.modules.credentials.v_2_2_1.schemas import Credentials  # noqa: E402
from py_ocpi.modules.tokens.v_2_2_1.schemas import Token  # noqa: E402
from py_ocpi.modules.versions.enums import VersionNumber  # noqa: E402

V221 = VersionNumber.v_2_2_1
VERSIONS_URL = f"{BASE}/{settings.OCPI_PREFIX}/versions"
MODULES = [
    ModuleID.credentials_and_registration,
    ModuleID.locations,
    ModuleID.sessions,
    ModuleID.cdrs,
    ModuleID.tariffs,
    ModuleID.commands,
    ModuleID.tokens,
]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class State:
    """Everything the peer knows, in memory. It may be linked to several nodes at once
    (each test module's own): a partner is known by its versions URL, and every token it
    calls us with, and everything it sent us, by that URL."""

    token_a: set[str] = set()  # invitation tokens: a partner may register with one
    token_c: dict[str, str | None] = {}  # a token partners call us with -> partner's URL
    partners: dict[str, dict[str, Any]] = {}  # by versions URL: token we call it with, ...
    objects: dict[str, dict[tuple, dict]] = {m.value: {} for m in MODULES}  # (partner, ...)
    tokens: dict[str, dict] = {}  # our own tokens (the eMSP issues them), by lower uid
    requests: list[dict] = []  # every OCPI request received: method, path, status, ...


def _credentials(token: str) -> dict:
    """Our credentials as the library's model has them."""
    return Credentials(
        token=token,
        url=VERSIONS_URL,
        roles=[
            {
                "role": RoleEnum.emsp,
                "business_details": {"name": ARGS.name},
                "party_id": settings.PARTY_ID,
                "country_code": settings.COUNTRY_CODE,
            }
        ],
    ).dict()


def _caller(args: tuple, kwargs: dict) -> str | None:
    """The versions URL of the partner that made this request (by its token)."""
    token = kwargs.get("auth_token") or (args[0] if args else None)
    return State.token_c.get(token)


def _key(module: str, id: Any, args: tuple, kw: dict) -> tuple:
    if module in (ModuleID.locations, ModuleID.sessions, ModuleID.tariffs):
        return (
            _caller(args, kw),
            str(kw.get("country_code", "")).lower(),
            str(kw.get("party_id", "")).lower(),
            str(id).lower(),
        )
    return (_caller(args, kw), str(id).lower())


def _link(credentials: dict, endpoints: list, version_url: str | None = None) -> None:
    State.partners[credentials["url"]] = {
        "token": credentials["token"],
        "url": credentials["url"],
        "roles": credentials["roles"],
        "version_url": version_url,
        "endpoints": endpoints,
        "registered_at": now(),
    }


class Store(Crud):
    """The library's Crud, in memory: what partners push is kept as they sent it (after
    the library's models validated it)."""

    async def get(self, module, role, id, *args, **kwargs):
        if module == ModuleID.credentials_and_registration:
            return _credentials(id) if id in State.token_c else None
        if module == ModuleID.tokens:
            return State.tokens.get(str(id).lower())
        return State.objects[module.value].get(_key(module, id, args, kwargs))

    async def list(self, module, role, filters, *args, **kwargs):
        items = (
            list(State.tokens.values())
            if module == ModuleID.tokens
            else list(State.objects[module.value].values())
        )
        offset, limit = filters["offset"], filters["limit"]
        page = items[offset : offset + limit]
        return page, len(items), offset + limit >= len(items)

    async def create(self, module, role, data, *args, **kwargs):
        if module == ModuleID.credentials_and_registration:
            # a partner registers with one of our invitation tokens (token A)
            State.token_a.discard(kwargs.get("auth_token"))
            return self._new_partner(data)
        key = _key(module, data.get("id"), args, kwargs)
        State.objects[module.value][key] = data
        return data

    async def update(self, module, role, data, id, *args, **kwargs):
        if module == ModuleID.credentials_and_registration:
            State.token_c.pop(kwargs.get("auth_token"), None)  # its old token C
            return self._new_partner(data)
        key = _key(module, id, args, kwargs)
        State.objects[module.value][key] = data
        return data

    async def delete(self, module, role, id, *args, **kwargs):
        if module == ModuleID.credentials_and_registration:
            State.partners.pop(State.token_c.pop(id, None), None)
            return
        State.objects[module.value].pop(_key(module, id, args, kwargs), None)

    async def do(self, module, role, action, *args, data=None, **kwargs):
        if action == Action.authorize_token:
            token = State.tokens.get(str(data["token_uid"]).lower())
            allowed = "ALLOWED" if token and token["valid"] else "NOT_ALLOWED"
            return {"allowed": allowed, "token": token, "location": data["location_reference"]}
        return None

    @staticmethod
    def _new_partner(data: dict) -> dict:
        # the library passes the partner's version details, not where it found them
        _link(data["credentials"], data["endpoints"].get("endpoints", []))
        token_c = secrets.token_urlsafe(32)
        State.token_c[token_c] = data["credentials"]["url"]
        return _credentials(token_c)


class Keys(Authenticator):
    """The library's Authenticator over our tokens A and C."""

    @classmethod
    async def get_valid_token_c(cls) -> list[str]:
        return list(State.token_c)

    @classmethod
    async def get_valid_token_a(cls) -> list[str]:
        return list(State.token_a)


class Recorder:
    """ASGI middleware: notes every OCPI request: who sent it (the partner's versions URL),
    method, path, HTTP status, the body and the answer."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/ocpi"):
            return await self.app(scope, receive, send)
        body, answer, status = [], [], []
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        caller = State.token_c.get(_token_of(headers.get("authorization", "")))

        async def receive_():
            message = await receive()
            body.append(message.get("body", b""))
            return message

        async def send_(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        finally:
            State.requests.append(
                {
                    "partner": caller,
                    "method": scope["method"],
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode(),
                    "status": status[0] if status else None,
                    "body": _json(b"".join(body)),
                    "answer": _json(b"".join(answer)),
                }
            )


def _token_of(header: str) -> str | None:
    try:
        return decode_string_base64(header.split()[1])
    except (IndexError, ValueError):
        return None


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")[:2000]


app: FastAPI = get_application(
    version_numbers=[V221],
    roles=[RoleEnum.emsp],
    crud=Store(),
    modules=MODULES,
    authenticator=Keys,
    adapter=BaseAdapter,
)
app.add_middleware(Recorder)


def _auth(token: str) -> dict:
    return {"Authorization": f"Token {encode_string_base64(token)}"}


def _partner(url: str) -> dict:
    if url not in State.partners:
        raise HTTPException(404, f"no partner registered with versions URL {url}")
    return State.partners[url]


def _endpoint(partner: dict, identifier: str, role: str = "RECEIVER") -> str:
    for endpoint in partner.get("endpoints", []):
        if endpoint["identifier"] == identifier and endpoint["role"] == role:
            return endpoint["url"]
    raise HTTPException(409, f"the partner has no {identifier} {role} endpoint")


def _answer(response: httpx.Response) -> dict:
    return {"status_code": response.status_code, "body": _json(response.content)}


async def _version_details(client: httpx.AsyncClient, versions_url: str, token: str) -> dict:
    """GET versions, then the 2.2.1 details, with this token; the answers as they came."""
    versions = await client.get(versions_url, headers=_auth(token))
    out = {"versions": _answer(versions)}
    if versions.status_code != 200:
        return out
    urls = [v["url"] for v in versions.json()["data"] if v["version"] == V221.value]
    if not urls:
        return out
    details = await client.get(urls[0], headers=_auth(token))
    out.update(version_url=urls[0], details=_answer(details))
    return out


def _mine(partner: str | None, key: tuple) -> bool:
    return partner is None or key[0] == partner


@app.get("/control/state")
async def control_state(partner: str | None = None):
    """What we know; with ``partner`` (a versions URL): only what that partner sent."""
    return jsonable_encoder(
        {
            "port": PORT,
            "versions_url": VERSIONS_URL,
            "country_code": settings.COUNTRY_CODE,
            "party_id": settings.PARTY_ID,
            "partners": State.partners,
            "objects": {
                m: [v for k, v in objects.items() if _mine(partner, k)]
                for m, objects in State.objects.items()
            },
            "tokens": list(State.tokens.values()),
            "requests": [r for r in State.requests if partner is None or r["partner"] == partner],
        }
    )


@app.post("/control/reset")
async def control_reset():
    """Forget every partner, token and object."""
    State.token_a.clear()
    State.token_c.clear()
    State.partners.clear()
    for objects in State.objects.values():
        objects.clear()
    State.tokens.clear()
    State.requests.clear()
    return {"ok": True}


@app.post("/control/invite")
async def control_invite():
    """A fresh token A: a node may register with us with it (POST our credentials)."""
    token = secrets.token_urlsafe(24)
    State.token_a.add(token)
    return {"versions_url": VERSIONS_URL, "token": token}


@app.post("/control/register-with")
async def control_register_with(versions_url: str = Body(...), token: str = Body(...)):
    """We register with a node that gave us ``token`` (its token A), as the 2.2.1 sender:
    GET its versions and details, POST our credentials (with a token B for it to call us
    with), keep the token C it answers with, then GET its versions again with token C."""
    async with httpx.AsyncClient(timeout=15) as client:
        found = await _version_details(client, versions_url, token)
        if "details" not in found or found["details"]["status_code"] != 200:
            return {"ok": False, "step": "versions", **found}
        endpoints = found["details"]["body"]["data"]["endpoints"]
        credentials_url = [e["url"] for e in endpoints if e["identifier"] == "credentials"][0]
        token_b = secrets.token_urlsafe(32)
        State.token_c[token_b] = versions_url
        ours = Credentials(**_credentials(token_b))
        posted = await client.post(credentials_url, json=ours.dict(), headers=_auth(token))
        result = {"posted": jsonable_encoder(ours.dict()), "answer": _answer(posted), **found}
        if posted.status_code != 200 or posted.json().get("status_code") != 1000:
            State.token_c.pop(token_b, None)
            return {"ok": False, "step": "credentials", **result}
        theirs = Credentials(**posted.json()["data"])  # their answer, checked by the model
        State.token_c[token_b] = theirs.url
        again = await _version_details(client, theirs.url, theirs.token)
        result["with_token_c"] = again
        if "details" not in again or again["details"]["status_code"] != 200:
            return {"ok": False, "step": "versions with token C", **result}
        _link(theirs.dict(), again["details"]["body"]["data"]["endpoints"], again["version_url"])
        return {"ok": True, **result}


@app.post("/control/unregister")
async def control_unregister(partner: str = Body(..., embed=True)):
    """DELETE our credentials at the partner (the 2.2.1 way to end a registration)."""
    linked = _partner(partner)
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.delete(
            _endpoint(linked, "credentials"), headers=_auth(linked["token"])
        )
    if answer.status_code == 200:
        State.partners.pop(partner, None)
    return _answer(answer)


@app.post("/control/tokens")
async def control_tokens(
    uid: str = Body(...),
    whitelist: str = Body("ALWAYS"),
    valid: bool = Body(True),
    kind: str = Body("RFID"),
):
    """Issue one of our tokens (the library's Token model: its uid comes out lower case)."""
    token = Token(
        country_code=settings.COUNTRY_CODE,
        party_id=settings.PARTY_ID,
        uid=uid,
        type=kind,
        contract_id=f"{settings.COUNTRY_CODE}-{settings.PARTY_ID}-C{uid}"[:36],
        visual_number=uid,
        issuer=ARGS.name,
        valid=valid,
        whitelist=whitelist,
        last_updated=now(),
    ).dict()
    State.tokens[token["uid"].lower()] = token
    return jsonable_encoder(token)


@app.post("/control/push-token")
async def control_push_token(partner: str = Body(...), uid: str = Body(...)):
    """Push one of our tokens to the partner with the library's own push client
    (``py_ocpi.core.push.push_object``: GET its version details, PUT the token to its
    tokens RECEIVER endpoint)."""
    linked = _partner(partner)
    if not linked.get("version_url"):
        async with httpx.AsyncClient(timeout=15) as client:
            found = await _version_details(client, linked["url"], linked["token"])
        linked["version_url"] = found.get("version_url")
    push = Push(
        module_id=ModuleID.tokens,
        object_id=uid,
        receivers=[Receiver(endpoints_url=linked["version_url"], auth_token=linked["token"])],
    )
    try:
        result = await push_object(V221, push, Store(), BaseAdapter)
    except Exception as exc:  # the library raises on a non-JSON answer, a bad URL, ...
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    answers = [jsonable_encoder(r) for r in result.receiver_responses]
    ok = all(
        200 <= a["status_code"] < 300 and a["response"].get("status_code") == 1000 for a in answers
    )
    return {"ok": ok, "responses": answers}


@app.post("/control/put-token")
async def control_put_token(partner: str = Body(...), uid: str = Body(...)):
    """PUT one of our tokens to the partner's tokens RECEIVER endpoint: the request the
    library's push makes (its Token model, our settings' party in the path), with the URL
    joined by a slash whether or not the partner's endpoint URL ends in one."""
    linked = _partner(partner)
    token = Token(**State.tokens[uid.lower()])
    url = _endpoint(linked, "tokens").rstrip("/")
    url += f"/{settings.COUNTRY_CODE}/{settings.PARTY_ID}/{uid}"
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.put(
            url, json=jsonable_encoder(token.dict()), headers=_auth(linked["token"])
        )
    out = {"url": url, **_answer(answer)}
    body = out["body"] if isinstance(out["body"], dict) else {}
    out["ok"] = answer.is_success and body.get("status_code") == 1000
    return out


@app.post("/control/command")
async def control_command(
    partner: str = Body(...),
    command: str = Body("START_SESSION"),
    location_id: str | None = Body(None),
    evse_uid: str | None = Body(None),
    connector_id: str | None = Body(None),
    token_uid: str | None = Body(None),
    session_id: str | None = Body(None),
):
    """Send a command to the partner's commands RECEIVER endpoint, its body built by the
    library's model, with a response_url at our own commands endpoint (the library's
    receiver of the CommandResult)."""
    linked = _partner(partner)
    uid = secrets.token_hex(8)
    response_url = f"{BASE}/{settings.OCPI_PREFIX}/emsp/{V221.value}/commands/{uid}"
    if command == "START_SESSION":
        body = StartSession(
            response_url=response_url,
            token=State.tokens[token_uid.lower()],
            location_id=location_id,
            evse_uid=evse_uid,
            connector_id=connector_id,
            authorization_reference=uid,
        ).dict(exclude_none=True)
    elif command == "STOP_SESSION":
        body = StopSession(response_url=response_url, session_id=session_id).dict()
    else:
        raise HTTPException(400, f"unsupported command {command}")
    url = _endpoint(linked, "commands").rstrip("/") + f"/{command}"
    async with httpx.AsyncClient(timeout=15) as client:
        answer = await client.post(url, json=jsonable_encoder(body), headers=_auth(linked["token"]))
    out = {"uid": uid, "url": url, "sent": jsonable_encoder(body), **_answer(answer)}
    try:
        out["response"] = CommandResponse(**answer.json()["data"]).dict()
        out["ok"] = answer.status_code == 200 and answer.json()["status_code"] == 1000
    except Exception as exc:  # not a CommandResponse the library accepts
        out.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    return jsonable_encoder(out)


@app.get("/control/command-result/{uid}")
async def control_command_result(uid: str):
    """The CommandResult a partner POSTed to our response_url for command ``uid``, if any."""
    for key, result in State.objects[ModuleID.commands.value].items():
        if key[-1] == uid.lower():
            return jsonable_encoder(result)
    return None


def main() -> None:
    print(f"PORT {PORT}", flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    asyncio.run(uvicorn.Server(config).serve(sockets=[SOCK]))


if __name__ == "__main__":
    sys.exit(main())
