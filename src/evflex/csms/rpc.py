"""OCPP-J RPC framing: parse frames, validate payloads, name errors per version.

Message classes and JSON schemas come from the ``ocpp`` library; this module
adds what its 2.1.0 release gets wrong or leaves out for a server: a CALLERROR
for every malformed frame, the spec's error code for each kind of schema
violation, the 1.6 spellings of those codes, and NotImplemented (action not
known) versus NotSupported (known, not handled) the right way round.
"""

from __future__ import annotations

import decimal
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema
import ocpp
import orjson
from fastjsonschema import JsonSchemaValueException
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.v16.enums import Action as Action16
from ocpp.v21.enums import Action as Action21
from ocpp.v201.enums import Action as Action201

from evflex.clock import parse_datetime
from evflex.csms.limits import MAX_DEPTH, nul_path, shorten, text_too_deep

CALL, CALLRESULT, CALLERROR = 2, 3, 4
#: OCPP 2.1 only: an error about a CALLRESULT, and a CALL that gets no answer.
CALLRESULTERROR, SEND = 5, 6
UNKNOWN_MESSAGE_ID = "-1"
#: 2.1 actions sent as SEND (their schema file has no "Request" suffix).
SEND_ACTIONS = frozenset({"NotifyPeriodicEventStream"})


class RpcError(Exception):
    """An error to be answered with a CALLERROR. ``code`` is the 2.x name."""

    def __init__(self, code: str, description: str, details: dict | None = None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


# 2.x names -> 1.6 names (the 1.6 spec spells two of them differently and has no RPC error).
_V16_CODES = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    "RpcFrameworkError": "FormationViolation",
    "MessageTypeNotSupported": "ProtocolError",
}


def error_code_for(code: str, version: str) -> str:
    if version == "1.6":
        return _V16_CODES.get(code, code)
    return code


def known_actions(version: str) -> frozenset[str]:
    if version == "1.6":
        return _ACTIONS_16
    if version == "2.1":
        return _ACTIONS_21
    return _ACTIONS_201


_ACTIONS_16 = frozenset(a.value for a in Action16)
_ACTIONS_201 = frozenset(a.value for a in Action201)
_ACTIONS_21 = frozenset(a.value for a in Action21) | SEND_ACTIONS


@dataclass(slots=True)
class Frame:
    type_id: int
    message_id: str
    action: str | None = None
    payload: Any = None
    error_code: str | None = None
    error_description: str | None = None
    error_details: Any = None


