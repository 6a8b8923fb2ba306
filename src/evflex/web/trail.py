"""The API's audit: every write, every refusal and every CSV export becomes an audit row.

:class:`AuditTrail` (pure ASGI, the outermost middleware of the app) watches
each ``/api/v1`` request: a POST, PUT, PATCH or DELETE (login, logout and the
driver page's included), a GET of a CSV export, and any request refused with
401, 403 or 429. It notes who (the principal :func:`evflex.web.auth.authorize`
found, the user of a login, ``driver`` on the driver page, ``station:<id>``
for a station's upload, else ``anonymous``), the source address (behind a trusted proxy: the client), the
route, a readable action (``station create``, ``command reset``), the target
(from the path, or the body of a create), the request body without secrets,
the status, a station command's answer, the reason of a refusal or failure
and the time taken. Reads are not audited.

The row is queued to the store's writer after the answer is sent: the request
never waits for it, and a row the store cannot take is logged, never raised.
Once stored it is published as ``audit.appended``. The refusals' ``Security``
events are recorded as before (the audit row is written alongside).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from evflex.security import trail
from evflex.web.auth import API, SESSION_COOKIE

log = logging.getLogger(__name__)

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_CAP = 16_384  # bytes of a request body read for its summary
ANSWER_CAP = 8_192  # bytes of an answer read for its reason or a station's answer
LOGIN, LOGOUT = f"{API}/auth/login", f"{API}/auth/logout"
DRIVER = f"{API}/driver/"
UPLOADS = f"{API}/uploads/"  # a station's upload of diagnostics or logs (a token in the path)
_COMMAND = re.compile(r"/commands/(?:\{command\}|([A-Za-z0-9-]+))$")
#: Last path words that name what is done rather than a thing (``POST .../reload``).
VERBS = frozenset({
    "reload", "acknowledge", "ack", "revoke", "disable", "enable", "reset", "reset-password",
    "reset-totp", "verify", "test", "cancel", "start", "stop", "retry", "resolve", "mute",
    "unmute", "rotate", "renew", "sign", "send",
})  # fmt: skip
_VERB_OF = {"POST": "create", "PUT": "set", "PATCH": "update", "DELETE": "delete"}
#: The names of path parameters and body keys in a target ("station CP-1").
_NOUNS = {"tx_pk": "transaction", "id_token": "id-token", "username": "user"}
_BODY_TARGETS = ("station_id", "site_id", "username", "id_token")


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def action_of(method: str, route: str | None, path: str, params: dict[str, Any]) -> str:
    """A readable name for ``method route``: ``station create``, ``command reset``..."""
    if path == LOGIN:
        return "login"
    if path == LOGOUT:
        return "logout"
    template = route or path
    command = _COMMAND.search(template)
    if command:
        return f"command {command.group(1) or params.get('command', '?')}"
    words = [w for w in template.removeprefix(API).split("/") if w]
    driver = bool(words) and words[0] == "driver"
    words = words[1:] if driver else words
    literals = [w for w in words if not w.startswith("{")]
    if not literals:
        return method.lower()
    last = literals[-1]
    if method == "GET" and last.endswith(".csv"):
        verb, noun = "export", _singular(last.removesuffix(".csv"))
    elif method in ("GET", "HEAD", "OPTIONS"):  # a refused read
        verb, noun = "read", last if words[-1] == last else _singular(last)
    elif words[-1].startswith("{"):  # the route names one thing
        verb = {"POST": "create", "DELETE": "delete"}.get(method, "update")
        noun = _singular(last)
    elif method == "POST" and last in VERBS and len(literals) > 1:
        verb, noun = last, _singular(literals[-2])
    elif method == "POST" and not last.endswith("s"):  # a setting: .../priority
        verb, noun = "set", last
    else:
        verb, noun = _VERB_OF.get(method, method.lower()), _singular(last)
    return ("driver " if driver else "") + f"{noun} {verb}"


def _noun(name: str) -> str:
    return _NOUNS.get(name, name.removesuffix("_id").replace("_", "-"))


def _value(name: str, value: Any) -> str:
    text = str(value)
    return trail.mask(text) if trail.secret_key(name) else text


def target_of(params: dict[str, Any], data: Any, route: str | None) -> str | None:
    """What the request acts on: its path's parameters, or the body of a create."""
    named = [f"{_noun(k)} {_value(k, v)}" for k, v in params.items() if k != "command"]
    if named:
        return " ".join(named)
    if not isinstance(data, dict):
        return None
    if "id" in data and route:
        literals = [w for w in route.removeprefix(API).split("/") if w and w[0] != "{"]
        if literals:
            return f"{_singular(literals[-1])} {data['id']}"
    for key in _BODY_TARGETS:
        if key in data and isinstance(data[key], str | int):
            return f"{_noun(key)} {_value(key, data[key])}"
    return None


def masked_path(path: str, params: dict[str, Any]) -> str:
    """The concrete path with secret-named parameters (card numbers, tokens) masked."""
    for k, v in params.items():
        if trail.secret_key(k) and str(v):
            path = path.replace(f"/{v}", f"/{trail.mask(str(v))}")
    return path


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


