"""Inputs for ``evflex bench fuzz``: valid messages from JSON schemas, then broken.

:class:`SchemaTool` makes a valid instance of a JSON schema (the ``ocpp``
package's message schemas, or the request bodies of the API's OpenAPI
document), seeded, and lists the places in it that a mutation can hit.
:class:`OcppFuzzer` turns the schemas of one OCPP version into adversarial
frames, each an :class:`Input` that says which answers are right.

What is right comes from the OCPP-J specification (part 4 of 2.0.1 and 2.1,
section 4.3 of 1.6), per category:

=================  =============================================  ==============================
category           input                                          right answer
=================  =============================================  ==============================
broken_json        truncated frames, stray bytes, non-UTF-8       RpcFrameworkError to id "-1",
                                                                  or FormatViolation to its id
bad_frame          JSON that is no RPC frame (wrong shape, id,    RpcFrameworkError (the id when
                   type, action or payload type)                  readable), MessageTypeNotSupported
                                                                  for an unknown type, FormatViolation
                                                                  for a payload that is no object,
                                                                  NotImplemented for an unknown action
wrong_type         one value of another JSON type                 TypeConstraintViolation
missing_field      one required property left out                 OccurrenceConstraintViolation
extra_field        a property the schema does not allow           FormatViolation
out_of_range       over maxLength, beyond minimum/maximum or      PropertyConstraintViolation
                   OCPP's 32-bit integer, not in the enum,        (TypeConstraintViolation for an
                   too few or too many items                      integer literal beyond 64 bits)
bad_timestamp      a date-time that is none, or none UTC holds    TypeConstraintViolation,
                                                                  FormatViolation or
                                                                  PropertyConstraintViolation
non_finite         NaN, Infinity, 1e400 where a number goes       as broken_json (not JSON, or a
                                                                  number no double holds), or
                                                                  PropertyConstraintViolation
huge_values        numbers up to 1e308, strings up to 500 kB      CALLRESULT (taken as it is) or
                   where the schema sets no bound                 PropertyConstraintViolation
deep_nesting       arrays/objects 40..3000 levels deep            FormatViolation or
                                                                  TypeConstraintViolation;
                                                                  CALLRESULT where any JSON goes
replay             a valid CALL twice with one message id         the first answered (CALLRESULT
                                                                  or an error that is not
                                                                  InternalError); the repeat
                                                                  answered so, or dropped
flood              CALLs sent back to back without reading        each answered, or refused
                                                                  (RpcFrameworkError/GenericError)
unknown_answer     CALLRESULT/CALLERROR (2.1: CALLRESULTERROR)    no answer at all
                   to ids never sent
oversize           a frame over the size limit                    the connection closed (1009)
=================  =============================================  ==============================

A CALL of an action the CSMS does not handle may be answered NotSupported
instead (the spec gives no order between that and a payload error). 1.6
spells the codes its own way (:func:`codes_for`). InternalError is never right.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ocpp
from jsonschema.validators import validator_for

V16, V201, V21 = "1.6", "2.0.1", "2.1"
VERSIONS = (V16, V201, V21)
SUBPROTOCOLS = {V16: "ocpp1.6", V201: "ocpp2.0.1", V21: "ocpp2.1"}
_FOLDERS = {V16: "v16", V201: "v201", V21: "v21"}
#: 2.1 messages that travel as SEND (6), never as CALL.
SEND_ONLY = frozenset({"NotifyPeriodicEventStream"})

#: How OCPP 1.6 names the 2.x error codes (it has no RPC or message-type error).
_V16_NAMES = {
    "FormatViolation": ("FormationViolation",),
    "RpcFrameworkError": ("FormationViolation",),
    "OccurrenceConstraintViolation": ("OccurenceConstraintViolation",),
    "MessageTypeNotSupported": ("ProtocolError", "FormationViolation"),
}

CATEGORIES = (
    "broken_json",
    "bad_frame",
    "wrong_type",
    "missing_field",
    "extra_field",
    "out_of_range",
    "bad_timestamp",
    "non_finite",
    "huge_values",
    "deep_nesting",
    "replay",
    "flood",
    "unknown_answer",
    "oversize",
)
#: Share of the inputs per category (oversize frames are few: each is over a megabyte).
WEIGHTS = {
    "broken_json": 10,
    "bad_frame": 8,
    "wrong_type": 14,
    "missing_field": 10,
    "extra_field": 8,
    "out_of_range": 12,
    "bad_timestamp": 5,
    "non_finite": 6,
    "huge_values": 8,
    "deep_nesting": 4,
    "replay": 5,
    "flood": 5,
    "unknown_answer": 5,
    "oversize": 0.01,
}

INT32 = (-(2**31), 2**31 - 1)


def codes_for(version: str, *codes: str) -> frozenset[str]:
    """The 2.x error ``codes`` as ``version`` spells them."""
    if version != V16:
        return frozenset(codes)
    return frozenset(name for code in codes for name in _V16_NAMES.get(code, (code,)))


@dataclass(slots=True)
class Input:
    """One frame sent and what a right answer to it is."""

    category: str
    frame: str | bytes
    #: message ids a right answer may carry, preferred first ("-1": the id was unreadable)
    ids: tuple[str, ...] = ()
    codes: frozenset[str] = frozenset()  # right CALLERROR codes
    result_ok: bool = False  # a CALLRESULT is right
    silent: bool = False  # right is no answer at all
    closes: bool = False  # right is the connection closed
    optional: bool = False  # an answer (right as above) or none
    action: str = ""
    note: str = ""  # what was done, for samples of wrong answers


# --------------------------------------------------------------------- schemas


@dataclass(slots=True)
class Site:
    """A place in an instance: its path and the (resolved) schema that governs it."""

    path: tuple[Any, ...]
    schema: dict
    value: Any


class SchemaTool:
    """Valid instances of the schemas below ``root`` (local ``$ref``s resolved)."""

    def __init__(self, root: dict) -> None:
        self.root = root

    def resolve(self, schema: Any) -> dict:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 32:
            target: Any = self.root
            for part in schema["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            extra = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **extra} if extra else target
            seen += 1
        return schema if isinstance(schema, dict) else {}

    def branch(self, schema: dict, value: Any = None) -> dict:
        """The option of an anyOf/oneOf/allOf that ``value`` takes (or a non-null one)."""
        schema = self.resolve(schema)
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = [self.resolve(o) for o in schema[key]]
                fitting = [o for o in options if json_type_fits(o, value)]
                non_null = [o for o in options if o.get("type") != "null"]
                return self.branch((fitting or non_null or options)[0], value)
        if "allOf" in schema:
            merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = {**self.branch(part, value), **merged}
            return merged
        return schema

    def instance(self, schema: Any, rng: random.Random, depth: int = 0, optional: float = 0.5):
        s = self.resolve(schema)
        if "const" in s:
            return s["const"]
        if "enum" in s:
            return rng.choice(s["enum"])
        for key in ("anyOf", "oneOf"):
            if key in s:
                options = [o for o in s[key] if self.resolve(o).get("type") != "null"] or s[key]
                return self.instance(rng.choice(options), rng, depth, optional)
        if "allOf" in s:
            return self.instance(self.branch(s), rng, depth, optional)
        kind = type_of(s)
        if kind == "object":
            out = {}
            required = set(s.get("required", ()))
            for name, sub in s.get("properties", {}).items():
                if name in required or (depth < 4 and rng.random() < optional):
                    out[name] = self.instance(sub, rng, depth + 1, optional)
            extra = s.get("additionalProperties")
            if isinstance(extra, dict) and not s.get("properties"):
                out["k1"] = self.instance(extra, rng, depth + 1, optional)
            return out
        if kind == "array":
            low = s.get("minItems", 0)
            high = s.get("maxItems", low + 2)
            n = rng.randint(max(low, min(1, high)), max(low, min(high, low + 2)))
            return [self.instance(s.get("items", {}), rng, depth + 1, optional) for _ in range(n)]
        if kind == "integer":
            low, high = _bounds(s, int)
            return rng.randint(low, high)
        if kind == "number":
            low, high = _bounds(s, float)
            return round(rng.uniform(low, high), 1)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return _string(s, rng)

    def valid(self, schema: dict, rng: random.Random, optional: float, tries: int = 40):
        """A valid instance of ``schema`` (checked by the ``jsonschema`` package), or None."""
        check = validator_for(self.root)({**schema, **_context(self.root, schema)})
        for _ in range(tries):
            value = self.instance(schema, rng, optional=optional)
            if check.is_valid(value):
                return value
        return None

    def sites(self, schema: Any, value: Any, path: tuple = ()) -> Iterator[Site]:
        """Every value in ``value`` with the schema that governs it, outermost first."""
        s = self.branch(schema, value)
        yield Site(path, s, value)
        if isinstance(value, dict):
            props = s.get("properties", {})
            extra = s.get("additionalProperties")
            for name, item in value.items():
                sub = props.get(name, extra if isinstance(extra, dict) else {})
                yield from self.sites(sub, item, (*path, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from self.sites(s.get("items", {}), item, (*path, i))


def _context(root: dict, schema: dict) -> dict:
    """What a sub-schema needs beside it to resolve its ``$ref``s against ``root``."""
    if schema is root:
        return {}
    return {k: root[k] for k in ("definitions", "$defs", "components") if k in root}


def type_of(s: dict) -> str | None:
    kind = s.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind is None:
        if "properties" in s:
            return "object"
        if "items" in s:
            return "array"
    return kind


def json_type_fits(s: dict, value: Any) -> bool:
    """Whether ``value``'s JSON type is one ``s`` names (True if it names none)."""
    kind = s.get("type")
    if kind is None:
        return True
    kinds = kind if isinstance(kind, list) else [kind]
    return any(_is(k, value) for k in kinds)