def parse_frame(raw: str | bytes, version: str = "2.0.1") -> Frame:
    """Parse one WebSocket text frame into a :class:`Frame` or raise :class:`RpcError`.

    The error carries the message id in ``details['message_id']`` when it
    could be read, else ``"-1"``. CALLRESULTERROR and SEND frames are OCPP 2.1
    only; other versions answer them with MessageTypeNotSupported.
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RpcError("RpcFrameworkError", "frame is not UTF-8 text") from exc
    try:
        msg = orjson.loads(raw)
    except Exception as exc:  # whatever the decoder raises (a number it cannot hold, ...)
        raise unreadable(raw, f"message is not valid JSON: {exc}") from None
    if not isinstance(msg, list) or len(msg) < 3:
        raise RpcError("RpcFrameworkError", "message is not an OCPP-J array [type, id, ...]")
    type_id, message_id = msg[0], msg[1]
    if not isinstance(message_id, str) or not message_id or len(message_id) > 36:
        raise RpcError("RpcFrameworkError", "messageId is not a string of 1..36 characters")
    mid = {"message_id": message_id}
    if text_too_deep(raw, msg):
        raise RpcError("FormatViolation", f"message nests deeper than {MAX_DEPTH} levels", mid)
    nul = nul_path(raw, msg[3]) if type_id in (CALL, SEND) and len(msg) == 4 else None
    if nul is not None:
        where = shorten(nul or "payload", 100).replace("\x00", "\\u0000")
        text = f"{where} holds the character NUL, which no text column stores"
        raise RpcError("PropertyConstraintViolation", text, {**mid, "path": where})
    if not isinstance(type_id, int) or isinstance(type_id, bool):
        raise RpcError("RpcFrameworkError", "messageTypeId is not an integer", mid)
    if type_id == CALL:
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise RpcError("RpcFrameworkError", "CALL must be [2, id, action, payload]", mid)
        if not isinstance(msg[3], dict):
            raise RpcError("FormatViolation", "CALL payload must be a JSON object", mid)
        return Frame(CALL, message_id, action=msg[2], payload=msg[3])
    if type_id == CALLRESULT:
        if len(msg) != 3:
            raise RpcError("RpcFrameworkError", "CALLRESULT must be [3, id, payload]", mid)
        return Frame(CALLRESULT, message_id, payload=msg[2])
    if type_id == SEND and version == "2.1":
        if len(msg) != 4 or not isinstance(msg[2], str):
            raise RpcError("RpcFrameworkError", "SEND must be [6, id, action, payload]", mid)
        if not isinstance(msg[3], dict):
            raise RpcError("FormatViolation", "SEND payload must be a JSON object", mid)
        return Frame(SEND, message_id, action=msg[2], payload=msg[3])
    if type_id == CALLERROR or (type_id == CALLRESULTERROR and version == "2.1"):
        if len(msg) not in (4, 5):
            raise RpcError("RpcFrameworkError", "CALLERROR must have 5 elements", mid)
        return Frame(  # the spec's limits: a code is a short word, a description 255 chars
            type_id,
            message_id,
            error_code=str(msg[2])[:64],
            error_description=str(msg[3])[:255],
            error_details=msg[4] if len(msg) == 5 else None,
        )
    raise RpcError("MessageTypeNotSupported", f"messageTypeId {type_id} is not supported", mid)


#: ``[type, "id"`` at the start of a frame: the message id of a frame that is not JSON.
_HEAD = re.compile(r'\s*\[\s*\d\s*,\s*"([^"\\]{1,36})"\s*,')


def unreadable(raw: str, description: str) -> RpcError:
    """The error for a frame the JSON decoder refuses: FormatViolation with its message
    id when its head ``[type, "id",`` can be read (the payload is what is wrong), else
    RpcFrameworkError (the message id cannot be read)."""
    head = _HEAD.match(raw[:64])
    if head is None:
        return RpcError("RpcFrameworkError", description)
    return RpcError("FormatViolation", description, {"message_id": head.group(1)})


# --------------------------------------------------------------------------- validation

_SCHEMA_DIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}


def _datetime_fault(value: str) -> str | None:
    """None for a date-time that evflex can read and hold in UTC, else what is wrong
    with it: ``"syntax"`` (not a date-time) or ``"range"`` (not one UTC can hold)."""
    try:
        parse_datetime(value)
    except OverflowError:
        return "range"
    except ValueError:
        return "syntax"
    return None


# A timestamp must be one that evflex can read and hold in UTC; URIs are not checked.
_FORMATS = {"date-time": lambda v: _datetime_fault(v) is None, "uri": lambda _v: True}
#: OCPP's integer is 32 bits; identifiers (``...Id``, ``id``; not 1.6's transactionId,
#: which stations are known to send as -1) are never negative, as OCPP 2.1 writes.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
_SIGNED_IDS = frozenset({"transactionId"})

_PROPERTY = {
    "enum",
    "maxLength",
    "minLength",
    "minimum",
    "maximum",
    "pattern",
    "format",
    "multipleOf",
    "maxItems",
    "minItems",
    "uniqueItems",
    "exclusiveMinimum",
    "exclusiveMaximum",
}


def schema_path(type_id: int, action: str, version: str) -> Path:
    """The ``ocpp`` package's JSON schema file of one message (ValueError: none)."""
    folder = _SCHEMA_DIRS.get(version)
    if folder is None:
        raise ValueError(version)
    if type_id == CALLRESULT:
        name = f"{action}Response"
    elif type_id == SEND:
        if version != "2.1" or action not in SEND_ACTIONS:
            raise ValueError(action)
        name = action
    else:
        name = action if version == "1.6" else f"{action}Request"
    path = Path(ocpp.__file__).parent / folder / "schemas" / f"{name}.json"
    if not path.is_file():
        raise ValueError(action)
    return path


@functools.cache
def validator(type_id: int, action: str, version: str) -> Callable[[Any], Any]:
    """A validator compiled once from the schema the ``ocpp`` package ships.

    Raises ValueError for a message the version does not have.
    """
    known = known_actions(version)
    if action not in known:
        raise ValueError(action)
    schema = json.loads(schema_path(type_id, action, version).read_text(encoding="utf-8-sig"))
    return fastjsonschema.compile(bounded(schema), formats=_FORMATS, use_default=False)


def bounded(schema: Any, name: str = "") -> Any:
    """``schema`` with the ranges OCPP gives every integer (:data:`INT_MIN`..
    :data:`INT_MAX`, and from 0 for an identifier) where it states none."""
    if isinstance(schema, list):
        return [bounded(s, name) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "definitions", "$defs") and isinstance(value, dict):
            out[key] = {n: bounded(s, n) for n, s in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf"):
            out[key] = bounded(value, name)
        else:
            out[key] = value
    if out.get("type") == "integer":
        ident = (name == "id" or name.endswith("Id")) and name not in _SIGNED_IDS
        low = 0 if ident else INT_MIN
        out["minimum"] = max(out.get("minimum", low), low)
        out["maximum"] = min(out.get("maximum", INT_MAX), INT_MAX)
    return out


def compile_validators(version: str, actions, type_id: int = CALL) -> int:
    """Build the validators of ``actions`` now (the server does for what it handles, at
    start: the first message of a kind then costs no compile and no file read)."""
    done = 0
    for action in actions:
        kind = SEND if action in SEND_ACTIONS else type_id
        try:
            validator(kind, action, version)
            done += 1
        except ValueError:
            continue
    return done


def validate(type_id: int, action: str, payload: dict, version: str) -> None:
    """Validate against the ``ocpp`` package's JSON schema; raise :class:`RpcError`.

    An action without a schema for this version raises NotImplemented.
    """
    try:
        check = validator(type_id, action, version)
    except ValueError as exc:
        raise RpcError("NotImplemented", f"{action} is not an OCPP {version} action") from exc
    except OSError as exc:  # the file is there but cannot be read now (no file handles left)
        raise RpcError("InternalError", f"the schema of {action} cannot be read") from exc
    try:
        check(payload)
    except JsonSchemaValueException as exc:
        raise schema_error(exc) from None


def schema_error(e: JsonSchemaValueException) -> RpcError:
    """The CALLERROR for a schema violation: the spec's code for its kind of rule."""
    parts = [str(p) for p in (e.path or [])[1:]]
    where = "/".join(parts) or "payload"
    text = e.message
    if text.startswith(e.name or "\0"):
        text = f"{where}{text[len(e.name) :]}"
    details = {"path": where, "rule": e.rule}
    if e.rule == "format" and isinstance(e.value, str):
        if _datetime_fault(e.value) == "syntax":
            return RpcError("TypeConstraintViolation", f"{where} is not a date-time", details)
        return RpcError("PropertyConstraintViolation", f"{where} is out of range", details)
    if e.rule == "type" and isinstance(e.value, float) and e.value.is_integer():
        # an integer literal too long for a 64-bit integer is read as a float
        if (e.definition or {}).get("type") == "integer":
            details["rule"] = "maximum" if e.value > 0 else "minimum"
            return RpcError("PropertyConstraintViolation", f"{where} is out of range", details)
    if e.rule == "required":
        return RpcError("OccurrenceConstraintViolation", text, details)
    if e.rule == "type":
        return RpcError("TypeConstraintViolation", text, details)
    if e.rule in _PROPERTY:
        return RpcError("PropertyConstraintViolation", text, details)
    return RpcError("FormatViolation", text, details)


#: The largest meter reading taken, in base units (Wh, W, A, ...): a thousand times the
#: lifetime register of a fast charger, and small enough that sums of them stay finite.
MAX_READING = 1e15


def reading(value: float, where: str) -> float:
    """``value`` if it is a meter reading evflex can do sums with (finite, at most
    :data:`MAX_READING` either way), else the CALLERROR for ``where``."""
    if not abs(value) <= MAX_READING:  # NaN fails this too
        raise RpcError(
            "PropertyConstraintViolation",
            f"{where} is not a finite number within ±{MAX_READING:g}",
            {"path": where, "rule": "maximum"},
        )
    return value


# --------------------------------------------------------------------------- encoding


def _default(o: Any) -> Any:
    if isinstance(o, decimal.Decimal):
        return float(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dumps(frame: list) -> str:
    return orjson.dumps(frame, default=_default).decode()


def encode_call(message_id: str, action: str, payload: dict) -> str:
    return _dumps([CALL, message_id, action, payload])


def encode_result(message_id: str, payload: dict) -> str:
    return _dumps([CALLRESULT, message_id, payload])


def encode_error(message_id: str, code: str, description: str, details: dict | None) -> str:
    return _dumps([CALLERROR, message_id, code, description[:255], details or {}])


def encode_send(message_id: str, action: str, payload: dict) -> str:
    return _dumps([SEND, message_id, action, payload])


def encode_result_error(message_id: str, code: str, description: str, details: dict | None) -> str:
    return _dumps([CALLRESULTERROR, message_id, code, description[:255], details or {}])


def to_payload(message: Any) -> tuple[str, dict]:
    """An ``ocpp`` library call dataclass -> (action, camelCase payload without nulls)."""
    payload = snake_to_camel_case(remove_nones(serialize_as_dict(message)))
    return type(message).__name__, fix_phase_keys(payload)


# --------------------------------------------------------------------- 2.1 key casing

# The ``ocpp`` 2.1.0 case converters turn the per-phase keys of OCPP 2.1
# (``limit_L2``, ``setpoint_L3``, ``dischargeLimit_L2``, ``maxChargePower_L3``,
# ...) into ``limitL2`` on the way out and ``limit_l2`` on the way in; both
# break the schema. :func:`fix_phase_keys` restores the spec's spelling.

_PHASE_KEY = re.compile(r"^([a-z][A-Za-z]*?)_?[Ll]([123])$")


@functools.cache
def phase_keys() -> frozenset[str]:
    """Every ``name_L<n>`` property of the OCPP 2.1 schemas."""
    found: set[str] = set()
    pattern = re.compile(r'"([A-Za-z]+_L[123])"\s*:')
    for path in (Path(ocpp.__file__).parent / "v21" / "schemas").glob("*.json"):
        found.update(pattern.findall(path.read_text(encoding="utf-8-sig")))
    return frozenset(found)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(x[:1].upper() + x[1:] for x in rest)


def fix_phase_keys(data: Any) -> Any:
    """Rename mis-cased per-phase keys (``limitL2``, ``limit_l2``, ...) to ``limit_L2``.

    Applied to camelCase payloads; other keys are left alone.
    """
    if isinstance(data, list):
        return [fix_phase_keys(x) for x in data]
    if not isinstance(data, dict):
        return data
    known = phase_keys()
    out = {}
    for key, value in data.items():
        m = _PHASE_KEY.match(key) if isinstance(key, str) else None
        if m is not None and key not in known:
            fixed = f"{_camel(m.group(1))}_L{m.group(2)}"
            if fixed in known:
                key = fixed
        out[key] = fix_phase_keys(value)
    return out