def _body(request: Request, raw: bytes) -> Any:
    """The request body as data; a body that is no JSON as its type and size only."""
    data = _json(raw)
    if data is None and raw.strip():
        size = request.headers.get("content-length", str(len(raw)))
        return {"content_type": request.headers.get("content-type", ""), "bytes": size}
    return data


def reason_of(detail: Any) -> str | None:
    """The refusal's or failure's reason from ``{"detail": ...}`` (a 422's inputs not kept)."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for e in detail[:5]:
            if isinstance(e, dict):
                loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {e.get('msg', '')}" if loc else str(e.get("msg", "")))
        return "; ".join(parts) or None
    return None


def _answer(data: Any) -> str | None:
    """A station command's answer status (``{"response": {"status": "Accepted"}}``)."""
    if isinstance(data, dict) and isinstance(data.get("response"), dict):
        status = data["response"].get("status")
        return status if isinstance(status, str) else None
    return None


def _unnamed(scope: Scope, request: Request) -> bool:
    """A request with credentials whose principal the guard did not note (a 403 for its role
    or CSRF token, a 405, a body the input guard refused...)."""
    if "principal" in scope["state"] or scope["path"].startswith(DRIVER):
        return False
    return "authorization" in request.headers or SESSION_COOKIE in request.cookies


def is_export(scope: Scope) -> bool:
    return scope["path"].endswith(".csv") or b"format=csv" in scope.get("query_string", b"")


class AuditTrail:
    """ASGI middleware: the audit row of each write, refusal and export (module doc)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API + "/"):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        write = method in WRITES
        export = method == "GET" and is_export(scope)
        body, answer = bytearray(), bytearray()
        status = 500
        keep_answer = False

        async def receive_noted() -> Message:
            message = await receive()
            if write and message["type"] == "http.request" and len(body) < BODY_CAP:
                body.extend(message.get("body", b"")[: BODY_CAP - len(body)])
            return message

        async def send_noted(message: Message) -> None:
            nonlocal status, keep_answer
            if message["type"] == "http.response.start":
                status = message["status"]
                keep_answer = status >= 400 or (write and "/commands/" in scope["path"])
                keep_answer = keep_answer or scope["path"] == LOGIN
            elif message["type"] == "http.response.body" and keep_answer:
                answer.extend(message.get("body", b"")[: max(0, ANSWER_CAP - len(answer))])
            await send(message)

        scope.setdefault("state", {})
        rt = scope["app"].state.runtime
        request = Request(scope)
        who = None
        if scope["path"] == LOGOUT and request.cookies.get(SESSION_COOKIE):
            who = await rt.auth.principal(request)  # the session ends with the request
        started = time.perf_counter()
        try:
            await self.app(scope, receive_noted, send_noted)
        finally:
            took_ms = (time.perf_counter() - started) * 1000.0
            if write or export or status in trail.REFUSED:
                try:
                    if who is None and status >= 400 and _unnamed(scope, request):
                        who = await rt.auth.principal(request)  # refused before or after auth
                    row = self._row(request, rt, who, status, bytes(body), bytes(answer), took_ms)
                    fut = rt.writer.submit_nowait(lambda s: trail.append(s, row))
                    fut.add_done_callback(lambda f: _published(rt, f))
                except Exception:
                    log.exception("audit row not recorded: %s %s", method, scope["path"])

    @staticmethod
    def _row(
        request: Request, rt: Any, who: Any, status: int, body: bytes, answer: bytes, took_ms: float
    ) -> dict[str, Any]:
        scope = request.scope
        route = getattr(scope.get("route"), "path", None)
        params = dict(scope.get("path_params") or {})
        path = scope["path"]
        data = _body(request, body)
        target = target_of(params, data, route)
        if scope.get("query_string"):
            query = dict(request.query_params)
            data = {"query": query, "body": data} if data is not None else {"query": query}
        got = _json(answer) if answer else None
        principal = scope["state"].get("principal") or who
        actor, kind, role = "anonymous", "anonymous", None
        if principal is not None:
            prefix = "token:" if principal.kind == "token" else ""
            actor, kind, role = prefix + principal.name, principal.kind, principal.role
        elif path == LOGIN and isinstance(data, dict):
            name = str(data.get("username", ""))
            target = f"user {name}"
            if status < 300 and isinstance(got, dict):
                actor, kind, role = name, "session", got.get("role")
        elif path.startswith(DRIVER):
            actor, kind = "driver", "driver"
        elif path.startswith(UPLOADS) and "station_id" in params:
            actor, kind = f"station:{params['station_id']}", "station"
        return trail.entry(
            action=action_of(request.method, route, path, params),
            actor=actor,
            actor_kind=kind,
            outcome=trail.outcome(status),
            data=data,
            role=role,
            source=rt.auth.source(request),
            method=request.method,
            route=route,
            path=masked_path(path, params),
            target=target,
            status=status,
            answer=_answer(got) if status < 300 else None,
            reason=reason_of(got.get("detail"))
            if status >= 400 and isinstance(got, dict)
            else None,
            duration_ms=took_ms,
        )


def _published(rt: Any, fut: Any) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return  # the writer logged why
    rt.bus.publish("audit.appended", None, **trail.shown(fut.result()))
