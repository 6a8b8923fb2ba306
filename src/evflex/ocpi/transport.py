"""OCPI 2.2.1 transport and format, the server side: the response envelope and its
status codes, token authentication, pagination, request and routing headers.

Every OCPI answer is ``{"data", "status_code", "status_message", "timestamp"}``.
A business refusal is HTTP 200 with a 2xxx/3xxx code; an unknown or missing token
is HTTP 401; a body that is not JSON is HTTP 400; a body that is JSON but breaks
the object's schema is HTTP 200 with 2001 naming the field (``status_codes``: a
request that reached the OCPI layer gets no HTTP error).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select

from evflex.ocpi.secrets import header_candidates, token_hash
from evflex.store.ocpi_tables import OcpiPartner

PREFIX = "/ocpi"
VERSION = "2.2.1"

SUCCESS = 1000
CLIENT_ERROR = 2000
INVALID_PARAMETERS = 2001
NOT_ENOUGH_INFORMATION = 2002
UNKNOWN_LOCATION = 2003
UNKNOWN_TOKEN = 2004
SERVER_ERROR = 3000
UNABLE_TO_USE_CLIENT_API = 3001
UNSUPPORTED_VERSION = 3002
NO_MATCHING_ENDPOINTS = 3003

#: Most objects a page holds when the client asks for none or for more.
MAX_LIMIT = 100


class OcpiError(Exception):
    """A refusal with an OCPI status code (HTTP 200 unless ``http_status`` says)."""

    def __init__(self, status_code: int, message: str, http_status: int = 200, data: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.http_status = http_status
        self.data = data


def now_iso(ts: datetime | None = None) -> str:
    """A DateTime as OCPI writes it: UTC, ``Z``, at most milliseconds."""
    ts = (ts or datetime.now(UTC)).astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_datetime(text: str) -> datetime:
    """An OCPI DateTime (``Z`` or no zone: UTC); ValueError if it is none."""
    ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def envelope(
    data: Any = None, status_code: int = SUCCESS, status_message: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"status_code": status_code, "timestamp": now_iso()}
    if data is not None:
        body["data"] = data
    if status_message:
        body["status_message"] = status_message
    return body


class OcpiJSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def reply(
    request: Request | None,
    data: Any = None,
    status_code: int = SUCCESS,
    status_message: str | None = None,
    http_status: int = 200,
    headers: dict[str, str] | None = None,
) -> OcpiJSON:
    """An OCPI response; echoes the request's X-Request-ID and X-Correlation-ID."""
    out = dict(headers or {})
    if request is not None:
        for name in ("X-Request-ID", "X-Correlation-ID"):
            value = request.headers.get(name)
            if value:
                out[name] = value
    body = envelope(data, status_code, status_message)
    return OcpiJSON(body, status_code=http_status, headers=out)