def _is(kind: str, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _PYTHON.get(kind, object))


_PYTHON: dict[str, Any] = {
    "string": str,
    "boolean": bool,
    "null": type(None),
    "object": dict,
    "array": list,
}


def _bounds(s: dict, cast: type) -> tuple[Any, Any]:
    low, high = s.get("minimum"), s.get("maximum")
    if isinstance(s.get("exclusiveMinimum"), int | float):
        low = s["exclusiveMinimum"] + 1
    if isinstance(s.get("exclusiveMaximum"), int | float):
        high = s["exclusiveMaximum"] - 1
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None:
        high = low + 100
    return cast(low), cast(max(low, high))


def _string(s: dict, rng: random.Random) -> str:
    fmt = s.get("format")
    if fmt == "date-time":
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if fmt == "date":
        return datetime.now(UTC).date().isoformat()
    if fmt in ("uri", "url"):
        return "https://example.com/fuzz"
    if fmt == "email":
        return "fuzz@example.com"
    low = s.get("minLength", 1)
    high = min(s.get("maxLength", 12), low + 11)
    return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(low, high)))


def _at(value: Any, path: tuple, change: Callable[[Any], Any]) -> Any:
    """A copy of ``value`` whose item at ``path`` is ``change(item)``."""
    if not path:
        return change(value)
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _at(value[head], rest, change)}
    out = list(value)
    out[head] = _at(out[head], rest, change)
    return out


