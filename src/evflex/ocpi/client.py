"""OCPI 2.2.1 transport, the client side: calling a partner's modules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from evflex.ocpi.secrets import encode_header
from evflex.ocpi.transport import SUCCESS, new_request_id
from evflex.store.ocpi_tables import OcpiPartner


class PartnerError(Exception):
    """A call to a partner that did not succeed.

    ``retry``: worth trying again later (the partner is down, slow, overloaded or
    broken); False for a refusal of the request itself (HTTP 4xx but 401/408/429, OCPI
    2xxx), which the same request would meet again."""

    def __init__(self, message: str, retry: bool, http_status: int | None = None,
                 status_code: int | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.retry = retry
        self.http_status = http_status
        self.status_code = status_code


@dataclass(slots=True)
class Answer:
    http_status: int
    status_code: int | None
    status_message: str | None
    data: Any
    headers: httpx.Headers


def endpoint(partner: OcpiPartner, identifier: str, role: str) -> str | None:
    """The URL of the partner's module ``identifier`` in interface role ``role``
    (SENDER or RECEIVER), from its version details; None if it has none."""
    for e in partner.endpoints or ():
        if e.get("identifier") == identifier and e.get("role", role) == role:
            return str(e["url"]).rstrip("/")
    return None


def party_of(partner: OcpiPartner, role: str | None = None) -> tuple[str, str]:
    """(country code, party id) of the partner's role ``role`` (its first one if None)."""
    for r in partner.roles or ():
        if role is None or r.get("role") == role:
            return str(r["country_code"]), str(r["party_id"])
    return partner.country_code, partner.party_id


class OcpiClient:
    """Makes the requests; one connection pool for all partners."""

    def __init__(self, our_party: tuple[str, str], timeout_s: float) -> None:
        self.our_party = our_party
        # A partner whose module URL ends in a slash (as in the spec's examples) may answer
        # the URL without it with a redirect (307 keeps the method and the body).
        self._http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=True)

    async def close(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        url: str,
        token: str,
        body: Any = None,
        to_party: tuple[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> Answer:
        """One request; raises :class:`PartnerError` unless it got OCPI 1000 (or, for a
        response without an envelope, HTTP 2xx)."""
        headers = {
            "Authorization": encode_header(token),
            "X-Request-ID": new_request_id(),
            "X-Correlation-ID": new_request_id(),
            "OCPI-from-country-code": self.our_party[0],
            "OCPI-from-party-id": self.our_party[1],
        }
        if to_party is not None:
            headers["OCPI-to-country-code"] = to_party[0]
            headers["OCPI-to-party-id"] = to_party[1]
        content = None
        if body is not None:
            content = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            r = await self._http.request(method, url, content=content, headers=headers,
                                         params=params)  # fmt: skip
        except httpx.HTTPError as exc:
            raise PartnerError(f"{method} {url}: {type(exc).__name__} {exc}", retry=True) from None
        status_code = message = data = None
        try:
            parsed = orjson.loads(r.content) if r.content else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict) and "status_code" in parsed:
            status_code = parsed.get("status_code")
            message = parsed.get("status_message")
            data = parsed.get("data")
        answer = Answer(r.status_code, status_code, message, data, r.headers)
        if r.status_code >= 300 or (status_code is not None and status_code != SUCCESS):
            retry = (
                r.status_code >= 500
                # 401: a partner finishing its registration with us may not know the
                # token it just gave us yet (it has not had our answer): worth a new try
                or r.status_code in (401, 408, 429)
                or (status_code is not None and status_code >= 3000)
            )
            what = f"HTTP {r.status_code}" + (f", OCPI {status_code}" if status_code else "")
            detail = message or (r.text[:200] if status_code is None else "")
            raise PartnerError(f"{method} {url}: {what} {detail}".strip(), retry,
                               r.status_code, status_code)  # fmt: skip
        return answer