def is_ocpi(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


async def ocpi_error(request: Request, exc: Exception) -> Response:
    """Exception handler of the app for :class:`OcpiError`."""
    assert isinstance(exc, OcpiError)
    return reply(request, exc.data, exc.status_code, exc.message, exc.http_status)


def field_errors(errors: Sequence[Any]) -> str:
    """'Invalid or missing parameters: body.evse_uid: field required; ...'"""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def validation_reply(request: Request, exc: RequestValidationError) -> Response:
    """A request that breaks the object's schema: 2001 naming the fields."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return reply(request, None, INVALID_PARAMETERS, "body is not valid JSON", 400)
    message = "Invalid or missing parameters: " + field_errors(errors)
    return reply(request, None, INVALID_PARAMETERS, message[:500])


def problem_reply(http_status: int, detail: str) -> OcpiJSON:
    """What the input guard answers for an OCPI path (a body over the size limit, not JSON)."""
    code = INVALID_PARAMETERS if http_status < 500 else SERVER_ERROR
    return OcpiJSON(envelope(None, code, detail), status_code=http_status)


# ---------------------------------------------------------------- authentication


def runtime(request: Request) -> Any:
    """The node (:class:`evflex.services.Services`) serving this request."""
    return request.app.state.runtime


async def _partner_by_header(request: Request) -> OcpiPartner | None:
    candidates = header_candidates(request.headers.get("Authorization"))
    if not candidates:
        return None
    hashes = [token_hash(t) for t in candidates]
    async with runtime(request).sessionmaker() as s:
        rows = await s.scalars(select(OcpiPartner).where(OcpiPartner.token_in_hash.in_(hashes)))
        return rows.first()


def _unauthorized(message: str) -> OcpiError:
    return OcpiError(CLIENT_ERROR, message, http_status=401)


async def registered_partner(request: Request) -> OcpiPartner:
    """The registered partner whose token (B or C) the request carries; 401 otherwise.

    Also checks the routing headers: a request addressed (``OCPI-to-*``) to a party
    this node is not gets 2000 (the hub, which routes to others, comes with the SCSP
    work)."""
    partner = await _partner_by_header(request)
    if partner is None or partner.status != "registered":
        raise _unauthorized(_why(request, partner))
    _check_addressed_to_us(request)
    request.state.ocpi_partner = partner
    return partner


async def any_partner(request: Request) -> OcpiPartner:
    """As :func:`registered_partner`, but an invitation's token A is good too (versions,
    version details and credentials only), and so is the token B we offer while our own
    registration with a partner is under way (status ``pending``): the partner fetches our
    versions and version details with it."""
    partner = await _partner_by_header(request)
    if partner is None or partner.status not in ("invited", "pending", "registered"):
        raise _unauthorized(_why(request, partner))
    request.state.ocpi_partner = partner
    return partner


def _why(request: Request, partner: OcpiPartner | None) -> str:
    if not request.headers.get("Authorization"):
        return "Authorization header missing: 'Authorization: Token <base64 token>'"
    if not header_candidates(request.headers.get("Authorization")):
        return "Authorization header malformed: expected 'Token <base64 token>'"
    if partner is not None and partner.status == "invited":
        return "token A only opens versions and credentials: register first"
    return "unknown or revoked token"


def our_parties(request: Request) -> set[tuple[str, str]]:
    settings = runtime(request).settings
    return {(settings.ocpi_country_code.upper(), settings.ocpi_party_id.upper())}


def _check_addressed_to_us(request: Request) -> None:
    cc = request.headers.get("OCPI-to-country-code")
    pid = request.headers.get("OCPI-to-party-id")
    if cc and pid and (cc.upper(), pid.upper()) not in our_parties(request):
        raise OcpiError(CLIENT_ERROR, f"this node is not party {cc}/{pid} (OCPI-to-* headers)")


def same_party(a: str, b: str) -> bool:
    """Country codes and party ids compare case-insensitively (2.2.1: upper case is
    the form to send; some implementations send lower case)."""
    return a.upper() == b.upper()


def partner_parties(partner: OcpiPartner) -> set[tuple[str, str]]:
    parties = {(partner.country_code.upper(), partner.party_id.upper())}
    for role in partner.roles or ():
        parties.add(
            (str(role.get("country_code", "")).upper(), str(role.get("party_id", "")).upper())
        )
    return parties


def require_own_party(partner: OcpiPartner, country_code: str, party_id: str) -> None:
    """A partner writes only objects of its own parties (2001 otherwise)."""
    if (country_code.upper(), party_id.upper()) not in partner_parties(partner):
        raise OcpiError(
            INVALID_PARAMETERS,
            f"{country_code}/{party_id} is not a party of this partner's credentials",
        )


# ---------------------------------------------------------------- pagination


class Page:
    """``offset``, ``limit``, ``date_from`` and ``date_to`` of a paginated GET."""

    def __init__(self, request: Request) -> None:
        q = request.query_params
        try:
            self.offset = int(q.get("offset", "0"))
            self.limit = min(int(q.get("limit", str(MAX_LIMIT))), MAX_LIMIT)
            self.date_from = parse_datetime(q["date_from"]) if q.get("date_from") else None
            self.date_to = parse_datetime(q["date_to"]) if q.get("date_to") else None
        except ValueError as exc:
            raise OcpiError(INVALID_PARAMETERS, f"bad pagination parameter: {exc}") from None
        if self.offset < 0 or self.limit < 0:
            raise OcpiError(INVALID_PARAMETERS, "offset and limit must not be negative")
        self.request = request

    def reply(self, items: list[Any], total: int) -> OcpiJSON:
        """The page with ``X-Total-Count``, ``X-Limit`` and a ``Link`` to the next one."""
        headers = {"X-Total-Count": str(total), "X-Limit": str(MAX_LIMIT)}
        following = self.offset + len(items)
        if following < total and items:
            params = dict(self.request.query_params)
            params.update(offset=str(following), limit=str(self.limit))
            url = str(self.request.url.replace(query=urlencode(params)))
            headers["Link"] = f'<{url}>; rel="next"'
        return reply(self.request, items, headers=headers)


def new_request_id() -> str:
    return str(uuid.uuid4())