def put(value: Any, path: tuple, new: Any) -> Any:
    """A copy of ``value`` with the item at ``path`` replaced by ``new``."""
    return _at(value, path, lambda _old: new)


def drop(value: Any, path: tuple, name: str) -> Any:
    """A copy of ``value`` whose object at ``path`` lacks ``name``."""
    return _at(value, path, lambda obj: {k: v for k, v in obj.items() if k != name})


def nested_text(depth: int, rng: random.Random) -> str:
    """JSON text of arrays and objects ``depth`` levels deep."""
    opens = [rng.choice(("[", '{"a":')) for _ in range(depth)]
    closes = "".join("]" if o == "[" else "}" for o in reversed(opens))
    return "".join(opens) + rng.choice(["1", '"x"', "null"]) + closes


# ------------------------------------------------------------------ OCPP


def ocpp_schemas(version: str) -> dict[str, dict]:
    """Action -> request schema, for every CALL of ``version`` (either direction)."""
    folder = Path(ocpp.__file__).parent / _FOLDERS[version] / "schemas"
    out = {}
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        if name.endswith("Response"):
            continue
        action = name[: -len("Request")] if name.endswith("Request") else name
        if action in SEND_ONLY:
            continue
        out[action] = json.loads(path.read_text(encoding="utf-8-sig"))
    return out


