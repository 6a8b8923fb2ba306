"""The API part of ``evflex bench fuzz``: generated requests for every operation.

The operations, their parameters and their JSON bodies come from the node's
own ``/openapi.json``. Each request fills the path and query parameters with a
valid value or a hostile one (empty, very long, traversal, huge or non-finite
numbers) and, where the operation takes a body, sends a valid instance of its
schema (:class:`evflex.bench.fuzzgen.SchemaTool`) or one broken in one place
(wrong type, required property left out, unknown property, huge or non-finite
number, huge string, deep nesting, null) or a body that is no JSON at all.
Three requests in four carry the admin's token, the fourth none.

Right is: never a 5xx (nor a dropped connection), every 4xx says why in
``detail``, and without credentials nothing but :data:`PUBLIC_OPERATIONS`
answers 2xx. The server-sent event stream (``GET /api/v1/stream``) never
ends and is left out.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from evflex.bench.fuzzgen import SchemaTool, drop, nested_text, put, type_of

#: Operations not sent: the event stream does not end.
SKIPPED = frozenset({("get", "/api/v1/stream")})
#: What answers without credentials by design: health, logging in and out, and the
#: driver's session opened from the QR code at the charger.
PUBLIC_OPERATIONS = frozenset(
    {
        "GET /api/v1/health",
        "POST /api/v1/auth/login",
        "POST /api/v1/auth/logout",
        "POST /api/v1/driver/sessions",
    }
)

_HOSTILE_TEXT = [
    "", " ", "-1", "0", "99999999999999999999999", "1e306", "NaN", "Infinity", "null",
    "true", "../../etc/passwd", "%00", "'; DROP TABLE stations;--", "<script>", "ä€😀",
    "x" * 5000, "{}", "[]", "1.5", "2026-13-45T99:99:99Z",
]  # fmt: skip
_HOSTILE_NUMBERS = [10**30, -(10**30), 2**63, 2**64, 1e306, -1e306, 1.7976931348623157e308, -1]
_WRONG = ["fuzz", 7, 2.5, True, None, [], {}]
#: How a request is made: hostile path/query parameters, or its body broken one way.
BODY_KINDS = (
    "valid",
    "params",
    "wrong_type",
    "missing",
    "extra",
    "huge_number",
    "non_finite",
    "huge_string",
    "deep",
    "null",
    "truncated",
    "not_json",
)


@dataclass
class HttpFuzzResult:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: int = 0  # 5xx and dropped connections
    without_reason: int = 0  # 4xx without a detail
    operations: int = 0
    per_operation: dict[str, Counter[int]] = field(default_factory=dict)
    per_kind: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> 2xx/3xx/4xx/5xx
    unauthenticated_ok: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.samples) < 30:
            self.samples.append(text[:400])

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "operations": self.operations,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "server_errors": self.server_errors,
            "without_reason": self.without_reason,
            "unauthenticated_2xx": dict(self.unauthenticated_ok),
            "per_operation": {
                k: {str(s): n for s, n in v.items()} for k, v in self.per_operation.items()
            },
            "per_kind": {k: dict(v) for k, v in self.per_kind.items()},
            "samples": self.samples,
        }


@dataclass
class Request:
    method: str
    url: str
    params: dict[str, str]
    body: bytes | None
    kind: str
    what: str


class ApiFuzzer:
    def __init__(self, spec: dict, seed: int, known_station: str) -> None:
        self.spec = spec
        self.tool = SchemaTool(spec)
        self.rng = random.Random(f"http:{seed}")
        self.known = {"station_id": known_station}
        self.operations = [
            (method, path, op)
            for path, ops in spec.get("paths", {}).items()
            for method, op in ops.items()
            if method in ("get", "post", "put", "patch", "delete") and (method, path) not in SKIPPED
        ]

    def _value(self, name: str, schema: dict, hostile: bool) -> str:
        if hostile:
            return self.rng.choice(_HOSTILE_TEXT)
        if name in self.known and self.rng.random() < 0.5:
            return self.known[name]
        value = self.tool.instance(schema, self.rng)
        if isinstance(value, bool | dict | list):
            return json.dumps(value)
        return str(value)

    def request(self, index: int) -> Request:
        method, path, op = self.operations[index % len(self.operations)]
        content = op.get("requestBody", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema")
        kinds = BODY_KINDS if schema is not None else ("valid", "params")
        kind = self.rng.choice(kinds)
        params: dict[str, str] = {}
        url = path
        for p in op.get("parameters", []):
            p = self.tool.resolve(p)
            value = self._value(p["name"], p.get("schema", {}), kind == "params")
            if p.get("in") == "path":
                url = url.replace("{" + p["name"] + "}", _quote(value))
            elif p.get("in") == "query" and (p.get("required") or self.rng.random() < 0.6):
                params[p["name"]] = value
        body, what = None, kind
        if schema is not None:
            base = self.tool.instance(schema, self.rng, optional=self.rng.random())
            body, what = self._body(kind, schema, base)
        return Request(method.upper(), url, params, body, kind, f"{method.upper()} {path} ({what})")

    def _body(self, kind: str, schema: dict, base: Any) -> tuple[bytes, str]:
        """The body of a request of ``kind``: ``base`` (valid) broken that way."""
        sites = list(self.tool.sites(schema, base))
        site = self.rng.choice(sites)
        objects = [s for s in sites if isinstance(s.value, dict)]
        numeric = [s for s in sites if type_of(s.schema) in ("number", "integer")] or [site]
        marker = "__FUZZ__"
        if kind == "wrong_type":
            new = self.rng.choice([v for v in _WRONG if type(v) is not type(site.value)])
            return _dump(put(base, site.path, new)), f"{_where(site.path)} wrong type"
        if kind == "missing" and any(s.value for s in objects):
            obj = self.rng.choice([s for s in objects if s.value])
            name = self.rng.choice(sorted(obj.value))
            return _dump(drop(base, obj.path, name)), f"{_where(obj.path)}/{name} left out"
        if kind == "extra" and objects:
            obj = self.rng.choice(objects)
            new_obj = {**obj.value, "fuzzExtra": self.rng.choice(_WRONG)}
            return _dump(put(base, obj.path, new_obj)), f"{_where(obj.path)} extra property"
        if kind == "huge_number":
            target = self.rng.choice(numeric)
            new = self.rng.choice(_HOSTILE_NUMBERS)
            return _dump(put(base, target.path, new)), f"{_where(target.path)} = {new}"
        if kind == "non_finite":
            target = self.rng.choice(numeric)
            word = self.rng.choice(["NaN", "Infinity", "-Infinity", "1e400"])
            text = _dump(put(base, target.path, marker)).decode().replace(f'"{marker}"', word)
            return text.encode(), f"{_where(target.path)} = {word}"
        if kind == "huge_string":
            strings = [s for s in sites if type_of(s.schema) == "string"] or [site]
            target = self.rng.choice(strings)
            new = "x" * self.rng.choice([1_000, 100_000, 1_000_000])
            return _dump(put(base, target.path, new)), f"{_where(target.path)} {len(new)} chars"
        if kind == "deep":
            depth = self.rng.choice([50, 300, 1000, 5000])
            text = _dump(put(base, site.path, marker)).decode()
            text = text.replace(f'"{marker}"', nested_text(depth, self.rng))
            return text.encode(), f"{_where(site.path)} {depth} deep"
        if kind == "null":
            return _dump(put(base, site.path, None)), f"{_where(site.path)} null"
        if kind == "truncated":
            text = _dump(base).decode()
            return text[: self.rng.randrange(0, max(1, len(text)))].encode(), "truncated JSON"
        if kind == "not_json":
            body = self.rng.choice([b"", b"null", b"[]", b"\xff\xfe", b"a=1&b=2", b'"x"'])
            return body, f"body {body!r}"
        return _dump(base), "valid"


def _dump(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _where(path: tuple) -> str:
    return "/".join(str(p) for p in path) or "body"


_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]")


def _quote(value: str) -> str:
    return _UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), value)


def fuzz_api(
    base_url: str, token: str, cases: int, seed: int, known_station: str
) -> HttpFuzzResult:
    """``cases`` generated requests over every operation of ``base_url``'s OpenAPI."""
    result = HttpFuzzResult()
    with httpx.Client(base_url=base_url, timeout=30.0, trust_env=False) as client:
        spec = client.get("/openapi.json").raise_for_status().json()
        fuzzer = ApiFuzzer(spec, seed, known_station)
        result.operations = len(fuzzer.operations)
        for i in range(cases):
            req = fuzzer.request(i)
            admin = (i // len(fuzzer.operations)) % 4 != 3
            headers = {"Content-Type": "application/json"} if req.body is not None else {}
            if admin:
                headers["Authorization"] = f"Bearer {token}"
            key = req.what.split(" (")[0]
            kinds = result.per_kind.setdefault(req.kind, Counter())
            result.requests += 1
            try:
                r = _send(client, req, headers)
            except httpx.HTTPError as exc:
                result.server_errors += 1
                kinds["dropped"] += 1
                result.note(f"{req.what}: no response ({type(exc).__name__}) url {req.url[:100]}")
                continue
            result.statuses[r.status_code] += 1
            result.per_operation.setdefault(key, Counter())[r.status_code] += 1
            kinds[f"{r.status_code // 100}xx"] += 1
            if r.status_code >= 500:
                result.server_errors += 1
                result.note(
                    f"{req.what}: {r.status_code} {r.text[:120]} url {req.url[:100]} "
                    f"params {req.params!r:.100} body {(req.body or b'')[:120]!r}"
                )
            elif r.status_code >= 400 and not _has_reason(r):
                result.without_reason += 1
                kinds["4xx without detail"] += 1
                result.note(f"{req.what}: {r.status_code} without detail: {r.text[:120]}")
            elif r.status_code < 300 and not admin:
                result.unauthenticated_ok[key] += 1
    return result


def _send(client: httpx.Client, req: Request, headers: dict[str, str]) -> httpx.Response:
    """The request, sent again once on a fresh connection if the one it went out on was
    closed under it (a server may close a kept-alive connection after an answer)."""
    for attempt in (1, 2):
        try:
            return client.request(
                req.method, req.url, params=req.params, content=req.body, headers=headers
            )
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _has_reason(r: httpx.Response) -> bool:
    """A ``detail`` (REST API), or an OCPI envelope's ``status_message``."""
    try:
        body = r.json()
        detail = body.get("detail") or body.get("status_message")
    except (ValueError, AttributeError):
        return False
    return bool(detail)
