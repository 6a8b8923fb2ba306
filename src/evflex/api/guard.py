"""The HTTP API under hostile input: a body size limit, JSON as RFC 8259 has it, short 422s.

- :class:`InputGuard` (pure ASGI) refuses a body over ``max_body_bytes`` with 413: at once
  when its Content-Length says so (nothing of it is read), and as soon as a chunked body
  grows past the limit (the rest is not read). A JSON body with ``NaN`` or ``Infinity``,
  a number too large for a float, an integer beyond 64 bits, the character NUL or a lone
  UTF-16 surrogate (``\\ud800`` without its pair) in a string is refused with 422 before
  any route sees it, a URL with NUL with 400: the store cannot hold such values
  (PostgreSQL keeps NUL in no text column, a surrogate is no UTF-8), and one stored
  infinity stops a site's planning.
- :func:`validation_failed` answers a body that breaks its schema with 422 and the
  reasons, each input cut to :data:`ECHO_CHARS` (a 10 MB body is not sent back) and shown
  as text where JSON cannot carry it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The longest input (as JSON text) a 422 answer repeats; longer ones are cut.
ECHO_CHARS = 200
_INT64 = 2**63

# Only a body with one of these is parsed a second time (strictly) by the guard.
_SUSPECT = re.compile(rb"NaN|Infinity|\d{19}|[eE]\+?\d{3}|\\u0000|\\u[dD][89a-fA-F]")
NUL = "the character NUL (\\u0000) is not allowed in text"
SURROGATE = "a lone UTF-16 surrogate (\\ud800 to \\udfff) is no character"
#: What is left of a surrogate after JSON decoding: one without its pair.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotJsonNumber(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NotJsonNumber(f"{name} is not allowed: JSON numbers are finite")


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > 19 or not -_INT64 <= int(text) < _INT64:
        raise _NotJsonNumber(f"integer {_cut(text, 24)} is beyond 64 bits")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJsonNumber(f"number {_cut(text, 24)} is too large to be finite")
    return value


def _bad_text(value: Any) -> str | None:
    """Why a string in ``value`` cannot be stored (NUL, a lone surrogate), else None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return NUL
            if _LONE_SURROGATE.search(v):
                return SURROGATE
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


def json_problem(body: bytes) -> str | None:
    """Why a JSON body is refused (NaN, Infinity, an overflowing number, NUL or a lone
    surrogate in a string), else None. A body that is not JSON at all is left to the
    route, which says so.
    """
    if not _SUSPECT.search(body):
        return None
    try:
        data = json.loads(body, parse_constant=_constant, parse_int=_integer, parse_float=_float)
    except _NotJsonNumber as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return _bad_text(data)


def _nul_in_url(scope: Scope) -> bool:
    query = scope.get("query_string", b"")
    return "\x00" in scope.get("path", "") or b"\x00" in query or b"%00" in query


class InputGuard:
    """ASGI middleware: the body size limit, strict JSON numbers, no NUL (module doc)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        exempt: tuple[str, ...] = (),
        problem_replies: dict[str, Callable[[int, str], Response]] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        #: Paths whose routes read and limit their (non-JSON) bodies themselves.
        self.exempt = exempt
        #: Path prefix -> the answer to a refused request there, from (HTTP status, detail)
        #: (a protocol with its own error format, such as OCPI's envelope).
        self.problem_replies = problem_replies or {}

    def _problem(self, scope: Scope, status: int, detail: str) -> Response:
        path = scope.get("path", "")
        for prefix, make in self.problem_replies.items():
            if path.startswith(prefix):
                return make(status, detail)
        return JSONResponse({"detail": detail}, status)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _nul_in_url(scope):
            detail = NUL.replace("text", "a URL")
            await self._problem(scope, 400, detail)(scope, receive, send)
            return
        if self.exempt and scope.get("path", "").startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if (length is None or length.strip() == "0") and not chunked:
            await self.app(scope, receive, send)
            return
        if length is not None and length.strip().isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        problem = json_problem(bytes(body))
        if problem is not None:
            status = 400 if scope.get("path", "").startswith(tuple(self.problem_replies)) else 422
            await self._problem(scope, status, f"request body: {problem}")(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body over {self.max_body_bytes} bytes (max_body_bytes)"
        await self._problem(scope, 413, detail)(scope, receive, send)


def _cut(text: str, limit: int = ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shown(value: Any) -> Any:
    """An input as a 422 answer repeats it: JSON-safe, its text at most ECHO_CHARS long."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > ECHO_CHARS:
        return f"({type(value).__name__} of {len(value)} items)"
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    try:
        plain = jsonable_encoder(value)
        text = json.dumps(plain, allow_nan=False)
    except (ValueError, TypeError, RecursionError):  # NaN, an infinity, something odd
        return _cut(repr(value))
    if isinstance(plain, str):
        return _cut(plain)
    return plain if len(text) <= ECHO_CHARS else _cut(text)


def errors_out(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's error list as a 422 answer carries it (inputs and locations cut)."""
    out = []
    for err in errors:
        e = dict(err)
        if "input" in e:
            e["input"] = shown(e["input"])
        if "loc" in e:
            e["loc"] = [x if isinstance(x, int) else _cut(str(x)) for x in e["loc"]]
        if "ctx" in e:
            e["ctx"] = {k: shown(v if isinstance(v, (int, float, str)) else str(v))
                        for k, v in e["ctx"].items()}  # fmt: skip
        e.pop("url", None)
        out.append(e)
    return out


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """The 422 of a request that breaks its schema (exception handler of the app)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": errors_out(exc.errors())}, 422)