@dataclass(slots=True)
class Change:
    """A template changed at one site, and the right codes for it."""

    payload: Any
    codes: tuple[str, ...]
    note: str
    raw: str | None = None  # JSON text put where ``payload`` holds :data:`MARKER`
    result_ok: bool = False


#: A string in a payload that :attr:`Change.raw` replaces, quotes and all.
MARKER = "__FUZZ_RAW__"


@dataclass
class Template:
    action: str
    schema: dict
    payload: dict
    tool: SchemaTool
    sites: list[Site] = field(default_factory=list)


def templates(version: str, seed: int) -> tuple[list[Template], list[str]]:
    """Valid payloads of every action of ``version`` (two per action: lean and full);
    also the actions no valid payload could be made for."""
    rng = random.Random(f"templates:{version}:{seed}")
    out, failed = [], []
    for action, schema in ocpp_schemas(version).items():
        tool = SchemaTool(schema)
        made = False
        for optional in (0.0, 1.0):
            payload = tool.valid(schema, rng, optional)
            if payload is not None:
                made = True
                out.append(
                    Template(action, schema, payload, tool, list(tool.sites(schema, payload)))
                )
        if not made:
            failed.append(action)
    return out, failed


_WRONG_VALUES: list[Any] = ["fuzz", 7, 2.5, True, None, [], {}]
_BAD_TIMES = [
    "",
    "yesterday",
    "2026-13-45T99:99:99Z",
    "2026-02-30T00:00:00Z",
    "0000-00-00T00:00:00Z",
    "99999-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "T",
    "2026-01-01T00:00:00.ZZ",
]
_NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "nan", "inf"]
_HUGE_DECIMALS = [
    "1e306",
    "-1e306",
    "1e308",
    "1e400",
    "NaN",
    "Infinity",
    "-inf",
    "9" * 400,
    "0x10",
    "1,5",
    "",
]
_HUGE_NUMBERS = [1e300, 1e306, -1e306, 1.7976931348623157e308, -1.7e308, 5e-324, 1e-300]
_OUT_OF_INT32 = [2**31, -(2**31) - 1, 2**53 + 1, 2**63, -(2**63), 2**64, 10**30, -(10**30)]


