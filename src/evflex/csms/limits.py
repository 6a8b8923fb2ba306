"""How much of what a station sends evflex takes, keeps and repeats.

A frame nests at most :data:`MAX_DEPTH` levels (no OCPP message comes near;
a deeper one is refused before it reaches a handler, the store or a JSON
encoder with a depth limit of its own). Free-form data that is stored (a
DataTransfer's ``data``) is kept up to :data:`MAX_STORED_CHARS` characters of
JSON, and the event says when it was cut. No string may hold the character
NUL (PostgreSQL stores it in no text column): :func:`nul_path`. Wire text in a
log line is cut by :func:`shorten`.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Levels of arrays and objects in one frame (the frame array is the first).
MAX_DEPTH = 32
#: Characters of JSON kept of free-form data in the event log.
MAX_STORED_CHARS = 8192
#: Characters of wire text repeated in a log line.
LOG_CHARS = 300


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` levels."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return True
        stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return False


def text_too_deep(raw: str, value: Any, limit: int = MAX_DEPTH) -> bool:
    """:func:`too_deep` of ``value`` parsed from ``raw``; a text with no more than
    ``limit`` brackets cannot nest deeper, and is not walked."""
    if raw.count("[") + raw.count("{") <= limit:
        return False
    return too_deep(value, limit)


def nul_path(raw: str, value: Any) -> str | None:
    """Where in ``value`` (parsed from ``raw``) a string or key holds NUL (U+0000), as
    ``a/0/b``; None if none does (a text without the escape ``\\u0000`` is not walked)."""
    if "\\u0000" not in raw:
        return None
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                where = f"{path}/{key}" if path else str(key)
                if "\x00" in key:
                    return where
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend((child, f"{path}/{i}" if path else str(i)) for i, child in enumerate(item))
    return None


def shorten(text: Any, limit: int = LOG_CHARS) -> str:
    """``text`` (made a string) cut to ``limit`` characters, saying how long it was."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}… ({len(s.encode('utf-8', 'replace'))} bytes)"


def stored_data(data: Any) -> tuple[Any, bool]:
    """Free-form data as the event log keeps it: as sent if its JSON has at most
    :data:`MAX_STORED_CHARS` characters, else the start of that JSON (and True)."""
    if data is None or (isinstance(data, str) and len(data) <= MAX_STORED_CHARS):
        return data, False
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    if len(text) <= MAX_STORED_CHARS:
        return data, False
    return shorten(text, MAX_STORED_CHARS), True