class OcppFuzzer:
    """Seeded adversarial frames for one OCPP version.

    ``handled`` are the actions the CSMS answers (others may get NotSupported);
    ``known`` every action of the version (others get NotImplemented).
    """

    def __init__(self, version: str, seed: int, handled: frozenset[str], max_frame: int) -> None:
        self.version = version
        self.rng = random.Random(f"fuzz:{version}:{seed}")
        self.handled = handled
        self.templates, self.failed = templates(version, seed)
        self.known = frozenset(t.action for t in self.templates) | frozenset(self.failed)
        self.max_frame = max_frame
        self.counter = 0
        self._candidates: dict[str, list[tuple[Template, list[Site]]]] = {}
        self._answered: list[Input] = []  # valid CALLs sent earlier, to send again
        self.tag = {V16: "a", V201: "b", V21: "c"}[version]

    # ---------------------------------------------------------------- helpers

    def mid(self) -> str:
        self.counter += 1
        return f"{self.tag}{self.counter}"

    def codes(self, *names: str) -> frozenset[str]:
        return codes_for(self.version, *names)

    def call(self, category: str, t: Template, payload: Any, codes: tuple[str, ...], **kw) -> Input:
        """A CALL of ``t.action`` with ``payload``; an unhandled action may be NotSupported."""
        mid = self.mid()
        if t.action not in self.handled:
            codes = (*codes, "NotSupported")
        frame = json.dumps([2, mid, t.action, payload], separators=(",", ":"))
        return Input(category, frame, (mid,), self.codes(*codes), action=t.action, **kw)

    def pick(self, category: str, want: Callable[[Site], Any]) -> tuple[Template, Site] | None:
        """A random template and a site in it for which ``want(site)`` holds (the
        candidates of a category are found once: every template, every site)."""
        found = self._candidates.get(category)
        if found is None:
            found = [
                (t, sites) for t in self.templates if (sites := [s for s in t.sites if want(s)])
            ]
            self._candidates[category] = found
        if not found:
            return None
        t, sites = self.rng.choice(found)
        return t, self.rng.choice(sites)

    # ---------------------------------------------------------------- categories

    def make(self, category: str) -> list[Input]:
        """One input of ``category`` (a replay is two frames, a flood many)."""
        return getattr(self, f"_{category}")()

    def _valid_call(self, category: str, mid: str | None = None) -> Input:
        t = self.rng.choice(self.templates)
        mid = mid or self.mid()
        frame = json.dumps([2, mid, t.action, t.payload], separators=(",", ":"))
        # a valid payload is taken, or refused for what it means (never InternalError)
        codes = _MEANING_CODES + (() if t.action in self.handled else ("NotSupported",))
        return Input(category, frame, (mid,), self.codes(*codes), result_ok=True, action=t.action)

    def _broken_json(self) -> list[Input]:
        t = self.rng.choice(self.templates)
        mid = self.mid()
        text = json.dumps([2, mid, t.action, t.payload], separators=(",", ":"))
        how = self.rng.randrange(5)
        if how == 0:
            frame: str | bytes = text[: self.rng.randrange(1, len(text))]
            note = "truncated"
        elif how == 1:
            at = self.rng.randrange(len(text))
            frame = (
                text[:at] + self.rng.choice(["}", "]", ",", ":", '"', "\\", "{[", "'"]) + text[at:]
            )
            note = "stray character"
        elif how == 2:
            frame = self.rng.choice(["", " ", "null", "nul", "[", "{", "[2,", "\x00", "\ufeff[]"])
            note = "garbage"
        elif how == 3:
            frame = b"\xff\xfe" + text.encode()[: self.rng.randrange(1, 40)] + b"\xc3\x28"
            note = "not UTF-8"
        else:
            frame = text.replace('"', "'", self.rng.randrange(1, 4))
            note = "single quotes"
        if isinstance(frame, str) and _parses(frame):  # a mutation that happens to be JSON
            frame = frame + "]"
        codes = self.codes("RpcFrameworkError", "FormatViolation")
        return [Input("broken_json", frame, answer_ids(frame), codes, action=t.action, note=note)]

    def _bad_frame(self) -> list[Input]:
        t = self.rng.choice(self.templates)
        mid = self.mid()
        payload = t.payload
        rpc_err = ("RpcFrameworkError",)
        cases: list[tuple[Any, tuple[str, ...], tuple[str, ...], str]] = [
            ({"type": 2, "id": mid}, ("-1",), rpc_err, "object"),
            (42, ("-1",), rpc_err, "number"),
            ([], ("-1",), rpc_err, "empty array"),
            ([2], ("-1",), rpc_err, "one element"),
            ([2, mid], ("-1", mid), rpc_err, "two elements"),
            ([2, 17, t.action, payload], ("-1",), rpc_err, "numeric id"),
            ([2, "", t.action, payload], ("-1",), rpc_err, "empty id"),
            ([2, "x" * 37, t.action, payload], ("-1",), rpc_err, "id of 37 characters"),
            ([2, None, t.action, payload], ("-1",), rpc_err, "null id"),
            (["2", mid, t.action, payload], (mid, "-1"), rpc_err, "type as string"),
            ([True, mid, t.action, payload], (mid, "-1"), rpc_err, "type as boolean"),
            ([2, mid, t.action], (mid,), rpc_err, "CALL of three"),
            ([2, mid, t.action, payload, 1], (mid,), rpc_err, "CALL of five"),
            ([2, mid, 5, payload], (mid,), rpc_err, "action as number"),
            (
                [2, mid, t.action, [payload]],
                (mid,),
                ("FormatViolation", "TypeConstraintViolation"),
                "payload as array",
            ),
            (
                [2, mid, t.action, "x"],
                (mid,),
                ("FormatViolation", "TypeConstraintViolation"),
                "payload as string",
            ),
            ([2, mid, "FuzzNoSuchAction", {}], (mid,), ("NotImplemented",), "unknown action"),
            ([2, mid, t.action.lower(), payload], (mid,), ("NotImplemented",), "action lower case"),
            ([9, mid, t.action, payload], (mid,), ("MessageTypeNotSupported",), "type 9"),
            ([-1, mid, t.action, payload], (mid,), ("MessageTypeNotSupported",), "type -1"),
            ([3, mid], ("-1", mid), rpc_err, "CALLRESULT of two"),
            ([4, mid, "GenericError"], (mid,), rpc_err, "CALLERROR of three"),
        ]
        if self.version != V21:  # SEND and CALLRESULTERROR are 2.1 frames
            cases.append(
                (
                    [6, mid, t.action, payload],
                    (mid,),
                    ("MessageTypeNotSupported",),
                    "SEND before 2.1",
                )
            )
            cases.append(
                (
                    [5, mid, "GenericError", "", {}],
                    (mid,),
                    ("MessageTypeNotSupported",),
                    "CALLRESULTERROR before 2.1",
                )
            )
        else:
            cases.append(([6, mid, "FuzzNoSuchAction", {}], (), (), "SEND of an unknown action"))
        other = {V16: V201, V201: V16, V21: V16}[self.version]
        foreign = sorted(set(_action_names(other)) - self.known)
        if foreign:
            action = self.rng.choice(foreign)
            cases.append(([2, mid, action, {}], (mid,), ("NotImplemented",), f"{other} action"))
        value, ids, codes, note = self.rng.choice(cases)
        frame = json.dumps(value, separators=(",", ":"))
        if not ids:  # a SEND gets no answer
            return [Input("bad_frame", frame, (mid,), silent=True, action=t.action, note=note)]
        return [Input("bad_frame", frame, ids, self.codes(*codes), action=t.action, note=note)]

    def _at_site(
        self, category: str, want: Callable[[Site], Any], change: Callable[[Any, Site], Change]
    ) -> list[Input]:
        """A CALL of a template changed at a site where ``want`` holds (none if no
        template of the version has such a site)."""
        found = self.pick(category, want)
        if found is None:
            return []
        t, site = found
        c = change(t.payload, site)
        note = f"{_where(site)} {c.note}"
        inp = self.call(category, t, c.payload, c.codes, result_ok=c.result_ok, note=note)
        if c.raw is not None:
            inp.frame = str(inp.frame).replace(f'"{MARKER}"', c.raw)
            inp.ids = (*inp.ids, "-1")  # what the decoder cannot read has no readable id
        return [inp]

    def _wrong_type(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            new = self.rng.choice([v for v in _WRONG_VALUES if not json_type_fits(site.schema, v)])
            return Change(put(payload, site.path, new), _TYPE, f"= {json.dumps(new)}")

        return self._at_site("wrong_type", lambda s: s.path and "type" in s.schema, change)

    def _missing_field(self) -> list[Input]:
        def present(site: Site) -> list[str]:
            if not isinstance(site.value, dict):
                return []
            return sorted(set(site.schema.get("required", ())) & set(site.value))

        def change(payload: Any, site: Site) -> Change:
            name = self.rng.choice(present(site))
            return Change(drop(payload, site.path, name), _OCCURRENCE, f"/{name} left out")

        return self._at_site("missing_field", present, change)

    def _extra_field(self) -> list[Input]:
        def closed(site: Site) -> bool:
            return isinstance(site.value, dict) and site.schema.get("additionalProperties") is False

        def change(payload: Any, site: Site) -> Change:
            name = self.rng.choice(["fuzz", "__proto__", "constructor", "id ", "x" * 300, "ä"])
            new = {**site.value, name: self.rng.choice(_WRONG_VALUES)}
            return Change(put(payload, site.path, new), ("FormatViolation",), f"/{name[:20]} added")

        return self._at_site("extra_field", closed, change)

    def _out_of_range(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            new, codes, note = self.rng.choice(_range_mutations(site))
            return Change(put(payload, site.path, new), codes, note)

        return self._at_site("out_of_range", lambda s: s.path and _range_mutations(s), change)

    def _bad_timestamp(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            new = self.rng.choice(_BAD_TIMES)
            codes = (*_TYPE, "FormatViolation", "PropertyConstraintViolation")
            return Change(put(payload, site.path, new), codes, f"= {new!r}")

        return self._at_site(
            "bad_timestamp", lambda s: s.schema.get("format") == "date-time", change
        )

    def _non_finite(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            word = self.rng.choice(_NON_FINITE)
            codes = ("RpcFrameworkError", "FormatViolation", "PropertyConstraintViolation")
            return Change(put(payload, site.path, MARKER), codes, f"= {word}", raw=word)

        numeric = lambda s: type_of(s.schema) in ("number", "integer")  # noqa: E731
        return self._at_site("non_finite", numeric, change)

    def _huge_values(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            new = self._huge(_unbounded(site))
            codes = ("PropertyConstraintViolation", *_TYPE, "FormatViolation")
            note = f"= {repr(new)[:30]} ({len(str(new))} chars)"
            return Change(put(payload, site.path, new), codes, note, result_ok=True)

        return self._at_site("huge_values", lambda s: s.path and _unbounded(s), change)

    def _huge(self, kind: str | None) -> Any:
        if kind == "number":
            return self.rng.choice(_HUGE_NUMBERS)
        if kind == "decimal":  # 1.6 sampled values: a number written as a string
            return self.rng.choice(_HUGE_DECIMALS)
        unit = self.rng.choice(["x", "é", "\u0000", "<script>", "%s%n", "'; DROP TABLE x;--"])
        size = self.rng.choices([1_000, 5_000, 20_000, 100_000, 400_000], [40, 30, 20, 9, 1])[0]
        # characters, not bytes on the wire: stay within half the frame limit
        wire = len(json.dumps(unit)) - 2
        return unit * max(1, min(size // len(unit), self.max_frame // 2 // wire))

    def _deep_nesting(self) -> list[Input]:
        def change(payload: Any, site: Site) -> Change:
            depth = self.rng.choice([40, 100, 300, 1000, 3000])
            anything = type_of(site.schema) is None and "enum" not in site.schema
            # too deep for the CSMS, or whatever the nested value breaks in the schema
            codes = ("FormatViolation", "RpcFrameworkError", *_SCHEMA_CODES)
            raw = nested_text(depth, self.rng)
            new = put(payload, site.path, MARKER)
            return Change(new, codes, f"{depth} deep", raw=raw, result_ok=anything)

        return self._at_site("deep_nesting", lambda s: bool(s.path), change)

    def _replay(self) -> list[Input]:
        """A valid CALL and its repeat at once (its id still being answered), or the
        repeat of one answered long ago (an id out of order)."""
        first = self._valid_call("replay")
        again = replace(first, optional=True, note="same message id again")
        if self._answered and self.rng.random() < 0.5:
            old = self.rng.choice(self._answered)
            again = replace(old, optional=True, note=f"message id {old.ids[0]} again, later")
        if len(self._answered) < 200:
            self._answered.append(first)
        return [first, again]

    def _flood(self) -> list[Input]:
        out = []
        for _ in range(self.rng.choice([150, 300, 600])):
            inp = self._valid_call("flood")
            codes = inp.codes | self.codes("RpcFrameworkError", "GenericError")
            out.append(replace(inp, codes=codes, closes=True))
        return out

    def _unknown_answer(self) -> list[Input]:
        mid = f"never-sent-{self.mid()}"
        choices: list[list] = [
            [3, mid, {}],
            [3, mid, {"status": "Accepted"}],
            [4, mid, "GenericError", "fuzz", {}],
            [4, mid, "InternalError", "", {"x": [1, 2]}],
            [3, mid, json.loads(nested_text(20, self.rng))],
        ]
        if self.version == V21:
            choices.append([5, mid, "GenericError", "fuzz", {}])
        frame = json.dumps(self.rng.choice(choices), separators=(",", ":"))
        note = "answer to an id never sent"
        return [Input("unknown_answer", frame, (mid,), silent=True, note=note)]

    def _oversize(self) -> list[Input]:
        mid = self.mid()
        size = self.max_frame + self.rng.choice([1, 1000, 100_000])
        frame = json.dumps([2, mid, "DataTransfer", {"vendorId": "fuzz", "data": "x" * size}])
        return [Input("oversize", frame, closes=True, note=f"{len(frame)} bytes")]

    def probe(self) -> tuple[str, str]:
        """A Heartbeat (its id and frame): its answer comes after those of all before it."""
        mid = f"probe-{self.mid()}"
        return mid, json.dumps([2, mid, "Heartbeat", {}])


_TYPE = ("TypeConstraintViolation",)
_OCCURRENCE = ("OccurrenceConstraintViolation",)
_SCHEMA_CODES = (
    "PropertyConstraintViolation",
    "OccurrenceConstraintViolation",
    "TypeConstraintViolation",
)
#: A valid CALL may still be refused for what it says (a transaction not known, ...).
_MEANING_CODES = (
    *_SCHEMA_CODES,
    "FormatViolation",
    "NotSupported",
    "GenericError",
    "SecurityError",
)


_HEAD = re.compile(r'\s*\[\s*-?\d+\s*,\s*"([^"\\]{1,36})"\s*,')


def answer_ids(frame: str | bytes) -> tuple[str, ...]:
    """The ids an answer to a frame that is no JSON may carry: the message id if its
    head ``[type, "id",`` reads (as the frame says it, mangled or not), else "-1"."""
    head = _HEAD.match(frame) if isinstance(frame, str) else None
    return (head.group(1), "-1") if head else ("-1",)


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _where(site: Site) -> str:
    return "/".join(str(p) for p in site.path) or "payload"


def _action_names(version: str) -> list[str]:
    return list(ocpp_schemas(version))


def _unbounded(site: Site) -> str | None:
    """What kind of huge value the site takes without a stated bound, if any."""
    s = site.schema
    if "enum" in s or s.get("format"):
        return None
    kind = type_of(s)
    if kind == "number" and "maximum" not in s and "minimum" not in s:
        return "number"
    if kind == "string" and "maxLength" not in s:
        return "decimal" if site.path[-1] == "value" else "string"
    return None


def _range_mutations(site: Site) -> list[tuple[Any, tuple[str, ...], str]]:
    """Values just or far outside what ``site`` allows, with the right codes."""
    s = site.schema
    prop = ("PropertyConstraintViolation",)
    out: list[tuple[Any, tuple[str, ...], str]] = []
    if "enum" in s and type_of(s) in (None, "string"):
        out.append(("FuzzNotInEnum", prop, "not in the enum"))
    kind = type_of(s)
    if kind == "string" and "maxLength" in s:
        for extra in (1, 100, 5000):
            out.append(("y" * (s["maxLength"] + extra), prop, f"maxLength + {extra}"))
    if kind in ("integer", "number"):
        if "maximum" in s:
            out.append((s["maximum"] + 1, prop, "maximum + 1"))
        if "minimum" in s:
            out.append((s["minimum"] - 1, prop, "minimum - 1"))
    if kind == "integer":
        for n in _OUT_OF_INT32:
            # a literal beyond 64 bits reaches a JSON decoder's caller as a float
            codes = prop if -(2**63) <= n < 2**64 else (*prop, "TypeConstraintViolation")
            out.append((n, codes, f"{n} (not a 32-bit integer)"))
    if kind == "array":
        if s.get("minItems", 0) >= 1:
            out.append(([], prop, "no items"))
        if "maxItems" in s and isinstance(site.value, list) and site.value:
            many = site.value * (s["maxItems"] + 1)
            out.append((many[: s["maxItems"] + 1], prop, "maxItems + 1"))
    return out


def split_counts(total: int) -> dict[str, int]:
    """Inputs per category for ``total`` (at least one oversize frame)."""
    weight = sum(WEIGHTS.values())
    out = {c: int(total * WEIGHTS[c] / weight) for c in CATEGORIES}
    out["oversize"] = max(1, out["oversize"])
    out["wrong_type"] += total - sum(out.values())
    return out
